"""Keras files as today's writers leave them, and as older or newer writers left them.

The builders take the Keras module (``tf_keras`` or ``keras``) so the same architecture is written
by Keras 2 and Keras 3. The ``as_*`` rewriters turn a file's JSON config into the form another
writer produced; :func:`patch_config` applies one to a copy of a file, the way such a file reaches
a release engineer. None of them changes what the model computes.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from packager.sources._keras_legacy import config_objects

ConfigRewrite = Callable[[dict[str, Any]], None]


def build_vision_model(keras: ModuleType, *, seed: int = 11) -> Any:
    """pixels [None, 8, 8, 2] -> depthwise conv -> ReLU(threshold, max_value) -> bilinear x2 -> conv -> scores [None, 4]."""
    layers = keras.layers
    keras.utils.set_random_seed(seed)
    pixels = keras.Input((8, 8, 2), name="pixels")
    x = layers.DepthwiseConv2D(3, padding="same", name="depthwise")(pixels)
    x = layers.ReLU(max_value=6.0, threshold=0.3, name="relu")(x)
    x = layers.UpSampling2D(interpolation="bilinear", name="upsample")(x)
    x = layers.Conv2D(3, 3, name="conv")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    scores = layers.Dense(4, name="scores")(x)
    return keras.Model(pixels, scores, name="vision")


def build_multi_io_model(keras: ModuleType, *, seed: int = 13) -> Any:
    """features [None, 4] and extra [None, 2] -> score [None, 1], probs [None, 3], embedding [None, 5]."""
    layers = keras.layers
    keras.utils.set_random_seed(seed)
    features = keras.Input((4,), name="features")
    extra = keras.Input((2,), name="extra")
    hidden = layers.Dense(8, activation="tanh", name="hidden")(layers.Concatenate(name="joined")([features, extra]))
    score = layers.Dense(1, name="score")(hidden)
    probs = layers.Dense(3, activation="softmax", name="probs")(hidden)
    embedding = layers.Dense(5, name="embedding")(features)
    return keras.Model([features, extra], [score, probs, embedding], name="multi_io")


def build_sequential_model(keras: ModuleType, *, seed: int = 17) -> Any:
    """A Sequential MLP: [None, 4] -> Dense(6, relu) -> Dense(3)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((4,), name="values"),
            keras.layers.Dense(6, activation="relu", name="d1"),
            keras.layers.Dense(3, name="d2"),
        ],
        name="mlp",
    )


def build_lambda_model(keras: ModuleType, *, seed: int = 19) -> Any:
    """values [None, 3] -> Dense(3) -> Lambda(x * 2 + 1): a layer whose Python code lives in the file."""
    keras.utils.set_random_seed(seed)
    values = keras.Input((3,), name="values")
    dense = keras.layers.Dense(3, name="dense")(values)
    shifted = keras.layers.Lambda(lambda t: t * 2.0 + 1.0, name="shift")(dense)
    return keras.Model(values, shifted, name="with_lambda")


def save(model: Any, path: Path) -> Path:
    """Save ``model`` in the format the suffix names (.keras or .h5)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def read_config(path: Path) -> dict[str, Any]:
    """The model config a Keras file stores."""
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    import h5py

    with h5py.File(path, "r") as handle:
        raw = handle.attrs["model_config"]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def patch_config(source: Path, destination: Path, rewrite: ConfigRewrite) -> Path:
    """Copy a Keras file with its config rewritten in place by ``rewrite``."""
    config = read_config(source)
    rewrite(config)
    text = json.dumps(config)
    if source.suffix == ".keras":
        with zipfile.ZipFile(source) as original, zipfile.ZipFile(destination, "w") as patched:
            for member in original.infolist():
                patched.writestr(member, text.encode() if member.filename == "config.json" else original.read(member))
        return destination
    import h5py

    shutil.copyfile(source, destination)
    with h5py.File(destination, "r+") as handle:
        handle.attrs["model_config"] = text
    return destination


def _layers(config: dict[str, Any], class_name: str) -> list[dict[str, Any]]:
    return [
        node["config"]
        for node in config_objects(config)
        if node.get("class_name") == class_name and isinstance(node.get("config"), dict)
    ]


def as_tf1_relu_ndarrays(config: dict[str, Any]) -> None:
    """TF 1.10-1.12 tf.keras: ReLU's numpy-cast arguments written as {"type": "ndarray", "value": v}."""
    for relu in _layers(config, "ReLU"):
        for arg in ("max_value", "negative_slope", "threshold"):
            if relu.get(arg) is not None:
                relu[arg] = {"type": "ndarray", "value": relu[arg]}


def as_tf1_initializers(config: dict[str, Any]) -> None:
    """TF 1.x tf.keras: initializers (GlorotUniform, Zeros, ...) serialized with their dtype."""
    for node in config_objects(config):
        if node.get("class_name") in {"GlorotUniform", "Zeros"} and isinstance(node.get("config"), dict):
            node.pop("module", None)
            node.pop("registered_name", None)
            node["config"]["dtype"] = "float32"


def as_tf_keras_depthwise(config: dict[str, Any]) -> None:
    """tf.keras 2.x: DepthwiseConv2D carries its Conv base class's ``groups: 1``."""
    for depthwise in _layers(config, "DepthwiseConv2D"):
        depthwise["groups"] = 1


def as_keras3_input(config: dict[str, Any]) -> None:
    """Keras 3: InputLayer written with ``batch_shape`` instead of ``batch_input_shape``."""
    for input_layer in _layers(config, "InputLayer"):
        input_layer["batch_shape"] = input_layer.pop("batch_input_shape")


def with_stray_ragged(config: dict[str, Any]) -> None:
    """A ``ragged: false`` on a layer whose constructor has no such argument (Conv2D)."""
    for conv in _layers(config, "Conv2D"):
        conv["ragged"] = False


def as_keras2_sequential(config: dict[str, Any]) -> None:
    """Keras 2 without an Input: the Sequential's first layer holds ``batch_input_shape``."""
    layers = config["config"]["layers"]
    input_layer = layers.pop(0)
    shape = input_layer["config"].get("batch_shape", input_layer["config"].get("batch_input_shape"))
    layers[0]["config"]["batch_input_shape"] = shape


def as_keras22_sequential(config: dict[str, Any]) -> None:
    """Keras 2.0-2.2: besides, a Sequential's config is the bare layer list."""
    as_keras2_sequential(config)
    config["config"] = config["config"]["layers"]


def set_keras_version(path: Path, version: str) -> Path:
    """Rewrite the keras_version an HDF5 model file records."""
    import h5py

    with h5py.File(path, "r+") as handle:
        handle.attrs["keras_version"] = version
    return path


CUSTOM_LAYER_MODULE = '''
"""A custom layer a model file refers to by name only."""
import {keras}

{decorator}
class ScaleShift({keras}.layers.Layer):
    """y = x * scale + shift, with a trainable scale per feature."""

    def __init__(self, shift=0.0, **kwargs):
        super().__init__(**kwargs)
        self.shift = shift

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],),
            initializer={keras}.initializers.RandomUniform(0.5, 1.5, seed=3),
        )

    def call(self, inputs):
        return inputs * self.scale + self.shift

    def get_config(self):
        return {{**super().get_config(), "shift": self.shift}}
'''


def write_custom_layer_module(directory: Path, module_name: str, keras_name: str) -> Path:
    """Write a module with a ScaleShift layer for ``keras_name`` ("tf_keras" or "keras").

    The Keras 3 variant registers the class (Keras 3 looks registered names up); tf_keras files
    name the bare class, which only ``custom_objects`` resolves.
    """
    decorator = f'@keras.saving.register_keras_serializable(package="{module_name}")' if keras_name == "keras" else ""
    path = directory / f"{module_name}.py"
    path.write_text(CUSTOM_LAYER_MODULE.format(keras=keras_name, decorator=decorator))
    return path
