""".tflite source models, converted here with tf.lite.TFLiteConverter.

* :func:`write_tflite_source`: the smallest source ``tfpack convert`` takes (y = 0.5 * x + 2, a
  serving_default SignatureDef, a free batch), for tests that only need one (build, smoke).
* :func:`write_two_input_tflite`: diff = a - 2 * b and total = sum(a * b) per row, two inputs of
  shape [batch, 3]; with its serving_default SignatureDef, or without any (converted from a TF1
  session), so that TF Serving synthesises the signature from the interpreter's tensors.
* :func:`write_tflite_function`: any one-input function of x, for the models the proof must refuse.
* :func:`write_multi_signature_tflite`: y = x + i for the i-th of several signature keys, each
  signature a subgraph of its own (the first runs the first subgraph).

None of them carries "signature_defs_metadata": TF Serving serves them keyed by tensor name
until it is written (packager.formats.tflite_signatures); :func:`as_tf_serving_serves_it` writes it
for a model that is to be served under its serving_default keys.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

ROW = 3  # the non-batch dimension of the two-input model's inputs


def as_tf_serving_serves_it(content: bytes) -> bytes:
    """``content`` with its serving_default SignatureDef stored as the metadata TF Serving reads."""
    from packager.formats.tflite_signatures import signature_defs_from_native, with_signature_defs

    return with_signature_defs(content, signature_defs_from_native(content, {"serving_default": "serving_default"}))


def _convert_function(function: Callable[..., dict[str, tf.Tensor]], specs: list[tf.TensorSpec]) -> bytes:
    """A tf.function of ``specs`` as a TFLite flatbuffer with its serving_default SignatureDef."""
    module = tf.Module()
    module.serving_default = tf.function(function, input_signature=specs)
    concrete = module.serving_default.get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], module).convert()


def write_tflite_function(path: Path, function: Callable[[tf.Tensor], dict[str, tf.Tensor]]) -> Path:
    """Write ``function(x)`` (x: float32 [batch, ROW]) as a .tflite with a serving_default signature."""
    path.write_bytes(_convert_function(function, [tf.TensorSpec([None, ROW], tf.float32, name="x")]))
    return path


def write_tflite_source(path: Path) -> Path:
    """Write y = 0.5 * x + 2 (x: float32 [batch, 1]) as a .tflite with a serving_default signature.

    Returns:
        ``path``.
    """
    specs = [tf.TensorSpec([None, 1], tf.float32, name="x")]
    path.write_bytes(_convert_function(lambda x: {"y": 0.5 * x + 2.0}, specs))
    return path


def write_two_input_tflite(path: Path, *, with_signature: bool, b_scale: float = 2.0) -> Path:
    """Write diff = a - b_scale * b, total = sum(a * b, axis 1) over a, b: float32 [batch, ROW].

    Args:
        path: the .tflite file to write.
        with_signature: a serving_default SignatureDef (keys a, b, diff, total; tensor names
            serving_default_a:0, serving_default_b:0, PartitionedCall:0 and :1), or none at all
            (a TF1 session's conversion: tensors named a, b, diff, total).
        b_scale: 2 unless a test needs another model with the same signature.
    """
    if with_signature:
        specs = [tf.TensorSpec([None, ROW], tf.float32, name="a"), tf.TensorSpec([None, ROW], tf.float32, name="b")]
        path.write_bytes(
            _convert_function(
                lambda a, b: {"diff": a - b_scale * b, "total": tf.reduce_sum(a * b, axis=1, keepdims=True)}, specs
            )
        )
        return path
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        a = v1.placeholder(tf.float32, [None, ROW], name="a")
        b = v1.placeholder(tf.float32, [None, ROW], name="b")
        diff = tf.identity(a - b_scale * b, name="diff")
        total = tf.identity(tf.reduce_sum(a * b, axis=1, keepdims=True), name="total")
        with v1.Session(graph=graph) as session:
            path.write_bytes(v1.lite.TFLiteConverter.from_session(session, [a, b], [diff, total]).convert())
    return path


def write_multi_signature_tflite(path: Path, keys: list[str]) -> Path:
    """Write signature ``keys[i]``: y = x + i (x: float32 [batch, 1]), one subgraph per signature.

    Returns:
        ``path``.
    """
    module = tf.Module()
    signatures = {}
    for offset, key in enumerate(keys):
        function = tf.function(
            lambda x, offset=float(offset): {"y": x + offset},
            input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")],
        )
        setattr(module, f"signature_{offset}", function)
        signatures[key] = function.get_concrete_function()
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(module, saved, signatures=signatures)
        path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=keys).convert())
    return path
