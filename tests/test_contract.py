"""contract / contract diff: the serving contract of a version and breaking changes (exit 5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from factories.tflite_models import as_tf_serving_serves_it

from packager.tf_runtime import tensorflow

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast


def _save(path: Path, inputs: dict, outputs: dict) -> Path:
    """A TF2 SavedModel whose serving_default has the given input specs and output functions."""
    tf = tensorflow()
    specs = {k: tf.TensorSpec(shape, dtype, name=k) for k, (dtype, shape) in inputs.items()}

    class Model(tf.Module):
        @tf.function(input_signature=[specs])
        def serve(self, features):  # type: ignore[no-untyped-def]
            first = tf.cast(next(iter(features.values())), tf.float32)
            return {k: make(first) for k, make in outputs.items()}

    model = Model()
    tf.saved_model.save(model, str(path), signatures={"serving_default": model.serve})
    return path


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tf = tensorflow()
    root = tmp_path_factory.mktemp("contract")
    base = {"x": ("float32", [None, 4])}
    probs = {"probs": lambda x: tf.nn.softmax(x)}
    return {
        "v1": _save(root / "v1", base, probs),
        "same": _save(root / "same", base, probs),
        "extra_output": _save(root / "extra", base, {**probs, "logits": lambda x: x * 1.0}),
        "relaxed": _save(root / "relaxed", {"x": ("float32", [None, None])}, {"probs": lambda x: tf.nn.softmax(x)}),
        "dtype": _save(root / "dtype", {"x": ("float64", [None, 4])}, probs),
        "new_input": _save(root / "new_input", {**base, "mask": ("int32", [None, 4])}, probs),
        "renamed_output": _save(root / "renamed", base, {"scores": lambda x: tf.nn.softmax(x)}),
    }


def test_contract_lists_signatures(versions, tfpack_cli) -> None:
    result = tfpack_cli("contract", versions["v1"], "--json")
    assert result.exit_code == 0, result.stderr
    signature = json.loads(result.stdout)["signatures"]["serving_default"]
    assert signature["inputs"] == {"x": {"dtype": "float32", "shape": [None, 4]}}
    assert signature["outputs"]["probs"]["dtype"] == "float32"


@pytest.mark.parametrize(
    "new, exit_code, expected",
    [
        ("same", 0, "unchanged"),
        ("extra_output", 0, "compatible serving_default: output logits added"),
        ("relaxed", 0, "shape relaxed"),
        ("dtype", 5, "input x dtype float32 -> float64"),
        ("new_input", 5, "input mask added"),
        ("renamed_output", 5, "output probs removed"),
    ],
)
def test_contract_diff(new: str, exit_code: int, expected: str, versions, tfpack_cli) -> None:
    result = tfpack_cli("contract", "diff", versions["v1"], versions[new])
    assert result.exit_code == exit_code, result.stderr
    assert expected in result.stdout + result.stderr


def test_contract_diff_json_on_a_break(versions, tfpack_cli) -> None:
    result = tfpack_cli("contract", "diff", versions["v1"], versions["dtype"], "--json")
    assert result.exit_code == 5
    assert json.loads(result.stdout)["breaking"] == ["serving_default: input x dtype float32 -> float64"]


def test_contract_usage(tfpack_cli, tmp_path: Path) -> None:
    assert tfpack_cli("contract", "diff", tmp_path).exit_code == 2
    assert tfpack_cli("contract", tmp_path).exit_code == 2


def _tflite_version(converted: Path, target: Path, *, beside: Path | None = None) -> Path:
    """A version dir holding the TFLite conversion of ``converted`` as model.tflite: alone (TF
    Serving's TFLite layout), or beside the SavedModel ``beside`` (served from model.tflite)."""
    if beside is not None:
        shutil.copytree(beside, target)
    else:
        target.mkdir(parents=True)
    converter = tensorflow().lite.TFLiteConverter.from_saved_model(str(converted))
    (target / "model.tflite").write_bytes(as_tf_serving_serves_it(converter.convert()))
    return target


def test_a_tflite_version_dirs_contract_is_what_the_runtime_serves_from_model_tflite(
    versions, tfpack_cli, tmp_path: Path
) -> None:
    from serving.tflite import load_tflite_servable

    alone = _tflite_version(versions["v1"], tmp_path / "alone")
    result = tfpack_cli("contract", alone, "--json")
    assert result.exit_code == 0, result.stderr
    served = load_tflite_servable("m", 1, alone).signature_defs["serving_default"]
    signature = json.loads(result.stdout)["signatures"]["serving_default"]
    assert set(signature["inputs"]) == set(served.inputs) == {"x"}
    assert signature["inputs"]["x"] == {"dtype": "float32", "shape": [None, 4]}
    # SavedModel v1 -> its TFLite conversion: nothing a client relies on changed.
    assert tfpack_cli("contract", "diff", versions["v1"], alone).exit_code == 0
    # v1's SavedModel beside a model.tflite that lost "probs": model.tflite is what is served.
    dual = _tflite_version(versions["renamed_output"], tmp_path / "dual", beside=versions["v1"])
    broken = tfpack_cli("contract", "diff", versions["v1"], dual)
    assert broken.exit_code == 5 and "output probs removed" in broken.stderr
