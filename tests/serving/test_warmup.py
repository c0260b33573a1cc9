"""Model warmup: tfpack-model-server replays assets.extra/tf_serving_warmup_requests at load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, regression_pb2

from tests.factories.half_plus_two import write_half_plus_two_tf1
from tests.servers import REPO, running_model_server


def predict_log(input_name: str) -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "warm"
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def regress_log() -> prediction_log_pb2.PredictionLog:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "warm"
    request.model_spec.signature_name = "regress_x_to_y"
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(2.0)
    return prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=request))


def write_warmup(version_dir: Path, logs: list[prediction_log_pb2.PredictionLog]) -> None:
    assets_extra = version_dir / "assets.extra"
    assets_extra.mkdir()
    with tf.io.TFRecordWriter(str(assets_extra / "tf_serving_warmup_requests")) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def test_warmup_requests_are_replayed_before_serving(tmp_path: Path) -> None:
    version_dir = write_half_plus_two_tf1(tmp_path / "warm")
    write_warmup(version_dir, [predict_log("x"), regress_log()])
    with running_model_server(
        ["--model_name=warm", f"--model_base_path={tmp_path / 'warm'}", "--num_request_iterations_for_warmup=2"],
        rest=False,
    ) as server:
        log = server.stderr()
    assert "Number of warmup records read: 2." in log
    assert log.index("Number of warmup records read") < log.index("Running gRPC ModelServer")


def test_failing_warmup_request_fails_the_load(tmp_path: Path) -> None:
    version_dir = write_half_plus_two_tf1(tmp_path / "warm")
    write_warmup(version_dir, [predict_log("not_an_input")])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.model_server",
            "--model_name=warm",
            f"--model_base_path={tmp_path / 'warm'}",
            "--port=0",
            "--max_num_load_retries=0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Warmup request 1 from" in result.stderr
    assert "input tensor alias not found in signature: not_an_input" in result.stderr


def test_warmup_can_be_disabled(tmp_path: Path) -> None:
    version_dir = write_half_plus_two_tf1(tmp_path / "warm")
    write_warmup(version_dir, [predict_log("not_an_input")])
    with running_model_server(
        ["--model_name=warm", f"--model_base_path={tmp_path / 'warm'}", "--enable_model_warmup=false"],
        rest=False,
    ) as server:
        assert "warmup data" not in server.stderr()  # the bad record was never replayed
