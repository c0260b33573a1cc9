"""What one smoke run observed, and its two written forms: JSON and JUnit XML.

The JSON fields (README, "tfpack smoke") are what release pipelines parse; the JUnit XML has one
testsuite with one testcase per check, so CI systems show each check as a test.
"""

from __future__ import annotations

import json
import statistics
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict


class LatencySummary(TypedDict):
    """One predict check's request latencies, in milliseconds."""

    p50: float
    max: float
    count: int


def summarize_latencies(latencies_ms: list[float]) -> LatencySummary:
    """The median, the maximum and the number of ``latencies_ms`` (which must not be empty)."""
    return {
        "p50": round(statistics.median(latencies_ms), 3),
        "max": round(max(latencies_ms), 3),
        "count": len(latencies_ms),
    }


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check.

    Attributes:
        name: The check's name (packager.smoke.checks).
        passed: Whether the check passed.
        detail: What was observed; on failure, what differed (and the server's last log lines
            when the server ran in a container tfpack started).
        latency_ms: The check's request latency (the median for predict checks); None when no
            request completed.
    """

    name: str
    passed: bool
    detail: str
    latency_ms: float | None

    @property
    def headline(self) -> str:
        """The detail's first line, for one-line messages."""
        text = self.detail.strip()
        return text.splitlines()[0] if text else ""

    def to_json(self) -> dict[str, Any]:
        """The check as the JSON report writes it."""
        return {
            "name": self.name,
            "passed": self.passed,
            "detail": self.detail,
            "latency_ms": self.latency_ms,
        }


@dataclass
class SmokeReport:
    """Everything one smoke run observed.

    Attributes:
        model: The model name the server was asked about.
        version: The version the checks ran against; None when no version became AVAILABLE.
        checks: The checks that ran, in order. A failed status check ends the run early.
        latencies_ms: Per predict check ("grpc_predict", "rest_predict"): p50, max and the
            number of requests, in milliseconds.
        image: The image that was started (smoke_image), else None.
        target: The gRPC HOST:PORT that was tested.
        rest_target: The REST HOST:PORT that was tested, if any.
    """

    model: str
    version: int | None
    checks: list[CheckResult]
    latencies_ms: dict[str, LatencySummary]
    image: str | None
    target: str | None
    rest_target: str | None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [check for check in self.checks if not check.passed]

    @property
    def subject(self) -> str:
        """What was tested, for one-line messages: the image, else the target."""
        return self.image or self.target or "?"

    def summary(self) -> str:
        """One line for humans: the verdict, the version and the predict latencies."""
        verdict = "passed" if self.passed else "failed"
        counts = f"{len(self.checks) - len(self.failures)}/{len(self.checks)} checks"
        latencies = ", ".join(
            f"{name} p50 {summary['p50']:.1f} ms (max {summary['max']:.1f})"
            for name, summary in self.latencies_ms.items()
        )
        version = f"version {self.version}" if self.version is not None else "no version AVAILABLE"
        return f"smoke test of {self.model} {version} on {self.subject} {verdict} ({counts})" + (
            f"; {latencies}" if latencies else ""
        )

    def append_to_failures(self, text: str) -> None:
        """Put ``text`` (a server's last log lines) under every failed check's detail."""
        self.checks = [
            check
            if check.passed
            else CheckResult(check.name, check.passed, f"{check.detail}\n{text}", check.latency_ms)
            for check in self.checks
        ]

    def to_json(self) -> dict[str, Any]:
        """The report as ``--report`` and ``--json`` write it."""
        return {
            "passed": self.passed,
            "image": self.image,
            "target": self.target,
            "rest_target": self.rest_target,
            "model": self.model,
            "version": self.version,
            "checks": [check.to_json() for check in self.checks],
            "latencies_ms": self.latencies_ms,
        }

    def write_json(self, path: Path) -> None:
        """Write the report as indented JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def write_junit(self, path: Path) -> None:
        """Write the report as JUnit XML: one testsuite, one testcase per check."""
        suite_name = f"tfpack smoke {self.model}"
        total_s = sum((check.latency_ms or 0.0) for check in self.checks) / 1000.0
        suites = ET.Element("testsuites", name="tfpack smoke")
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=suite_name,
            tests=str(len(self.checks)),
            failures=str(len(self.failures)),
            errors="0",
            skipped="0",
            time=f"{total_s:.3f}",
        )
        properties = ET.SubElement(suite, "properties")
        for key in ("image", "target", "rest_target", "model", "version"):
            value = getattr(self, key)
            if value is not None:
                ET.SubElement(properties, "property", name=key, value=str(value))
        for check in self.checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"tfpack.smoke.{self.model}",
                name=check.name,
                time=f"{(check.latency_ms or 0.0) / 1000.0:.3f}",
            )
            if check.passed:
                ET.SubElement(case, "system-out").text = check.detail
            else:
                failure = ET.SubElement(case, "failure", message=check.headline)
                failure.text = check.detail
        tree = ET.ElementTree(suites)
        ET.indent(tree)
        path.parent.mkdir(parents=True, exist_ok=True)
        tree.write(path, encoding="utf-8", xml_declaration=True)
