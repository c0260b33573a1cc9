"""The order the checks run in, and what each runs against: one smoke run's sequence.

    1. per model: grpc_model_status (waits, bounded by --timeout, for every version of the plan)
    2. per model, per version AVAILABLE, per signature of its contract:
         grpc_signature; grpc_predict (signatures with goldens); grpc_classify / grpc_regress
    3. per model, per version label: grpc_label
    4. REST (with a REST target): rest_model_status, then step 2 and 3 over REST, with
       rest_predict (columnar) and rest_predict_rows (row form)
    5. the bad requests (packager.smoke.negative) over gRPC, then REST, against the first model's
       highest version and its golden signature
    6. grpc_latency over --requests Predicts, then grpc_load with --load

A model whose status check fails gets no other checks: nothing else can be asked of a model that
is not served. The report's model/version and latencies_ms (grpc_predict, rest_predict,
rest_predict_rows) describe the first model's highest version's golden signature, as they did
when a run checked one version of one model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from packager.progress import Progress
from packager.smoke.checks import (
    GRPC_PREDICT,
    REST_PREDICT,
    REST_PREDICT_ROWS,
    Predictor,
    examples_answered,
    is_example_method,
    label_resolves,
    model_available,
    predictions_match,
    signatures_match,
    versions_available,
)
from packager.smoke.client import (
    Deadline,
    ModelSpec,
    RestClient,
    ServingClient,
    ServingRequestError,
    row_batch_size,
)
from packager.smoke.expectation import Expectation, SignatureExpectation
from packager.smoke.latency import DEFAULT_REQUESTS, GRPC_LATENCY, LoadSpec, latency_measured, load_applied
from packager.smoke.negative import bad_requests_refused
from packager.smoke.report import CheckResult, SmokeReport, summarize_latencies
from packager.smoke.targets import ServingPlan


@dataclass(frozen=True)
class SuiteOptions:
    """What the caller chose: the Predicts to time, and the load to apply.

    Attributes:
        requests: How many sequential Predicts grpc_latency times (--requests).
        load: --load C,S, or None for no load check.
    """

    requests: int = DEFAULT_REQUESTS
    load: LoadSpec | None = None


@dataclass
class _Primary:
    """The first model's highest version and its golden signature: latency, load and bad requests go here."""

    spec: ModelSpec
    signature: SignatureExpectation
    known_versions: set[int]


def run_checks(
    report: SmokeReport,
    *,
    grpc: ServingClient,
    rest: RestClient | None,
    plan: ServingPlan,
    expectation_for: Callable[[str, int], Expectation],
    deadline: Deadline,
    exited: Callable[[], str | None],
    options: SuiteOptions,
    progress: Progress,
) -> None:
    """Run every check in the module's order, appending each to ``report``.

    Args:
        report: Receives the checks, the versions checked, latencies and load.
        grpc: The server's gRPC client.
        rest: Its REST client; None skips the REST checks.
        plan: The models, versions and labels to check.
        expectation_for: (model, version) to what that version must answer.
        deadline: When every version must be AVAILABLE.
        exited: None while the server runs; else how it ended.
        options: --requests and --load.
        progress: Receives a line per step.
    """
    served: dict[str, list[int]] = {}
    for model, versions in plan.models.items():
        wanted = "every version" if versions else "a version"
        progress.step(f"waiting for {wanted} of {model} to become AVAILABLE on {grpc.target}")
        status, available = model_available(grpc, model, versions, deadline=deadline, exited=exited)
        report.checks.append(status)
        report.models[model] = available
        if available:
            served[model] = available
    if len(plan.models) == 1:
        (only,) = plan.models
        report.model = only
        report.version = served[only][-1] if only in served else _single(plan.models[only])
    if not served:
        return
    expectations = {
        (model, version): expectation_for(model, version) for model, versions in served.items() for version in versions
    }
    primary = _primary(served, expectations)
    if primary is not None:
        primary.known_versions = _known_versions(grpc, primary.spec.name, served[primary.spec.name])
    first_predict_ms: float | None = None

    for client in [grpc] if rest is None else [grpc, rest]:
        progress.step(f"checking {len(expectations)} versions over {client.transport} on {client.target}")
        if client is rest:
            for model, available in served.items():
                report.checks.append(versions_available(client, model, available))
        for (model, version), expectation in expectations.items():
            report.checks.extend(signatures_match(client, model, version, expectation))
            for name, signature in sorted(expectation.signatures.items()):
                spec = ModelSpec(model, version, name)
                if signature.goldens is not None:
                    for check_name, predict in _predictors(client, signature):
                        result, latencies = predictions_match(
                            check_name, _what(check_name), predict, spec, signature, expectation.tolerance
                        )
                        report.checks.append(result)
                        if check_name == GRPC_PREDICT and latencies and first_predict_ms is None:
                            first_predict_ms = latencies[0]
                        if primary is not None and spec == primary.spec and latencies:
                            report.latencies_ms[check_name] = summarize_latencies(latencies)
                elif is_example_method(signature):
                    report.checks.append(examples_answered(client, spec, signature.method, expectation))
        for model, labels in plan.labels.items():
            for label, version in sorted(labels.items()):
                report.checks.append(label_resolves(client, model, label, version))

    if primary is None:
        # Without goldens there is no known-good request to break or to time: that is a failed
        # smoke (tfpack convert always writes goldens), not a pass with the checks left out.
        report.checks.append(
            CheckResult(
                name=GRPC_LATENCY,
                passed=False,
                detail="no served version has a signature with golden inputs: nothing to send bad requests to "
                "or to time (convert the model with 'tfpack convert', which writes them)",
                latency_ms=None,
            )
        )
        return
    for client in [grpc] if rest is None else [grpc, rest]:
        progress.step(f"sending bad requests over {client.transport}")
        report.checks.extend(bad_requests_refused(client, primary.spec, primary.signature, primary.known_versions))

    inputs, output_dtypes = _request(primary.signature)
    progress.step(f"timing {options.requests} gRPC Predicts")
    result, summary, first = latency_measured(grpc, primary.spec, inputs, output_dtypes, options.requests)
    report.checks.append(result)
    if summary is not None:
        report.latency_ms = {"first": first_predict_ms if first_predict_ms is not None else first, **summary}
    if options.load is not None:
        progress.step(f"applying load: {options.load.clients} clients for {options.load.seconds:g}s")
        result, load = load_applied(grpc.target, primary.spec, inputs, output_dtypes, options.load)
        report.checks.append(result)
        report.load = load


def _single(versions: tuple[int, ...] | None) -> int | None:
    return versions[-1] if versions else None


def _what(check_name: str) -> str:
    return {GRPC_PREDICT: "gRPC Predict", REST_PREDICT: "REST predict", REST_PREDICT_ROWS: "REST predict (rows)"}[
        check_name
    ]


def _predictors(client: ServingClient, signature: SignatureExpectation) -> list[tuple[str, Predictor]]:
    """The predict checks over ``client``: gRPC's one form, REST's columnar and (when the golden
    inputs share a batch dimension) row forms."""
    if not isinstance(client, RestClient):
        return [(GRPC_PREDICT, client.predict)]
    forms: list[tuple[str, Predictor]] = [(REST_PREDICT, client.predict)]
    if row_batch_size(signature.request_inputs()) is not None:
        forms.append((REST_PREDICT_ROWS, client.predict_rows))
    return forms


def _primary(served: dict[str, list[int]], expectations: dict[tuple[str, int], Expectation]) -> _Primary | None:
    """The signature bad requests and timing go to: the first model (in the plan's order) whose
    highest version has a signature with goldens; None when no model has one."""
    for model, versions in served.items():
        if not versions or (model, versions[-1]) not in expectations:
            continue
        golden = expectations[(model, versions[-1])].golden_signature()
        if golden is not None:
            name, signature = golden
            return _Primary(ModelSpec(model, versions[-1], name), signature, set(versions))
    return None


def _request(signature: SignatureExpectation) -> tuple[dict[str, np.ndarray], dict[str, np.dtype[Any]]]:
    """The request to time and load with: the golden one, else one of the signature's shapes
    (gRPC answers carry their dtypes, so no output dtypes are needed)."""
    if signature.goldens is not None:
        return signature.request_inputs(), signature.output_dtypes()
    return signature.synthetic_inputs(), {}


def _known_versions(client: ServingClient, model: str, served: list[int]) -> set[int]:
    """Every version of ``model`` the server knows of (loaded or not), so that the unknown
    version asked for is above them all."""
    try:
        return set(served) | {status.version for status in client.model_status(model).versions}
    except ServingRequestError:
        return set(served)
