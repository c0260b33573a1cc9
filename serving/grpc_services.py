"""The gRPC front end: TF Serving's PredictionService and ModelService over Inference."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving.config import ConfigError, check_model_server_config
from serving.examples import ExampleInference
from serving.inference import Inference
from serving.manager import ModelManager, reload_config_denied
from serving.metrics import REGISTRY
from serving.status import ServingError, invalid_argument

_LOG = logging.getLogger(__name__)


class _OneLineDeserializationErrors(logging.Filter):
    """gRPC logs a request it cannot parse with a full traceback ("Exception deserializing
    message!") before answering it: anyone who reaches the port could flood the log with them.
    Keep the line, drop the traceback (the client is answered by gRPC either way)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and "deserializ" in record.getMessage():
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(error).__name__}: {str(error)[:200]})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("grpc._common").addFilter(_OneLineDeserializationErrors())

Response = TypeVar("Response")

# TF Serving sets no message size limit (INT_MAX); gRPC's default 4 MiB would reject big tensors.
_MAX_MESSAGE_BYTES = 2**31 - 1


def _timeout_ms(context: grpc.ServicerContext) -> int | None:
    remaining = context.time_remaining()
    return max(int(remaining * 1000), 1) if remaining is not None else None


def _answer(
    context: grpc.ServicerContext,
    api: str,
    call: Callable[[], Response],
    model_name: str | None = None,
) -> Response:
    """Run ``call``, turning a ServingError into the call's status; count inference requests."""
    started, status = time.monotonic(), "OK"
    try:
        return call()
    except ServingError as error:
        status = error.error_code_name
        _LOG.debug("%s failed: %s", api, error.message)
        context.abort(error.code, error.message)
        raise  # unreachable: abort raises
    except Exception as error:  # a bug: answer INTERNAL, log one line, keep serving
        status = grpc.StatusCode.INTERNAL.name
        _LOG.error("%s failed: %s: %s", api, type(error).__name__, error)
        context.abort(grpc.StatusCode.INTERNAL, f"Internal error: {type(error).__name__}")
        raise  # unreachable: abort raises
    finally:
        if model_name is not None:
            REGISTRY.record_request(model_name, api, "GRPC", status, time.monotonic() - started)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService."""

    def __init__(self, inference: Inference, examples: ExampleInference) -> None:
        self._inference = inference
        self._examples = examples

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        return _answer(
            context,
            "Predict",
            lambda: self._inference.predict(request, _timeout_ms(context)),
            request.model_spec.name,
        )

    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return _answer(context, "GetModelMetadata", lambda: self._inference.get_model_metadata(request))

    def Classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        return _answer(
            context,
            "Classify",
            lambda: self._examples.classify(request, _timeout_ms(context)),
            request.model_spec.name,
        )

    def Regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        return _answer(
            context,
            "Regress",
            lambda: self._examples.regress(request, _timeout_ms(context)),
            request.model_spec.name,
        )

    def MultiInference(
        self, request: inference_pb2.MultiInferenceRequest, context: grpc.ServicerContext
    ) -> inference_pb2.MultiInferenceResponse:
        return _answer(
            context,
            "MultiInference",
            lambda: self._examples.multi_inference(request, _timeout_ms(context)),
            request.tasks[0].model_spec.name if request.tasks else "",
        )


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService."""

    def __init__(self, inference: Inference, manager: ModelManager) -> None:
        self._inference = inference
        self._manager = manager

    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        def reload() -> model_management_pb2.ReloadConfigResponse:
            # Refused before the config is even parsed: an image serves what it verified.
            if not self._manager.allows_reload_config:
                raise reload_config_denied()
            try:
                check_model_server_config(request.config)
            except ConfigError as error:
                raise invalid_argument(str(error)) from None
            _LOG.info("Reloading model config with %d model(s)", len(request.config.model_config_list.config))
            self._manager.reload_config(request.config)
            response = model_management_pb2.ReloadConfigResponse()
            response.status.SetInParent()  # error_code OK
            return response

        return _answer(context, "HandleReloadConfigRequest", reload)

    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        return _answer(context, "GetModelStatus", lambda: self._inference.get_model_status(request))


@dataclass
class GrpcServer:
    """A started gRPC server and, when enabled, its health service."""

    server: grpc.Server
    health: health.HealthServicer | None

    def stop(self, grace_seconds: float | None) -> None:
        """Report NOT_SERVING, then stop, letting in-flight calls finish within the grace."""
        if self.health is not None:
            self.health.enter_graceful_shutdown()
        self.server.stop(grace_seconds).wait()


def start_grpc_server(
    inference: Inference,
    examples: ExampleInference,
    manager: ModelManager,
    addresses: list[str],
    *,
    max_workers: int,
    health_check: bool = False,
    channel_arguments: list[tuple[str, int | str]] | None = None,
) -> GrpcServer:
    """Start a gRPC server with TF Serving's services listening on every address.

    Args:
        inference: Predict/metadata/status handlers.
        examples: Classify/Regress/MultiInference handlers.
        manager: For HandleReloadConfigRequest.
        addresses: ``host:port`` or ``unix:PATH`` entries.
        max_workers: Threads answering calls (--grpc_max_threads).
        health_check: Also serve grpc.health.v1.Health, reporting SERVING for the server
            ("") (--enable_grpc_healthcheck_service).
        channel_arguments: gRPC channel arguments (--grpc_channel_arguments); they override
            the defaults, e.g. ``grpc.max_receive_message_length``.

    Raises:
        RuntimeError: If an address cannot be bound.
    """
    options: dict[str, int | str] = {
        "grpc.max_receive_message_length": _MAX_MESSAGE_BYTES,
        "grpc.max_send_message_length": _MAX_MESSAGE_BYTES,
        "grpc.so_reuseport": 0,
    }
    options.update(channel_arguments or [])
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=list(options.items()),
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(inference, examples), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(inference, manager), server)
    health_servicer = None
    if health_check:
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for address in addresses:
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as error:
            raise RuntimeError(f"cannot listen for gRPC on {address}: {error}") from None
        if not bound:
            raise RuntimeError(f"cannot listen for gRPC on {address}")
    server.start()
    if health_servicer is not None:
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return GrpcServer(server, health_servicer)
