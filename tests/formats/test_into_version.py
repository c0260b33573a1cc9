"""TFLite version dirs end to end: ``tfpack export --format tflite --into-version`` places model.tflite
in a version dir; layout, sign, the op scan, contract, build and smoke accept a version dir holding
model.tflite (with or without a SavedModel beside it), and the image serves it through TF Serving's
TFLite path (--prefer_tflite_model)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import new_image_tag, run_tfpack_in_process
from factories.image_layout import baked_layout
from factories.tflite_models import as_tf_serving_serves_it, write_tflite_source, write_two_input_tflite

from packager.contract import read_contract, read_saved_model_contract
from packager.convert import ConvertOptions, convert
from packager.errors import SourceError, UsageError
from packager.formats.into_version import PROVENANCE_KEY
from packager.image import build_image, find_models, image_labels, prefers_tflite, scan_models
from packager.layout import (
    PROVENANCE_FILE,
    SIGNATURE_FILE,
    STATEMENT_FILE,
    TFLITE_MODEL_FILE,
    Provenance,
    is_version_dir,
    require_version_dir,
    served_format,
)
from packager.provenance import model_root_digest, read_provenance_statement, write_provenance_statement
from packager.signing import sign, verify
from packager.tf_runtime import tensorflow
from packager.version_scan import CUSTOM_OP, scan_tflite_model
from serving.entrypoint import TF_SERVING_SERVER, BakedServing, check_arguments, prepare
from serving.tflite import load_tflite_servable
from tests.formats import support

MODEL = "half"
LITE = "lite"
SYNTHESISED = "synthesised"
PREFER_LABEL = "dev.tfpack.prefer-tflite-model"
FunctionOfX = Callable[..., object]


def _half_plus_two(x):  # type: ignore[no-untyped-def]
    return x * 0.5 + 2.0


def _twice(x):  # type: ignore[no-untyped-def]
    return x * 2.0


def _module(function_of_x: FunctionOfX):  # type: ignore[no-untyped-def]
    """A tf.Module whose serve maps x [None, 4] float32 to {"y": function_of_x(x)}."""
    tf = tensorflow()

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):  # type: ignore[no-untyped-def]
            return {"y": function_of_x(x)}

    return Model()


def write_tflite(path: Path, function_of_x: FunctionOfX) -> Path:
    """A TFLite model whose serving_default maps x [None, 4] float32 to {"y": function_of_x(x)}:
    the signature of the converted half-plus-two, another function if asked."""
    tf = tensorflow()
    model = _module(function_of_x)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.serve.get_concrete_function()], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    path.write_bytes(as_tf_serving_serves_it(converter.convert()))
    return path


def _reading_a_file(x):  # type: ignore[no-untyped-def]
    """y = x plus the length of a file on the server: a Select TF op (FlexReadFile) in TFLite."""
    tf = tensorflow()
    return x + tf.cast(tf.strings.length(tf.io.read_file("/etc/hostname")), tf.float32)


def _copy(version_dir: Path, root: Path, name: str = MODEL, version: int = 1) -> Path:
    target = root / name / str(version)
    shutil.copytree(version_dir, target)
    return target


def _rewrite_statement(version_dir: Path) -> None:
    """What a tool that changed the model files must do before signing: the in-toto statement's
    subject covers every file."""
    write_provenance_statement(version_dir, Provenance.load(version_dir / PROVENANCE_FILE))


def _tflite_only(placed: Path, root: Path, name: str = LITE) -> Path:
    """A TFLite version dir (model.tflite and assets.extra, no SavedModel), the layout
    ``tfpack convert model.tflite`` writes, made from a dir --into-version wrote."""
    target = _copy(placed, root, name)
    (target / "saved_model.pb").unlink()
    shutil.rmtree(target / "variables")
    _rewrite_statement(target)
    return target


def _into_version(version_dir: Path, *flags: str):  # type: ignore[no-untyped-def]
    return run_tfpack_in_process("export", version_dir, "--format", "tflite", "--into-version", *flags)


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("tfpack: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """half-plus-two converted by tfpack: a SavedModel version dir (never changed by the tests)."""
    tf = tensorflow()
    root = tmp_path_factory.mktemp("into-version")
    model = _module(_half_plus_two)
    tf.saved_model.save(model, str(root / "source"), signatures={"serving_default": model.serve})
    return convert(root / "source", ConvertOptions(name=MODEL, output_dir=root / "models")).version_dir


@pytest.fixture(scope="module")
def placed(converted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``converted`` with model.tflite placed in it by --into-version (unsigned)."""
    version_dir = _copy(converted, tmp_path_factory.mktemp("placed"))
    result = _into_version(version_dir)
    assert result.exit_code == 0, result.stderr
    return version_dir


@pytest.fixture(scope="module")
def twice_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = 2x with half-plus-two's signature: the TFLite model of another function."""
    return write_tflite(tmp_path_factory.mktemp("twice") / TFLITE_MODEL_FILE, _twice)


# --- without Docker --------------------------------------------------------------------------------


@pytest.mark.fast
def test_into_version_writes_model_tflite_that_the_runtime_serves(converted: Path, tmp_path: Path) -> None:
    version_dir = _copy(converted, tmp_path)
    result = _into_version(version_dir, "--json")

    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["path"] == str(version_dir / TFLITE_MODEL_FILE) and report["into_version"] is True
    assert report["format"] == "tflite" and report["quantize"] == "none"
    assert set(report["served_max_abs_error"]) == {"y"} and report["served_max_abs_error"]["y"] <= report["tolerance"]
    assert served_format(version_dir) == "tflite"
    # The runtime's own loader, on inputs other than the goldens, answers as the SavedModel does.
    feeds = support.fresh_feeds(version_dir, rows=3, seed=5)
    servable = load_tflite_servable(MODEL, 1, version_dir)
    signature = servable.signature_defs["serving_default"]
    (got,) = servable.run({signature.inputs["x"].name: feeds["x"]}, [signature.outputs["y"].name])
    np.testing.assert_allclose(got, support.serve_saved_model(version_dir, feeds)["y"], rtol=1e-5)
    # One contract: what is served from model.tflite is what the SavedModel promised.
    assert (
        read_contract(version_dir).to_json()["signatures"]
        == read_saved_model_contract(version_dir).to_json()["signatures"]
    )
    # The provenance says so, and its statement covers model.tflite (verify checks its subject).
    provenance = Provenance.load(version_dir / PROVENANCE_FILE)
    assert provenance.extra[PROVENANCE_KEY]["sha256"] == report["sha256"]
    statement = read_provenance_statement(version_dir)
    assert statement["subject"][0]["digest"]["sha256"] == model_root_digest(version_dir)


@pytest.mark.fast
def test_a_placed_version_dir_signs_verifies_and_exports_again_after_signing_is_refused(
    placed: Path, signing_keys: dict[str, Path], tmp_path: Path
) -> None:
    version_dir = _copy(placed, tmp_path)
    signed = sign(version_dir, signing_keys["private"])
    assert signed.files == sum(1 for p in version_dir.rglob("*") if p.is_file()) - 1  # all but model.sig
    assert verify(version_dir, signing_keys["public"]).digest == signed.digest

    before = sorted(p.name for p in version_dir.iterdir())
    result = _into_version(version_dir)
    assert result.exit_code == 2
    assert "is signed (model.sig)" in _one_error_line(result.stderr) and "sign after" in result.stderr
    assert sorted(p.name for p in version_dir.iterdir()) == before


@pytest.mark.fast
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--quantize", "dynamic"], "a quantized model is a different model"),
        (["--output-dir", "OUT"], "give --output-dir DIR or --into-version, not both"),
        (["--tolerance", "0.5"], "looser than the tolerance the conversion met"),
    ],
)
def test_into_version_refusals_write_nothing(flags: list[str], message: str, converted: Path, tmp_path: Path) -> None:
    version_dir = _copy(converted, tmp_path)
    flags = [str(tmp_path / "out") if flag == "OUT" else flag for flag in flags]
    result = _into_version(version_dir, *flags)
    assert result.exit_code == 2
    assert message in _one_error_line(result.stderr)
    assert not (version_dir / TFLITE_MODEL_FILE).exists() and not (tmp_path / "out").exists()


@pytest.mark.fast
def test_into_version_is_for_tflite_and_needs_a_destination(converted: Path, tmp_path: Path) -> None:
    version_dir = _copy(converted, tmp_path)
    other = run_tfpack_in_process("export", version_dir, "--format", "frozen-pb", "--into-version")
    assert other.exit_code == 2 and "--format tflite only" in _one_error_line(other.stderr)
    neither = run_tfpack_in_process("export", version_dir, "--format", "tflite")
    assert neither.exit_code == 2 and "give --output-dir DIR" in _one_error_line(neither.stderr)
    assert sorted(p.name for p in version_dir.iterdir()) == sorted(p.name for p in converted.iterdir())


@pytest.mark.fast
def test_a_saved_model_with_other_signatures_is_refused(converted: Path, tmp_path: Path) -> None:
    """Served from model.tflite, the version would serve serving_default only."""
    tf = tensorflow()
    version_dir = _copy(converted, tmp_path)
    model = _module(_half_plus_two)
    scratch = tmp_path / "two-signatures"
    tf.saved_model.save(model, str(scratch), signatures={"serving_default": model.serve, "double": model.serve})
    shutil.copyfile(scratch / "saved_model.pb", version_dir / "saved_model.pb")
    _rewrite_statement(version_dir)  # else refused first as changed after convert (exit 3)

    result = _into_version(version_dir)
    assert result.exit_code == 2
    assert "serves signatures double besides serving_default" in _one_error_line(result.stderr)
    assert not (version_dir / TFLITE_MODEL_FILE).exists()


@pytest.mark.fast
def test_an_unsigned_model_tflite_is_replaced_and_a_failed_served_proof_puts_it_back(
    converted: Path, twice_tflite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version_dir = _copy(converted, tmp_path)
    shutil.copyfile(twice_tflite, version_dir / TFLITE_MODEL_FILE)  # another model, unsigned
    # Unrecorded, it is refused (the statement describes other files); recorded, it is replaced.
    assert _into_version(version_dir).exit_code == 3
    _rewrite_statement(version_dir)
    result = _into_version(version_dir, "--json")
    assert result.exit_code == 0, result.stderr
    placed = (version_dir / TFLITE_MODEL_FILE).read_bytes()
    assert placed != twice_tflite.read_bytes()
    records = {name: (version_dir / name).read_bytes() for name in (PROVENANCE_FILE, STATEMENT_FILE)}

    # The model server's loader serving another model than the one written (y = 2x): exit 3,
    # and what was there before is back, byte for byte.
    import serving.tflite

    real_loader = serving.tflite.load_tflite_servable

    def serving_another_model(name: str, version: int, directory: Path):  # type: ignore[no-untyped-def]
        other = tmp_path / "other"
        other.mkdir(exist_ok=True)
        shutil.copyfile(twice_tflite, other / TFLITE_MODEL_FILE)
        return real_loader(name, version, other)

    monkeypatch.setattr(serving.tflite, "load_tflite_servable", serving_another_model)
    failed = _into_version(version_dir)
    assert failed.exit_code == 3
    error = _one_error_line(failed.stderr)
    assert "as the model server serves it" in error and "output 'y' differs" in error
    assert "the earlier one was put back" in error
    assert (version_dir / TFLITE_MODEL_FILE).read_bytes() == placed
    assert all((version_dir / name).read_bytes() == content for name, content in records.items())


@pytest.mark.fast
def test_a_tflite_only_version_dir_is_a_version_dir_signed_verified_and_contracted(
    placed: Path, signing_keys: dict[str, Path], tmp_path: Path
) -> None:
    version_dir = _tflite_only(placed, tmp_path)
    assert is_version_dir(version_dir) and served_format(version_dir) == "tflite"
    assert require_version_dir(version_dir) == version_dir.resolve()
    empty = tmp_path / "empty" / "1"
    empty.mkdir(parents=True)
    with pytest.raises(UsageError, match=r"holds no saved_model.pb \(nor model.tflite\)"):
        require_version_dir(empty)

    result = run_tfpack_in_process("sign", version_dir, "--key", signing_keys["private"])
    assert result.exit_code == 0, result.stderr
    assert run_tfpack_in_process("verify", version_dir, "--public-key", signing_keys["public"]).exit_code == 0
    # Its contract is what the runtime serves from model.tflite; the same as the SavedModel's, so
    # moving from the SavedModel version to it breaks nothing.
    assert read_contract(version_dir).signatures == read_contract(placed).signatures
    diff = run_tfpack_in_process("contract", "diff", placed, version_dir)
    assert diff.exit_code == 0, diff.stderr
    assert run_tfpack_in_process("export", version_dir, "--format", "tflite", "--into-version").exit_code == 2


@pytest.mark.fast
def test_the_op_scan_reads_model_tflite_select_tf_ops(
    placed: Path, signing_keys: dict[str, Path], tmp_path: Path
) -> None:
    """A FlexReadFile in model.tflite is a ReadFile: sign and build refuse it as in a SavedModel."""
    version_dir = _copy(placed, tmp_path)
    write_tflite(version_dir / TFLITE_MODEL_FILE, _reading_a_file)
    _rewrite_statement(version_dir)

    refused = run_tfpack_in_process("sign", version_dir, "--key", signing_keys["private"])
    assert refused.exit_code == 2
    error = _one_error_line(refused.stderr)
    assert "ReadFile (subgraph 0 op" in error and "--allow-op ReadFile" in error
    with pytest.raises(UsageError, match=r"denied ops on the serving path: ReadFile"):
        scan_models(find_models(version_dir.parent), {})
    vouched = run_tfpack_in_process("sign", version_dir, "--key", signing_keys["private"], "--allow-op", "ReadFile")
    assert vouched.exit_code == 0, vouched.stderr


@pytest.mark.fast
def test_custom_ops_in_model_tflite_are_denied_and_random_builtins_noticed(tmp_path: Path) -> None:
    tf = tensorflow()
    model = _module(lambda x: tf.math.cumprod(x, axis=1) + tf.random.uniform([1]))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.serve.get_concrete_function()], model)
    converter.allow_custom_ops = True  # Cumprod, which has no builtin, as a custom op "Cumprod"
    path = tmp_path / TFLITE_MODEL_FILE
    path.write_bytes(converter.convert())

    result = scan_tflite_model(path)
    assert [(f.op_type, f.reason) for f in result.blocking] == [("Cumprod", CUSTOM_OP)]
    assert [f.op_type for f in result.notices] == ["RANDOM_UNIFORM"]
    assert not scan_tflite_model(path, frozenset({"Cumprod"})).blocking
    (tmp_path / "garbage.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(SourceError, match="is not a TFLite model"):
        scan_tflite_model(tmp_path / "garbage.tflite")


@pytest.mark.fast
def test_the_tf_serving_base_runs_with_prefer_tflite_model(
    converted: Path, placed: Path, signing_keys: dict[str, Path], tmp_path: Path
) -> None:
    """tensorflow/serving cannot be pulled here: its command line, as its entrypoint builds it
    from what the build bakes, is checked without Docker."""
    models = tmp_path / "models"
    for name, source in ((MODEL, converted), (LITE, placed)):
        sign(_copy(source, models, name), signing_keys["private"])
    found = find_models(models)
    assert prefers_tflite(found) and not prefers_tflite({MODEL: found[MODEL]})

    layout = baked_layout(
        tmp_path, signing_keys["public"], TF_SERVING_SERVER, prefer_tflite_model=prefers_tflite(found)
    )
    baked = BakedServing.loads(layout.serving_file.read_text())
    assert baked.prefer_tflite_model and json.loads(layout.serving_file.read_text())["prefer_tflite_model"] is True
    command = prepare([], {}, layout)
    assert command[0] == "/usr/bin/tensorflow_model_server" and "--prefer_tflite_model=true" in command
    # Run time cannot turn it off: the smoke test checked the model.tflite being served.
    _, problems = check_arguments(["--prefer_tflite_model=false"], TF_SERVING_SERVER, baked=baked)
    assert problems == [
        "--prefer_tflite_model=false: the image sets --prefer_tflite_model=true itself "
        "(built with tfpack build from a version dir holding model.tflite)"
    ]
    labels = image_labels(
        found, {}, tag="t/x:1", base="tensorflow/serving:2.21.0", model_server=TF_SERVING_SERVER,
        allow_unsigned=False, public_key_pem=None, serving=baked,
    )  # fmt: skip
    assert labels[PREFER_LABEL] == "true"
    # A SavedModel served alone: no flag, no label.
    _copy(converted, tmp_path / "plain" / "models")
    plain = baked_layout(tmp_path / "plain", None, TF_SERVING_SERVER, allow_unsigned=True)
    assert not any(flag.startswith("--prefer_tflite_model") for flag in prepare([], {}, plain))
    without = BakedServing.loads(plain.serving_file.read_text())
    assert PREFER_LABEL not in image_labels(
        {MODEL: found[MODEL]}, {}, tag="t/x:1", base="b", model_server=TF_SERVING_SERVER,
        allow_unsigned=True, public_key_pem=None, serving=without,
    )  # fmt: skip


# --- with Docker ---------------------------------------------------------------------------------


def _smoke(tag: str):  # type: ignore[no-untyped-def]
    return run_tfpack_in_process("smoke", tag, "--requests", "5", "--timeout", "300", "--json")


@pytest.mark.docker
def test_placed_and_converted_tflite_dirs_build_and_pass_smoke_served_as_tflite(
    placed: Path, signing_keys: dict[str, Path], image_tags: list[str], tmp_path: Path
) -> None:
    """One image: a SavedModel dir with model.tflite placed in it, and two TFLite version dirs
    ``tfpack convert model.tflite`` wrote (with a SignatureDef; without one, so TF Serving
    synthesises serving_default from the interpreter's tensors)."""
    models = tmp_path / "models"
    sign(_copy(placed, models), signing_keys["private"])
    for name, source in (
        (LITE, write_tflite_source(tmp_path / "lite.tflite")),
        (SYNTHESISED, write_two_input_tflite(tmp_path / "two.tflite", with_signature=False)),
    ):
        version_dir = convert(source, ConvertOptions(name=name, output_dir=models)).version_dir
        assert sorted(p.name for p in version_dir.iterdir()) == ["assets.extra", TFLITE_MODEL_FILE]
        sign(version_dir, signing_keys["private"])
    result = build_image(models, new_image_tag(image_tags, "tflite"), public_key=signing_keys["public"])

    assert result.labels[PREFER_LABEL] == "true"
    assert result.serving is not None and result.serving.prefer_tflite_model
    smoke = _smoke(result.tag)
    assert smoke.exit_code == 0, smoke.stdout + smoke.stderr
    report = json.loads(smoke.stdout)
    assert report["passed"] and report["models"] == {MODEL: [1], LITE: [1], SYNTHESISED: [1]}
    checked = {(check["name"], check["subject"].split("/")[0]) for check in report["checks"]}
    for model in (MODEL, LITE, SYNTHESISED):
        assert {("grpc_signature", model), ("grpc_predict", model), ("rest_predict", model)} <= checked


@pytest.mark.docker
def test_the_image_serves_model_tflite_not_the_saved_model_beside_it(
    placed: Path, twice_tflite: Path, signing_keys: dict[str, Path], image_tags: list[str], tmp_path: Path
) -> None:
    """model.tflite replaced (before signing) by y = 2x with the same signature: the SavedModel
    beside it still computes the goldens, so only a server serving the TFLite fails them."""
    version_dir = _copy(placed, tmp_path / "models")
    shutil.copyfile(twice_tflite, version_dir / TFLITE_MODEL_FILE)
    _rewrite_statement(version_dir)
    sign(version_dir, signing_keys["private"])
    result = build_image(version_dir.parent, new_image_tag(image_tags, "twice"), public_key=signing_keys["public"])

    smoke = _smoke(result.tag)
    assert smoke.exit_code == 4, smoke.stdout + smoke.stderr
    report = json.loads(smoke.stdout)
    failed = [check for check in report["checks"] if not check["passed"]]
    assert failed and failed[0]["name"] == "grpc_predict", failed
    assert "'y' differs" in failed[0]["detail"], failed[0]["detail"]
    assert {check["name"] for check in report["checks"] if check["passed"]} >= {"grpc_signature"}
    assert SIGNATURE_FILE in {p.name for p in version_dir.iterdir()}


def test_into_version_refuses_a_saved_model_swapped_after_convert(converted: Path, tmp_path: Path) -> None:
    """Review finding 1: a SavedModel put in the dir after convert is not vouched for by the
    statement --into-version writes again: exit 3 before converting, nothing written."""
    tf = tensorflow()
    version_dir = _copy(converted, tmp_path)
    swapped = _module(_twice)
    shutil.rmtree(version_dir / "variables")
    (version_dir / "saved_model.pb").unlink()
    tf.saved_model.save(swapped, str(tmp_path / "swap"), signatures={"serving_default": swapped.serve})
    shutil.copytree(tmp_path / "swap", version_dir, dirs_exist_ok=True)
    statement = (version_dir / STATEMENT_FILE).read_bytes()
    result = _into_version(version_dir)
    assert result.exit_code == 3, result.stderr
    assert "describes other model files" in _one_error_line(result.stderr)
    assert not (version_dir / TFLITE_MODEL_FILE).exists()
    assert (version_dir / STATEMENT_FILE).read_bytes() == statement
