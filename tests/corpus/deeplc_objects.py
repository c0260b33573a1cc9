"""What DeepLC itself passes to load_model for its .hdf5 models (``--custom-objects`` module).

DeepLC built its layers with ``activation=lambda x: relu(x, alpha=0.1, max_value=20.0)``; Keras
saved that activation under the function's ``__name__``, "<lambda>", which no ``def`` can be
called, so the module maps it in ``CUSTOM_OBJECTS``, exactly as DeepLC's ``custom_objects={"<lambda>": lrelu}``.
"""

import tf_keras


def lrelu(x):  # type: ignore[no-untyped-def]
    """DeepLC's leaky ReLU capped at 20 (deeplc/deeplc.py, version 2.2.38)."""
    return tf_keras.activations.relu(x, alpha=0.1, max_value=20.0)


CUSTOM_OBJECTS = {"<lambda>": lrelu}
