"""tfpack export --format tfjs: a Keras model and a frozen graph, converted by tfpack, exported to a
TensorFlow.js graph model and run again here in Node.js with @tensorflow/tfjs (pure-JS CPU backend).

The npm install of @tensorflow/tfjs is cached under tfpack's cache dir (a session fixture installs
it once); without the npm registry these tests fail, they do not skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import run_tfpack_in_process
from factories.sources import write_frozen_classifier, write_keras3
from factories.tf1_graphs import write_two_tower

from packager.formats import ExportReport, export_version
from packager.formats._tfjs_env import RUNNER_FILE, ensure_node_env, load_saved_model_converter
from packager.formats.tfjs import files_digest
from packager.layout import GOLDENS_FILE, Goldens
from packager.progress import SILENT
from tests.formats import support

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

SOURCES = ["keras", "frozen_graph", "towers"]


@pytest.fixture(scope="session")
def tfjs_runner() -> Path:
    """The cached Node env (npm install on the first run) and the Python converter, installed once."""
    load_saved_model_converter(SILENT)
    return ensure_node_env(SILENT)


@pytest.fixture(scope="module")
def version_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tfjs-sources")
    sources = {
        "keras": write_keras3(root / "multi.keras"),
        "frozen_graph": write_frozen_classifier(root / "classifier.pb"),
        "towers": write_two_tower(root / "towers").prefix,
    }
    models = root / "models"
    return support.convert_sources(sources, models)


def fresh_feeds(version_dir: Path) -> dict[str, np.ndarray]:
    return support.fresh_feeds(version_dir, rows=3, seed=7)


def run_in_node(
    runner: Path, report: ExportReport, feeds: dict[str, np.ndarray], scratch: Path
) -> dict[str, np.ndarray]:
    """Load the written model dir in Node.js, independently of tfpack's own proof code path."""
    request = {
        "inputs": {
            k: {"dtype": "float32", "shape": list(v.shape), "values": v.ravel().tolist()} for k, v in feeds.items()
        },
        "outputs": list(report.outputs),
    }
    (scratch / "request.json").write_text(json.dumps(request))
    subprocess.run(
        ["node", str(runner), str(report.path), str(scratch / "request.json"), str(scratch / "result.json")],
        cwd=runner.parent, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    outputs = json.loads((scratch / "result.json").read_text())["outputs"]
    return {k: np.asarray(v["values"], dtype=np.float32).reshape(v["shape"]) for k, v in outputs.items()}


@pytest.mark.parametrize("kind", SOURCES)
def test_tfjs_export_matches_the_saved_model_in_node(
    kind: str, version_dirs, tfjs_runner: Path, tmp_path: Path
) -> None:
    version_dir = version_dirs[kind]
    report = export_version(version_dir, "tfjs", tmp_path / "out")

    assert report.path == tmp_path / "out" / f"{kind}_tfjs"
    model_json = json.loads((report.path / "model.json").read_text())
    assert model_json["format"] == "graph-model"
    shards = [name for group in model_json["weightsManifest"] for name in group["paths"]]
    assert sorted(p.name for p in report.path.iterdir()) == sorted(["model.json", *shards])
    assert report.bytes == sum(p.stat().st_size for p in report.path.iterdir())
    assert report.runtime.startswith("Node.js @tensorflow/tfjs 4.22.0")
    # The report names the tensors model.json's signature maps each serving_default key to.
    goldens = Goldens.load(version_dir / GOLDENS_FILE)
    signature = model_json["signature"]
    assert report.inputs == {k: v["name"] for k, v in signature["inputs"].items()}
    assert report.outputs == {k: v["name"] for k, v in signature["outputs"].items()}
    assert set(report.inputs) == set(goldens.inputs) and set(report.outputs) == set(goldens.outputs)
    assert all(error <= report.tolerance for error in report.max_abs_error.values())
    assert not [p for p in report.path.parent.iterdir() if p.name.startswith(".")]  # no staging left
    feeds = fresh_feeds(version_dir)
    want = support.serve_saved_model(version_dir, feeds)
    got = run_in_node(tfjs_runner, report, feeds, tmp_path)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5)


def test_altered_goldens_fail_the_proof_and_write_nothing(version_dirs, tfjs_runner: Path, tmp_path: Path) -> None:
    version_dir = tmp_path / "classifier" / "1"
    shutil.copytree(version_dirs["frozen_graph"], version_dir)
    goldens = Goldens.load(version_dir / GOLDENS_FILE)
    Goldens(goldens.inputs, {k: v + 0.25 for k, v in goldens.outputs.items()}).save(version_dir / GOLDENS_FILE)

    result = run_tfpack_in_process("export", version_dir, "--format", "tfjs", "--output-dir", tmp_path / "out")

    assert result.exit_code == 3, result.stderr
    assert "output 'probs' differs by up to 0.25" in result.stderr and "@tensorflow/tfjs" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("tfpack: error:")]) == 1
    assert not (tmp_path / "out").exists()


def test_json_report_and_a_second_export_replaces_the_first(version_dirs, tfjs_runner: Path, tmp_path: Path) -> None:
    result = run_tfpack_in_process(
        "export", version_dirs["keras"], "--format", "tfjs", "--output-dir", tmp_path, "--json"
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)  # the converter's own prints stay out of stdout
    assert report["format"] == "tfjs" and report["path"] == str(tmp_path / "keras_tfjs")
    assert set(report["inputs"]) == set(Goldens.load(version_dirs["keras"] / GOLDENS_FILE).inputs)
    assert report["bytes"] > 0 and len(report["sha256"]) == 64

    again = export_version(version_dirs["keras"], "tfjs", tmp_path)
    # The digest covers every file written (the converter's output is not byte-stable run to run).
    assert again.sha256 == files_digest({p.name: p.read_bytes() for p in again.path.iterdir()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keras_tfjs"]

    (tmp_path / "taken" / "keras_tfjs").mkdir(parents=True)
    (tmp_path / "taken" / "keras_tfjs" / "notes.txt").write_text("not a model")
    taken = run_tfpack_in_process(
        "export", version_dirs["keras"], "--format", "tfjs", "--output-dir", tmp_path / "taken"
    )
    assert taken.exit_code == 2 and "other than a TensorFlow.js model" in taken.stderr, taken.stderr
    assert (tmp_path / "taken" / "keras_tfjs" / "notes.txt").is_file()


def test_missing_node_is_a_one_line_exit_2(version_dirs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = run_tfpack_in_process("export", version_dirs["keras"], "--format", "tfjs", "--output-dir", tmp_path / "o")
    assert result.exit_code == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("tfpack: error:")]
    assert len(error) == 1 and "install Node.js" in error[0] and "npm" in error[0]
    assert not (tmp_path / "o").exists()


def test_the_converter_leaves_no_placeholder_modules_behind(tfjs_runner: Path) -> None:
    import importlib.util
    import sys

    load_saved_model_converter(SILENT)
    for name in ("tensorflow_decision_forests", "jax"):
        if importlib.util.find_spec(name) is None:
            assert name not in sys.modules
    assert (tfjs_runner.parent / RUNNER_FILE) == tfjs_runner


def test_inputs_tfjs_cannot_represent_are_refused_not_wrapped() -> None:
    from packager.errors import UsageError
    from packager.formats.tfjs import _to_json_tensor

    with pytest.raises(UsageError, match="outside int32"):
        _to_json_tensor("ids", np.array([2**31 + 5], dtype=np.int64))
    with pytest.raises(UsageError, match="NaN or infinite"):
        _to_json_tensor("x", np.array([1.0, np.inf], dtype=np.float32))
    assert _to_json_tensor("ids", np.array([2**31 - 1], dtype=np.int64))["values"] == [2**31 - 1]


def test_an_interrupted_replacement_puts_the_earlier_export_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from packager.formats import tfjs

    target = tfjs.write_model_dir(tmp_path / "m_tfjs", {"model.json": b"old", "group1-shard1of1.bin": b"1"})
    real_replace = os.replace
    calls = []

    def interrupted(source, destination):  # type: ignore[no-untyped-def]
        calls.append(destination)
        if len(calls) == 2:  # the new model's rename, after the old one was moved aside
            raise KeyboardInterrupt
        return real_replace(source, destination)

    monkeypatch.setattr(tfjs.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tfjs.write_model_dir(target, {"model.json": b"new"})
    monkeypatch.setattr(tfjs.os, "replace", real_replace)
    assert (target / "model.json").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_tfjs"]


def test_two_exports_of_one_model_into_one_dir_replace_each_other_whole(tmp_path: Path) -> None:
    """Racing writers are serialized by a lock on the output dir: every write succeeds, the model
    left is one of them whole, and no temp or lock file stays behind."""
    from concurrent.futures import ThreadPoolExecutor

    from packager.formats import tfjs

    target = tmp_path / "m_tfjs"
    models = [{"model.json": f"model {i}".encode(), "group1-shard1of1.bin": bytes([i]) * 64} for i in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        written = list(pool.map(lambda files: tfjs.write_model_dir(target, files), models * 3))
    assert written == [target] * len(models) * 3
    left = {p.name: p.read_bytes() for p in target.iterdir()}
    assert left in models
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_tfjs"]


def test_an_unwritable_cache_dir_is_a_one_line_exit_2(version_dirs, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TFPACK_CACHE_DIR", "/proc/tfpack-cache")
    result = run_tfpack_in_process(
        "export", version_dirs["keras"], "--format", "tfjs", "--output-dir", tmp_path / "out"
    )
    assert result.exit_code == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("tfpack: error:")]
    assert len(errors) == 1 and "TFPACK_CACHE_DIR" in errors[0], result.stderr


def test_the_shipped_lockfile_pins_the_runtime_with_integrity_hashes() -> None:
    from packager.formats._tfjs_env import NPM_PROJECT_DIR, TFJS_VERSION

    lock = json.loads((NPM_PROJECT_DIR / "package-lock.json").read_text())
    packages = {name: info for name, info in lock["packages"].items() if name}
    assert packages["node_modules/@tensorflow/tfjs"]["version"] == TFJS_VERSION
    assert json.loads((NPM_PROJECT_DIR / "package.json").read_text())["dependencies"] == {
        "@tensorflow/tfjs": TFJS_VERSION
    }
    assert all(info.get("integrity", "").startswith("sha512-") for info in packages.values()), [
        name for name, info in packages.items() if not info.get("integrity")
    ]
