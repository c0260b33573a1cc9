"""Config rewrites for Keras files that today's loaders reject or misread.

A Keras file stores its architecture as JSON (``model_config`` in HDF5, ``config.json`` in a
.keras archive). Writers have changed that JSON over the years, and each loader accepts only some
of it: Keras 3 rejects the ``groups`` tf.keras writes for depthwise convolutions, tf_keras rejects
the ``batch_shape`` Keras 3 writes for inputs, both reject the ``{"type": "ndarray"}`` wrappers
TF 1.10-1.12 wrote for ReLU's arguments. Each :class:`LegacyFix` below rewrites one such form into
the one the loader reads as the writer meant it, and names the loaders that need it. Some forms
fail loudly, one (a Keras 2 Sequential's input shape read by Keras 3) silently changes the model,
so the fixes are applied whenever their form is present, not only after a failed load. The rewrite
happens on a temporary copy of the file; the user's file is never touched.
"""

from __future__ import annotations

import copy
import json
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# The Keras that loads a file: tf_keras for Keras 2 files, Keras 3 for its own.
KerasLoader = Literal["tf_keras", "keras3"]
TF_KERAS: KerasLoader = "tf_keras"
KERAS_3: KerasLoader = "keras3"

# Layers whose constructor has a ``ragged`` argument of its own; on any other layer the key is
# a stray the loader rejects.
_LAYERS_WITH_RAGGED = frozenset({"InputLayer", "TextVectorization", "StringLookup", "IntegerLookup", "Hashing"})

# tf.keras 2.x serializes these through its Conv base class, ``groups`` included; Keras 3's
# versions have no such argument.
_DEPTHWISE_LAYERS = frozenset({"DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D"})

_INITIALIZERS = frozenset(
    {
        "Constant",
        "GlorotNormal",
        "GlorotUniform",
        "HeNormal",
        "HeUniform",
        "Identity",
        "LecunNormal",
        "LecunUniform",
        "Ones",
        "Orthogonal",
        "RandomNormal",
        "RandomUniform",
        "TruncatedNormal",
        "VarianceScaling",
        "Zeros",
        "constant",
        "glorot_normal",
        "glorot_uniform",
        "he_normal",
        "he_uniform",
        "identity",
        "lecun_normal",
        "lecun_uniform",
        "ones",
        "orthogonal",
        "random_normal",
        "random_uniform",
        "truncated_normal",
        "variance_scaling",
        "zeros",
    }
)
# Arguments of TF 1.x's tf.initializers classes that the Keras initializers never had.
_TF1_INITIALIZER_ARGS = ("dtype", "verify_shape", "partition_info")


def _unwrap_ndarray_values(node: dict[str, Any]) -> bool:
    """TF 1.10-1.12 wrote numpy scalars in layer configs as {"type": "ndarray", "value": v}.

    The case that breaks models is ReLU (max_value, negative_slope, threshold are cast to numpy
    in its constructor), which both loaders then compare with floats and fail.
    """
    config = node.get("config")
    if not isinstance(config, dict):
        return False
    changed = False
    for key, value in config.items():
        if isinstance(value, dict) and set(value) == {"type", "value"} and value["type"] == "ndarray":
            config[key] = value["value"]
            changed = True
    return changed


def _drop_tf1_initializer_args(node: dict[str, Any]) -> bool:
    """TF 1.x initializers (GlorotUniform and friends) carried a dtype Keras 3's do not accept."""
    config = node.get("config")
    if node.get("class_name") not in _INITIALIZERS or not isinstance(config, dict):
        return False
    dropped = [config.pop(arg) for arg in _TF1_INITIALIZER_ARGS if arg in config]
    return bool(dropped)


def _drop_depthwise_groups(node: dict[str, Any]) -> bool:
    """tf.keras 2.x writes ``groups: 1`` for depthwise/separable convolutions; Keras 3 rejects it."""
    config = node.get("config")
    if node.get("class_name") not in _DEPTHWISE_LAYERS or not isinstance(config, dict):
        return False
    if config.get("groups", None) != 1:  # only the value that means "no grouping" is safe to drop
        return False
    del config["groups"]
    return True


def _batch_shape_to_batch_input_shape(node: dict[str, Any]) -> bool:
    """Keras 3 writes InputLayer(batch_shape=...); tf_keras only knows batch_input_shape."""
    config = node.get("config")
    if node.get("class_name") != "InputLayer" or not isinstance(config, dict) or "batch_shape" not in config:
        return False
    config["batch_input_shape"] = config.pop("batch_shape")
    return True


def _drop_stray_ragged(node: dict[str, Any]) -> bool:
    """``ragged: false`` on a layer whose constructor has no such argument: both loaders reject it, it means nothing."""
    config = node.get("config")
    if not isinstance(config, dict) or node.get("class_name") in _LAYERS_WITH_RAGGED:
        return False
    if "ragged" not in config or config["ragged"]:
        return False
    del config["ragged"]
    return True


def _wrap_sequential_layer_list(node: dict[str, Any]) -> bool:
    """Keras 2.0-2.2 wrote a Sequential's config as a bare list of layers; Keras 3 needs a dict."""
    if node.get("class_name") != "Sequential" or not isinstance(node.get("config"), list):
        return False
    node["config"] = {"name": "sequential", "layers": node["config"]}
    return True


def _input_layer_for_first_layer_shape(node: dict[str, Any]) -> bool:
    """Keras 2 Sequential configs carry the input shape as the first layer's ``batch_input_shape``.

    Keras 3's legacy loader turns it into that layer's ``input_shape`` batch dimension included,
    so the model silently gains a dimension ([None, 4] becomes [None, None, 4]). An explicit
    InputLayer in front says what Keras 2 meant.
    """
    layers = node.get("config", {}).get("layers") if isinstance(node.get("config"), dict) else None
    if node.get("class_name") != "Sequential" or not layers or layers[0].get("class_name") == "InputLayer":
        return False
    first = layers[0].get("config", {})
    if "batch_input_shape" not in first:
        return False
    input_config = {"batch_shape": first.pop("batch_input_shape"), "dtype": first.get("dtype", "float32")}
    input_config["name"] = f"{first.get('name', 'layer')}_input"
    layers.insert(0, {"class_name": "InputLayer", "config": input_config})
    return True


@dataclass(frozen=True)
class LegacyFix:
    """One known config form a loader rejects or misreads, and its rewrite.

    Attributes:
        name: the name recorded in the LoadedSource details ("legacy_fixes").
        loaders: the loaders that need the rewrite (``"tf_keras"``, ``"keras3"``).
        rewrite: rewrites one JSON object of the config in place; True when it changed it.
    """

    name: str
    loaders: frozenset[KerasLoader]
    rewrite: Callable[[dict[str, Any]], bool]


BOTH: frozenset[KerasLoader] = frozenset({TF_KERAS, KERAS_3})
LEGACY_FIXES: tuple[LegacyFix, ...] = (
    LegacyFix("ndarray_values", BOTH, _unwrap_ndarray_values),
    LegacyFix("ragged_kwarg", BOTH, _drop_stray_ragged),
    LegacyFix("tf1_initializer_args", frozenset({KERAS_3}), _drop_tf1_initializer_args),
    LegacyFix("depthwise_groups", frozenset({KERAS_3}), _drop_depthwise_groups),
    LegacyFix("sequential_layer_list", frozenset({KERAS_3}), _wrap_sequential_layer_list),
    LegacyFix("sequential_batch_input_shape", frozenset({KERAS_3}), _input_layer_for_first_layer_shape),
    LegacyFix("batch_shape", frozenset({TF_KERAS}), _batch_shape_to_batch_input_shape),
)


def config_objects(config: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in a Keras model config, parents before children."""
    if isinstance(config, dict):
        yield config
        for value in list(config.values()):
            yield from config_objects(value)
    elif isinstance(config, list):
        for value in config:
            yield from config_objects(value)


def apply_legacy_fixes(config: dict[str, Any], loader: KerasLoader) -> tuple[dict[str, Any], list[str]]:
    """Rewrite what ``loader`` would reject or misread in a model config.

    Args:
        config: the model config as the file stores it (not modified).
        loader: ``"tf_keras"`` or ``"keras3"``.

    Returns:
        The rewritten config and the names of the fixes that changed something, in table order.
    """
    fixed = copy.deepcopy(config)
    applied: list[str] = []
    for fix in LEGACY_FIXES:
        if loader not in fix.loaders:
            continue
        # Materialize the walk first: a rewrite may replace a node's children.
        changed = [fix.rewrite(node) for node in list(config_objects(fixed))]
        if any(changed):
            applied.append(fix.name)
    return fixed, applied


def write_with_config(source: Path, config: dict[str, Any], destination: Path) -> None:
    """Copy the Keras file ``source`` to ``destination`` with its model config replaced."""
    text = json.dumps(config)
    if source.suffix == ".keras":
        with zipfile.ZipFile(source) as original, zipfile.ZipFile(destination, "w") as rewritten:
            for member in original.infolist():
                data = text.encode() if member.filename == "config.json" else original.read(member)
                rewritten.writestr(member, data)
        return
    import h5py

    shutil.copyfile(source, destination)
    with h5py.File(destination, "r+") as handle:
        handle.attrs["model_config"] = text
