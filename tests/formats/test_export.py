"""tfpack export: a Keras model, a frozen graph and a merged-tower checkpoint, converted by tfpack,
exported to a frozen GraphDef and to TFLite, each checked again here in its own runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_tfpack_in_process
from factories.sources import write_frozen_classifier, write_keras3
from factories.tf1_graphs import write_two_tower

from packager.convert import ConvertOptions, convert
from packager.formats import ExportReport, export_version
from packager.layout import GOLDENS_FILE, Goldens
from packager.tf_runtime import tensorflow
from tests.formats import support

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

SOURCES = ["keras", "frozen_graph", "towers"]


def _save_module(directory: Path, function_of_x) -> Path:  # type: ignore[no-untyped-def]
    """A SavedModel whose serving_default maps x [None, 4] float32 to {"y": function_of_x(x)}."""
    tf = tensorflow()

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):  # type: ignore[no-untyped-def]
            return {"y": function_of_x(x)}

    model = Model()
    tf.saved_model.save(model, str(directory), signatures={"serving_default": model.serve})
    return directory


def _write_wide_keras(path: Path) -> Path:
    """Dense layers with more than 1024 weights each, so TFLite's weight quantization applies."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((32,), name="features")
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    outputs = keras.layers.Dense(8, name="scores")(hidden)
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.fixture(scope="module")
def version_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-sources")
    models = root / "models"
    towers = write_two_tower(root / "towers")
    sources = {
        "keras": write_keras3(root / "multi.keras"),
        "frozen_graph": write_frozen_classifier(root / "classifier.pb"),
        "towers": towers.prefix,
        "wide": _write_wide_keras(root / "wide.keras"),
        "cumprod": _save_module(root / "cumprod", lambda x: tensorflow().math.cumprod(x, axis=1)),
    }
    converted = {kind: convert(path, ConvertOptions(name=kind, output_dir=models)) for kind, path in sources.items()}
    assert converted["towers"].tower_mode == "merge"
    return {kind: result.version_dir for kind, result in converted.items()}


def fresh_feeds(version_dir: Path) -> dict[str, np.ndarray]:
    return support.fresh_feeds(version_dir, rows=5, seed=11)


def run_frozen_pb(report: ExportReport, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Load the written .pb as an older TensorFlow would, by the tensor names the report gives."""
    v1 = tensorflow().compat.v1
    graph = v1.Graph()
    with graph.as_default():
        v1.import_graph_def(v1.GraphDef.FromString(report.path.read_bytes()), name="")
    with v1.Session(graph=graph) as session:
        keys = list(report.outputs)
        values = session.run([report.outputs[k] for k in keys], {report.inputs[k]: v for k, v in feeds.items()})
    return dict(zip(keys, values))


def run_tflite_file(report: ExportReport, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(report.path)).get_signature_runner("serving_default")
    return dict(runner(**feeds))


@pytest.mark.parametrize("kind", SOURCES)
def test_frozen_pb_export_matches_the_saved_model_in_a_tf1_session(kind: str, version_dirs, tmp_path: Path) -> None:
    version_dir = version_dirs[kind]
    report = export_version(version_dir, "frozen-pb", tmp_path / "out")

    assert report.path == tmp_path / "out" / f"{kind}.pb"
    assert report.bytes == report.path.stat().st_size > 0
    assert report.runtime == "tf.compat.v1.Session"
    goldens = Goldens.load(version_dir / GOLDENS_FILE)
    assert set(report.inputs) == set(goldens.inputs) and set(report.outputs) == set(goldens.outputs)
    assert all(error <= report.tolerance for error in report.max_abs_error.values())
    feeds = fresh_feeds(version_dir)
    want = support.serve_saved_model(version_dir, feeds)
    got = run_frozen_pb(report, feeds)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", SOURCES)
def test_tflite_export_matches_the_saved_model_in_litert(kind: str, version_dirs, tmp_path: Path) -> None:
    version_dir = version_dirs[kind]
    report = export_version(version_dir, "tflite", tmp_path / "out")

    assert report.path == tmp_path / "out" / f"{kind}.tflite"
    assert report.path.read_bytes()[4:8] == b"TFL3"  # the flatbuffer's file identifier
    assert report.runtime == "ai-edge-litert Interpreter"
    assert report.quantize == "none" and report.select_tf_ops_needed == []
    assert all(error <= report.tolerance for error in report.max_abs_error.values())
    feeds = fresh_feeds(version_dir)
    want = support.serve_saved_model(version_dir, feeds)
    got = run_tflite_file(report, feeds)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("quantize", "default_tolerance"), [("dynamic", 0.05), ("float16", 1e-2)])
def test_quantized_tflite_reports_its_error(quantize: str, default_tolerance: float, version_dirs, tmp_path) -> None:
    version_dir = version_dirs["wide"]
    plain = export_version(version_dir, "tflite", tmp_path / "plain")
    report = export_version(version_dir, "tflite", tmp_path / quantize, quantize=quantize)

    assert report.quantize == quantize and report.tolerance == default_tolerance
    assert report.bytes < plain.bytes * 0.6  # the weights really are stored smaller
    # Lossy, measured, and within the bound the proof used: the tolerance times the output's range.
    span = float(np.ptp(Goldens.load(version_dir / GOLDENS_FILE).outputs["scores"]))
    assert 0 < report.max_abs_error["scores"] <= report.tolerance * span
    # --tolerance below the measured error: the proof fails, exit 3, nothing written.
    result = run_tfpack_in_process(
        "export", version_dir, "--format", "tflite", "--quantize", quantize,
        "--tolerance", str(report.max_abs_error["scores"] / 100), "--output-dir", tmp_path / "strict",
    )  # fmt: skip
    assert result.exit_code == 3, result.stderr
    assert "'scores' differs by up to" in result.stderr
    assert not (tmp_path / "strict").exists()


@pytest.mark.parametrize("fmt", ["frozen-pb", "tflite"])
def test_altered_goldens_fail_the_proof_and_write_nothing(fmt: str, version_dirs, tmp_path: Path) -> None:
    version_dir = tmp_path / "classifier" / "1"
    shutil.copytree(version_dirs["frozen_graph"], version_dir)
    goldens = Goldens.load(version_dir / GOLDENS_FILE)
    Goldens(goldens.inputs, {k: v + 0.25 for k, v in goldens.outputs.items()}).save(version_dir / GOLDENS_FILE)
    output_dir = tmp_path / "out"
    output_dir.mkdir()

    result = run_tfpack_in_process("export", version_dir, "--format", fmt, "--output-dir", output_dir)

    assert result.exit_code == 3, result.stderr
    assert "output 'probs' differs by up to 0.25" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("tfpack: error:")]) == 1
    assert list(output_dir.iterdir()) == []


def test_op_without_a_tflite_builtin_names_it_and_the_flag(version_dirs, tmp_path: Path) -> None:
    result = run_tfpack_in_process(
        "export", version_dirs["cumprod"], "--format", "tflite", "--output-dir", tmp_path / "out"
    )

    assert result.exit_code == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("tfpack: error:")]
    assert len(error) == 1 and "Cumprod" in error[0] and "--select-tf-ops" in error[0]
    assert not (tmp_path / "out").exists()
    # The frozen graph has no such limit: the same model exports and proves there.
    assert export_version(version_dirs["cumprod"], "frozen-pb", tmp_path / "pb").max_abs_error["y"] == 0


def test_json_report_and_usage_errors(version_dirs, tmp_path: Path) -> None:
    result = run_tfpack_in_process(
        "export", version_dirs["keras"], "--format", "frozen-pb", "--output-dir", tmp_path, "--json"
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"format", "path", "bytes", "sha256", "inputs", "outputs", "max_abs_error", "tolerance"}
    assert report["quantize"] == "none" and report["select_tf_ops_needed"] == []

    tfjs = run_tfpack_in_process(
        "export", version_dirs["keras"], "--format", "tfjs", "--quantize", "float16", "--output-dir", tmp_path
    )
    assert tfjs.exit_code == 2 and "--format tflite only" in tfjs.stderr  # tests/formats/test_tfjs.py: the export

    bare = tmp_path / "bare"
    shutil.copytree(version_dirs["keras"], bare)
    (bare / GOLDENS_FILE).unlink()
    missing = run_tfpack_in_process("export", bare, "--format", "tflite", "--output-dir", tmp_path / "x")
    assert missing.exit_code == 2 and "tfpack convert" in missing.stderr

    quantized_pb = run_tfpack_in_process(
        "export", version_dirs["keras"], "--format", "frozen-pb", "--quantize", "dynamic", "--output-dir", tmp_path
    )
    assert quantized_pb.exit_code == 2 and "--format tflite only" in quantized_pb.stderr


def test_missing_litert_names_the_extra(version_dirs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # makes the import fail as if absent
    result = run_tfpack_in_process("export", version_dirs["keras"], "--format", "tflite", "--output-dir", tmp_path)
    assert result.exit_code == 2
    assert "needs the tflite extra: pip install 'tfpack[tflite]'" in result.stderr


def test_a_quantized_export_that_zeroes_small_outputs_is_refused(version_dirs, tmp_path: Path) -> None:
    """Near zero, convert's T * (1 + |golden|) is an absolute 0.05: goldens scaled into [0, 0.01]
    and an artefact answering zeros would pass it. Bound by the output's range, they do not."""
    version_dir = tmp_path / "wide" / "1"
    shutil.copytree(version_dirs["wide"], version_dir)
    goldens = Goldens.load(version_dir / GOLDENS_FILE)
    # The artefact still computes the real scores; goldens of 1/1000 of them stand for an artefact
    # whose outputs all shrank towards zero by quantization gone wrong.
    Goldens(goldens.inputs, {k: v / 1000 for k, v in goldens.outputs.items()}).save(version_dir / GOLDENS_FILE)
    result = run_tfpack_in_process(
        "export", version_dir, "--format", "tflite", "--quantize", "dynamic", "--output-dir", tmp_path / "out"
    )
    assert result.exit_code == 3, result.stderr
    assert "more than 0.05 of its range" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_output_dir_is_checked_before_converting(version_dirs, tmp_path: Path) -> None:
    version_dir = version_dirs["keras"]
    before = sorted(p.name for p in version_dir.iterdir())
    for output_dir, message in (
        (version_dir, "is inside the version dir"),
        (version_dir / "assets.extra", "is inside the version dir"),
    ):
        result = run_tfpack_in_process("export", version_dir, "--format", "frozen-pb", "--output-dir", output_dir)
        assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert sorted(p.name for p in version_dir.iterdir()) == before  # its signature still covers it all
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = run_tfpack_in_process("export", version_dir, "--format", "frozen-pb", "--output-dir", a_file)
    assert result.exit_code == 2 and "is a file" in result.stderr, result.stderr
    (tmp_path / "taken" / "keras.pb").mkdir(parents=True)
    result = run_tfpack_in_process("export", version_dir, "--format", "frozen-pb", "--output-dir", tmp_path / "taken")
    assert result.exit_code == 2 and "a directory is there" in result.stderr, result.stderr


def test_a_frozen_graph_is_the_same_bytes_every_time(version_dirs, tmp_path: Path) -> None:
    first = export_version(version_dirs["keras"], "frozen-pb", tmp_path / "a")
    second = export_version(version_dirs["keras"], "frozen-pb", tmp_path / "b")
    assert first.sha256 == second.sha256
