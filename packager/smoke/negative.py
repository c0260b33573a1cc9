"""Bad requests, and the exact answers TensorFlow Serving gives them.

A client that handles TF Serving's errors must get the same codes from this server. Each check
sends one bad Predict and passes only on TF Serving's own code (gRPC) or HTTP status (REST):

    check                       gRPC                 REST   where TF Serving decides it
    *_unknown_model             NOT_FOUND            404    core/basic_manager.cc GetUntypedServableHandle:
    *_unknown_version           NOT_FOUND            404      "Servable not found for request: ..."
    *_unknown_signature         FAILED_PRECONDITION  400    servables/tensorflow/predict_util.cc RunPredict:
                                                              "Serving signature key ... not found." (REST:
                                                              http_rest_api_handler.cc GetInfoMap,
                                                              INVALID_ARGUMENT "Serving signature name ...")
    *_wrong_input_name          INVALID_ARGUMENT     400    cc/saved_model/util.cc GetInputValues (REST:
                                                              util/json_tensor.cc, the named input missing)
    *_wrong_dtype               INVALID_ARGUMENT     400    the session's feed check (TFRT:
                                                              tfrt_predict_util.cc "Expected input ... to be");
                                                              REST: json_tensor.cc "not of expected type"

HTTP statuses are model_servers/http_server.cc ToHTTPStatusCode of those codes (NOT_FOUND 404;
INVALID_ARGUMENT and FAILED_PRECONDITION 400). Note the unknown signature: FAILED_PRECONDITION
over gRPC, not INVALID_ARGUMENT. A server answering with anything else, or answering the bad
request with a result, fails the check, which names both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from packager.smoke.checks import CheckFailed, check, signature_subject
from packager.smoke.client import ModelSpec, ServingClient, ServingRequestError
from packager.smoke.expectation import SignatureExpectation
from packager.smoke.report import CheckResult

# Names no server has: the checks need a model and a signature that do not exist.
ABSENT_MODEL_SUFFIX = "-tfpack-smoke-absent"
ABSENT_SIGNATURE = "tfpack_smoke_absent_signature"
WRONG_INPUT_SUFFIX = "_tfpack_smoke_wrong"


@dataclass(frozen=True)
class Answer:
    """The answer a bad request must get."""

    grpc_code: grpc.StatusCode
    http_status: int


UNKNOWN_MODEL = "unknown_model"
UNKNOWN_VERSION = "unknown_version"
UNKNOWN_SIGNATURE = "unknown_signature"
WRONG_INPUT_NAME = "wrong_input_name"
WRONG_DTYPE = "wrong_dtype"

# The table in the module docstring: what TensorFlow Serving answers each bad request with.
TF_SERVING_ANSWERS: dict[str, Answer] = {
    UNKNOWN_MODEL: Answer(grpc.StatusCode.NOT_FOUND, 404),
    UNKNOWN_VERSION: Answer(grpc.StatusCode.NOT_FOUND, 404),
    UNKNOWN_SIGNATURE: Answer(grpc.StatusCode.FAILED_PRECONDITION, 400),
    WRONG_INPUT_NAME: Answer(grpc.StatusCode.INVALID_ARGUMENT, 400),
    WRONG_DTYPE: Answer(grpc.StatusCode.INVALID_ARGUMENT, 400),
}
NEGATIVE_KINDS = tuple(TF_SERVING_ANSWERS)


def negative_check_names(transport: str) -> list[str]:
    """The negative checks' names over ``transport`` ("grpc" or "rest"), in the order they run."""
    return [f"{transport}_{kind}" for kind in NEGATIVE_KINDS]


def _wrong_dtype(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first input in another dtype: strings for numbers, numbers for strings."""
    key = sorted(inputs)[0]
    value = inputs[key]
    changed = dict(inputs)
    if value.dtype.kind in "OSU":
        changed[key] = np.ones(value.shape, dtype=np.float32)
    else:
        changed[key] = np.full(value.shape, b"tfpack", dtype=object)
    return changed


def _wrong_input_name(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first input under a name the signature does not have."""
    key = sorted(inputs)[0]
    changed = {k: v for k, v in inputs.items() if k != key}
    changed[key + WRONG_INPUT_SUFFIX] = inputs[key]
    return changed


def bad_requests_refused(
    client: ServingClient,
    spec: ModelSpec,
    signature: SignatureExpectation,
    known_versions: set[int],
) -> list[CheckResult]:
    """Send each bad request (based on a valid one for ``spec``); one check per kind.

    Args:
        client: The transport to send over.
        spec: A served model, version and predict signature.
        signature: That signature's expectation: goldens, or its inputs to synthesize a request.
        known_versions: Every version of the model the server knows of: the unknown version is
            above them all.
    """
    inputs = signature.request_inputs() if signature.goldens is not None else signature.synthetic_inputs()
    output_dtypes: dict[str, np.dtype[Any]] = (
        signature.output_dtypes()
        if signature.goldens is not None
        else {key: np.dtype(object) for key in signature.outputs}
    )
    unknown_version = max(known_versions | {spec.version}) + 1
    requests = {
        UNKNOWN_MODEL: (ModelSpec(spec.name + ABSENT_MODEL_SUFFIX, spec.version, spec.signature), inputs),
        UNKNOWN_VERSION: (ModelSpec(spec.name, unknown_version, spec.signature), inputs),
        UNKNOWN_SIGNATURE: (ModelSpec(spec.name, spec.version, ABSENT_SIGNATURE), inputs),
        WRONG_INPUT_NAME: (spec, _wrong_input_name(inputs)),
        WRONG_DTYPE: (spec, _wrong_dtype(inputs)),
    }
    subject = signature_subject(spec.name, spec.version, spec.signature)
    results = []
    for kind in NEGATIVE_KINDS:
        bad_spec, bad_inputs = requests[kind]
        expected = TF_SERVING_ANSWERS[kind]

        def body(
            kind: str = kind,
            bad_spec: ModelSpec = bad_spec,
            bad_inputs: dict[str, np.ndarray] = bad_inputs,
            expected: Answer = expected,
        ) -> tuple[str, float | None]:
            wanted = expected.grpc_code.name if client.transport == "grpc" else f"HTTP {expected.http_status}"
            what = kind.replace("_", " ")
            try:
                client.predict(bad_spec, bad_inputs, output_dtypes)
            except ServingRequestError as exc:
                got = exc.answered_code
                if got != wanted:
                    raise CheckFailed(
                        f"{what}: TensorFlow Serving answers {wanted}, this server answered {got}: {exc}"
                    ) from None
                return f"{what} refused with {wanted}: {exc.server_message or exc}", None
            raise CheckFailed(f"{what}: TensorFlow Serving answers {wanted}, this server answered with a result")

        results.append(check(f"{client.transport}_{kind}", subject, body))
    return results
