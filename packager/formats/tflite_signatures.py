"""The "signature_defs_metadata" of a TFLite model: the SignatureDefs TF Serving serves it with.

TF Serving serves a .tflite model with the SignatureDefs stored in that metadata entry, and,
without it, with one serving_default keyed by the interpreter's tensor names — never with the
model's own (native) signatures (serving/tflite.py). A TFLiteConverter model, whose tensors are
named "serving_default_x:0" or "StatefulPartitionedCall:1", is only served under its
signature's keys once the metadata says which key names which tensor.

* :func:`with_signature_defs` writes the metadata as TensorFlow's
  tensorflow/lite/tools/signature/signature_def_util SetSignatureDefMap does: the flatbuffer's
  Metadata entry "signature_defs_metadata" (reused when present, else appended with a new
  Buffer) whose buffer is a flexbuffer map of signature key -> serialized SignatureDef stored as
  a flexbuffer string. Everything else in the model is carried over by the flatbuffer object API
  (tensorflow.lite.tools.flatbuffer_utils, as TensorFlow's own converter rewrites a model).
* :func:`signature_defs_from_native` builds such SignatureDefs from the model's own signatures:
  each alias keys the tensor it names, with the tensor's dtype and shape signature (-1 for a
  free dimension).

TF Serving reads each value through c_str(): a serialized SignatureDef holding a NUL byte would
be cut there, so such a SignatureDef is refused rather than written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from flatbuffers import flexbuffers

from packager.errors import SourceError
from packager.tf_runtime import tensorflow
from packager.version_scan import is_tflite_flatbuffer

if TYPE_CHECKING:
    from tensorflow.core.protobuf.meta_graph_pb2 import SignatureDef, TensorInfo

SIGNATURE_DEFS_METADATA = "signature_defs_metadata"
PREDICT_METHOD = "tensorflow/serving/predict"
# Past 2 GB a flatbuffer keeps its buffers after its end (at offsets): the object API cannot
# write such a model back.
_FLATBUFFER_LIMIT = 2**31 - 1


def native_signature_keys(model_bytes: bytes) -> list[str]:
    """The keys of the model's own (native) signatures, in the model's order.

    Raises:
        SourceError: not a TFLite flatbuffer.
    """
    model = _model(model_bytes)
    return [model.SignatureDefs(i).SignatureKey().decode() for i in range(model.SignatureDefsLength())]


def signature_defs_from_native(model_bytes: bytes, key_map: Mapping[str, str]) -> dict[str, SignatureDef]:
    """SignatureDefs for the metadata, built from the model's own signatures.

    Args:
        model_bytes: a TFLite flatbuffer.
        key_map: native signature key -> the key it is served under (e.g. the only signature,
            whatever its name, -> "serving_default").

    Returns:
        served key -> a predict SignatureDef whose inputs and outputs are the native signature's
        aliases, each naming its tensor exactly, with its dtype and shape signature.

    Raises:
        SourceError: a key the model has no signature for, or a signature TF Serving cannot
            serve: one that runs another subgraph than the first (TF Serving feeds and fetches
            the first subgraph's tensors only).
    """
    tensorflow()
    from tensorflow.core.protobuf import meta_graph_pb2

    model = _model(model_bytes)
    native = {
        model.SignatureDefs(i).SignatureKey().decode(): model.SignatureDefs(i)
        for i in range(model.SignatureDefsLength())
    }
    signatures = {}
    for native_key, served_key in key_map.items():
        if native_key not in native:
            raise SourceError(
                f"the TFLite model has no signature {native_key} (its signatures: {', '.join(native) or 'none'})"
            )
        lite_signature = native[native_key]
        if lite_signature.SubgraphIndex() != 0:
            raise SourceError(
                f"signature {native_key} of the TFLite model runs its subgraph {lite_signature.SubgraphIndex()}: "
                "TF Serving feeds and fetches the first subgraph's tensors only, so it cannot serve it"
            )
        subgraph = model.Subgraphs(0)
        signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
        for count, entry, infos in (
            (lite_signature.InputsLength(), lite_signature.Inputs, signature.inputs),
            (lite_signature.OutputsLength(), lite_signature.Outputs, signature.outputs),
        ):
            for index in range(count):
                tensor_map = entry(index)
                infos[tensor_map.Name().decode()].CopyFrom(_tensor_info(subgraph.Tensors(tensor_map.TensorIndex())))
        signatures[served_key] = signature
    return signatures


def with_signature_defs(model_bytes: bytes, signature_defs: Mapping[str, SignatureDef]) -> bytes:
    """``model_bytes`` with its "signature_defs_metadata" set to ``signature_defs`` (replacing
    the SignatureDefs it held), written as signature_def_util's SetSignatureDefMap writes it.

    Raises:
        SourceError: not a TFLite flatbuffer, one over 2 GB, or a SignatureDef whose
            serialization holds a NUL byte (TF Serving would read it cut short).
        ValueError: ``signature_defs`` is empty (SetSignatureDefMap refuses that too).
    """
    if not signature_defs:
        raise ValueError("signature_defs should not be empty")
    _model(model_bytes)
    if len(model_bytes) > _FLATBUFFER_LIMIT:
        raise SourceError("a TFLite model over 2 GB cannot be given signature_defs_metadata by this writer")
    data = _signature_def_map(signature_defs)
    tensorflow()
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    model.metadata = model.metadata or []
    existing = [m for m in model.metadata if _metadata_name(m.name) == SIGNATURE_DEFS_METADATA]
    if existing:
        buffer_index = existing[0].buffer  # the first, which is the one TF Serving reads
    else:
        model.buffers.append(schema.BufferT())
        buffer_index = len(model.buffers) - 1
        model.metadata.append(schema.MetadataT(name=SIGNATURE_DEFS_METADATA, buffer=buffer_index))
    model.buffers[buffer_index].data = np.frombuffer(data, dtype=np.uint8)
    content: bytes = flatbuffer_utils.convert_object_to_bytearray(model)
    return content


def _signature_def_map(signature_defs: Mapping[str, SignatureDef]) -> bytes:
    """The flexbuffer map key -> serialized SignatureDef (a flexbuffer string), as
    SetSignatureDefMap's flexbuffers::Builder writes it (the same bytes)."""
    builder = flexbuffers.Builder()
    with builder.Map():
        for key in sorted(signature_defs):
            serialized = _serialized(key, signature_defs[key])
            encoded = key.encode("utf-8")
            if not encoded or b"\0" in encoded:
                raise SourceError(f"signature key {key!r} cannot be a flexbuffer map key")
            builder.Key(encoded)
            # A string, as the C++ builder's String(key, std::string): Builder.String takes text
            # and re-encodes it, while a serialized protobuf is bytes.
            builder._WriteBlob(serialized, append_zero=True, type_=flexbuffers.Type.STRING)
    return bytes(builder.Finish())


def _serialized(key: str, signature: SignatureDef) -> bytes:
    """``signature`` serialized (deterministically), refused when TF Serving would cut it."""
    copy = type(signature)()
    copy.CopyFrom(signature)
    for infos in (copy.inputs, copy.outputs):
        for info in infos.values():
            if info.HasField("tensor_shape") and not info.tensor_shape.dim and not info.tensor_shape.unknown_rank:
                # A scalar's shape set but empty serializes as a zero length (a NUL byte); absent,
                # it reads back as the same scalar shape.
                info.ClearField("tensor_shape")
    serialized: bytes = copy.SerializeToString(deterministic=True)
    if b"\0" in serialized:
        raise SourceError(
            f"SignatureDef {key} serializes with a NUL byte (an empty message: a dimension of size 0, an empty "
            "TensorInfo), where TF Serving's reader of signature_defs_metadata cuts it short"
        )
    return serialized


def _metadata_name(name: bytes | str | None) -> str | None:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else name


def _model(model_bytes: bytes) -> Any:  # Any: the schema's generated Model (TensorFlow ships no types)
    """The flatbuffer's root table, once its file identifier says it is a TFLite model.

    Raises:
        SourceError: no TFLite file identifier.
    """
    if not is_tflite_flatbuffer(model_bytes):
        raise SourceError("not a TFLite model (no TFL3 file identifier)")
    tensorflow()
    from tensorflow.lite.python import schema_py_generated as schema

    return schema.Model.GetRootAsModel(model_bytes, 0)


def _tensor_info(tensor: Any) -> TensorInfo:  # Any: the schema's generated Tensor
    """The TensorInfo naming ``tensor`` exactly, with its dtype and shape signature."""
    tf = tensorflow()
    from tensorflow.core.framework import tensor_shape_pb2
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow.lite.python import schema_py_generated as schema

    type_names = {number: name for name, number in vars(schema.TensorType).items() if not name.startswith("_")}
    type_name = type_names.get(tensor.Type(), str(tensor.Type()))
    try:
        dtype = tf.as_dtype(type_name.lower()).as_datatype_enum
    except TypeError:
        raise SourceError(f"tensor {tensor.Name().decode()} has TFLite type {type_name}, no TensorFlow dtype") from None
    if tensor.ShapeSignatureIsNone():
        dims = [int(tensor.Shape(j)) for j in range(tensor.ShapeLength())]
    else:
        dims = [int(tensor.ShapeSignature(j)) for j in range(tensor.ShapeSignatureLength())]
    info = meta_graph_pb2.TensorInfo(name=tensor.Name().decode(), dtype=dtype)
    if dims:  # a scalar's shape stays unset (see _serialized)
        info.tensor_shape.CopyFrom(
            tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])
        )
    return info
