""".tflite sources: written as TF Serving's TFLite layout, proven as the model server runs them.

Each conversion is checked independently of the proof: the version dir's model.tflite is the
source byte for byte, or, for a model with signatures of its own and no signature_defs_metadata,
the source with that metadata added and nothing else changed; and the runtime's own TFLite
loader, run on the goldens, gives what numpy computes for the model's function.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from factories.tflite_models import (
    ROW,
    write_multi_signature_tflite,
    write_tflite_function,
    write_tflite_source,
    write_two_input_tflite,
)
from tensorflow.lite.tools import flatbuffer_utils

from packager.convert import ConvertOptions, convert
from packager.errors import SourceError, UsageError, VerificationError
from packager.formats import tflite_signatures
from packager.formats.tflite_signatures import SIGNATURE_DEFS_METADATA, signature_defs_from_native, with_signature_defs
from packager.layout import GOLDENS_FILE, PROVENANCE_FILE, STATEMENT_FILE, WARMUP_FILE, Goldens
from packager.readiness import NotServingReady
from serving.tflite import load_tflite_servable, read_metadata_signature_defs

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

SHARED_TFLITE_MODELS = ("saved_model_half_plus_two_tflite", "saved_model_half_plus_two_tflite_with_sigdef")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The .tflite sources, converted once per module."""
    root = tmp_path_factory.mktemp("tflite-sources")
    return {
        "signature": write_two_input_tflite(root / "signature.tflite", with_signature=True),
        "synthesised": write_two_input_tflite(root / "synthesised.tflite", with_signature=False),
        "random": write_tflite_function(root / "random.tflite", lambda x: {"y": x + tf.random.uniform(tf.shape(x))}),
        "nan": write_tflite_function(root / "nan.tflite", lambda x: {"y": tf.math.log(x - 5.0)}),
        "batch_dependent": write_tflite_function(
            root / "batch_dependent.tflite", lambda x: {"y": x - tf.reduce_mean(x, axis=0, keepdims=True)}
        ),
        "half_plus_two": write_tflite_source(root / "half_plus_two.tflite"),
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def served_outputs(version_dir: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """serving_default run by the model server's TFLite loader, fed and fetched by tensor name."""
    servable = load_tflite_servable("model", 1, version_dir)
    signature = servable.signature_defs["serving_default"]
    keys = sorted(signature.outputs)
    values = servable.run(
        {signature.inputs[k].name: v for k, v in feeds.items()}, [signature.outputs[k].name for k in keys]
    )
    return dict(zip(keys, values, strict=True))


def two_input_function(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    return {"diff": a - 2.0 * b, "total": np.sum(a * b, axis=1, keepdims=True)}


def provenance(version_dir: Path) -> dict[str, Any]:
    return json.loads((version_dir / PROVENANCE_FILE).read_text())


def without_signature_defs_metadata(content: bytes) -> bytes:
    """``content`` repacked by the flatbuffer object API without its signature_defs_metadata
    entry and buffer (the last one, where the writer appends it)."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    for entry in list(model.metadata or []):
        if entry.name in (SIGNATURE_DEFS_METADATA, SIGNATURE_DEFS_METADATA.encode()):
            assert entry.buffer == len(model.buffers) - 1
            model.buffers.pop()
            model.metadata.remove(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def assert_nothing_written(output_dir: Path) -> None:
    assert not output_dir.exists() or not any(output_dir.rglob("*")), sorted(output_dir.rglob("*"))


@pytest.mark.parametrize(
    ("kind", "keys"),
    [
        ("signature", {"a": "serving_default_a:0", "b": "serving_default_b:0"}),
        ("synthesised", {"a": "a", "b": "b"}),
    ],
)
def test_a_tflite_source_is_written_and_served_as_the_reference_computes(
    sources: dict[str, Path], tmp_path: Path, kind: str, keys: dict[str, str]
) -> None:
    source = sources[kind]
    result = convert(source, ConvertOptions(name="lite", output_dir=tmp_path))
    version_dir = tmp_path / "lite" / "1"
    assert result.version_dir == version_dir
    written = (version_dir / "model.tflite").read_bytes()
    synthesised = kind == "synthesised"
    if synthesised:
        assert written == source.read_bytes()
    else:
        # TF Serving serves the model's own signature only from signature_defs_metadata: added,
        # and nothing else changed.
        assert written != source.read_bytes()
        assert without_signature_defs_metadata(written) == without_signature_defs_metadata(source.read_bytes())
        stored = read_metadata_signature_defs(written)
        assert list(stored) == ["serving_default"]
        assert {k: v.name for k, v in stored["serving_default"].inputs.items()} == keys
    assert not (version_dir / "saved_model.pb").exists() and not (version_dir / "variables").exists()
    assert (version_dir / WARMUP_FILE).is_file() and (version_dir / STATEMENT_FILE).is_file()

    # A synthesised signature is keyed by tensor name (the TF1 session named them a, b, ...); an
    # added one by the signature's names.
    output_keys = {"diff", "total"}
    assert {r.key for r in result.inputs} == set(keys) and {r.key for r in result.outputs} == output_keys
    assert {r.key: r.tensor_name for r in result.inputs} == keys
    goldens = Goldens.load(version_dir / GOLDENS_FILE)
    assert set(goldens.inputs) == set(keys) and set(goldens.outputs) == output_keys
    # The free batch is exercised (a synthesised signature shows the tensors' current dims, 1).
    assert goldens.inputs["a"].shape == (2, ROW)

    want = two_input_function(goldens.inputs["a"], goldens.inputs["b"])
    served = served_outputs(version_dir, goldens.inputs)
    for key in output_keys:
        np.testing.assert_allclose(served[key], want[key], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(goldens.outputs[key], want[key], rtol=1e-6, atol=1e-6)

    assert result.source_format == "tflite" and result.signatures == ["serving_default"]
    assert result.readiness["batch_independence"]["status"] == "passed"
    record = provenance(version_dir)
    assert record["served_as"] == "tflite" and record["source"]["format"] == "tflite"
    assert record["source"]["files"] == {source.name: sha256(source)}
    assert record["model"] == {"file": "model.tflite", "sha256": sha256(version_dir / "model.tflite")}
    assert record["signatures"] == ["serving_default"]
    assert record["tensors"]["serving_default"]["inputs"] == keys
    assert ("synthesised" in record["source"]["details"]["signature_source"]) is synthesised
    assert record["signature_defs_metadata"] == (
        None if synthesised else "added from the model's signature serving_default"
    )


def test_json_report_names_the_format_reference_and_tensors(
    sources: dict[str, Path], tmp_path: Path, tfpack_cli: Any
) -> None:
    result = tfpack_cli("convert", sources["signature"], "--name", "lite", "--output-dir", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "tflite"
    assert report["version_dir"] == str(tmp_path / "lite" / "1")
    assert report["signatures"] == ["serving_default"] and report["towers"] == "off"
    assert report["equivalence"]["reference"] == "source run by the LiteRT interpreter"
    assert report["equivalence"]["max_abs_error"] <= report["equivalence"]["tolerance"]
    assert {i["key"]: (i["tensor"], i["shape"]) for i in report["inputs"]} == {
        "a": ("serving_default_a:0", [None, ROW]),
        "b": ("serving_default_b:0", [None, ROW]),
    }
    assert set(report["readiness"]) == {"finite_goldens", "determinism", "batch_independence"}


def test_sample_inputs_are_the_goldens(sources: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    a, b = (rng.uniform(-3, 3, (5, ROW)).astype(np.float32) for _ in range(2))
    sample = tmp_path / "sample.npz"
    np.savez(sample, a=a, b=b)
    convert(sources["synthesised"], ConvertOptions(name="lite", output_dir=tmp_path / "out", sample_inputs=sample))
    version_dir = tmp_path / "out" / "lite" / "1"
    goldens = Goldens.load(version_dir / GOLDENS_FILE)
    np.testing.assert_array_equal(goldens.inputs["a"], a)
    np.testing.assert_allclose(goldens.outputs["diff"], a - 2.0 * b, rtol=1e-6)
    assert provenance(version_dir)["source"]["sample_inputs"]["sha256"] == sha256(sample)


@pytest.mark.conformance
@pytest.mark.parametrize("model", SHARED_TFLITE_MODELS)
def test_tf_servings_own_tflite_models_convert(shared_testdata: Path, tmp_path: Path, model: str) -> None:
    # One without signatures, one whose signature_defs_metadata keys its tensors x and y.
    source = tmp_path / "half_plus_two.tflite"
    source.write_bytes((shared_testdata / model / "00000123" / "model.tflite").read_bytes())
    result = convert(source, ConvertOptions(name="lite", output_dir=tmp_path / "out"))
    assert [r.key for r in result.inputs] == ["x"] and [r.key for r in result.outputs] == ["y"]
    goldens = Goldens.load(result.version_dir / GOLDENS_FILE)
    np.testing.assert_allclose(goldens.outputs["y"], 0.5 * goldens.inputs["x"] + 2.0, rtol=1e-6)
    # Neither has signatures of its own: both are written unchanged.
    assert (result.version_dir / "model.tflite").read_bytes() == source.read_bytes()
    with_metadata = model.endswith("_with_sigdef")
    assert provenance(result.version_dir)["signature_defs_metadata"] == (
        "the source's, unchanged" if with_metadata else None
    )
    assert result.inputs[0].tensor_name == ("tflite_input" if with_metadata else "x")


def test_inspect_shows_the_signature_it_would_serve(sources: dict[str, Path], tfpack_cli: Any) -> None:
    result = tfpack_cli("inspect", sources["synthesised"], "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "tflite" and report["signatures"] == ["serving_default"]
    assert {i["key"]: (i["tensor"], i["dtype"]) for i in report["inputs"]} == {
        "a": ("a", "float32"),
        "b": ("b", "float32"),
    }
    assert "synthesised" in report["details"]["signature_source"]
    assert report["readiness"]["batch_independence"]["status"] == "passed"
    human = tfpack_cli("inspect", sources["signature"])
    assert human.exit_code == 0 and "serving_default_a:0" in human.stdout


# --- what the proof must refuse ------------------------------------------------------------------


def test_a_random_op_is_refused(sources: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(NotServingReady, match=r"determinism.*RANDOM_UNIFORM") as raised:
        convert(sources["random"], ConvertOptions(name="lite", output_dir=tmp_path))
    assert "\n" not in str(raised.value)
    assert_nothing_written(tmp_path)


def test_nan_outputs_are_refused(sources: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"non-finite.*--sample-inputs"):
        convert(sources["nan"], ConvertOptions(name="lite", output_dir=tmp_path))
    assert_nothing_written(tmp_path)


def test_a_batch_dependent_model_is_refused_unless_allowed(sources: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(NotServingReady, match=r"batch_independence.*--batch-dependent") as raised:
        convert(sources["batch_dependent"], ConvertOptions(name="lite", output_dir=tmp_path))
    assert "--batchnorm" not in str(raised.value)  # a graph rewrite a TFLite model cannot take
    assert_nothing_written(tmp_path)
    result = convert(sources["batch_dependent"], ConvertOptions(name="lite", output_dir=tmp_path, batch_dependent=True))
    assert result.readiness["batch_independence"]["status"] == "allowed"


def test_a_runtime_that_maps_keys_to_the_wrong_tensors_fails_the_proof(
    sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reference runs the model's own signature by key (LiteRT's signature runner); the proof
    # runs the loaded servable as a Predict request does, by the tensor names of the SignatureDefs
    # written into its metadata, which it maps to tensor indices. A servable that maps a's tensor
    # name to b's index (and b's to a's) computes b - 2a: exit 3, nothing published.
    import serving.tflite as runtime

    loaded = runtime.TfLiteServable.__init__

    def swapping(self: runtime.TfLiteServable, *args: Any, **kwargs: Any) -> None:
        loaded(self, *args, **kwargs)
        indices = self._input_indices
        indices["serving_default_a:0"], indices["serving_default_b:0"] = (
            indices["serving_default_b:0"],
            indices["serving_default_a:0"],
        )

    monkeypatch.setattr(runtime.TfLiteServable, "__init__", swapping)
    with pytest.raises(VerificationError, match="output 'diff' differs"):
        convert(sources["signature"], ConvertOptions(name="lite", output_dir=tmp_path))
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is an empty file"),
        (b"not a flatbuffer at all, just some text" * 4, "is not a TFLite model"),
        ("truncated", "is not a TFLite model"),
        ("corrupt", "is not a TFLite model"),
    ],
)
def test_a_bad_file_is_one_line_exit_2_and_writes_nothing(
    sources: dict[str, Path], tmp_path: Path, tfpack_cli: Any, content: bytes | str, message: str
) -> None:
    model = sources["signature"].read_bytes()
    if content == "truncated":
        content = model[: len(model) // 2]
    elif content == "corrupt":
        flipped = bytearray(model)
        for index in range(64, len(flipped), 89):
            flipped[index] ^= 0xFF
        content = bytes(flipped)
    assert isinstance(content, bytes)
    source = tmp_path / "bad.tflite"
    source.write_bytes(content)
    output_dir = tmp_path / "out"
    result = tfpack_cli("convert", source, "--name", "lite", "--output-dir", output_dir)
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not output_dir.exists()


def test_select_tf_ops_are_refused_before_anything_runs(tmp_path: Path) -> None:
    # FlexReadFile would read a file of the machine: the LiteRT interpreter has no Flex delegate,
    # so the source cannot be proven (and nothing of it runs).
    module = tf.Module()
    module.serving_default = tf.function(
        lambda x: {"y": x + tf.cast(tf.strings.length(tf.io.read_file("/etc/hostname")), tf.float32)},
        input_signature=[tf.TensorSpec([None, ROW], tf.float32, name="x")],
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serving_default.get_concrete_function()], module
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    source = tmp_path / "flex.tflite"
    source.write_bytes(converter.convert())
    with pytest.raises(SourceError, match=r"cannot prepare .*FlexReadFile"):
        convert(source, ConvertOptions(name="lite", output_dir=tmp_path / "out"))
    assert_nothing_written(tmp_path / "out")


def test_a_rewrite_that_changes_numbers_fails_the_proof(
    sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model.tflite written (metadata added) is run by the LiteRT interpreter as the source
    # was and must agree to the last bit. A writer that wrote another model with the same
    # signature (diff = a - 3b) is caught there: exit 3, nothing published.
    other = write_two_input_tflite(tmp_path / "other.tflite", with_signature=True, b_scale=3.0).read_bytes()
    real = tflite_signatures.with_signature_defs
    monkeypatch.setattr(tflite_signatures, "with_signature_defs", lambda _model, defs: real(other, defs))
    with pytest.raises(VerificationError, match=r"signature_defs_metadata added.*vs the source: output 'diff' differs"):
        convert(sources["signature"], ConvertOptions(name="lite", output_dir=tmp_path / "out"))
    assert_nothing_written(tmp_path / "out")


def test_the_only_signature_is_served_as_serving_default_whatever_its_name(tmp_path: Path) -> None:
    source = write_multi_signature_tflite(tmp_path / "predict.tflite", ["predict"])
    result = convert(source, ConvertOptions(name="lite", output_dir=tmp_path / "out"))
    assert result.signatures == ["serving_default"]
    assert [r.key for r in result.inputs] == ["x"] and [r.key for r in result.outputs] == ["y"]
    record = provenance(result.version_dir)
    assert record["signature_defs_metadata"] == "added from the model's signature predict"
    goldens = Goldens.load(result.version_dir / GOLDENS_FILE)
    np.testing.assert_allclose(served_outputs(result.version_dir, goldens.inputs)["y"], goldens.inputs["x"])


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        # Several, none named serving_default: which one to serve is the user's call.
        (["predict", "classify"], r"has signatures classify, predict and none named serving_default"),
        # serving_default runs its own subgraph, the second: TF Serving runs the first only.
        (["serving_default", "predict"], r"signature serving_default of the TFLite model runs its subgraph 1"),
    ],
)
def test_signatures_tf_serving_cannot_serve_are_refused(tmp_path: Path, keys: list[str], message: str) -> None:
    source = write_multi_signature_tflite(tmp_path / "several.tflite", keys)
    with pytest.raises(SourceError, match=message) as raised:
        convert(source, ConvertOptions(name="lite", output_dir=tmp_path / "out"))
    assert "\n" not in str(raised.value)
    assert_nothing_written(tmp_path / "out")


def test_signature_defs_metadata_is_kept_and_every_signature_proven(sources: dict[str, Path], tmp_path: Path) -> None:
    content = sources["signature"].read_bytes()
    signatures = signature_defs_from_native(content, {"serving_default": "serving_default"})
    # A second signature of the same tensors, its own keys: served and proven too.
    other = signatures["serving_default"].__class__()
    other.CopyFrom(signatures["serving_default"])
    other.inputs["left"].CopyFrom(other.inputs.pop("a"))
    del other.outputs["total"]
    source = tmp_path / "metadata.tflite"
    source.write_bytes(with_signature_defs(content, {**signatures, "left_only": other}))
    result = convert(source, ConvertOptions(name="lite", output_dir=tmp_path / "out"))
    assert (result.version_dir / "model.tflite").read_bytes() == source.read_bytes()
    assert result.signatures == ["left_only", "serving_default"]
    record = provenance(result.version_dir)
    assert record["signature_defs_metadata"] == "the source's, unchanged"
    assert record["tensors"]["left_only"]["inputs"] == {"left": "serving_default_a:0", "b": "serving_default_b:0"}


def test_metadata_without_serving_default_is_refused(sources: dict[str, Path], tmp_path: Path) -> None:
    content = sources["signature"].read_bytes()
    source = tmp_path / "predict.tflite"
    source.write_bytes(
        with_signature_defs(content, signature_defs_from_native(content, {"serving_default": "predict"}))
    )
    with pytest.raises(
        SourceError, match=r"no serving_default signature in its signature_defs_metadata \(its signatures: predict\)"
    ):
        convert(source, ConvertOptions(name="lite", output_dir=tmp_path / "out"))
    assert_nothing_written(tmp_path / "out")


def test_metadata_naming_an_unknown_tensor_is_refused_on_one_line(sources: dict[str, Path], tmp_path: Path) -> None:
    content = sources["signature"].read_bytes()
    signatures = signature_defs_from_native(content, {"serving_default": "serving_default"})
    signatures["serving_default"].inputs["a"].name = "nowhere:0"
    source = tmp_path / "unknown.tflite"
    source.write_bytes(with_signature_defs(content, signatures))
    with pytest.raises(SourceError) as raised:
        convert(source, ConvertOptions(name="lite", output_dir=tmp_path / "out"))
    assert str(raised.value).endswith(
        "cannot serve " + str(source) + ": Unknown tensor 'nowhere:0'.; Signature input a references an unknown tensor"
    )
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"inputs": ["a"]}, "--inputs"),
        ({"constants": ["keep_prob=1.0"]}, "--constant"),
        ({"towers": "merge"}, "--towers"),
        ({"batchnorm": "inference"}, "--batchnorm"),
        ({"allow_random": True}, "--allow-random"),
        ({"allowed_ops": ["ReadFile"]}, "--allow-op"),
    ],
)
def test_graph_flags_are_refused(sources: dict[str, Path], tmp_path: Path, flags: dict[str, Any], named: str) -> None:
    with pytest.raises(UsageError, match=f"^{named} does not apply to a .tflite source"):
        convert(sources["signature"], ConvertOptions(name="lite", output_dir=tmp_path, **flags))
    assert_nothing_written(tmp_path)


def test_the_cli_refuses_a_source_flag(sources: dict[str, Path], tmp_path: Path, tfpack_cli: Any) -> None:
    result = tfpack_cli("convert", sources["signature"], "--name", "lite", "--output-dir", tmp_path, "--unsafe")
    assert result.exit_code == 2 and "--unsafe does not apply to a .tflite source" in result.stderr


def test_a_missing_litert_names_the_extra(
    sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import packager.formats.tflite as formats_tflite

    def missing() -> None:
        raise UsageError(formats_tflite.MISSING_EXTRA)

    monkeypatch.setattr(formats_tflite, "require_litert", missing)
    with pytest.raises(UsageError, match=r"pip install 'tfpack\[tflite\]'"):
        convert(sources["signature"], ConvertOptions(name="lite", output_dir=tmp_path))
    assert_nothing_written(tmp_path)


def test_the_helper_source_for_image_tests_converts(sources: dict[str, Path], tmp_path: Path) -> None:
    result = convert(sources["half_plus_two"], ConvertOptions(name="half_plus_two", output_dir=tmp_path))
    goldens = Goldens.load(result.version_dir / GOLDENS_FILE)
    np.testing.assert_allclose(goldens.outputs["y"], 0.5 * goldens.inputs["x"] + 2.0, rtol=1e-6)


# Review of the TFLite parts (issue 15): metadata that is not the model's is refused.
def _with_metadata(sources: dict[str, Path], tmp_path: Path, change: Any) -> Path:
    """The two-input model with its serving_default written into its metadata, changed by ``change``."""
    content = sources["signature"].read_bytes()
    signatures = signature_defs_from_native(content, {"serving_default": "serving_default"})
    change(signatures["serving_default"])
    source = tmp_path / "changed.tflite"
    source.write_bytes(with_signature_defs(content, signatures))
    return source


def _swap_inputs(signature: Any) -> None:
    a, b = signature.inputs["a"].name, signature.inputs["b"].name
    signature.inputs["a"].name, signature.inputs["b"].name = b, a


def _add_second_key(signature: Any) -> None:
    signature.inputs["a2"].CopyFrom(signature.inputs["a"])


def _declare_width_7(signature: Any) -> None:
    del signature.inputs["a"].tensor_shape.dim[:]
    signature.inputs["a"].tensor_shape.dim.add(size=-1)
    signature.inputs["a"].tensor_shape.dim.add(size=7)


def _declare_int32(signature: Any) -> None:
    signature.outputs["total"].dtype = tf.int32.as_datatype_enum


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # Finding 2: the metadata's keys name other tensors than the model's own signature.
        (
            _swap_inputs,
            "disagrees with the model's own signature serving_default on inputs a (metadata: serving_default_b:0, "
            "model: serving_default_a:0), b",
        ),
        # Finding 3: an input left unfed (uninitialised memory), a tensor fed under two keys.
        (lambda s: s.inputs.pop("b"), "leaves interpreter input serving_default_b:0 unfed"),
        (_add_second_key, "feeds tensor serving_default_a:0 twice (inputs a and a2)"),
        # Finding 4: a shape or dtype the tensor does not have.
        (_declare_width_7, "declares input a with shape [-1, 7], its tensor serving_default_a:0 has shape [-1, 3]"),
        (_declare_int32, "declares output total int32, its tensor PartitionedCall:1 is float32"),
    ],
)
def test_metadata_that_is_not_the_models_is_refused(
    sources: dict[str, Path], tmp_path: Path, tfpack_cli: Any, change: Any, message: str
) -> None:
    source = _with_metadata(sources, tmp_path, change)
    result = tfpack_cli("convert", source, "--name", "lite", "--output-dir", tmp_path / "out")
    assert result.exit_code == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("tfpack: error:")]
    assert len(error) == 1 and message in error[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_metadata_declaring_a_free_batch_over_a_fixed_one_is_refused(tmp_path: Path, tfpack_cli: Any) -> None:
    """Second review: a [1, 3] model that mixes the rows of its batch, its metadata declaring
    [-1, 3] under the model's own keys and tensors. Accepted, the goldens would run batch 1 only
    and a client's batch of two would get each row mixed with the other."""
    module = tf.Module()
    module.serving_default = tf.function(
        lambda x: {"y": x - tf.reduce_mean(x, axis=0) + tf.reduce_sum(x)},
        input_signature=[tf.TensorSpec([1, 3], tf.float32, name="x")],
    )
    concrete = module.serving_default.get_concrete_function()
    content = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module).convert()
    signatures = signature_defs_from_native(content, {"serving_default": "serving_default"})
    for tensors in (signatures["serving_default"].inputs, signatures["serving_default"].outputs):
        for info in tensors.values():
            info.tensor_shape.dim[0].size = -1
    source = tmp_path / "free_batch.tflite"
    source.write_bytes(with_signature_defs(content, signatures))

    result = tfpack_cli("convert", source, "--name", "lite", "--output-dir", tmp_path / "out")

    assert result.exit_code == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("tfpack: error:")]
    assert len(error) == 1 and "with shape [-1, 3]" in error[0] and "has shape [1, 3]" in error[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_a_method_name_tf_serving_only_checks_on_request_converts_and_its_warmup_replays(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    """Finding 5: TF Serving checks method_name only with --enable_signature_method_name_check
    (off by default); the proof replays the warmup file through the Predict handler."""
    source = _with_metadata(sources, tmp_path, lambda s: setattr(s, "method_name", "tensorflow/serving/predict_v2"))
    result = convert(source, ConvertOptions(name="lite", output_dir=tmp_path / "out"))
    assert result.version_dir.is_dir()

    from serving.examples import ExampleInference
    from serving.inference import Inference
    from serving.manager import LoadPolicy, ModelManager
    from serving.servables import LoadError
    from serving.warmup import Warmup

    servable = load_tflite_servable("lite", 1, result.version_dir)
    manager = ModelManager(LoadPolicy())
    Warmup(Inference(manager), ExampleInference(manager))(servable)
    checking = Warmup(Inference(manager, check_method_names=True), ExampleInference(manager))
    with pytest.raises(LoadError, match="Expected prediction signature method_name to be one of"):
        checking(servable)


def test_unreadable_metadata_is_one_line_exit_2(sources: dict[str, Path], tmp_path: Path, tfpack_cli: Any) -> None:
    """Finding 6: a metadata map the flexbuffers reader raises KeyError on (the reviewer's fuzz case)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(sources["signature"].read_bytes()))
    model.buffers.append(schema.BufferT(data=np.frombuffer(bytes.fromhex(KEY_ERROR_METADATA), np.uint8)))
    model.metadata = [
        *(model.metadata or []),
        schema.MetadataT(name=SIGNATURE_DEFS_METADATA, buffer=len(model.buffers) - 1),
    ]
    source = tmp_path / "keyerr.tflite"
    source.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    result = tfpack_cli("convert", source, "--name", "lite", "--output-dir", tmp_path / "out")
    assert result.exit_code == 2, result.stderr
    assert "Error reading signature def map: KeyError" in result.stderr and result.stderr.count("\n") == 1


# The flexbuffer the reviewer's fuzzer found: its root's type byte is no flexbuffers type.
KEY_ERROR_METADATA = "cd90095066a745addb6d8831c2b0f87821142b4456556d89aa82bcadae3a9578fa4535a414d025c2"


def test_outputs_sharing_a_key_without_a_signature_are_refused(tmp_path: Path) -> None:
    """Finding 9: TF1 top_k's values and indices, TopKV2 and TopKV2:1, share the key TopKV2."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 5], name="x")
        values, indices = tf.math.top_k(x, k=2)
        with v1.Session(graph=graph) as session:
            content = v1.lite.TFLiteConverter.from_session(session, [x], [values, indices]).convert()
    source = tmp_path / "topk.tflite"
    source.write_bytes(content)
    with pytest.raises(
        SourceError, match=r"outputs TopKV2, TopKV2:1 share the key TopKV2 .* convert it with a signature"
    ):
        convert(source, ConvertOptions(name="lite", output_dir=tmp_path / "out"))
    assert_nothing_written(tmp_path / "out")


def test_a_string_input_of_rank_2_is_refused(tmp_path: Path) -> None:
    """Finding 7: TF Serving resizes a string input to [batch]."""
    from factories.tflite_models import _convert_function

    source = tmp_path / "strings.tflite"
    source.write_bytes(
        _convert_function(
            lambda s: {"y": tf.cast(tf.equal(s, "a"), tf.float32)}, [tf.TensorSpec([None, 2], tf.string, name="s")]
        )
    )
    with pytest.raises(SourceError, match=r"string input s of signature serving_default has shape \[None, 2\]"):
        convert(source, ConvertOptions(name="lite", output_dir=tmp_path / "out", batch_dependent=True))
    assert_nothing_written(tmp_path / "out")


def test_a_quantized_integer_input_needs_sample_inputs(tmp_path: Path) -> None:
    """Finding 8: generated integers ignore an int8 input's scale and zero point."""
    module = tf.Module()
    module.f = tf.function(
        lambda x: {"y": tf.nn.relu(x * 0.7 - 0.1)}, input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")]
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.f.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    converter.representative_dataset = lambda: ([rng.uniform(-1, 1, (1, 4)).astype(np.float32)] for _ in range(20))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    source = tmp_path / "int8.tflite"
    source.write_bytes(converter.convert())
    with pytest.raises(SourceError, match=r"input x is quantized \(scale .*, zero point .*\).* give --sample-inputs"):
        convert(source, ConvertOptions(name="lite", output_dir=tmp_path / "out", batch_dependent=True))
    assert_nothing_written(tmp_path / "out")
