"""TFLite model versions (--prefer_tflite_model): VERSION_DIR/model.tflite run by the TFLite
interpreter behind the same SignatureDef interface as a SavedModel.

What is served is what TF Serving serves: TfLiteSession::Create and TfLiteSession::Run in
tensorflow_serving/servables/tensorflow/tflite_session.cc (tensorflow/serving, commit 9d981c5c):

* A model carrying "signature_defs_metadata" — a metadata entry whose buffer is a flexbuffer map
  of signature key -> serialized SignatureDef, written by TensorFlow's
  tensorflow/lite/tools/signature/signature_def_util (here by
  packager.formats.tflite_signatures) — is served with ALL of those SignatureDefs under their own
  keys, as stored, except that each tensor name is fixed to an input or output tensor of the
  interpreter: the name itself, else the name without its ":N" suffix (FixTfLiteTensorName). A
  name that is neither fails the load.
* Otherwise one "serving_default" predict signature over the interpreter's input and output
  tensors, each keyed by its tensor name without the ":N" suffix (TfToTfLiteLegacyTensorName),
  its TensorInfo naming the tensor itself, with the tensor's current dims as shape.

The model's own signatures (TFLite SignatureDefs, which a signature runner runs) are not used, as
TF Serving does not use them: a TFLiteConverter model without metadata, tensors named
"serving_default_x:0" and "StatefulPartitionedCall:0", is served under the keys
"serving_default_x" and "StatefulPartitionedCall", whatever its signature calls them.

The metadata is read as signature_def_util's ReadSignatureDefMap reads it: the first metadata
entry of that name; a root that is not a map holds no SignatureDefs; a value that is not a
flexbuffer string reads as empty; a value is cut at its first NUL byte (the C++ reader copies it
through c_str()).

Inputs and outputs must have names, distinct ones, and dtypes TF Serving maps to TensorFlow's
(float32, int32, uint8, int64, string, bool, int16, complex64, int8); else the load fails, with
TF Serving's messages. Requests run by tensor index, each fed and fetched name fixed as above.

:func:`read_signature_defs` gives the served SignatureDefs from a model's bytes without loading a
servable (``tfpack convert`` of a .tflite source records and proves them).

The interpreter is tf.lite.Interpreter. TensorFlow 2.21 warns that it is deprecated in favour of
the ai-edge-litert package, but the project pins tensorflow<2.22, where it works; using it needs
no second copy of the TFLite runtime in the serving image. Moving to ai-edge-litert is a change of
this module's import once TensorFlow drops it. An interpreter is not thread-safe: runs are
serialized per servable, as in TF Serving.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from flatbuffers import flexbuffers
from google.protobuf.message import DecodeError
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.lite.python import schema_py_generated as tflite_schema

# Re-exported: the model server's manager finds a version's model.tflite by this name.
from packager.layout import DEFAULT_SIGNATURE
from packager.layout import TFLITE_MODEL_FILE as TFLITE_MODEL_FILE
from serving.batching import BatchScheduler
from serving.servables import LoadError
from serving.status import ServingError

_LOG = logging.getLogger(__name__)

PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURE_DEFS_METADATA = "signature_defs_metadata"
_INVALID_SIGNATURE_DEFS = "Invalid SignatureDefs found in TfLite model: "

# TfLiteTypeToTfType: the only tensor types TF Serving serves.
_TF_DTYPES: dict[type, int] = {
    np.float32: types_pb2.DT_FLOAT,
    np.int32: types_pb2.DT_INT32,
    np.uint8: types_pb2.DT_UINT8,
    np.int64: types_pb2.DT_INT64,
    np.bytes_: types_pb2.DT_STRING,
    np.bool_: types_pb2.DT_BOOL,
    np.int16: types_pb2.DT_INT16,
    np.complex64: types_pb2.DT_COMPLEX64,
    np.int8: types_pb2.DT_INT8,
}
# TfLiteType's numbers for the others the interpreter reports, as TF Serving's error names them.
_TFLITE_TYPE_NUMBERS: dict[type, int] = {
    np.float16: 10,
    np.float64: 11,
    np.complex128: 12,
    np.uint64: 13,
    np.uint32: 16,
    np.uint16: 17,
}

# Tensor name -> (its TensorInfo, its index in the interpreter): TF Serving's TensorInfoMap.
TensorInfoMap = dict[str, tuple[meta_graph_pb2.TensorInfo, int]]


def read_metadata_signature_defs(model_bytes: bytes) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs stored in the model's "signature_defs_metadata", as TF Serving reads them
    (signature_def_util's GetSignatureDefMap; see the module docstring), before any tensor name
    is fixed. Empty without that metadata.

    Raises:
        LoadError: the metadata cannot be read, or holds a value that is no SignatureDef.
    """
    model = tflite_schema.Model.GetRootAsModel(model_bytes, 0)
    for index in range(model.MetadataLength()):
        metadata = model.Metadata(index)
        if metadata.Name() != SIGNATURE_DEFS_METADATA.encode():
            continue
        serialized = _read_signature_def_map(model, metadata.Buffer())
        signatures = {}
        for key, value in serialized.items():
            try:
                signatures[key] = meta_graph_pb2.SignatureDef.FromString(value)
            except DecodeError:
                raise LoadError(_INVALID_SIGNATURE_DEFS + "Cannot parse signature def found in flatbuffer.") from None
        return signatures
    return {}


def _read_signature_def_map(model: tflite_schema.Model, buffer_index: int) -> dict[str, bytes]:
    """ReadSignatureDefMap: the flexbuffer map in buffer ``buffer_index``, key -> serialized."""
    try:
        data = model.Buffers(buffer_index).DataAsNumpy()
        root = flexbuffers.GetRoot(data.tobytes() if isinstance(data, np.ndarray) else b"")
        if not root.IsMap:  # flexbuffers' AsMap() of anything else is an empty map
            return {}
        entries = root.AsMap
        serialized = {}
        for key, value in zip(entries.Keys, entries.Values, strict=True):
            # AsString() of a value that is neither a string nor a key is the empty string.
            text = value.AsStringBytes if value.IsString or value.IsKey else b""
            serialized[key.AsKey] = bytes(text).split(b"\0", 1)[0]  # read through c_str()
    # The flatbuffer was verified, its metadata's content was not, and the flexbuffers reader
    # raises whatever a malformed buffer leads it to (KeyError for an unknown type, IndexError,
    # struct.error...): any of it is this version's load failure, never the server's.
    except Exception as error:
        raise LoadError(
            f"{_INVALID_SIGNATURE_DEFS}Error reading signature def map: {type(error).__name__}: {error}"
        ) from None
    return serialized


def _legacy_tensor_name(tf_name: str) -> str:
    """TfToTfLiteLegacyTensorName: TF tensor names carry ":0", early TFLite converters cut it."""
    return tf_name.split(":", 1)[0]


def _fix_tensor_name(tensors: Mapping[str, object], name: str) -> str | None:
    """FixTfLiteTensorName: ``name`` when it is one of ``tensors``, else its legacy name when
    that is, else None."""
    if name in tensors:
        return name
    legacy = _legacy_tensor_name(name)
    return legacy if legacy in tensors else None


def tflite_interpreter(model_bytes: bytes) -> tf.lite.Interpreter:
    """The runtime's interpreter for ``model_bytes``, its tensors allocated.

    Raises:
        ValueError: not a TFLite flatbuffer (the interpreter verifies it before reading it).
        RuntimeError: the interpreter cannot prepare the model (an op it has no kernel for).
    """
    with warnings.catch_warnings():
        # The deprecation notice is about ai-edge-litert (see the module docstring).
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_content=model_bytes)
    interpreter.allocate_tensors()
    return interpreter


def tensor_info_maps(interpreter: tf.lite.Interpreter) -> tuple[TensorInfoMap, TensorInfoMap]:
    """GetTensorInfoMap of the interpreter's inputs and of its outputs.

    Raises:
        LoadError: a tensor without a name, a name two tensors share, or a dtype TF Serving does
            not serve (with TF Serving's messages).
    """
    return (
        _tensor_info_map(interpreter.get_input_details(), "Input"),
        _tensor_info_map(interpreter.get_output_details(), "Output"),
    )


def _tensor_info_map(details: list[dict[str, Any]], kind: str) -> TensorInfoMap:  # Any: values of several types
    infos: TensorInfoMap = {}
    for detail in details:
        name, index = str(detail["name"]), int(detail["index"])
        if not name:
            raise LoadError(f"{kind} name missing for tensor index: {index}")
        dtype = np.dtype(detail["dtype"]).type
        if dtype not in _TF_DTYPES:
            raise LoadError(f"Unknown TfLite type: {_TFLITE_TYPE_NUMBERS.get(dtype, np.dtype(dtype).name)}")
        info = meta_graph_pb2.TensorInfo(
            name=name,
            dtype=_TF_DTYPES[dtype],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(size)) for size in detail["shape"]]
            ),
        )
        if name in infos:
            raise LoadError(f"{kind} tensor name: {name} has multiple indices")
        infos[name] = (info, index)
    return infos


def served_signature_defs(
    inputs: TensorInfoMap, outputs: TensorInfoMap, model_bytes: bytes
) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs a TFLite model is served with, as the module docstring describes.

    Args:
        inputs, outputs: the interpreter's tensors (see :func:`tensor_info_maps`).
        model_bytes: the flatbuffer, for its "signature_defs_metadata".

    Raises:
        LoadError: unreadable metadata, or a metadata SignatureDef naming an unknown tensor.
    """
    declared = read_metadata_signature_defs(model_bytes)
    if not declared:
        return {DEFAULT_SIGNATURE: _mock_signature_def(inputs, outputs)}
    signatures = {}
    for key in sorted(declared):
        signature = meta_graph_pb2.SignatureDef()
        signature.CopyFrom(declared[key])
        for kind, tensors, known in (("input", signature.inputs, inputs), ("output", signature.outputs, outputs)):
            for alias in sorted(tensors):
                fixed = _fix_tensor_name(known, tensors[alias].name)
                if fixed is None:
                    raise LoadError(
                        f"Unknown tensor '{tensors[alias].name}'.\n\t"
                        f"Signature {kind} {alias} references an unknown tensor"
                    )
                tensors[alias].name = fixed
        signatures[key] = signature
    return signatures


def _mock_signature_def(inputs: TensorInfoMap, outputs: TensorInfoMap) -> meta_graph_pb2.SignatureDef:
    """serving_default over the interpreter's tensors, keyed by tensor name without ":N"."""
    signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for tensors, infos in ((signature.inputs, inputs), (signature.outputs, outputs)):
        # In name order, as TF Serving's std::map: of two names alike but for ":N", the last wins.
        for name in sorted(infos):
            tensors[_legacy_tensor_name(name)].CopyFrom(infos[name][0])
    return signature


def read_signature_defs(model_bytes: bytes) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs ``model_bytes`` would be served with, without loading a servable.

    Raises:
        LoadError: not a TFLite model the interpreter can build, or one TF Serving cannot serve.
    """
    try:
        interpreter = tflite_interpreter(model_bytes)
    except (ValueError, RuntimeError) as error:
        raise LoadError(f"Cannot read TFLite model: {error}") from None
    return served_signature_defs(*tensor_info_maps(interpreter), model_bytes)


class TfLiteServable:
    """A loaded model.tflite (a :class:`~serving.servables.Servable`): SignatureDefs plus an
    interpreter run by tensor index (runs serialized by a lock)."""

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        interpreter: tf.lite.Interpreter,
        model_bytes: bytes,
        batch_scheduler: BatchScheduler | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self._interpreter = interpreter
        self._lock = threading.Lock()
        inputs, outputs = tensor_info_maps(interpreter)
        self.meta_graph = meta_graph_pb2.MetaGraphDef()
        for key, signature in served_signature_defs(inputs, outputs, model_bytes).items():
            self.meta_graph.signature_def[key].CopyFrom(signature)
        # Tensor name -> interpreter index, what requests are fed and fetched by.
        self._input_indices = {name: index for name, (_, index) in inputs.items()}
        self._output_indices = {name: index for name, (_, index) in outputs.items()}
        self._batching = batch_scheduler.session(self._run) if batch_scheduler else None

    @property
    def signature_defs(self) -> dict[str, meta_graph_pb2.SignatureDef]:
        """The SignatureDefs served, by key."""
        return dict(self.meta_graph.signature_def)

    def run(self, feeds: dict[str, np.ndarray], fetches: list[str], timeout_ms: int | None = None) -> list[np.ndarray]:
        """Feed tensors by name, invoke, return the fetched tensors in order.

        Names are fixed as TF Serving fixes them (the name, else the name without ":N").

        Raises:
            ServingError: INTERNAL for an unknown tensor (TF Serving's code and message) or when
                the interpreter fails, INVALID_ARGUMENT for a value it refuses. A value of
                another dtype than the tensor's is one: TF Serving copies the request's bytes
                into the tensor unchecked (tflite_session.cc), which reads them as another type;
                refusing them is the deliberate difference.
        """
        if self._batching is not None:
            return self._batching.run(feeds, fetches, timeout_ms)
        return self._run(feeds, fetches, timeout_ms)

    def _run(self, feeds: dict[str, np.ndarray], fetches: list[str], _timeout_ms: int | None) -> list[np.ndarray]:
        inputs = {}
        for name, value in feeds.items():
            fixed = _fix_tensor_name(self._input_indices, name)
            if fixed is None:
                raise ServingError(
                    grpc.StatusCode.INTERNAL, f"Unknown tensor '{name}'.\n\tMissing input TFLite tensor: {name}"
                )
            inputs[self._input_indices[fixed]] = value
        outputs = []
        for name in fetches:
            fixed = _fix_tensor_name(self._output_indices, name)
            if fixed is None:
                raise ServingError(
                    grpc.StatusCode.INTERNAL, f"Missing output TFLite tensor: {name}: Unknown tensor '{name}'."
                )
            outputs.append(self._output_indices[fixed])
        with self._lock:
            try:
                return self._invoke(inputs, outputs)
            except ValueError as error:  # the interpreter's bad shape/dtype report
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
            except RuntimeError as error:
                raise ServingError(grpc.StatusCode.INTERNAL, str(error)) from None

    def _invoke(self, inputs: dict[int, np.ndarray], outputs: list[int]) -> list[np.ndarray]:
        interpreter = self._interpreter
        shapes = {int(detail["index"]): tuple(detail["shape"]) for detail in interpreter.get_input_details()}
        resized = [index for index, value in inputs.items() if shapes[index] != np.shape(value)]
        for index in resized:
            interpreter.resize_tensor_input(index, list(np.shape(inputs[index])))
        if resized:
            # Once, before any input is set: allocating may move the tensors' buffers, and with
            # them the values of inputs already set.
            interpreter.allocate_tensors()
        for index, value in inputs.items():
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        return [interpreter.get_tensor(index) for index in outputs]

    def close(self) -> None:
        """Nothing to release early: the interpreter goes with the last reference."""


def load_tflite_servable(
    name: str, version: int, version_dir: Path, batch_scheduler: BatchScheduler | None = None
) -> TfLiteServable:
    """Load ``version_dir/model.tflite`` as version ``version`` of model ``name``.

    Raises:
        LoadError: If the file is unreadable, not a TFLite model the interpreter can build, or
            one TF Serving would not load (see the module docstring).
    """
    path = version_dir / TFLITE_MODEL_FILE
    try:
        model_bytes = path.read_bytes()
        interpreter = tflite_interpreter(model_bytes)
        servable = TfLiteServable(name, version, version_dir, interpreter, model_bytes, batch_scheduler)
    except LoadError:
        raise
    # Whatever a malformed file makes the readers raise fails this version's load only: TF
    # Serving keeps serving the others.
    except Exception as error:
        raise LoadError(f"Cannot load TFLite model {path}: {type(error).__name__}: {error}") from None
    _LOG.info("Loaded TFLite model %s version %d from %s", name, version, path)
    return servable
