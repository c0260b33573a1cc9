"""tfpack-model-server under load: many concurrent clients, malformed requests among good ones,
a new version published while serving, and memory that does not grow with the request count.

One server for the module, its gRPC receive limit lowered to 1 MiB (--grpc_channel_arguments) so
an oversized message is cheap to send. The load tests are marked slow; they still run in
``make test`` (about 20 s on a 2-core machine).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.factories.half_plus_two import write_half_plus_two_tf1
from tests.servers import ServerHandle, running_model_server

MODEL = "half_plus_two"
CLIENTS, REQUESTS_PER_CLIENT = 32, 300
GRPC_RECEIVE_LIMIT = 1 << 20
AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.State.END


def publish(base_path: Path, version: int, offset: float) -> None:
    """Write a version the way tfpack does: build beside the base path, rename into place."""
    staging = base_path.parent / f".staging-{version}"
    write_half_plus_two_tf1(staging, version=version, offset=offset)
    (staging / str(version)).rename(base_path / str(version))
    staging.rmdir()


@pytest.fixture(scope="module")
def base_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reliability") / MODEL
    path.mkdir()
    publish(path, 1, offset=2.0)
    return path


@pytest.fixture(scope="module")
def server(base_path: Path) -> Iterator[ServerHandle]:
    with running_model_server(
        [
            f"--model_name={MODEL}",
            f"--model_base_path={base_path}",
            "--file_system_poll_wait_seconds=1",
            "--max_num_load_retries=0",
            f"--grpc_channel_arguments=grpc.max_receive_message_length={GRPC_RECEIVE_LIMIT}",
        ]
    ) as handle:
        yield handle


def predict_request(x: np.ndarray, alias: str = "x") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs[alias].CopyFrom(tf.make_tensor_proto(x))
    return request


@dataclass
class Load:
    """Clients predicting in background threads until stopped or out of requests."""

    target: str
    clients: int
    requests_per_client: int | None = None  # None: until stop() is called
    answers: set[float] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    completed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self._threads = [
            threading.Thread(target=self._client, args=(index,), daemon=True) for index in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 60) -> None:
        """Ask the clients to stop after their current request and wait for them."""
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float) -> None:
        """Wait (bounded) until every client has finished."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))
        assert not any(thread.is_alive() for thread in self._threads), "clients did not finish"

    def _client(self, index: int) -> None:
        x = float(index)
        request = predict_request(np.array([[x]], np.float32))
        with grpc.insecure_channel(self.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            sent = 0
            while not self._stop.is_set() and sent != self.requests_per_client:
                sent += 1
                try:
                    y = stub.Predict(request, timeout=30).outputs["y"].float_val[0]
                except grpc.RpcError as error:
                    with self._lock:
                        self.failures.append(f"client {index}: {error.code()}: {error.details()}")
                    continue
                with self._lock:
                    self.completed += 1
                    self.answers.add(y - 0.5 * x)  # the offset of the version that answered


def server_rss_kib(server: ServerHandle) -> int:
    """The server process's resident set size (VmRSS) in KiB."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/PID/status")


@pytest.mark.slow
def test_32_clients_x_300_requests_without_errors_and_rss_stays_flat(
    server: ServerHandle,
) -> None:
    # A short round first brings the server to its steady state (gRPC's thread pool grown to
    # 32 handlers, TensorFlow's run caches filled): growth after that would be a leak.
    warmup = Load(server.grpc_target, CLIENTS, requests_per_client=10).start()
    warmup.join(timeout=60)
    assert warmup.failures == []
    rss_before = server_rss_kib(server)

    started = time.monotonic()
    load = Load(server.grpc_target, CLIENTS, REQUESTS_PER_CLIENT).start()
    load.join(timeout=120)
    elapsed = time.monotonic() - started
    rss_after = server_rss_kib(server)

    assert load.failures == []
    assert load.completed == CLIENTS * REQUESTS_PER_CLIENT
    assert load.answers == {2.0}
    print(
        f"{CLIENTS}x{REQUESTS_PER_CLIENT} Predict calls in {elapsed:.1f} s; "
        f"server VmRSS {rss_before} KiB -> {rss_after} KiB"
    )
    assert rss_after <= rss_before * 1.10, (rss_before, rss_after)


def rest_post(server: ServerHandle, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{server.rest_url}/v1/models/{MODEL}:predict", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def rest_declared_oversized(server: ServerHandle) -> tuple[int, dict]:
    """POST a request announcing a 3 GiB body without sending it: refused before reading."""
    with socket.create_connection((server.host, server.rest_port), timeout=30) as connection:
        connection.sendall(
            f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: {server.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {3 << 30}\r\n\r\n".encode()
        )
        response = b""
        while chunk := connection.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def short_tensor_request() -> predict_pb2.PredictRequest:
    """dims [4, 1] with a single value: TensorFlow would pad it out; the server refuses."""
    request = predict_request(np.ones([1, 1], np.float32))
    request.inputs["x"].tensor_shape.dim[0].size = 4
    return request


GRPC_MALFORMED: list[tuple[str, Callable[[], predict_pb2.PredictRequest], grpc.StatusCode, str]] = [
    (
        "wrong dtype",
        lambda: predict_request(np.array([[1]], np.int32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expects arg[0] to be float but int32 is provided",
    ),
    # A shape the graph can take is fed as TF Serving's C++ session feeds it (elementwise here);
    # a tensor whose values do not fill its shape never is.
    (
        "values short of the shape",
        lambda: short_tensor_request(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tensor parsing error",
    ),
    (
        "unknown input",
        lambda: predict_request(np.ones([1, 1], np.float32), alias="z"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input tensor alias not found in signature: z",
    ),
    (
        "oversized",
        lambda: predict_request(np.ones([1 << 19, 1], np.float32)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Received message larger than max",
    ),
]

REST_MALFORMED: list[tuple[str, bytes, int, str]] = [
    ("wrong dtype", b'{"instances": [["one"]]}', 400, "is not of expected type: float"),
    ("ragged instances", b'{"instances": [[1.0], [2.0, 3.0]]}', 400, "Expecting shape [1] but got: [2]"),
    ("unknown input", b'{"inputs": {"z": [[1.0]]}}', 400, "Missing named input: x in 'inputs'"),
]


@pytest.mark.slow
def test_malformed_requests_get_their_codes_while_others_are_served(
    server: ServerHandle,
) -> None:
    load = Load(server.grpc_target, clients=8).start()
    try:
        with server.channel() as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for name, make_request, code, detail in GRPC_MALFORMED * 3:
                with pytest.raises(grpc.RpcError) as raised:
                    stub.Predict(make_request(), timeout=30)
                assert raised.value.code() == code, name
                assert detail in raised.value.details(), (name, raised.value.details())
        for name, body, status, message in REST_MALFORMED * 3:
            answer_status, answer = rest_post(server, body)
            assert answer_status == status, (name, answer)
            assert message in answer["error"], (name, answer)
        status, answer = rest_declared_oversized(server)
        assert status == 413
        assert answer == {"error": f"Request body of {3 << 30} bytes exceeds the limit of 2147483647 bytes"}
        served_meanwhile = load.completed
    finally:
        load.stop()
    assert load.failures == []
    assert served_meanwhile > 0
    assert rest_post(server, b'{"instances": [[2.0]]}') == (200, {"predictions": [[3.0]]})


def version_states(server: ServerHandle) -> list[tuple[int, int]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    with server.channel() as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    return [(status.version, status.state) for status in response.model_version_status]


@pytest.mark.slow
def test_new_version_under_load_fails_no_request(server: ServerHandle, base_path: Path) -> None:
    load = Load(server.grpc_target, clients=8).start()
    try:
        time.sleep(0.5)  # requests in flight before the new version appears
        publish(base_path, 2, offset=10.0)
        deadline = time.monotonic() + 60
        while version_states(server) != [(2, AVAILABLE), (1, END)]:
            assert time.monotonic() < deadline, version_states(server)
            time.sleep(0.2)
        answered_before = load.completed
        while load.completed < answered_before + 50:  # requests answered after the swap
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        load.stop()
    assert load.failures == []
    assert load.answers == {2.0, 10.0}
