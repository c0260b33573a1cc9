"""Fuzzing (hypothesis) of what a client controls: REST bodies and heads, PredictRequest tensors.

Two layers, each bounded (max_examples) so that the whole file runs in well under a minute:

* in process, the REST body parser (serving.rest_json) and request tensor decoding
  (serving.tensors) take arbitrary input and either succeed or raise ServingError -- never any
  other exception -- and what they accept is consistent (a tensor built from JSON always passes
  the request tensor check; a tensor that passes decodes to exactly its shape);
* against one real server over loopback, arbitrary REST bodies, raw HTTP heads and Predict
  tensors each get a well-formed answer: a JSON body (``{"error": ...}`` with 400/404/413, or a
  result with 200), a gRPC status other than UNKNOWN/INTERNAL; and the server stays up with no
  traceback in its log.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving import rest_json, tensors
from serving.status import ServingError
from tests.factories.half_plus_two import write_half_plus_two_tf1
from tests.servers import ServerHandle, running_model_server

MODEL = "half_plus_two"
IN_PROCESS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
AGAINST_SERVER = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------------------------
# Strategies

_INTEGERS = st.one_of(
    st.integers(-300, 300),
    st.integers(-(2**65), 2**65),
    st.sampled_from([2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 2**64, 99999999999]),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    _INTEGERS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.builds(lambda t: {"b64": t}, st.text(max_size=8)),
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(["x", "inputs", "b64", "y", "n"]), children, max_size=3),
    ),
    max_leaves=24,
)
_KEYS = st.sampled_from(["instances", "inputs", "signature_name", "examples", "context", "extra"])
DOCUMENTS = st.dictionaries(_KEYS, JSON_VALUES, max_size=4)
SIGNATURE_NAMES = st.sampled_from(["", "classify_x_to_y", "regress_x_to_y", "regress_x2_to_y3", "nope"])


def _json_bytes(document: Any) -> bytes:
    return json.dumps(document).encode()


BODIES = st.one_of(
    DOCUMENTS.map(_json_bytes),
    st.builds(lambda d, name: _json_bytes({**d, "signature_name": name}), DOCUMENTS, SIGNATURE_NAMES),
    st.binary(max_size=64),
    st.builds(lambda depth: b"[" * depth + b"]" * depth, st.integers(0, 3000)),
    st.text(alphabet='[]{}",:0123456789.e-tfnulrs\\ ', max_size=64).map(str.encode),
)

_DTYPES = st.one_of(st.sampled_from(sorted(types_pb2.DataType.values())), st.integers(0, 1000))
_DIMS = st.lists(st.one_of(st.integers(0, 4), st.integers(-3, 2**63 - 1), st.just(1 << 28)), max_size=5)
_VALUE_FIELDS = {
    "float_val": st.lists(st.floats(width=32), max_size=8),
    "double_val": st.lists(st.floats(), max_size=8),
    "int_val": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8),
    "int64_val": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8),
    "uint32_val": st.lists(st.integers(0, 2**32 - 1), max_size=8),
    "uint64_val": st.lists(st.integers(0, 2**64 - 1), max_size=8),
    "bool_val": st.lists(st.booleans(), max_size=8),
    "string_val": st.lists(st.binary(max_size=8), max_size=8),
    "half_val": st.lists(st.integers(0, 2**16 - 1), max_size=8),
    "scomplex_val": st.lists(st.floats(width=32), max_size=8),
    "dcomplex_val": st.lists(st.floats(), max_size=8),
    "tensor_content": st.binary(max_size=64),
}


@st.composite
def tensor_protos(draw: st.DrawFn) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=draw(_DTYPES))
    if draw(st.booleans()):
        for size in draw(_DIMS):
            proto.tensor_shape.dim.add(size=size)
    else:  # consistent shapes are the interesting ones: the right number of values
        dims = draw(st.lists(st.integers(0, 3), max_size=3))
        for size in dims:
            proto.tensor_shape.dim.add(size=size)
    proto.tensor_shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
    for field in draw(st.sets(st.sampled_from(sorted(_VALUE_FIELDS)), max_size=2)):
        value = draw(_VALUE_FIELDS[field])
        if field == "tensor_content":
            proto.tensor_content = value
        else:
            getattr(proto, field).extend(value)
    return proto


def _info(dtype: int) -> meta_graph_pb2.TensorInfo:
    return meta_graph_pb2.TensorInfo(name="t:0", dtype=dtype)


SIGNATURE_INPUTS = st.sampled_from(
    [
        {"x": _info(types_pb2.DT_FLOAT)},
        {"n": _info(types_pb2.DT_INT32)},
        {"n": _info(types_pb2.DT_INT8)},
        {"n": _info(types_pb2.DT_UINT64)},
        {"inputs": _info(types_pb2.DT_STRING)},
        {"b": _info(types_pb2.DT_BOOL)},
        {"h": _info(types_pb2.DT_HALF)},
        {"x": _info(types_pb2.DT_DOUBLE), "inputs": _info(types_pb2.DT_STRING)},
    ]
)


# ---------------------------------------------------------------------------------------------
# In process


@IN_PROCESS
@given(body=BODIES, inputs=SIGNATURE_INPUTS, limit=st.sampled_from([None, 1 << 10, 1 << 20]))
def test_rest_body_parser_answers_every_body(
    body: bytes, inputs: dict[str, meta_graph_pb2.TensorInfo], limit: int | None
) -> None:
    try:
        document = rest_json.parse_body(body, limit)
        rest_json.signature_name(document)
    except ServingError as error:
        assert error.http_status in (400, 413), error.message
        return
    try:
        protos, _row_format = rest_json.predict_inputs(document, inputs)
    except ServingError as error:
        assert error.http_status == 400, error.message
    else:
        for alias, proto in protos.items():
            tensors.check_request_tensor(proto, alias)  # what JSON builds is always consistent
            tensors.to_ndarray(proto)
    try:
        rest_json.examples_input(document)
    except ServingError as error:
        assert error.http_status == 400, error.message


@IN_PROCESS
@given(proto=tensor_protos())
def test_request_tensor_check_refuses_or_decodes_exactly(proto: tensor_pb2.TensorProto) -> None:
    try:
        claimed = tensors.check_request_tensor(proto, "t")
    except ServingError as error:
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.message.startswith("tensor parsing error: t"), error.message
        return
    elements = int(np.prod([d.size for d in proto.tensor_shape.dim], dtype=object))
    assert elements <= 64  # values are never repeated to fill a shape
    try:
        array = tensors.to_ndarray(proto)
    except (TypeError, ValueError, OverflowError):
        return  # inference answers these "tensor parsing error" (INVALID_ARGUMENT)
    assert array.size == elements
    assert list(array.shape) == [d.size for d in proto.tensor_shape.dim]
    if proto.dtype != types_pb2.DT_STRING:
        assert array.nbytes == claimed


# ---------------------------------------------------------------------------------------------
# Against a real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    base_path: Path = tmp_path_factory.mktemp("fuzz") / MODEL
    write_half_plus_two_tf1(base_path, version=1)
    with running_model_server(
        [
            f"--model_name={MODEL}",
            f"--model_base_path={base_path}",
            "--max_num_load_retries=0",
            "--file_system_poll_wait_seconds=0",
            "--tfpack_max_request_tensor_bytes=1048576",
        ]
    ) as handle:
        yield handle
        assert handle.process.poll() is None
        assert "Traceback" not in handle.stderr(), handle.stderr()


@pytest.fixture(scope="module")
def stub(server: ServerHandle) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with server.channel() as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _post(server: ServerHandle, path: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(f"{server.rest_url}{path}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@AGAINST_SERVER
@given(
    body=BODIES,
    path=st.sampled_from(
        [
            f"/v1/models/{MODEL}:predict",
            f"/v1/models/{MODEL}:classify",
            f"/v1/models/{MODEL}/versions/1:regress",
            f"/v1/models/{MODEL}/labels/x:predict",
            "/v1/models/nope:predict",
            f"/v1/models/{MODEL}/versions/{2**64}:predict",
        ]
    ),
)
def test_rest_answers_every_body_with_json(server: ServerHandle, body: bytes, path: str) -> None:
    status, answer = _post(server, path, body)
    if status == 200:
        assert set(answer) <= {"predictions", "outputs", "results"}, answer
    else:
        assert status in (400, 404, 413), (status, answer)
        assert list(answer) == ["error"] and isinstance(answer["error"], str), answer


_HEAD_LINES = st.sampled_from(
    [
        "Content-Length: 0",
        "Content-Length: 5",
        "Content-Length: ١٢",
        "Content-Length: -1",
        "Content-Length: 99999999999999999999999",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: identity",
        "Expect: 100-continue",
        "Connection: close",
        "Connection: keep-alive",
        "X: \x00\x7f",
        "bad header",
        " folded",
        "",
    ]
)


@AGAINST_SERVER
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "HEAD", "", "G\x00T", "POST POST"]),
    target=st.one_of(
        st.sampled_from(
            [f"/v1/models/{MODEL}", f"/v1/models/{MODEL}:predict", "/", "*", f"/v1/models/{MODEL}/versions/{'9' * 30}"]
        ),
        st.text(max_size=20),
    ),
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", ""]),
    lines=st.lists(_HEAD_LINES, max_size=4),
    tail=st.binary(max_size=32),
)
def test_raw_http_heads_get_a_json_answer_or_a_close(
    server: ServerHandle, method: str, target: str, version: str, lines: list[str], tail: bytes
) -> None:
    head = "\r\n".join([f"{method} {target} {version}", *lines]) + "\r\n\r\n"
    with socket.create_connection((server.host, server.rest_port), timeout=30) as connection:
        connection.sendall(head.encode("utf-8", errors="surrogateescape") + tail)
        connection.shutdown(socket.SHUT_WR)  # the server sees the end: nothing waits on us
        response = b""
        while chunk := connection.recv(65536):
            response += chunk
    for status, body in _responses(response, head_only=method == "HEAD"):
        if status != 100 and method != "HEAD":  # HEAD: the head only, no body
            answer = json.loads(body)
            if status != 200:
                assert list(answer) == ["error"], (status, answer)


def _responses(data: bytes, head_only: bool) -> Iterator[tuple[int, bytes]]:
    """(status, body) of each response in ``data`` (several on a kept-alive connection)."""
    while data:
        head, separator, data = data.partition(b"\r\n\r\n")
        assert separator, head
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 "), lines[0]
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        if head_only or status == 100:
            length = 0
        body, data = data[:length], data[length:]
        assert len(body) == length
        yield status, body


_ALLOWED_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
}


@AGAINST_SERVER
@given(
    proto=tensor_protos(),
    alias=st.sampled_from(["x", "inputs", "zz"]),
    signature=SIGNATURE_NAMES,
)
def test_predict_answers_every_tensor_with_a_status(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    proto: tensor_pb2.TensorProto,
    alias: str,
    signature: str,
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    request.inputs[alias].CopyFrom(proto)
    try:
        stub.Predict(request, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in _ALLOWED_CODES, (error.code(), error.details())
