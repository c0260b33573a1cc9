"""Model lifecycle in tfpack-model-server: config files, version policies, labels, polling for new
versions with swap-in under load, and HandleReloadConfigRequest. One server for the module."""

from __future__ import annotations

import json
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
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.factories.half_plus_two import write_half_plus_two_tf1
from tests.servers import REPO, ServerHandle, running_model_server

AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.State.END


def publish(base_path: Path, version: int, offset: float) -> None:
    """Write a version the way tfpack does: build beside, then rename into place."""
    staging = base_path.parent / f".staging-{base_path.name}-{version}"
    write_half_plus_two_tf1(staging, version=version, offset=offset)
    base_path.mkdir(parents=True, exist_ok=True)
    (staging / str(version)).rename(base_path / str(version))
    staging.rmdir()


def config_text(root: Path) -> str:
    return f"""
model_config_list {{
  config {{
    name: "multi"
    base_path: "{root / "multi"}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{ name: "single" base_path: "{root / "single"}" model_platform: "tensorflow" }}
}}
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lifecycle")
    publish(root / "multi", 1, offset=2.0)
    publish(root / "multi", 2, offset=3.0)
    publish(root / "single", 1, offset=2.0)
    (root / "models.config").write_text(config_text(root))
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ServerHandle]:
    with running_model_server(
        [
            f"--model_config_file={root / 'models.config'}",
            "--file_system_poll_wait_seconds=1",
            "--max_num_load_retries=0",
        ]
    ) as handle:
        yield handle


@pytest.fixture(scope="module")
def channel(server: ServerHandle) -> Iterator[grpc.Channel]:
    with server.channel() as opened:
        yield opened


def predict(channel: grpc.Channel, model: str, x: float, **spec: object) -> float:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if "version_label" in spec:
        request.model_spec.version_label = spec["version_label"]  # type: ignore[assignment]
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[x]], np.float32)))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    return response.outputs["y"].float_val[0]


def statuses(channel: grpc.Channel, model: str) -> list[tuple[int, int]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    return [(s.version, s.state) for s in response.model_version_status]


def test_all_versions_policy_loads_every_version(channel: grpc.Channel) -> None:
    assert statuses(channel, "multi") == [(2, AVAILABLE), (1, AVAILABLE)]
    assert predict(channel, "multi", 1.0) == 3.5  # latest of the loaded versions


def test_version_labels_select_versions(channel: grpc.Channel, server: ServerHandle) -> None:
    assert predict(channel, "multi", 1.0, version_label="stable") == 2.5
    assert predict(channel, "multi", 1.0, version_label="canary") == 3.5
    request = urllib.request.Request(
        f"{server.rest_url}/v1/models/multi/labels/stable:predict",
        data=json.dumps({"instances": [[1.0]]}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read()) == {"predictions": [[2.5]]}


def test_unknown_label_is_invalid(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        predict(channel, "multi", 1.0, version_label="nightly")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Unrecognized servable version label: nightly"


def test_new_version_is_swapped_in_without_failing_requests(channel: grpc.Channel, root: Path) -> None:
    failures: list[str] = []
    answers: set[float] = set()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                answers.add(predict(channel, "single", 1.0))
            except grpc.RpcError as error:
                failures.append(f"{error.code()}: {error.details()}")

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        publish(root / "single", 2, offset=10.0)
        deadline = time.monotonic() + 30
        while statuses(channel, "single") != [(2, AVAILABLE), (1, END)]:
            assert time.monotonic() < deadline, statuses(channel, "single")
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert failures == []
    assert answers == {2.5, 10.5}
    assert predict(channel, "single", 1.0) == 10.5


def reload(channel: grpc.Channel, text: str) -> model_management_pb2.ReloadConfigResponse:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)


def test_reload_rejects_label_for_unavailable_version(channel: grpc.Channel, root: Path) -> None:
    text = config_text(root).replace("value: 2", "value: 7")
    with pytest.raises(grpc.RpcError) as raised:
        reload(channel, text)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == (
        "Request to assign label to version 7 of model multi, which is not currently available for inference"
    )
    assert predict(channel, "multi", 1.0, version_label="canary") == 3.5  # labels unchanged


def test_reload_config_adds_removes_and_repolicies_models(channel: grpc.Channel, root: Path) -> None:
    publish(root / "added", 5, offset=100.0)
    response = reload(
        channel,
        f"""
        model_config_list {{
          config {{
            name: "multi" base_path: "{root / "multi"}" model_platform: "tensorflow"
            model_version_policy {{ specific {{ versions: 1 }} }}
          }}
          config {{ name: "added" base_path: "{root / "added"}" model_platform: "tensorflow" }}
        }}""",
    )
    assert response.status.error_code == 0
    assert statuses(channel, "added") == [(5, AVAILABLE)]
    assert predict(channel, "added", 0.0) == 100.0
    assert statuses(channel, "multi") == [(2, END), (1, AVAILABLE)]
    with pytest.raises(grpc.RpcError) as raised:
        predict(channel, "single", 1.0)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_startup_fails_when_a_label_names_a_missing_version(root: Path, tmp_path: Path) -> None:
    config = tmp_path / "labels.config"
    config.write_text(config_text(root).replace("value: 2", "value: 9"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.model_server",
            f"--model_config_file={config}",
            "--port=0",
            "--max_num_load_retries=0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Failed to start server. Error: Request to assign label to version 9 of model multi" in (result.stderr)
