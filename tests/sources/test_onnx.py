"""ONNX sources: models built with the onnx helper API and exported from PyTorch, converted by
tfpack (onnx2tf, installed into tfpack's cache dir on first use) and checked against onnxruntime
and PyTorch themselves, outside tfpack's own proof.

Models that must not be accepted — random draws, batch statistics, NaN outputs, corrupt files,
ops onnx2tf lacks, missing weights — stop with exit 2, one line, nothing written.

onnx and onnxruntime are in the test extra (a missing one fails collection); without PyTorch the
PyTorch tests skip locally, with the reason, and fail in CI (``CI`` set).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from conftest import CliResult, run_tfpack_in_process
from onnx import TensorProto, helper, numpy_helper

from packager.layout import GOLDENS_FILE, PROVENANCE_FILE, Goldens
from packager.tf_runtime import tensorflow

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

H = W = 8
CHANNELS = 3
CLASSES = 5


def require_torch() -> Any:
    """torch, or a skip saying why (locally) / a failure (CI): a missing torch never passes silently."""
    try:
        import torch
    except ImportError:
        message = "PyTorch is not installed: pip install 'torch==2.13.0' (the test extra)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return torch


def save_model(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: dict[str, np.ndarray],
    opset: int = 17,
) -> Path:
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, [numpy_helper.from_array(v, name) for name, v in initializers.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tfpack-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_conv_classifier(path: Path) -> Path:
    """NCHW Conv + Relu + Flatten + MatMul + Softmax, dynamic batch, with names onnx2tf would
    rewrite (``input.1``, ``features:0``); a second, 4-D output keeps the channel axis."""
    rng = np.random.default_rng(0)
    return save_model(
        path,
        [
            helper.make_node("Conv", ["input.1", "kernel", "bias"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["features:0"]),
            helper.make_node("Flatten", ["features:0"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "dense"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", CHANNELS, H, W])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", CLASSES]),
            helper.make_tensor_value_info("features:0", TensorProto.FLOAT, ["batch", 4, H, W]),
        ],
        {
            "kernel": rng.standard_normal((4, CHANNELS, 3, 3)).astype(np.float32),
            "bias": rng.standard_normal(4).astype(np.float32),
            "dense": (rng.standard_normal((4 * H * W, CLASSES)) * 0.1).astype(np.float32),
        },
    )


def convert_ok(source: Path, output_dir: Path, *flags: str) -> Path:
    result = run_tfpack_in_process("convert", source, "--name", "m", "--output-dir", output_dir, "--json", *flags)
    assert result.exit_code == 0, result.stderr
    return Path(json.loads(result.stdout)["version_dir"])


def serving_default(version_dir: Path) -> Any:
    tf = tensorflow()
    return tf.saved_model.load(str(version_dir)).signatures["serving_default"]


def serve(signature: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    tf = tensorflow()
    return {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in feeds.items()}).items()}


def onnxruntime_outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def refused(result: CliResult, output_dir: Path, *expected: str) -> str:
    """The one error line of an exit 2 that wrote nothing; it must contain each of ``expected``."""
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("tfpack: error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    assert not output_dir.exists() or not any(output_dir.rglob("*")), sorted(output_dir.rglob("*"))
    return errors[0]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_conv_classifier(tmp_path_factory.mktemp("onnx") / "classifier.onnx")


@pytest.fixture(scope="module")
def converted(classifier: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_ok(classifier, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def converted_channels_last(classifier: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_ok(classifier, tmp_path_factory.mktemp("models"), "--channels-last")


@pytest.mark.parametrize("rows", [1, 3])
def test_helper_model_serves_what_onnxruntime_computes(classifier: Path, converted: Path, rows: int) -> None:
    signature = serving_default(converted)
    specs = signature.structured_input_signature[1]
    assert list(specs) == ["input.1"]  # the ONNX names, not onnx2tf's rewrites
    assert specs["input.1"].shape.as_list() == [None, CHANNELS, H, W]  # NCHW kept, batch free
    images = np.random.default_rng(rows).standard_normal((rows, CHANNELS, H, W)).astype(np.float32)
    served = serve(signature, {"input.1": images})
    expected = onnxruntime_outputs(classifier, {"input.1": images})
    assert sorted(served) == ["features:0", "probs"]
    for key in expected:
        assert served[key].shape == expected[key].shape
        np.testing.assert_allclose(served[key], expected[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 3])
def test_channels_last_serves_nhwc_and_still_equals_onnxruntime(
    classifier: Path, converted_channels_last: Path, rows: int
) -> None:
    signature = serving_default(converted_channels_last)
    assert signature.structured_input_signature[1]["input.1"].shape.as_list() == [None, H, W, CHANNELS]
    images = np.random.default_rng(10 + rows).standard_normal((rows, CHANNELS, H, W)).astype(np.float32)
    served = serve(signature, {"input.1": images.transpose(0, 2, 3, 1)})
    expected = onnxruntime_outputs(classifier, {"input.1": images})
    np.testing.assert_allclose(served["probs"], expected["probs"], rtol=1e-5, atol=1e-5)
    # Outputs with a channel axis move too: the model is channels-last at its edges.
    np.testing.assert_allclose(served["features:0"], expected["features:0"].transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_provenance_names_the_converter_and_the_reference(converted: Path, converted_channels_last: Path) -> None:
    source = json.loads((converted / PROVENANCE_FILE).read_text())["source"]
    assert source["format"] == "onnx"
    assert list(source["files"]) == ["classifier.onnx"]
    details = source["details"]
    assert details["converter"] == "onnx2tf 1.29.24"
    assert details["reference"].startswith("onnxruntime ")
    assert details["opset"] == {"ai.onnx": 17}
    assert details["producer_name"] == "tfpack-tests"
    assert details["layout"] == "onnx" and details["channels_last"] == []
    moved = json.loads((converted_channels_last / PROVENANCE_FILE).read_text())["source"]["details"]
    assert moved["layout"] == "channels_last" and moved["channels_last"] == ["features:0", "input.1"]


def test_onnx2tf_is_installed_from_its_pinned_hash_outside_site_packages(converted: Path) -> None:
    from packager._isolated_packages import STAMP_FILE
    from packager.sources.onnx_file import ONNX2TF_WHEEL

    target = ONNX2TF_WHEEL.install_dir()
    assert json.loads((target / STAMP_FILE).read_text())["requirement"] == ONNX2TF_WHEEL.requirement
    assert "--hash=sha256:" in ONNX2TF_WHEEL.requirement
    assert "onnx2tf" not in sys.modules  # it ran in a child process: its import changes the process
    assert not any((Path(p) / "onnx2tf").is_dir() for p in sys.path if p and Path(p) != target)


def test_a_wheel_that_does_not_match_its_pinned_hash_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from packager._isolated_packages import ensure_wheel
    from packager.errors import ToolError
    from packager.progress import SILENT
    from packager.sources.onnx_file import ONNX2TF_WHEEL

    monkeypatch.setenv("TFPACK_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ToolError) as raised:
        ensure_wheel(replace(ONNX2TF_WHEEL, sha256="0" * 64), SILENT)
    message = str(raised.value)
    assert "pip install --no-deps onnx2tf==1.29.24 failed" in message and "HASHES" in message, message
    assert "\n" not in message
    # Nothing half-installed is left for a later run to trust.
    assert not (tmp_path / "cache" / "onnx2tf" / "1.29.24").exists()


# --- PyTorch: the route a user takes, torch.onnx.export -> tfpack convert model.onnx ---


def torch_classifier(torch: Any, *, dropout: bool) -> Any:
    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(CHANNELS, 4, 3, padding=1)
            self.norm = torch.nn.BatchNorm2d(4)
            self.drop = torch.nn.Dropout(0.5) if dropout else torch.nn.Identity()
            self.head = torch.nn.Linear(4 * H * W, CLASSES)

        def forward(self, x: Any) -> Any:
            return self.head(self.drop(torch.relu(self.norm(self.conv(x))).flatten(1)))

    torch.manual_seed(0)
    module = Classifier()
    module.train()
    with torch.no_grad():  # running statistics that are not the initial 0 and 1
        for _ in range(4):
            module(torch.randn(16, CHANNELS, H, W) * 2 + 0.5)
    return module


def export_torch(torch: Any, module: Any, path: Path) -> Path:
    torch.onnx.export(
        module,
        (torch.randn(2, CHANNELS, H, W),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        dynamo=True,
        external_data=True,
    )
    return path


@pytest.fixture(scope="module")
def torch_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    """{kind: (module in eval mode, its exported .onnx)}: plain, and with dropout."""
    torch = require_torch()
    root = tmp_path_factory.mktemp("torch")
    models = {}
    for kind in ("plain", "dropout"):
        module = torch_classifier(torch, dropout=kind == "dropout").eval()
        models[kind] = (module, export_torch(torch, module, root / f"{kind}.onnx"))
    return models


@pytest.mark.parametrize("kind", ["plain", "dropout"])
def test_a_pytorch_export_serves_what_pytorch_computes(
    torch_models: dict[str, tuple[Any, Path]], kind: str, tmp_path: Path
) -> None:
    torch = require_torch()
    module, exported = torch_models[kind]
    data = exported.with_name(exported.name + ".data")
    assert data.is_file()  # the weights live beside the graph: the external-data route is tested
    version_dir = convert_ok(exported, tmp_path / "models")
    signature = serving_default(version_dir)
    assert signature.structured_input_signature[1]["image"].shape.as_list() == [None, CHANNELS, H, W]
    for rows in (2, 5):
        images = torch.randn(rows, CHANNELS, H, W, generator=torch.Generator().manual_seed(rows))
        with torch.no_grad():
            expected = module(images).numpy()
        served = serve(signature, {"image": images.numpy()})["logits"]
        np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4)
    files = json.loads((version_dir / PROVENANCE_FILE).read_text())["source"]["files"]
    assert sorted(files) == sorted([exported.name, data.name])


def test_pytorch_exports_batch_norm_of_a_train_mode_module_with_its_running_statistics(tmp_path: Path) -> None:
    """What tfpack gets from a module left in train(): torch.onnx.export (dynamo) writes batch norm
    with the running statistics (eval semantics, with a warning), never the batch's; tfpack then
    serves exactly that."""
    torch = require_torch()
    module = torch_classifier(torch, dropout=False)  # still in train()
    exported = export_torch(torch, module, tmp_path / "train.onnx")
    model = onnx.load(str(exported))
    assert not [
        n
        for n in model.graph.node
        if n.op_type == "BatchNormalization" and any(a.i for a in n.attribute if a.name == "training_mode")
    ]
    images = torch.randn(4, CHANNELS, H, W, generator=torch.Generator().manual_seed(3))
    state = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        batch_statistics = module.train()(images).numpy()
        module.load_state_dict(state)  # the train() call above updated the running statistics
        running_statistics = module.eval()(images).numpy()
    exported_outputs = onnxruntime_outputs(exported, {"image": images.numpy()})["logits"]
    np.testing.assert_allclose(exported_outputs, running_statistics, rtol=1e-4, atol=1e-4)
    assert np.abs(exported_outputs - batch_statistics).max() > 1e-2
    served = serve(serving_default(convert_ok(exported, tmp_path / "models")), {"image": images.numpy()})
    np.testing.assert_allclose(served["logits"], running_statistics, rtol=1e-4, atol=1e-4)


def test_pytorch_dropout_exported_in_train_mode_is_refused(tmp_path: Path) -> None:
    torch = require_torch()
    module = torch_classifier(torch, dropout=True)  # still in train(): the export keeps dropout drawing
    exported = export_torch(torch, module, tmp_path / "train.onnx")
    result = run_tfpack_in_process("convert", exported, "--name", "m", "--output-dir", tmp_path / "models")
    refused(result, tmp_path / "models", "random ops", "Dropout", "model.eval()")


# --- Models the proof must not accept ---

WRONG_MODELS: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {}


def wrong_model(*expected: str) -> Callable[[Callable[[Path], Path]], Callable[[Path], Path]]:
    def register(write: Callable[[Path], Path]) -> Callable[[Path], Path]:
        WRONG_MODELS[write.__name__] = (write, expected)
        return write

    return register


def vector_model(path: Path, nodes: list[onnx.NodeProto], initializers: dict[str, np.ndarray], opset: int = 17) -> Path:
    return save_model(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializers,
        opset,
    )


@wrong_model("random ops", "RandomUniform")
def random_uniform(path: Path) -> Path:
    # onnx2tf folds this draw into one constant: the served model would be deterministic, the
    # source is not.
    return vector_model(
        path,
        [
            helper.make_node("RandomUniform", [], ["noise"], dtype=TensorProto.FLOAT, shape=[1, 4]),
            helper.make_node("Add", ["x", "noise"], ["y"]),
        ],
        {},
    )


@wrong_model("random ops", "Dropout")
def dropout_in_training_mode(path: Path) -> Path:
    return vector_model(
        path,
        [helper.make_node("Dropout", ["x", "ratio", "training"], ["y"])],
        {"ratio": np.array(0.5, np.float32), "training": np.array(True)},
    )


@wrong_model("batch's statistics", "BatchNormalization")
def batch_norm_in_training_mode(path: Path) -> Path:
    rng = np.random.default_rng(1)
    return save_model(
        path,
        [helper.make_node("BatchNormalization", ["x", "scale", "b", "mean", "var"], ["y"], training_mode=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6, 6])],
        {
            "scale": rng.random(4).astype(np.float32) + 0.5,
            "b": rng.random(4).astype(np.float32),
            "mean": rng.random(4).astype(np.float32),
            "var": rng.random(4).astype(np.float32) + 0.5,
        },
        opset=15,
    )


@wrong_model("non-finite", "--sample-inputs")
def nan_output(path: Path) -> Path:
    return vector_model(
        path,
        [helper.make_node("Sqrt", ["minus_one"], ["nan"]), helper.make_node("Add", ["x", "nan"], ["y"])],
        {"minus_one": np.array([-1.0], np.float32)},
    )


@wrong_model("onnx2tf 1.29.24 cannot convert op(s) CastLike (node cast)")
def op_onnx2tf_lacks(path: Path) -> Path:
    return save_model(
        path,
        [helper.make_node("CastLike", ["x", "like"], ["y"], name="cast")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 4])],
        {"like": np.zeros(1, np.float64)},
    )


@wrong_model("cannot convert op(s) com.example:Frobnicate")
def custom_domain_op(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@wrong_model("is not an ONNX model (corrupt or truncated?)")
def truncated(path: Path) -> Path:
    whole = write_conv_classifier(path).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path


@wrong_model("is not an ONNX model")
def not_protobuf(path: Path) -> Path:
    path.write_text("this is not a model\n")
    return path


@wrong_model("not beside it")
def missing_external_data(path: Path) -> Path:
    write_conv_classifier(path)
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    (path.parent / "weights.bin").unlink()
    return path


@wrong_model("outside the model's directory")
def external_data_outside_its_directory(path: Path) -> Path:
    write_conv_classifier(path)
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    (path.parent.parent / "secret.bin").write_bytes((path.parent / "weights.bin").read_bytes())
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    onnx.save(model, str(path))
    return path


@wrong_model("Mod (node remainder) takes the remainder with fmod=1", "floor modulo")
def integer_fmod(path: Path) -> Path:
    # onnx2tf computes floor modulo whatever fmod says: -7 fmod 3 is -1 in onnxruntime, 2 served.
    return save_model(
        path,
        [helper.make_node("Mod", ["x", "three"], ["y"], fmod=1, name="remainder")],
        [helper.make_tensor_value_info("x", TensorProto.INT16, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT16, ["batch", 4])],
        {"three": np.array([3], np.int16)},
        opset=13,
    )


@wrong_model("onnx2tf 1.29.24 fails at Clip (node clip) (a limitation of onnx2tf, not of the model)")
def clip_without_bounds(path: Path) -> Path:
    return vector_model(path, [helper.make_node("Clip", ["x"], ["y"], name="clip")], {})


@wrong_model("Mod takes the remainder with fmod=1")
def float_fmod(path: Path) -> Path:
    return vector_model(
        path, [helper.make_node("Mod", ["x", "three"], ["y"], fmod=1)], {"three": np.array([0.7], np.float32)}
    )


@wrong_model("output(s) 'y' are constants of the model (they do not depend on any input)")
def constant_output(path: Path) -> Path:
    return save_model(
        path,
        [helper.make_node("Identity", ["x"], ["x_copy"]), helper.make_node("Identity", ["table"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("x_copy", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
        ],
        {"table": np.arange(4, dtype=np.float32)},
    )


@wrong_model("lists output(s) 'y' more than once")
def duplicate_outputs(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])] * 2,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@wrong_model("input names 'in:0', 'in/0', 'in.0' all become the TensorFlow parameter name 'in_0'")
def inputs_named_alike(path: Path) -> Path:
    names = ["in:0", "in/0", "in.0"]
    return save_model(
        path,
        [helper.make_node("Sum", names, ["y"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4]) for name in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        {},
    )


@wrong_model("input name(s) 'class', 'if' are Python keywords")
def inputs_named_as_keywords(path: Path) -> Path:
    # TensorFlow writes such a signature but refuses to load it (second review).
    names = ["if", "class"]
    return save_model(
        path,
        [helper.make_node("Sum", names, ["y"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4]) for name in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        {},
    )


def external_data_at(location: str) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        vector_model(path, [helper.make_node("Add", ["x", "w"], ["y"])], {"w": np.ones(4, np.float32)})
        model = onnx.load(str(path))
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=location)
        onnx.save(model, str(path))
        return path

    return write


for _kind, _location, _expected in [
    ("external_data_name_with_nul", "w\x00.bin", "not a usable file name"),
    ("external_data_name_too_long", "a" * 5000, "not a usable file name"),
    ("external_data_in_a_directory", ".", "names external data '.', a directory, not a file"),
]:
    WRONG_MODELS[_kind] = (external_data_at(_location), (_expected,))


@pytest.mark.parametrize("kind", sorted(WRONG_MODELS))
def test_models_the_proof_must_not_accept_are_one_line_exit_2(kind: str, tmp_path: Path) -> None:
    write, expected = WRONG_MODELS[kind]
    (tmp_path / "src").mkdir()
    source = write(tmp_path / "src" / f"{kind}.onnx")
    result = run_tfpack_in_process("convert", source, "--name", "m", "--output-dir", tmp_path / "models")
    line = refused(result, tmp_path / "models", *expected)
    assert len(line) < 600, line


def test_channels_last_goes_with_an_onnx_source_only(tmp_path: Path) -> None:
    from factories.sources import write_frozen_classifier

    source = write_frozen_classifier(tmp_path / "classifier.pb")
    result = run_tfpack_in_process(
        "convert", source, "--name", "m", "--output-dir", tmp_path / "models", "--channels-last"
    )
    refused(result, tmp_path / "models", "--channels-last goes with an ONNX source (.onnx), not a frozen_graph")


def test_a_missing_onnx_extra_names_it(classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # find_spec then reports it absent
    result = run_tfpack_in_process("convert", classifier, "--name", "m", "--output-dir", tmp_path / "models")
    refused(result, tmp_path / "models", "onnxruntime", "pip install 'tfpack[onnx]'")


def test_an_unsupported_suffix_lists_onnx(tmp_path: Path) -> None:
    source = tmp_path / "model.pt"
    source.write_bytes(b"torch pickle")
    result = run_tfpack_in_process("convert", source, "--name", "m", "--output-dir", tmp_path / "models")
    refused(result, tmp_path / "models", "unsupported source type .pt", ".onnx (ONNX)")


# --- Layouts of every rank, names tfpack itself uses, the child and the cached install ---


def write_conv_of_rank(path: Path, rank: int) -> Path:
    """Conv over NCW (rank 3) or NCDHW (rank 5); onnx2tf can keep only ranks 3 and 4 channels-first."""
    rng = np.random.default_rng(rank)
    spatial = [5, 4, 3][: rank - 2]
    return save_model(
        path,
        [helper.make_node("Conv", ["x", "kernel"], ["y"], pads=[1] * (2 * len(spatial)))],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, *spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, *spatial])],
        {"kernel": rng.standard_normal((3, 2, *[3] * len(spatial))).astype(np.float32)},
    )


@pytest.mark.parametrize("rank", [3, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_ncw_and_ncdhw_inputs_serve_in_the_asked_layout(rank: int, channels_last: bool, tmp_path: Path) -> None:
    source = write_conv_of_rank(tmp_path / f"conv{rank}.onnx", rank)
    flags = ["--channels-last"] if channels_last else []
    signature = serving_default(convert_ok(source, tmp_path / "models", *flags))
    x = np.random.default_rng(7).standard_normal((2, 2, *[5, 4, 3][: rank - 2])).astype(np.float32)
    expected = onnxruntime_outputs(source, {"x": x})["y"]
    if channels_last:
        served = serve(signature, {"x": np.moveaxis(x, 1, -1)})["y"]
        np.testing.assert_allclose(np.moveaxis(served, -1, 1), expected, rtol=1e-5, atol=1e-5)
    else:
        assert signature.structured_input_signature[1]["x"].shape.as_list() == [None, 2, *[5, 4, 3][: rank - 2]]
        np.testing.assert_allclose(serve(signature, {"x": x})["y"], expected, rtol=1e-5, atol=1e-5)


def test_tensors_named_like_tfpacks_own_names_do_not_join_them(tmp_path: Path) -> None:
    # tfpack renames the graph's inputs and outputs for onnx2tf: a tensor of the graph already
    # called tfpack_input_1 or tfpack_output_0 must stay apart from them.
    source = save_model(
        tmp_path / "collide.onnx",
        [
            helper.make_node("Mul", ["a", "two"], ["tfpack_input_1"]),
            helper.make_node("Add", ["tfpack_input_1", "b"], ["tfpack_output_0"]),
            helper.make_node("Sub", ["tfpack_output_0", "a"], ["y"]),
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4]) for name in ("a", "b")],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("tfpack_output_0", TensorProto.FLOAT, ["batch", 4]),
        ],
        {"two": np.array([2.0], np.float32)},
    )
    signature = serving_default(convert_ok(source, tmp_path / "models"))
    rng = np.random.default_rng(3)
    feeds = {name: rng.standard_normal((3, 4)).astype(np.float32) for name in ("a", "b")}
    served, expected = serve(signature, feeds), onnxruntime_outputs(source, feeds)
    assert sorted(served) == sorted(expected) == ["tfpack_output_0", "y"]
    for name in expected:
        np.testing.assert_allclose(served[name], expected[name], rtol=1e-5, atol=1e-5)


def test_ids_looked_up_in_a_table_of_the_model_span_the_table_in_the_goldens(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    source = save_model(
        tmp_path / "gather.onnx",
        [
            helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "ids64"], ["y"], axis=0),
        ],
        [helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6, 8])],
        {"table": rng.standard_normal((50, 8)).astype(np.float32)},
    )
    # The table's size, read from the ONNX graph, bounds the generated ids: the goldens reach its
    # last row, and no sample is like another (no --batch-dependent needed).
    version_dir = convert_ok(source, tmp_path / "models")
    details = json.loads((version_dir / PROVENANCE_FILE).read_text())["source"]["details"]
    assert details["index_bounds"] == {"ids": 50}
    golden_ids = Goldens.load(version_dir / GOLDENS_FILE).inputs["ids"]
    assert golden_ids.min() == 0 and golden_ids.max() == 49 and len(np.unique(golden_ids)) > 10
    ids = np.array([[0, 49, 7, 13, 25, 48]], np.int32)
    served = serve(serving_default(version_dir), {"ids": ids})["y"]
    np.testing.assert_allclose(served, onnxruntime_outputs(source, {"ids": ids})["y"], rtol=1e-6)


def test_torch_fmod_of_integers_is_refused(tmp_path: Path) -> None:
    torch: Any = require_torch()

    class Remainder(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return torch.fmod(x, 3)

    source = tmp_path / "fmod.onnx"
    torch.onnx.export(Remainder(), (torch.tensor([[-7, 5, 2]]),), str(source), input_names=["x"], dynamo=False)
    result = run_tfpack_in_process("convert", source, "--name", "m", "--output-dir", tmp_path / "models")
    refused(result, tmp_path / "models", "takes the remainder with fmod=1")


def test_a_conversion_that_fails_where_onnxruntime_runs_names_onnx2tf(tmp_path: Path) -> None:
    # onnx2tf 1.29.24 fixes the mean over a dynamic sequence axis of an embedding to the traced
    # length: the SavedModel fails on other lengths, which is onnx2tf's limitation, not tfpack's.
    torch: Any = require_torch()

    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(100, 8)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, ids: Any) -> Any:
            return self.head(self.embedding(ids).mean(1))

    torch.manual_seed(0)
    source = tmp_path / "tokens.onnx"
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", min=2, max=512)},)
    torch.onnx.export(Tokens().eval(), (torch.randint(0, 100, (2, 7)),), str(source), dynamic_shapes=dims)
    result = run_tfpack_in_process("convert", source, "--name", "m", "--output-dir", tmp_path / "models")
    refused(result, tmp_path / "models", "SavedModel fails on inputs onnxruntime runs", "a limitation of onnx2tf")


def test_a_child_past_its_time_limit_is_one_line_exit_2(
    classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import packager.sources.onnx_file as onnx_file

    monkeypatch.setattr(onnx_file, "CHILD_TIMEOUT_S", 0.01)
    result = run_tfpack_in_process("convert", classifier, "--name", "m", "--output-dir", tmp_path / "models")
    refused(result, tmp_path / "models", "onnx2tf 1.29.24 took over 0.01 s converting")


def test_required_modules_are_the_onnx_extra() -> None:
    import tomllib

    from packager.sources.onnx_file import REQUIRED_MODULES

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    extra = {
        re.split(r"[<>=!~ ;\[]", requirement)[0]
        for requirement in pyproject["project"]["optional-dependencies"]["onnx"]
    }
    assert extra == set(REQUIRED_MODULES.values())


def test_a_changed_or_added_file_in_the_cached_onnx2tf_is_installed_again(
    converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from packager._isolated_packages import _installed
    from packager.sources.onnx_file import ONNX2TF_WHEEL

    installed = ONNX2TF_WHEEL.install_dir()
    monkeypatch.setenv("TFPACK_CACHE_DIR", str(tmp_path / "cache"))
    copy = ONNX2TF_WHEEL.install_dir()
    shutil.copytree(installed, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert _installed(ONNX2TF_WHEEL, copy)
    init = copy / "onnx2tf" / "__init__.py"
    original = init.read_bytes()
    init.write_bytes(original + b"\nopen('/tmp/tfpack-test-pwned', 'w')\n")
    assert not _installed(ONNX2TF_WHEEL, copy)
    init.write_bytes(original)
    assert _installed(ONNX2TF_WHEEL, copy)
    (copy / "onnx2tf" / "ops" / "Relu.py").unlink()
    assert not _installed(ONNX2TF_WHEEL, copy)
    shutil.copy(installed / "onnx2tf" / "ops" / "Relu.py", copy / "onnx2tf" / "ops" / "Relu.py")
    (copy / "onnx2tf" / "ops" / "Extra.py").write_text("print('not from the wheel')\n")
    assert not _installed(ONNX2TF_WHEEL, copy)
