"""--prefer_tflite_model: model.tflite served by the TFLite interpreter (Predict, metadata, REST),
on a model converted here and on TF Serving's own TFLite test models (conformance)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.factories.half_plus_two import write_half_plus_two_tf2
from tests.servers import ServerHandle, running_model_server

MODEL = "half_plus_five_lite"
SHARED_TFLITE_MODELS = ("saved_model_half_plus_two_tflite", "saved_model_half_plus_two_tflite_with_sigdef")


def write_tflite_half_plus(version_dir: Path, offset: float, scratch: Path) -> None:
    """Convert y = 0.5 * x + offset, signature serving_default(x) -> {"y"}, to model.tflite."""
    module = tf.Module()
    module.serving_default = tf.function(
        lambda x: {"y": 0.5 * x + offset},
        input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")],
    )
    tf.saved_model.save(module, str(scratch), signatures={"serving_default": module.serving_default})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(scratch))
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.tflite").write_bytes(converter.convert())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    root = tmp_path_factory.mktemp("tflite")
    base_path = root / MODEL
    # The version holds a SavedModel (offset 2) and model.tflite (offset 5): the flag picks the
    # TFLite model.
    write_half_plus_two_tf2(base_path, version=1)
    write_tflite_half_plus(base_path / "1", offset=5.0, scratch=root / "source")
    with running_model_server(
        [f"--model_name={MODEL}", f"--model_base_path={base_path}", "--prefer_tflite_model"]
    ) as handle:
        yield handle


def predict(channel: grpc.Channel, model: str, x: list[list[float]], alias: str = "x"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[alias].CopyFrom(tf.make_tensor_proto(np.array(x, np.float32)))
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


def metadata(channel: grpc.Channel, model: str):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    return signatures.signature_def


def rest_predict(server: ServerHandle, model: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{server.rest_url}/v1/models/{model}:predict",
        data=json.dumps(body).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def test_predict_runs_the_tflite_model_with_any_batch_size(server: ServerHandle) -> None:
    with server.channel() as channel:
        response = predict(channel, MODEL, [[2.0]])
        assert tf.make_ndarray(response.outputs["y"]).tolist() == [[6.0]]
        response = predict(channel, MODEL, [[0.0], [2.0], [4.0]])
        assert tf.make_ndarray(response.outputs["y"]).tolist() == [[5.0], [6.0], [7.0]]
    assert rest_predict(server, MODEL, {"instances": [[2.0]]}) == (200, {"predictions": [[6.0]]})


def test_metadata_describes_the_tflite_signature(server: ServerHandle) -> None:
    with server.channel() as channel:
        signatures = metadata(channel, MODEL)
    assert list(signatures) == ["serving_default"]
    default = signatures["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert list(default.inputs) == ["x"] and list(default.outputs) == ["y"]
    assert default.inputs["x"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1, 1]


def test_wrong_input_name_is_invalid(server: ServerHandle) -> None:
    with server.channel() as channel, pytest.raises(grpc.RpcError) as raised:
        predict(channel, MODEL, [[2.0]], alias="z")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def reference_server(shared_testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    config = tmp_path_factory.mktemp("tflite-reference") / "models.config"
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{shared_testdata / name}" model_platform: "tensorflow" }}\n'
        for name in SHARED_TFLITE_MODELS
    )
    config.write_text(f"model_config_list {{\n{entries}}}\n")
    with running_model_server(
        [f"--model_config_file={config}", "--prefer_tflite_model", "--max_num_load_retries=0"]
    ) as handle:
        yield handle


@pytest.mark.conformance
@pytest.mark.parametrize("model", SHARED_TFLITE_MODELS)
def test_conformance_tf_servings_tflite_models_predict_two_gives_three(
    reference_server: ServerHandle, model: str
) -> None:
    with reference_server.channel() as channel:
        response = predict(channel, model, [[2.0]])
        assert response.model_spec.version.value == 123
        assert list(response.outputs["y"].float_val) == [3.0]
        default = metadata(channel, model)["serving_default"]
    assert list(default.inputs) == ["x"] and list(default.outputs) == ["y"]
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [1, 1]
    assert rest_predict(reference_server, model, {"instances": [[2.0]]}) == (200, {"predictions": [[3.0]]})
