"""tfpack-model-server end to end: one real server per module, real gRPC and HTTP clients."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.factories.half_plus_two import write_half_plus_two_tf1, write_half_plus_two_tf2
from tests.servers import REPO, ServerHandle, http, running_model_server

MODEL = "half_plus_two"
TF2_MODEL = "half_plus_two_tf2"
SHARED_TESTDATA = REPO.parent / "shared" / "testdata" / "tf_serving"


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_half_plus_two_tf1(root / MODEL, version=1)
    write_half_plus_two_tf2(root / TF2_MODEL, version=3)
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "{MODEL}" base_path: "{root / MODEL}" model_platform: "tensorflow" }}\n'
        f'  config {{ name: "{TF2_MODEL}" base_path: "{root / TF2_MODEL}" '
        'model_platform: "tensorflow" }\n'
        "}\n"
    )
    (root / "monitoring.config").write_text(
        'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n'
    )
    return root


@pytest.fixture(scope="module")
def server(model_root: Path) -> Iterator[ServerHandle]:
    # Every request of this module goes through server-side batching (default parameters);
    # --enable_profiler is a real tensorflow_model_server flag the embedded server only logs.
    with running_model_server(
        [
            f"--model_config_file={model_root / 'models.config'}",
            "--enable_batching",
            "--enable_profiler=false",
            "--max_num_load_retries=0",
            f"--monitoring_config_file={model_root / 'monitoring.config'}",
        ]
    ) as handle:
        yield handle


@pytest.fixture(scope="module")
def channel(server: ServerHandle) -> Iterator[grpc.Channel]:
    with server.channel() as opened:
        yield opened


@pytest.fixture(scope="module")
def prediction(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(model: str, x: list[list[float]], **spec: object) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value  # type: ignore[assignment]
        else:
            setattr(request.model_spec, key, value)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(x, dtype=np.float32)))
    return request


# --------------------------------------------------------------------------------------------
# gRPC


@pytest.mark.parametrize(("model", "version"), [(MODEL, 1), (TF2_MODEL, 3)])
def test_status_reports_loaded_version_available(channel: grpc.Channel, model: str, version: int) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    assert len(response.model_version_status) == 1
    status = response.model_version_status[0]
    assert status.version == version
    assert status.state == get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
    assert status.status.error_code == 0
    assert status.HasField("status")


def test_status_of_unknown_model_is_not_found(channel: grpc.Channel) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as raised:
        model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "Could not find any versions of model nope"


def test_metadata_packs_the_saved_models_signature_defs(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub, model_root: Path
) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = prediction.GetModelMetadata(request, timeout=10)
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 1
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_defs)
    assert sorted(signature_defs.signature_def) == [
        "classify_x_to_y",
        "regress_x2_to_y3",
        "regress_x_to_y",
        "regress_x_to_y2",
        "serving_default",
    ]
    default = signature_defs.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert default.inputs["x"].name == "x:0"
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1, 1]
    assert default.outputs["y"].name == "y:0"


def test_metadata_without_fields_is_invalid(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL
    with pytest.raises(grpc.RpcError) as raised:
        prediction.GetModelMetadata(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == ("GetModelMetadataRequest must specify at least one metadata_field")


@pytest.mark.parametrize("model", [MODEL, TF2_MODEL])
def test_predict_computes_half_plus_two(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub, model: str
) -> None:
    response = prediction.Predict(predict_request(model, [[1.0], [2.0]]), timeout=10)
    y = response.outputs["y"]
    assert y.dtype == tf.float32.as_datatype_enum
    assert [d.size for d in y.tensor_shape.dim] == [2, 1]
    assert list(y.float_val) == [2.5, 3.0]  # typed field, as TF Serving's AsProtoField
    assert response.model_spec.name == model
    assert response.model_spec.signature_name == "serving_default"


def test_predict_with_explicit_version_and_output_filter(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_request(MODEL, [[4.0]], version=1, signature_name="serving_default")
    request.output_filter.append("y")
    response = prediction.Predict(request, timeout=10)
    assert list(response.outputs) == ["y"]
    assert list(response.outputs["y"].float_val) == [4.0]
    assert response.model_spec.version.value == 1


def test_predict_output_filter_with_unknown_alias_is_invalid(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_request(MODEL, [[4.0]])
    request.output_filter.append("z")
    with pytest.raises(grpc.RpcError) as raised:
        prediction.Predict(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == (
        "output tensor alias not found in signature: z Outputs expected to be in the set {y}."
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "Servable not found for request: Latest(nope)"),
        ({"version": 7}, "Servable not found for request: Specific(nope, 7)"),
    ],
)
def test_predict_for_unknown_model_is_not_found(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub, spec: dict, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        prediction.Predict(predict_request("nope", [[1.0]], **spec), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == message


def test_predict_for_unknown_version_is_not_found(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        prediction.Predict(predict_request(MODEL, [[1.0]], version=2), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == f"Servable not found for request: Specific({MODEL}, 2)"


def test_predict_with_unknown_signature_fails_precondition(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_request(MODEL, [[1.0]], signature_name="nope")
    with pytest.raises(grpc.RpcError) as raised:
        prediction.Predict(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == 'Serving signature key "nope" not found.'


def test_predict_with_extra_input_is_invalid(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_request(MODEL, [[1.0]])
    request.inputs["z"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
    with pytest.raises(grpc.RpcError) as raised:
        prediction.Predict(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == (
        "input size does not match signature: 2!=1 len({x,z}) != len({x}). Sent extra: {z}. Missing but required: {}."
    )


def test_predict_with_misnamed_input_is_invalid(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["w"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
    with pytest.raises(grpc.RpcError) as raised:
        prediction.Predict(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == (
        "input tensor alias not found in signature: w. Inputs expected to be in the set {x}."
    )


def test_predict_with_wrong_dtype_is_invalid(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float64)))
    with pytest.raises(grpc.RpcError) as raised:
        prediction.Predict(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Expects arg[0] to be float but double is provided"


def test_predict_feeds_any_shape_the_graph_can_take(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    # TF Serving feeds through the C++ session, which does not hold a feed to the placeholder's
    # declared shape ([-1, 1] here): an elementwise graph answers [1, 2] elementwise.
    response = prediction.Predict(predict_request(MODEL, [[1.0, 2.0]]), timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), [[2.5, 3.0]])


def example_input(*xs: float) -> input_pb2.Input:
    request_input = input_pb2.Input()
    for x in xs:
        example = request_input.example_list.examples.add()
        example.features.feature["x"].float_list.value.append(x)
    return request_input


@pytest.mark.parametrize("model", [MODEL, TF2_MODEL])
def test_classify_parses_examples(prediction: prediction_service_pb2_grpc.PredictionServiceStub, model: str) -> None:
    request = classification_pb2.ClassificationRequest(input=example_input(2.0, 4.0))
    request.model_spec.name = model
    request.model_spec.signature_name = "classify_x_to_y"
    response = prediction.Classify(request, timeout=10)
    scores = [[c.score for c in item.classes] for item in response.result.classifications]
    assert scores == [[3.0], [4.0]]
    assert response.model_spec.signature_name == "classify_x_to_y"


@pytest.mark.parametrize(("signature", "expected"), [("regress_x_to_y", 3.0), ("regress_x_to_y2", 4.0)])
def test_regress_parses_examples(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub, signature: str, expected: float
) -> None:
    request = regression_pb2.RegressionRequest(input=example_input(2.0))
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    response = prediction.Regress(request, timeout=10)
    assert [r.value for r in response.result.regressions] == [expected]


def test_regress_with_context_merges_features(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "regress_x_to_y"
    with_context = request.input.example_list_with_context
    with_context.context.features.feature["x"].float_list.value.append(2.0)
    with_context.examples.add()
    with_context.examples.add().features.feature["x"].float_list.value.append(6.0)
    response = prediction.Regress(request, timeout=10)
    assert [r.value for r in response.result.regressions] == [3.0, 5.0]


def test_regress_without_examples_is_invalid(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "regress_x_to_y"
    with pytest.raises(grpc.RpcError) as raised:
        prediction.Regress(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Input is empty."


def test_multi_inference_runs_every_task(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = inference_pb2.MultiInferenceRequest(input=example_input(2.0))
    for signature, method in (
        ("classify_x_to_y", "tensorflow/serving/classify"),
        ("regress_x_to_y2", "tensorflow/serving/regress"),
    ):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = MODEL
        task.model_spec.signature_name = signature
    response = prediction.MultiInference(request, timeout=10)
    classify, regress = response.results
    assert classify.classification_result.classifications[0].classes[0].score == 3.0
    assert regress.regression_result.regressions[0].value == 4.0
    assert regress.model_spec.signature_name == "regress_x_to_y2"


def test_multi_inference_rejects_duplicate_signatures(
    prediction: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    request = inference_pb2.MultiInferenceRequest(input=example_input(2.0))
    for _ in range(2):
        task = request.tasks.add(method_name="tensorflow/serving/regress")
        task.model_spec.name = MODEL
        task.model_spec.signature_name = "regress_x_to_y"
    with pytest.raises(grpc.RpcError) as raised:
        prediction.MultiInference(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Duplicate evaluation of signature: regress_x_to_y"


# --------------------------------------------------------------------------------------------
# REST


def test_rest_status(server: ServerHandle) -> None:
    assert http("GET", f"{server.rest_url}/v1/models/{MODEL}") == (
        200,
        {
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        },
    )


def test_rest_status_of_unknown_model_is_404(server: ServerHandle) -> None:
    assert http("GET", f"{server.rest_url}/v1/models/nope") == (
        404,
        {"error": "Could not find any versions of model nope"},
    )


def test_rest_metadata(server: ServerHandle) -> None:
    status, body = http("GET", f"{server.rest_url}/v1/models/{MODEL}/versions/1/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    default = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert default == {
        "inputs": {
            "x": {
                "dtype": "DT_FLOAT",
                "name": "x:0",
                "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False},
            }
        },
        "outputs": {
            "y": {
                "dtype": "DT_FLOAT",
                "name": "y:0",
                "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False},
            }
        },
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }


@pytest.mark.parametrize("model", [MODEL, TF2_MODEL])
def test_rest_predict_row_format(server: ServerHandle, model: str) -> None:
    assert http("POST", f"{server.rest_url}/v1/models/{model}:predict", {"instances": [[1.0], [2.0]]}) == (
        200,
        {"predictions": [[2.5], [3.0]]},
    )


def test_rest_predict_columnar_format_with_version(server: ServerHandle) -> None:
    assert http(
        "POST",
        f"{server.rest_url}/v1/models/{MODEL}/versions/1:predict",
        {"signature_name": "serving_default", "inputs": {"x": [[1.0], [2.0]]}},
    ) == (200, {"outputs": [[2.5], [3.0]]})


def test_rest_predict_float32_outputs_keep_their_short_form(server: ServerHandle) -> None:
    status, body = http("POST", f"{server.rest_url}/v1/models/{MODEL}:predict", {"instances": [[0.2]]})
    assert (status, body) == (200, {"predictions": [[2.1]]})


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/v1/models/nope:predict", {"instances": [[1.0]]}, 404, "Servable not found for request: Latest(nope)"),
        (
            f"/v1/models/{MODEL}:predict",
            {"instances": [[1.0]], "signature_name": "nope"},
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        (f"/v1/models/{MODEL}:predict", {"instances": [["a"]]}, 400, None),
        (f"/v1/models/{MODEL}:predict", {"rows": [[1.0]]}, 400, "Missing 'inputs' or 'instances' key"),
        (
            f"/v1/models/{MODEL}:explode",
            {"instances": [[1.0]]},
            400,
            f"Malformed request: POST /v1/models/{MODEL}:explode",
        ),
    ],
)
def test_rest_errors(server: ServerHandle, path: str, body: dict, status: int, error: str | None) -> None:
    got_status, got_body = http("POST", f"{server.rest_url}{path}", body)
    assert got_status == status
    assert list(got_body) == ["error"]
    if error is not None:
        assert got_body["error"] == error


def test_rest_classify_and_regress(server: ServerHandle) -> None:
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}, {"x": [4.0]}]}
    assert http("POST", f"{server.rest_url}/v1/models/{MODEL}:classify", body) == (
        200,
        {"results": [[["", 3.0]], [["", 4.0]]]},
    )
    body = {"signature_name": "regress_x_to_y", "context": {"x": 2.0}, "examples": [{}]}
    assert http("POST", f"{server.rest_url}/v1/models/{MODEL}/versions/1:regress", body) == (200, {"results": [3.0]})


def test_rest_predict_decodes_b64_strings(server: ServerHandle) -> None:
    example = tf.train.Example()
    example.features.feature["x"].float_list.value.append(2.0)
    encoded = base64.b64encode(example.SerializeToString()).decode()
    body = {"signature_name": "regress_x_to_y", "instances": [{"b64": encoded}]}
    assert http("POST", f"{server.rest_url}/v1/models/{MODEL}:predict", body) == (200, {"predictions": [[3.0]]})


def test_rest_predict_rejects_invalid_json(server: ServerHandle) -> None:
    request = urllib.request.Request(f"{server.rest_url}/v1/models/{MODEL}:predict", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    assert raised.value.code == 400
    assert json.loads(raised.value.read())["error"].startswith("JSON Parse error")


def test_rest_response_leaves_in_one_write_on_a_kept_alive_connection(
    server: ServerHandle,
) -> None:
    # Headers and body sent as two writes stall ~40 ms on a kept-alive connection (Nagle's
    # algorithm against the client's delayed ACK): each response must arrive whole in one read.
    body = json.dumps({"instances": [[2.0]]}).encode()
    request = (
        f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: {server.host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((server.host, server.rest_port), timeout=30) as connection:
        for _ in range(3):
            connection.sendall(request)
            response = connection.recv(65536)
            head, _, payload = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), response
            assert json.loads(payload) == {"predictions": [[3.0]]}


def test_prometheus_metrics_count_requests_and_loads(server: ServerHandle, model_root: Path) -> None:
    assert http("POST", f"{server.rest_url}/v1/models/{MODEL}:predict", {"instances": [[1.0]]})[0] == 200
    with urllib.request.urlopen(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    request_count = {
        line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(":tensorflow:serving:request_count{")
    }
    assert request_count[f':tensorflow:serving:request_count{{model_name="{MODEL}",status="OK"}}'] >= 1
    assert (
        f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{model_root / MODEL / "1"}",status="success"}} 1'
    ) in text
    assert (
        f':tensorflow:serving:request_latency_count{{model_name="{MODEL}",API="Predict",entrypoint="REST"}}'
    ) in text


def test_unimplemented_real_flag_is_logged_not_fatal(server: ServerHandle) -> None:
    assert server.process.poll() is None
    assert "Flag --enable_profiler=false is accepted" in server.stderr()


# --------------------------------------------------------------------------------------------
# Command line


def run_server_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.model_server", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model_base_path=/m", "--no_such_flag=1"], "unknown flag --no_such_flag"),
        (["--model_base_path=/m", "--port=http"], "--port expects int, got 'http'"),
        (["--model_name=m"], "--model_base_path is required"),
        (["/models/m"], "unexpected argument '/models/m'"),
        (
            ["--model_base_path=/m", "--grpc_channel_arguments=grpc.max_receive_message_length"],
            "--grpc_channel_arguments entry 'grpc.max_receive_message_length' is not key=value",
        ),
        (["--model_base_path=/m", "--port=99999"], "--port=99999 is not a TCP port"),
        (["--model_base_path=/m", "--rest_api_port=-1"], "--rest_api_port=-1 is not a TCP port"),
        (["--model_base_path=/m", "--ssl_config_file=/etc/ssl.cfg"], "TLS is not implemented"),
        (["--model_base_path=/m", "--use_alts_credentials=true"], "ALTS is not implemented"),
    ],
)
def test_malformed_command_line_exits_2_with_a_message(args: list[str], message: str) -> None:
    result = run_server_command(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_model_config_file_fails_startup(tmp_path: Path) -> None:
    config = tmp_path / "bad.config"
    config.write_text("improperly formatted file")
    result = run_server_command(f"--model_config_file={config}")
    assert result.returncode == 2
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in result.stderr


def test_bad_monitoring_config_file_fails_startup(tmp_path: Path) -> None:
    config = tmp_path / "monitoring.config"
    config.write_text("prometheus_config { enabled: yes }")
    result = run_server_command("--model_base_path=/m", f"--monitoring_config_file={config}")
    assert result.returncode == 2
    assert "Error parsing text-format tensorflow.serving.MonitoringConfig" in result.stderr


def test_model_that_fails_to_load_fails_startup(tmp_path: Path) -> None:
    broken = tmp_path / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a saved model")
    result = run_server_command(f"--model_base_path={tmp_path / 'broken'}", "--max_num_load_retries=0", "--port=0")
    assert result.returncode == 1
    assert "Failed to start server. Error: default version 1:" in result.stderr


# --------------------------------------------------------------------------------------------
# Conformance with TF Serving's own test models


def _shared(name: str) -> Path:
    path = SHARED_TESTDATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (TF Serving's testdata lives in ../shared)")
    return path


@pytest.fixture(scope="module")
def reference_server() -> Iterator[ServerHandle]:
    base_path = _shared("saved_model_half_plus_two_cpu")
    with running_model_server(
        ["--model_name=default", f"--model_base_path={base_path}", "--max_num_load_retries=0"]
    ) as handle:
        yield handle


@pytest.mark.conformance
def test_conformance_metadata_equals_tf_servings(reference_server: ServerHandle) -> None:
    expected = json.loads(_shared("half_plus_two_model_metadata.json").read_text())
    with reference_server.channel() as channel:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "default"
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=10)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_defs)
    as_json = {
        "model_spec": json_format.MessageToDict(
            response.model_spec,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        ),
        "metadata": {
            "signature_def": json_format.MessageToDict(
                signature_defs,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
        },
    }
    assert as_json == expected
    assert http("GET", f"{reference_server.rest_url}/v1/models/default/metadata") == (200, expected)


@pytest.mark.conformance
def test_conformance_predict_two_gives_three(reference_server: ServerHandle) -> None:
    with reference_server.channel() as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            predict_request("default", [[2.0]]), timeout=10
        )
    assert list(response.outputs["y"].float_val) == [3.0]
    assert response.model_spec.version.value == 123


@pytest.mark.conformance
def test_conformance_tf_servings_monitoring_config_parses() -> None:
    from serving.metrics import read_prometheus_path

    assert read_prometheus_path(_shared("monitoring_config.txt")) == ("/monitoring/prometheus/metrics")
