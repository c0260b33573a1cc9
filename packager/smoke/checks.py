"""The smoke checks, each written once over packager.smoke.client's interface, and what they expect.

In the order run_checks runs them, each a line in the JSON report and a testcase in the JUnit XML:

    grpc_model_status   ModelService.GetModelStatus says the version is AVAILABLE (waits, bounded)
    grpc_signature      GetModelMetadata's serving_default matches the provenance's signature
    grpc_predict        PredictionService.Predict of the golden inputs gives the golden outputs
    rest_model_status   GET /v1/models/NAME says the version is AVAILABLE
    rest_predict        POST /v1/models/NAME/versions/N:predict gives the golden outputs

The expectation is one version dir's assets.extra: the goldens (the inputs the converter fed and
the outputs it verified against the source), the signature the provenance recorded and the
tolerance the converter met. A pass therefore proves the served model computes what the source
computed. Every request names the version explicitly: the goldens belong to one version, and a
server with several loaded must answer for that one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packager import equivalence, layout
from packager.errors import VerificationError
from packager.progress import Progress
from packager.smoke.client import (
    ModelNotAvailable,
    ModelSpec,
    ServingClient,
    ServingRequestError,
    TensorSpec,
)
from packager.smoke.report import CheckResult, SmokeReport, summarize_latencies
from packager.tf_runtime import tensorflow

tf = tensorflow()

GRPC_MODEL_STATUS = "grpc_model_status"
GRPC_SIGNATURE = "grpc_signature"
GRPC_PREDICT = "grpc_predict"
REST_MODEL_STATUS = "rest_model_status"
REST_PREDICT = "rest_predict"

# Each predict check sends the golden request this many times: enough for a p50 that is not
# just the first (warm-up) call, few enough to keep a smoke test a smoke test.
PREDICT_REPEATS = 5


class CheckFailed(Exception):
    """A check observed something wrong; the message is the check's detail."""


# --- what the server must answer ----------------------------------------------------------


@dataclass(frozen=True)
class Expectation:
    """Goldens, the serving_default signature summary and the tolerance, from one version dir."""

    goldens: layout.Goldens
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    tolerance: float

    @classmethod
    def from_version_dir(cls, version_dir: Path) -> Expectation:
        """Read assets.extra of a version dir.

        Raises:
            UsageError: The version dir was not written by tfpack convert (no goldens, or a
                provenance without the signature or the tolerance).
        """
        goldens = layout.Goldens.load(version_dir / layout.GOLDENS_FILE)
        provenance_path = version_dir / layout.PROVENANCE_FILE
        provenance = layout.Provenance.load(provenance_path)
        return cls(
            goldens=goldens,
            inputs=_tensor_specs(provenance.inputs),
            outputs=_tensor_specs(provenance.outputs),
            tolerance=provenance.tolerance,
        )

    def request_inputs(self) -> dict[str, np.ndarray]:
        """The golden inputs, each of the dtype the signature declares for it."""
        return {
            key: np.asarray(value, dtype=tf.as_dtype(self.inputs[key].dtype).as_numpy_dtype)
            if key in self.inputs
            else value
            for key, value in self.goldens.inputs.items()
        }

    def output_dtypes(self) -> dict[str, np.dtype[Any]]:
        """The golden outputs' dtypes, by key."""
        return {key: value.dtype for key, value in self.goldens.outputs.items()}


def _tensor_specs(summaries: dict[str, layout.TensorSummary]) -> dict[str, TensorSpec]:
    """The provenance's signature summaries as the client's TensorSpec (a None shape: unknown rank)."""
    return {key: TensorSpec(dtype=value.dtype, shape=value.shape) for key, value in summaries.items()}


# --- the checks, each over any client ----------------------------------------------------------


def _check(name: str, body: Callable[[], tuple[str, float | None]]) -> CheckResult:
    """Run one check body, which returns (detail, latency_ms) or raises on a failure."""
    try:
        detail, latency_ms = body()
    except (CheckFailed, ServingRequestError) as exc:
        return CheckResult(name, False, str(exc), None)
    return CheckResult(name, True, detail, latency_ms)


def model_available(
    name: str,
    client: ServingClient,
    model: str,
    version: int | None,
    *,
    deadline: float,
    exited: Callable[[], str | None],
) -> tuple[CheckResult, int | None]:
    """Wait (until ``deadline``) for ``version``, or any version when None, to be AVAILABLE.

    Returns:
        The check, and the version AVAILABLE (the highest, when ``version`` is None) or None.
    """
    started = time.monotonic()
    try:
        availability = client.wait_until_available(model, version, deadline=deadline, exited=exited)
    except ModelNotAvailable as exc:
        return CheckResult(name, False, str(exc), None), None
    detail = f"version {availability.version} AVAILABLE after {time.monotonic() - started:.1f}s"
    return CheckResult(name, True, detail, availability.latency_ms), availability.version


def version_available(name: str, client: ServingClient, model: str, version: int) -> CheckResult:
    """Ask once: the model's status must report ``version`` AVAILABLE."""

    def body() -> tuple[str, float | None]:
        status = client.model_status(model)
        if version not in status.available():
            raise CheckFailed(f"{status.call} does not report version {version} AVAILABLE: {status.describe()}")
        return f"version {version} AVAILABLE", status.latency_ms

    return _check(name, body)


def signature_matches(
    name: str, client: ServingClient, model: str, version: int, expectation: Expectation
) -> CheckResult:
    """The served serving_default must have the provenance's keys, dtypes and shapes."""

    def body() -> tuple[str, float | None]:
        metadata = client.metadata(model, version)
        signature = metadata.signatures.get(layout.DEFAULT_SIGNATURE)
        if signature is None:
            raise CheckFailed(
                f"the served model has no {layout.DEFAULT_SIGNATURE} signature (it has {sorted(metadata.signatures)})"
            )
        problems: list[str] = []
        for side, served, expected in (
            ("input", signature.inputs, expectation.inputs),
            ("output", signature.outputs, expectation.outputs),
        ):
            if set(served) != set(expected):
                problems.append(f"{side} keys {sorted(served)} != provenance {sorted(expected)}")
                continue
            for key, summary in expected.items():
                spec = served[key]
                if tf.as_dtype(spec.dtype) != tf.as_dtype(summary.dtype):
                    problems.append(f"{side} {key!r} dtype {spec.dtype} != {summary.dtype}")
                if spec.shape != summary.shape:
                    problems.append(f"{side} {key!r} shape {spec.shape} != {summary.shape}")
        if problems:
            raise CheckFailed(f"{layout.DEFAULT_SIGNATURE} differs from the provenance: " + "; ".join(problems))
        return (
            f"{layout.DEFAULT_SIGNATURE} matches: inputs {sorted(signature.inputs)}, "
            f"outputs {sorted(signature.outputs)}",
            metadata.latency_ms,
        )

    return _check(name, body)


def predictions_match(
    name: str, client: ServingClient, spec: ModelSpec, expectation: Expectation
) -> tuple[CheckResult, list[float]]:
    """Send the golden request PREDICT_REPEATS times; every answer must match the goldens.

    Returns:
        The check, and the latency of each request that completed.
    """
    what = f"{client.predict_call} of version {spec.version}"
    inputs = expectation.request_inputs()
    output_dtypes = expectation.output_dtypes()
    latencies: list[float] = []

    def body() -> tuple[str, float | None]:
        worst = 0.0
        for attempt in range(1, PREDICT_REPEATS + 1):
            prediction = client.predict(spec, inputs, output_dtypes)
            latencies.append(prediction.latency_ms)
            if prediction.version is not None and prediction.version != spec.version:
                raise CheckFailed(f"asked for version {spec.version}, answered by version {prediction.version}")
            worst = max(worst, _max_error(prediction.outputs, expectation, f"{what} (request {attempt})"))
        return (
            f"{PREDICT_REPEATS} requests matched the goldens "
            f"(max abs error {worst:.3g}, tolerance {expectation.tolerance:.3g})",
            statistics.median(latencies),
        )

    return _check(name, body), latencies


def _max_error(outputs: dict[str, np.ndarray], expectation: Expectation, what: str) -> float:
    """Return the largest absolute error over the golden outputs; CheckFailed beyond tolerance.

    The comparison is the converter's own (packager.equivalence), so "within tolerance" means
    here exactly what it meant when the goldens were verified against the source.
    """
    try:
        comparison = equivalence.compare_outputs(expectation.goldens.outputs, outputs, expectation.tolerance, what)
    except VerificationError as exc:
        raise CheckFailed(str(exc)) from None
    return comparison.max_abs_error


# --- the sequence ------------------------------------------------------------------------------


def run_checks(
    report: SmokeReport,
    *,
    grpc: ServingClient,
    rest: ServingClient | None,
    version: int | None,
    expectation_for: Callable[[str, int], Expectation],
    deadline: float,
    exited: Callable[[], str | None],
    progress: Progress,
) -> None:
    """Wait for the model over gRPC, then run every check, appending each to ``report``.

    A failed status check ends the run: nothing else can be asked of a model that is not served.

    Args:
        report: Receives the checks, the version checked and the predict latencies.
        grpc: The server's gRPC client.
        rest: Its REST client; None skips the REST checks.
        version: The version to check; None: the highest that becomes AVAILABLE.
        expectation_for: (model, version) to what that version must answer.
        deadline: time.monotonic() by which the version must be AVAILABLE.
        exited: None while the server runs; else how it ended.
        progress: Receives a line per step.
    """
    model = report.model
    progress.step(f"waiting for {model} to become AVAILABLE on {grpc.target}")
    status, served_version = model_available(GRPC_MODEL_STATUS, grpc, model, version, deadline=deadline, exited=exited)
    report.version = served_version if served_version is not None else version
    report.checks.append(status)
    if served_version is None:
        return
    expectation = expectation_for(model, served_version)
    spec = ModelSpec(model, served_version)

    progress.step("comparing the served signature with the provenance")
    report.checks.append(signature_matches(GRPC_SIGNATURE, grpc, model, served_version, expectation))
    progress.step("sending the golden inputs over gRPC")
    _append_predictions(report, GRPC_PREDICT, grpc, spec, expectation)
    if rest is None:
        return
    progress.step(f"checking the REST API on {rest.target}")
    report.checks.append(version_available(REST_MODEL_STATUS, rest, model, served_version))
    _append_predictions(report, REST_PREDICT, rest, spec, expectation)


def _append_predictions(
    report: SmokeReport, name: str, client: ServingClient, spec: ModelSpec, expectation: Expectation
) -> None:
    """Append the predict check and, if any request completed, its latency summary."""
    result, latencies = predictions_match(name, client, spec, expectation)
    report.checks.append(result)
    if latencies:
        report.latencies_ms[name] = summarize_latencies(latencies)
