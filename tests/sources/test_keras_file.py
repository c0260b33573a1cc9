"""Keras sources: Keras 2 and 3 files, legacy configs, Lambda and custom layers, many inputs and outputs.

Every conversion is checked the same way: the served SavedModel (loaded with TF's own loader) must
return what the Keras model itself returns on the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import keras_legacy as factory

from packager.convert import ConvertOptions, convert
from packager.errors import SourceError
from packager.layout import PROVENANCE_FILE
from packager.sources import SourceOptions
from packager.tf_runtime import tensorflow

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast


def keras_module(name: str) -> Any:
    if name == "tf_keras":
        import tf_keras

        return tf_keras
    import keras

    return keras


def serve(version_dir: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run serving_default with TF2's SavedModel loader, independently of tfpack."""
    tf = tensorflow()
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in feeds.items()}).items()}


def source_details(version_dir: Path) -> dict[str, Any]:
    return json.loads((version_dir / PROVENANCE_FILE).read_text())["source"]["details"]


def assert_serves_like(version_dir: Path, model: Any, feeds: dict[str, np.ndarray]) -> None:
    """The SavedModel's outputs equal the Keras model's, output layer by output layer."""
    served = serve(version_dir, feeds)
    ordered = [feeds[tensor.name.split(":")[0]] for tensor in model.inputs]
    outputs = model(ordered if len(ordered) > 1 else ordered[0], training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    assert set(served) == set(model.output_names)
    for name, want in zip(model.output_names, outputs):
        np.testing.assert_allclose(served[name], np.asarray(want), rtol=1e-5, atol=1e-5)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


PIXELS = {"pixels": np.random.default_rng(1).uniform(-1, 1, size=(3, 8, 8, 2)).astype(np.float32)}
MULTI_FEEDS = {
    "features": np.random.default_rng(2).normal(size=(4, 4)).astype(np.float32),
    "extra": np.random.default_rng(3).normal(size=(4, 2)).astype(np.float32),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same architectures written by tf_keras (Keras 2) and Keras 3, in every file format."""
    import keras
    import tf_keras

    root = tmp_path_factory.mktemp("keras_files")
    return {
        "k2_vision.h5": factory.save(factory.build_vision_model(tf_keras), root / "k2_vision.h5"),
        "k2_vision.keras": factory.save(factory.build_vision_model(tf_keras), root / "k2_vision.keras"),
        "k3_vision.keras": factory.save(factory.build_vision_model(keras), root / "k3_vision.keras"),
        "k3_vision.h5": factory.save(factory.build_vision_model(keras), root / "k3_vision.h5"),
        "k2_multi.h5": factory.save(factory.build_multi_io_model(tf_keras), root / "k2_multi.h5"),
        "k3_multi.keras": factory.save(factory.build_multi_io_model(keras), root / "k3_multi.keras"),
        "k3_multi.h5": factory.save(factory.build_multi_io_model(keras), root / "k3_multi.h5"),
        "k3_mlp.h5": factory.save(factory.build_sequential_model(keras), root / "k3_mlp.h5"),
    }


def load_natively(path: Path, keras_name: str) -> Any:
    return keras_module(keras_name).models.load_model(path, compile=False)


@pytest.mark.parametrize(
    ("name", "keras_name"),
    [
        ("k2_vision.h5", "tf_keras"),
        ("k2_vision.keras", "tf_keras"),
        ("k3_vision.keras", "keras"),
        ("k3_vision.h5", "keras"),
    ],
)
def test_vision_model_reproduces_keras(files, tmp_path: Path, name: str, keras_name: str) -> None:
    """ReLU(threshold, max_value), bilinear UpSampling2D and DepthwiseConv2D, from both Kerases."""
    result = convert(files[name], ConvertOptions(name="vision", output_dir=tmp_path))

    details = source_details(result.version_dir)
    assert details["keras_version"].split(".")[0] == ("2" if keras_name == "tf_keras" else "3")
    assert details["loader"] == ("tf_keras" if keras_name == "tf_keras" else "keras3")
    assert details["legacy_fixes"] == []
    assert [(r.key, r.shape) for r in result.inputs] == [("pixels", (None, 8, 8, 2))]
    assert [(r.key, r.shape) for r in result.outputs] == [("scores", (None, 4))]
    assert_serves_like(result.version_dir, load_natively(files[name], keras_name), PIXELS)


@pytest.mark.parametrize(
    ("name", "keras_name"), [("k2_multi.h5", "tf_keras"), ("k3_multi.keras", "keras"), ("k3_multi.h5", "keras")]
)
def test_multi_input_multi_output_keeps_everything(files, tmp_path: Path, name: str, keras_name: str) -> None:
    result = convert(files[name], ConvertOptions(name="multi", output_dir=tmp_path))

    assert [r.key for r in result.inputs] == ["features", "extra"]
    assert sorted(r.key for r in result.outputs) == ["embedding", "probs", "score"]
    assert_serves_like(result.version_dir, load_natively(files[name], keras_name), MULTI_FEEDS)


# (fixes, file they apply to, the writer's form, the loader tfpack picks, that loader's own error)
LEGACY_CASES = [
    (
        ["ndarray_values"],
        "k2_vision.h5",
        factory.as_tf1_relu_ndarrays,
        "tf_keras",
        "'<' not supported between instances of 'dict'",
    ),
    (
        ["ragged_kwarg"],
        "k2_vision.h5",
        factory.with_stray_ragged,
        "tf_keras",
        "('Keyword argument not understood:', 'ragged')",
    ),
    (
        ["batch_shape"],
        "k2_vision.h5",
        factory.as_keras3_input,
        "tf_keras",
        "Unrecognized keyword arguments: ['batch_shape']",
    ),
    (
        ["tf1_initializer_args"],
        "k3_vision.h5",
        factory.as_tf1_initializers,
        "keras",
        "unexpected keyword argument 'dtype'",
    ),
    (
        ["depthwise_groups"],
        "k3_vision.keras",
        factory.as_tf_keras_depthwise,
        "keras",
        "Unrecognized keyword arguments passed to DepthwiseConv2D: {'groups': 1}",
    ),
    (
        ["depthwise_groups"],
        "k3_vision.h5",
        factory.as_tf_keras_depthwise,
        "keras",
        "Unrecognized keyword arguments passed to DepthwiseConv2D: {'groups': 1}",
    ),
    (
        ["ndarray_values"],
        "k3_vision.keras",
        factory.as_tf1_relu_ndarrays,
        "keras",
        "'<' not supported between instances of 'dict'",
    ),
    (
        ["sequential_layer_list", "sequential_batch_input_shape"],
        "k3_mlp.h5",
        factory.as_keras22_sequential,
        "keras",
        "pop expected at most 1 argument",
    ),
]
MLP_VALUES = np.linspace(-2, 2, 8, dtype=np.float32).reshape(2, 4)


def assert_mlp_serves_like(result: Any, original: Any) -> None:
    """Keras 2 named a Sequential's implicit input after its first layer (d1_input), as tfpack does."""
    assert [(r.key, r.shape) for r in result.inputs] == [("d1_input", (None, 4))]
    served = serve(result.version_dir, {"d1_input": MLP_VALUES})
    np.testing.assert_allclose(served["d2"], np.asarray(original(MLP_VALUES)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("fixes", "name", "rewrite", "keras_name", "native_error"),
    LEGACY_CASES,
    ids=[f"{'+'.join(case[0])}-{case[1]}" for case in LEGACY_CASES],
)
def test_legacy_config_is_fixed_on_the_fly(
    files,
    tmp_path: Path,
    fixes: list[str],
    name: str,
    rewrite: factory.ConfigRewrite,
    keras_name: str,
    native_error: str,
) -> None:
    legacy = factory.patch_config(files[name], tmp_path / f"legacy{files[name].suffix}", rewrite)
    digest = sha256(legacy)
    with pytest.raises(Exception) as native:
        load_natively(legacy, keras_name)
    assert native_error in str(native.value)

    result = convert(legacy, ConvertOptions(name="legacy", output_dir=tmp_path / "out"))

    assert source_details(result.version_dir)["legacy_fixes"] == fixes
    assert sha256(legacy) == digest  # the user's file is never modified
    original = load_natively(files[name], keras_name)
    if "vision" in name:
        assert_serves_like(result.version_dir, original, PIXELS)
    else:
        assert_mlp_serves_like(result, original)


def test_keras2_sequential_input_shape_is_not_misread_by_keras3(files, tmp_path: Path) -> None:
    """Keras 3 loads a Keras 2 Sequential's first-layer batch_input_shape with an extra dimension."""
    legacy = factory.patch_config(files["k3_mlp.h5"], tmp_path / "legacy.h5", factory.as_keras2_sequential)
    assert tuple(load_natively(legacy, "keras").inputs[0].shape) == (None, None, 4)  # silently wrong

    result = convert(legacy, ConvertOptions(name="mlp", output_dir=tmp_path / "out"))

    assert source_details(result.version_dir)["legacy_fixes"] == ["sequential_batch_input_shape"]
    assert_mlp_serves_like(result, load_natively(files["k3_mlp.h5"], "keras"))


def test_unfixable_config_is_one_clear_source_error(files, tmp_path: Path) -> None:
    """A fix that applies but does not suffice: the loader's remaining complaint, on one line."""

    def groups_and_unknown_layer(config: dict[str, Any]) -> None:
        factory.as_tf_keras_depthwise(config)
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "GlobalAveragePooling2D":
                layer["class_name"] = "NoSuchPooling"

    broken = factory.patch_config(files["k3_vision.keras"], tmp_path / "broken.keras", groups_and_unknown_layer)
    with pytest.raises(SourceError) as error:
        convert(broken, ConvertOptions(name="broken", output_dir=tmp_path / "out"))
    message = str(error.value)
    assert "even with the legacy-config fixes depthwise_groups" in message and "\n" not in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_keras1_file_is_refused(files, tmp_path: Path) -> None:
    old = factory.set_keras_version(
        factory.patch_config(files["k2_multi.h5"], tmp_path / "k1.h5", lambda c: None), "1.2.2"
    )
    with pytest.raises(SourceError, match=r"Keras 1.2.2 files are not supported"):
        convert(old, ConvertOptions(name="old", output_dir=tmp_path / "out"))


@pytest.mark.parametrize(
    ("keras_name", "suffix"), [("tf_keras", ".h5"), ("tf_keras", ".keras"), ("keras", ".keras"), ("keras", ".h5")]
)
def test_lambda_layers_need_unsafe(tmp_path: Path, keras_name: str, suffix: str) -> None:
    path = factory.save(factory.build_lambda_model(keras_module(keras_name)), tmp_path / f"lambda{suffix}")
    output_dir = tmp_path / "out"

    with pytest.raises(SourceError, match=r"Lambda layer\(s\) \(shift\).*--unsafe"):
        convert(path, ConvertOptions(name="lam", output_dir=output_dir))
    assert not output_dir.exists() or not any(output_dir.rglob("*"))

    result = convert(path, ConvertOptions(name="lam", output_dir=output_dir, source=SourceOptions(unsafe=True)))
    model = keras_module(keras_name).models.load_model(path, compile=False, safe_mode=False)
    assert_serves_like(result.version_dir, model, {"values": np.arange(6, dtype=np.float32).reshape(2, 3)})


@pytest.mark.parametrize("keras_name", ["tf_keras", "keras"])
def test_custom_layers_come_from_custom_objects_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keras_name: str
) -> None:
    module_name = f"tfpack_test_layers_{keras_name}"
    factory.write_custom_layer_module(tmp_path, module_name, keras_name)
    keras = keras_module(keras_name)
    with monkeypatch.context() as writing:
        writing.syspath_prepend(str(tmp_path))
        layers_module = __import__(module_name)
        keras.utils.set_random_seed(23)
        values = keras.Input((3,), name="values")
        scaled = layers_module.ScaleShift(shift=0.5, name="scale_shift")(keras.layers.Dense(3, name="dense")(values))
        path = factory.save(
            keras.Model(values, scaled), tmp_path / ("custom.h5" if keras_name == "tf_keras" else "custom.keras")
        )
    # Now as in a fresh process: the module is neither imported, registered nor importable.
    monkeypatch.delitem(sys.modules, module_name)
    if keras_name == "keras":
        monkeypatch.delitem(keras.saving.get_custom_objects(), f"{module_name}>ScaleShift")

    with pytest.raises(SourceError, match="ScaleShift"):
        convert(path, ConvertOptions(name="custom", output_dir=tmp_path / "out"))

    monkeypatch.syspath_prepend(str(tmp_path))
    options = ConvertOptions(
        name="custom", output_dir=tmp_path / "out", source=SourceOptions(custom_objects=module_name)
    )
    result = convert(path, options)
    model = keras.models.load_model(
        path, compile=False, custom_objects={"ScaleShift": sys.modules[module_name].ScaleShift}
    )
    assert_serves_like(result.version_dir, model, {"values": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)})


def test_unimportable_custom_objects_module_is_a_usage_error(files, tmp_path: Path, tfpack_cli) -> None:
    result = tfpack_cli(
        "convert",
        files["k3_mlp.h5"],
        "--name",
        "m",
        "--output-dir",
        tmp_path / "out",
        "--custom-objects",
        "no_such_module_for_tfpack",
    )
    assert result.exit_code == 2
    assert "cannot import no_such_module_for_tfpack" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def _truncated(source: Path, destination: Path) -> Path:
    destination.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return destination


def _random(destination: Path) -> Path:
    destination.write_bytes(np.random.default_rng(5).bytes(4096))
    return destination


@pytest.mark.parametrize(
    "make",
    [
        lambda files, d: _truncated(files["k2_vision.h5"], d / "truncated.h5"),
        lambda files, d: _truncated(files["k3_vision.h5"], d / "truncated_k3.h5"),
        lambda files, d: _truncated(files["k3_vision.keras"], d / "truncated.keras"),
        lambda files, d: _random(d / "random.h5"),
        lambda files, d: _random(d / "random.keras"),
    ],
    ids=["truncated-k2.h5", "truncated-k3.h5", "truncated.keras", "random.h5", "random.keras"],
)
def test_broken_keras_files_exit_2_and_write_nothing(files, tmp_path: Path, tfpack_cli, make) -> None:
    broken = make(files, tmp_path)
    output_dir = tmp_path / "out"

    with pytest.raises(SourceError):
        convert(broken, ConvertOptions(name="broken", output_dir=output_dir))
    result = tfpack_cli("convert", broken, "--name", "broken", "--output-dir", output_dir)

    assert result.exit_code == 2, result.stderr
    assert broken.name in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not output_dir.exists() or not any(output_dir.rglob("*"))
