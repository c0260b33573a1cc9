"""Smoke tests against a running model server: a freshly started image, or a HOST:PORT.

The checks, in order, each one a line in the JSON report and a testcase in the JUnit XML:

    grpc_model_status   ModelService.GetModelStatus says the version is AVAILABLE
    grpc_signature      GetModelMetadata's serving_default matches the provenance's signature
    grpc_predict        PredictionService.Predict of the golden inputs gives the golden outputs
    rest_model_status   GET /v1/models/NAME says the version is AVAILABLE
    rest_predict        POST /v1/models/NAME/versions/N:predict gives the golden outputs

The goldens are the inputs the converter fed and the outputs it verified against the source
(packager.layout), so a pass proves the served model computes what the source computed, within
the tolerance the converter met. Every request names the version explicitly: the goldens belong
to one version, and a server with several loaded must answer for that one.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import statistics
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.models.containers
import grpc
import numpy as np
import requests

from packager import equivalence, layout
from packager.errors import SmokeTestFailed, UsageError, VerificationError
from packager.docker_engine import docker_client
from packager.progress import SILENT, Progress
from packager.tf_runtime import tensorflow

tf = tensorflow()  # imported quietly, before tensorflow_serving imports it noisily
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


GRPC_PORT = 8500
REST_PORT = 8501
MODELS_ROOT = "/models"

GRPC_MODEL_STATUS = "grpc_model_status"
GRPC_SIGNATURE = "grpc_signature"
GRPC_PREDICT = "grpc_predict"
REST_MODEL_STATUS = "rest_model_status"
REST_PREDICT = "rest_predict"

# Each predict check sends the golden request this many times: enough for a p50 that is not
# just the first (warm-up) call, few enough to keep a smoke test a smoke test.
PREDICT_REPEATS = 5
REQUEST_TIMEOUT_S = 30.0
_POLL_INTERVAL_S = 0.5
_LOG_TAIL_LINES = 40
_AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
_END = get_model_status_pb2.ModelVersionStatus.State.END


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check.

    Attributes:
        name: One of the check names above.
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

    def to_json(self) -> dict[str, Any]:
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
        latencies_ms: Per predict protocol ("grpc_predict", "rest_predict"): p50, max and the
            number of requests, in milliseconds.
        image: The image that was started (smoke_image), else None.
        target: The gRPC HOST:PORT that was tested.
        rest_target: The REST HOST:PORT that was tested, if any.
    """

    model: str
    version: int | None
    checks: list[CheckResult]
    latencies_ms: dict[str, dict[str, float]]
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

    def to_json(self) -> dict[str, Any]:
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
                failure = ET.SubElement(case, "failure", message=_first_line(check.detail))
                failure.text = check.detail
        tree = ET.ElementTree(suites)
        ET.indent(tree)
        path.parent.mkdir(parents=True, exist_ok=True)
        tree.write(path, encoding="utf-8", xml_declaration=True)


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

    Ports 8500 (gRPC) and 8501 (REST) are published to free ports on 127.0.0.1. The goldens and
    provenance come from the image itself, from /models/MODEL/N/assets.extra where N is the
    highest version the server reports AVAILABLE (with TF Serving's default "latest" policy, the
    highest version in the image). Reading N from the server rather than listing the image's
    model dir avoids copying the whole model out of the container.

    Args:
        image: An image reference the local Docker engine has (tfpack build's tag).
        model: The model name the image serves.
        report_path: Where to write the JSON report, if anywhere.
        junit_path: Where to write the JUnit XML, if anywhere.
        timeout: Seconds to wait, after the container starts, for the model to become
            AVAILABLE. Each request afterwards has its own REQUEST_TIMEOUT_S bound.
        progress: Receives a line per step.

    Returns:
        The report, when every check passed.

    Raises:
        UsageError: Bad model name, no Docker engine, the image is not present, or it holds no
            /models/MODEL or no tfpack goldens.
        SmokeTestFailed: A check failed (the reports are written first).
    """
    layout.check_model_name(model, "--model")
    _check_report_paths(report_path, junit_path)
    client = docker_client()
    progress.step(f"creating a container from {image}")
    try:
        container = client.containers.create(
            image,
            detach=True,
            ports={f"{GRPC_PORT}/tcp": ("127.0.0.1", None), f"{REST_PORT}/tcp": ("127.0.0.1", None)},
            labels={"org.tfpack.smoke": model},
        )
    except docker.errors.ImageNotFound:
        raise UsageError(
            f"image {image} is not in the local Docker engine: build it with 'tfpack build' "
            "or pull it first"
        ) from None
    except docker.errors.DockerException as exc:
        raise UsageError(f"cannot create a container from {image}: {_first_line(str(exc))}") from None
    try:
        try:
            _require_model_dir(client, container, image, model)
            progress.step(f"starting {image}")
            container.start()
            container.reload()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise UsageError(f"cannot start {image}: {_first_line(str(exc))}") from None
        grpc_target = f"127.0.0.1:{_host_port(container, GRPC_PORT)}"
        rest_target = f"127.0.0.1:{_host_port(container, REST_PORT)}"

        def load_expectation(version: int) -> _Expectation:
            return _expectation_from_container(container, image, model, version)

        report = _run_checks(
            model=model,
            grpc_target=grpc_target,
            rest_target=rest_target,
            version=None,
            load_expectation=load_expectation,
            deadline=time.monotonic() + timeout,
            exit_status=lambda: _container_exit_status(container),
            progress=progress,
            image=image,
        )
        if not report.passed:
            _append_log_tail(report, _container_log_tail(container))
    finally:
        progress.step("removing the container")
        _remove_container(container)
    return _finish(report, report_path, junit_path)


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
    layout.check_model_name(model, "--model")
    _check_report_paths(report_path, junit_path)
    _check_address(target, "--target")
    if rest_target is not None:
        _check_address(rest_target, "--rest-target")
    if not layout.is_version_name(version_dir.name):
        raise UsageError(
            f"{version_dir} is not a version dir: its name must be the version number (DIR/NAME/N)"
        )
    expectation = _Expectation.from_version_dir(version_dir)
    report = _run_checks(
        model=model,
        grpc_target=target,
        rest_target=rest_target,
        version=int(version_dir.name),
        load_expectation=lambda version: expectation,
        deadline=time.monotonic() + timeout,
        exit_status=lambda: None,
        progress=progress,
        image=None,
    )
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
            f"{len(report.checks)} checks, first {first.name}: {_first_line(first.detail)}{where}",
            result=report.to_json(),
        )
    return report


# --- what the server must answer ----------------------------------------------------------


@dataclass(frozen=True)
class _Expectation:
    """Goldens, the serving_default signature summary and the tolerance, from one version dir."""

    goldens: layout.Goldens
    inputs: dict[str, layout.TensorSummary]
    outputs: dict[str, layout.TensorSummary]
    tolerance: float

    @classmethod
    def from_version_dir(cls, version_dir: Path) -> "_Expectation":
        """Read assets.extra of a version dir; UsageError when it was not written by tfpack."""
        goldens = layout.Goldens.load(version_dir / layout.GOLDENS_FILE)
        provenance_path = version_dir / layout.PROVENANCE_FILE
        record = layout.Provenance.load_json(provenance_path)
        try:
            signature = record["signature"]
            return cls(
                goldens=goldens,
                inputs=_summaries(signature["inputs"]),
                outputs=_summaries(signature["outputs"]),
                tolerance=float(record["equivalence"]["tolerance"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(
                f"{provenance_path} lacks {exc}: re-create the version dir with 'tfpack convert'"
            ) from None


def _summaries(record: dict[str, Any]) -> dict[str, layout.TensorSummary]:
    """Provenance signature entries as TensorSummary; a null shape means an unknown rank."""
    return {
        key: layout.TensorSummary(
            dtype=value["dtype"],
            shape=None if value["shape"] is None else list(value["shape"]),  # type: ignore[arg-type]
        )
        for key, value in record.items()
    }


# --- the checks ------------------------------------------------------------------------------


class _CheckFailed(Exception):
    """A check observed something wrong; the message is the check's detail."""


def _run_checks(
    *,
    model: str,
    grpc_target: str,
    rest_target: str | None,
    version: int | None,
    load_expectation: Callable[[int], _Expectation],
    deadline: float,
    exit_status: Callable[[], str | None],
    progress: Progress,
    image: str | None,
) -> SmokeReport:
    """Wait for the model, then run the checks; a failed status check ends the run."""
    report = SmokeReport(
        model=model,
        version=version,
        checks=[],
        latencies_ms={},
        image=image,
        target=grpc_target,
        rest_target=rest_target,
    )
    with _ServerClient(grpc_target, rest_target, model) as client:
        progress.step(f"waiting for {model} to become AVAILABLE on {grpc_target}")
        started = time.monotonic()
        try:
            report.version = _wait_until_available(client, version, deadline, exit_status)
        except _CheckFailed as exc:
            report.checks.append(CheckResult(GRPC_MODEL_STATUS, False, str(exc), None))
            return report
        report.checks.append(
            CheckResult(
                GRPC_MODEL_STATUS,
                True,
                f"version {report.version} AVAILABLE after {time.monotonic() - started:.1f}s",
                client.last_latency_ms,
            )
        )
        served_version = report.version
        expectation = load_expectation(served_version)

        progress.step("comparing the served signature with the provenance")
        report.checks.append(
            _check(GRPC_SIGNATURE, lambda: _signature_check(client, served_version, expectation))
        )
        progress.step("sending the golden inputs over gRPC")
        _append_predict_check(
            report,
            GRPC_PREDICT,
            lambda: client.predict(served_version, expectation),
            expectation,
            f"gRPC Predict of version {served_version}",
        )
        if rest_target is None:
            return report
        progress.step(f"checking the REST API on {rest_target}")
        report.checks.append(
            _check(REST_MODEL_STATUS, lambda: _rest_status_check(client, served_version))
        )
        _append_predict_check(
            report,
            REST_PREDICT,
            lambda: client.rest_predict(served_version, expectation),
            expectation,
            f"REST predict of version {served_version}",
        )
    return report


def _check(name: str, body: Callable[[], tuple[str, float | None]]) -> CheckResult:
    """Run one check body, which returns (detail, latency_ms) or raises on a failure."""
    try:
        detail, latency_ms = body()
    except _CheckFailed as exc:
        return CheckResult(name, False, str(exc), None)
    except grpc.RpcError as exc:
        return CheckResult(name, False, _rpc_error_text(exc), None)
    except requests.RequestException as exc:
        return CheckResult(name, False, f"REST request failed: {exc}", None)
    return CheckResult(name, True, detail, latency_ms)


def _wait_until_available(
    client: "_ServerClient",
    version: int | None,
    deadline: float,
    exit_status: Callable[[], str | None],
) -> int:
    """Poll GetModelStatus until the version (or, if None, any version) is AVAILABLE.

    Returns:
        The version to check: the given one, else the highest AVAILABLE one.

    Raises:
        _CheckFailed: The server exited, a load failed, or the deadline passed.
    """
    wanted = "version " + str(version) if version is not None else "a version"
    last_seen = "no answer yet"
    while True:
        exited = exit_status()
        if exited is not None:
            raise _CheckFailed(f"{exited} before {client.model} became AVAILABLE")
        try:
            statuses = client.model_status()
        except grpc.RpcError as exc:
            # UNAVAILABLE: not listening yet; NOT_FOUND: the model is still loading (or the name
            # is wrong, which the deadline then reports with this error as the last answer).
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                raise _CheckFailed(f"GetModelStatus failed: {_rpc_error_text(exc)}") from None
            last_seen = _rpc_error_text(exc)
        else:
            available = sorted(s.version for s in statuses if s.state == _AVAILABLE)
            if version is None and available:
                return available[-1]
            if version is not None and version in available:
                return version
            failed = [
                s for s in statuses
                if s.state == _END and s.status.error_code != 0
                and (version is None or s.version == version)
            ]
            if failed and (version is not None or len(failed) == len(statuses)):
                raise _CheckFailed(
                    f"version {failed[0].version} of {client.model} failed to load: "
                    f"{failed[0].status.error_message}"
                )
            last_seen = ", ".join(
                f"version {s.version} {get_model_status_pb2.ModelVersionStatus.State.Name(s.state)}"
                for s in statuses
            ) or "no versions"
        if time.monotonic() >= deadline:
            raise _CheckFailed(
                f"{wanted} of {client.model} did not become AVAILABLE in time; "
                f"last answer: {last_seen}"
            )
        time.sleep(_POLL_INTERVAL_S)


def _signature_check(
    client: "_ServerClient", version: int, expectation: _Expectation
) -> tuple[str, float | None]:
    signature = client.signature_def(version)
    problems: list[str] = []
    for side, served, expected in (
        ("input", signature.inputs, expectation.inputs),
        ("output", signature.outputs, expectation.outputs),
    ):
        if set(served) != set(expected):
            problems.append(f"{side} keys {sorted(served)} != provenance {sorted(expected)}")
            continue
        for key, summary in expected.items():
            dtype, shape = _dtype_and_shape(served[key])
            if tf.as_dtype(dtype) != tf.as_dtype(summary.dtype):
                problems.append(f"{side} {key!r} dtype {dtype} != {summary.dtype}")
            if shape != summary.shape:
                problems.append(f"{side} {key!r} shape {shape} != {summary.shape}")
    if problems:
        raise _CheckFailed(
            f"{layout.DEFAULT_SIGNATURE} differs from the provenance: " + "; ".join(problems)
        )
    return (
        f"{layout.DEFAULT_SIGNATURE} matches: inputs {sorted(signature.inputs)}, "
        f"outputs {sorted(signature.outputs)}",
        client.last_latency_ms,
    )


def _dtype_and_shape(info: Any) -> tuple[str, list[int | None] | None]:
    """A TensorInfo as the provenance summarises it: None for unknown dims, and for unknown rank."""
    dtype = tf.as_dtype(info.dtype).name
    if info.tensor_shape.unknown_rank:
        return dtype, None
    return dtype, [dim.size if dim.size >= 0 else None for dim in info.tensor_shape.dim]


def _append_predict_check(
    report: SmokeReport,
    name: str,
    send: Callable[[], tuple[dict[str, np.ndarray], float]],
    expectation: _Expectation,
    what: str,
) -> None:
    """Send the golden request PREDICT_REPEATS times; every answer must match the goldens.

    Appends the check to the report and, if any request completed, its latency summary.
    """
    latencies: list[float] = []

    def body() -> tuple[str, float | None]:
        worst = 0.0
        for attempt in range(1, PREDICT_REPEATS + 1):
            outputs, latency_ms = send()
            latencies.append(latency_ms)
            worst = max(worst, _compare_outputs(outputs, expectation, f"{what} (request {attempt})"))
        return (
            f"{PREDICT_REPEATS} requests matched the goldens "
            f"(max abs error {worst:.3g}, tolerance {expectation.tolerance:.3g})",
            statistics.median(latencies),
        )

    report.checks.append(_check(name, body))
    if latencies:
        report.latencies_ms[name] = _latency_summary(latencies)


def _rest_status_check(client: "_ServerClient", version: int) -> tuple[str, float | None]:
    body = client.rest_status()
    states = {
        str(entry.get("version")): entry.get("state")
        for entry in body.get("model_version_status", [])
    }
    if states.get(str(version)) != "AVAILABLE":
        raise _CheckFailed(
            f"GET /v1/models/{client.model} does not report version {version} AVAILABLE: {body}"
        )
    return f"version {version} AVAILABLE", client.last_latency_ms


def _compare_outputs(outputs: dict[str, np.ndarray], expectation: _Expectation, what: str) -> float:
    """Return the largest absolute error over the golden outputs; _CheckFailed beyond tolerance.

    The comparison is the converter's own (packager.equivalence), so "within tolerance" means
    here exactly what it meant when the goldens were verified against the source.
    """
    try:
        comparison = equivalence.compare_outputs(
            expectation.goldens.outputs, outputs, expectation.tolerance, what
        )
    except VerificationError as exc:
        raise _CheckFailed(str(exc)) from None
    return comparison.max_abs_error


def _latency_summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(latencies), 3),
        "max": round(max(latencies), 3),
        "count": len(latencies),
    }


# --- talking to the server ---------------------------------------------------------------------


class _ServerClient:
    """gRPC and REST calls to one model on one server; remembers the last request's latency."""

    def __init__(self, grpc_target: str, rest_target: str | None, model: str) -> None:
        self.model = model
        # Golden batches can exceed gRPC's 4 MiB default message size.
        self._channel = grpc.insecure_channel(
            grpc_target,
            options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
        )
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._rest_base = f"http://{rest_target}/v1/models/{model}" if rest_target else None
        self._session = requests.Session()
        self.last_latency_ms: float | None = None

    def __enter__(self) -> "_ServerClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._channel.close()
        self._session.close()

    @contextmanager
    def _timed(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.last_latency_ms = round((time.perf_counter() - started) * 1000.0, 3)

    def model_status(self) -> list[Any]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model
        with self._timed():
            response = self._models.GetModelStatus(request, timeout=REQUEST_TIMEOUT_S)
        return list(response.model_version_status)

    def signature_def(self, version: int) -> Any:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = self.model
        request.model_spec.version.value = version
        with self._timed():
            response = self._predictions.GetModelMetadata(request, timeout=REQUEST_TIMEOUT_S)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" not in response.metadata or not response.metadata[
            "signature_def"
        ].Unpack(signature_map):
            raise _CheckFailed("GetModelMetadata returned no signature_def map")
        if layout.DEFAULT_SIGNATURE not in signature_map.signature_def:
            raise _CheckFailed(
                f"the served model has no {layout.DEFAULT_SIGNATURE} signature "
                f"(it has {sorted(signature_map.signature_def)})"
            )
        return signature_map.signature_def[layout.DEFAULT_SIGNATURE]

    def predict(
        self, version: int, expectation: _Expectation
    ) -> tuple[dict[str, np.ndarray], float]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = layout.DEFAULT_SIGNATURE
        request.model_spec.version.value = version
        for key, value in expectation.goldens.inputs.items():
            dtype = tf.as_dtype(expectation.inputs[key].dtype) if key in expectation.inputs else None
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
        with self._timed():
            response = self._predictions.Predict(request, timeout=REQUEST_TIMEOUT_S)
        if response.model_spec.HasField("version") and response.model_spec.version.value != version:
            raise _CheckFailed(
                f"asked for version {version}, answered by version {response.model_spec.version.value}"
            )
        outputs = {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}
        return outputs, self.last_latency_ms or 0.0

    def rest_status(self) -> dict[str, Any]:
        assert self._rest_base is not None
        with self._timed():
            response = self._session.get(self._rest_base, timeout=REQUEST_TIMEOUT_S)
        return _json_or_fail(response)

    def rest_predict(
        self, version: int, expectation: _Expectation
    ) -> tuple[dict[str, np.ndarray], float]:
        assert self._rest_base is not None
        body = {
            "signature_name": layout.DEFAULT_SIGNATURE,
            "inputs": {k: _to_json_value(v) for k, v in expectation.goldens.inputs.items()},
        }
        url = f"{self._rest_base}/versions/{version}:predict"
        with self._timed():
            response = self._session.post(url, json=body, timeout=REQUEST_TIMEOUT_S)
        answer = _json_or_fail(response)
        if "outputs" not in answer:
            raise _CheckFailed(f"POST {url} answered without 'outputs': {_shorten(str(answer))}")
        goldens = expectation.goldens.outputs
        # TF Serving's columnar response drops the output key when the signature has only one.
        named = answer["outputs"]
        if not (isinstance(named, dict) and set(goldens) <= set(named)) and len(goldens) == 1:
            named = {next(iter(goldens)): named}
        if not isinstance(named, dict):
            raise _CheckFailed(f"POST {url} answered with unnamed outputs for several goldens")
        outputs = {
            key: _from_json_value(named[key], goldens[key].dtype) for key in goldens if key in named
        }
        return outputs, self.last_latency_ms or 0.0


def _json_or_fail(response: requests.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise _CheckFailed(
            f"{response.request.method} {response.url} answered HTTP {response.status_code}: "
            f"{_shorten(response.text)}"
        )
    try:
        body = response.json()
    except ValueError:
        raise _CheckFailed(f"{response.url} answered with non-JSON: {_shorten(response.text)}") from None
    if not isinstance(body, dict):
        raise _CheckFailed(f"{response.url} answered with JSON that is not an object")
    return body


def _to_json_value(array: np.ndarray) -> Any:
    """A tensor as TF Serving's JSON: nested lists, strings as {"b64": ...}."""
    if array.dtype.kind in "SUO":
        encode = np.frompyfunc(
            lambda s: {"b64": base64.b64encode(s.encode() if isinstance(s, str) else bytes(s)).decode()},
            1,
            1,
        )
        return np.asarray(encode(array), dtype=object).tolist()
    return array.tolist()


def _from_json_value(value: Any, golden_dtype: np.dtype) -> np.ndarray:
    """TF Serving's JSON back to an array of the golden's kind (b64 objects or text for strings)."""
    if golden_dtype.kind in "SUO":
        decode = np.frompyfunc(
            lambda s: base64.b64decode(s["b64"]) if isinstance(s, dict) else str(s).encode(), 1, 1
        )
        return np.asarray(decode(np.array(value, dtype=object)), dtype=object)
    try:
        return np.asarray(value, dtype=golden_dtype)
    except (TypeError, ValueError) as exc:
        raise _CheckFailed(f"cannot read a {golden_dtype} tensor from the REST answer: {exc}") from None


def _rpc_error_text(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'RPC error'}: {details}"


# --- the container ----------------------------------------------------------------------------


def _require_model_dir(
    client: docker.DockerClient,
    container: docker.models.containers.Container,
    image: str,
    model: str,
) -> None:
    """UsageError unless the image has /models/MODEL (asked before starting, to fail fast)."""
    # HEAD /containers/{id}/archive stats a path without copying it; docker-py's get_archive
    # would start streaming the whole model.
    api = client.api
    response = api.head(
        f"{api.base_url}/v{api.api_version}/containers/{container.id}/archive",
        params={"path": f"{MODELS_ROOT}/{model}"},
    )
    if response.status_code == 404:
        raise UsageError(
            f"image {image} has no {MODELS_ROOT}/{model}: check --model, or build the image from "
            f"the model's base path with 'tfpack build'"
        )
    response.raise_for_status()


def _expectation_from_container(
    container: docker.models.containers.Container, image: str, model: str, version: int
) -> _Expectation:
    """Copy assets.extra of /models/MODEL/VERSION out of the container and read it."""
    source = f"{MODELS_ROOT}/{model}/{version}/{layout.ASSETS_EXTRA}"
    try:
        stream, _ = container.get_archive(source)
        archive = io.BytesIO(b"".join(stream))
    except docker.errors.NotFound:
        raise UsageError(
            f"image {image} has no {source}: build it from a version dir written by 'tfpack convert'"
        ) from None
    with tempfile.TemporaryDirectory(prefix="tfpack-smoke-") as scratch:
        version_dir = Path(scratch) / str(version)
        wanted = {layout.GOLDENS_FILE, layout.PROVENANCE_FILE}
        with tarfile.open(fileobj=archive) as tar:
            for member in tar.getmembers():
                # Extract only the two known regular files, by name: never trust archive paths.
                if member.isfile() and member.name in wanted:
                    target = version_dir / member.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    target.write_bytes(extracted.read())
        missing = [name for name in sorted(wanted) if not (version_dir / name).is_file()]
        if missing:
            raise UsageError(
                f"image {image} lacks {', '.join(f'{MODELS_ROOT}/{model}/{version}/{m}' for m in missing)}: "
                "build it from a version dir written by 'tfpack convert'"
            )
        return _Expectation.from_version_dir(version_dir)


def _host_port(container: docker.models.containers.Container, port: int) -> int:
    bindings = container.attrs["NetworkSettings"]["Ports"].get(f"{port}/tcp") or []
    if not bindings:
        raise UsageError(f"Docker published no host port for the container's port {port}")
    return int(bindings[0]["HostPort"])


def _container_exit_status(container: docker.models.containers.Container) -> str | None:
    """None while the container runs; else how it ended (its logs go under failed checks)."""
    container.reload()
    if container.status not in ("exited", "dead"):
        return None
    code = container.attrs["State"]["ExitCode"]
    # The entrypoint's last line says why (e.g. which file failed verification).
    last_line = _container_log_tail(container).splitlines()[-1:]
    return f"the container exited with code {code}" + (f": {last_line[0]}" if last_line else "")


def _container_log_tail(container: docker.models.containers.Container) -> str:
    try:
        logs = container.logs(tail=_LOG_TAIL_LINES).decode("utf-8", errors="replace").rstrip()
    except docker.errors.DockerException as exc:
        return f"(container logs unavailable: {_first_line(str(exc))})"
    return logs or "(the container logged nothing)"


def _append_log_tail(report: SmokeReport, log_tail: str) -> None:
    """Put the container's last log lines under every failed check's detail."""
    report.checks = [
        check if check.passed else CheckResult(
            check.name,
            check.passed,
            f"{check.detail}\n--- last {_LOG_TAIL_LINES} container log lines ---\n{log_tail}",
            check.latency_ms,
        )
        for check in report.checks
    ]


def _remove_container(container: docker.models.containers.Container) -> None:
    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass


# --- small helpers ---------------------------------------------------------------------------


def _check_report_paths(report_path: Path | None, junit_path: Path | None) -> None:
    """Refuse report paths that cannot be written before the test runs, not after."""
    for path, flag in ((report_path, "--report"), (junit_path, "--junit")):
        if path is None:
            continue
        if path.is_dir():
            raise UsageError(f"{flag} {path} is a directory: give a file path")
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise UsageError(f"{flag} {path}: {path.parent} is not a writable directory")


def _check_address(address: str, flag: str) -> None:
    host, sep, port = address.rpartition(":")
    # ASCII digits only: "²" passes str.isdigit() and then fails int().
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} {address!r} is not HOST:PORT (for example localhost:8500)")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
