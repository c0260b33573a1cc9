"""--prefer_tflite_model: model.tflite served by the TFLite interpreter (Predict, metadata, REST)
with the SignatureDefs TF Serving serves (tensorflow_serving/servables/tensorflow/
tflite_session.cc): those of the model's "signature_defs_metadata", else a serving_default keyed
by tensor name without ":N" — never the model's own signatures. On models converted here and on
TF Serving's own TFLite test models (conformance), with what its tflite_session_test expects.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from factories.tflite_models import ROW, write_two_input_tflite
from flatbuffers import flexbuffers
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from packager.formats.tflite_signatures import signature_defs_from_native, with_signature_defs
from serving.servables import LoadError
from serving.status import ServingError
from serving.tflite import TfLiteServable, load_tflite_servable, read_metadata_signature_defs, read_signature_defs
from tests.factories.half_plus_two import write_half_plus_two_tf2
from tests.servers import ServerHandle, running_model_server

MODEL = "half_plus_five_lite"  # model.tflite as TFLiteConverter writes it: no metadata
MODEL_WITH_METADATA = "half_plus_five_lite_metadata"  # the same with serving_default metadata
SHARED_TFLITE_MODELS = ("saved_model_half_plus_two_tflite", "saved_model_half_plus_two_tflite_with_sigdef")
PREDICT = "tensorflow/serving/predict"

# What TF Serving's tflite_session_test expects of its two test models (BasicTest and
# ModelFromLegacyConverterWithSigdef): its metadata names input x "tflite_input:0", a tensor the
# legacy converter named "tflite_input".
EXPECTED_SIGNATURES = {
    "saved_model_half_plus_two_tflite": """
        inputs { key: "x" value { name: "x" dtype: DT_FLOAT tensor_shape { dim { size: 1 } dim { size: 1 } } } }
        outputs { key: "y" value { name: "y" dtype: DT_FLOAT tensor_shape { dim { size: 1 } dim { size: 1 } } } }
        method_name: "tensorflow/serving/predict"
    """,
    "saved_model_half_plus_two_tflite_with_sigdef": """
        inputs {
          key: "x"
          value { name: "tflite_input" dtype: DT_FLOAT tensor_shape { dim { size: 1 } dim { size: 1 } } }
        }
        outputs { key: "y" value { name: "y" dtype: DT_FLOAT tensor_shape { dim { size: 1 } dim { size: 1 } } } }
        method_name: "tensorflow/serving/predict"
    """,
}


def write_tflite_half_plus(version_dir: Path, offset: float, scratch: Path, *, with_metadata: bool = False) -> None:
    """Convert y = 0.5 * x + offset, signature serving_default(x) -> {"y"}, to model.tflite;
    ``with_metadata``: with that signature written into its signature_defs_metadata."""
    module = tf.Module()
    module.serving_default = tf.function(
        lambda x: {"y": 0.5 * x + offset},
        input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")],
    )
    tf.saved_model.save(module, str(scratch), signatures={"serving_default": module.serving_default})
    content = tf.lite.TFLiteConverter.from_saved_model(str(scratch)).convert()
    if with_metadata:
        content = with_signature_defs(
            content, signature_defs_from_native(content, {"serving_default": "serving_default"})
        )
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.tflite").write_bytes(content)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    root = tmp_path_factory.mktemp("tflite")
    # Each version holds a SavedModel (offset 2) and model.tflite (offset 5): the flag picks the
    # TFLite model.
    for name, with_metadata in ((MODEL, False), (MODEL_WITH_METADATA, True)):
        write_half_plus_two_tf2(root / name, version=1)
        write_tflite_half_plus(root / name / "1", 5.0, root / f"source-{name}", with_metadata=with_metadata)
    config = root / "models.config"
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{root / name}" model_platform: "tensorflow" }}\n'
        for name in (MODEL, MODEL_WITH_METADATA)
    )
    config.write_text(f"model_config_list {{\n{entries}}}\n")
    with running_model_server([f"--model_config_file={config}", "--prefer_tflite_model"]) as handle:
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
        response = predict(channel, MODEL_WITH_METADATA, [[2.0]])
        assert tf.make_ndarray(response.outputs["y"]).tolist() == [[6.0]]
        response = predict(channel, MODEL_WITH_METADATA, [[0.0], [2.0], [4.0]])
        assert tf.make_ndarray(response.outputs["y"]).tolist() == [[5.0], [6.0], [7.0]]
        # Without metadata the keys are the tensor names: TF Serving's, not the signature's.
        response = predict(channel, MODEL, [[0.0], [2.0]], alias="serving_default_x")
        assert tf.make_ndarray(response.outputs["PartitionedCall"]).tolist() == [[5.0], [6.0]]
    assert rest_predict(server, MODEL_WITH_METADATA, {"instances": [[2.0]]}) == (200, {"predictions": [[6.0]]})
    assert rest_predict(server, MODEL, {"instances": [[2.0]]}) == (200, {"predictions": [[6.0]]})


def test_metadata_describes_the_tflite_signature(server: ServerHandle) -> None:
    with server.channel() as channel:
        signatures = metadata(channel, MODEL_WITH_METADATA)
        synthesised = metadata(channel, MODEL)
    assert list(signatures) == ["serving_default"]
    default = signatures["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert list(default.inputs) == ["x"] and list(default.outputs) == ["y"]
    assert default.inputs["x"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1, 1]
    # The model's own signature is not served: the tensors are, keyed by name without ":0",
    # with their current dims.
    assert list(synthesised) == ["serving_default"]
    mock = synthesised["serving_default"]
    assert {key: info.name for key, info in mock.inputs.items()} == {"serving_default_x": "serving_default_x:0"}
    assert {key: info.name for key, info in mock.outputs.items()} == {"PartitionedCall": "PartitionedCall:0"}
    assert [d.size for d in mock.inputs["serving_default_x"].tensor_shape.dim] == [1, 1]


def test_wrong_input_name_is_invalid(server: ServerHandle) -> None:
    for model in (MODEL_WITH_METADATA, MODEL):
        with server.channel() as channel, pytest.raises(grpc.RpcError) as raised:
            predict(channel, model, [[2.0]], alias="z")
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
    assert default == text_format.Parse(EXPECTED_SIGNATURES[model], meta_graph_pb2.SignatureDef())
    assert rest_predict(reference_server, model, {"instances": [[2.0]]}) == (200, {"predictions": [[3.0]]})


# --- the SignatureDefs, loaded as the server loads them (no server) ----------------------------


@pytest.fixture(scope="module")
def two_input_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """diff = a - 2b, total = sum(a * b): with its native serving_default, and without (a TF1
    session's conversion, tensors named a, b, diff, total)."""
    root = tmp_path_factory.mktemp("tflite-two-input")
    return {
        "native": write_two_input_tflite(root / "native.tflite", with_signature=True).read_bytes(),
        "tf1": write_two_input_tflite(root / "tf1.tflite", with_signature=False).read_bytes(),
    }


def signature_def(text: str) -> meta_graph_pb2.SignatureDef:
    return text_format.Parse(text, meta_graph_pb2.SignatureDef())


def names(signature: meta_graph_pb2.SignatureDef) -> tuple[dict[str, str], dict[str, str]]:
    return (
        {key: info.name for key, info in signature.inputs.items()},
        {key: info.name for key, info in signature.outputs.items()},
    )


def served(content: bytes, tmp_path: Path) -> TfLiteServable:
    (tmp_path / "model.tflite").write_bytes(content)
    return load_tflite_servable("lite", 1, tmp_path)


def with_raw_signature_defs_metadata(content: bytes, entries: dict[str, bytes]) -> bytes:
    """``content`` with a signature_defs_metadata map of ``entries`` as they are (any bytes)."""
    builder = flexbuffers.Builder()
    with builder.Map():
        for key, value in entries.items():
            builder.Key(key)
            builder._WriteBlob(value, append_zero=True, type_=flexbuffers.Type.STRING)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    model.buffers.append(schema.BufferT(data=np.frombuffer(bytes(builder.Finish()), np.uint8)))
    model.metadata = [
        *(model.metadata or []),
        schema.MetadataT(name="signature_defs_metadata", buffer=len(model.buffers) - 1),
    ]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


@pytest.mark.fast
def test_native_signature_without_metadata_is_served_by_tensor_name(
    two_input_models: dict[str, bytes], tmp_path: Path
) -> None:
    # TFLiteConverter names its tensors serving_default_a:0, ... and PartitionedCall:0/:1; TF
    # Serving keys them by name without ":N", so the two outputs share one key and the last
    # (":1", total) is the one served: why tfpack writes metadata into such a model.
    signatures = read_signature_defs(two_input_models["native"])
    assert list(signatures) == ["serving_default"]
    default = signatures["serving_default"]
    assert default.method_name == PREDICT
    assert names(default) == (
        {"serving_default_a": "serving_default_a:0", "serving_default_b": "serving_default_b:0"},
        {"PartitionedCall": "PartitionedCall:1"},
    )
    assert [d.size for d in default.inputs["serving_default_a"].tensor_shape.dim] == [1, ROW]
    servable = served(two_input_models["native"], tmp_path)
    a, b = np.ones((2, ROW), np.float32), np.full((2, ROW), 2.0, np.float32)
    # Fed and fetched by tensor name, as a Predict request of those keys is.
    (total,) = servable.run({"serving_default_a:0": a, "serving_default_b:0": b}, ["PartitionedCall:1"])
    np.testing.assert_allclose(total, [[6.0], [6.0]])


@pytest.mark.fast
def test_several_metadata_signatures_are_all_served_as_stored(
    two_input_models: dict[str, bytes], tmp_path: Path
) -> None:
    # The TF1 model's tensors are named a, b, diff, total: a stored "diff:0" is fixed to "diff".
    content = with_signature_defs(
        two_input_models["tf1"],
        {
            "serving_default": signature_def(
                """
                inputs { key: "left" value { name: "a" dtype: DT_FLOAT tensor_shape { dim { size: -1 } dim { size: 3 } } } }
                inputs { key: "right" value { name: "b:0" dtype: DT_FLOAT } }
                outputs { key: "difference" value { name: "diff:0" dtype: DT_FLOAT } }
                method_name: "tensorflow/serving/predict"
                """
            ),
            "totals": signature_def(
                """
                inputs { key: "a" value { name: "a" dtype: DT_FLOAT } }
                inputs { key: "b" value { name: "b" dtype: DT_FLOAT } }
                outputs { key: "total" value { name: "total" dtype: DT_FLOAT } }
                method_name: "tensorflow/serving/regress"
                """
            ),
        },
    )
    signatures = read_signature_defs(content)
    assert sorted(signatures) == ["serving_default", "totals"]
    assert names(signatures["serving_default"]) == ({"left": "a", "right": "b"}, {"difference": "diff"})
    assert names(signatures["totals"]) == ({"a": "a", "b": "b"}, {"total": "total"})
    # Stored as they are but for the names: method, dtypes and shapes are the metadata's.
    assert signatures["totals"].method_name == "tensorflow/serving/regress"
    assert [d.size for d in signatures["serving_default"].inputs["left"].tensor_shape.dim] == [-1, 3]
    assert not signatures["serving_default"].inputs["right"].HasField("tensor_shape")

    servable = served(content, tmp_path)
    assert sorted(servable.signature_defs) == ["serving_default", "totals"]
    a, b = np.ones((2, ROW), np.float32), np.full((2, ROW), 2.0, np.float32)
    (diff,) = servable.run({"a": a, "b": b}, ["diff"])
    np.testing.assert_allclose(diff, a - 2.0 * b)
    # A TF tensor name (":0") is fixed to the TFLite one in a run too (FixTfLiteTensorName).
    (diff,) = servable.run({"a:0": a, "b:0": b}, ["diff:0"])
    np.testing.assert_allclose(diff, a - 2.0 * b)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("kind", "alias", "message"),
    [
        ("input", "a", "Unknown tensor 'serving_default_a'.\n\tSignature input a references an unknown tensor"),
        ("output", "diff", "Unknown tensor 'nowhere:0'.\n\tSignature output diff references an unknown tensor"),
    ],
)
def test_metadata_naming_an_unknown_tensor_is_a_load_error(
    two_input_models: dict[str, bytes], tmp_path: Path, kind: str, alias: str, message: str
) -> None:
    signatures = signature_defs_from_native(two_input_models["native"], {"serving_default": "serving_default"})
    tensors = signatures["serving_default"].inputs if kind == "input" else signatures["serving_default"].outputs
    # Only a ":N" suffix is cut from a stored name, never added: "serving_default_a" names nothing.
    tensors[alias].name = "serving_default_a" if kind == "input" else "nowhere:0"
    content = with_signature_defs(two_input_models["native"], signatures)
    with pytest.raises(LoadError) as raised:
        read_signature_defs(content)
    assert str(raised.value) == message
    with pytest.raises(LoadError, match="Unknown tensor"):
        served(content, tmp_path)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("entries", "served_keys"),
    [
        # A value that is no SignatureDef: TF Serving's message.
        ({"serving_default": b"\xff\xff\xff"}, None),
        # A value cut at its first NUL byte (TF Serving copies it through c_str()): here before
        # anything, an empty SignatureDef.
        ({"serving_default": b"\0\x0a\x03abc"}, ["serving_default"]),
    ],
)
def test_metadata_is_read_as_tf_serving_reads_it(
    two_input_models: dict[str, bytes], entries: dict[str, bytes], served_keys: list[str] | None
) -> None:
    content = with_raw_signature_defs_metadata(two_input_models["tf1"], entries)
    if served_keys is None:
        with pytest.raises(LoadError) as raised:
            read_signature_defs(content)
        assert str(raised.value) == (
            "Invalid SignatureDefs found in TfLite model: Cannot parse signature def found in flatbuffer."
        )
        return
    signatures = read_signature_defs(content)
    assert sorted(signatures) == served_keys
    assert all(signature == meta_graph_pb2.SignatureDef() for signature in signatures.values())


@pytest.mark.fast
def test_an_unknown_tensor_in_a_run_is_tf_servings_internal_error(
    two_input_models: dict[str, bytes], tmp_path: Path
) -> None:
    servable = served(two_input_models["tf1"], tmp_path)
    a = np.ones((1, ROW), np.float32)
    with pytest.raises(ServingError) as raised:
        servable.run({"a": a, "z": a}, ["diff"])
    assert raised.value.code == grpc.StatusCode.INTERNAL
    assert raised.value.message == "Unknown tensor 'z'.\n\tMissing input TFLite tensor: z"
    with pytest.raises(ServingError) as raised:
        servable.run({"a": a, "b": a}, ["nope"])
    assert raised.value.message == "Missing output TFLite tensor: nope: Unknown tensor 'nope'."


@pytest.mark.fast
def test_a_dtype_tf_serving_does_not_serve_is_a_load_error(tmp_path: Path) -> None:
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float64, [None], name="x")
        y = tf.identity(tf.cast(x, tf.float32), name="y")
        with v1.Session(graph=graph) as session:
            content = v1.lite.TFLiteConverter.from_session(session, [x], [y]).convert()
    with pytest.raises(LoadError, match=r"^Unknown TfLite type: 11$"):  # kTfLiteFloat64
        read_signature_defs(content)


@pytest.mark.fast
@pytest.mark.conformance
@pytest.mark.parametrize("model", SHARED_TFLITE_MODELS)
def test_tf_servings_tflite_models_load_as_its_tflite_session_test_expects(shared_testdata: Path, model: str) -> None:
    version_dir = shared_testdata / model / "00000123"
    servable = load_tflite_servable(model, 123, version_dir)
    assert servable.signature_defs == {"serving_default": signature_def(EXPECTED_SIGNATURES[model])}
    x = np.array([1.0, 2.0, 3.0], np.float32)
    input_name = servable.signature_defs["serving_default"].inputs["x"].name
    # By TFLite tensor names, and by TF tensor names (":0").
    for feed, fetch in ((input_name, "y"), (f"{input_name}:0", "y:0")):
        (y,) = servable.run({feed: x}, [fetch])
        np.testing.assert_array_equal(y, [2.5, 3.0, 3.5])
    if model.endswith("_with_sigdef"):
        # As stored, before the name is fixed.
        stored = read_metadata_signature_defs((version_dir / "model.tflite").read_bytes())
        assert names(stored["serving_default"]) == ({"x": "tflite_input:0"}, {"y": "y:0"})


@pytest.mark.fast
def test_metadata_the_flexbuffers_reader_chokes_on_is_a_load_error(
    two_input_models: dict[str, bytes], tmp_path: Path
) -> None:
    """Review finding 6: a metadata buffer whose root type byte is no flexbuffers type made the
    reader raise KeyError, which took the whole server down; it fails that version's load only."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(two_input_models["native"]))
    model.buffers.append(schema.BufferT(data=np.frombuffer(bytes.fromhex(KEY_ERROR_METADATA), np.uint8)))
    model.metadata = [
        *(model.metadata or []),
        schema.MetadataT(name="signature_defs_metadata", buffer=len(model.buffers) - 1),
    ]
    content = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    with pytest.raises(LoadError, match="Error reading signature def map: KeyError"):
        read_metadata_signature_defs(content)
    with pytest.raises(LoadError, match="Error reading signature def map: KeyError"):
        served(content, tmp_path)


# The flexbuffer the review's fuzzer found (tests/sources/test_tflite_source.py has the same).
KEY_ERROR_METADATA = "cd90095066a745addb6d8831c2b0f87821142b4456556d89aa82bcadae3a9578fa4535a414d025c2"
