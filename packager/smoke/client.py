"""Clients of one model server: the same requests, typed the same way, over gRPC and over REST.

    ServingClient     what a check asks: model_status, metadata, version_for_label, predict,
      │               classify, regress, wait_until_available
      ├── GrpcClient  tensorflow_serving's ModelService and PredictionService
      └── RestClient  TF Serving's REST API, tensors in serving.rest_json's codec (the one the
                      server itself answers with); predict sends the columnar form ("inputs"),
                      predict_rows the row form ("instances")

Every request returns a typed result carrying its latency, or raises ServingRequestError carrying
the gRPC status code or the HTTP status and the server's own message, so a check is written once
and run over either transport. Both transports read answers into TF Serving's protos first
(json_format for REST), and one function turns each proto into the typed result.
"""

from __future__ import annotations

import base64
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import requests
from google.protobuf import json_format
from google.protobuf.message import Message

from packager import layout
from packager.errors import shorten
from packager.tf_runtime import tensorflow

tf = tensorflow()  # imported quietly, before tensorflow_serving and serving/ import it noisily
from tensorflow.core.example import example_pb2  # noqa: E402
from tensorflow.core.protobuf import meta_graph_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import rest_json, tensors  # noqa: E402

# Every request is bounded; waiting for a model to load is bounded by the caller's deadline.
REQUEST_TIMEOUT_S = 30.0
# Polls while waiting start fast (a model that is nearly loaded) and back off to this.
FIRST_POLL_INTERVAL_S = 0.25
MAX_POLL_INTERVAL_S = 2.0
# A status request while waiting never gets less than this, even right before the deadline.
MIN_STATUS_TIMEOUT_S = 0.5
AVAILABLE = "AVAILABLE"
_STATE = get_model_status_pb2.ModelVersionStatus.State
# UNAVAILABLE: not listening yet; NOT_FOUND: the model is still loading (or its name is wrong,
# which the caller's deadline then reports, with this error as the last answer);
# DEADLINE_EXCEEDED: something accepts connections but does not answer (yet).
_NOT_READY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED)
_NOT_READY_HTTP = (404, 503, 504)  # TF Serving's HTTP statuses for the three codes above

# Examples for Classify and Regress: feature name to its values (float, int64 or bytes).
Features = Mapping[str, np.ndarray]


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
    """A served signature: its method name (tensorflow/serving/predict, ...), inputs and outputs by key."""

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    method: str = ""


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
class LabelAnswer:
    """The version a server resolved a version label to, and the request's latency."""

    version: int
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
class Classifications:
    """A Classify answer: per example sent, its (label, score) pairs."""

    classes: list[list[tuple[str, float]]]
    latency_ms: float


@dataclass(frozen=True)
class Regressions:
    """A Regress answer: one value per example sent."""

    values: list[float]
    latency_ms: float


@dataclass(frozen=True)
class Availability:
    """The outcome of waiting for a model.

    Attributes:
        versions: The versions found AVAILABLE: the ones waited for, or the highest one.
        latency_ms: The latency of the status request that found them.
        attempts: How many status requests it took.
    """

    versions: list[int]
    latency_ms: float
    attempts: int


@dataclass(frozen=True)
class Deadline:
    """A point in time.monotonic() by which something must have happened, and its length."""

    seconds: float
    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """The deadline ``seconds`` from now."""
        return cls(seconds, time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left; 0 once passed."""
        return max(0.0, self.at - time.monotonic())


# --- errors ---------------------------------------------------------------------------------


class ServingRequestError(Exception):
    """A request failed, or was answered with something unreadable.

    The message is one report-ready line ("NOT_FOUND: ...", "GET URL answered HTTP 404: ...").

    Attributes:
        call: The request ("GetModelStatus", "Predict", "GET http://...").
        grpc_code: The gRPC status code, for a gRPC request the server (or channel) refused.
        http_status: The HTTP status, for a REST request the server answered.
        server_message: The server's own error text (gRPC details, REST's "error").
        unreachable: The REST server could not be connected to, or did not answer in time.
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

    @property
    def answered_code(self) -> str:
        """What the server answered, for messages: "NOT_FOUND", "HTTP 404", or "no answer"."""
        if self.grpc_code is not None:
            return str(self.grpc_code.name)
        if self.http_status is not None:
            return f"HTTP {self.http_status}"
        return "no answer"


class ModelNotAvailable(Exception):
    """Waiting for a model ended without the versions AVAILABLE; the message says why."""


# --- the interface ----------------------------------------------------------------------------


class ServingClient(ABC):
    """Requests to one model server over one transport.

    Attributes:
        target: The HOST:PORT the client talks to.
        predict_call: The transport's name for Predict, for messages ("gRPC Predict", "REST predict").
        transport: "grpc" or "rest", the prefix of the checks run over this client.
    """

    predict_call: str
    transport: str

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
    def model_status(self, model: str, *, timeout: float = REQUEST_TIMEOUT_S) -> ModelStatus:
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
    def version_for_label(self, model: str, label: str) -> LabelAnswer:
        """The version the server resolves ``label`` of ``model`` to.

        Asked through the metadata request, whose answer names the version that answered: TF
        Serving's GetModelStatus ignores a version label and lists every version instead.

        Raises:
            ServingRequestError: The request failed or the answer names no version.
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

    @abstractmethod
    def classify(self, spec: ModelSpec, examples: Sequence[Features]) -> Classifications:
        """Classify ``examples`` (tf.Examples, one per feature mapping) with ``spec``'s signature.

        Raises:
            ServingRequestError: The request failed or the answer is unreadable.
        """

    @abstractmethod
    def regress(self, spec: ModelSpec, examples: Sequence[Features]) -> Regressions:
        """Regress ``examples`` (tf.Examples, one per feature mapping) with ``spec``'s signature.

        Raises:
            ServingRequestError: The request failed or the answer is unreadable.
        """

    def wait_until_available(
        self,
        model: str,
        versions: Collection[int] | None,
        *,
        deadline: Deadline,
        exited: Callable[[], str | None],
    ) -> Availability:
        """Ask for the model's status until every one of ``versions`` (None: any one) is AVAILABLE.

        Retries are bounded by ``deadline``: polls back off from FIRST_POLL_INTERVAL_S to
        MAX_POLL_INTERVAL_S, and no status request outlives the deadline by more than
        MIN_STATUS_TIMEOUT_S (a server that accepts connections and never answers cannot hold
        the wait past it).

        Args:
            model: The model name.
            versions: The versions wanted, or None for the highest one AVAILABLE.
            deadline: When to give up.
            exited: None while the server runs; else how it ended, which ends the wait.

        Returns:
            The versions AVAILABLE: ``versions``, or the highest one when ``versions`` is None.

        Raises:
            ModelNotAvailable: The server exited, refused the request, failed to load a wanted
                version (the message holds the server's own load error), or the deadline passed
                (the message names it and holds the last answer).
        """
        wanted = sorted(set(versions)) if versions is not None else None
        described = (
            "a version"
            if wanted is None
            else f"version {wanted[0]}"
            if len(wanted) == 1
            else "versions " + ", ".join(map(str, wanted))
        )
        last_seen = "no answer yet"
        attempts = 0
        interval = FIRST_POLL_INTERVAL_S
        while True:
            exit_status = exited()
            if exit_status is not None:
                raise ModelNotAvailable(f"{exit_status} before {model} became AVAILABLE")
            attempts += 1
            try:
                status = self.model_status(
                    model, timeout=min(REQUEST_TIMEOUT_S, max(MIN_STATUS_TIMEOUT_S, deadline.remaining()))
                )
            except ServingRequestError as exc:
                if not exc.not_ready:
                    raise ModelNotAvailable(f"{exc.call} failed: {exc}") from None
                last_seen = str(exc)
            else:
                available = status.available()
                if wanted is None and available:
                    return Availability([available[-1]], status.latency_ms, attempts)
                if wanted is not None and set(wanted) <= set(available):
                    return Availability(wanted, status.latency_ms, attempts)
                failed = [s for s in status.versions if s.failed_to_load and (wanted is None or s.version in wanted)]
                # Without versions named, one failed load is not the end while others may load.
                if failed and (wanted is not None or len(failed) == len(status.versions)):
                    raise ModelNotAvailable(
                        f"version {failed[0].version} of {model} failed to load; the server says: "
                        f"{failed[0].error_message or f'error code {failed[0].error_code}'}"
                    )
                last_seen = f"{status.call}: {status.describe()}"
            if deadline.remaining() <= 0:
                raise ModelNotAvailable(
                    f"{described} of {model} did not become AVAILABLE before the {deadline.seconds:g}s deadline "
                    f"(--timeout; {attempts} status requests); last answer: {last_seen}"
                )
            time.sleep(min(interval, deadline.remaining()))
            interval = min(interval * 2, MAX_POLL_INTERVAL_S)


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
            method=signature.method_name,
        )
        for name, signature in signature_map.signature_def.items()
    }


def _classifications(result: classification_pb2.ClassificationResult, latency_ms: float) -> Classifications:
    return Classifications(
        [
            [(entry.label, float(entry.score)) for entry in per_example.classes]
            for per_example in result.classifications
        ],
        latency_ms,
    )


def _regressions(result: regression_pb2.RegressionResult, latency_ms: float) -> Regressions:
    return Regressions([float(entry.value) for entry in result.regressions], latency_ms)


def _example(features: Features) -> example_pb2.Example:
    """One tf.Example: float features as float_list, integers and booleans as int64_list, strings as bytes_list."""
    example = example_pb2.Example()
    for name, values in features.items():
        flat = np.asarray(values).ravel()
        feature = example.features.feature[name]
        if flat.dtype.kind == "f":
            feature.float_list.value.extend(flat.astype(np.float32).tolist())
        elif flat.dtype.kind in "iub":
            feature.int64_list.value.extend(flat.astype(np.int64).tolist())
        else:
            feature.bytes_list.value.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat.tolist())
    return example


# --- gRPC -------------------------------------------------------------------------------------


class GrpcClient(ServingClient):
    """ModelService and PredictionService over one insecure channel."""

    predict_call = "gRPC Predict"
    transport = "grpc"

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

    def _call(
        self,
        name: str,
        method: Callable[..., Any],
        request: Message,
        stopwatch: _Stopwatch,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> Any:
        try:
            with stopwatch.timing():
                return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            code: grpc.StatusCode | None = exc.code() if hasattr(exc, "code") else None
            details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
            raise ServingRequestError(
                f"{code.name if code else 'RPC error'}: {details}",
                call=name,
                grpc_code=code,
                server_message=details,
            ) from None

    @staticmethod
    def _model_spec(spec: ModelSpec, target: model_pb2.ModelSpec) -> None:
        target.name = spec.name
        target.signature_name = spec.signature
        target.version.value = spec.version

    def model_status(self, model: str, *, timeout: float = REQUEST_TIMEOUT_S) -> ModelStatus:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        stopwatch = _Stopwatch()
        response = self._call("GetModelStatus", self._models.GetModelStatus, request, stopwatch, timeout)
        return _model_status("GetModelStatus", response, stopwatch.latency_ms)

    def _metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest) -> tuple[Any, ModelMetadata]:
        stopwatch = _Stopwatch()
        response = self._call("GetModelMetadata", self._predictions.GetModelMetadata, request, stopwatch)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" not in response.metadata or not response.metadata["signature_def"].Unpack(signature_map):
            raise ServingRequestError("GetModelMetadata returned no signature_def map", call="GetModelMetadata")
        return response, ModelMetadata(_signatures(signature_map), stopwatch.latency_ms)

    def metadata(self, model: str, version: int) -> ModelMetadata:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model
        request.model_spec.version.value = version
        return self._metadata(request)[1]

    def version_for_label(self, model: str, label: str) -> LabelAnswer:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model
        request.model_spec.version_label = label
        response, metadata = self._metadata(request)
        if not response.model_spec.HasField("version"):
            raise ServingRequestError(
                f"GetModelMetadata for label {label!r} answered without a version", call="GetModelMetadata"
            )
        return LabelAnswer(response.model_spec.version.value, metadata.latency_ms)

    def predict(
        self,
        spec: ModelSpec,
        inputs: Mapping[str, np.ndarray],
        output_dtypes: Mapping[str, np.dtype[Any]],
    ) -> Prediction:
        request = predict_pb2.PredictRequest()
        self._model_spec(spec, request.model_spec)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tensors.to_proto(value, as_tensor_content=True))
        stopwatch = _Stopwatch()
        response = self._call("Predict", self._predictions.Predict, request, stopwatch)
        answered = response.model_spec.version.value if response.model_spec.HasField("version") else None
        outputs = {key: tensors.to_ndarray(proto) for key, proto in response.outputs.items()}
        return Prediction(outputs, answered, stopwatch.latency_ms)

    def classify(self, spec: ModelSpec, examples: Sequence[Features]) -> Classifications:
        request = classification_pb2.ClassificationRequest()
        self._model_spec(spec, request.model_spec)
        request.input.example_list.examples.extend(_example(features) for features in examples)
        stopwatch = _Stopwatch()
        response = self._call("Classify", self._predictions.Classify, request, stopwatch)
        return _classifications(response.result, stopwatch.latency_ms)

    def regress(self, spec: ModelSpec, examples: Sequence[Features]) -> Regressions:
        request = regression_pb2.RegressionRequest()
        self._model_spec(spec, request.model_spec)
        request.input.example_list.examples.extend(_example(features) for features in examples)
        stopwatch = _Stopwatch()
        response = self._call("Regress", self._predictions.Regress, request, stopwatch)
        return _regressions(response.result, stopwatch.latency_ms)


# --- REST -------------------------------------------------------------------------------------


def _shorten(text: str) -> str:
    """A server's answer on one short line: whitespace runs squeezed, then cut."""
    return shorten(" ".join(text.split()))


def _json_feature(values: np.ndarray) -> list[Any]:
    """One feature's values as TF Serving's REST examples take them (bytes as {"b64": ...})."""
    flat = np.asarray(values).ravel()
    if flat.dtype.kind == "f":
        return [float(v) for v in flat.astype(np.float32).tolist()]
    if flat.dtype.kind in "iub":
        return [int(v) for v in flat.astype(np.int64).tolist()]
    return [{"b64": base64.b64encode(v if isinstance(v, bytes) else str(v).encode()).decode()} for v in flat.tolist()]


class RestClient(ServingClient):
    """TF Serving's REST API over one HTTP session."""

    predict_call = "REST predict"
    transport = "rest"

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self._base = f"http://{target}/v1/models"
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    def _request(
        self,
        method: str,
        url: str,
        stopwatch: _Stopwatch,
        body: dict[str, Any] | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Send one request; its JSON object answer, or ServingRequestError."""
        call = f"{method} {url}"
        try:
            with stopwatch.timing():
                response = self._session.request(method, url, json=body, timeout=timeout)
        except requests.RequestException as exc:
            raise ServingRequestError(
                f"REST request failed: {exc}",
                call=call,
                unreachable=isinstance(exc, requests.ConnectionError | requests.Timeout),
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

    def model_status(self, model: str, *, timeout: float = REQUEST_TIMEOUT_S) -> ModelStatus:
        url = f"{self._base}/{model}"
        stopwatch = _Stopwatch()
        answer = self._request("GET", url, stopwatch, timeout=timeout)
        response = get_model_status_pb2.GetModelStatusResponse()
        self._parse(answer, response, f"GET {url}")
        return _model_status(f"GET /v1/models/{model}", response, stopwatch.latency_ms)

    def _metadata(self, url: str) -> tuple[dict[str, Any], ModelMetadata]:
        stopwatch = _Stopwatch()
        answer = self._request("GET", url, stopwatch)
        signature_defs = answer.get("metadata", {}).get("signature_def")
        if not isinstance(signature_defs, dict):
            raise ServingRequestError(f"GET {url} returned no signature_def map", call=f"GET {url}")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        self._parse(signature_defs, signature_map, f"GET {url}")
        return answer, ModelMetadata(_signatures(signature_map), stopwatch.latency_ms)

    def metadata(self, model: str, version: int) -> ModelMetadata:
        return self._metadata(f"{self._base}/{model}/versions/{version}/metadata")[1]

    def version_for_label(self, model: str, label: str) -> LabelAnswer:
        url = f"{self._base}/{model}/labels/{label}/metadata"
        answer, metadata = self._metadata(url)
        spec = model_pb2.ModelSpec()
        self._parse(answer.get("model_spec", {}), spec, f"GET {url}")
        if not spec.HasField("version"):
            raise ServingRequestError(f"GET {url} answered without model_spec.version", call=f"GET {url}")
        return LabelAnswer(spec.version.value, metadata.latency_ms)

    def _version_url(self, spec: ModelSpec, verb: str) -> str:
        return f"{self._base}/{spec.name}/versions/{spec.version}:{verb}"

    @staticmethod
    def _json_inputs(inputs: Mapping[str, np.ndarray], url: str) -> dict[str, Any]:
        try:
            # Strings as {"b64": ...}: JSON text cannot carry arbitrary bytes.
            return {key: rest_json.tensor_to_json(value, base64_strings=True) for key, value in inputs.items()}
        except TypeError as exc:
            raise ServingRequestError(f"cannot send the inputs as JSON: {exc}", call=f"POST {url}") from None

    @staticmethod
    def _read_outputs(
        named: Mapping[str, Any], output_dtypes: Mapping[str, np.dtype[Any]], url: str
    ) -> dict[str, np.ndarray]:
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
        return outputs

    def predict(
        self,
        spec: ModelSpec,
        inputs: Mapping[str, np.ndarray],
        output_dtypes: Mapping[str, np.dtype[Any]],
    ) -> Prediction:
        url = self._version_url(spec, "predict")
        values = self._json_inputs(inputs, url)
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
        return Prediction(self._read_outputs(named, output_dtypes, url), None, stopwatch.latency_ms)

    def predict_rows(
        self,
        spec: ModelSpec,
        inputs: Mapping[str, np.ndarray],
        output_dtypes: Mapping[str, np.dtype[Any]],
    ) -> Prediction:
        """Predict in TF Serving's row form: ``{"instances": [{key: row}, ...]}``.

        Every input must have the same first (batch) dimension; the answer
        ``{"predictions": [...]}`` is read back into one tensor per output.

        Raises:
            ServingRequestError: The request failed, the answer is unreadable, or the inputs
                have no common batch dimension.
        """
        url = self._version_url(spec, "predict")
        batch = row_batch_size(inputs)
        if batch is None:
            raise ServingRequestError(
                "the row form needs every input batched alike (the same first dimension)", call=f"POST {url}"
            )
        columns = self._json_inputs(inputs, url)
        instances = [{key: column[row] for key, column in columns.items()} for row in range(batch)]
        stopwatch = _Stopwatch()
        answer = self._request("POST", url, stopwatch, {"signature_name": spec.signature, "instances": instances})
        predictions = answer.get("predictions")
        if not isinstance(predictions, list):
            raise ServingRequestError(
                f"POST {url} answered without a 'predictions' list: {_shorten(str(answer))}", call=f"POST {url}"
            )
        if len(output_dtypes) == 1:
            # TF Serving's row answer is a plain list per row when the signature has one output.
            key = next(iter(output_dtypes))
            rows_are_named = bool(predictions) and all(isinstance(row, dict) and key in row for row in predictions)
            named: dict[str, Any] = {key: [row[key] for row in predictions] if rows_are_named else predictions}
        elif all(isinstance(row, dict) for row in predictions):
            named = {
                key: [row[key] for row in predictions] for key in output_dtypes if all(key in r for r in predictions)
            }
        else:
            raise ServingRequestError(
                f"POST {url} answered with unnamed predictions where several outputs were expected", call=f"POST {url}"
            )
        return Prediction(self._read_outputs(named, output_dtypes, url), None, stopwatch.latency_ms)

    def _examples_request(self, spec: ModelSpec, verb: str, examples: Sequence[Features]) -> tuple[list[Any], float]:
        url = self._version_url(spec, verb)
        body = {
            "signature_name": spec.signature,
            "examples": [{name: _json_feature(values) for name, values in features.items()} for features in examples],
        }
        stopwatch = _Stopwatch()
        answer = self._request("POST", url, stopwatch, body)
        results = answer.get("results")
        if not isinstance(results, list):
            raise ServingRequestError(
                f"POST {url} answered without a 'results' list: {_shorten(str(answer))}", call=f"POST {url}"
            )
        return results, stopwatch.latency_ms

    def classify(self, spec: ModelSpec, examples: Sequence[Features]) -> Classifications:
        results, latency_ms = self._examples_request(spec, "classify", examples)
        try:
            classes = [[(str(label), float(score)) for label, score in per_example] for per_example in results]
        except (TypeError, ValueError):
            url = self._version_url(spec, "classify")
            raise ServingRequestError(
                f"POST {url} answered results that are not [label, score] pairs per example", call=f"POST {url}"
            ) from None
        return Classifications(classes, latency_ms)

    def regress(self, spec: ModelSpec, examples: Sequence[Features]) -> Regressions:
        results, latency_ms = self._examples_request(spec, "regress", examples)
        try:
            values = [float(value) for value in results]
        except (TypeError, ValueError):
            url = self._version_url(spec, "regress")
            raise ServingRequestError(
                f"POST {url} answered results that are not one number per example", call=f"POST {url}"
            ) from None
        return Regressions(values, latency_ms)


def row_batch_size(inputs: Mapping[str, np.ndarray]) -> int | None:
    """The batch size every input shares (its first dimension), or None when they do not share one."""
    sizes = {np.shape(value)[0] if np.ndim(value) > 0 else None for value in inputs.values()}
    if len(sizes) != 1:
        return None
    (size,) = sizes
    return size if size else None
