"""TensorFlow Serving's feed semantics: a request tensor is fed whatever the signature's declared
shape says, as the C++ session does, so clients written for TensorFlow Serving work unchanged
(its own model-server test sends [1] to half_plus_two's [None, 1] input); what the graph itself
cannot take is refused with TensorFlow's INVALID_ARGUMENT."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.factories.half_plus_two import write_half_plus_two_tf1, write_half_plus_two_tf2
from tests.servers import ServerHandle, http, running_model_server

HALF_PLUS_TWO, TF2, DENSE = "half_plus_two", "half_plus_two_tf2", "dense"


def write_dense(base_path: Path) -> None:
    """x [None, 3] @ W: a MatMul cannot take a rank-1 feed."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        y = tf.matmul(x, tf.constant(np.ones((3, 2), np.float32)), name="y")
        with v1.Session(graph=graph) as session:
            builder = v1.saved_model.Builder(str(base_path / "1"))
            builder.add_meta_graph_and_variables(
                session,
                ["serve"],
                signature_def_map={"serving_default": v1.saved_model.predict_signature_def({"x": x}, {"y": y})},
            )
            builder.save()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    root = tmp_path_factory.mktemp("feeds")
    write_half_plus_two_tf1(root / HALF_PLUS_TWO)
    write_half_plus_two_tf2(root / TF2)
    write_dense(root / DENSE)
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(
            f'  config {{ name: "{name}" base_path: "{root / name}" model_platform: "tensorflow" }}\n'
            for name in (HALF_PLUS_TWO, TF2, DENSE)
        )
        + "}\n"
    )
    with running_model_server([f"--model_config_file={config}"]) as handle:
        yield handle


def predict(server: ServerHandle, model: str, x: np.ndarray) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    with server.channel() as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


@pytest.mark.parametrize("model", [HALF_PLUS_TWO, TF2])
@pytest.mark.parametrize("x", [[1.0], [2.0, 3.0, 4.0], [[1.0, 2.0]], 5.0])
def test_grpc_feeds_shapes_the_signature_does_not_declare(server: ServerHandle, model: str, x) -> None:
    value = np.array(x, np.float32)
    response = predict(server, model, value)
    (key,) = [k for k in response.outputs if k == "y"] or list(response.outputs)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[key]), 0.5 * value + 2.0)


def test_rest_row_and_columnar_forms_feed_a_rank_1_batch(server: ServerHandle) -> None:
    url = f"{server.rest_url}/v1/models/{HALF_PLUS_TWO}:predict"
    assert http("POST", url, {"instances": [2.0, 3.0, 4.0]}) == (200, {"predictions": [3.0, 3.5, 4.0]})
    assert http("POST", url, {"inputs": [2.0, 3.0, 4.0]}) == (200, {"outputs": [3.0, 3.5, 4.0]})


def test_a_rank_the_graph_cannot_take_is_invalid_argument(server: ServerHandle) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        predict(server, DENSE, np.ones(3, np.float32))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ndims must be >= 2" in raised.value.details()  # TensorFlow's own MatMul message, as TF Serving returns it
    status, body = http("POST", f"{server.rest_url}/v1/models/{DENSE}:predict", {"instances": [1.0, 2.0, 3.0]})
    assert status == 400 and "ndims must be >= 2" in body["error"]
    ok = predict(server, DENSE, np.ones((2, 3), np.float32))
    np.testing.assert_allclose(tf.make_ndarray(ok.outputs["y"]), np.full((2, 2), 3.0))


def test_a_dtype_the_signature_does_not_take_is_still_refused(server: ServerHandle) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        predict(server, HALF_PLUS_TWO, np.array([1.0], np.float64))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Expects arg[0] to be float but double is provided"


def test_the_model_config_file_is_polled_and_applied(tmp_path: Path) -> None:
    """--model_config_file_poll_wait_seconds: a model added to the file is served, without a
    restart; a broken file is logged and changes nothing (TF Serving's server.cc behaviour)."""
    import time

    write_half_plus_two_tf1(tmp_path / HALF_PLUS_TWO)
    write_half_plus_two_tf1(tmp_path / "half_plus_three", offset=3.0)
    config = tmp_path / "models.config"

    def entries(*names: str) -> str:
        return (
            "model_config_list {\n"
            + "".join(
                f'  config {{ name: "{n}" base_path: "{tmp_path / n}" model_platform: "tensorflow" }}\n' for n in names
            )
            + "}\n"
        )

    config.write_text(entries(HALF_PLUS_TWO))
    with running_model_server([f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"]) as server:
        config.write_text("model_config_list { this is not a config")
        time.sleep(2.5)
        np.testing.assert_allclose(
            tf.make_ndarray(predict(server, HALF_PLUS_TWO, np.array([2.0], np.float32)).outputs["y"]), [3.0]
        )
        config.write_text(entries(HALF_PLUS_TWO, "half_plus_three"))
        deadline = time.monotonic() + 30
        while True:
            try:
                response = predict(server, "half_plus_three", np.array([2.0], np.float32))
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, server.stderr()
                time.sleep(0.5)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), [4.0])
        assert "Failed to reload the model config" in server.stderr()
