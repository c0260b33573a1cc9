"""One smoke run: check the arguments, start the target, run the checks, write the reports.

The runner/client split of TFX's infra validator: the target (packager.smoke.targets) owns the
server's lifecycle, the clients (packager.smoke.client) own the transports, the checks
(packager.smoke.checks) are written once over the clients, and the report
(packager.smoke.report) is what comes out.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from packager import layout
from packager.errors import SmokeTestFailed, UsageError
from packager.progress import SILENT, Progress
from packager.smoke.checks import run_checks
from packager.smoke.client import GrpcClient, RestClient
from packager.smoke.report import SmokeReport
from packager.smoke.targets import RunningServer, SmokeTarget, StartedImage


def smoke_image(
    image: str,
    model: str,
    *,
    report_path: Path | None = None,
    junit_path: Path | None = None,
    timeout: float = 120,
    progress: Progress = SILENT,
) -> SmokeReport:
    """Start IMAGE in a container, run every check against it, and remove the container.

    The container's gRPC and REST ports are published to free ports on 127.0.0.1; the goldens
    come from the image itself, for the highest version the server reports AVAILABLE
    (packager.smoke.targets.StartedImage).

    Args:
        image: An image reference the local Docker engine has (tfpack build's tag).
        model: The model name the image serves.
        report_path: Where to write the JSON report, if anywhere.
        junit_path: Where to write the JUnit XML, if anywhere.
        timeout: Seconds to wait, after the container starts, for the model to become
            AVAILABLE. Each request afterwards has its own bound (client.REQUEST_TIMEOUT_S).
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
        StartedImage(image, model),
        model,
        report_path=report_path,
        junit_path=junit_path,
        timeout=timeout,
        progress=progress,
    )


def smoke_target(
    target: str,
    model: str,
    version_dir: Path,
    *,
    rest_target: str | None = None,
    report_path: Path | None = None,
    junit_path: Path | None = None,
    timeout: float = 60,
    progress: Progress = SILENT,
) -> SmokeReport:
    """Run the checks against a model server that is already running.

    Args:
        target: The server's gRPC address, HOST:PORT.
        model: The model name the server serves.
        version_dir: The local version dir (DIR/NAME/N) the server should be serving as version
            N; its goldens and provenance are what the server's answers are checked against.
        rest_target: The server's REST address, HOST:PORT; the REST checks run only with it.
        report_path: Where to write the JSON report, if anywhere.
        junit_path: Where to write the JUnit XML, if anywhere.
        timeout: Seconds to wait for version N to become AVAILABLE.
        progress: Receives a line per step.

    Returns:
        The report, when every check passed.

    Raises:
        UsageError: Bad model name or address, or a version dir without tfpack goldens.
        SmokeTestFailed: A check failed (the reports are written first).
    """
    return run_smoke(
        RunningServer(target, version_dir, rest_target=rest_target),
        model,
        report_path=report_path,
        junit_path=junit_path,
        timeout=timeout,
        progress=progress,
    )


def run_smoke(
    target: SmokeTarget,
    model: str,
    *,
    report_path: Path | None = None,
    junit_path: Path | None = None,
    timeout: float,
    progress: Progress = SILENT,
) -> SmokeReport:
    """Run every check against ``target``, which is stopped however the run ends.

    Args:
        target: The server to test.
        model: The model name to ask it about.
        report_path: Where to write the JSON report, if anywhere.
        junit_path: Where to write the JUnit XML, if anywhere.
        timeout: Seconds, from the target's start, for the model to become AVAILABLE.
        progress: Receives a line per step.

    Returns:
        The report, when every check passed.

    Raises:
        UsageError: Bad model name or report paths, or the target cannot start.
        SmokeTestFailed: A check failed (the reports are written first).
    """
    layout.check_model_name(model, "--model")
    _check_report_paths(report_path, junit_path)
    with target.running(progress) as endpoints:
        report = SmokeReport(
            model=model,
            version=target.pinned_version(),
            checks=[],
            latencies_ms={},
            image=target.image,
            target=endpoints.grpc,
            rest_target=endpoints.rest,
        )
        deadline = time.monotonic() + timeout
        with GrpcClient(endpoints.grpc) as grpc_client, contextlib.ExitStack() as stack:
            rest_client = stack.enter_context(RestClient(endpoints.rest)) if endpoints.rest else None
            run_checks(
                report,
                grpc=grpc_client,
                rest=rest_client,
                version=report.version,
                expectation_for=target.expectation,
                deadline=deadline,
                exited=target.exit_status,
                progress=progress,
            )
        if not report.passed:
            context = target.failure_context()
            if context is not None:
                report.append_to_failures(context)
    return _finish(report, report_path, junit_path)


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
            f"{len(report.checks)} checks, first {first.name}: {first.headline}{where}",
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
