"""The smoke report: its JSON fields, its JUnit XML, its one-line summary."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from packager.smoke import GRPC_MODEL_STATUS, GRPC_PREDICT, CheckResult, SmokeReport
from packager.smoke.report import summarize_latencies
from tests.smoke.support import MODEL, junit_counts

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast


def failed_report() -> SmokeReport:
    return SmokeReport(
        model=MODEL,
        version=1,
        checks=[
            CheckResult(GRPC_MODEL_STATUS, True, "ok", 1.0),
            CheckResult(GRPC_PREDICT, False, 'output "y" <differs> & more\nlog line', None),
        ],
        latencies_ms={},
        image="example:1",
        target="127.0.0.1:1",
        rest_target=None,
    )


def test_junit_xml_escapes_details(tmp_path: Path) -> None:
    report = failed_report()
    report.write_junit(tmp_path / "j.xml")
    assert junit_counts(tmp_path / "j.xml") == (2, 1, [GRPC_PREDICT])
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
    ]
    assert written["passed"] is False
    assert written["checks"][0] == {"name": GRPC_MODEL_STATUS, "passed": True, "detail": "ok", "latency_ms": 1.0}
    assert written["latencies_ms"] == {GRPC_PREDICT: {"p50": 2.0, "max": 3.0, "count": 3}}
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
