"""Request limits of tfpack-model-server, each finding of issue 10 reproduced against a real
server (loopback gRPC and HTTP, no mocks) and shown refused:

* a ~30-byte Predict claiming a [2^28, 3] tensor with one value is INVALID_ARGUMENT and the
  server's resident memory does not move (TensorFlow would repeat the value to fill the shape);
* a request's tensor bytes are capped (--tfpack_max_request_tensor_bytes), REST bodies too;
* every REST error path answers TF Serving's ``{"error": ...}`` with its status, logs no
  traceback and leaves the server up: deep JSON, a version above int64, a non-ASCII
  Content-Length, an int32 given 99999999999, example features above int64 or with bad base64;
* a DT_RESOURCE tensor is INVALID_ARGUMENT, not UNKNOWN;
* a thousand half-sent REST requests neither hold threads nor slow normal requests down, and
  are closed by the head/idle timeouts;
* SIGTERM stops a server that is waiting between load retries at once;
* version dirs above int64 are no versions.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from packager.layout import MAX_VERSION, find_version_dirs
from serving import rest, tensors
from serving.inference import default_max_request_tensor_bytes
from serving.status import ServingError
from tests.factories.half_plus_two import write_half_plus_two_tf1
from tests.servers import REPO, ServerHandle, free_port, running_model_server

MODEL, INT_MODEL = "half_plus_two", "add_one_int32"
TENSOR_LIMIT = 1 << 20  # --tfpack_max_request_tensor_bytes for this module's server
# What a refused request may move the server's VmRSS by (allocator noise); the requests
# below claim 3 GiB and more.
RSS_SLACK_KIB = 16 << 10


def write_add_one_int32(base_path: Path, version: int = 1) -> None:
    """A SavedModel with one int32 input ``n`` (shape [None]) and output ``m = n + 1``."""

    class AddOne(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="n")])
        def serve(self, n: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"m": n + 1}

    module = AddOne()
    tf.saved_model.save(module, str(base_path / str(version)), signatures={"serving_default": module.serve})


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("limits")
    write_half_plus_two_tf1(root / MODEL, version=1)
    write_add_one_int32(root / INT_MODEL)
    (root / "models.config").write_text(
        "model_config_list {\n"
        f'  config {{ name: "{MODEL}" base_path: "{root / MODEL}" model_platform: "tensorflow" }}\n'
        f'  config {{ name: "{INT_MODEL}" base_path: "{root / INT_MODEL}" '
        'model_platform: "tensorflow" }\n'
        "}\n"
    )
    return root


@pytest.fixture(scope="module")
def server(model_root: Path) -> Iterator[ServerHandle]:
    with running_model_server(
        [
            f"--model_config_file={model_root / 'models.config'}",
            "--max_num_load_retries=0",
            "--file_system_poll_wait_seconds=0",
            f"--tfpack_max_request_tensor_bytes={TENSOR_LIMIT}",
        ]
    ) as handle:
        yield handle


@pytest.fixture(scope="module")
def stub(server: ServerHandle) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with server.channel() as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def status_field(server: ServerHandle, name: str) -> int:
    """A numeric field of /proc/PID/status of the server (VmRSS in KiB, Threads)."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/PID/status")


def raw_tensor(dtype: int, dims: list[int], **values: object) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **values)  # type: ignore[arg-type]
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    return proto


def predict(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    alias: str,
    proto: tensor_pb2.TensorProto,
    signature: str = "",
    model: str = MODEL,
) -> tuple[grpc.StatusCode, str]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs[alias].CopyFrom(proto)
    try:
        stub.Predict(request, timeout=30)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def http(server: ServerHandle, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"{server.rest_url}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def raw_http(server: ServerHandle, data: bytes) -> tuple[int, dict]:
    """Send raw bytes as a request; return the status and JSON body of the answer."""
    with socket.create_connection((server.host, server.rest_port), timeout=30) as connection:
        connection.sendall(data)
        response = b""
        while chunk := connection.recv(65536):
            response += chunk
            head, _, body = response.partition(b"\r\n\r\n")
            if body and len(body) >= _content_length(head):
                break
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def assert_healthy(server: ServerHandle) -> None:
    assert server.process.poll() is None, server.stderr()
    assert http(server, "POST", f"/v1/models/{MODEL}:predict", b'{"instances": [[2.0]]}') == (
        200,
        {"predictions": [[3.0]]},
    )
    assert "Traceback" not in server.stderr(), server.stderr()


# --------------------------------------------------------------------------------------------
# gRPC: values must match the shape; tensor bytes are capped


EXPANSIONS = {
    # name: (signature, alias, the tensor); each claims 2^28 x 3 = 805,306,368 elements.
    "one float_val": ("", "x", raw_tensor(types_pb2.DT_FLOAT, [1 << 28, 3], float_val=[1.0])),
    "no values": ("", "x", raw_tensor(types_pb2.DT_FLOAT, [1 << 28, 3])),
    "short tensor_content": ("", "x", raw_tensor(types_pb2.DT_FLOAT, [1 << 28, 3], tensor_content=b"\0" * 8)),
    "one string_val": ("classify_x_to_y", "inputs", raw_tensor(types_pb2.DT_STRING, [1 << 28, 3], string_val=[b"a"])),
}


@pytest.mark.parametrize("name", list(EXPANSIONS))
def test_a_30_byte_request_claiming_gigabytes_is_invalid_and_rss_unchanged(
    server: ServerHandle, stub: prediction_service_pb2_grpc.PredictionServiceStub, name: str
) -> None:
    signature, alias, proto = EXPANSIONS[name]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs[alias].CopyFrom(proto)
    assert request.ByteSize() <= 64  # tiny on the wire
    rss_before = status_field(server, "VmRSS")
    for _ in range(3):
        code, details = predict(stub, alias, proto, signature)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert details.startswith(f"tensor parsing error: {alias}: "), details
    rss_after = status_field(server, "VmRSS")
    print(f"{name}: server VmRSS {rss_before} KiB -> {rss_after} KiB")
    assert rss_after - rss_before < RSS_SLACK_KIB, (rss_before, rss_after)
    assert_healthy(server)


@pytest.mark.parametrize(
    ("proto", "code", "detail"),
    [
        (
            raw_tensor(types_pb2.DT_RESOURCE, [1]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expects arg[0] to be float but resource is provided",
        ),
        (
            raw_tensor(types_pb2.DT_VARIANT, [1]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expects arg[0] to be float but variant is provided",
        ),
        (
            raw_tensor(999, [1]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expects arg[0] to be float but unknown dtype 999 is provided",
        ),
        (
            raw_tensor(types_pb2.DT_FLOAT, [-1, 1], float_val=[1.0]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "dimension -1 of the shape is negative",
        ),
        (
            raw_tensor(types_pb2.DT_FLOAT, [1] * 255, float_val=[1.0]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "known rank of at most 254",
        ),
        (
            raw_tensor(types_pb2.DT_FLOAT, [1 << 62, 4], float_val=[1.0]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "more than 2^63-1 elements",
        ),
        (
            raw_tensor(types_pb2.DT_FLOAT, [2, 1], float_val=[1.0, 2.0, 3.0]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "3 value(s) given for a shape of 2 element(s)",
        ),
        # Honest values above the cap: refused as gRPC refuses an oversized message.
        (
            tf.make_tensor_proto(np.ones([TENSOR_LIMIT // 4 + 1, 1], np.float32)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Request tensors take {TENSOR_LIMIT + 4} bytes, above the limit of {TENSOR_LIMIT} "
            "bytes (--tfpack_max_request_tensor_bytes)",
        ),
    ],
    ids=[
        "resource",
        "variant",
        "unknown-dtype",
        "negative-dim",
        "rank-255",
        "int64-overflow",
        "too-many-values",
        "above-cap",
    ],
)
def test_malformed_tensors_get_their_codes(
    server: ServerHandle,
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    proto: tensor_pb2.TensorProto,
    code: grpc.StatusCode,
    detail: str,
) -> None:
    got_code, details = predict(stub, "x", proto)
    assert got_code == code, details
    assert detail in details
    assert_healthy(server)


def test_a_tensor_at_the_cap_is_served(stub: prediction_service_pb2_grpc.PredictionServiceStub) -> None:
    code, details = predict(stub, "x", tf.make_tensor_proto(np.ones([TENSOR_LIMIT // 4, 1], np.float32)))
    assert code == grpc.StatusCode.OK, details


# --------------------------------------------------------------------------------------------
# REST: every error path is TF Serving's JSON error with its status

DEEP = 100_000
REST_CASES = [
    # (id, method, path, body, status, the error starts with)
    (
        "deep-json",
        "POST",
        f"/v1/models/{MODEL}:predict",
        b'{"instances": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        400,
        f"JSON Parse error: nesting depth {DEEP + 1} exceeds the limit of 256",
    ),
    (
        "deep-json-in-a-string-is-fine",
        "POST",
        f"/v1/models/{MODEL}:predict",
        b'{"instances": [[2.0]], "x": "' + b"[" * DEEP + b'"}',
        200,
        None,
    ),
    ("deep-unterminated", "POST", f"/v1/models/{MODEL}:predict", b"[" * DEEP, 400, "JSON Parse error: nesting depth"),
    (
        "deep-objects",
        "POST",
        f"/v1/models/{MODEL}:predict",
        b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        400,
        "JSON Parse error: nesting depth",
    ),
    (
        "rank-200",
        "POST",
        f"/v1/models/{MODEL}:predict",
        b'{"inputs": ' + b"[" * 200 + b"1.0" + b"]" * 200 + b"}",
        400,
        None,
    ),
    (
        "version-above-int64",
        "POST",
        f"/v1/models/{MODEL}/versions/99999999999999999999:predict",
        b'{"instances": [[1.0]]}',
        400,
        "Failed to convert version: 99999999999999999999 to numeric.",
    ),
    (
        "status-version-above-int64",
        "GET",
        f"/v1/models/{MODEL}/versions/{2**63}",
        None,
        400,
        f"Failed to convert version: {2**63} to numeric.",
    ),
    (
        "metadata-version-above-int64",
        "GET",
        f"/v1/models/{MODEL}/versions/{'9' * 5000}/metadata",
        None,
        400,
        "Failed to convert version: 999",
    ),
    (
        "version-int64-max-not-found",
        "GET",
        f"/v1/models/{MODEL}/versions/{2**63 - 1}",
        None,
        404,
        f"Could not find version {2**63 - 1} of model {MODEL}",
    ),
    (
        "int32-above-range",
        "POST",
        f"/v1/models/{INT_MODEL}:predict",
        b'{"instances": [99999999999]}',
        400,
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: "
        "99999999999 Type: int is not of expected type: int32",
    ),
    (
        "int32-columnar-above-range",
        "POST",
        f"/v1/models/{INT_MODEL}:predict",
        b'{"inputs": [1, -2147483649]}',
        400,
        "JSON Value: -2147483649 Type: int",
    ),
    ("int32-in-range", "POST", f"/v1/models/{INT_MODEL}:predict", b'{"inputs": [2147483646, -2147483648]}', 200, None),
    (
        "huge-integer-literal",
        "POST",
        f"/v1/models/{INT_MODEL}:predict",
        b'{"inputs": [' + b"9" * 5000 + b"]}",
        400,
        "JSON Parse error",
    ),
    (
        "classify-feature-above-int64",
        "POST",
        f"/v1/models/{MODEL}:classify",
        b'{"signature_name": "classify_x_to_y", "examples": [{"x": 99999999999999999999}]}',
        400,
        "Feature: x has element 99999999999999999999 outside int64. Only int64_t is supported.",
    ),
    (
        "classify-context-below-int64",
        "POST",
        f"/v1/models/{MODEL}:regress",
        b'{"signature_name": "regress_x_to_y", "context": {"x": [-9223372036854775809]}, "examples": [{}]}',
        400,
        "Feature: x has element -9223372036854775809 outside int64",
    ),
    (
        "classify-bad-b64",
        "POST",
        f"/v1/models/{MODEL}:classify",
        b'{"signature_name": "classify_x_to_y", "examples": [{"x": {"b64": "!!not base64"}}]}',
        400,
        "Unable to base64 decode",
    ),
    (
        "classify-non-ascii-b64",
        "POST",
        f"/v1/models/{MODEL}:classify",
        '{"signature_name": "classify_x_to_y", "examples": [{"x": {"b64": "é"}}]}'.encode(),
        400,
        "Unable to base64 decode",
    ),
    (
        "lone-surrogate",
        "POST",
        f"/v1/models/{MODEL}:predict",
        b'{"signature_name": "classify_x_to_y", "instances": ["\\ud800"]}',
        400,
        "JSON Parse error: The surrogate pair in string is invalid.",
    ),
    ("not-utf8", "POST", f"/v1/models/{MODEL}:predict", b'{"instances": ["\xff"]}', 400, "JSON Parse error"),
    (
        "body-above-cap",
        "POST",
        f"/v1/models/{MODEL}:predict",
        b'{"instances": [[2.0]], "pad": "' + b"x" * TENSOR_LIMIT + b'"}',
        413,
        f"Request body of {TENSOR_LIMIT + 33} bytes exceeds the request tensor limit of {TENSOR_LIMIT} bytes",
    ),
    (
        "json-expanding-above-cap",
        "POST",
        f"/v1/models/{MODEL}:predict",
        b'{"instances": [' + b"[]," * 100_000 + b"[]]}",
        413,
        "JSON body of",
    ),
    ("outside-v1", "GET", "/v2/models", None, 404, "Not Found"),
    ("unknown-method", "DELETE", f"/v1/models/{MODEL}", None, 400, f"Malformed request: DELETE /v1/models/{MODEL}"),
    ("non-ascii-version-digits", "GET", f"/v1/models/{MODEL}/versions/%D9%A1", None, 400, "Malformed request"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [case[1:] for case in REST_CASES],
    ids=[case[0] for case in REST_CASES],
)
def test_rest_errors_answer_json_with_their_status(
    server: ServerHandle,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    error: str | None,
) -> None:
    if "%D9%A1" in path:  # urllib would not send it raw
        path = path.replace("%D9%A1", "١")
        request = f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        got_status, answer = raw_http(server, request)
    else:
        got_status, answer = http(server, method, path, body)
    assert got_status == status, answer
    if status != 200:
        assert list(answer) == ["error"], answer
        if error is not None:
            assert answer["error"].startswith(error), answer
    assert_healthy(server)


@pytest.mark.parametrize(
    ("head", "status", "error"),
    [
        (f"Content-Length: {'١٢'}", 400, "Invalid Content-Length: ١٢"),
        ("Content-Length: ²", 400, "Invalid Content-Length: ²"),
        ("Content-Length: -1", 400, "Invalid Content-Length: -1"),
        ("Content-Length: 1e3", 400, "Invalid Content-Length: 1e3"),
        (f"Content-Length: {'9' * 40}", 413, f"Request body of {'9' * 40} bytes exceeds the limit"),
        ("Content-Length: 5\r\nContent-Length: 6", 400, "Conflicting Content-Length headers"),
        ("Transfer-Encoding: gzip", 400, "Unsupported Transfer-Encoding: gzip"),
        ("Transfer-Encoding: chunked\r\nContent-Length: 3", 400, "Both Transfer-Encoding and Content-Length given"),
        ("Bad Header: x", 400, "Malformed header line"),
        ("X-Big: " + "a" * (70 << 10), 400, "Request head exceeds 65536 bytes"),
    ],
    ids=[
        "arabic-indic-digits",
        "superscript",
        "negative",
        "float",
        "40-digits",
        "conflicting",
        "gzip",
        "te-and-cl",
        "bad-header",
        "huge-head",
    ],
)
def test_malformed_http_heads_answer_json(server: ServerHandle, head: str, status: int, error: str) -> None:
    request = (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n").encode()
    got_status, answer = raw_http(server, request)
    assert got_status == status, answer
    assert list(answer) == ["error"] and answer["error"].startswith(error), answer
    assert_healthy(server)


def test_chunked_bodies_and_100_continue_are_read(server: ServerHandle) -> None:
    body = b'{"instances": [[2.0], [4.0]]}'
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:])) + b"0\r\n\r\n"
    assert raw_http(
        server,
        (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        + chunked,
    ) == (200, {"predictions": [[3.0], [4.0]]})
    with socket.create_connection((server.host, server.rest_port), timeout=30) as connection:
        connection.sendall(
            (
                f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
        )
        assert connection.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        connection.sendall(body)
        assert connection.recv(65536).split(b"\r\n", 1)[0] == b"HTTP/1.1 200 OK"


# --------------------------------------------------------------------------------------------
# REST: slowloris


HALF_SENT = 1000
LATENCY_SAMPLES = 20


def rest_latencies(server: ServerHandle, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.monotonic()
        assert http(server, "POST", f"/v1/models/{MODEL}:predict", b'{"instances": [[2.0]]}') == (
            200,
            {"predictions": [[3.0]]},
        )
        latencies.append(time.monotonic() - started)
    return latencies


def test_a_thousand_half_sent_requests_neither_hold_threads_nor_slow_others(
    server: ServerHandle,
) -> None:
    rest_latencies(server, 5)  # warm
    usual = statistics.median(rest_latencies(server, LATENCY_SAMPLES))
    threads_before = status_field(server, "Threads")
    half_sent: list[socket.socket] = []
    try:
        for index in range(HALF_SENT):
            connection = socket.create_connection((server.host, server.rest_port), timeout=30)
            half_sent.append(connection)
            if index % 2:  # a head that never ends
                connection.sendall(f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\n".encode())
            else:  # a whole head, then a body that never ends
                connection.sendall(
                    (
                        f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\n"
                        'Content-Length: 1000\r\n\r\n{"instances": '
                    ).encode()
                )
        opened = time.monotonic()
        during = rest_latencies(server, LATENCY_SAMPLES)
        threads_during = status_field(server, "Threads")
        print(
            f"REST latency median {usual * 1000:.1f} ms; with {HALF_SENT} half-sent requests "
            f"median {statistics.median(during) * 1000:.1f} ms, max {max(during) * 1000:.1f} ms; "
            f"server threads {threads_before} -> {threads_during}"
        )
        assert statistics.median(during) <= 3 * usual + 0.02
        assert max(during) < 1.0
        assert threads_during <= threads_before + 8  # the worker pool, at most

        # The half-sent head is answered 408 and closed once the head deadline passes.
        stalled = half_sent[1]
        stalled.settimeout(rest.HEADER_TIMEOUT_SECONDS + 10 - (time.monotonic() - opened))
        response = b""
        while chunk := stalled.recv(65536):
            response += chunk
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), response
        assert json.loads(body) == {"error": f"Request head not received within {rest.HEADER_TIMEOUT_SECONDS:g} s"}
    finally:
        for connection in half_sent:
            connection.close()
    assert_healthy(server)


# --------------------------------------------------------------------------------------------
# Load retries and SIGTERM; versions above int64


def test_sigterm_stops_a_server_waiting_between_load_retries(tmp_path: Path) -> None:
    version_dir = tmp_path / "broken" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(b"not a SavedModel")
    log = tmp_path / "server.log"
    command = [
        str(REPO / ".venv" / "bin" / "tfpack-model-server"),
        f"--port={free_port()}",
        "--model_name=broken",
        f"--model_base_path={version_dir.parent}",
        "--max_num_load_retries=100",
        "--load_retry_interval_micros=60000000",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "Retrying load of servable version" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=15)
        stopped_in = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=15)
    print(f"stopped {stopped_in:.2f} s after SIGTERM, exit {code}")
    assert code == 0, log.read_text()
    assert stopped_in < 5, log.read_text()
    assert "Traceback" not in log.read_text()


def test_version_dirs_above_int64_are_no_versions(tmp_path: Path) -> None:
    for name in ("1", str(MAX_VERSION), str(MAX_VERSION + 1), "9" * 200, "0" * 30 + "7"):
        (tmp_path / name).mkdir()
    versions, problems = find_version_dirs(tmp_path)
    assert versions == {1: tmp_path / "1", 7: tmp_path / ("0" * 30 + "7"), MAX_VERSION: tmp_path / str(MAX_VERSION)}
    assert len(problems) == 2
    assert all("versions are at most 9223372036854775807 (int64)" in p for p in problems)


def test_a_server_serves_beside_a_version_dir_above_int64(tmp_path: Path) -> None:
    base_path = tmp_path / MODEL
    write_half_plus_two_tf1(base_path, version=1)
    (base_path / str(MAX_VERSION + 1)).mkdir()
    with running_model_server(
        [f"--model_name={MODEL}", f"--model_base_path={base_path}", "--max_num_load_retries=0"]
    ) as handle:
        assert http(handle, "GET", f"/v1/models/{MODEL}")[1]["model_version_status"][0]["version"] == "1"
        assert "versions are at most 9223372036854775807" in handle.stderr()
        assert "Traceback" not in handle.stderr()


# --------------------------------------------------------------------------------------------
# Without a server


@pytest.mark.parametrize(
    ("proto", "expected_bytes"),
    [
        (tf.make_tensor_proto(np.ones([3, 2], np.float32)), 24),
        (tf.make_tensor_proto(np.ones([1], np.float64)), 8),
        (tf.make_tensor_proto(np.array([1 + 2j, 3j], np.complex64)), 16),
        (tf.make_tensor_proto(np.array([b"ab", b"c"])), 2 * 24 + 3),
        (tf.make_tensor_proto(np.ones([2, 2], np.float16)), 8),
        (raw_tensor(types_pb2.DT_HALF, [1], half_val=[15360]), 2),
        (raw_tensor(types_pb2.DT_FLOAT, [0, 5]), 0),
        (raw_tensor(types_pb2.DT_FLOAT, []), None),  # a scalar with no value
        (raw_tensor(types_pb2.DT_COMPLEX64, [2], scomplex_val=[1.0, 2.0]), None),
        (raw_tensor(types_pb2.DT_STRING, [1], tensor_content=b"abc"), None),
        (raw_tensor(types_pb2.DT_FLOAT, [0], float_val=[1.0]), None),
        (raw_tensor(types_pb2.DT_FLOAT, [2], float_val=[1.0], tensor_content=b"\0" * 8), 8),
    ],
)
def test_check_request_tensor(proto: tensor_pb2.TensorProto, expected_bytes: int | None) -> None:
    if expected_bytes is None:
        with pytest.raises(ServingError) as raised:
            tensors.check_request_tensor(proto, "t")
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        return
    assert tensors.check_request_tensor(proto, "t") == expected_bytes
    if proto.dtype != types_pb2.DT_STRING:
        assert tensors.to_ndarray(proto).nbytes == expected_bytes


def test_the_automatic_tensor_cap_is_sized_for_the_server_memory() -> None:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cap = default_max_request_tensor_bytes()
    assert 64 << 20 <= cap <= 2**31 - 1
    assert cap <= max(memory // 16, 64 << 20)


def test_an_unparseable_grpc_request_leaves_one_line_in_the_log() -> None:
    """Raw bytes that are no PredictRequest: an error for the client, no traceback for the log."""
    import tempfile

    from tests.factories.half_plus_two import write_half_plus_two_tf1
    from tests.servers import running_model_server

    with tempfile.TemporaryDirectory() as root:
        write_half_plus_two_tf1(Path(root) / "half")
        with running_model_server([f"--model_base_path={root}/half", "--model_name=half"], rest=False) as server:
            with server.channel() as channel:
                call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
                for _ in range(3):
                    with pytest.raises(grpc.RpcError):
                        call(b"\xff\xff\xff\xff", timeout=10)
            log = server.stderr()
    assert "Traceback" not in log, log
    assert log.count("deserializ") >= 1
