"""Frozen GraphDef: serving_default with its variables folded into constants, run by a TF1 session.

This is the form older TensorFlow runtimes and tools load (``tf.compat.v1.import_graph_def``):
one self-contained .pb, fed and fetched by tensor name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from packager.errors import UsageError, first_line
from packager.layout import DEFAULT_SIGNATURE
from packager.tf_runtime import tensorflow


@dataclass(frozen=True)
class FrozenGraph:
    """A serialized frozen GraphDef and the tensor names of serving_default's inputs and outputs."""

    content: bytes
    inputs: dict[str, str]  # signature input key -> placeholder tensor name
    outputs: dict[str, str]  # signature output key -> tensor name


def freeze_serving_default(version_dir: Path) -> FrozenGraph:
    """Freeze the serving_default signature of the SavedModel in ``version_dir``.

    Raises:
        UsageError: the SavedModel has no serving_default, or its function cannot be frozen.
    """
    tf = tensorflow()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        signatures = tf.saved_model.load(str(version_dir)).signatures
    except (OSError, ValueError, tf.errors.OpError) as exc:
        raise UsageError(f"cannot load the SavedModel in {version_dir}: {first_line(exc)}") from None
    if DEFAULT_SIGNATURE not in signatures:
        raise UsageError(f"{version_dir} has no {DEFAULT_SIGNATURE} signature: re-create it with 'tfpack convert'")
    function = signatures[DEFAULT_SIGNATURE]
    try:
        frozen = convert_variables_to_constants_v2(function)
    except (ValueError, TypeError, tf.errors.OpError) as exc:
        raise UsageError(f"cannot freeze {DEFAULT_SIGNATURE} of {version_dir}: {first_line(exc)}") from None
    # The frozen function keeps the order of the signature's flattened inputs and outputs (a
    # dict flattens in sorted key order) but drops their keys: flattening {key: key} restores them.
    _, keyword_specs = function.structured_input_signature
    input_keys = tf.nest.flatten({key: key for key in keyword_specs})
    output_keys = tf.nest.flatten({key: key for key in function.structured_outputs})
    return FrozenGraph(
        # deterministic: the same version dir gives the same bytes (and sha256) every time.
        content=frozen.graph.as_graph_def().SerializeToString(deterministic=True),
        inputs={key: tensor.name for key, tensor in zip(input_keys, frozen.inputs, strict=True)},
        outputs={key: tensor.name for key, tensor in zip(output_keys, frozen.outputs, strict=True)},
    )


def run_frozen_graph(frozen: FrozenGraph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Import ``frozen`` into a fresh TF1 graph and run it on ``feeds`` (keyed by signature key).

    A plain ``tf.compat.v1.Session``, as an older runtime would load the file: nothing of the
    SavedModel or of TF2's function machinery takes part.
    """
    tf = tensorflow()
    v1 = tf.compat.v1
    graph_def = v1.GraphDef.FromString(frozen.content)
    graph = tf.Graph()
    with graph.as_default():
        v1.import_graph_def(graph_def, name="")
    with v1.Session(graph=graph) as session:
        keys = list(frozen.outputs)
        values = session.run(
            [frozen.outputs[key] for key in keys],
            {frozen.inputs[key]: value for key, value in feeds.items()},
        )
    return dict(zip(keys, values))
