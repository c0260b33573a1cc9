"""Server-side batching: the scheduler in-process (deterministic merging, queue limits,
deadlines) and a real tfpack-model-server with --enable_batching --batching_parameters_file."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.batching import (
    BatchingOptions,
    BatchScheduler,
    read_batching_parameters,
)
from serving.status import ServingError
from tests.factories.half_plus_two import write_half_plus_two_tf2
from tests.servers import REPO, ServerHandle, running_model_server

MODEL = "half_plus_two"
CONCURRENT_REQUESTS = 16


class GatedRun:
    """A session run (y = 2x) that records each batch and can be held until released."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.started = threading.Semaphore(0)
        self.gate = threading.Event()

    def __call__(self, feeds, fetches, timeout_ms):
        self.batches.append(len(feeds["x"]))
        self.started.release()
        assert self.gate.wait(30)
        return [feeds["x"] * 2 for _ in fetches]


def call_in_thread(session, x: np.ndarray, results: dict, key: object) -> threading.Thread:
    def call() -> None:
        try:
            results[key] = session.run({"x": x}, ["y"], None)[0]
        except ServingError as error:
            results[key] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_waiting_runs_merge_into_one_batch_and_split_back() -> None:
    run = GatedRun()
    session = BatchScheduler(BatchingOptions(max_batch_size=8, num_batch_threads=1)).session(run)
    results: dict[object, object] = {}
    threads = [call_in_thread(session, np.array([[0.0]]), results, "first")]
    assert run.started.acquire(timeout=30)  # the only batch thread is now busy
    inputs = {"a": np.array([[1.0]]), "b": np.array([[2.0], [3.0]]), "c": np.array([[4.0]])}
    for key, x in inputs.items():
        threads.append(call_in_thread(session, x, results, key))
    wait_until(
        lambda: len(session._queues) == 1 and sum(b.size for q in session._queues.values() for b in q.batches) == 4
    )
    run.gate.set()
    for thread in threads:
        thread.join(30)
    assert run.batches == [1, 4]
    for key, x in inputs.items():
        np.testing.assert_array_equal(results[key], x * 2)


def test_padding_to_allowed_batch_sizes_is_cut_off() -> None:
    run = GatedRun()
    run.gate.set()
    options = BatchingOptions(max_batch_size=4, num_batch_threads=1, allowed_batch_sizes=(2, 4))
    session = BatchScheduler(options).session(run)
    output = session.run({"x": np.array([[5.0], [6.0], [7.0]])}, ["y"], None)[0]
    assert run.batches == [4]
    np.testing.assert_array_equal(output, [[10.0], [12.0], [14.0]])


def test_full_queue_is_unavailable_and_oversized_task_invalid() -> None:
    run = GatedRun()
    options = BatchingOptions(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1)
    session = BatchScheduler(options).session(run)
    results: dict[object, object] = {}
    threads = [call_in_thread(session, np.array([[1.0]]), results, "running")]
    assert run.started.acquire(timeout=30)
    threads.append(call_in_thread(session, np.array([[2.0]]), results, "queued"))
    wait_until(lambda: any(q.batches for q in session._queues.values()))
    with pytest.raises(ServingError) as full:
        session.run({"x": np.array([[3.0]])}, ["y"], None)
    assert full.value.code == grpc.StatusCode.UNAVAILABLE
    assert full.value.message == ("The batch scheduling queue to which this task was submitted is full")
    with pytest.raises(ServingError) as oversized:
        session.run({"x": np.zeros([2, 1])}, ["y"], None)
    assert oversized.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert oversized.value.message == "Task size 2 is larger than maximum input batch size 1"
    run.gate.set()
    for thread in threads:
        thread.join(30)
    np.testing.assert_array_equal(results["queued"], [[4.0]])


def test_run_whose_deadline_passes_in_the_queue_is_deadline_exceeded() -> None:
    run = GatedRun()
    session = BatchScheduler(BatchingOptions(num_batch_threads=1)).session(run)
    results: dict[object, object] = {}
    blocker = call_in_thread(session, np.array([[1.0]]), results, "running")
    assert run.started.acquire(timeout=30)
    waiting = threading.Thread(target=lambda: results.setdefault("late", _run_or_error(session, 1)), daemon=True)
    waiting.start()
    time.sleep(0.1)  # past the waiting call's 1 ms deadline
    run.gate.set()
    for thread in (blocker, waiting):
        thread.join(30)
    assert isinstance(results["late"], ServingError)
    assert results["late"].code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert run.batches == [1]  # the expired call never ran


def _run_or_error(session, timeout_ms: int) -> object:
    try:
        return session.run({"x": np.array([[2.0]])}, ["y"], timeout_ms)
    except ServingError as error:
        return error


def test_unbatchable_inputs_are_invalid() -> None:
    session = BatchScheduler(BatchingOptions(num_batch_threads=1)).session(GatedRun())
    with pytest.raises(ServingError, match="must have equal 0th-dimension size"):
        session.run({"x": np.zeros([2, 1]), "z": np.zeros([3, 1])}, ["y"], None)
    with pytest.raises(ServingError, match="must have at least one dimension"):
        session.run({"x": np.float32(1.0)}, ["y"], None)


# --------------------------------------------------------------------------------------------
# A real server


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batching")
    write_half_plus_two_tf2(root / MODEL)
    # A long timeout makes concurrent requests wait for each other: merging is certain.
    (root / "batching.config").write_text(
        "max_batch_size { value: 8 }\n"
        "batch_timeout_micros { value: 200000 }\n"
        "max_enqueued_batches { value: 100 }\n"
        "num_batch_threads { value: 2 }\n"
        "allowed_batch_sizes: 4\n"
        "allowed_batch_sizes: 8\n"
    )
    (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    return root


@pytest.fixture(scope="module")
def server(model_root: Path) -> Iterator[ServerHandle]:
    with running_model_server(
        [
            f"--model_name={MODEL}",
            f"--model_base_path={model_root / MODEL}",
            "--enable_batching",
            f"--batching_parameters_file={model_root / 'batching.config'}",
            f"--monitoring_config_file={model_root / 'monitoring.config'}",
        ]
    ) as handle:
        yield handle


def wrapped_run_count(server: ServerHandle) -> int:
    with urllib.request.urlopen(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=30) as response:
        text = response.read().decode()
    match = re.search(r"^:tensorflow:serving:batching_session:wrapped_run_count (\d+)$", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def predict(stub, x: np.ndarray, timeout: float = 30) -> np.ndarray:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    return tf.make_ndarray(stub.Predict(request, timeout=timeout).outputs["y"])


def test_concurrent_requests_are_merged_and_answered_correctly(server: ServerHandle) -> None:
    runs_before = wrapped_run_count(server)
    start = threading.Barrier(CONCURRENT_REQUESTS)
    answers: dict[int, object] = {}
    with server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def client(index: int) -> None:
            rows = 1 + index % 2  # tasks of 1 and 2 rows
            x = np.full([rows, 1], float(index), np.float32)
            start.wait(30)
            try:
                answers[index] = predict(stub, x)
            except grpc.RpcError as error:
                answers[index] = error

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CONCURRENT_REQUESTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    for index in range(CONCURRENT_REQUESTS):
        expected = np.full([1 + index % 2, 1], 0.5 * index + 2.0, np.float32)
        np.testing.assert_array_equal(answers[index], expected)
    runs = wrapped_run_count(server) - runs_before
    assert 0 < runs < CONCURRENT_REQUESTS  # requests shared session runs


def test_task_above_max_batch_size_is_invalid(server: ServerHandle) -> None:
    with server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            predict(stub, np.zeros([9, 1], np.float32))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Task size 9 is larger than maximum input batch size 8"


@pytest.mark.parametrize(
    ("flags", "file_text", "message"),
    [
        (
            [],
            "max_batch_size { value: 8 }\n",
            "server_options.batching_parameters_file is set without setting server_options.enable_batching to true.",
        ),
        (
            ["--enable_batching"],
            "max_batch_size: 8\n",
            "Error parsing text-format tensorflow.serving.BatchingParameters",
        ),
        (
            ["--enable_batching"],
            "max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n",
            "final entry in allowed_batch_sizes must equal max_batch_size",
        ),
    ],
)
def test_bad_batching_configuration_fails_startup(
    tmp_path: Path, flags: list[str], file_text: str, message: str
) -> None:
    config = tmp_path / "batching.config"
    config.write_text(file_text)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.model_server",
            "--model_base_path=/nonexistent",
            f"--batching_parameters_file={config}",
            *flags,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.conformance
def test_conformance_tf_servings_batching_config_parses(shared_testdata: Path) -> None:
    assert read_batching_parameters(shared_testdata / "batching_config.txt") == BatchingOptions(
        max_batch_size=128,
        batch_timeout_micros=0,
        max_enqueued_batches=1000000,
        num_batch_threads=8,
    )
