"""`tfpack smoke` from the command line against model servers tfpack did not start: --target with
--version-dir or --models-dir, --requests, --load, and the usage errors of the new flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from packager.smoke import GRPC_LATENCY, GRPC_LOAD
from tests.smoke.support import MODEL, VERSION, Fleet, Served, good_run, junit_counts


def test_target_with_load_reports_throughput_and_no_errors(served: Served, tfpack_cli, tmp_path: Path) -> None:
    result = tfpack_cli(
        "smoke",
        "--target",
        served.grpc_target,
        "--rest-target",
        served.rest_target,
        "--version-dir",
        served.version_dir,
        "--model",
        MODEL,
        "--requests",
        "20",
        "--load",
        "4,2",
        "--junit",
        tmp_path / "j.xml",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert [(c["name"], c["subject"]) for c in report["checks"]] == [
        *good_run(),
        (GRPC_LOAD, f"{MODEL}/{VERSION}/serving_default"),
    ]
    load = report["load"]
    assert load["clients"] == 4 and 2 <= load["seconds"] < 10
    assert load["errors"] == 0 and load["requests"] > 0 and load["throughput_rps"] > 0
    assert 0 < load["latency_ms"]["p50"] <= load["latency_ms"]["p99"]
    assert "20 requests" in next(c["detail"] for c in report["checks"] if c["name"] == GRPC_LATENCY)
    assert set(report["latency_ms"]) == {"first", "p50", "p95", "p99"}
    assert junit_counts(tmp_path / "j.xml") == (len(report["checks"]), 0, [])


def test_target_prints_a_summary_for_people(served: Served, tfpack_cli) -> None:
    result = tfpack_cli(
        "smoke",
        "--target",
        served.grpc_target,
        "--version-dir",
        served.version_dir,
        "--model",
        MODEL,
        "--requests",
        "5",
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"smoke test of {MODEL} version {VERSION} on {served.grpc_target} passed")
    assert "latency p50/p95/p99" in result.stdout


def test_models_dir_from_the_command_line(fleet: Fleet, tfpack_cli) -> None:
    result = tfpack_cli(
        "smoke",
        "--target",
        fleet.grpc_target,
        "--models-dir",
        fleet.models_dir,
        "--requests",
        "5",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["models"] == {"half_plus_three": [7], MODEL: [1, 2]}


def test_a_failed_check_exits_4_naming_it(served: Served, tfpack_cli, tmp_path: Path) -> None:
    version_dir = tmp_path / MODEL / str(VERSION + 1)
    version_dir.mkdir(parents=True)
    for path in (served.version_dir / "assets.extra").iterdir():
        (version_dir / "assets.extra").mkdir(exist_ok=True)
        (version_dir / "assets.extra" / path.name).write_bytes(path.read_bytes())
    result = tfpack_cli(
        "smoke", "--target", served.grpc_target, "--version-dir", version_dir, "--model", MODEL, "--timeout", "1"
    )
    assert result.exit_code == 4
    assert f"first grpc_model_status ({MODEL}): version {VERSION + 1} of {MODEL} did not become AVAILABLE" in (
        result.stderr
    )


@pytest.mark.fast
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "localhost:8500", "--model", "m"], "--target needs --version-dir or --models-dir"),
        (["--target", "localhost:8500", "--version-dir", "x/m/1"], "--version-dir needs --model NAME"),
        (["example:1", "--version-dir", "x/m/1"], "--version-dir goes with --target"),
        (["--target", "localhost:8500", "--models-dir", "x", "--load", "4"], "--load '4' is not C,S"),
        (["--target", "localhost:8500", "--models-dir", "x", "--load", "0,5"], "is not C,S"),
        (["--target", "localhost:8500", "--models-dir", "x", "--load", "2,-1"], "is not C,S"),
        (["--target", "localhost:8500", "--models-dir", "x", "--requests", "0"], "--requests"),
    ],
)
def test_bad_flags_are_usage_errors(args: list[str], message: str, tfpack_cli) -> None:
    result = tfpack_cli("smoke", *args)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
