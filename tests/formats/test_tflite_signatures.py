"""signature_defs_metadata written into a TFLite model as TensorFlow's signature_def_util writes
it, read back by the runtime (serving/tflite.py) as TF Serving reads it, nothing else changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from factories.tflite_models import ROW, write_multi_signature_tflite, write_two_input_tflite
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from packager.errors import SourceError
from packager.formats.tflite_signatures import (
    SIGNATURE_DEFS_METADATA,
    native_signature_keys,
    signature_defs_from_native,
    with_signature_defs,
)
from serving.tflite import read_metadata_signature_defs, read_signature_defs, tflite_interpreter

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

SERVING_DEFAULT = {"serving_default": "serving_default"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("tflite-signatures")
    return {
        "native": write_two_input_tflite(root / "native.tflite", with_signature=True).read_bytes(),
        "predict": write_multi_signature_tflite(root / "predict.tflite", ["predict"]).read_bytes(),
        "two": write_multi_signature_tflite(root / "two.tflite", ["serving_default", "predict"]).read_bytes(),
    }


def metadata_entries(content: bytes) -> list[tuple[str, int, bytes]]:
    """(name, buffer index, buffer bytes) of each metadata entry."""
    model = schema.Model.GetRootAsModel(content, 0)
    entries = []
    for index in range(model.MetadataLength()):
        metadata = model.Metadata(index)
        buffer = model.Buffers(metadata.Buffer())
        data = buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
        entries.append((metadata.Name().decode(), metadata.Buffer(), data))
    return entries


def without_signature_defs_metadata(content: bytes) -> bytes:
    """``content`` repacked by the object API with its signature_defs_metadata entry and buffer
    dropped: what is left to compare with the source repacked the same way."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    for entry in list(model.metadata or []):
        if entry.name in (SIGNATURE_DEFS_METADATA, SIGNATURE_DEFS_METADATA.encode()):
            assert entry.buffer == len(model.buffers) - 1  # appended: no other index moves
            model.buffers.pop()
            model.metadata.remove(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def signature_def(text: str) -> meta_graph_pb2.SignatureDef:
    return text_format.Parse(text, meta_graph_pb2.SignatureDef())


def test_a_native_signature_is_served_under_its_own_keys(models: dict[str, bytes]) -> None:
    source = models["native"]
    assert read_metadata_signature_defs(source) == {}
    signatures = signature_defs_from_native(source, SERVING_DEFAULT)
    written = with_signature_defs(source, signatures)

    # Read back by the runtime: the signature's keys, naming the tensors exactly, with their
    # dtypes and shape signatures (-1: the free batch).
    assert read_metadata_signature_defs(written) == signatures
    default = read_signature_defs(written)["serving_default"]
    assert default == signature_def(
        """
        inputs { key: "a" value { name: "serving_default_a:0" dtype: DT_FLOAT
                                  tensor_shape { dim { size: -1 } dim { size: 3 } } } }
        inputs { key: "b" value { name: "serving_default_b:0" dtype: DT_FLOAT
                                  tensor_shape { dim { size: -1 } dim { size: 3 } } } }
        outputs { key: "diff" value { name: "PartitionedCall:0" dtype: DT_FLOAT
                                      tensor_shape { dim { size: -1 } dim { size: 3 } } } }
        outputs { key: "total" value { name: "PartitionedCall:1" dtype: DT_FLOAT
                                       tensor_shape { dim { size: -1 } dim { size: 1 } } } }
        method_name: "tensorflow/serving/predict"
        """
    )

    # Nothing else changed: the same flatbuffer once the entry is dropped, the same native
    # signatures, the same numbers to the last bit.
    assert without_signature_defs_metadata(written) == without_signature_defs_metadata(source)
    assert native_signature_keys(written) == native_signature_keys(source) == ["serving_default"]
    rng = np.random.default_rng(3)
    a, b = (rng.uniform(-3, 3, (4, ROW)).astype(np.float32) for _ in range(2))
    before = tflite_interpreter(source).get_signature_runner("serving_default")(a=a, b=b)
    after = tflite_interpreter(written).get_signature_runner("serving_default")(a=a, b=b)
    for key in ("diff", "total"):
        np.testing.assert_array_equal(after[key], before[key])


def test_writing_again_replaces_the_map_in_the_same_buffer(models: dict[str, bytes]) -> None:
    source = models["native"]
    first = with_signature_defs(source, signature_defs_from_native(source, SERVING_DEFAULT))
    renamed = signature_defs_from_native(source, {"serving_default": "other"})
    second = with_signature_defs(first, renamed)
    (entry_first,) = [e for e in metadata_entries(first) if e[0] == SIGNATURE_DEFS_METADATA]
    (entry_second,) = [e for e in metadata_entries(second) if e[0] == SIGNATURE_DEFS_METADATA]
    assert entry_first[1] == entry_second[1]  # the buffer is reused, as SetSignatureDefMap does
    assert len(metadata_entries(second)) == len(metadata_entries(first))
    assert sorted(read_signature_defs(second)) == ["other"]
    # Other metadata (the converter's min_runtime_version) is kept.
    assert [e[0] for e in metadata_entries(second) if e[0] != SIGNATURE_DEFS_METADATA] == [
        e[0] for e in metadata_entries(source)
    ]


@pytest.mark.conformance
def test_the_flexbuffer_is_signature_def_utils_to_the_byte(shared_testdata: Path) -> None:
    # TF Serving's saved_model_half_plus_two_tflite_with_sigdef is the plain model plus metadata
    # written by signature_def_util (C++): the same map written here is the same bytes, in the
    # same place (a new buffer after the model's, a metadata entry after its own).
    plain = (shared_testdata / "saved_model_half_plus_two_tflite" / "00000123" / "model.tflite").read_bytes()
    reference = (
        shared_testdata / "saved_model_half_plus_two_tflite_with_sigdef" / "00000123" / "model.tflite"
    ).read_bytes()
    stored = read_metadata_signature_defs(reference)
    assert list(stored) == ["serving_default"]
    written = with_signature_defs(plain, stored)
    # (The two files' min_runtime_version buffers differ: another converter wrote them.)
    assert metadata_entries(written)[1:] == metadata_entries(reference)[1:]
    assert [e[:2] for e in metadata_entries(written)] == [e[:2] for e in metadata_entries(reference)]
    assert read_metadata_signature_defs(written) == stored


def test_a_scalar_is_written_without_a_nul_and_a_zero_size_dimension_is_refused(models: dict[str, bytes]) -> None:
    source = models["native"]
    scalar = signature_def(
        """
        inputs { key: "a" value { name: "serving_default_a:0" dtype: DT_FLOAT tensor_shape {} } }
        outputs { key: "diff" value { name: "PartitionedCall:0" dtype: DT_FLOAT } }
        method_name: "tensorflow/serving/predict"
        """
    )
    assert b"\0" in scalar.SerializeToString()  # what TF Serving's reader would cut at
    served = read_signature_defs(with_signature_defs(source, {"serving_default": scalar}))["serving_default"]
    assert not served.inputs["a"].tensor_shape.dim and not served.inputs["a"].tensor_shape.unknown_rank
    assert served.outputs["diff"].name == "PartitionedCall:0"

    zero = signature_def(
        """
        inputs { key: "a" value { name: "serving_default_a:0" tensor_shape { dim { size: 0 } } } }
        """
    )
    with pytest.raises(SourceError, match="SignatureDef serving_default serializes with a NUL byte"):
        with_signature_defs(source, {"serving_default": zero})


def test_another_name_is_served_as_serving_default(models: dict[str, bytes]) -> None:
    source = models["predict"]
    assert native_signature_keys(source) == ["predict"]
    written = with_signature_defs(source, signature_defs_from_native(source, {"predict": "serving_default"}))
    default = read_signature_defs(written)["serving_default"]
    assert list(default.inputs) == ["x"] and list(default.outputs) == ["y"]


def test_signatures_tf_serving_cannot_serve_are_refused(models: dict[str, bytes]) -> None:
    two = models["two"]
    # One subgraph per signature; TF Serving runs the first subgraph's inputs and outputs only.
    assert native_signature_keys(two) == ["predict", "serving_default"]
    assert list(signature_defs_from_native(two, {"predict": "serving_default"})) == ["serving_default"]
    with pytest.raises(SourceError, match="signature serving_default of the TFLite model runs its subgraph 1"):
        signature_defs_from_native(two, SERVING_DEFAULT)
    with pytest.raises(SourceError, match=r"has no signature nope \(its signatures: predict, serving_default\)"):
        signature_defs_from_native(two, {"nope": "serving_default"})


def test_bad_arguments_are_refused(models: dict[str, bytes]) -> None:
    with pytest.raises(ValueError, match="should not be empty"):
        with_signature_defs(models["native"], {})
    with pytest.raises(SourceError, match="not a TFLite model"):
        with_signature_defs(b"\0" * 64, {"serving_default": meta_graph_pb2.SignatureDef()})
    with pytest.raises(SourceError, match="not a TFLite model"):
        native_signature_keys(tf.constant(1).numpy().tobytes())
