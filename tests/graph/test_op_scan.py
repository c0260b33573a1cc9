"""The op scan: ops that touch files, the network, the environment or Python, and unknown ops,
are refused unless allowed — decided by what an op does, over everything a server can run, and
before convert runs any of the source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from factories.hostile_models import (
    DATASET_KINDS,
    write_dataset_frozen_graph,
    write_dataset_saved_model,
    write_restore_hook_checkpoint,
    write_tf1_init_op_saved_model,
)
from factories.sources import write_frozen_classifier

from packager.convert import ConvertOptions, convert
from packager.errors import SourceError, UsageError
from packager.graph.op_scan import classify_op, scan_graph_def, scan_saved_model
from packager.layout import PROVENANCE_FILE
from packager.tf_runtime import tensorflow

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

_LIVE_GRAPHS = []  # a py_func's Python callback lives only as long as the graph that made it


def _frozen(path: Path, build) -> Path:  # type: ignore[no-untyped-def]
    tf = tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        build(tf)
    _LIVE_GRAPHS.append(graph)
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def _reads_a_file(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")

    def build(tf):  # type: ignore[no-untyped-def]
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        length = tf.cast(tf.strings.length(tf.io.read_file(str(secret))), tf.float32)
        tf.identity(x * length, name="y")

    return _frozen(tmp_path / "reads_file.pb", build)


def _writes_a_file(tmp_path: Path) -> Path:
    def build(tf):  # type: ignore[no-untyped-def]
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        write = tf.io.write_file(str(tmp_path / "dropped.txt"), tf.strings.as_string(tf.reduce_sum(x)))
        with tf.control_dependencies([write]):
            tf.identity(x + 1.0, name="y")

    return _frozen(tmp_path / "writes_file.pb", build)


def _runs_python(tmp_path: Path) -> Path:
    def build(tf):  # type: ignore[no-untyped-def]
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        doubled = tf.compat.v1.py_func(lambda v: v * 2, [x], tf.float32, stateful=False)
        tf.identity(tf.reshape(doubled, tf.shape(x)), name="y")

    return _frozen(tmp_path / "py_func.pb", build)


@pytest.mark.parametrize(
    "make, op_type", [(_reads_a_file, "ReadFile"), (_writes_a_file, "WriteFile"), (_runs_python, "PyFuncStateless")]
)
def test_denied_op_stops_convert_until_allowed(make, op_type: str, tmp_path: Path) -> None:
    source = make(tmp_path)
    with pytest.raises(UsageError, match=rf"{op_type} .*--allow-op {op_type}"):
        convert(source, ConvertOptions(name="m", output_dir=tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    # Allowed by name, it converts (py_func runs: its Python lives in this very process).
    result = convert(source, ConvertOptions(name="m", output_dir=tmp_path / "out", allowed_ops=[op_type]))
    scan = json.loads((result.version_dir / PROVENANCE_FILE).read_text())["op_scan"]
    assert [(f["op"], f["allowed"]) for f in scan["findings"]] == [(op_type, True)]


def test_scan_command_on_sources_and_version_dirs(tmp_path: Path, tfpack_cli) -> None:
    clean = write_frozen_classifier(tmp_path / "clean.pb")
    assert tfpack_cli("scan", clean).exit_code == 0
    denied = _reads_a_file(tmp_path)
    result = tfpack_cli("scan", denied, "--json")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["findings"][0]["op"] == "ReadFile"
    assert tfpack_cli("scan", denied, "--allow-op", "ReadFile").exit_code == 0


def test_scan_finds_print_and_custom_ops_in_a_saved_model(tmp_path: Path, tfpack_cli) -> None:
    tf = tensorflow()

    class Printing(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def serve(self, x):  # type: ignore[no-untyped-def]
            tf.print("input was", x)
            return {"y": tf.nn.softmax(x)}

    module = Printing()
    tf.saved_model.save(module, str(tmp_path / "printing" / "1"), signatures={"serving_default": module.serve})
    result = tfpack_cli("scan", tmp_path / "printing" / "1", "--json")
    assert result.exit_code == 3, result.stderr
    assert "PrintV2" in {f["op"] for f in json.loads(result.stdout)["findings"]}

    from tensorflow.core.protobuf import saved_model_pb2

    custom = shutil.copytree(tmp_path / "printing" / "1", tmp_path / "custom" / "1")
    saved_model = saved_model_pb2.SavedModel.FromString((custom / "saved_model.pb").read_bytes())
    for function in saved_model.meta_graphs[0].graph_def.library.function:
        for node in function.node_def:
            if node.op == "Softmax":
                node.op = "AcmeFusedSoftmax"
    (custom / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    result = tfpack_cli("scan", custom, "--json")
    assert result.exit_code == 3
    assert any(
        f["op"] == "AcmeFusedSoftmax" and "custom op" in f["reason"] for f in json.loads(result.stdout)["findings"]
    )


def test_a_py_func_whose_python_is_gone_is_a_clean_source_error(tmp_path: Path) -> None:
    """In another process (or once its graph is gone) a py_func cannot run: exit 2, no traceback."""
    tf = tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        tf.identity(tf.compat.v1.py_func(lambda v: v, [x], tf.float32), name="y")
    path = tmp_path / "orphan.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    token = graph.get_operation_by_name("PyFunc").get_attr("token")
    del graph, x
    import gc

    gc.collect()
    from tensorflow.python.ops import script_ops

    assert script_ops._py_funcs.get(token) is None
    with pytest.raises(SourceError, match="fails to run on inputs"):
        convert(path, ConvertOptions(name="m", output_dir=tmp_path / "out", allowed_ops=["PyFunc"]))
    assert not (tmp_path / "out").exists()


def test_clean_conversion_records_a_clean_scan(tmp_path: Path) -> None:
    result = convert(write_frozen_classifier(tmp_path / "c.pb"), ConvertOptions(name="c", output_dir=tmp_path / "out"))
    scan = json.loads((result.version_dir / PROVENANCE_FILE).read_text())["op_scan"]
    assert scan["clean"] is True and scan["findings"] == [] and scan["ops_scanned"] > 0
    np.testing.assert_equal(scan["target"], str(tmp_path / "c.pb"))
    # What was written scans clean too: sign and build scan the version dir the same way.
    assert scan_saved_model(result.version_dir).blocking == []


def test_a_training_graphs_dataset_functions_are_not_written_into_the_served_model(tmp_path: Path) -> None:
    """A tf.data-fed TF1 checkpoint: its iterator is replaced by placeholders, and the dataset
    functions its library still holds (never called by the serving path) are pruned, not served."""
    from factories.tf1_graphs import write_dataset_fed_ema

    from packager.sources import SourceOptions

    dataset_fed = write_dataset_fed_ema(tmp_path / "dataset_fed")
    result = convert(
        dataset_fed.prefix, ConvertOptions(name="m", output_dir=tmp_path / "out", source=SourceOptions(ema="off"))
    )
    written = scan_saved_model(result.version_dir)
    assert written.blocking == [], written.summary()


def test_custom_ops_in_a_source_are_reported_by_scan_and_refused_by_convert(tmp_path: Path, tfpack_cli) -> None:
    from tensorflow.core.framework import graph_pb2

    path = write_frozen_classifier(tmp_path / "custom.pb")
    graph_def = graph_pb2.GraphDef.FromString(path.read_bytes())
    for node in graph_def.node:
        if node.op == "Softmax":
            node.op = "AcmeSoftmax"
    path.write_bytes(graph_def.SerializeToString())
    result = tfpack_cli("scan", path, "--json")
    assert result.exit_code == 3
    assert [f["op"] for f in json.loads(result.stdout)["findings"]] == ["AcmeSoftmax"]
    converted = tfpack_cli("convert", path, "--name", "m", "--output-dir", tmp_path / "out")
    assert converted.exit_code == 2 and "custom ops): AcmeSoftmax" in converted.stderr


# --- issue 10: the scan decides by what an op does, and runs before any of the source does ----


def _host_file(tmp_path: Path, kind: str) -> Path:
    """The file a hostile model reads (a stand-in for /etc/passwd) or, for the writer, would write."""
    if kind == "tfrecord_writer":
        return tmp_path / "dropped.tfrecord"
    secret = tmp_path / ("secret.tfrecord" if kind == "tfrecord" else "passwd")
    if kind == "tfrecord":
        tf = tensorflow()
        with tf.io.TFRecordWriter(str(secret)) as writer:
            writer.write(b"root:x:0:0")
    else:
        secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    return secret


@pytest.mark.parametrize("kind", DATASET_KINDS)
def test_dataset_readers_and_writers_are_refused_by_convert_and_scan(kind: str, tmp_path: Path, tfpack_cli) -> None:
    """Issue 10: FixedLengthRecordDataset("/etc/passwd") & co. converted "nothing denied" and served the file."""
    host_file = _host_file(tmp_path, kind)
    source = write_dataset_saved_model(tmp_path / "hostile", kind, host_file)

    converted = tfpack_cli("convert", source, "--name", "m", "--output-dir", tmp_path / "out")
    assert converted.exit_code == 2, converted.stderr
    assert len(converted.stderr.strip().splitlines()) == 1 and "Traceback" not in converted.stderr
    assert "a tf.data or TF1 reader op" in converted.stderr and "--allow-op " in converted.stderr
    assert not (tmp_path / "out").exists()
    assert kind != "tfrecord_writer" or not host_file.exists()  # the writer never ran

    scanned = tfpack_cli("scan", source, "--json")
    assert scanned.exit_code == 3
    denied = {f["op"] for f in json.loads(scanned.stdout)["findings"]}
    expected = {
        "fixed_length": "FixedLengthRecordDatasetV2",
        "text_line": "TextLineDataset",
        "tfrecord": "TFRecordDataset",
        "tfrecord_writer": "DatasetToTFRecord",
    }[kind]
    assert expected in denied, denied
    assert kind != "tfrecord_writer" or not host_file.exists()


def test_a_dataset_reader_in_a_frozen_graph_is_refused_by_convert_and_scan(tmp_path: Path, tfpack_cli) -> None:
    source = write_dataset_frozen_graph(tmp_path / "reader.pb", _host_file(tmp_path, "fixed_length"))
    converted = tfpack_cli("convert", source, "--name", "m", "--output-dir", tmp_path / "out")
    assert converted.exit_code == 2 and "FixedLengthRecordDatasetV2" in converted.stderr
    assert not (tmp_path / "out").exists()
    scanned = tfpack_cli("scan", source, "--json")
    assert scanned.exit_code == 3
    # The reader sits in a function of the graph's library (the flat_map body), not in the graph.
    reader = [f for f in json.loads(scanned.stdout)["findings"] if f["op"] == "FixedLengthRecordDatasetV2"]
    assert reader and "/" in reader[0]["node"]


@pytest.mark.parametrize("collection", ["saved_model_main_op", "legacy_init_op"])
def test_an_init_op_that_writes_a_file_is_refused_before_it_runs(collection: str, tmp_path: Path, tfpack_cli) -> None:
    """Issue 10: loading the source ran its main_op/legacy_init_op, and the file appeared on the build host."""
    target = tmp_path / "written_by_the_model"
    source = write_tf1_init_op_saved_model(tmp_path / "tf1", target, collection)

    converted = tfpack_cli("convert", source, "--name", "m", "--output-dir", tmp_path / "out")
    assert converted.exit_code == 2, converted.stderr
    assert "WriteFile (drop_file: writes the server's file system)" in converted.stderr
    assert "--allow-op WriteFile" in converted.stderr
    assert not target.exists()
    assert not (tmp_path / "out").exists()

    # `tfpack scan SOURCE` and `tfpack scan VERSION_DIR` read the proto; neither runs the op,
    # even when it is allowed.
    version_dir = shutil.copytree(source, tmp_path / "models" / "m" / "1")
    for scanned_path in (source, version_dir):
        scanned = tfpack_cli("scan", scanned_path, "--json")
        assert scanned.exit_code == 3
        assert [(f["op"], f["node"]) for f in json.loads(scanned.stdout)["findings"]] == [("WriteFile", "drop_file")]
        assert tfpack_cli("scan", scanned_path, "--allow-op", "WriteFile").exit_code == 0
    assert not target.exists()
    assert [f.op_type for f in scan_saved_model(version_dir).blocking] == ["WriteFile"]


def test_a_checkpoint_whose_restore_op_writes_a_file_is_refused_before_restoring(tmp_path: Path, tfpack_cli) -> None:
    """Restoring a TF1 checkpoint runs its .meta saver's restore op and all it depends on."""
    target = tmp_path / "written_by_restore"
    prefix = write_restore_hook_checkpoint(tmp_path / "ckpt", target)
    converted = tfpack_cli("convert", prefix, "--name", "m", "--output-dir", tmp_path / "out")
    assert converted.exit_code == 2 and "WriteFile (drop_file" in converted.stderr, converted.stderr
    scanned = tfpack_cli("scan", prefix, "--json")
    assert scanned.exit_code == 3 and json.loads(scanned.stdout)["findings"][0]["op"] == "WriteFile"
    assert not target.exists() and not (tmp_path / "out").exists()


# Effectful ops, by category, that must be denied whatever their name looks like.
_DENIED = {
    "dataset": [
        "TextLineDataset",
        "TFRecordDataset",
        "TFRecordDatasetV2",
        "FixedLengthRecordDatasetV2",
        "DatasetToTFRecord",
        "CacheDatasetV2",
        "SaveDatasetV2",
        "SqlDataset",
        "MatchingFilesDataset",
        "DatasetToSingleElement",
        "ReduceDataset",
        "IteratorGetNext",
        "TFRecordReaderV2",
        "ReaderReadV2",
        "GetOptions",
        "InitializeTableFromDataset",
    ],
    "file system": [
        "ReadFile",
        "WriteFile",
        "MatchingFiles",
        "ImmutableConst",
        "InitializeTableFromTextFileV2",
        "GenerateVocabRemapping",
        "RecordInput",
        "Skipgram",
    ],
    "checkpoint": ["SaveV2", "RestoreV2", "MergeV2Checkpoints", "LoadAndRemapMatrix"],
    "network": [
        "RpcCall",
        "RemoteCall",
        "CollectiveReduceV2",
        "NcclAllReduce",
        "_Send",
        "_Recv",
        "DataServiceDatasetV4",
        "RegisterDataset",
    ],
    "python": ["PyFunc", "PyFuncStateless", "EagerPyFunc"],
    "printing": ["Print", "PrintV2", "WriteScalarSummary", "CreateSummaryFileWriter", "DebugIdentityV2", "DumpTensor"],
    "environment": ["GetSessionTensor", "GetSessionHandleV2", "FileSystemSetConfiguration"],
    "native": ["XlaCustomCall"],
    "unclassified stateful": ["TPUExecute", "ConfigureDistributedTPU", "NegTrain"],
    "unknown": ["AcmeReadSecrets"],
}
# What real inference graphs use: never denied.
_ALLOWED = [
    "Const",
    "Placeholder",
    "Identity",
    "NoOp",
    "MatMul",
    "Conv2D",
    "VarHandleOp",
    "ReadVariableOp",
    "AssignVariableOp",
    "VariableV2",
    "RandomUniform",
    "StatelessRandomUniformV2",
    "Assert",
    "CheckNumerics",
    "While",
    "If",
    "StatelessWhile",
    "StatefulPartitionedCall",
    "PartitionedCall",
    "TensorListReserve",
    "TensorListSetItem",
    "TensorArrayV3",
    "HashTableV2",
    "MutableHashTableV2",
    "LookupTableFindV2",
    "InitializeTableV2",
    "StringFormat",
    "RegexReplace",
    "StaticRegexFullMatch",
    "ShardedFilename",
    "DecodeJpeg",
    "ParseExampleV2",
    "DecodeProtoV2",
    "BoostedTreesPredict",
    "CudnnRNNV3",
    "FIFOQueueV2",
]


@pytest.mark.parametrize("op_type", [op for ops in _DENIED.values() for op in ops])
def test_effectful_and_unknown_ops_are_denied(op_type: str) -> None:
    assert classify_op(op_type) is not None


@pytest.mark.parametrize("op_type", _ALLOWED)
def test_inference_ops_are_not_denied(op_type: str) -> None:
    assert classify_op(op_type) is None


def _registered_ops():  # type: ignore[no-untyped-def]
    tensorflow()
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import pywrap_tf_session

    return op_def_pb2.OpList.FromString(pywrap_tf_session.TF_GetBuffer(pywrap_tf_session.TF_GetAllOpList())).op


def test_every_registered_op_that_names_a_file_or_a_dataset_is_denied() -> None:
    """Over TensorFlow's whole registry, by what the OpDef says rather than by a list of names."""
    from tensorflow.core.framework import types_pb2

    path_like = ("file", "path", "dir", "prefix", "url", "address")
    # String inputs with a path-ish name that only format or match strings, never open anything.
    formatting_only = {"ShardedFilename", "ShardedFilespec"}
    missed = []
    for op_def in _registered_ops():
        names_a_path = any(
            arg.type == types_pb2.DT_STRING and any(word in arg.name for word in path_like) for arg in op_def.input_arg
        ) or any(
            any(word in a.name for word in ("file", "path", "url"))
            for a in op_def.attr
            if a.type.startswith(("string", "list(string)"))
        )
        dataset = "Dataset" in op_def.name or "Reader" in op_def.name or "Iterator" in op_def.name
        if (names_a_path or dataset) and op_def.name not in formatting_only and classify_op(op_def.name) is None:
            missed.append(op_def.name)
    # FixedUnigramCandidateSampler/DecodeProtoV2/EncodeProto name a file only when the node sets
    # vocab_file / a descriptor_source other than local://; classify_node checks the values.
    assert set(missed) <= {"FixedUnigramCandidateSampler", "DecodeProtoV2", "EncodeProto"}, missed


def test_every_function_in_the_library_is_scanned_even_unreachable_ones(tmp_path: Path) -> None:
    tf = tensorflow()

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def never_called(contents):  # type: ignore[no-untyped-def]
        tf.io.write_file(str(tmp_path / "x"), contents)
        return contents

    graph_def = tf.Graph().as_graph_def()
    graph_def.library.function.add().CopyFrom(never_called.get_concrete_function().function_def)
    result = scan_graph_def(graph_def, "g")
    assert [f.op_type for f in result.blocking] == ["WriteFile"]
    assert result.blocking[0].node.startswith(never_called.get_concrete_function().function_def.signature.name)


def test_a_saved_model_init_op_and_its_assets_are_scanned(tmp_path: Path) -> None:
    """A vocabulary table from a file: its initializer runs in __saved_model_init_op and reads a file."""
    tf = tensorflow()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\nb\n")

    class Lookup(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.TextFileInitializer(
                    str(vocab),
                    tf.string,
                    tf.lookup.TextFileIndex.WHOLE_LINE,
                    tf.int64,
                    tf.lookup.TextFileIndex.LINE_NUMBER,
                ),
                -1,
            )

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, words):  # type: ignore[no-untyped-def]
            return {"ids": self.table.lookup(words)}

    module = Lookup()
    version_dir = tmp_path / "lookup" / "1"
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
    result = scan_saved_model(version_dir)
    assert "InitializeTableFromTextFileV2" in {f.op_type for f in result.blocking}
    assert result.assets == ["assets/vocab.txt"]
    assert scan_saved_model(version_dir, frozenset({"InitializeTableFromTextFileV2"})).blocking == []

    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    saved_model.meta_graphs[0].asset_file_def[0].filename = "../../../etc/passwd"
    (version_dir / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    escaping = [f for f in scan_saved_model(version_dir, frozenset({"InitializeTableFromTextFileV2"})).blocking]
    assert [f.op_type for f in escaping] == ["asset"] and "outside the assets directory" in escaping[0].reason


def test_a_saved_models_own_saver_is_not_denied_but_a_file_op_hidden_in_it_is(tmp_path: Path) -> None:
    """SaveV2/RestoreV2 in the saver functions load the variables: exempt there, and only there."""
    tf = tensorflow()

    class Dense(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable([[1.0], [2.0]])

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def serve(self, x):  # type: ignore[no-untyped-def]
            return {"y": tf.matmul(x, self.w)}

    module = Dense()
    version_dir = tmp_path / "dense" / "1"
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
    clean = scan_saved_model(version_dir)
    assert clean.blocking == [] and clean.ops_scanned > 0

    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    for function in saved_model.meta_graphs[0].graph_def.library.function:
        for node in function.node_def:
            if node.op == "RestoreV2":  # the saver's restore function: make it read a file too
                node.op = "ReadFile"
                break
    (version_dir / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    assert [f.op_type for f in scan_saved_model(version_dir).blocking] == ["ReadFile"]


def test_a_save_hung_off_the_restore_op_is_scanned_not_exempted(tfpack_cli, tmp_path: Path) -> None:
    from factories.hostile_models import write_save_behind_restore

    target = tmp_path / "victim.txt"
    source = write_save_behind_restore(tmp_path / "saver_evil", target)
    target.unlink(missing_ok=True)  # building the model ran the Save once
    scanned = tfpack_cli("scan", source)
    assert scanned.exit_code == 3 and "Save (evil_save" in scanned.stdout + scanned.stderr
    converted = tfpack_cli("convert", source, "--name", "m", "--output-dir", tmp_path / "out")
    assert converted.exit_code == 2 and "Save (evil_save" in converted.stderr
    assert not target.exists()
