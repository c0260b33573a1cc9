"""TFLite model versions (--prefer_tflite_model): VERSION_DIR/model.tflite run by the TFLite
interpreter behind the same SignatureDef interface as a SavedModel.

Signatures, as TF Serving's TfLiteSession builds them:

* A model converted with signatures (TFLite SignatureDefs, run by a signature runner): one
  SignatureDef per signature key, inputs and outputs under the signature's names.
* Otherwise one "serving_default" predict signature over the interpreter's input and output
  tensors, keyed by the names in the model's "signature_defs_metadata" (written by TF Serving's
  tooling) when present, else by the tensor names; shapes are the tensors' current dims.

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
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from flatbuffers import flexbuffers
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.lite.python import schema_py_generated as tflite_schema

from serving.batching import BatchScheduler
from serving.servables import LoadError
from serving.status import ServingError, invalid_argument

_LOG = logging.getLogger(__name__)

TFLITE_MODEL_FILE = "model.tflite"
DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
_SIGNATURE_DEFS_METADATA = b"signature_defs_metadata"


def _tensor_info(name: str, dtype: np.dtype, shape: list[int]) -> meta_graph_pb2.TensorInfo:
    return meta_graph_pb2.TensorInfo(
        name=name,
        dtype=tf.dtypes.as_dtype(dtype).as_datatype_enum,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(size)) for size in shape]
        ),
    )


def _metadata_signature_defs(model_bytes: bytes) -> dict[str, meta_graph_pb2.SignatureDef]:
    """Return the SignatureDefs TF Serving's tooling stores in the model's metadata, if any."""
    model = tflite_schema.Model.GetRootAsModel(model_bytes, 0)
    for index in range(model.MetadataLength()):
        metadata = model.Metadata(index)
        if metadata.Name() != _SIGNATURE_DEFS_METADATA:
            continue
        data = model.Buffers(metadata.Buffer()).DataAsNumpy().tobytes()
        entries = flexbuffers.GetRoot(data).AsMap
        signatures = {}
        for key, value in zip(entries.Keys, entries.Values, strict=True):
            serialized = value.AsBlob if value.IsBlob else value.AsString.encode("latin-1")
            signatures[key.AsKey] = meta_graph_pb2.SignatureDef.FromString(bytes(serialized))
        return signatures
    return {}


def _tensor_name(tf_name: str) -> str:
    return tf_name.split(":", 1)[0]  # TF tensor names carry ":0", TFLite's do not


class TfLiteServable:
    """A loaded model.tflite (a :class:`~serving.servables.Servable`): SignatureDefs plus an
    interpreter (runs serialized by a lock)."""

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
        self.meta_graph = meta_graph_pb2.MetaGraphDef()
        # signature key -> (input tensor name -> input key, output tensor name -> output key)
        self._runner_names: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        signature_keys = list(interpreter.get_signature_list())
        if signature_keys:
            for key in signature_keys:
                self._add_runner_signature(key)
        else:
            self._add_tensor_signature(_metadata_signature_defs(model_bytes))
        self._batching = batch_scheduler.session(self._run) if batch_scheduler else None

    def _add_runner_signature(self, key: str) -> None:
        runner = self._interpreter.get_signature_runner(key)
        signature = self.meta_graph.signature_def[key]
        signature.method_name = PREDICT_METHOD
        names: tuple[dict[str, str], dict[str, str]] = ({}, {})
        for details, tensors, by_name in (
            (runner.get_input_details(), signature.inputs, names[0]),
            (runner.get_output_details(), signature.outputs, names[1]),
        ):
            for alias, detail in details.items():
                shape = detail.get("shape_signature", detail["shape"])
                tensors[alias].CopyFrom(_tensor_info(detail["name"], detail["dtype"], shape))
                by_name[detail["name"]] = alias
        self._runner_names[key] = names

    def _add_tensor_signature(self, declared: dict[str, meta_graph_pb2.SignatureDef]) -> None:
        if len(declared) > 1:
            raise LoadError("Multiple SignatureDefs found in TfLite model")
        lite_signature = next(iter(declared.values()), None)
        aliases = {}
        if lite_signature is not None:
            for alias, info in [*lite_signature.inputs.items(), *lite_signature.outputs.items()]:
                aliases[_tensor_name(info.name)] = alias
        signature = self.meta_graph.signature_def[DEFAULT_SIGNATURE]
        signature.method_name = lite_signature.method_name if lite_signature else PREDICT_METHOD
        for details, tensors in (
            (self._interpreter.get_input_details(), signature.inputs),
            (self._interpreter.get_output_details(), signature.outputs),
        ):
            for detail in details:
                name = detail["name"]
                if lite_signature is not None and name not in aliases:
                    raise LoadError(f"Cannot find signature def name for tflite tensor {name}")
                tensors[aliases.get(name, name)].CopyFrom(_tensor_info(name, detail["dtype"], list(detail["shape"])))

    @property
    def signature_defs(self) -> dict[str, meta_graph_pb2.SignatureDef]:
        """The SignatureDefs served, by key."""
        return dict(self.meta_graph.signature_def)

    def run(self, feeds: dict[str, np.ndarray], fetches: list[str], timeout_ms: int | None = None) -> list[np.ndarray]:
        """Feed tensors by name, invoke, return the fetched tensors in order.

        Raises:
            ServingError: INVALID_ARGUMENT for an unknown tensor or a bad input, INTERNAL when
                the interpreter fails.
        """
        if self._batching is not None:
            return self._batching.run(feeds, fetches, timeout_ms)
        return self._run(feeds, fetches, timeout_ms)

    def _run(self, feeds: dict[str, np.ndarray], fetches: list[str], _timeout_ms: int | None) -> list[np.ndarray]:
        # Feeds and fetches are named as this servable's SignatureDefs name them: TFLite's own
        # tensor names.
        with self._lock:
            try:
                if self._runner_names:
                    return self._run_signature(feeds, fetches)
                return self._run_tensors(feeds, fetches)
            except ValueError as error:  # the interpreter's bad shape/dtype/name report
                raise invalid_argument(str(error)) from None
            except RuntimeError as error:
                raise ServingError(grpc.StatusCode.INTERNAL, str(error)) from None

    def _run_signature(self, feeds: dict[str, np.ndarray], fetches: list[str]) -> list[np.ndarray]:
        for key, (inputs, outputs) in self._runner_names.items():
            if set(feeds) <= set(inputs) and set(fetches) <= set(outputs):
                runner = self._interpreter.get_signature_runner(key)
                results = runner(**{inputs[name]: value for name, value in feeds.items()})
                return [np.array(results[outputs[name]]) for name in fetches]
        raise invalid_argument(f"Missing TFLite tensors: {sorted(feeds)} -> {fetches}")

    def _run_tensors(self, feeds: dict[str, np.ndarray], fetches: list[str]) -> list[np.ndarray]:
        interpreter = self._interpreter
        inputs = {detail["name"]: detail for detail in interpreter.get_input_details()}
        outputs = {detail["name"]: detail for detail in interpreter.get_output_details()}
        for name, value in feeds.items():
            if name not in inputs:
                raise invalid_argument(f"Missing input TFLite tensor: {name}")
            if tuple(inputs[name]["shape"]) != np.shape(value):
                interpreter.resize_tensor_input(inputs[name]["index"], list(np.shape(value)))
                interpreter.allocate_tensors()
            interpreter.set_tensor(inputs[name]["index"], value)
        interpreter.invoke()
        missing = [name for name in fetches if name not in outputs]
        if missing:
            raise invalid_argument(f"Missing output TFLite tensor: {missing[0]}")
        return [interpreter.get_tensor(outputs[name]["index"]) for name in fetches]

    def close(self) -> None:
        """Nothing to release early: the interpreter goes with the last reference."""


def load_tflite_servable(
    name: str, version: int, version_dir: Path, batch_scheduler: BatchScheduler | None = None
) -> TfLiteServable:
    """Load ``version_dir/model.tflite`` as version ``version`` of model ``name``.

    Raises:
        LoadError: If the file is unreadable or not a TFLite model the interpreter can build.
    """
    path = version_dir / TFLITE_MODEL_FILE
    try:
        model_bytes = path.read_bytes()
        with warnings.catch_warnings():
            # The deprecation notice is about ai-edge-litert (see the module docstring).
            warnings.simplefilter("ignore", UserWarning)
            interpreter = tf.lite.Interpreter(model_content=model_bytes)
        interpreter.allocate_tensors()
        servable = TfLiteServable(name, version, version_dir, interpreter, model_bytes, batch_scheduler)
    except LoadError:
        raise
    except (OSError, ValueError, RuntimeError) as error:
        raise LoadError(f"Cannot load TFLite model {path}: {error}") from None
    _LOG.info("Loaded TFLite model %s version %d from %s", name, version, path)
    return servable
