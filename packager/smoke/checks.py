"""The smoke checks that a faithful server passes, each written once over packager.smoke.client.

Each is a line in the JSON report and a testcase in the JUnit XML, named by its kind (below) and
its subject (the model, "MODEL/VERSION/SIGNATURE", or "MODEL:LABEL"); the same check over REST
has the "rest_" name:

    grpc_model_status   GetModelStatus says every version to check is AVAILABLE (waits, bounded
                        by --timeout); a failed load is reported with the server's own error
    rest_model_status   GET /v1/models/NAME says the same
    grpc_signature      per signature: GetModelMetadata equals the version dir's contract
    rest_signature      (method, input and output keys, dtypes, shapes; none missing, none extra)
    grpc_predict        per signature with goldens: Predict of the golden inputs gives the golden
    rest_predict        outputs within the conversion's tolerance; REST in the columnar form
    rest_predict_rows   ("inputs") and in the row form ("instances")
    grpc_classify       per classify / regress signature taking serialized Examples: the call
    grpc_regress        succeeds and answers one result per example sent (examples built from
    rest_classify       serving_default's golden inputs; these signatures have no goldens of
    rest_regress        their own)
    grpc_label          per version label: model_spec.version_label (gRPC) and
    rest_label          /v1/models/NAME/labels/LABEL (REST) resolve to the label's version

A pass therefore proves the served model computes what the source computed, and serves the
contract clients were promised. Every request names the version explicitly: the goldens belong
to one version, and a server with several loaded must answer for that one. The checks of bad
requests are in packager.smoke.negative, latency and load in packager.smoke.latency, the order
in packager.smoke.suite.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from packager import equivalence
from packager.errors import VerificationError
from packager.smoke.client import (
    Deadline,
    ModelMetadata,
    ModelNotAvailable,
    ModelSpec,
    Prediction,
    ServingClient,
    ServingRequestError,
    Signature,
    TensorSpec,
)
from packager.smoke.expectation import (
    CLASSIFY_METHOD,
    CONTRACT,
    REGRESS_METHOD,
    Expectation,
    SignatureExpectation,
)
from packager.smoke.report import CheckResult
from packager.tf_runtime import tensorflow

tf = tensorflow()

GRPC_MODEL_STATUS = "grpc_model_status"
REST_MODEL_STATUS = "rest_model_status"
GRPC_SIGNATURE = "grpc_signature"
REST_SIGNATURE = "rest_signature"
GRPC_PREDICT = "grpc_predict"
REST_PREDICT = "rest_predict"
REST_PREDICT_ROWS = "rest_predict_rows"
GRPC_CLASSIFY = "grpc_classify"
REST_CLASSIFY = "rest_classify"
GRPC_REGRESS = "grpc_regress"
REST_REGRESS = "rest_regress"
GRPC_LABEL = "grpc_label"
REST_LABEL = "rest_label"

# Each predict check sends the golden request this many times: enough for a p50 that is not
# just the first (warm-up) call, few enough to keep a smoke test a smoke test.
PREDICT_REPEATS = 5

Predictor = Callable[[ModelSpec, Mapping[str, np.ndarray], Mapping[str, np.dtype[Any]]], Prediction]


class CheckFailed(Exception):
    """A check observed something wrong; the message is the check's detail."""


def check(name: str, subject: str | None, body: Callable[[], tuple[str, float | None]]) -> CheckResult:
    """Run one check body, which returns (detail, latency_ms) or raises on a failure."""
    try:
        detail, latency_ms = body()
    except (CheckFailed, ServingRequestError) as exc:
        return CheckResult(name, False, str(exc), None, subject)
    return CheckResult(name, True, detail, latency_ms, subject)


def signature_subject(model: str, version: int, signature: str) -> str:
    """A signature check's subject: "MODEL/VERSION/SIGNATURE"."""
    return f"{model}/{version}/{signature}"


# --- availability ------------------------------------------------------------------------------


def model_available(
    client: ServingClient,
    model: str,
    versions: Collection[int] | None,
    *,
    deadline: Deadline,
    exited: Callable[[], str | None],
) -> tuple[CheckResult, list[int]]:
    """Wait (until ``deadline``) for every one of ``versions``, or any version when None, to be AVAILABLE.

    Returns:
        The check, and the versions AVAILABLE (the highest one when ``versions`` is None; empty
        on a failure).
    """
    name = f"{client.transport}_model_status"
    started = time.monotonic()
    try:
        availability = client.wait_until_available(model, versions, deadline=deadline, exited=exited)
    except ModelNotAvailable as exc:
        return CheckResult(name, False, str(exc), None, model), []
    listed = ", ".join(map(str, availability.versions))
    detail = (
        f"version{'s' if len(availability.versions) > 1 else ''} {listed} AVAILABLE after "
        f"{time.monotonic() - started:.1f}s ({availability.attempts} status requests)"
    )
    return CheckResult(name, True, detail, availability.latency_ms, model), availability.versions


def versions_available(client: ServingClient, model: str, versions: Collection[int]) -> CheckResult:
    """Ask once: the model's status must report every one of ``versions`` AVAILABLE."""

    def body() -> tuple[str, float | None]:
        status = client.model_status(model)
        missing = sorted(set(versions) - set(status.available()))
        if missing:
            raise CheckFailed(
                f"{status.call} does not report version {', '.join(map(str, missing))} AVAILABLE: {status.describe()}"
            )
        return f"version {', '.join(map(str, sorted(versions)))} AVAILABLE", status.latency_ms

    return check(f"{client.transport}_model_status", model, body)


# --- metadata against the contract -------------------------------------------------------------


def _dtype(name: str) -> str:
    """One spelling per dtype ("float" and "float32" alike); names TensorFlow lacks stay as given."""
    try:
        return str(tf.as_dtype(name).name)
    except TypeError:
        return name


def _differences(served: Signature, expected: SignatureExpectation, source: str) -> list[str]:
    problems: list[str] = []
    if source == CONTRACT and served.method and served.method != expected.method:
        problems.append(f"method {served.method} != {source} {expected.method}")
    sides: tuple[tuple[str, dict[str, TensorSpec], dict[str, TensorSpec]], ...] = (
        ("input", served.inputs, expected.inputs),
        ("output", served.outputs, expected.outputs),
    )
    for side, served_specs, expected_specs in sides:
        if set(served_specs) != set(expected_specs):
            problems.append(f"{side} keys {sorted(served_specs)} != {source} {sorted(expected_specs)}")
            continue
        for key, spec in expected_specs.items():
            got = served_specs[key]
            if _dtype(got.dtype) != _dtype(spec.dtype):
                problems.append(f"{side} {key!r} dtype {got.dtype} != {spec.dtype}")
            if got.shape != spec.shape:
                problems.append(f"{side} {key!r} shape {got.shape} != {spec.shape}")
    return problems


def signatures_match(client: ServingClient, model: str, version: int, expectation: Expectation) -> list[CheckResult]:
    """One check per signature: the served metadata equals the version dir's contract.

    With the whole contract known (CONTRACT), a signature served but not in it fails too; with
    only the provenance's serving_default known, only serving_default is compared.
    """
    name = f"{client.transport}_signature"
    metadata: ModelMetadata | None = None
    error: ServingRequestError | None = None
    try:
        metadata = client.metadata(model, version)
    except ServingRequestError as exc:
        error = exc
    served = metadata.signatures if metadata is not None else {}
    names = set(expectation.signatures)
    if expectation.source == CONTRACT:
        names |= {key for key in served if not key.startswith("__")}  # __saved_model_init_op: no client contract
    results = []
    for signature in sorted(names):

        def body(signature: str = signature) -> tuple[str, float | None]:
            if error is not None:
                raise error
            assert metadata is not None  # fetched above when there is no error
            expected = expectation.signatures.get(signature)
            got = served.get(signature)
            if got is None:
                raise CheckFailed(
                    f"the server does not serve {signature!r} of version {version} (it serves {sorted(served)})"
                )
            if expected is None:
                raise CheckFailed(f"the server serves {signature!r}, which the version dir's contract does not have")
            problems = _differences(got, expected, expectation.source)
            if problems:
                raise CheckFailed(f"{signature} differs from the {expectation.source}: " + "; ".join(problems))
            return (
                f"{signature} matches the {expectation.source}: inputs {sorted(got.inputs)}, outputs {sorted(got.outputs)}",
                metadata.latency_ms,
            )

        results.append(check(name, signature_subject(model, version, signature), body))
    return results


# --- goldens ----------------------------------------------------------------------------------


def predictions_match(
    name: str,
    what: str,
    predict: Predictor,
    spec: ModelSpec,
    signature: SignatureExpectation,
    tolerance: float,
) -> tuple[CheckResult, list[float]]:
    """Send the golden request PREDICT_REPEATS times; every answer must match the goldens.

    Args:
        name: The check's name.
        what: The request, for messages ("gRPC Predict", "REST predict (rows)").
        predict: Sends one request (a client's predict or predict_rows).
        spec: The model, version and signature.
        signature: Its expectation (with goldens).
        tolerance: The conversion's tolerance.

    Returns:
        The check, and the latency of each request that completed.
    """
    inputs = signature.request_inputs()
    output_dtypes = signature.output_dtypes()
    latencies: list[float] = []

    def body() -> tuple[str, float | None]:
        worst = 0.0
        for attempt in range(1, PREDICT_REPEATS + 1):
            prediction = predict(spec, inputs, output_dtypes)
            latencies.append(prediction.latency_ms)
            if prediction.version is not None and prediction.version != spec.version:
                raise CheckFailed(f"asked for version {spec.version}, answered by version {prediction.version}")
            where = f"{what} of version {spec.version} (request {attempt})"
            worst = max(worst, _max_error(prediction.outputs, signature, tolerance, where))
        return (
            f"{PREDICT_REPEATS} requests matched the goldens (max abs error {worst:.3g}, tolerance {tolerance:.3g})",
            statistics.median(latencies),
        )

    return check(name, signature_subject(spec.name, spec.version, spec.signature), body), latencies


def _max_error(outputs: dict[str, np.ndarray], signature: SignatureExpectation, tolerance: float, what: str) -> float:
    """Return the largest absolute error over the golden outputs; CheckFailed beyond tolerance.

    The comparison is the converter's own (packager.equivalence), so "within tolerance" means
    here exactly what it meant when the goldens were verified against the source.
    """
    assert signature.goldens is not None  # predictions_match runs only for signatures with goldens
    try:
        comparison = equivalence.compare_outputs(signature.goldens.outputs, outputs, tolerance, what)
    except VerificationError as exc:
        raise CheckFailed(str(exc)) from None
    return comparison.max_abs_error


# --- Classify and Regress ---------------------------------------------------------------------


def examples_answered(client: ServingClient, spec: ModelSpec, method: str, expectation: Expectation) -> CheckResult:
    """Classify or Regress (by ``method``) the examples; one result per example must come back."""
    examples = expectation.examples()
    verb = "classify" if method == CLASSIFY_METHOD else "regress"

    def body() -> tuple[str, float | None]:
        if method == CLASSIFY_METHOD:
            classified = client.classify(spec, examples)
            if len(classified.classes) != len(examples):
                raise CheckFailed(f"{len(examples)} examples sent, {len(classified.classes)} classifications answered")
            counts = sorted({len(classes) for classes in classified.classes})
            if not counts or counts[0] == 0 or len(counts) > 1:
                raise CheckFailed(f"every example must get the same, non-zero number of classes; got {counts}")
            return f"{len(examples)} examples classified, {counts[0]} classes each", classified.latency_ms
        regressed = client.regress(spec, examples)
        if len(regressed.values) != len(examples):
            raise CheckFailed(f"{len(examples)} examples sent, {len(regressed.values)} regressions answered")
        if not all(np.isfinite(regressed.values)):
            raise CheckFailed(f"non-finite regression values: {regressed.values}")
        return f"{len(examples)} examples regressed", regressed.latency_ms

    return check(f"{client.transport}_{verb}", signature_subject(spec.name, spec.version, spec.signature), body)


def is_example_method(signature: SignatureExpectation) -> bool:
    """Whether ``signature`` is called through Classify or Regress: a classify or regress method
    with one string input, which those APIs feed serialized tf.Examples to. (Another input cannot
    take Examples, from TF Serving either: such a signature is checked by its metadata only.)"""
    return (
        signature.method in (CLASSIFY_METHOD, REGRESS_METHOD)
        and len(signature.inputs) == 1
        and next(iter(signature.inputs.values())).dtype == "string"
    )


# --- version labels ---------------------------------------------------------------------------


def label_resolves(client: ServingClient, model: str, label: str, version: int) -> CheckResult:
    """The server must resolve ``label`` of ``model`` to ``version``."""

    def body() -> tuple[str, float | None]:
        answer = client.version_for_label(model, label)
        if answer.version != version:
            raise CheckFailed(f"label {label!r} resolves to version {answer.version}, not {version}")
        return f"label {label!r} resolves to version {version}", answer.latency_ms

    return check(f"{client.transport}_label", f"{model}:{label}", body)
