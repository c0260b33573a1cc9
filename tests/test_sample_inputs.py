"""--sample-inputs files: .npz, TF Serving REST JSON and warmup TFRecords, read and refused."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from packager.errors import UsageError
from packager.export import write_warmup_requests
from packager.graph.frozen_model import TensorRef
from packager.sample_inputs import SampleInputs, load_sample_inputs
from packager.tf_runtime import tensorflow

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

IMAGE = TensorRef("image", "pixels:0", "float32", (None, 3, 2))
IDS = TensorRef("ids", "input_ids:0", "int32", (None, 4))
TEXT = TensorRef("text", "text_in:0", "string", (None,))
INPUTS = [IMAGE, IDS, TEXT]


def _arrays(batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.uniform(-1, 1, (batch, 3, 2)).astype(np.float32),
        "ids": rng.integers(0, 100, (batch, 4)).astype(np.int32),
        "text": np.array([f"row {i} \u00e9".encode() for i in range(batch)], dtype=np.bytes_),
    }


def _assert_equal(loaded: SampleInputs, expected: dict[str, np.ndarray]) -> None:
    assert set(loaded.arrays) == set(expected)
    for key, want in expected.items():
        got = loaded.arrays[key]
        assert got.dtype == want.dtype, key
        np.testing.assert_array_equal(got, want)


def _error(path: Path, inputs: list[TensorRef] = INPUTS, **kwargs: Any) -> str:
    with pytest.raises(UsageError) as caught:
        load_sample_inputs(path, inputs, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"--sample-inputs {path}: ")
    return message


def _npz(tmp_path: Path, name: str = "samples.npz", **arrays: Any) -> Path:
    path = tmp_path / name
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


def _json(tmp_path: Path, document: Any, name: str = "request.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def _b64(value: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(value).decode()}


def _log(feeds: dict[str, np.ndarray], signature: str = "serving_default") -> bytes:
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    tf = tensorflow()
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="m", signature_name=signature))
    for key, value in feeds.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    return log.SerializeToString()


def _tfrecord(tmp_path: Path, records: list[bytes], name: str = "warmup.tfrecord") -> Path:
    path = tmp_path / name
    with tensorflow().io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path


# --- .npz -----------------------------------------------------------------------------------


def test_npz_round_trip_casts_to_the_signature_dtypes(tmp_path: Path) -> None:
    want = _arrays()
    path = _npz(
        tmp_path,
        image=want["image"].astype(np.float64),  # a wider float is cast down
        ids=want["ids"].astype(np.int64),  # so is a wider int whose values fit
        text=np.array([v.decode() for v in want["text"]]),  # str arrays become UTF-8 bytes
    )
    loaded = load_sample_inputs(path, INPUTS)
    _assert_equal(loaded, want)
    assert loaded.format == "npz" and loaded.batch == 2
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_npz_accepts_tensor_and_op_names_as_aliases(tmp_path: Path) -> None:
    want = _arrays()
    path = _npz(tmp_path, **{"pixels:0": want["image"], "input_ids": want["ids"], "text": want["text"]})
    _assert_equal(load_sample_inputs(path, INPUTS), want)


def test_npz_int_for_float_is_cast_and_non_finite_values_are_kept(tmp_path: Path) -> None:
    ref = TensorRef("x", "x:0", "float32", (None, 2))
    path = _npz(tmp_path, x=np.array([[1, 2], [3, 4]], dtype=np.int64))
    np.testing.assert_array_equal(load_sample_inputs(path, [ref]).arrays["x"], np.array([[1, 2], [3, 4]], np.float32))
    path = _npz(tmp_path, x=np.array([[np.nan, np.inf]]))
    assert np.isnan(load_sample_inputs(path, [ref]).arrays["x"][0, 0])


def test_npz_input_given_twice(tmp_path: Path) -> None:
    want = _arrays()
    path = _npz(tmp_path, **want, **{"pixels:0": want["image"]})
    assert "'image' is given twice" in _error(path)


def test_npz_missing_input_names_it_and_the_expected_keys(tmp_path: Path) -> None:
    want = _arrays()
    del want["ids"]
    message = _error(_npz(tmp_path, **want))
    assert "input 'ids' is missing" in message and "image, ids, text" in message


def test_npz_unknown_input_is_named(tmp_path: Path) -> None:
    assert "unknown input 'extra'" in _error(_npz(tmp_path, **_arrays(), extra=np.zeros(2)))


def test_npz_float_for_int_is_refused(tmp_path: Path) -> None:
    want = _arrays()
    want["ids"] = want["ids"].astype(np.float64)
    message = _error(_npz(tmp_path, **want))
    assert "'ids' expects int32" in message and "float64" in message


def test_npz_numbers_for_strings_and_strings_for_numbers_are_refused(tmp_path: Path) -> None:
    want = _arrays()
    want["text"] = np.array([1.0, 2.0])
    assert "'text' expects strings but the file gives float64" in _error(_npz(tmp_path, **want))
    want = _arrays()
    want["image"] = np.full((2, 3, 2), "a")
    assert "'image' expects float32 but the file gives strings" in _error(_npz(tmp_path, **want))


def test_npz_integers_out_of_range_are_refused(tmp_path: Path) -> None:
    want = _arrays()
    want["ids"] = want["ids"].astype(np.int64) + 2**40
    assert "outside int32" in _error(_npz(tmp_path, **want))


def test_npz_rank_and_fixed_dimension_mismatches_show_both_shapes(tmp_path: Path) -> None:
    want = _arrays()
    want["image"] = np.zeros((2, 3), np.float32)
    assert "'image' has shape [2, 3], the signature expects [?, 3, 2]" in _error(_npz(tmp_path, **want))
    want["image"] = np.zeros((2, 3, 5), np.float32)
    assert "'image' has shape [2, 3, 5], the signature expects [?, 3, 2]" in _error(_npz(tmp_path, **want))


def test_npz_inconsistent_and_empty_batches(tmp_path: Path) -> None:
    want = _arrays()
    want["text"] = np.array([b"a", b"b", b"c"])
    message = _error(_npz(tmp_path, **want))
    assert "disagree on the batch size" in message and "'text' has 3" in message
    assert "the batch is empty" in _error(_npz(tmp_path, **_arrays(batch=0)))


def test_unknown_rank_and_scalar_inputs(tmp_path: Path) -> None:
    refs = [TensorRef("any", "any:0", "float32", None), TensorRef("scale", "scale:0", "float64", ())]
    path = _npz(tmp_path, any=np.zeros((3, 7)), scale=np.float64(0.5))
    loaded = load_sample_inputs(path, refs)
    assert loaded.batch == 3 and loaded.arrays["scale"].shape == ()


@pytest.mark.parametrize(
    "content",
    [b"not a zip at all", b"PK\x03\x04 truncated", b""],
    ids=["garbage", "truncated-zip", "empty"],
)
def test_corrupt_npz_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    assert "not a numpy .npz archive" in _error(path)


def test_truncated_npz_is_refused_at_every_cut(tmp_path: Path) -> None:
    data = _npz(tmp_path, **_arrays()).read_bytes()
    for cut in range(0, len(data), max(1, len(data) // 25)):
        path = tmp_path / "cut.npz"
        path.write_bytes(data[:cut])
        assert "not a numpy .npz archive" in _error(path)


def test_npz_of_a_single_array_or_object_arrays_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "single.npz"
    with path.open("wb") as handle:
        np.save(handle, np.zeros(3))
    assert "not a numpy .npz archive" in _error(path)
    path = _npz(tmp_path, **{**_arrays(), "text": np.array([b"a", b"b"], dtype=object)})
    assert "pickle" in _error(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    assert "cannot read it" in _error(tmp_path / "absent.npz")


# --- JSON -----------------------------------------------------------------------------------


def test_json_instances_rows_with_b64_strings(tmp_path: Path) -> None:
    want = _arrays()
    rows = [
        {"image": want["image"][i].tolist(), "ids": want["ids"][i].tolist(), "text": _b64(want["text"][i])}
        for i in range(2)
    ]
    loaded = load_sample_inputs(_json(tmp_path, {"signature_name": "serving_default", "instances": rows}), INPUTS)
    _assert_equal(loaded, want)
    assert loaded.format == "json" and loaded.batch == 2


def test_json_instances_plain_values_for_a_single_input(tmp_path: Path) -> None:
    loaded = load_sample_inputs(_json(tmp_path, {"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}), [IDS])
    np.testing.assert_array_equal(loaded.arrays["ids"], np.arange(1, 9, dtype=np.int32).reshape(2, 4))
    loaded = load_sample_inputs(_json(tmp_path, {"instances": ["a", _b64(b"\xff\x01")]}), [TEXT])
    _assert_equal(loaded, {"text": np.array([b"a", b"\xff\x01"], dtype=np.bytes_)})


def test_json_columnar_inputs(tmp_path: Path) -> None:
    want = _arrays()
    columns = {
        "image": want["image"].tolist(),
        "ids": want["ids"].tolist(),
        "text": [v.decode() for v in want["text"]],
    }
    _assert_equal(load_sample_inputs(_json(tmp_path, {"inputs": columns}), INPUTS), want)
    # A single input may be given as a plain value or by name.
    for document in ({"inputs": [[1.5, 2], [3, 4], [5, 6]]}, {"inputs": {"x": [[1.5, 2], [3, 4], [5, 6]]}}):
        loaded = load_sample_inputs(_json(tmp_path, document), [TensorRef("x", "x:0", "float16", (None, 2))])
        assert loaded.arrays["x"].dtype == np.float16 and loaded.batch == 3


def test_json_non_finite_values_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "nan.json"
    path.write_text('{"inputs": [[NaN, Infinity]]}')
    loaded = load_sample_inputs(path, [TensorRef("x", "x:0", "float32", (None, 2))])
    assert np.isnan(loaded.arrays["x"][0, 0]) and np.isinf(loaded.arrays["x"][0, 1])


def test_json_signature_name(tmp_path: Path) -> None:
    document = {"signature_name": "classify", "instances": [[1, 2, 3, 4]]}
    assert "for signature 'classify', not 'serving_default'" in _error(_json(tmp_path, document), [IDS])
    assert load_sample_inputs(_json(tmp_path, document), [IDS], signature_name="classify").batch == 1
    # An empty name is TF Serving's default signature.
    assert load_sample_inputs(_json(tmp_path, {**document, "signature_name": ""}), [IDS]).batch == 1


def test_json_float_for_int_is_refused_in_both_forms(tmp_path: Path) -> None:
    message = _error(_json(tmp_path, {"instances": [[1, 2, 3, 4.5]]}), [IDS])
    assert "4.5" in message and "int32" in message
    message = _error(_json(tmp_path, {"inputs": {"ids": [[1, 2, 3, 4.5]]}}), [IDS])
    assert "input 'ids'" in message and "int32" in message


def test_json_ints_out_of_range_are_refused(tmp_path: Path) -> None:
    # TF Serving's own wording: the REST codec refuses an integer its dtype cannot hold.
    assert "is not of expected type: int32" in _error(_json(tmp_path, {"instances": [[1, 2, 3, 2**40]]}), [IDS])
    small = TensorRef("b", "b:0", "uint8", (None,))
    assert "'b'" in _error(_json(tmp_path, {"inputs": [1, 300]}), [small])


def test_json_missing_and_unknown_inputs(tmp_path: Path) -> None:
    want = _arrays()
    columns = {"image": want["image"].tolist(), "text": ["a", "b"]}
    message = _error(_json(tmp_path, {"inputs": columns}))
    assert "input 'ids' is missing" in message and "image, ids, text" in message
    columns.update(ids=want["ids"].tolist(), extra=[1, 2])
    assert "unknown input 'extra'" in _error(_json(tmp_path, {"inputs": columns}))
    rows = [{"image": want["image"][0].tolist(), "ids": [1, 2, 3, 4]}]
    assert "input 'text' is missing" in _error(_json(tmp_path, {"instances": rows}))
    rows[0].update(text="a", other=1)
    assert "unknown input 'other'" in _error(_json(tmp_path, {"instances": rows}))


def test_json_shape_batch_and_value_errors(tmp_path: Path) -> None:
    assert "the signature expects [?, 4]" in _error(_json(tmp_path, {"instances": [[1, 2, 3]]}), [IDS])
    assert "the batch is empty" in _error(_json(tmp_path, {"inputs": []}), [TEXT])
    assert "'instances' is empty" in _error(_json(tmp_path, {"instances": []}), [TEXT])
    # ragged rows, a row of the wrong kind, bad base64: TF Serving's own words, on one line
    _error(_json(tmp_path, {"instances": [[1, 2, 3, 4], [1, 2]]}), [IDS])
    _error(_json(tmp_path, {"instances": [[1, 2, 3, [4]]]}), [IDS])
    _error(_json(tmp_path, {"instances": [{"b64": "!!not base64!!"}]}), [TEXT])
    _error(_json(tmp_path, {"instances": [[1, 2, 3, 4]]}), [IDS, TEXT])
    _error(_json(tmp_path, {"inputs": [["a"]]}), [IDS])
    columns = {"image": [[[0.0] * 2] * 3], "ids": [[1] * 4] * 2, "text": ["a"]}
    message = _error(_json(tmp_path, {"inputs": columns}))
    assert "disagree on the batch size" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not a TF Serving REST request body (JSON)"),
        ("[1, 2, 3]", "the JSON is a list"),
        ('"text"', "the JSON is a str"),
        ('{"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]}', "not both"),
        ('{"examples": []}', "neither 'instances' nor 'inputs'"),
        ('{"instances": {"ids": [1, 2, 3, 4]}}', "'instances' must be a list"),
        ('{"signature_name": 3, "instances": [[1, 2, 3, 4]]}', "'signature_name' must be a string"),
        ("[" * 100000, "not a TF Serving REST request body (JSON)"),
        ("", "not a TF Serving REST request body (JSON)"),
        ("\udcff", "not a TF Serving REST request body (JSON)"),
    ],
    ids=[
        "invalid",
        "list",
        "string",
        "both",
        "neither",
        "instances-object",
        "signature-type",
        "deep",
        "empty",
        "bad-utf8",
    ],
)
def test_bad_json_is_refused(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    assert expected in _error(path, [IDS])


def test_json_multiple_inputs_need_an_object(tmp_path: Path) -> None:
    assert "'inputs' must be an object naming each of image, ids, text" in _error(_json(tmp_path, {"inputs": [1]}))


def test_json_narrow_and_boolean_dtypes(tmp_path: Path) -> None:
    refs = [TensorRef("u", "u:0", "uint16", (None,)), TensorRef("flag", "flag:0", "bool", (None,))]
    loaded = load_sample_inputs(_json(tmp_path, {"inputs": {"u": [65535, 0], "flag": [True, False]}}), refs)
    _assert_equal(loaded, {"u": np.array([65535, 0], np.uint16), "flag": np.array([True, False])})
    too_big = {"inputs": {"u": [65536, 0], "flag": [True, False]}}
    assert "outside uint16" in _error(_json(tmp_path, too_big), refs)
    path = _npz(tmp_path, u=np.zeros(2, np.uint8), flag=np.zeros(2, np.int64))
    assert "expects bool but the file gives int64" in _error(path, refs)


def test_strings_ending_in_nul_are_refused_not_truncated(tmp_path: Path) -> None:
    assert "ending in a NUL byte" in _error(_json(tmp_path, {"instances": [_b64(b"ab\x00")]}), [TEXT])


def test_json_complex_inputs_ask_for_npz(tmp_path: Path) -> None:
    ref = TensorRef("z", "z:0", "complex64", (None,))
    assert "use a .npz file" in _error(_json(tmp_path, {"inputs": [1.0]}), [ref])


# --- TFRecord (TF Serving warmup) -------------------------------------------------------------


def test_warmup_file_written_by_export_round_trips(tmp_path: Path) -> None:
    want = _arrays()
    path = tmp_path / "assets.extra" / "tf_serving_warmup_requests"  # detected by name, no suffix
    write_warmup_requests(path, "model", want)
    loaded = load_sample_inputs(path, INPUTS)
    _assert_equal(loaded, want)
    assert loaded.format == "tfrecord" and loaded.batch == 2
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_tfrecord_records_are_concatenated_and_others_skipped(tmp_path: Path) -> None:
    from tensorflow_serving.apis import classification_pb2, prediction_log_pb2

    first, second = _arrays(batch=2, seed=1), _arrays(batch=3, seed=2)
    classify = prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=classification_pb2.ClassificationRequest())
    ).SerializeToString()
    records = [_log(first), _log(_arrays(batch=1, seed=3), signature="other"), classify, _log(second, signature="")]
    loaded = load_sample_inputs(_tfrecord(tmp_path, records), INPUTS)
    _assert_equal(loaded, {key: np.concatenate([first[key], second[key]]) for key in first})
    assert loaded.batch == 5
    loaded = load_sample_inputs(_tfrecord(tmp_path, records), INPUTS, signature_name="other")
    assert loaded.batch == 1


def test_tfrecord_without_requests_for_the_signature(tmp_path: Path) -> None:
    path = _tfrecord(tmp_path, [_log(_arrays(), signature="other")])
    assert "no Predict request for signature 'serving_default'" in _error(path)
    assert "no Predict request" in _error(_tfrecord(tmp_path, []))


def test_tfrecord_validation_names_the_record(tmp_path: Path) -> None:
    bad = _arrays()
    bad["ids"] = bad["ids"].astype(np.float32)
    message = _error(_tfrecord(tmp_path, [_log(_arrays()), _log(bad)]))
    assert "record 1" in message and "'ids' expects int32 but the file gives float32" in message
    missing = _arrays()
    del missing["text"]
    assert "record 0: input 'text' is missing" in _error(_tfrecord(tmp_path, [_log(missing)]))


def test_tfrecord_records_that_cannot_be_joined(tmp_path: Path) -> None:
    ref = TensorRef("tokens", "tokens:0", "int64", (None, None))
    records = [_log({"tokens": np.zeros((1, 3), np.int64)}), _log({"tokens": np.zeros((1, 5), np.int64)})]
    message = _error(_tfrecord(tmp_path, records), [ref])
    assert "[1, 3] and [1, 5]" in message


def test_tfrecord_truncated_or_garbage_is_refused(tmp_path: Path) -> None:
    data = _tfrecord(tmp_path, [_log(_arrays()), _log(_arrays())]).read_bytes()
    # TensorFlow's reader alone takes a partial header (after a whole record) for the end of file.
    for cut in (1, 11, 20, len(data) // 2 + 5, len(data) - 1):
        path = tmp_path / "cut.tfrecord"
        path.write_bytes(data[:cut])
        assert "not a TFRecord file of PredictionLog records" in _error(path)
        assert "is truncated at byte" in _error(path)
    flipped = bytearray(data)
    flipped[50] ^= 0xFF
    path.write_bytes(bytes(flipped))
    assert _error(path).endswith("(TF Serving's warmup format): corrupted record at 12")
    path = tmp_path / "garbage.tfrecords"
    path.write_bytes(b"\x00" * 7 + b"garbage that is no record")
    assert "not a TFRecord file" in _error(path)
    # A well-framed record that is not a PredictionLog.
    _error(_tfrecord(tmp_path, [b"\xff\xff\xff\xff"]))


# --- format detection -------------------------------------------------------------------------


def test_format_is_sniffed_without_a_known_suffix(tmp_path: Path) -> None:
    want = _arrays()
    npz = _npz(tmp_path, name="samples.bin", **want)
    assert load_sample_inputs(npz, INPUTS).format == "npz"
    body = _json(
        tmp_path,
        {
            "inputs": {
                "image": want["image"].tolist(),
                "ids": want["ids"].tolist(),
                "text": [v.decode() for v in want["text"]],
            }
        },
        name="body.txt",
    )
    assert load_sample_inputs(body, INPUTS).format == "json"
    record = _tfrecord(tmp_path, [_log(want)], name="requests.log")
    assert load_sample_inputs(record, INPUTS).format == "tfrecord"
    unknown = tmp_path / "mystery.dat"
    unknown.write_bytes(b"abc")
    assert "cannot tell its format: name it .npz, .json or .tfrecord" in _error(unknown)
