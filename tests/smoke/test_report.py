"""The smoke report: its JSON fields, its JUnit XML, its one-line summary."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from packager.smoke import GRPC_MODEL_STATUS, GRPC_PREDICT, CheckResult, SmokeReport
from packager.smoke.report import percentiles, summarize_latencies
from tests.smoke.support import MODEL, junit_counts

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast


def failed_report() -> SmokeReport:
    return SmokeReport(
        model=MODEL,
        version=1,
        checks=[
            CheckResult(GRPC_MODEL_STATUS, True, "ok", 1.0, MODEL),
            CheckResult(
                GRPC_PREDICT, False, 'output "y" <differs> & more\nlog line', None, f"{MODEL}/1/serving_default"
            ),
        ],
        latencies_ms={},
        image="example:1",
        target="127.0.0.1:1",
        rest_target=None,
    )


def test_junit_xml_escapes_details(tmp_path: Path) -> None:
    report = failed_report()
    report.write_junit(tmp_path / "j.xml")
    assert junit_counts(tmp_path / "j.xml") == (2, 1, [f"{GRPC_PREDICT} ({MODEL}/1/serving_default)"])
    failure = ET.parse(tmp_path / "j.xml").getroot().find("testsuite/testcase/failure")
    assert failure is not None
    assert failure.get("message") == 'output "y" <differs> & more'
    assert failure.text == 'output "y" <differs> & more\nlog line'


def test_json_has_the_documented_fields_in_order(tmp_path: Path) -> None:
    report = failed_report()
    report.latencies_ms[GRPC_PREDICT] = summarize_latencies([3.0, 1.0, 2.0])
    report.write_json(tmp_path / "r.json")
    written = json.loads((tmp_path / "r.json").read_text())
    assert list(written) == [
        "passed",
        "image",
        "target",
        "rest_target",
        "model",
        "version",
        "checks",
        "latencies_ms",
        "models",
        "latency_ms",
        "load",
    ]
    assert written["passed"] is False
    assert written["checks"][0] == {
        "name": GRPC_MODEL_STATUS,
        "subject": MODEL,
        "passed": True,
        "detail": "ok",
        "latency_ms": 1.0,
    }
    assert written["latencies_ms"] == {GRPC_PREDICT: {"p50": 2.0, "max": 3.0, "count": 3}}
    assert (written["models"], written["latency_ms"], written["load"]) == ({}, None, None)
    assert written == report.to_json()


def test_log_lines_go_under_failed_checks_only() -> None:
    report = failed_report()
    report.append_to_failures("--- last 40 container log lines ---\nboom")
    assert report.checks[0].detail == "ok"
    assert report.checks[1].detail.endswith("log line\n--- last 40 container log lines ---\nboom")
    assert report.checks[1].headline == 'output "y" <differs> & more'


def test_summary_of_a_run_that_found_no_version() -> None:
    report = SmokeReport(
        model=MODEL,
        version=None,
        checks=[CheckResult(GRPC_MODEL_STATUS, False, "gone", None)],
        latencies_ms={},
        image=None,
        target="127.0.0.1:9",
        rest_target=None,
    )
    assert not report.passed
    assert report.summary() == f"smoke test of {MODEL} no version AVAILABLE on 127.0.0.1:9 failed (0/1 checks)"
    assert not SmokeReport(MODEL, None, [], {}, None, None, None).passed


def test_percentiles_interpolate_and_the_summary_names_latency_and_load() -> None:
    assert percentiles([float(n) for n in range(1, 101)]) == {"p50": 50.5, "p95": 95.05, "p99": 99.01}
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0}
    report = SmokeReport(
        model=MODEL,
        version=1,
        checks=[CheckResult(GRPC_MODEL_STATUS, True, "ok", 1.0, MODEL)],
        latencies_ms={},
        image=None,
        target="127.0.0.1:1",
        rest_target=None,
        latency_ms={"first": 9.0, "p50": 1.0, "p95": 2.0, "p99": 3.0},
        load={
            "clients": 4,
            "seconds": 2.0,
            "requests": 800,
            "errors": 0,
            "throughput_rps": 400.0,
            "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0},
        },
    )
    assert report.summary() == (
        f"smoke test of {MODEL} version 1 on 127.0.0.1:1 passed (1/1 checks); "
        "latency p50/p95/p99 1.0/2.0/3.0 ms (first 9.0 ms), load 4 clients: 400.0 requests/s, 0 errors"
    )


def test_several_models_are_named_in_the_summary_and_the_junit(tmp_path: Path) -> None:
    report = SmokeReport(
        model=None,
        version=None,
        checks=[
            CheckResult(GRPC_MODEL_STATUS, True, "ok", 1.0, "a"),
            CheckResult(GRPC_MODEL_STATUS, True, "ok", 1.0, "b"),
        ],
        latencies_ms={},
        image="example:1",
        target=None,
        rest_target=None,
        models={"a": [1, 2], "b": [1]},
    )
    assert report.summary() == "smoke test of 2 models (a 1,2; b 1) on example:1 passed (2/2 checks)"
    report.write_junit(tmp_path / "j.xml")
    assert junit_counts(tmp_path / "j.xml") == (2, 0, [])
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert [case.get("classname") for case in root.iter("testcase")] == ["tfpack.smoke.a", "tfpack.smoke.b"]
    properties = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert properties["model.a"] == "1,2" and properties["model.b"] == "1"


def test_junit_parses_whatever_control_characters_a_failure_carries(tmp_path: Path) -> None:
    failed = CheckResult(
        name=GRPC_PREDICT, passed=False, detail="log: \x1b[31mred\x1b[0m and a NUL \x00", latency_ms=None, subject="m"
    )
    report = SmokeReport(
        model="m", version=1, checks=[failed], latencies_ms={}, image=None, target="t:1", rest_target=None
    )
    report.write_junit(tmp_path / "smoke.xml")
    failure = ET.parse(tmp_path / "smoke.xml").getroot().find("testsuite/testcase/failure")
    assert failure is not None and failure.text is not None and "red" in failure.text
