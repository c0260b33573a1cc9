"""tfpack-model-server gRPC options: health service, UNIX socket, graceful SIGTERM."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.factories.half_plus_two import write_half_plus_two_tf2
from tests.servers import running_model_server


def test_health_service_unix_socket_and_graceful_stop(tmp_path: Path) -> None:
    write_half_plus_two_tf2(tmp_path / "hp")
    socket_path = tmp_path / "grpc.sock"
    with running_model_server(
        [
            "--model_name=hp",
            f"--model_base_path={tmp_path / 'hp'}",
            "--enable_grpc_healthcheck_service",
            f"--grpc_socket_path={socket_path}",
        ],
        rest=False,
    ) as server:
        with server.channel() as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "hp"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
        with grpc.insecure_channel(f"unix:{socket_path}") as unix_channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(unix_channel).Predict(request, timeout=10)
        assert list(response.outputs["y"].float_val) == [3.0]
        process = server.process
    assert process.returncode == 0  # SIGTERM from running_model_server: a clean stop
