"""The smoke clients: the same typed answers over gRPC and REST, typed errors with the codes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from packager.smoke.client import (
    Deadline,
    GrpcClient,
    ModelNotAvailable,
    ModelSpec,
    RestClient,
    ServingClient,
    ServingRequestError,
    TensorSpec,
)
from serving import rest_json
from tests.smoke.support import GOLDEN_X, MODEL, VERSION, Served, golden_y, silent_port


@pytest.fixture(params=["grpc", "rest"])
def client(request: pytest.FixtureRequest, served: Served) -> Iterator[ServingClient]:
    """Each test runs once per transport."""
    if request.param == "grpc":
        with GrpcClient(served.grpc_target) as grpc_client:
            yield grpc_client
    else:
        with RestClient(served.rest_target) as rest_client:
            yield rest_client


def test_model_status_is_typed(client: ServingClient) -> None:
    status = client.model_status(MODEL)
    assert status.available() == [VERSION]
    assert status.describe() == f"version {VERSION} AVAILABLE"
    assert [(s.version, s.state, s.error_code) for s in status.versions] == [(VERSION, "AVAILABLE", 0)]
    assert status.latency_ms > 0


def test_metadata_is_the_same_signature_over_both_transports(client: ServingClient) -> None:
    metadata = client.metadata(MODEL, VERSION)
    signature = metadata.signatures["serving_default"]
    assert signature.inputs == {"x": TensorSpec("float32", [None, 1])}
    assert signature.outputs == {"y": TensorSpec("float32", [None, 1])}


def test_predict_answers_the_goldens(client: ServingClient) -> None:
    prediction = client.predict(ModelSpec(MODEL, VERSION), {"x": GOLDEN_X}, {"y": np.dtype(np.float32)})
    np.testing.assert_array_equal(prediction.outputs["y"], golden_y())
    assert prediction.outputs["y"].dtype == np.float32
    # gRPC names the version that answered; REST's predict answer does not.
    assert prediction.version == (VERSION if isinstance(client, GrpcClient) else None)
    assert prediction.latency_ms > 0


def test_unknown_model_is_a_typed_not_found(client: ServingClient) -> None:
    with pytest.raises(ServingRequestError) as excinfo:
        client.model_status("nope")
    error = excinfo.value
    if isinstance(client, GrpcClient):
        assert error.grpc_code == grpc.StatusCode.NOT_FOUND and error.http_status is None
        assert str(error).startswith("NOT_FOUND: ")
    else:
        assert error.http_status == 404 and error.grpc_code is None
        assert str(error).startswith(f"GET http://{client.target}/v1/models/nope answered HTTP 404: ")
    assert error.server_message and "nope" in error.server_message
    assert error.not_ready  # a model may still be loading


def test_a_refused_predict_is_not_a_not_ready(client: ServingClient) -> None:
    with pytest.raises(ServingRequestError) as excinfo:
        client.predict(ModelSpec(MODEL, VERSION, "no_such_signature"), {"x": GOLDEN_X}, {"y": np.dtype(np.float32)})
    error = excinfo.value
    # TF Serving's own answers to an unknown signature: FAILED_PRECONDITION, and HTTP 400.
    assert (error.grpc_code, error.http_status) == (
        (grpc.StatusCode.FAILED_PRECONDITION, None) if isinstance(client, GrpcClient) else (None, 400)
    )
    assert not error.not_ready


def test_wait_until_available_returns_the_highest_version(client: ServingClient) -> None:
    availability = client.wait_until_available(MODEL, None, deadline=Deadline.after(10), exited=lambda: None)
    assert availability.versions == [VERSION]
    assert availability.attempts == 1


def test_wait_for_versions_names_the_deadline_and_the_last_answer(client: ServingClient) -> None:
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable) as excinfo:
        client.wait_until_available(MODEL, [VERSION, VERSION + 1], deadline=Deadline.after(1.0), exited=lambda: None)
    assert time.monotonic() - started < 5
    message = str(excinfo.value)
    assert message.startswith(
        f"versions {VERSION}, {VERSION + 1} of {MODEL} did not become AVAILABLE before the 1s deadline"
    )
    assert f"last answer: {client.model_status(MODEL).call}: version {VERSION} AVAILABLE" in message


def test_wait_ends_when_the_server_exits(client: ServingClient) -> None:
    with pytest.raises(ModelNotAvailable, match=r"^it crashed before half_plus_two became AVAILABLE$"):
        client.wait_until_available(MODEL, [VERSION], deadline=Deadline.after(10), exited=lambda: "it crashed")


def test_rest_row_form_answers_the_goldens(served: Served) -> None:
    with RestClient(served.rest_target) as rest:
        prediction = rest.predict_rows(ModelSpec(MODEL, VERSION), {"x": GOLDEN_X}, {"y": np.dtype(np.float32)})
    np.testing.assert_array_equal(prediction.outputs["y"], golden_y())


def test_rest_row_form_needs_a_common_batch_dimension(served: Served) -> None:
    with RestClient(served.rest_target) as rest, pytest.raises(ServingRequestError, match="batched alike"):
        rest.predict_rows(ModelSpec(MODEL, VERSION), {"x": np.float32(1.0)}, {"y": np.dtype(np.float32)})


@pytest.mark.parametrize("client_type", [GrpcClient, RestClient])
def test_a_server_that_never_answers_is_not_ready(client_type: type[ServingClient]) -> None:
    """Connections accepted, nothing answered: the request ends at its timeout, worth retrying."""
    with silent_port() as target, client_type(target) as client:
        started = time.monotonic()
        with pytest.raises(ServingRequestError) as excinfo:
            client.model_status(MODEL, timeout=0.5)
    assert time.monotonic() - started < 5
    assert excinfo.value.not_ready
    if client_type is GrpcClient:
        assert excinfo.value.grpc_code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    else:
        assert excinfo.value.unreachable and excinfo.value.answered_code == "no answer"


def test_nothing_listening_is_not_ready_over_rest() -> None:
    with (
        RestClient("127.0.0.1:9") as rest,
        pytest.raises(ServingRequestError, match=r"^REST request failed: ") as excinfo,
    ):
        rest.model_status(MODEL)
    assert excinfo.value.unreachable and excinfo.value.not_ready


@pytest.mark.parametrize(
    "array",
    [
        np.array([[0.1, -2.5], [1e-30, np.inf]], dtype=np.float32),
        np.array([1, -7, 2**40], dtype=np.int64),
        np.array([True, False]),
        np.array([[b"\x00\xff", "café".encode()]], dtype=object),
        np.array([b"plain", b""], dtype=np.bytes_),
    ],
)
def test_rest_codec_round_trips(array: np.ndarray) -> None:
    """The encoder the server answers with, read back by the decoder the client uses."""
    for base64_strings in (True, False):
        if array.dtype.kind in "OS" and not base64_strings and b"\x00\xff" in array.ravel().tolist():
            continue  # text cannot carry arbitrary bytes: why the client always sends base64
        written = rest_json.tensor_to_json(array, base64_strings=base64_strings)
        decoded = rest_json.tensor_from_json(written, array.dtype)
        assert decoded.shape == array.shape
        assert decoded.tolist() == array.tolist()


def test_rest_codec_writes_float32_in_its_short_form() -> None:
    assert rest_json.tensor_to_json(np.array([0.1], dtype=np.float32), base64_strings=False) == [0.1]
    assert rest_json.tensor_to_json(np.array([b"x"]), base64_strings=True) == [{"b64": "eA=="}]
    with pytest.raises(ValueError, match="neither text nor"):
        rest_json.tensor_from_json([1], np.dtype(object))
    with pytest.raises(TypeError, match="complex"):
        rest_json.tensor_to_json(np.array([1j]), base64_strings=False)
