"""TensorProto <-> numpy conversions with TensorFlow's semantics, and request tensor checks.

Responses carry values in the typed repeated fields (float_val, int_val, ...), as TF Serving's
``Tensor::AsProtoField`` does, unless --enable_serialization_as_tensor_content asks for the packed
``tensor_content`` form.

Request tensors are checked before anything is allocated for them (:func:`check_request_tensor`).
TensorFlow's ``Tensor::FromProto`` (tensorflow/core/framework/tensor.cc, ``FromProtoField``)
fills a tensor whose typed field holds fewer values than its shape's element count with the
last value given, or with zeros when none is given, and TF Serving decodes Predict inputs with
it unchecked (servables/tensorflow/predict_util.cc: ``tensor.FromProto(input)``, else "tensor
parsing error"); ``tf.make_ndarray`` pads the same way. So a ~30-byte request ``dims [2^28, 3]``
with one float_val makes TF Serving allocate 3 GiB. Here the values must match the shape
exactly -- stricter than TF Serving on purpose: as many typed values as elements (two per
complex element), or ``tensor_content`` of exactly elements x dtype size (as ``Helper<T>::Decode``
already requires) -- and the tensor's bytes count against a cap.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.status import invalid_argument

_BFLOAT16 = tf.bfloat16.as_numpy_dtype

# TensorShape::MaxDimensions() (tensorflow/core/framework/tensor_shape.h).
MAX_RANK = 254
INT64_MAX = 2**63 - 1
# sizeof(tstring): Tensor::TotalBytes counts a string element as it plus its length.
_STRING_ELEMENT_BYTES = 24

# The dtypes a request may carry -> (typed field, values per element, bytes per element).
# Not here, so refused: DT_RESOURCE and DT_VARIANT (handles into a server's state, never a
# client's to give), the quantized and 8/4/2-bit types, and reference types.
_REQUEST_DTYPES: dict[int, tuple[str, int, int]] = {
    types_pb2.DT_FLOAT: ("float_val", 1, 4),
    types_pb2.DT_DOUBLE: ("double_val", 1, 8),
    types_pb2.DT_INT32: ("int_val", 1, 4),
    types_pb2.DT_INT16: ("int_val", 1, 2),
    types_pb2.DT_INT8: ("int_val", 1, 1),
    types_pb2.DT_UINT8: ("int_val", 1, 1),
    types_pb2.DT_UINT16: ("int_val", 1, 2),
    types_pb2.DT_INT64: ("int64_val", 1, 8),
    types_pb2.DT_UINT32: ("uint32_val", 1, 4),
    types_pb2.DT_UINT64: ("uint64_val", 1, 8),
    types_pb2.DT_BOOL: ("bool_val", 1, 1),
    types_pb2.DT_HALF: ("half_val", 1, 2),
    types_pb2.DT_BFLOAT16: ("half_val", 1, 2),
    types_pb2.DT_COMPLEX64: ("scomplex_val", 2, 8),
    types_pb2.DT_COMPLEX128: ("dcomplex_val", 2, 16),
    types_pb2.DT_STRING: ("string_val", 1, _STRING_ELEMENT_BYTES),
}

# numpy kind of values -> the TensorProto field AsProtoField fills.
_FIELD_BY_DTYPE = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def dtype_name(dtype: int) -> str:
    """Return a DataType's name as TensorFlow's DataTypeString writes it (``float``, ...)."""
    if dtype not in types_pb2.DataType.values():  # a client may send any number
        return f"unknown dtype {dtype}"
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Return the value of a TensorProto (raises ValueError/TypeError if it is malformed).

    For a tensor from a request, call :func:`check_request_tensor` first: this pads missing
    values as TensorFlow does.
    """
    return tf.make_ndarray(proto)


def check_request_tensor(proto: tensor_pb2.TensorProto, alias: str) -> int:
    """Check that a request tensor decodes to exactly what it carries; return its bytes.

    Nothing is allocated: only the shape and the number of values are looked at.

    Args:
        proto: The tensor as received.
        alias: Its input alias, for the error message.

    Returns:
        The bytes the decoded tensor takes (elements x dtype size; a string element counts
        24 bytes plus its length, as Tensor::TotalBytes counts it).

    Raises:
        ServingError: INVALID_ARGUMENT, saying why, if the dtype cannot come from a client, the
            shape is not a valid TensorShape (unknown rank, a negative dim, more than 254 dims,
            more than 2^63-1 elements) or the values do not match the shape's element count.
    """
    layout = _REQUEST_DTYPES.get(proto.dtype)
    if layout is None:
        raise invalid_argument(
            f"tensor parsing error: {alias}: a request tensor cannot be of type {dtype_name(proto.dtype)}"
        )
    field, values_per_element, element_bytes = layout
    shape = proto.tensor_shape
    if shape.unknown_rank or len(shape.dim) > MAX_RANK:
        raise invalid_argument(f"tensor parsing error: {alias}: the shape must have a known rank of at most {MAX_RANK}")
    elements = 1
    for dim in shape.dim:
        if dim.size < 0:
            raise invalid_argument(f"tensor parsing error: {alias}: dimension {dim.size} of the shape is negative")
        elements *= dim.size
        if elements > INT64_MAX:
            raise invalid_argument(f"tensor parsing error: {alias}: the shape has more than 2^63-1 elements")
    if proto.tensor_content:
        if proto.dtype == types_pb2.DT_STRING:
            raise invalid_argument(f"tensor parsing error: {alias}: string values go in string_val, not tensor_content")
        if len(proto.tensor_content) != elements * element_bytes:
            raise invalid_argument(
                f"tensor parsing error: {alias}: tensor_content holds "
                f"{len(proto.tensor_content)} bytes; its shape needs {elements} x "
                f"{element_bytes} = {elements * element_bytes}"
            )
        return elements * element_bytes
    values = getattr(proto, field)
    if len(values) != elements * values_per_element:
        # TensorFlow would repeat the last value (or zero) up to the element count.
        raise invalid_argument(
            f"tensor parsing error: {alias}: {len(values) // values_per_element} value(s) "
            f"given for a shape of {elements} element(s); send every value (a value is never "
            "repeated to fill the shape)"
        )
    if proto.dtype == types_pb2.DT_STRING:
        return elements * _STRING_ELEMENT_BYTES + sum(len(value) for value in values)
    return elements * element_bytes


def _shape_proto(shape: tuple[int, ...]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape])


def to_proto(value: np.ndarray, *, as_tensor_content: bool = False) -> tensor_pb2.TensorProto:
    """Return a TensorProto holding ``value``.

    Args:
        value: The array (strings as a numpy object or bytes array).
        as_tensor_content: Pack numeric values into ``tensor_content`` instead of typed fields.
    """
    array = np.asarray(value)
    dtype = tf.dtypes.as_dtype(array.dtype).as_datatype_enum
    if as_tensor_content and dtype != types_pb2.DT_STRING:
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=_shape_proto(array.shape))
    flat = array.ravel()
    if dtype in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        proto.half_val.extend(flat.view(np.uint16).tolist())
    elif dtype == types_pb2.DT_COMPLEX64:
        proto.scomplex_val.extend(np.column_stack([flat.real, flat.imag]).ravel().tolist())
    elif dtype == types_pb2.DT_COMPLEX128:
        proto.dcomplex_val.extend(np.column_stack([flat.real, flat.imag]).ravel().tolist())
    elif dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif dtype in _FIELD_BY_DTYPE:
        getattr(proto, _FIELD_BY_DTYPE[dtype]).extend(flat.tolist())
    else:
        return tf.make_tensor_proto(array)
    return proto
