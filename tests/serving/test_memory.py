"""Memory under reload: swapping in a new version of a ~50 MB model while serving holds at most
the old and the new model at once, and the server returns to one model's footprint once the
old version unloads (TensorFlow Serving's users hit OOMs here: each reload left the old
version's memory behind).

A real tfpack-model-server polls the file system; version 2 is published atomically (written
beside the base path, then renamed in) while a client keeps predicting. The server's resident
memory is read from /proc/PID/status: VmRSS, and VmHWM (the peak) after resetting it through
/proc/PID/clear_refs, so the peak of the swap is measured exactly rather than sampled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
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

from tests.servers import ServerHandle, running_model_server

MODEL = "big"
# A Dense layer of 2500 x 5000 float32 weights: 12.5M values, 50 MB.
ROWS, COLUMNS = 2500, 5000
MODEL_BYTES = ROWS * COLUMNS * 4
MIB = 1 << 20
AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.State.END

# Bounds. The machine is shared and the server is a Python process with gRPC and TensorFlow
# thread pools, so its RSS moves by some MB on its own (allocator arenas of request threads,
# Python objects, kernels first used). SLACK covers that: 20 MB, well under the 50 MB that
# one model copy more (or one not freed) would add, so each bound still tells the cases apart.
SLACK = 20 * MIB
# While v2 loads, v1 is still served: old + new model. The new model is restored into its
# variable buffer (TensorFlow's Assign forwards the restored tensor rather than copying it);
# 1.3x leaves room for the load's transient buffers (graph, checkpoint index and reads).
PEAK_BOUND = int(1.3 * MODEL_BYTES) + SLACK
# After v1 unloads, the server is back to one model: the baseline, within SLACK.
AFTER_UNLOAD_BOUND = SLACK
SWAP_SECONDS = 40.0  # publish -> v2 available and v1 unloaded (load + one poll of 1 s)
RELEASE_SECONDS = 10.0  # v1 unloaded -> its memory given back


def write_dense_model(base_path: Path, version: int, offset: float) -> None:
    """Write ``base_path/version``: y = x @ W + offset, x [None, ROWS], W random (50 MB)."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, ROWS], name="x")
        weights = v1.get_variable(
            "weights",
            [ROWS, COLUMNS],
            tf.float32,
            initializer=v1.random_normal_initializer(stddev=0.01, seed=version),
        )
        bias = v1.Variable(offset, name="offset")
        y = tf.add(tf.matmul(x, weights), bias, name="y")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.builder.SavedModelBuilder(str(base_path / str(version)))
            builder.add_meta_graph_and_variables(
                session,
                ["serve"],
                signature_def_map={
                    "serving_default": v1.saved_model.signature_def_utils.predict_signature_def(
                        inputs={"x": x}, outputs={"y": y}
                    )
                },
            )
            builder.save()


def publish(base_path: Path, version: int, offset: float) -> None:
    """Publish a version atomically: write it beside the base path, then rename it in."""
    staging = base_path.parent / f".staging-{version}"
    write_dense_model(staging, version, offset)
    base_path.mkdir(parents=True, exist_ok=True)
    (staging / str(version)).rename(base_path / str(version))
    staging.rmdir()


def status_field(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # "VmRSS:   123456 kB"
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def settled_rss(pid: int, seconds: float = 6.0) -> int:
    """RSS once it stops moving (three samples 0.3 s apart within 2 MB), at most ``seconds``."""
    samples = [status_field(pid, "VmRSS")]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.3)
        samples.append(status_field(pid, "VmRSS"))
        last = samples[-3:]
        if len(last) == 3 and max(last) - min(last) <= 2 * MIB:
            break
    return samples[-1]


def predict_offset(stub: prediction_service_pb2_grpc.PredictionServiceStub) -> float:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros([1, ROWS], np.float32)))
    response = stub.Predict(request, timeout=30)
    return response.outputs["y"].float_val[0]  # x = 0: y is the version's offset


def versions(channel: grpc.Channel) -> dict[int, int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    return {s.version: s.state for s in response.model_version_status}


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    publish(tmp_path / MODEL, 1, offset=1.0)
    with running_model_server(
        [
            f"--model_name={MODEL}",
            f"--model_base_path={tmp_path / MODEL}",
            "--file_system_poll_wait_seconds=1",
            "--max_num_load_retries=0",
        ],
        rest=False,
        timeout=60,
    ) as handle:
        yield handle


@pytest.mark.timeout(120)
def test_reload_holds_at_most_two_models_and_returns_to_one(server: ServerHandle, tmp_path: Path) -> None:
    pid = server.process.pid
    with server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(5):  # the first requests allocate (kernels, buffers): before the baseline
            assert predict_offset(stub) == 1.0
        baseline = settled_rss(pid)
        exact_peak = reset_peak(pid)

        # Serve while the new version loads and the old one unloads.
        stop, answers, failures = threading.Event(), [], []

        def client() -> None:
            deadline = time.monotonic() + SWAP_SECONDS + RELEASE_SECONDS
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    answers.append(predict_offset(stub))
                except grpc.RpcError as error:
                    failures.append(error)
                time.sleep(0.02)

        load = threading.Thread(target=client)
        load.start()
        try:
            publish(tmp_path / MODEL, 2, offset=2.0)
            sampled_peak = baseline
            deadline = time.monotonic() + SWAP_SECONDS
            while versions(channel) != {2: AVAILABLE, 1: END}:
                assert time.monotonic() < deadline, f"no swap in {SWAP_SECONDS:g} s: {versions(channel)}"
                sampled_peak = max(sampled_peak, status_field(pid, "VmRSS"))
                time.sleep(0.05)
            peak = max(sampled_peak, status_field(pid, "VmHWM") if exact_peak else 0)
        finally:
            stop.set()
            load.join(timeout=30)

        # v1 is unloaded: its memory must come back (promptly, not at some later collection).
        after = status_field(pid, "VmRSS")
        deadline = time.monotonic() + RELEASE_SECONDS
        while after - baseline > AFTER_UNLOAD_BOUND and time.monotonic() < deadline:
            time.sleep(0.2)
            after = status_field(pid, "VmRSS")
        assert predict_offset(stub) == 2.0

    figures = (
        f"model {MODEL_BYTES / MIB:.0f} MiB; RSS baseline {baseline / MIB:.0f} MiB, peak "
        f"{peak / MIB:.0f} MiB (+{(peak - baseline) / MIB:.0f}, "
        f"{'VmHWM' if exact_peak else 'sampled'}), after unload {after / MIB:.0f} MiB "
        f"(+{(after - baseline) / MIB:.0f})"
    )
    print(figures)
    assert not failures, f"{len(failures)} requests failed during the swap: {failures[0]}"
    assert answers and set(answers) <= {1.0, 2.0}
    assert peak - baseline <= PEAK_BOUND, f"swap peak above old + new model: {figures}"
    assert after - baseline <= AFTER_UNLOAD_BOUND, f"old version's memory not released: {figures}"
