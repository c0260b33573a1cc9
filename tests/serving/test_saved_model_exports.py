"""tfpack-model-server on models exported the TF2 way: tf.saved_model.save with several
signatures, and a Keras 3 model exported for serving with model.export()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from servers import running_model_server
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from packager.tf_runtime import tensorflow

tf = tensorflow()


class _Polynomial(tf.Module):
    """Three signatures over one input: serving_default (2x + 1), square (x²), pair (both)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def linear(self, x):  # type: ignore[no-untyped-def]
        return {"y": 2.0 * x + 1.0}

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def square(self, x):  # type: ignore[no-untyped-def]
        return {"y": x * x}

    @tf.function(
        input_signature=[tf.TensorSpec([None, 3], tf.float32, name="a"), tf.TensorSpec([None], tf.int64, name="n")]
    )
    def pair(self, a, n):  # type: ignore[no-untyped-def]
        return {"sum": tf.reduce_sum(a, axis=1), "n_plus_one": n + 1}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import keras

    root = tmp_path_factory.mktemp("exports")
    module = _Polynomial()
    tf.saved_model.save(
        module,
        str(root / "poly" / "1"),
        signatures={"serving_default": module.linear, "square": module.square, "pair": module.pair},
    )
    keras.utils.set_random_seed(8)
    model = keras.Sequential([keras.Input((4,), name="features"), keras.layers.Dense(2, name="scores")])
    model.export(str(root / "keras" / "1"), format="tf_saved_model")
    return {"poly": root / "poly", "keras": root / "keras", "keras_model": model}


def _predict(server, model: str, inputs: dict[str, np.ndarray], signature: str = "") -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    with server.channel() as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def test_tf2_model_with_several_signatures(models) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with running_model_server([f"--model_base_path={models['poly']}", "--model_name=poly"], rest=False) as server:
        np.testing.assert_allclose(_predict(server, "poly", {"x": x})["y"], 2 * x + 1)
        np.testing.assert_allclose(_predict(server, "poly", {"x": x}, "square")["y"], x * x)
        pair = _predict(server, "poly", {"a": x, "n": np.array([1, 2], np.int64)}, "pair")
        np.testing.assert_allclose(pair["sum"], x.sum(axis=1))
        np.testing.assert_array_equal(pair["n_plus_one"], [2, 3])

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "poly"
        with server.channel() as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=30)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        assert {"serving_default", "square", "pair"} <= set(signatures.signature_def)


def test_keras_model_exported_for_serving(models) -> None:
    features = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    want = np.asarray(models["keras_model"](features))
    with running_model_server([f"--model_base_path={models['keras']}", "--model_name=keras"], rest=False) as server:
        outputs = _predict(server, "keras", {"features": features})
    (served,) = outputs.values()
    np.testing.assert_allclose(served, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_tf_keras_sequential_saved_with_tf_saved_model_save(strategy: str, tmp_path: Path) -> None:
    """TF Serving's own test_sequential_keras_saved_model_save and its distribution-strategy
    variant: a Keras 2 (tf_keras) Sequential, built under a MirroredStrategy or not, saved with
    tf.saved_model.save and served unchanged."""
    import tf_keras

    scope = tf.distribute.MirroredStrategy(["/cpu:0"]).scope() if strategy == "mirrored" else tf.init_scope()
    with scope:
        tf_keras.utils.set_random_seed(3)
        model = tf_keras.Sequential([tf_keras.layers.Input(shape=(1,), name="x"), tf_keras.layers.Dense(1, name="y")])
    tf.saved_model.save(model, str(tmp_path / "keras2" / "1"))
    x = np.array([[1.0], [2.0], [3.0]], np.float32)
    want = model(x).numpy()
    with running_model_server(
        [f"--model_base_path={tmp_path / 'keras2'}", "--model_name=keras2"], rest=False
    ) as server:
        (served,) = _predict(server, "keras2", {"x": x}).values()
        (single,) = _predict(server, "keras2", {"x": np.array([[2.0]], np.float32)}).values()
    np.testing.assert_allclose(served, want, rtol=1e-6)
    np.testing.assert_allclose(single, want[1:2], rtol=1e-6)
