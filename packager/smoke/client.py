"""Clients of one model server: the same requests, typed the same way, over gRPC and over REST.

    ServingClient     what a check asks: model_status, metadata, predict, wait_until_available
      ├── GrpcClient  tensorflow_serving's ModelService and PredictionService
      └── RestClient  TF Serving's REST API, tensors in serving.rest_json's codec (the one the
                      server itself answers with)

Every request returns a typed result carrying its latency, or raises ServingRequestError carrying
the gRPC status code or the HTTP status and the server's own message, so a check is written once
and run over either transport. Both transports read answers into TF Serving's protos first
(json_format for REST), and one function turns each proto into the typed result.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import requests
from google.protobuf import json_format
from google.protobuf.message import Message

from packager import layout
from packager.tf_runtime import tensorflow

tf = tensorflow()  # imported quietly, before tensorflow_serving and serving/ import it noisily
from tensorflow.core.protobuf import meta_graph_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import rest_json, tensors  # noqa: E402

# Every request is bounded; waiting for a model to load is bounded by the caller's deadline.
REQUEST_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.5
AVAILABLE = "AVAILABLE"
_STATE = get_model_status_pb2.ModelVersionStatus.State
# UNAVAILABLE: not listening yet; NOT_FOUND: the model is still loading (or its name is wrong,
# which the caller's deadline then reports, with this error as the last answer).
_NOT_READY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
_NOT_READY_HTTP = (404, 503)  # TF Serving's HTTP statuses for the two codes above


# --- typed results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """The dtype and shape of one signature input or output.

    Attributes:
        dtype: TensorFlow's dtype name ("float32", "string"), as the provenance records it.
        shape: One entry per dimension, None where unknown; None for an unknown rank.
    """

    dtype: str
    shape: list[int | None] | None


@dataclass(frozen=True)
class Signature:
    """A served signature's inputs and outputs, by key."""

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


@dataclass(frozen=True)
class VersionStatus:
    """One version's entry in a model status answer.

    Attributes:
        version: The version number.
        state: TF Serving's state name: START, LOADING, AVAILABLE, UNLOADING or END.
        error_code: The load's tensorflow.error.Code; non-zero in state END: the load failed.
        error_message: Why, when it failed.
    """

    version: int
    state: str
    error_code: int
    error_message: str

    @property
    def failed_to_load(self) -> bool:
        return self.state == "END" and self.error_code != 0


@dataclass(frozen=True)
class ModelStatus:
    """A model status answer.

    Attributes:
        call: The request, for messages ("GetModelStatus", "GET /v1/models/NAME").
        versions: Every version the server knows of.
        latency_ms: The request's latency.
    """

    call: str
    versions: list[VersionStatus]
    latency_ms: float

    def available(self) -> list[int]:
        """The AVAILABLE versions, lowest first."""
        return sorted(status.version for status in self.versions if status.state == AVAILABLE)

    def describe(self) -> str:
        """Every version and its state, for messages ("version 3 AVAILABLE", "no versions")."""
        return ", ".join(f"version {s.version} {s.state}" for s in self.versions) or "no versions"


@dataclass(frozen=True)
class ModelMetadata:
    """A metadata answer: the version's signatures, by name, and the request's latency."""

    signatures: dict[str, Signature]
    latency_ms: float


@dataclass(frozen=True)
class ModelSpec:
    """Which model, version and signature a request addresses."""

    name: str
    version: int
    signature: str = layout.DEFAULT_SIGNATURE


@dataclass(frozen=True)
class Prediction:
    """A Predict answer.

    Attributes:
        outputs: The output tensors by key.
        version: The version that answered, when the transport says (gRPC does, REST does not).
        latency_ms: The request's latency.
    """

    outputs: dict[str, np.ndarray]
    version: int | None
    latency_ms: float


@dataclass(frozen=True)
class Availability:
    """The outcome of waiting for a model.

    Attributes:
        version: The version found AVAILABLE.
        latency_ms: The latency of the status request that found it.
    """

    version: int
    latency_ms: float


# --- errors ---------------------------------------------------------------------------------


class ServingRequestError(Exception):
    """A request failed, or was answered with something unreadable.

    The message is one report-ready line ("NOT_FOUND: ...", "GET URL answered HTTP 404: ...").

    Attributes:
        call: The request ("GetModelStatus", "Predict", "GET http://...").
        grpc_code: The gRPC status code, for a gRPC request the server (or channel) refused.
        http_status: The HTTP status, for a REST request the server answered.
        server_message: The server's own error text (gRPC details, REST's "error").
        unreachable: The REST server could not be connected to at all.
    """

    def __init__(
        self,
        message: str,
        *,
        call: str,
        grpc_code: grpc.StatusCode | None = None,
        http_status: int | None = None,
        server_message: str | None = None,
        unreachable: bool = False,
    ) -> None:
        super().__init__(message)
        self.call = call
        self.grpc_code = grpc_code
        self.http_status = http_status
        self.server_message = server_message
        self.unreachable = unreachable

    @property
    def not_ready(self) -> bool:
        """Whether the server may still be starting or loading: worth asking again."""
        return self.unreachable or self.grpc_code in _NOT_READY_CODES or self.http_status in _NOT_READY_HTTP


class ModelNotAvailable(Exception):
    """Waiting for a model ended without the version AVAILABLE; the message says why."""


# --- the interface ----------------------------------------------------------------------------


class ServingClient(ABC):
    """Requests to one model server over one transport.

    Attributes:
        target: The server's HOST:PORT for this transport.
        predict_call: How Predict is named in messages ("gRPC Predict", "REST predict").
    """

    predict_call: str

    def __init__(self, target: str) -> None:
        self.target = target

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    @abstractmethod
    def model_status(self, model: str) -> ModelStatus:
        """Every version of ``model`` the server knows of, and its state.

        Raises:
            ServingRequestError: The request failed.
        """

    @abstractmethod
    def metadata(self, model: str, version: int) -> ModelMetadata:
        """The signatures ``version`` of ``model`` serves.

        Raises:
            ServingRequestError: The request failed or the answer holds no signature map.
        """

    @abstractmethod
    def predict(
        self,
        spec: ModelSpec,
        inputs: Mapping[str, np.ndarray],
        output_dtypes: Mapping[str, np.dtype[Any]],
    ) -> Prediction:
        """Run ``spec``'s signature on ``inputs``.

        Args:
            spec: The model, version and signature to ask.
            inputs: The input tensors by key, already of the signature's dtypes.
            output_dtypes: The outputs expected, by key, and their dtypes: REST JSON carries no
                dtypes, so its answers are read as these (gRPC answers carry their own).

        Raises:
            ServingRequestError: The request failed or the answer is unreadable.
        """

    def wait_until_available(
        self,
        model: str,
        version: int | None,
        *,
        deadline: float,
        exited: Callable[[], str | None],
    ) -> Availability:
        """Ask for the model's status until ``version`` (None: any version) is AVAILABLE.

        Args:
            model: The model name.
            version: The version wanted, or None for the highest AVAILABLE one.
            deadline: time.monotonic() after which to give up.
            exited: None while the server runs; else how it ended, which ends the wait.

        Returns:
            The version AVAILABLE (the highest one, when ``version`` is None).

        Raises:
            ModelNotAvailable: The server exited, refused the request, failed to load the
                version, or the deadline passed (the message holds the last answer).
        """
        wanted = f"version {version}" if version is not None else "a version"
        last_seen = "no answer yet"
        while True:
            exit_status = exited()
            if exit_status is not None:
                raise ModelNotAvailable(f"{exit_status} before {model} became AVAILABLE")
            try:
                status = self.model_status(model)
            except ServingRequestError as exc:
                if not exc.not_ready:
                    raise ModelNotAvailable(f"{exc.call} failed: {exc}") from None
                last_seen = str(exc)
            else:
                available = status.available()
                if version is None and available:
                    return Availability(available[-1], status.latency_ms)
                if version is not None and version in available:
                    return Availability(version, status.latency_ms)
                failed = [s for s in status.versions if s.failed_to_load and (version is None or s.version == version)]
                # Without a version pinned, one failed load is not the end while others may load.
                if failed and (version is not None or len(failed) == len(status.versions)):
                    raise ModelNotAvailable(
                        f"version {failed[0].version} of {model} failed to load: {failed[0].error_message}"
                    )
                last_seen = status.describe()
            if time.monotonic() >= deadline:
                raise ModelNotAvailable(
                    f"{wanted} of {model} did not become AVAILABLE in time; last answer: {last_seen}"
                )
            time.sleep(POLL_INTERVAL_S)


class _Stopwatch:
    """Times one request, in milliseconds rounded to microseconds."""

    latency_ms = 0.0

    @contextmanager
    def timing(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.latency_ms = round((time.perf_counter() - started) * 1000.0, 3)


# --- proto answers to typed results (both transports) ------------------------------------------


def _model_status(call: str, response: get_model_status_pb2.GetModelStatusResponse, latency_ms: float) -> ModelStatus:
    return ModelStatus(
        call=call,
        versions=[
            VersionStatus(
                version=entry.version,
                state=_STATE.Name(entry.state),
                error_code=entry.status.error_code,
                error_message=entry.status.error_message,
            )
            for entry in response.model_version_status
        ],
        latency_ms=latency_ms,
    )


def _tensor_spec(info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    """A TensorInfo as the provenance summarises it: None for unknown dims, and for unknown rank."""
    try:
        dtype = tf.as_dtype(info.dtype).name
    except TypeError:  # DT_INVALID, as in __saved_model_init_op's output: "invalid"
        dtype = tensors.dtype_name(info.dtype)
    if info.tensor_shape.unknown_rank:
        return TensorSpec(dtype, None)
    return TensorSpec(dtype, [dim.size if dim.size >= 0 else None for dim in info.tensor_shape.dim])


def _signatures(signature_map: get_model_metadata_pb2.SignatureDefMap) -> dict[str, Signature]:
    return {
        name: Signature(
            inputs={key: _tensor_spec(info) for key, info in signature.inputs.items()},
            outputs={key: _tensor_spec(info) for key, info in signature.outputs.items()},
        )
        for name, signature in signature_map.signature_def.items()
    }


# --- gRPC -------------------------------------------------------------------------------------


class GrpcClient(ServingClient):
    """ModelService and PredictionService over one insecure channel."""

    predict_call = "gRPC Predict"

    def __init__(self, target: str) -> None:
        super().__init__(target)
        # Golden batches can exceed gRPC's 4 MiB default message size.
        self._channel = grpc.insecure_channel(
            target,
            options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
        )
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, name: str, method: Callable[..., Any], request: Message, stopwatch: _Stopwatch) -> Any:
        try:
            with stopwatch.timing():
                return method(request, timeout=REQUEST_TIMEOUT_S)
        except grpc.RpcError as exc:
            code: grpc.StatusCode | None = exc.code() if hasattr(exc, "code") else None
            details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
            raise ServingRequestError(
                f"{code.name if code else 'RPC error'}: {details}",
                call=name,
                grpc_code=code,
                server_message=details,
            ) from None

    def model_status(self, model: str) -> ModelStatus:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        stopwatch = _Stopwatch()
        response = self._call("GetModelStatus", self._models.GetModelStatus, request, stopwatch)
        return _model_status("GetModelStatus", response, stopwatch.latency_ms)

    def metadata(self, model: str, version: int) -> ModelMetadata:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model
        request.model_spec.version.value = version
        stopwatch = _Stopwatch()
        response = self._call("GetModelMetadata", self._predictions.GetModelMetadata, request, stopwatch)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" not in response.metadata or not response.metadata["signature_def"].Unpack(signature_map):
            raise ServingRequestError("GetModelMetadata returned no signature_def map", call="GetModelMetadata")
        return ModelMetadata(_signatures(signature_map), stopwatch.latency_ms)

    def predict(
        self,
        spec: ModelSpec,
        inputs: Mapping[str, np.ndarray],
        output_dtypes: Mapping[str, np.dtype[Any]],
    ) -> Prediction:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = spec.name
        request.model_spec.signature_name = spec.signature
        request.model_spec.version.value = spec.version
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tensors.to_proto(value, as_tensor_content=True))
        stopwatch = _Stopwatch()
        response = self._call("Predict", self._predictions.Predict, request, stopwatch)
        answered = response.model_spec.version.value if response.model_spec.HasField("version") else None
        outputs = {key: tensors.to_ndarray(proto) for key, proto in response.outputs.items()}
        return Prediction(outputs, answered, stopwatch.latency_ms)


# --- REST -------------------------------------------------------------------------------------


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RestClient(ServingClient):
    """TF Serving's REST API over one HTTP session."""

    predict_call = "REST predict"

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self._base = f"http://{target}/v1/models"
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    def _request(
        self, method: str, url: str, stopwatch: _Stopwatch, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Send one request; its JSON object answer, or ServingRequestError."""
        call = f"{method} {url}"
        try:
            with stopwatch.timing():
                response = self._session.request(method, url, json=body, timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as exc:
            raise ServingRequestError(
                f"REST request failed: {exc}",
                call=call,
                unreachable=isinstance(exc, requests.ConnectionError),
            ) from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != 200:
            error = answer.get("error") if isinstance(answer, dict) else None
            raise ServingRequestError(
                f"{method} {response.url} answered HTTP {response.status_code}: {_shorten(response.text)}",
                call=call,
                http_status=response.status_code,
                server_message=error if isinstance(error, str) else None,
            )
        if answer is None:
            raise ServingRequestError(f"{response.url} answered with non-JSON: {_shorten(response.text)}", call=call)
        if not isinstance(answer, dict):
            raise ServingRequestError(f"{response.url} answered with JSON that is not an object", call=call)
        return answer

    @staticmethod
    def _parse(answer: dict[str, Any], message: Message, call: str) -> None:
        try:
            json_format.ParseDict(answer, message, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise ServingRequestError(
                f"{call} answered an unreadable {message.DESCRIPTOR.name}: {exc}", call=call
            ) from None

    def model_status(self, model: str) -> ModelStatus:
        url = f"{self._base}/{model}"
        stopwatch = _Stopwatch()
        answer = self._request("GET", url, stopwatch)
        response = get_model_status_pb2.GetModelStatusResponse()
        self._parse(answer, response, f"GET {url}")
        return _model_status(f"GET /v1/models/{model}", response, stopwatch.latency_ms)

    def metadata(self, model: str, version: int) -> ModelMetadata:
        url = f"{self._base}/{model}/versions/{version}/metadata"
        stopwatch = _Stopwatch()
        answer = self._request("GET", url, stopwatch)
        signature_defs = answer.get("metadata", {}).get("signature_def")
        if not isinstance(signature_defs, dict):
            raise ServingRequestError(f"GET {url} returned no signature_def map", call=f"GET {url}")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        self._parse(signature_defs, signature_map, f"GET {url}")
        return ModelMetadata(_signatures(signature_map), stopwatch.latency_ms)

    def predict(
        self,
        spec: ModelSpec,
        inputs: Mapping[str, np.ndarray],
        output_dtypes: Mapping[str, np.dtype[Any]],
    ) -> Prediction:
        url = f"{self._base}/{spec.name}/versions/{spec.version}:predict"
        try:
            # Strings as {"b64": ...}: JSON text cannot carry arbitrary bytes.
            values = {key: rest_json.tensor_to_json(value, base64_strings=True) for key, value in inputs.items()}
        except TypeError as exc:
            raise ServingRequestError(f"cannot send the inputs as JSON: {exc}", call=f"POST {url}") from None
        stopwatch = _Stopwatch()
        answer = self._request("POST", url, stopwatch, {"signature_name": spec.signature, "inputs": values})
        if "outputs" not in answer:
            raise ServingRequestError(
                f"POST {url} answered without 'outputs': {_shorten(str(answer))}", call=f"POST {url}"
            )
        named = answer["outputs"]
        # TF Serving's columnar answer drops the output key when the signature has only one.
        if not (isinstance(named, dict) and set(output_dtypes) <= set(named)) and len(output_dtypes) == 1:
            named = {next(iter(output_dtypes)): named}
        if not isinstance(named, dict):
            raise ServingRequestError(
                f"POST {url} answered with unnamed outputs where several were expected", call=f"POST {url}"
            )
        outputs = {}
        for key, dtype in output_dtypes.items():
            if key not in named:
                continue  # the caller compares the keys, and says which is missing
            try:
                outputs[key] = rest_json.tensor_from_json(named[key], dtype)
            except ValueError as exc:
                raise ServingRequestError(
                    f"cannot read a {dtype} tensor from the REST answer: {exc}", call=f"POST {url}"
                ) from None
        return Prediction(outputs, None, stopwatch.latency_ms)
