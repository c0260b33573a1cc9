"""The corpus models run by plain TensorFlow, the way their own packages run them: no tfpack code.

Each runner takes the golden inputs (keyed as the converted signature keys them) and returns
{output key: array}. Nothing here imports packager.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from corpus.manifest import CHECKPOINT, FROZEN_GRAPH, KERAS_H5, SAVED_MODEL, CorpusEntry

Arrays = Mapping[str, np.ndarray]


def _resolve(spec: str) -> Any:
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


def keras_h5(path: Path, reference: Mapping[str, Any], inputs: Arrays) -> dict[str, np.ndarray]:
    """tf_keras (Keras 2) loads the file as the package does and calls the model in inference mode."""
    import tf_keras

    custom_objects = {name: _resolve(spec) for name, spec in reference.get("custom_objects", {}).items()}
    model = tf_keras.models.load_model(str(path), compile=False, custom_objects=custom_objects)
    try:
        ordered = [inputs[name] for name in model.input_names]
        outputs = model(ordered if len(ordered) > 1 else ordered[0], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return {name: np.asarray(value) for name, value in zip(model.output_names, outputs)}
    finally:
        del model
        tf_keras.backend.clear_session()


def saved_model(path: Path, inputs: Arrays) -> dict[str, np.ndarray]:
    """TF2's SavedModel loader calls serving_default."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def _run_session(graph, reference: Mapping[str, Any], inputs: Arrays, prefix: str | None, saver=None):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    feeds = {graph.get_tensor_by_name(reference["feeds"][key]): value for key, value in inputs.items()}
    feeds.update({graph.get_tensor_by_name(name): value for name, value in reference.get("fixed", {}).items()})
    fetches = reference["fetches"]
    with tf.compat.v1.Session(graph=graph) as session:
        if saver is not None:
            saver.restore(session, prefix)
        values = session.run([graph.get_tensor_by_name(t) for t in fetches.values()], feed_dict=feeds)
    return dict(zip(fetches, values))


def frozen_graph(path: Path, reference: Mapping[str, Any], inputs: Arrays) -> dict[str, np.ndarray]:
    """tf.compat.v1: import the GraphDef and run it in a Session, as TF 1.x serving code did."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return _run_session(graph, reference, inputs, None)


def checkpoint(root: Path, reference: Mapping[str, Any], inputs: Arrays) -> dict[str, np.ndarray]:
    """tf.compat.v1: import_meta_graph + Saver.restore of the prefix, then a Session run.

    The ``_output_shapes`` hints a TF 1.x ``.meta`` carries are dropped first: they are only
    hints, and TF 2.21 refuses those its newer shape functions disagree with.
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    prefix = str(root / reference["prefix"]) + ("/" if reference["prefix"].endswith("/") else "")
    meta_graph = meta_graph_pb2.MetaGraphDef()
    meta_graph.ParseFromString(Path(prefix + ".meta").read_bytes())
    for node in meta_graph.graph_def.node:
        node.attr.pop("_output_shapes", None)
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(meta_graph, clear_devices=True)
    return _run_session(graph, reference, inputs, prefix, saver)


def run_reference(entry: CorpusEntry, root: Path, inputs: Arrays) -> dict[str, np.ndarray]:
    """The entry's model, from the extraction ``root``, on ``inputs``: {output key: array}."""
    source = root / entry.source
    if entry.kind == KERAS_H5:
        return keras_h5(source, entry.reference, inputs)
    if entry.kind == SAVED_MODEL:
        return saved_model(source, inputs)
    if entry.kind == FROZEN_GRAPH:
        return frozen_graph(source, entry.reference, inputs)
    if entry.kind == CHECKPOINT:
        return checkpoint(root, entry.reference, inputs)
    raise ValueError(f"unknown corpus kind {entry.kind!r}")
