"""Models an attacker hands tfpack: each reads or writes the host's files when run or loaded.

They reproduce issue 10's findings: tf.data readers that serve a host file's contents, a
tf.data writer that drops a file, a TF1 SavedModel whose main_op / legacy_init_op writes a file
when the SavedModel is loaded, and a TF1 checkpoint whose restore op does the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from packager.tf_runtime import tensorflow

DATASET_KINDS = ("fixed_length", "text_line", "tfrecord", "tfrecord_writer")


def _dataset_leak(tf, kind: str, file: Path):  # type: ignore[no-untyped-def]
    """A scalar string (or a side effect) made by ``kind``'s tf.data op on ``file``."""
    if kind == "fixed_length":
        # The model: the first byte of e.g. /etc/passwd, served as an output.
        return tf.data.FixedLengthRecordDataset(str(file), record_bytes=1).take(1).get_single_element()
    if kind == "text_line":
        return tf.data.TextLineDataset(str(file)).take(1).get_single_element()
    if kind == "tfrecord":
        return tf.data.TFRecordDataset(str(file)).take(1).get_single_element()
    raise ValueError(kind)


def write_dataset_saved_model(directory: Path, kind: str, file: Path) -> Path:
    """A TF2 SavedModel whose serving function runs a tf.data op on ``file``.

    Readers (fixed_length, text_line, tfrecord) return the file's first record as output
    ``leak`` beside ``y = x + 1``; ``tfrecord_writer`` writes a TFRecord file at ``file``
    (DatasetToTFRecord) each time it serves ``y``.
    """
    tf = tensorflow()

    class Hostile(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def serve(self, x):  # type: ignore[no-untyped-def]
            if kind == "tfrecord_writer":
                records = tf.data.Dataset.from_tensors(tf.strings.as_string(tf.reduce_sum(x)))
                tf.data.experimental.TFRecordWriter(str(file)).write(records)
                return {"y": x + 1.0}
            return {"y": x + 1.0, "leak": tf.reshape(_dataset_leak(tf, kind, file), [1])}

    module = Hostile()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory


def write_dataset_frozen_graph(path: Path, file: Path) -> Path:
    """A TF1 GraphDef: ``y = x * len(first byte of file)`` (FixedLengthRecordDataset)."""
    tf = tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        record = tf.data.FixedLengthRecordDataset(str(file), record_bytes=1).take(1).get_single_element()
        tf.identity(x * tf.cast(tf.strings.length(record), tf.float32), name="y")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def write_tf1_init_op_saved_model(directory: Path, target: Path, collection: str = "saved_model_main_op") -> Path:
    """A TF1 SavedModel (``y = x * w``) whose init op writes ``target`` when the model is loaded.

    Args:
        collection: where the init op is recorded: "saved_model_main_op" (Builder's main_op)
            or "legacy_init_op" (older exporters); loaders run either after restoring.
    """
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 2], name="x")
        w = v1.get_variable("w", initializer=np.array([2.0, 3.0], np.float32))
        y = tf.identity(x * w, name="y")
        write = tf.io.write_file(str(target), tf.constant("written by the model's init op"), name="drop_file")
        init_op = tf.group(v1.local_variables_initializer(), write, name="init_all")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(directory))
            builder.add_meta_graph_and_variables(
                session,
                ["serve"],
                signature_def_map={"serving_default": v1.saved_model.predict_signature_def({"x": x}, {"y": y})},
                main_op=init_op,
            )
            builder.save()
    if collection != "saved_model_main_op":
        _move_collection(directory, "saved_model_main_op", collection)
    return directory


def _move_collection(directory: Path, old: str, new: str) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    path = directory / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    collections = saved_model.meta_graphs[0].collection_def
    collections[new].CopyFrom(collections[old])
    del collections[old]
    path.write_bytes(saved_model.SerializeToString())


def write_restore_hook_checkpoint(directory: Path, target: Path) -> Path:
    """A TF1 checkpoint (``y = x * w``) whose .meta saver restore op also writes ``target``.

    The WriteFile is a control input of ``save/restore_all``: restoring the checkpoint through
    the meta graph's saver runs it. Returns the checkpoint prefix.
    """
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 2], name="x")
        w = v1.get_variable("w", initializer=np.array([2.0, 3.0], np.float32))
        tf.identity(x * w, name="y")
        tf.io.write_file(str(target), tf.constant("written by restore"), name="drop_file")
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            prefix = saver.save(session, str(directory / "model.ckpt"))
    from tensorflow.core.protobuf import meta_graph_pb2

    meta_path = Path(f"{prefix}.meta")
    meta_graph = meta_graph_pb2.MetaGraphDef.FromString(meta_path.read_bytes())
    restore = meta_graph.saver_def.restore_op_name
    for node in meta_graph.graph_def.node:
        if node.name == restore:
            node.input.append("^drop_file")
    meta_path.write_bytes(meta_graph.SerializeToString())
    return Path(prefix)


def write_save_behind_restore(directory: Path, target: Path) -> Path:
    """A TF1 SavedModel whose saver's restore op has a control dependency on a ``Save`` of a
    constant path: loading the model (or converting it) would write ``target``. The checkpoint
    op is a saver op by type, but no loader's restore needs it: it must be scanned, not exempted."""
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None], name="x")
        variable = v1.Variable(2.0, name="v")
        y = tf.identity(x * variable, name="y")
        evil = tf.raw_ops.Save(
            filename=tf.constant(str(target)),
            tensor_names=tf.constant(["payload"]),
            data=[tf.constant("written at load")],
            name="evil_save",
        )
        with tf.control_dependencies([evil]):
            saver = v1.train.Saver([variable], sharded=False)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(directory))
            builder.add_meta_graph_and_variables(
                session,
                ["serve"],
                saver=saver,
                signature_def_map={"serving_default": v1.saved_model.predict_signature_def({"x": x}, {"y": y})},
            )
            builder.save()
    return directory
