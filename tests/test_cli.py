"""The CLI contract: exit codes, one-line errors without tracebacks, nothing written on failure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_tfpack_process
from factories.sources import write_frozen_classifier, write_keras3


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("good")
    saved_model_root = tmp_path_factory.mktemp("sm")
    frozen = write_frozen_classifier(root / "classifier.pb")
    from packager.convert import ConvertOptions, convert

    saved_model = convert(frozen, ConvertOptions(name="classifier", output_dir=saved_model_root)).version_dir
    return {"frozen": frozen, "keras": write_keras3(root / "multi.keras"), "saved_model": saved_model}


def _broken_sources(root: Path, good: dict[str, Path]) -> dict[str, Path]:
    """Every kind of broken source issue 2 names, made from the good ones."""
    rng_bytes = bytes(range(256)) * 7
    cases = {
        "random_pb": ("model.pb", rng_bytes),
        "random_h5": ("model.h5", rng_bytes),
        "random_keras": ("model.keras", rng_bytes),
        "empty_file": ("empty.pb", b""),
        "truncated_pb": ("trunc.pb", good["frozen"].read_bytes()[:200]),
        "truncated_keras": ("trunc.keras", good["keras"].read_bytes()[:500]),
        "unknown_suffix": ("model.onnx", b"onnx"),
    }
    paths = {}
    for case, (name, data) in cases.items():
        path = root / case / name
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        paths[case] = path
    paths["empty_dir"] = root / "empty_dir"
    paths["empty_dir"].mkdir()
    corrupt = root / "corrupt_saved_model"
    shutil.copytree(good["saved_model"], corrupt)
    (corrupt / "saved_model.pb").write_bytes(b"\x0a\xff\xff garbage")
    paths["corrupt_saved_model"] = corrupt
    paths["missing"] = root / "does-not-exist.pb"
    return paths


BROKEN = [
    "random_pb",
    "random_h5",
    "random_keras",
    "empty_file",
    "truncated_pb",
    "truncated_keras",
    "unknown_suffix",
    "empty_dir",
    "corrupt_saved_model",
    "missing",
]


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory, good) -> dict[str, Path]:
    return _broken_sources(tmp_path_factory.mktemp("broken"), good)


def assert_clean_usage_error(result, output_dir: Path) -> None:
    assert result.exit_code == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfpack: error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not output_dir.exists(), f"{output_dir} was written: {list(output_dir.rglob('*'))}"


@pytest.mark.parametrize("case", BROKEN)
def test_broken_source_exits_2_with_one_line_and_writes_nothing(case: str, broken, tfpack_cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = tfpack_cli("convert", broken[case], "--name", "m", "--output-dir", out)
    assert_clean_usage_error(result, out)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--inputs", "featurez"], "closest: features"),
        (["--outputs", "model/prob"], "closest: model/probs"),
        (["--name", "../x"], "not a plain model name"),
        (["--name", "a/b"], "not a plain model name"),
    ],
)
def test_bad_names_exit_2(flags: list[str], expected: str, good, tfpack_cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["convert", good["frozen"], "--output-dir", out, *flags]
    if "--name" not in flags:
        args += ["--name", "m"]
    result = tfpack_cli(*args)
    assert_clean_usage_error(result, out)
    assert expected in result.stderr


@pytest.mark.parametrize("flags", [["--version", "0"], ["--tolerance", "-1"], ["--version", "x"], ["--bogus"]])
def test_invalid_flag_values_exit_2(flags: list[str], good, tfpack_cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = tfpack_cli("convert", good["frozen"], "--name", "m", "--output-dir", out, *flags)
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr and not out.exists()


def test_existing_version_is_refused_and_kept(good, tfpack_cli, tmp_path: Path) -> None:
    assert tfpack_cli("convert", good["frozen"], "--name", "m", "--output-dir", tmp_path).exit_code == 0
    marker = tmp_path / "m" / "1" / "saved_model.pb"
    before = marker.read_bytes()
    result = tfpack_cli("convert", good["frozen"], "--name", "m", "--output-dir", tmp_path, "--version", "1")
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert marker.read_bytes() == before


def test_an_unexpected_exception_is_reported_as_a_bug_with_exit_1(
    good, tfpack_cli, tmp_path: Path, monkeypatch
) -> None:
    import packager.convert

    def broken_convert(*args, **kwargs):
        raise RuntimeError("simulated defect")

    monkeypatch.setattr(packager.convert, "convert", broken_convert)
    result = tfpack_cli("convert", good["frozen"], "--name", "m", "--output-dir", tmp_path / "o")
    assert result.exit_code == 1
    assert "internal error (a bug in tfpack" in result.stderr and "simulated defect" in result.stderr
    assert "Traceback" not in result.stderr


def test_inspect_json(good, tfpack_cli) -> None:
    result = tfpack_cli("inspect", good["keras"], "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "keras"
    assert [i["key"] for i in report["inputs"]] == ["features", "extra"]
    assert report["details"]["keras_version"].startswith("3.")


def test_real_process_converts_and_prints_json(good, tmp_path: Path) -> None:
    """The installed console script, as a release engineer runs it."""
    result = run_tfpack_process("convert", good["frozen"], "--name", "clf", "--output-dir", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["version_dir"] == str(tmp_path / "clf" / "1")
    assert payload["equivalence"]["max_abs_error"] <= 1e-5
    # TensorFlow's C++ start-up notices are kept out of tfpack's output.
    assert "oneDNN" not in result.stderr and "absl" not in result.stderr


def test_real_process_bad_source_has_no_traceback(broken, tmp_path: Path) -> None:
    result = run_tfpack_process("convert", broken["random_pb"], "--name", "m", "--output-dir", tmp_path / "o")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("tfpack: error: ")


def test_usage_errors_are_one_line_in_a_real_process(tmp_path: Path) -> None:
    for args in (["convert"], ["convert", "x.pb", "--name", "m", "--version", "0"], ["smoke"], ["nope"]):
        result = run_tfpack_process(*args)
        assert result.exit_code == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tfpack: error: "), (args, result.stderr)


def test_names_that_look_like_emoji_codes_are_printed_as_written(tfpack_cli, tmp_path: Path) -> None:
    out = tmp_path / "x:thumbs_up:y"
    out.mkdir()
    (out / "mine.txt").write_text("not tfpack's\n")
    result = tfpack_cli("k8s", "--image", "registry.example/m:1", "--model", "m", "--output-dir", out, "--json")
    assert result.exit_code == 2
    assert f"--output-dir {out} is not empty" in result.stderr


def test_repeated_constant_and_ema_on_a_frozen_graph_are_refused(good, tfpack_cli, tmp_path: Path) -> None:
    result = tfpack_cli("convert", good["frozen"], "--name", "m", "--output-dir", tmp_path / "o", "--ema", "on")
    assert result.exit_code == 2 and "--ema on needs a checkpoint" in result.stderr
    result = tfpack_cli(
        "convert",
        good["frozen"],
        "--name",
        "m",
        "--output-dir",
        tmp_path / "o",
        "--constant",
        "a=1",
        "--constant",
        "a=2",
    )
    assert result.exit_code == 2 and "given twice" in result.stderr


def test_unwritable_output_dir_is_refused_before_loading(good, tfpack_cli, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = tfpack_cli("convert", good["frozen"], "--name", "m", "--output-dir", blocker / "sub")
    assert result.exit_code == 2 and "not a writable directory" in result.stderr


def test_bad_report_paths_are_refused_before_the_smoke_test(good, tfpack_cli, tmp_path: Path) -> None:
    result = tfpack_cli(
        "smoke", "--target", "127.0.0.1:1", "--version-dir", good["saved_model"], "--model", "m", "--report", tmp_path
    )
    assert result.exit_code == 2 and "is a directory" in result.stderr


def test_bad_image_tag_is_refused_before_any_work(good, tfpack_cli, signing_keys) -> None:
    result = tfpack_cli("build", good["saved_model"].parent, "--tag", "BAD TAG", "--public-key", signing_keys["public"])
    assert result.exit_code == 2 and "not an image reference" in result.stderr


def test_a_model_dir_instead_of_a_version_dir_gets_a_pointer(good, tfpack_cli, tmp_path: Path) -> None:
    model_dir = good["saved_model"].parent
    result = tfpack_cli("convert", model_dir, "--name", "m", "--output-dir", tmp_path / "o")
    assert result.exit_code == 2 and f"give one version dir, e.g. {good['saved_model']}" in result.stderr
    result = tfpack_cli("build", good["saved_model"], "--tag", "t:1", "--allow-unsigned")
    assert result.exit_code == 2 and "is a version dir: give the model dir" in result.stderr


@pytest.mark.parametrize("target", ["localhost:²", "localhost:١٢", "localhost:99999", "localhost:"])
def test_smoke_target_ports_are_ascii_numbers(target: str, tfpack_cli, tmp_path: Path) -> None:
    version_dir = tmp_path / "m" / "1"
    version_dir.mkdir(parents=True)
    result = tfpack_cli("smoke", "--target", target, "--version-dir", version_dir, "--model", "m")
    assert result.exit_code == 2, result.stderr
    assert "is not HOST:PORT" in result.stderr


def test_smoke_version_dir_names_are_ascii_numbers(tfpack_cli, tmp_path: Path) -> None:
    version_dir = tmp_path / "m" / "²"
    version_dir.mkdir(parents=True)
    result = tfpack_cli("smoke", "--target", "localhost:8500", "--version-dir", version_dir, "--model", "m")
    assert result.exit_code == 2 and "is not a version dir" in result.stderr
