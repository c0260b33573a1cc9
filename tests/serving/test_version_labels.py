"""Issue 13: tfpack-model-server started exactly as the image's entrypoint starts it.

The files are baked_etc_files' (every version of every model, version labels, Prometheus
monitoring, batching) and the flags are server_command's, on free ports. Over real gRPC and REST:
every baked version answers, each label resolves to its version, an unknown label is TF Serving's
INVALID_ARGUMENT ("Unrecognized servable version label", ServerCore::GetModelVersionForLabel),
metrics are served at the baked path and requests go through the batcher.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tensorflow as tf
from factories.image_layout import baked_layout
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.entrypoint import EMBEDDED_SERVER, PROMETHEUS_PATH, ImageLayout, load_baked, server_command
from tests.factories.half_plus_two import write_half_plus_two_tf1
from tests.servers import ServerHandle, http, running_model_server

AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
OFFSETS = {("half", 1): 2.0, ("half", 2): 3.0, ("twin", 1): 10.0}  # y = 0.5 * x + offset
LABELS = {"half": {"stable": 1, "canary": 2}}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> ImageLayout:
    root = tmp_path_factory.mktemp("baked")
    for (name, version), offset in OFFSETS.items():
        write_half_plus_two_tf1(root / "models" / name, version=version, offset=offset)
    return baked_layout(
        root,
        None,
        EMBEDDED_SERVER,
        allow_unsigned=True,
        labels=LABELS,
        monitoring=True,
        batching=True,
        batching_parameters="max_batch_size { value: 8 }\nbatch_timeout_micros { value: 1000 }\n",
    )


@pytest.fixture(scope="module")
def server(layout: ImageLayout) -> Iterator[ServerHandle]:
    command = server_command(layout, load_baked(layout), [])
    # The image's own ports are 8500/8501; here free ones, which running_model_server adds.
    flags = [arg for arg in command[1:] if not arg.startswith(("--port=", "--rest_api_port="))]
    assert f"--model_config_file={layout.model_config}" in flags
    with running_model_server(flags) as handle:
        yield handle


@pytest.fixture(scope="module")
def channel(server: ServerHandle) -> Iterator[grpc.Channel]:
    with server.channel() as opened:
        yield opened


def _predict(channel: grpc.Channel, model: str, *, version: int | None = None, label: str | None = None) -> float:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return response.outputs["y"].float_val[0]


def test_every_baked_version_is_served(channel: grpc.Channel, server: ServerHandle) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    for name, versions in (("half", [2, 1]), ("twin", [1])):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        response = stub.GetModelStatus(request, timeout=10)
        assert [(s.version, s.state) for s in response.model_version_status] == [(v, AVAILABLE) for v in versions]
    for (name, version), offset in OFFSETS.items():
        assert _predict(channel, name, version=version) == 0.5 + offset
        status, body = http(
            "POST", f"{server.rest_url}/v1/models/{name}/versions/{version}:predict", {"instances": [[1.0]]}
        )
        assert (status, body) == (200, {"predictions": [[0.5 + offset]]})
    assert _predict(channel, "half") == 3.5  # no version asked: the latest


def test_labels_resolve_to_their_versions_over_grpc_and_rest(channel: grpc.Channel, server: ServerHandle) -> None:
    for label, version in LABELS["half"].items():
        offset = OFFSETS[("half", version)]
        assert _predict(channel, "half", label=label) == 0.5 + offset
        status, body = http("POST", f"{server.rest_url}/v1/models/half/labels/{label}:predict", {"instances": [[1.0]]})
        assert (status, body) == (200, {"predictions": [[0.5 + offset]]})
        status, body = http("GET", f"{server.rest_url}/v1/models/half/labels/{label}")
        assert status == 200
        assert [(s["version"], s["state"]) for s in body["model_version_status"]] == [(str(version), "AVAILABLE")]

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "half"
        request.model_spec.version_label = label
        metadata = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=10)
        assert metadata.model_spec.version.value == version


@pytest.mark.parametrize(("model", "label"), [("half", "nightly"), ("twin", "stable")])
def test_an_unknown_label_is_invalid_argument_as_in_tf_serving(
    channel: grpc.Channel, server: ServerHandle, model: str, label: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _predict(channel, model, label=label)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == f"Unrecognized servable version label: {label}"
    status, body = http("POST", f"{server.rest_url}/v1/models/{model}/labels/{label}:predict", {"instances": [[1.0]]})
    assert (status, body) == (400, {"error": f"Unrecognized servable version label: {label}"})


def test_metrics_are_served_at_the_baked_path_and_requests_are_batched(
    channel: grpc.Channel, server: ServerHandle
) -> None:
    assert _predict(channel, "twin") == 10.5
    with urllib.request.urlopen(f"{server.rest_url}{PROMETHEUS_PATH}", timeout=10) as response:
        assert response.status == 200
        metrics = response.read().decode()
    assert ':tensorflow:serving:request_count{model_name="twin",status="OK"}' in metrics
    batched = [
        line
        for line in metrics.splitlines()
        if line.startswith(":tensorflow:serving:batching_session:wrapped_run_count ")
    ]
    assert batched and int(batched[0].split()[-1]) > 0
