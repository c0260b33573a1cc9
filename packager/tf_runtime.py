"""Import TensorFlow quietly, once, for the modules that need it.

TensorFlow's C++ logging and oneDNN notices would otherwise interleave with tfpack's own short
lines; they are hidden unless the user set TF_CPP_MIN_LOG_LEVEL themselves.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ENV_VERBOSE = "TFPACK_TF_LOGS"


@contextmanager
def stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null: TensorFlow's C++ lines (start-up notices, the TFLite
    converter's error trace) bypass Python; tfpack says what went wrong itself, in one line.
    TFPACK_TF_LOGS=1 keeps them."""
    if os.environ.get(ENV_VERBOSE):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@cache
def tensorflow() -> ModuleType:
    """Return the tensorflow module, imported and its devices probed with start-up noise hidden.

    The absl/oneDNN/CUDA notices TensorFlow prints at import and at the first device probe (even
    with TF_CPP_MIN_LOG_LEVEL) would bury tfpack's one-line messages; set TFPACK_TF_LOGS=1 to see
    them.
    """
    if os.environ.get(ENV_VERBOSE):
        import tensorflow as tf
    else:
        with stderr_silenced():
            import tensorflow as tf

            tf.config.list_physical_devices()
    # tfpack reports what went wrong itself, in one line; TensorFlow's Python logger would add
    # its own lines first (e.g. "Couldn't match files for checkpoint ...").
    tf.get_logger().setLevel("CRITICAL")
    return tf


def numpy_dtype_name(dtype: tf.DType | int) -> str:
    """Name a tf.DType or DataType enum the way numpy does ("string" for tf.string)."""
    tf = tensorflow()
    tf_dtype = tf.as_dtype(dtype)
    if tf_dtype == tf.string:
        return "string"
    if tf_dtype in (tf.variant, tf.resource):
        return tf_dtype.name  # no numpy counterpart
    return tf_dtype.as_numpy_dtype().dtype.name


def shape_tuple(shape: tf.TensorShape) -> tuple[int | None, ...] | None:
    """A TensorShape as a tuple with None for unknown dimensions; None for an unknown rank."""
    tf = tensorflow()
    tensor_shape = tf.TensorShape(shape)
    if tensor_shape.rank is None:
        return None
    return tuple(None if d is None else int(d) for d in tensor_shape.as_list())


def reference_session(graph: tf.Graph) -> tf.compat.v1.Session:
    """A TF1 session for running a *source* model as the reference its conversion is proven
    against.

    It places softly (training graphs pin ops to GPUs this host may not have) and runs the graph
    as written, without Grappler or constant folding: the reference is plain TensorFlow
    semantics, and skipping the first-run optimisation of a large graph saves about a second. The written
    SavedModel is still checked with Grappler on, as a model server runs it.
    """
    tf = tensorflow()
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    # Nor the session's own graph optimisations (constant folding would copy a large model's
    # weights once more before the first run): the reference runs the graph as written.
    config.graph_options.optimizer_options.opt_level = tf.compat.v1.OptimizerOptions.L0
    return tf.compat.v1.Session(graph=graph, config=config)
