"""The op scan: file-system, Python and print ops on a serving path are refused unless allowed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from factories.sources import write_frozen_classifier
from packager.convert import ConvertOptions, convert
from packager.errors import SourceError, UsageError
from packager.layout import PROVENANCE_FILE
from packager.tf_runtime import tensorflow


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


@pytest.mark.parametrize("make, op_type", [(_reads_a_file, "ReadFile"), (_writes_a_file, "WriteFile"), (_runs_python, "PyFuncStateless")])
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
    assert any(f["op"] == "AcmeFusedSoftmax" and "custom op" in f["reason"] for f in json.loads(result.stdout)["findings"])


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
