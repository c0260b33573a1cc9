"""One smoke run: check the arguments, start the target, run the checks, write the reports.

The runner/client split of TFX's infra validator: the target (packager.smoke.targets) owns the
server's lifecycle and says what it serves, the clients (packager.smoke.client) own the
transports, the checks (packager.smoke.checks, .negative, .latency) are written once over the
clients, packager.smoke.suite runs them in order, and the report (packager.smoke.report) is what
comes out.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from packager.errors import SmokeTestFailed, UsageError
from packager.progress import SILENT, Progress
from packager.smoke.client import Deadline, GrpcClient, RestClient
from packager.smoke.latency import DEFAULT_REQUESTS, LoadSpec
from packager.smoke.report import SmokeReport
from packager.smoke.suite import SuiteOptions, run_checks
from packager.smoke.targets import RunningServer, SmokeTarget, StartedImage


def smoke_image(
    image: str,
    model: str | None,
    *,
    report_path: Path | None = None,
    junit_path: Path | None = None,
    timeout: float = 120,
    requests: int = DEFAULT_REQUESTS,
    load: LoadSpec | None = None,
    models_dir: Path | None = None,
    progress: Progress = SILENT,
) -> SmokeReport:
    """Start IMAGE in a container, run every check against it, and remove the container.

    The container's gRPC and REST ports are published to free ports on 127.0.0.1; what to check
    (models, versions, labels) and what they must answer (contracts, goldens) come from the
    image itself (packager.smoke.targets.StartedImage).

    Args:
        image: An image reference the local Docker engine has (tfpack build's tag).
        model: The model to check; None: every model the image serves.
        report_path: Where to write the JSON report, if anywhere.
        junit_path: Where to write the JUnit XML, if anywhere.
        timeout: Seconds to wait, after the container starts, for every version to become
            AVAILABLE. Each request afterwards has its own bound (client.REQUEST_TIMEOUT_S).
        requests: How many sequential gRPC Predicts to time (p50/p95/p99).
        load: Concurrent clients and seconds of load to apply, if any.
        models_dir: The models root to mount read-only at /models, for an image built with
            --models-from-volume (required for one, refused for any other).
        progress: Receives a line per step.

    Returns:
        The report, when every check passed.

    Raises:
        UsageError: Bad model name, no Docker engine, the image is not present, or it holds no
            /models/MODEL or no tfpack goldens.
        SmokeTestFailed: A check failed (the reports are written first, the failed checks
            carrying the container's last log lines).
    """
    return run_smoke(
        StartedImage(image, model, models_dir),
        report_path=report_path,
        junit_path=junit_path,
        timeout=timeout,
        requests=requests,
        load=load,
        progress=progress,
    )


def smoke_target(
    target: str,
    model: str | None,
    version_dir: Path | None = None,
    *,
    models_dir: Path | None = None,
    rest_target: str | None = None,
    labels: Mapping[str, Mapping[str, int]] | None = None,
    report_path: Path | None = None,
    junit_path: Path | None = None,
    timeout: float = 60,
    requests: int = DEFAULT_REQUESTS,
    load: LoadSpec | None = None,
    progress: Progress = SILENT,
) -> SmokeReport:
    """Run the checks against a model server that is already running.

    Args:
        target: The server's gRPC address, HOST:PORT.
        model: The model name the server serves (required with ``version_dir``; with
            ``models_dir``, the one model to check, or None for all).
        version_dir: The local version dir (DIR/NAME/N) the server should be serving as version
            N; its contract, goldens and provenance are what the server's answers are checked
            against.
        models_dir: Instead of ``version_dir``: a dir holding NAME/N for every model and version
            the server must serve; every one found is checked.
        rest_target: The server's REST address, HOST:PORT; the REST checks run only with it.
        labels: Per model, version labels the server must resolve to the given versions.
        report_path: Where to write the JSON report, if anywhere.
        junit_path: Where to write the JUnit XML, if anywhere.
        timeout: Seconds to wait for every version to become AVAILABLE.
        requests: How many sequential gRPC Predicts to time (p50/p95/p99).
        load: Concurrent clients and seconds of load to apply, if any.
        progress: Receives a line per step.

    Returns:
        The report, when every check passed.

    Raises:
        UsageError: Bad model name or address, or a version dir without tfpack goldens.
        SmokeTestFailed: A check failed (the reports are written first).
    """
    if (version_dir is None) == (models_dir is None):
        raise UsageError("give a version dir (--version-dir) or a models dir (--models-dir), not both")
    if version_dir is not None and model is None:
        raise UsageError("--version-dir needs --model NAME")
    return run_smoke(
        RunningServer(
            target, model, version_dir=version_dir, models_dir=models_dir, rest_target=rest_target, labels=labels
        ),
        report_path=report_path,
        junit_path=junit_path,
        timeout=timeout,
        requests=requests,
        load=load,
        progress=progress,
    )


def run_smoke(
    target: SmokeTarget,
    *,
    report_path: Path | None = None,
    junit_path: Path | None = None,
    timeout: float,
    requests: int = DEFAULT_REQUESTS,
    load: LoadSpec | None = None,
    progress: Progress = SILENT,
) -> SmokeReport:
    """Run every check against ``target``, which is stopped however the run ends.

    Args:
        target: The server to test.
        report_path: Where to write the JSON report, if anywhere.
        junit_path: Where to write the JUnit XML, if anywhere.
        timeout: Seconds, from the target's start, for every version to become AVAILABLE.
        requests: How many sequential gRPC Predicts to time (p50/p95/p99).
        load: Concurrent clients and seconds of load to apply, if any.
        progress: Receives a line per step.

    Returns:
        The report, when every check passed.

    Raises:
        UsageError: Bad model name, report paths, --requests or --load, or the target cannot
            start.
        SmokeTestFailed: A check failed (the reports are written first).
    """
    _check_report_paths(report_path, junit_path)
    if requests < 1:
        raise UsageError(f"--requests {requests}: give at least 1")
    if load is not None and (load.clients < 1 or load.seconds <= 0):
        raise UsageError(f"--load {load.clients},{load.seconds:g}: give at least 1 client and more than 0 seconds")
    with target.running(progress) as endpoints:
        deadline = Deadline.after(timeout)
        plan = target.plan()
        report = SmokeReport(
            model=None,
            version=None,
            checks=[],
            latencies_ms={},
            image=target.image,
            target=endpoints.grpc,
            rest_target=endpoints.rest,
        )
        with GrpcClient(endpoints.grpc) as grpc_client, contextlib.ExitStack() as stack:
            rest_client = RestClient(endpoints.rest) if endpoints.rest else None
            if rest_client is not None:
                stack.enter_context(rest_client)
            run_checks(
                report,
                grpc=grpc_client,
                rest=rest_client,
                plan=plan,
                expectation_for=target.expectation,
                deadline=deadline,
                exited=target.exit_status,
                options=SuiteOptions(requests=requests, load=load),
                progress=progress,
            )
        if not report.passed:
            context = target.failure_context()
            if context is not None:
                report.append_to_failures(context)
    return _finish(report, report_path, junit_path)


def parse_load(text: str) -> LoadSpec:
    """--load C,S: C concurrent clients for S seconds.

    Raises:
        UsageError: Not two positive numbers separated by a comma.
    """
    clients, sep, seconds = text.partition(",")
    try:
        spec = LoadSpec(int(clients), float(seconds))
    except ValueError:
        spec = None
    if not sep or spec is None or spec.clients < 1 or not 0 < spec.seconds < float("inf"):
        raise UsageError(f"--load {text!r} is not C,S: C clients (at least 1) for S seconds (more than 0), e.g. 4,10")
    return spec


def _finish(report: SmokeReport, report_path: Path | None, junit_path: Path | None) -> SmokeReport:
    """Write the requested reports, then raise SmokeTestFailed if any check failed."""
    if report_path is not None:
        report.write_json(report_path)
    if junit_path is not None:
        report.write_junit(junit_path)
    if not report.passed:
        first = report.failures[0]
        where = f"; report: {report_path}" if report_path is not None else ""
        raise SmokeTestFailed(
            f"smoke test of {report.subject} failed {len(report.failures)} of "
            f"{len(report.checks)} checks, first {first.title}: {first.headline}{where}",
            result=report.to_json(),
        )
    return report


def _check_report_paths(report_path: Path | None, junit_path: Path | None) -> None:
    """Refuse report paths that cannot be written before the test runs, not after."""
    for path, flag in ((report_path, "--report"), (junit_path, "--junit")):
        if path is None:
            continue
        if path.is_dir():
            raise UsageError(f"{flag} {path} is a directory: give a file path")
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise UsageError(f"{flag} {path}: {path.parent} is not a writable directory")
