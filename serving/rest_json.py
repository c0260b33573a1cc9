"""TF Serving's REST JSON <-> tensors and examples, following tensorflow_serving/util/json_tensor.cc.

Requests: ``{"signature_name": ..., "instances": [...]}`` (row format: one element per batch
item, a plain value when the signature has one input, else an object per item) or
``{"inputs": ...}`` (columnar: a value, or an object of named values). DT_STRING values may be
``{"b64": "..."}``. Responses: ``{"predictions": [...]}`` or ``{"outputs": ...}``.
Classify/Regress: ``{"context": {features}, "examples": [{features}, ...]}`` ->
``{"results": [[[label, score], ...], ...]}`` / ``{"results": [value, ...]}``.

Limits, as TF Serving has them or tighter. TF Serving parses with rapidjson's iterative parser
(util/json_tensor.cc ParseJson: ``kParseIterativeFlag``), so depth costs it no stack; Python's
parser recurses, so nesting is capped at MAX_JSON_DEPTH levels, more than a tensor of
TensorShape's 254 dims inside "instances" and an object needs. A body is also refused (413)
when the values it holds would take more memory to parse than the request tensor cap allows.
Integers must fit the input's dtype (TF Serving: ``IsInt()``/``IsInt64()``/``IsUint64()``, else
the "is not of expected type" error; for int8/int16/uint8 it truncates, this refuses), and an
example's integer feature must fit int64 ("Only int64_t is supported").
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from serving import tensors
from serving.status import internal, invalid_argument, too_large

INSTANCES, INPUTS, SIGNATURE_NAME = "instances", "inputs", "signature_name"
EXAMPLES, CONTEXT = "examples", "context"
_B64 = "b64"
_BYTES_SUFFIX = "_bytes"  # string outputs whose alias ends so are returned base64-encoded

_FLOAT_TYPES = {types_pb2.DT_FLOAT: (24, "float"), types_pb2.DT_DOUBLE: (53, "double")}
_INT_RANGES = {
    types_pb2.DT_INT32: (-(2**31), 2**31 - 1),
    types_pb2.DT_INT16: (-(2**15), 2**15 - 1),
    types_pb2.DT_INT8: (-(2**7), 2**7 - 1),
    types_pb2.DT_UINT8: (0, 2**8 - 1),
    types_pb2.DT_INT64: (-(2**63), 2**63 - 1),
    types_pb2.DT_UINT32: (0, 2**32 - 1),
    types_pb2.DT_UINT64: (0, 2**64 - 1),
}
_INT_TYPES = {
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
}


MAX_JSON_DEPTH = 256
# What parsing one JSON value costs Python at most, roughly: a container (list or dict and
# its slot in its parent) and any other value (a float object and its slot).
_CONTAINER_COST, _VALUE_COST = 64, 32
# A JSON string literal: ASCII quotes around anything but unescaped quotes.
_STRING_LITERAL = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)
_DEPTH_CHUNK = 1 << 20
_MAX_DEBUG_TEXT = 256  # json_tensor.cc kMaxJsonDebugStringBytes


def _text(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= _MAX_DEBUG_TEXT else text[:_MAX_DEBUG_TEXT] + "..."


def _parse_cost(text: bytes) -> int:
    containers = text.count(b"[") + text.count(b"{")
    return containers * _CONTAINER_COST + (text.count(b",") + 1) * _VALUE_COST


def _nesting_depth(text: bytes) -> int:
    """Return the deepest nesting of arrays and objects in ``text`` (JSON without strings)."""
    codes = np.frombuffer(text, np.uint8)
    depth = deepest = 0
    for start in range(0, len(codes), _DEPTH_CHUNK):
        chunk = codes[start : start + _DEPTH_CHUNK]
        steps = np.isin(chunk, _OPEN).astype(np.int64) - np.isin(chunk, _CLOSE)
        if steps.any():
            running = np.cumsum(steps) + depth
            deepest = max(deepest, int(running.max()))
            depth = int(running[-1])
    return deepest


def _check_strings(document: Any) -> None:
    """Refuse a string holding a lone surrogate (\\ud800): it has no UTF-8 form. rapidjson
    fails such a document at parse time; Python's parser lets it through."""
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise invalid_argument("JSON Parse error: The surrogate pair in string is invalid.") from None


class _Document(dict[str, Any]):
    """A parsed request body; ``booleans`` is False when the body holds no boolean literal."""

    booleans = True


def parse_body(body: bytes, max_decoded_bytes: int | None = None) -> dict[str, Any]:
    """Parse a request body that must be a JSON object (NaN and Infinity are allowed).

    Args:
        body: The request body.
        max_decoded_bytes: Refuse (413) a body whose values would take more memory than this
            once parsed (None: no limit).

    Raises:
        ServingError: INVALID_ARGUMENT for malformed JSON, nesting deeper than
            MAX_JSON_DEPTH or a non-object document; a 413 error when above the limit.
    """
    if not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    # Counted over the whole body first (cheap); when that is too much, over the body without
    # its strings, whose brackets and commas are no values.
    cost = _parse_cost(body)
    too_costly = max_decoded_bytes is not None and cost > max_decoded_bytes
    if too_costly or body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH:
        outside_strings = _STRING_LITERAL.sub(b"", body)
        depth = _nesting_depth(outside_strings)
        if depth > MAX_JSON_DEPTH:
            raise invalid_argument(f"JSON Parse error: nesting depth {depth} exceeds the limit of {MAX_JSON_DEPTH}")
        cost = _parse_cost(outside_strings)
        if max_decoded_bytes is not None and cost > max_decoded_bytes:
            raise too_large(
                f"JSON body of {len(body)} bytes holds values that would take about {cost} "
                f"bytes to parse, above the limit of {max_decoded_bytes} bytes; send large "
                "tensors over gRPC"
            )
    try:
        document = json.loads(body)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, int digits limit
        raise invalid_argument(f"JSON Parse error: {error}") from None
    except RecursionError:  # not expected under MAX_JSON_DEPTH; never a traceback
        raise invalid_argument(f"JSON Parse error: nesting exceeds the limit of {MAX_JSON_DEPTH}") from None
    if _SURROGATE_ESCAPE.search(body):
        _check_strings(document)
    if not isinstance(document, dict):
        raise invalid_argument(f"Is not object. Request: {_text(document)}")
    parsed = _Document(document)
    # Outside strings "true"/"false" are the only way to write a boolean; a string holding
    # them only costs the dense numeric path (see _dense_array), never correctness.
    parsed.booleans = b"true" in body or b"false" in body
    return parsed


def signature_name(document: dict[str, Any]) -> str:
    """Return the request's optional "signature_name" ("" when absent)."""
    name = document.get(SIGNATURE_NAME, "")
    if not isinstance(name, str):
        raise invalid_argument("'signature_name' key must be a string value.")
    return name


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(_B64), str)


def _type_error(value: Any, dtype: int) -> Exception:
    return invalid_argument(
        f"JSON Value: {_text(value)} Type: {type(value).__name__} is not of expected type: {tensors.dtype_name(dtype)}"
    )


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        raise invalid_argument("Unable to base64 decode") from None


def _add_value(value: Any, dtype: int, proto: tensor_pb2.TensorProto) -> None:
    if dtype in _FLOAT_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, dtype)
        digits, name = _FLOAT_TYPES[dtype]
        if isinstance(value, int) and abs(value) > (1 << digits) - 1:
            raise invalid_argument(f"Cannot convert JSON value: {value} to {name} without loss of precision.")
        (proto.float_val if dtype == types_pb2.DT_FLOAT else proto.double_val).append(value)
    elif dtype in _INT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(value, dtype)
        low, high = _INT_RANGES[dtype]
        if not low <= value <= high:
            raise _type_error(value, dtype)
        getattr(proto, _INT_TYPES[dtype]).append(value)
    elif dtype == types_pb2.DT_STRING:
        if _is_b64(value):
            proto.string_val.append(_b64decode(value[_B64]))
        elif isinstance(value, str):
            proto.string_val.append(value.encode())
        else:
            raise _type_error(value, dtype)
    elif dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        proto.bool_val.append(value)
    else:
        raise invalid_argument(f"Conversion of JSON Value: {_text(value)} to type: {tensors.dtype_name(dtype)}")


def _dense_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: int, proto: tensor_pb2.TensorProto) -> None:
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid_argument(
                f"JSON Value: {_text(value)} found at incorrect level: {level + 1} in the JSON "
                f"DOM. Expected at level: {len(shape)}"
            )
        if isinstance(value, dict) and not (dtype == types_pb2.DT_STRING and _is_b64(value)):
            raise _type_error(value, dtype)
        _add_value(value, dtype, proto)
        return
    if level >= len(shape):
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype, proto)


def value_to_proto(value: Any, dtype: int, batch: int | None = None) -> tensor_pb2.TensorProto:
    """Convert one JSON value (scalar or nested lists) to a TensorProto of ``dtype``."""
    shape = _dense_shape(value)
    proto = tensor_pb2.TensorProto(dtype=dtype)
    _fill(value, 0, shape, dtype, proto)
    dims = ([batch] if batch is not None else []) + shape
    proto.tensor_shape.CopyFrom(
        tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in dims])
    )
    return proto


# ---------------------------------------------------------------------------------------------
# The dense numeric path: a regular nested list of numbers (or of booleans) becomes one array in
# numpy's C loops, and the request tensor carries it as tensor_content. It only ever answers
# what the per-element path (value_to_proto, _fill, _add_value) would answer, value for value;
# for anything else -- ragged lists, strings, b64, None, objects, a boolean where a number is
# expected, an integer outside the dtype's range or above the float's exact-integer limit, an
# empty list -- it declines, and the per-element path decides, with TF Serving's messages.

_NUMPY_TYPES = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64,
    types_pb2.DT_BOOL: np.bool_,
}


def _dense_array(value: Any, dtype: int, booleans: bool) -> np.ndarray | None:
    """``value`` as an array of ``dtype``'s numpy type, or None when the per-element path must
    decide (see above).

    Args:
        value: A JSON value; only non-empty lists are taken.
        dtype: The signature input's DataType.
        booleans: Whether the body may hold booleans. numpy reads [true, 1.5] as [1.0, 1.5]
            where TF Serving refuses the boolean, so numbers are only taken without them.
    """
    target = _NUMPY_TYPES.get(dtype)
    if target is None or not isinstance(value, list) or not value:
        return None
    if booleans and dtype != types_pb2.DT_BOOL:
        return None
    try:
        # Ragged lists and nesting beyond numpy's 64 dims raise ValueError; None, strings,
        # objects and integers beyond 64 bits give an object or string array.
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None
    kind = array.dtype.kind
    if array.size == 0:
        return None
    if dtype == types_pb2.DT_BOOL:
        return array if kind == "b" else None  # numpy makes [true, 1] integers
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if kind not in "iu" or int(array.min()) < low or int(array.max()) > high:
            return None
        return array.astype(target, copy=False)
    # DT_FLOAT / DT_DOUBLE: numbers; an integer must be exact in the float ("without loss of
    # precision"). Mixed with floats, integers are no longer told apart: any finite magnitude
    # above the limit sends the list to the per-element path, which knows.
    limit = (1 << _FLOAT_TYPES[dtype][0]) - 1
    if kind in "iu":
        if int(array.max()) > limit or int(array.min()) < -limit:
            return None
    elif kind == "f":
        with np.errstate(invalid="ignore"):
            large = np.abs(array) > limit
        if large.any() and np.isfinite(array[large]).any():
            return None
    else:
        return None
    with np.errstate(over="ignore"):  # as float_val.append: beyond float32 is infinity
        return array.astype(target, copy=False)


def _array_proto(array: np.ndarray, dtype: int) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=dtype,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
        ),
        tensor_content=np.ascontiguousarray(array).tobytes(),
    )


def _to_proto(value: Any, dtype: int, booleans: bool) -> tensor_pb2.TensorProto:
    array = _dense_array(value, dtype, booleans)
    return value_to_proto(value, dtype) if array is None else _array_proto(array, dtype)


def _dense_instances(
    instances: list[Any], inputs: dict[str, meta_graph_pb2.TensorInfo], booleans: bool
) -> dict[str, tensor_pb2.TensorProto] | None:
    """The row format on the dense path: a list of values for one input, or of objects holding
    every input; None when the per-element path must decide."""
    first = instances[0]
    if not isinstance(first, dict):
        if len(inputs) != 1:
            return None
        ((name, info),) = inputs.items()
        array = _dense_array(instances, info.dtype, booleans)
        return None if array is None else {name: _array_proto(array, info.dtype)}
    names = inputs.keys()
    columns: dict[str, list[Any]] = {name: [] for name in inputs}
    for element in instances:  # per batch item, not per value
        if not isinstance(element, dict) or _is_b64(element) or element.keys() != names:
            return None
        for name, value in element.items():
            columns[name].append(value)
    protos = {}
    for name, column in columns.items():
        array = _dense_array(column, inputs[name].dtype, booleans)
        if array is None:
            return None
        protos[name] = _array_proto(array, inputs[name].dtype)
    return protos


def _append(target: tensor_pb2.TensorProto, item: tensor_pb2.TensorProto) -> None:
    for field in (
        "float_val",
        "double_val",
        "int_val",
        "int64_val",
        "uint32_val",
        "uint64_val",
        "bool_val",
        "string_val",
    ):
        getattr(target, field).extend(getattr(item, field))


def inputs_from_instances(
    instances: Any, inputs: dict[str, meta_graph_pb2.TensorInfo], booleans: bool = True
) -> dict[str, tensor_pb2.TensorProto]:
    """Batch the row-format "instances" list into one tensor per signature input.

    ``booleans``: whether the body may hold booleans (False lets numbers take the dense path).
    """
    if not isinstance(instances, list):
        raise invalid_argument("Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid_argument("No values in 'instances' array")
    dense = _dense_instances(instances, inputs, booleans)
    if dense is not None:
        return dense
    as_objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not as_objects and len(inputs) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    names = sorted(inputs)
    batched: dict[str, tensor_pb2.TensorProto] = {}
    shapes: dict[str, list[int]] = {}
    for index, element in enumerate(instances):
        element_is_object = isinstance(element, dict) and not _is_b64(element)
        if as_objects != element_is_object:
            kind = "object but got list" if as_objects else "value/list but got object"
            raise invalid_argument(f"Expecting {kind} at item {index} of input list")
        items = element if as_objects else {names[0]: element}
        for name, value in items.items():
            if name not in inputs:
                raise invalid_argument(
                    f"Failed to process element: {index} key: {name} of 'instances' list. "
                    f"Error: INVALID_ARGUMENT: JSON object: does not have named input: {name}"
                )
            try:
                item = value_to_proto(value, inputs[name].dtype)
            except Exception as error:  # ServingError, re-raised with its position
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: {getattr(error, 'message', error)}"
                ) from None
            shape = [d.size for d in item.tensor_shape.dim]
            if name not in shapes:
                shapes[name] = shape
                batched[name] = tensor_pb2.TensorProto(dtype=inputs[name].dtype)
            elif shapes[name] != shape:
                raise invalid_argument(f"Expecting shape {shapes[name]} but got: {shape}")
            _append(batched[name], item)
        if as_objects and set(items) != set(inputs):
            raise invalid_argument(
                f"Failed to process element: {index} of 'instances' list. JSON object: "
                f"{_text(element)} must only have keys: {','.join(names)}"
            )
    for name, proto in batched.items():
        proto.tensor_shape.CopyFrom(
            tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in [len(instances), *shapes[name]]]
            )
        )
    return batched


def inputs_from_columns(
    columns: Any, inputs: dict[str, meta_graph_pb2.TensorInfo], booleans: bool = True
) -> dict[str, tensor_pb2.TensorProto]:
    """Convert the columnar "inputs" value (a value, or an object of named values).

    ``booleans``: whether the body may hold booleans (False lets numbers take the dense path).
    """
    if not isinstance(columns, dict) or _is_b64(columns):
        if len(inputs) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        ((name, info),) = inputs.items()
        return {name: _to_proto(columns, info.dtype, booleans)}
    converted = {}
    for name, info in sorted(inputs.items()):
        if name not in columns:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        converted[name] = _to_proto(columns[name], info.dtype, booleans)
    return converted


def predict_inputs(
    document: dict[str, Any], inputs: dict[str, meta_graph_pb2.TensorInfo]
) -> tuple[dict[str, tensor_pb2.TensorProto], bool]:
    """Return the request tensors and whether the request used the row ("instances") format."""
    if not inputs:
        raise invalid_argument("Failed to get input map for signature")
    has_instances, has_inputs = INSTANCES in document, INPUTS in document
    if has_instances and has_inputs:
        raise invalid_argument("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    booleans = getattr(document, "booleans", True)  # parse_body knows; else assume so
    if has_instances:
        return inputs_from_instances(document[INSTANCES], inputs, booleans), True
    if has_inputs:
        return inputs_from_columns(document[INPUTS], inputs, booleans), False
    raise invalid_argument("Missing 'inputs' or 'instances' key")


_POWERS_OF_TEN = 10.0 ** np.arange(23)  # exact doubles: 1e0 .. 1e22
_MAX_DIGITS = 9  # a float32 never needs more significant digits to round-trip


def float32_as_shortest(array: np.ndarray) -> np.ndarray:
    """float32 values as the float64 values their shortest round-trip decimal text names.

    Python writes a float64 as the shortest text that reads back as it, so writing these
    gives float32's shortest text (0.1, not 0.10000000149011612), as str(np.float32(v)) is,
    for every element, in numpy's loops. For each element the coarsest decimal precision whose
    rounding reads back as the same float32 is taken: m / 10**k (or m * 10**-k) with m an exact
    integer and 10**k exact (|k| <= 22) is the double nearest that decimal, which is what
    reading the decimal text gives. Elements needing |k| > 22 (magnitudes beyond about 1e-13
    .. 1e22) go through numpy's own float32 -> text -> float64 conversion.
    """
    values = np.asarray(array, dtype=np.float32).ravel()
    with np.errstate(all="ignore"):
        wide = values.astype(np.float64)
    result = wide.copy()  # zeros (signed), infinities and NaN stay as they are
    with np.errstate(all="ignore"):
        todo = np.flatnonzero(np.isfinite(wide) & (wide != 0))
        exponent = np.floor(np.log10(np.abs(wide[todo]))).astype(np.int64)
        aside = []  # elements whose next precision has no exact power of ten
        # From one digit coarser than the leading digit (log10 may be one off) onwards.
        for digits in range(_MAX_DIGITS + 2):
            if not todo.size:
                break
            k = digits - 1 - exponent
            exact = np.abs(k) <= 22
            aside.append(todo[~exact])
            todo, exponent, k = todo[exact], exponent[exact], k[exact]
            v = wide[todo]
            power = _POWERS_OF_TEN[np.abs(k)]
            up = k >= 0
            rounded = np.round(np.where(up, v * power, v / power))
            decimal = np.where(up, rounded / power, rounded * power)
            done = decimal.astype(np.float32) == values[todo]
            result[todo[done]] = decimal[done]
            todo, exponent = todo[~done], exponent[~done]
        rest = np.concatenate([todo, *aside])
        if rest.size:  # extreme magnitudes (and any element the rounding missed)
            result[rest] = values[rest].astype(str).astype(np.float64)
    return result.reshape(np.shape(array))


def tensor_to_json(array: np.ndarray, *, base64_strings: bool) -> Any:
    """A tensor as a REST JSON value: nested lists, float32 as its shortest decimal text.

    The one encoder on both sides of the REST API: the server answers with it (a string output
    as {"b64": ...} when its alias ends in "_bytes", else as UTF-8 text) and tfpack's smoke
    client sends with it (strings always as {"b64": ...}, which carries any bytes).
    tensor_from_json reads its values back.

    Args:
        array: The tensor; strings as a bytes, str or object array.
        base64_strings: Write string elements as {"b64": ...} objects instead of text.

    Raises:
        TypeError: A complex tensor: JSON has no complex numbers.
    """
    if array.dtype == np.float32:
        return float32_as_shortest(array).tolist()
    if array.dtype.kind in "OSU":
        encode = (
            (lambda b: {_B64: base64.b64encode(b).decode()})
            if base64_strings
            else (lambda b: b.decode("utf-8", errors="replace"))
        )
        flat = [encode(v if isinstance(v, bytes) else str(v).encode()) for v in array.ravel()]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    if array.dtype.kind == "c":
        raise TypeError(f"a {array.dtype} tensor cannot be written as JSON")
    return array.tolist()


def _string_element(value: Any) -> bytes:
    if _is_b64(value):
        return base64.b64decode(value[_B64], validate=True)  # binascii.Error is a ValueError
    if isinstance(value, str):
        return value.encode()
    raise ValueError(f'{value!r} is neither text nor a {{"{_B64}": ...}} object')


def tensor_from_json(value: Any, dtype: np.dtype) -> np.ndarray:
    """Read a REST JSON value, as tensor_to_json writes it, back as an array of ``dtype``.

    JSON carries no dtypes, so the reader names the one it expects.

    Args:
        value: A JSON value (nested lists, or a scalar).
        dtype: The tensor's dtype; a string dtype (kind S, U or O) reads {"b64": ...} objects
            and UTF-8 text into an object array of bytes.

    Raises:
        ValueError: The value does not hold a tensor of ``dtype``.
    """
    if dtype.kind in "SUO":
        elements = np.array(value, dtype=object)
        return np.asarray(np.frompyfunc(_string_element, 1, 1)(elements), dtype=object)
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def _json_values(alias: str, array: np.ndarray) -> Any:
    if array.dtype.kind == "c":
        raise invalid_argument(f"Tensor {alias} of complex type cannot be converted to JSON")
    return tensor_to_json(array, base64_strings=alias.endswith(_BYTES_SUFFIX))


def predict_response(outputs: dict[str, np.ndarray], row_format: bool) -> dict[str, Any]:
    """Return the JSON body for Predict outputs, in the request's format."""
    if not row_format:
        if len(outputs) == 1:
            ((alias, array),) = outputs.items()
            return {"outputs": _json_values(alias, array)}
        return {"outputs": {alias: _json_values(alias, a) for alias, a in outputs.items()}}
    batch = None
    for alias, array in outputs.items():
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {alias} has no shape information ")
        if batch is None:
            batch = array.shape[0]
        elif array.shape[0] != batch:
            raise invalid_argument(
                f"Tensor name: {alias} has inconsistent batch size: {array.shape[0]} expecting: {batch}"
            )
    values = {alias: _json_values(alias, array) for alias, array in outputs.items()}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{alias: values[alias][i] for alias in values} for i in range(batch or 0)]}


def _pretty(value: Any, level: int) -> str:
    if not isinstance(value, dict) or not value or not all(isinstance(k, str) for k in value):
        return json.dumps(value)  # arrays on one line, by json's C encoder
    inner = "    " * (level + 1)
    members = ",\n".join(f"{inner}{json.dumps(key)}: {_pretty(item, level + 1)}" for key, item in value.items())
    return f"{{\n{members}\n{'    ' * level}}}"


def dumps(document: Any) -> bytes:
    """Serialize a response body (NaN and Infinity written as TF Serving writes them).

    Objects are indented by 4 and arrays kept on one line, as TF Serving's rapidjson
    PrettyWriter (kFormatSingleLineArray) lays them out; arrays are written by json's C encoder
    (json.dumps with indent runs in Python, per value).
    """
    try:
        return _pretty(document, 0).encode()
    except (TypeError, ValueError) as error:
        raise internal(f"Failed to convert response to JSON: {error}") from None


def _feature(name: str, value: Any) -> feature_pb2.Feature:
    values = value if isinstance(value, list) else [value]
    feature = feature_pb2.Feature()
    if all(isinstance(v, str) or _is_b64(v) for v in values):
        feature.bytes_list.value.extend(_b64decode(v[_B64]) if isinstance(v, dict) else v.encode() for v in values)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        for v in values:
            if not -(2**63) <= v < 2**63:
                # json_tensor.cc AddValueToFeature: "has uint64_t element. Only int64_t is
                # supported." (rapidjson reads larger integers as doubles; refused here too)
                raise invalid_argument(
                    f"Feature: {name} has element {_text(v)} outside int64. Only int64_t is supported."
                )
        feature.int64_list.value.extend(values)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        feature.float_list.value.extend(values)
    else:
        raise invalid_argument(
            f"Unexpected element type in feature: {name} (values must be all strings, "
            '{"b64": ...} objects, integers or numbers)'
        )
    return feature


def _example(value: Any, where: str) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise invalid_argument(f"Expecting {where} to be a JSON object of features")
    example = example_pb2.Example()
    for name, feature_value in value.items():
        example.features.feature[name].CopyFrom(_feature(name, feature_value))
    return example


def examples_input(document: dict[str, Any]) -> input_pb2.Input:
    """Return the Input of a :classify/:regress body (``examples`` plus optional ``context``)."""
    examples = document.get(EXAMPLES)
    if examples is None:
        raise invalid_argument("Missing 'examples' key")
    if not isinstance(examples, list):
        raise invalid_argument("Expecting 'examples' to be an list/array")
    request_input = input_pb2.Input()
    if CONTEXT in document:
        target = request_input.example_list_with_context
        target.context.CopyFrom(_example(document[CONTEXT], "'context'"))
    else:
        target = request_input.example_list
    for index, value in enumerate(examples):
        target.examples.append(_example(value, f"element {index} of 'examples'"))
    return request_input


def _float32_text(value: float) -> float:
    return float(str(np.float32(value)))


def classify_response(result: classification_pb2.ClassificationResult) -> dict[str, Any]:
    """Return the JSON body of a Classify result: per example, [label, score] pairs."""
    return {
        "results": [
            [[entry.label, _float32_text(entry.score)] for entry in classifications.classes]
            for classifications in result.classifications
        ]
    }


def regress_response(result: regression_pb2.RegressionResult) -> dict[str, Any]:
    """Return the JSON body of a Regress result: one value per example."""
    return {"results": [_float32_text(r.value) for r in result.regressions]}
