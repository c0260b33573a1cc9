"""Load ``--sample-inputs FILE``: real inputs to prove a conversion on instead of generated ones.

A release engineer usually has example requests already: a ``.npz`` of arrays, a TF Serving REST
request body (JSON), or a TF Serving warmup file (TFRecords of PredictionLog). Each is read into
the arrays equivalence.generate_inputs would otherwise make — keyed by signature key, of exactly
the signature's dtypes — and checked against the signature, so that a bad file is refused in one
line before any model is converted.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
import zlib
from collections.abc import Container, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from packager.errors import UsageError, first_line
from packager.graph.frozen_model import TensorRef
from packager.layout import DEFAULT_SIGNATURE, WARMUP_FILE

if TYPE_CHECKING:
    from tensorflow.core.protobuf.meta_graph_pb2 import TensorInfo

# An input's value as a file gives it: an array (.npz) or a TensorProto (a warmup record).
Value = TypeVar("Value")

FORMATS = ("npz", "json", "tfrecord")
_TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords")
_WARMUP_NAME = Path(WARMUP_FILE).name
_TFRECORD_HEADER = 12  # uint64 length + uint32 masked CRC of the length
_FORMAT_NAMES = {
    "npz": "a numpy .npz archive (numpy.savez)",
    "json": "a TF Serving REST request body (JSON)",
    "tfrecord": "a TFRecord file of PredictionLog records (TF Serving's warmup format)",
}
# Source dtype kinds each target kind accepts: widening and same-kind casts only, so a float
# given for an integer input (which would silently truncate) is refused.
_ACCEPTED_KINDS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf", "c": "biufc"}


@dataclass(frozen=True)
class SampleInputs:
    """Inputs read from a ``--sample-inputs`` file.

    Attributes:
        arrays: one array per signature input, keyed by TensorRef.key, of exactly the input's
            dtype (strings as ``np.bytes_`` arrays, as equivalence.generate_inputs makes them).
        sha256: hex digest of the file, for the provenance record.
        format: "npz", "json" or "tfrecord".
        batch: the batch size shared by the inputs (1 when no input has a batch axis).
    """

    arrays: dict[str, np.ndarray]
    sha256: str
    format: str
    batch: int


def load_sample_inputs(path: Path, inputs: list[TensorRef], signature_name: str = DEFAULT_SIGNATURE) -> SampleInputs:
    """Read and validate sample inputs for the signature ``signature_name`` with ``inputs``.

    The format comes from the suffix (``.npz``, ``.json``, ``.tfrecord``/``.tfrecords`` or the
    warmup file name ``tf_serving_warmup_requests``), else from the content. ``.npz`` arrays may
    be named by signature key, tensor name ("op:0") or op name. JSON takes TF Serving's REST
    Predict forms (``instances`` rows or ``inputs`` columns, ``{"b64": ...}`` strings). TFRecord
    Predict requests for the signature are concatenated along the batch axis; other records are
    skipped. Non-finite values are kept: they are the user's to prove on.

    Args:
        path: the file.
        inputs: the signature's inputs.
        signature_name: the signature the inputs are for (JSON and TFRecord name theirs).

    Returns:
        The arrays, the file's digest, its format and the batch size.

    Raises:
        UsageError: an unreadable or corrupt file, a missing or unknown input, a dtype that
            cannot be cast safely, a shape the signature does not accept, disagreeing or empty
            batches, or a file for another signature.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--sample-inputs {path}: cannot read it ({exc.strerror or exc})") from None
    where = f"--sample-inputs {path}"
    kind = _detect_format(path, data, where)
    if kind == "npz":
        arrays = _read_npz(data, inputs, where)
    elif kind == "json":
        arrays = _read_json(data, inputs, signature_name, where)
    else:
        arrays = _read_tfrecord(path, data, inputs, signature_name, where)
    for ref in inputs:
        _check_shape(arrays[ref.key], ref, where)
    batch = _batch(arrays, inputs, where)
    return SampleInputs(arrays=arrays, sha256=hashlib.sha256(data).hexdigest(), format=kind, batch=batch)


def _detect_format(path: Path, data: bytes, where: str) -> str:
    name = path.name.lower()
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".json"):
        return "json"
    if name.endswith(_TFRECORD_SUFFIXES) or path.name == _WARMUP_NAME:
        return "tfrecord"
    if data.startswith(b"PK\x03\x04"):  # .npz files are zip archives
        return "npz"
    if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
        return "json"
    first_record = int.from_bytes(data[:8], "little")
    if len(data) >= _TFRECORD_HEADER and first_record <= len(data) - _TFRECORD_HEADER - 4:
        return "tfrecord"
    raise UsageError(f"{where}: cannot tell its format: name it .npz, .json or .tfrecord")


def _corrupt(where: str, kind: str, exc: BaseException) -> UsageError:
    return UsageError(f"{where}: not {_FORMAT_NAMES[kind]}: {first_line(exc, 200)}")


def _read_npz(data: bytes, inputs: list[TensorRef], where: str) -> dict[str, np.ndarray]:
    # np.load takes anything that is not a zip for a lone .npy array or a pickle; neither names
    # its arrays, and numpy's pickle error would advise allow_pickle.
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise UsageError(f"{where}: not {_FORMAT_NAMES['npz']}: it is not a zip archive")
    try:
        # allow_pickle=False: an object array would unpickle, i.e. run code from the file.
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            given = {name: archive[name] for name in archive.files}
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise UsageError(
                f"{where}: holds an object array, which would need pickle: save strings as str or bytes arrays"
            ) from None
        raise _corrupt(where, "npz", exc) from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise _corrupt(where, "npz", exc) from None
    return {ref.key: _coerce(array, ref, where) for ref, array in _match_names(given, inputs, where).items()}


def _match_names(given: Mapping[str, Value], inputs: list[TensorRef], where: str) -> dict[TensorRef, Value]:
    """Map each input to its value, named by its key, tensor name ("op:0") or op name."""
    by_name: dict[str, TensorRef] = {ref.key: ref for ref in inputs}
    for ref in inputs:
        for alias in (ref.tensor_name, ref.op_name):
            by_name.setdefault(alias, ref)  # a key always wins over another input's alias
    matched: dict[TensorRef, Value] = {}
    for name, value in given.items():
        named = by_name.get(name)
        if named is None:
            raise UsageError(f"{where}: unknown input {name!r}: the signature's inputs are {_keys(inputs)}")
        if named in matched:
            raise UsageError(f"{where}: input {named.key!r} is given twice (by key, tensor or op name)")
        matched[named] = value
    _require_all(matched, inputs, where)
    return matched


def _require_all(given: Container[object], inputs: list[TensorRef], where: str) -> None:
    """Every input is in ``given``, by itself or by its key."""
    for ref in inputs:
        if ref not in given and ref.key not in given:
            raise UsageError(f"{where}: input {ref.key!r} is missing: the signature's inputs are {_keys(inputs)}")


def _keys(inputs: list[TensorRef]) -> str:
    return ", ".join(ref.key for ref in inputs)


def _read_json(data: bytes, inputs: list[TensorRef], signature_name: str, where: str) -> dict[str, np.ndarray]:
    try:
        document = json.loads(data)  # NaN and Infinity are accepted, as TF Serving accepts them
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _corrupt(where, "json", exc) from None
    if not isinstance(document, dict):
        raise UsageError(
            f'{where}: the JSON is a {type(document).__name__}, expected a request object like {{"instances": [...]}}'
        )
    named = document.get("signature_name", "")
    if not isinstance(named, str):
        raise UsageError(f"{where}: 'signature_name' must be a string")
    if (named or DEFAULT_SIGNATURE) != signature_name:
        raise UsageError(f"{where}: the request is for signature {named!r}, not {signature_name!r}")
    _check_json_names(document, inputs, where)

    from packager.tf_runtime import tensorflow

    tf = tensorflow()  # before serving.rest_json imports TensorFlow, so that its start-up noise is hidden
    from serving import rest_json
    from serving.status import ServingError

    infos = {ref.key: _tensor_info(ref, where) for ref in inputs}
    try:
        if "instances" in document and "inputs" not in document:
            protos, _ = rest_json.predict_inputs(document, infos)
        else:
            # One input at a time, so that an error can name the input it is about.
            protos = {}
            for key, info in infos.items():
                one = {"inputs": {key: document["inputs"][key]}} if _is_object(document["inputs"]) else document
                try:
                    protos.update(rest_json.predict_inputs(one, {key: info})[0])
                except (ServingError, ValueError, TypeError) as exc:
                    raise UsageError(f"{where}: input {key!r}: {_serving_message(exc)}") from None
    except (ServingError, ValueError, TypeError) as exc:
        raise UsageError(f"{where}: {_serving_message(exc)}") from None
    arrays = {}
    for ref in inputs:
        try:
            array = tf.make_ndarray(protos[ref.key])
        except (ValueError, TypeError, OverflowError) as exc:
            detail = first_line(exc, 200)
            raise UsageError(f"{where}: input {ref.key!r}: values do not fit {ref.dtype}: {detail}") from None
        arrays[ref.key] = _coerce(array, ref, where)
    return arrays


def _is_object(value: object) -> bool:
    """Whether a JSON value names inputs (an object that is not a ``{"b64": ...}`` string)."""
    return isinstance(value, dict) and not (len(value) == 1 and isinstance(value.get("b64"), str))


def _check_json_names(document: dict[str, Any], inputs: list[TensorRef], where: str) -> None:
    """Name a missing or unknown input ourselves: TF Serving's messages do not list the keys."""
    if "instances" in document and "inputs" in document:
        raise UsageError(f"{where}: give either 'instances' or 'inputs', not both")
    if "instances" in document:
        rows = document["instances"]
        if not isinstance(rows, list):
            raise UsageError(f"{where}: 'instances' must be a list with one item per example")
        if not rows:
            raise UsageError(f"{where}: 'instances' is empty: give at least one example")
        for row in rows:
            if _is_object(row):
                _check_names(row, inputs, where)
        return
    if "inputs" not in document:
        raise UsageError(f"{where}: the request has neither 'instances' nor 'inputs'")
    if _is_object(document["inputs"]):
        _check_names(document["inputs"], inputs, where)
    elif len(inputs) > 1:
        raise UsageError(f"{where}: 'inputs' must be an object naming each of {_keys(inputs)}")


def _check_names(given: dict[str, Any], inputs: list[TensorRef], where: str) -> None:
    keys = {ref.key for ref in inputs}
    for name in given:
        if name not in keys:
            raise UsageError(f"{where}: unknown input {name!r}: the signature's inputs are {_keys(inputs)}")
    _require_all(given, inputs, where)


def _tensor_info(ref: TensorRef, where: str) -> TensorInfo:
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    # TF Serving's JSON carries half-precision and uint16 values as the wider type's numbers.
    wider = {"float16": types_pb2.DT_FLOAT, "bfloat16": types_pb2.DT_FLOAT, "uint16": types_pb2.DT_INT32}
    if ref.dtype in wider:
        dtype = wider[ref.dtype]
    elif ref.dtype.startswith("complex") or ref.dtype in ("variant", "resource"):
        raise UsageError(f"{where}: input {ref.key!r} is {ref.dtype}, which JSON cannot carry: use a .npz file")
    else:
        from packager.tf_runtime import tensorflow

        dtype = tensorflow().as_dtype(ref.dtype).as_datatype_enum
    return meta_graph_pb2.TensorInfo(name=ref.tensor_name, dtype=dtype)


def _serving_message(exc: BaseException) -> str:
    # TF Serving's per-element wrapping repeats the status name mid-sentence; drop it.
    return first_line(exc, 240).replace("Error: INVALID_ARGUMENT: ", "")


def _read_tfrecord(
    path: Path, data: bytes, inputs: list[TensorRef], signature_name: str, where: str
) -> dict[str, np.ndarray]:
    from packager.tf_runtime import tensorflow

    tf = tensorflow()
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    _check_tfrecord_framing(data, where)
    batches: dict[str, list[np.ndarray]] = {ref.key: [] for ref in inputs}
    try:
        # TensorFlow's reader checks each record's CRCs.
        for index, record in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(record)
            except DecodeError:
                raise UsageError(f"{where}: record {index} is not a PredictionLog") from None
            # Classify/regress logs and other signatures' requests are not inputs of this one.
            if log.WhichOneof("log_type") != "predict_log":
                continue
            request = log.predict_log.request
            if (request.model_spec.signature_name or DEFAULT_SIGNATURE) != signature_name:
                continue
            given = _match_names(dict(request.inputs), inputs, f"{where}: record {index}")
            for ref, proto in given.items():
                try:
                    array = tf.make_ndarray(proto)
                except (ValueError, TypeError, OverflowError) as exc:
                    raise UsageError(f"{where}: record {index}, input {ref.key!r}: {first_line(exc, 200)}") from None
                batches[ref.key].append(_coerce(array, ref, f"{where}: record {index}"))
    except tf.errors.OpError as exc:
        # "{{function_node ...}} corrupted record at 12 [Op:IteratorGetNext]" -> "corrupted record at 12"
        detail = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", first_line(exc)).strip(" :")
        raise UsageError(f"{where}: not {_FORMAT_NAMES['tfrecord']}: {detail}") from None
    if not inputs or not batches[inputs[0].key]:  # every kept record gave every input
        raise UsageError(f"{where}: has no Predict request for signature {signature_name!r}")
    return {key: _concatenate(key, parts, where) for key, parts in batches.items()}


def _check_tfrecord_framing(data: bytes, where: str) -> None:
    """Refuse a file cut short: TensorFlow's reader takes a partial record header for the end."""
    offset, index = 0, 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 8], "little")
        end = offset + _TFRECORD_HEADER + length + 4  # header, data, masked CRC of the data
        if offset + _TFRECORD_HEADER > len(data) or end > len(data):
            raise UsageError(
                f"{where}: not {_FORMAT_NAMES['tfrecord']}: record {index} is truncated at byte {len(data)}"
            )
        offset, index = end, index + 1


def _concatenate(key: str, parts: list[np.ndarray], where: str) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for part in parts[1:]:
        if part.ndim == 0 or part.ndim != first.ndim or part.shape[1:] != first.shape[1:]:
            raise UsageError(
                f"{where}: records give input {key!r} as {_shape_text(first.shape)} and "
                f"{_shape_text(part.shape)}: they cannot be joined along the batch axis"
            )
    return np.concatenate(parts, axis=0)


def _numpy_dtype(ref: TensorRef, where: str) -> np.dtype[Any]:
    if ref.dtype == "bfloat16":
        import ml_dtypes  # TensorFlow's own bfloat16 numpy type

        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(ref.dtype)
    except TypeError:
        raise UsageError(f"{where}: input {ref.key!r} is {ref.dtype}, which sample inputs cannot give") from None


def _coerce(array: np.ndarray, ref: TensorRef, where: str) -> np.ndarray:
    """Return ``array`` as ``ref``'s dtype, refusing casts that would change values."""
    given = array.dtype
    if ref.dtype == "string":
        if given.kind == "U":
            return np.char.encode(array, "utf-8")
        if given.kind == "S":
            return array
        if given.kind == "O" and all(isinstance(v, bytes) for v in array.flat):
            # np.bytes_ arrays drop trailing NULs; refuse rather than prove on other values.
            if any(v.endswith(b"\x00") for v in array.flat):
                raise UsageError(
                    f"{where}: input {ref.key!r} has a string ending in a NUL byte, which tfpack cannot keep"
                )
            return array.astype(np.bytes_)
        raise UsageError(f"{where}: input {ref.key!r} expects strings but the file gives {given}")
    want = _numpy_dtype(ref, where)
    target_kind = "f" if ref.dtype == "bfloat16" else want.kind
    if given.kind not in _ACCEPTED_KINDS.get(target_kind, ""):
        shown = "strings" if given.kind in "SUO" else str(given)
        raise UsageError(
            f"{where}: input {ref.key!r} expects {ref.dtype} but the file gives {shown}: it cannot be cast safely"
        )
    if target_kind in "iu" and given.kind in "iu" and array.size:
        low, high, bounds = int(array.min()), int(array.max()), np.iinfo(want)
        if low < bounds.min or high > bounds.max:
            raise UsageError(f"{where}: input {ref.key!r} has values in [{low}, {high}], outside {ref.dtype}")
    return array.astype(want)


def _shape_text(shape: tuple[int | None, ...] | None) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"


def _check_shape(array: np.ndarray, ref: TensorRef, where: str) -> None:
    if ref.shape is None:
        return
    fits = array.ndim == len(ref.shape) and all(
        want is None or want == got for want, got in zip(ref.shape, array.shape)
    )
    if not fits:
        raise UsageError(
            f"{where}: input {ref.key!r} has shape {_shape_text(array.shape)}, "
            f"the signature expects {_shape_text(ref.shape)}"
        )


def _batch(arrays: Mapping[str, np.ndarray], inputs: list[TensorRef], where: str) -> int:
    """The leading dimension every batched input shares (scalar inputs have none)."""
    sizes = {ref.key: arrays[ref.key].shape[0] for ref in inputs if arrays[ref.key].ndim >= 1}
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{key!r} has {size}" for key, size in sizes.items())
        raise UsageError(
            f"{where}: the inputs disagree on the batch size ({shown}): give each the same number of examples"
        )
    batch = next(iter(sizes.values()), 1)
    if batch == 0:
        raise UsageError(f"{where}: the batch is empty: give at least one example")
    return batch
