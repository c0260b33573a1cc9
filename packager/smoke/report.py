"""What one smoke run observed, and its two written forms: JSON and JUnit XML.

The JSON fields (README, "tfpack smoke") are what release pipelines parse; the JUnit XML has one
testsuite with one testcase per check ("NAME (SUBJECT)"), so CI systems show each check as a test.
"""

from __future__ import annotations

import json
import re
import statistics
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np


class LatencySummary(TypedDict):
    """One predict check's request latencies, in milliseconds."""

    p50: float
    max: float
    count: int


class LatencyPercentiles(TypedDict):
    """Request latencies' percentiles, in milliseconds."""

    p50: float
    p95: float
    p99: float


class ReportLatency(TypedDict):
    """The report's latency_ms: the run's first Predict, and percentiles over --requests Predicts."""

    first: float | None
    p50: float
    p95: float
    p99: float


class LoadSummary(TypedDict):
    """The report's load: --load C,S's clients and seconds, what they sent, and its throughput."""

    clients: int
    seconds: float
    requests: int
    errors: int
    throughput_rps: float
    latency_ms: LatencyPercentiles | None


def summarize_latencies(latencies_ms: list[float]) -> LatencySummary:
    """The median, the maximum and the number of ``latencies_ms`` (which must not be empty)."""
    return {
        "p50": round(statistics.median(latencies_ms), 3),
        "max": round(max(latencies_ms), 3),
        "count": len(latencies_ms),
    }


def percentiles(latencies_ms: list[float]) -> LatencyPercentiles:
    """p50, p95 and p99 of ``latencies_ms`` (which must not be empty), interpolated linearly."""
    p50, p95, p99 = np.percentile(np.asarray(latencies_ms, dtype=np.float64), [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


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
        subject: What the check is about: the model, "MODEL/VERSION/SIGNATURE" or
            "MODEL:LABEL"; None for a check of the whole server.
    """

    name: str
    passed: bool
    detail: str
    latency_ms: float | None
    subject: str | None = None

    @property
    def title(self) -> str:
        """The name and subject, as the JUnit testcase and one-line messages name the check."""
        return f"{self.name} ({self.subject})" if self.subject else self.name

    @property
    def headline(self) -> str:
        """The detail's first line, for one-line messages."""
        text = self.detail.strip()
        return text.splitlines()[0] if text else ""

    def to_json(self) -> dict[str, Any]:
        """The check as the JSON report writes it."""
        return {
            "name": self.name,
            "subject": self.subject,
            "passed": self.passed,
            "detail": self.detail,
            "latency_ms": self.latency_ms,
        }


@dataclass
class SmokeReport:
    """Everything one smoke run observed.

    Attributes:
        model: The model checked; None when several were.
        version: The version of ``model`` the checks ran against (the highest, when several
            were checked); None when several models were checked or none became AVAILABLE.
        checks: The checks that ran, in order. A model whose status check fails gets no other
            checks.
        latencies_ms: Per predict check of the first model's highest version's golden
            signature ("grpc_predict", "rest_predict", "rest_predict_rows"): p50, max and the
            number of requests, in milliseconds.
        image: The image that was started (smoke_image), else None.
        target: The gRPC HOST:PORT that was tested.
        rest_target: The REST HOST:PORT that was tested, if any.
        models: Every model checked and its versions found AVAILABLE.
        latency_ms: The run's first Predict and p50/p95/p99 over --requests Predicts; None when
            no Predict could be timed.
        load: What --load measured; None without --load.
    """

    model: str | None
    version: int | None
    checks: list[CheckResult]
    latencies_ms: dict[str, LatencySummary]
    image: str | None
    target: str | None
    rest_target: str | None
    models: dict[str, list[int]] = field(default_factory=dict)
    latency_ms: ReportLatency | None = None
    load: LoadSummary | None = None

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

    def _what(self) -> str:
        if self.model is not None:
            version = f"version {self.version}" if self.version is not None else "no version AVAILABLE"
            return f"{self.model} {version}"
        listed = "; ".join(f"{name} {','.join(map(str, versions)) or '-'}" for name, versions in self.models.items())
        return f"{len(self.models)} models ({listed})"

    def summary(self) -> str:
        """One line for humans: the verdict, what was checked, and the latencies and load."""
        verdict = "passed" if self.passed else "failed"
        counts = f"{len(self.checks) - len(self.failures)}/{len(self.checks)} checks"
        parts = [
            f"{name} p50 {summary['p50']:.1f} ms (max {summary['max']:.1f})"
            for name, summary in self.latencies_ms.items()
        ]
        if self.latency_ms is not None:
            first = self.latency_ms["first"]
            parts.append(
                f"latency p50/p95/p99 {self.latency_ms['p50']:.1f}/{self.latency_ms['p95']:.1f}/"
                f"{self.latency_ms['p99']:.1f} ms" + (f" (first {first:.1f} ms)" if first is not None else "")
            )
        if self.load is not None:
            parts.append(
                f"load {self.load['clients']} clients: {self.load['throughput_rps']:.1f} requests/s, "
                f"{self.load['errors']} errors"
            )
        return f"smoke test of {self._what()} on {self.subject} {verdict} ({counts})" + (
            f"; {', '.join(parts)}" if parts else ""
        )

    def append_to_failures(self, text: str) -> None:
        """Put ``text`` (a server's last log lines) under every failed check's detail."""
        self.checks = [
            check
            if check.passed
            else CheckResult(check.name, check.passed, f"{check.detail}\n{text}", check.latency_ms, check.subject)
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
            "models": self.models,
            "latency_ms": self.latency_ms,
            "load": self.load,
        }

    def write_json(self, path: Path) -> None:
        """Write the report as indented JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def write_junit(self, path: Path) -> None:
        """Write the report as JUnit XML: one testsuite, one testcase per check ("NAME (SUBJECT)")."""
        what = self.model or ",".join(self.models) or "?"
        total_s = sum((check.latency_ms or 0.0) for check in self.checks) / 1000.0
        suites = ET.Element("testsuites", name="tfpack smoke")
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=f"tfpack smoke {what}",
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
        for name, versions in self.models.items():
            ET.SubElement(properties, "property", name=f"model.{name}", value=",".join(map(str, versions)))
        for key, value in (("latency_ms", self.latency_ms), ("load", self.load)):
            if value is not None:
                ET.SubElement(properties, "property", name=key, value=json.dumps(value, sort_keys=True))
        for check in self.checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"tfpack.smoke.{(check.subject or what).split('/')[0].split(':')[0]}",
                name=check.title,
                time=f"{(check.latency_ms or 0.0) / 1000.0:.3f}",
            )
            if check.passed:
                ET.SubElement(case, "system-out").text = xml_text(check.detail)
            else:
                failure = ET.SubElement(case, "failure", message=xml_text(check.headline) or "")
                failure.text = xml_text(check.detail)
        tree = ET.ElementTree(suites)
        ET.indent(tree)
        path.parent.mkdir(parents=True, exist_ok=True)
        tree.write(path, encoding="utf-8", xml_declaration=True)


# XML 1.0 has no form for most control characters (ESC from a colourised log line, NUL from a
# binary answer): ElementTree writes them anyway and the file no longer parses. Failure details
# carry exactly such text (container logs, server messages), so each is replaced by U+FFFD.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_text(text: str | None) -> str | None:
    """``text`` with every character XML 1.0 cannot hold replaced by U+FFFD."""
    return None if text is None else _NOT_XML.sub("\ufffd", text)
