"""Keras model files (.keras, .h5), loaded by the Keras that wrote them.

A file's ``keras_version`` decides the loader: 2.x files are read with tf_keras (Keras 2, which
TensorFlow 2.21 no longer ships as ``tf.keras``), 3.x files with Keras 3. When the file's config
holds a form that loader misreads or rejects (the legacy-config breakages in ``_keras_legacy``),
the config is fixed in a temporary copy and the copy is loaded; the fixes applied are recorded in
the source's details.
The model is then traced into one tf.function whose inputs are named after the model's input
layers and whose outputs are keyed by its output layer names, and frozen into a GraphDef.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from packager.errors import SourceError, UsageError, first_line
from packager.graph.frozen_model import LoadedSource, TensorRef
from packager.graph.surgery import drop_frozen_variable_updates
from packager.modes import BATCHNORM_MODES, BatchNormMode
from packager.sources._keras_legacy import (
    KERAS_3,
    TF_KERAS,
    KerasLoader,
    apply_legacy_fixes,
    config_objects,
    write_with_config,
)
from packager.tf_runtime import numpy_dtype_name, shape_tuple, tensorflow

if TYPE_CHECKING:
    import keras
    import tensorflow as tf
    import tf_keras
    from tensorflow import Tensor  # by name: functions below bind tf to the module at run time
    from tensorflow.core.framework.graph_pb2 import GraphDef

    # Two unrelated classes: a file is loaded by the Keras that wrote it.
    KerasModel: TypeAlias = keras.Model | tf_keras.Model


def read_keras_version(path: Path) -> str:
    """Return the Keras version recorded in a .keras archive or an HDF5 model file."""
    if path.suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as archive:
                metadata = json.loads(archive.read("metadata.json"))
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
            raise SourceError(
                f"{path} is not a valid .keras archive ({first_line(exc)}): the file is corrupt or truncated"
            ) from None
        return str(metadata.get("keras_version", "3"))
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if "model_config" not in handle.attrs:
                raise SourceError(
                    f"{path} holds weights only (no model_config): save the whole model with "
                    "model.save(), or rebuild it with --builder"
                )
            version = handle.attrs.get("keras_version", b"2")
    except OSError as exc:
        raise SourceError(
            f"{path} is not a valid HDF5 model file ({first_line(exc)}): the file is corrupt or truncated"
        ) from None
    return version.decode() if isinstance(version, bytes) else str(version)


def read_model_config(path: Path) -> dict[str, Any]:
    """The model's architecture (the JSON config) from a .keras archive or an HDF5 file."""
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(path, "r") as handle:
            raw = handle.attrs["model_config"]
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise SourceError(f"{path} has no readable model config ({first_line(exc)}): the file is corrupt") from None


def layer_class_names(config: Any) -> list[tuple[str, str]]:
    """(class_name, layer name) of every layer in a model config, nested models included."""
    return [
        (node["class_name"], str(node["config"]["name"]))
        for node in config_objects(config)
        if isinstance(node.get("class_name"), str) and isinstance(node.get("config"), dict) and "name" in node["config"]
    ]


def import_custom_objects(module_name: str | None) -> dict[str, object]:
    """The public classes and functions of ``module_name``, for Keras deserialization, plus its
    ``CUSTOM_OBJECTS`` dict when it has one: the mapping packages pass to ``load_model``, and the
    only way to name objects a file calls by a name no ``def`` can have (a lambda's ``"<lambda>"``).
    """
    if module_name is None:
        return {}
    import importlib
    import inspect

    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(
            f"--custom-objects: cannot import {module_name}: {first_line(exc)} (is it on PYTHONPATH?)"
        ) from None
    found: dict[str, object] = {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
    }
    mapping = getattr(module, "CUSTOM_OBJECTS", None)
    if mapping is not None:
        if not isinstance(mapping, dict) or not all(isinstance(key, str) for key in mapping):
            raise UsageError(f"--custom-objects: {module_name}.CUSTOM_OBJECTS must be a dict of names to objects")
        found.update(mapping)
    return found


# Keras layers that normalise with the batch's statistics when called with training=True.
_BATCHNORM_LAYERS = frozenset({"BatchNormalization", "SyncBatchNormalization"})
BATCHNORM_TRAINING_FIX = "batchnorm_training_call"


def _call_kwargs(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The keyword arguments of each call of a layer in a functional model config.

    Keras 3 stores a call as {"args": [...], "kwargs": {...}}, Keras 2 as a list of
    [layer, node index, tensor index, kwargs] entries.
    """
    for call in node.get("inbound_nodes") or []:
        if isinstance(call, dict) and isinstance(call.get("kwargs"), dict):
            yield call["kwargs"]
        elif isinstance(call, list):
            for entry in call:
                if isinstance(entry, list) and len(entry) >= 4 and isinstance(entry[3], dict):
                    yield entry[3]


def batchnorm_training_calls(config: Any) -> list[str]:
    """Names of the BatchNormalization layers a model config calls with training=True."""
    return [
        str(node["config"].get("name", "?"))
        for node in config_objects(config)
        if node.get("class_name") in _BATCHNORM_LAYERS
        and isinstance(node.get("config"), dict)
        and any(kwargs.get("training") for kwargs in _call_kwargs(node))
    ]


def strip_batchnorm_training(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` whose BatchNormalization calls no longer pass training=True.

    The layer then follows the model's own call, training=False when tfpack traces it: it
    normalises with its moving mean and variance, the model as training=False would have built it.
    """
    fixed = copy.deepcopy(config)
    for node in config_objects(fixed):
        if node.get("class_name") in _BATCHNORM_LAYERS:
            for kwargs in _call_kwargs(node):
                if kwargs.get("training"):
                    del kwargs["training"]
    return fixed


def _check_batchnorm_mode(path: Path, loader: KerasLoader, calls: list[str], batchnorm: BatchNormMode) -> bool:
    """Whether the BatchNormalization calls with training=True must be stripped from the config.

    tf_keras honours a layer call's own training=True over the model's training=False: traced,
    such a layer normalises with the batch's statistics and updates its moving averages, which no
    frozen graph can hold. Keras 3 lets the model's training=False win, as its predict() does, so
    its files already serve the moving statistics.

    Raises:
        UsageError: an unknown mode; auto with such calls under tf_keras.
        SourceError: batch with such calls (their batch statistics cannot be frozen).
    """
    if batchnorm not in BATCHNORM_MODES:
        raise UsageError(f"--batchnorm must be one of {', '.join(BATCHNORM_MODES)}, not {batchnorm!r}")
    if not calls:
        return False
    if batchnorm == "batch":
        raise SourceError(
            f"{path}: --batchnorm batch cannot serve BatchNormalization layer(s) {', '.join(calls)} called with "
            "training=True: Keras updates their moving averages in that call, which a frozen serving graph cannot "
            "hold; use --batchnorm inference (moving mean and variance)"
        )
    if batchnorm == "auto" and loader == TF_KERAS:
        raise UsageError(
            f"{path}: BatchNormalization layer(s) {', '.join(calls)} are called with training=True and would "
            "normalise with the statistics of the batch: pass --batchnorm inference to use their moving mean and "
            "variance (as training=False would), or --batchnorm batch to keep batch statistics"
        )
    return batchnorm == "inference"


def loader_for(keras_version: str) -> KerasLoader:
    """The Keras that reads files of ``keras_version``: tf_keras for 2.x, Keras 3 for 3.x.

    keras-core (0.x), Keras 3's preview, wrote the Keras 3 format.
    """
    major = keras_version.split(".", 1)[0]
    if major == "1":
        raise SourceError(
            f"Keras {keras_version} files are not supported: load the model with Keras 2 and save it "
            "again (model.save('model.h5')), or rebuild it and convert a checkpoint with --builder"
        )
    return TF_KERAS if major == "2" else KERAS_3


def _load_with(loader: KerasLoader, path: Path, custom_objects: dict[str, object], unsafe: bool) -> KerasModel:
    if loader == TF_KERAS:
        import tf_keras

        return tf_keras.models.load_model(path, compile=False, custom_objects=custom_objects, safe_mode=not unsafe)
    import keras

    return keras.models.load_model(path, compile=False, custom_objects=custom_objects, safe_mode=not unsafe)


def _keras_error(exc: BaseException) -> str:
    """The innermost cause in a Keras load error, on one line.

    Keras 3 nests each failing object's whole config in the message and puts the actual cause
    after the last "Exception encountered:".
    """
    text = str(exc)
    marker = "Exception encountered:"
    if marker in text:
        return first_line(RuntimeError(text.rsplit(marker, 1)[1]))
    return first_line(exc)


def _load_model(
    path: Path,
    keras_version: str,
    config: dict[str, Any],
    custom_objects: dict[str, object],
    unsafe: bool,
    strip_batchnorm: bool = False,
) -> tuple[KerasModel, list[str]]:
    """Load ``path`` with the Keras that wrote it, through a fixed copy when its config needs fixes.

    Args:
        strip_batchnorm: also drop training=True from BatchNormalization calls (--batchnorm inference).

    Returns:
        The model and the names of the legacy fixes its config needed (empty when none).
    """
    loader = loader_for(keras_version)
    fixed_config, fixes = apply_legacy_fixes(config, loader)
    if strip_batchnorm:
        fixed_config, fixes = strip_batchnorm_training(fixed_config), [*fixes, BATCHNORM_TRAINING_FIX]
    if not fixes:
        try:
            return _load_with(loader, path, custom_objects, unsafe), []
        except Exception as exc:  # Keras raises anything from ValueError to KeyError on bad files
            raise SourceError(f"Keras {keras_version} cannot load {path}: {_keras_error(exc)}") from None
    with tempfile.TemporaryDirectory(prefix="tfpack-keras-") as scratch:
        # The loaders pick the format from the suffix, so the copy keeps the file's name.
        fixed_copy = Path(scratch) / path.name
        write_with_config(path, fixed_config, fixed_copy)
        try:
            return _load_with(loader, fixed_copy, custom_objects, unsafe), fixes
        except Exception as exc:
            raise SourceError(
                f"Keras {keras_version} cannot load {path}, even with the legacy-config fixes "
                f"{', '.join(fixes)}: {_keras_error(exc)}"
            ) from None


def _strip_tensor_suffix(name: str) -> str:
    return re.sub(r":\d+$", "", name)


def _output_names(model: KerasModel) -> list[str]:
    """The names of the layers producing the model's outputs.

    Functional models list them as ``output_names``; a Keras 3 Sequential rebuilt from a config
    without an Input has no such attribute, but each output tensor still knows its layer.
    """
    names = getattr(model, "output_names", None)
    if names:
        return list(names)
    return [tensor._keras_history[0].name for tensor in model.outputs]


def frozen_graph_def(concrete: tf.types.experimental.ConcreteFunction, output_names: list[str]) -> GraphDef:
    """The GraphDef of ``concrete`` with its variables turned into constants.

    This is what ``frozen.graph.as_graph_def()`` of ``convert_variables_to_constants_v2(concrete)``
    holds, minus that function: TensorFlow builds it by importing the frozen GraphDef into a new
    function, pruning it and exporting it again, three more copies of every weight that cost a
    ~100 MB model ~0.8 GB of peak RSS and seconds, only for tfpack to read the GraphDef back.
    The prune is kept (nodes the outputs do not need are dropped, as the function's prune did);
    the node order and TensorFlow-internal ``_`` attrs may differ from that round trip.

    Args:
        output_names: the tensor names of the function's outputs.
    """
    tf = tensorflow()
    from tensorflow.python.framework import convert_to_constants

    converter = getattr(convert_to_constants, "_FunctionConverterDataInEager", None)
    replace_variables = getattr(convert_to_constants, "_replace_variables_by_constants", None)
    if converter is None or replace_variables is None:  # another TensorFlow: the public round trip
        return drop_frozen_variable_updates(
            convert_to_constants.convert_variables_to_constants_v2(concrete).graph.as_graph_def()
        )
    graph_def, _ = replace_variables(
        converter_data=converter(func=concrete, lower_control_flow=True, aggressive_inlining=False)
    )
    inputs = [t.name for t in concrete.inputs if t.dtype != tf.resource]
    keep = {_strip_tensor_suffix(name) for name in [*inputs, *output_names]}
    by_name = {node.name: node for node in graph_def.node}
    pending = list(keep)
    while pending:
        for name in by_name[pending.pop()].input:
            name = _strip_tensor_suffix(name.lstrip("^"))
            if name not in keep:
                keep.add(name)
                pending.append(name)
    if len(keep) < len(graph_def.node):
        graph_def = tf.compat.v1.graph_util.extract_sub_graph(graph_def, sorted(keep))
    return drop_frozen_variable_updates(graph_def)


def load_keras_file(
    path: Path, *, custom_objects: str | None = None, unsafe: bool = False, batchnorm: BatchNormMode = "auto"
) -> LoadedSource:
    """Load a Keras model file and freeze it into a GraphDef with named inputs and outputs.

    Args:
        path: a .keras or .h5 model file.
        custom_objects: module providing custom layers/functions the file refers to.
        unsafe: allow Lambda layers, whose Python code is stored in (and run from) the file.
        batchnorm: auto|inference|batch — for BatchNormalization layers called with training=True
            (see _check_batchnorm_mode): inference makes them use their moving statistics.
    """
    tf = tensorflow()

    keras_version = read_keras_version(path)
    config = read_model_config(path)
    lambdas = [name for class_name, name in layer_class_names(config) if class_name == "Lambda"]
    if lambdas and not unsafe:
        raise SourceError(
            f"{path} has Lambda layer(s) ({', '.join(lambdas)}) whose Python code would run on load: "
            "pass --unsafe only if you trust the file, or replace them with custom layers (--custom-objects)"
        )
    batchnorm_calls = batchnorm_training_calls(config)
    strip_batchnorm = _check_batchnorm_mode(path, loader_for(keras_version), batchnorm_calls, batchnorm)
    model, legacy_fixes = _load_model(
        path, keras_version, config, import_custom_objects(custom_objects), unsafe, strip_batchnorm
    )
    input_keys = [_strip_tensor_suffix(getattr(t, "name", f"input_{i}")) for i, t in enumerate(model.inputs)]
    output_keys = _output_names(model)
    if len(set(output_keys)) != len(output_keys):
        output_keys = [f"output_{i}" for i in range(len(output_keys))]
    specs = [tf.TensorSpec(tuple(t.shape), tf.as_dtype(t.dtype), name=key) for t, key in zip(model.inputs, input_keys)]

    def call_model(values: list[Tensor]) -> list[Tensor]:
        result = model(values if len(values) > 1 else values[0], training=False)
        return tf.nest.flatten(result)

    @tf.function(input_signature=specs)
    def serve(*values: Tensor) -> dict[str, Tensor]:
        return dict(zip(output_keys, call_model(list(values))))

    try:
        concrete = serve.get_concrete_function()
        structured = concrete.structured_outputs
        graph_def = frozen_graph_def(concrete, [structured[key].name for key in output_keys])
    except Exception as exc:  # tracing runs the model's own Python: anything can go wrong in it
        raise SourceError(f"cannot trace {path} into a graph: {type(exc).__name__}: {first_line(exc)}") from None
    inputs = [  # the signature's own placeholders come first, before the captured variables
        TensorRef(key=key, tensor_name=t.name, dtype=numpy_dtype_name(t.dtype), shape=shape_tuple(t.shape))
        for key, t in zip(input_keys, concrete.inputs)
    ]
    outputs = [
        TensorRef(
            key=key,
            tensor_name=structured[key].name,
            dtype=numpy_dtype_name(structured[key].dtype),
            shape=shape_tuple(structured[key].shape),
        )
        for key in output_keys
    ]

    def run_reference(
        feeds: Mapping[str, np.ndarray],
        inputs_: list[TensorRef],
        outputs_: list[TensorRef],
        fixed: Mapping[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        del inputs_, fixed  # the model declares its own inputs; --constant is for graph sources
        values = call_model([tf.constant(feeds[key]) for key in input_keys])
        by_key = {key: np.asarray(v) for key, v in zip(output_keys, values)}
        return {o.key: by_key[o.key] for o in outputs_}

    return LoadedSource(
        path=path,
        format="keras",
        graph_def=graph_def,
        inputs=inputs,
        outputs=outputs,
        files=[path],
        run_reference=run_reference,
        details={
            "keras_version": keras_version,
            "loader": loader_for(keras_version),
            "model_class": type(model).__name__,
            "legacy_fixes": legacy_fixes,
            "batchnorm_training_calls": batchnorm_calls,
        },
    )
