"""The PredictionService and ModelService operations, independent of the transport.

gRPC and REST both call these functions with request protos and get response protos back (as
TF Serving's REST handler calls the same implementations as its gRPC services). Validation
order and error messages follow tensorflow_serving/servables/tensorflow (predict_util.cc,
get_model_metadata_impl.cc) and model_servers/get_model_status_impl.cc.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

import grpc
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from serving import tensors
from serving.manager import ModelManager
from serving.servables import Servable
from serving.status import failed_precondition, internal, invalid_argument, not_found, too_large

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
SIGNATURE_DEF_FIELD = "signature_def"


# The automatic cap on a request's tensor bytes: a sixteenth of the memory the server may use
# (its cgroup's limit, else the machine's), so that a request's tensors, their protobuf form
# and the outputs computed from them fit beside the model, between 64 MiB and the 2 GiB a
# protobuf message can hold.
_AUTO_LIMIT_SHARE = 16
_AUTO_LIMIT_FLOOR = 64 << 20
_AUTO_LIMIT_CEILING = 2**31 - 1
_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def _memory_bytes() -> int | None:
    limits = []
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isascii() and text.isdigit():
            limits.append(int(text))
    with contextlib.suppress(ValueError, OSError):
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return min(limits) if limits else None


def default_max_request_tensor_bytes() -> int:
    """The cap on a request's tensor bytes when --tfpack_max_request_tensor_bytes is 0 (automatic)."""
    memory = _memory_bytes()
    if memory is None:
        return _AUTO_LIMIT_FLOOR
    return max(_AUTO_LIMIT_FLOOR, min(memory // _AUTO_LIMIT_SHARE, _AUTO_LIMIT_CEILING))


def _joined(keys: Iterable[str]) -> str:
    return ",".join(sorted(keys))


def response_model_spec(servable: Servable, signature_name: str | None) -> model_pb2.ModelSpec:
    """Return the ModelSpec a response carries: name, the served version, the signature used."""
    spec = model_pb2.ModelSpec(name=servable.name, signature_name=signature_name or "")
    spec.version.value = servable.version
    return spec


def find_signature(servable: Servable, name: str) -> meta_graph_pb2.SignatureDef:
    """Return the SignatureDef ``name`` (empty means serving_default) or FAILED_PRECONDITION."""
    signature_name = name or DEFAULT_SIGNATURE
    signature = servable.meta_graph.signature_def.get(signature_name)
    if signature is None:
        raise failed_precondition(f'Serving signature key "{signature_name}" not found.')
    return signature


class Inference:
    """The request handlers over one ModelManager."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        tensor_content: bool = False,
        max_request_tensor_bytes: int = 0,
        check_method_names: bool = False,
    ) -> None:
        """Create the handlers.

        Args:
            manager: Resolves model specs to servables.
            check_method_names: Refuse a signature whose method_name is not predict, classify
                or regress (--enable_signature_method_name_check; off by default, as in TF
                Serving's predict_util.cc VerifySignature).
            tensor_content: Pack Predict outputs into tensor_content
                (--enable_serialization_as_tensor_content).
            max_request_tensor_bytes: The most bytes a request's input tensors may take once
                decoded (--tfpack_max_request_tensor_bytes; 0: sized for the server's memory, see
                default_max_request_tensor_bytes). The REST API also caps bodies with it.
        """
        self._manager = manager
        self._tensor_content = tensor_content
        self._check_method_names = check_method_names
        self.max_request_tensor_bytes = (
            max_request_tensor_bytes if max_request_tensor_bytes > 0 else default_max_request_tensor_bytes()
        )

    def predict(
        self, request: predict_pb2.PredictRequest, timeout_ms: int | None = None
    ) -> predict_pb2.PredictResponse:
        """Run a signature on the request's input tensors (PredictionService.Predict)."""
        return self.predict_with(self._manager.servable(request.model_spec), request, timeout_ms)

    def predict_with(
        self,
        servable: Servable,
        request: predict_pb2.PredictRequest,
        timeout_ms: int | None = None,
    ) -> predict_pb2.PredictResponse:
        """Predict on a given servable (used directly by model warmup)."""
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = find_signature(servable, signature_name)
        if self._check_method_names and signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
            raise internal(
                "Expected prediction signature method_name to be one of "
                f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. "
                f"Was: {signature.method_name}"
            )
        requested, expected = set(request.inputs), set(signature.inputs)
        if len(requested) != len(expected):
            raise invalid_argument(
                f"input size does not match signature: {len(requested)}!={len(expected)} "
                f"len({{{_joined(requested)}}}) != len({{{_joined(expected)}}}). "
                f"Sent extra: {{{_joined(requested - expected)}}}. "
                f"Missing but required: {{{_joined(expected - requested)}}}."
            )
        # Every input is checked, and the total counted, before any is decoded: a request
        # is refused without allocating what it claims.
        total_bytes = 0
        for index, (alias, proto) in enumerate(sorted(request.inputs.items())):
            info = signature.inputs.get(alias)
            if info is None:
                raise invalid_argument(
                    f"input tensor alias not found in signature: {alias}. "
                    f"Inputs expected to be in the set {{{_joined(expected)}}}."
                )
            if proto.dtype != info.dtype:
                raise invalid_argument(
                    f"Expects arg[{index}] to be {tensors.dtype_name(info.dtype)} but "
                    f"{tensors.dtype_name(proto.dtype)} is provided"
                )
            total_bytes += tensors.check_request_tensor(proto, alias)
        if total_bytes > self.max_request_tensor_bytes:
            raise too_large(
                f"Request tensors take {total_bytes} bytes, above the limit of "
                f"{self.max_request_tensor_bytes} bytes (--tfpack_max_request_tensor_bytes)"
            )
        feeds = {}
        for alias, proto in sorted(request.inputs.items()):
            try:
                feeds[signature.inputs[alias].name] = tensors.to_ndarray(proto)
            except (TypeError, ValueError, OverflowError):  # e.g. int_val 300 for an int8
                raise invalid_argument(f"tensor parsing error: {alias}") from None

        aliases: list[str] = []
        for alias in request.output_filter:
            if alias not in signature.outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{_joined(signature.outputs)}}}."
                )
            if alias in aliases:
                raise invalid_argument(f"duplicate output tensor alias: {alias}")
            aliases.append(alias)
        aliases = aliases or sorted(signature.outputs)

        values = servable.run(feeds, [signature.outputs[a].name for a in aliases], timeout_ms)
        response = predict_pb2.PredictResponse(model_spec=response_model_spec(servable, signature_name))
        for alias, value in zip(aliases, values, strict=True):
            response.outputs[alias].CopyFrom(tensors.to_proto(value, as_tensor_content=self._tensor_content))
        return response

    def get_model_metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """Return the model's SignatureDefMap (PredictionService.GetModelMetadata)."""
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for metadata_field in request.metadata_field:
            if metadata_field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {metadata_field} is not supported")
        servable = self._manager.servable(request.model_spec)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.meta_graph.signature_def.items():
            signature_defs.signature_def[key].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=response_model_spec(servable, None))
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_defs)
        return response

    def get_model_status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """Return the state of the model's versions (ModelService.GetModelStatus)."""
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        statuses = self._manager.version_statuses(spec.name)
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            version = self._manager.servable(spec).version
            statuses = {version: statuses[version]}
        elif choice == "version":
            version = spec.version.value
            if version not in statuses:
                raise not_found(f"Could not find version {version} of model {spec.name}")
            statuses = {version: statuses[version]}
        elif not statuses:
            raise not_found(f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in sorted(statuses, reverse=True):
            status = statuses[version]
            entry = response.model_version_status.add(version=version, state=status.state)
            entry.status.SetInParent()  # TF Serving always sets it: {"error_code": "OK", ...}
            if status.error:
                entry.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                entry.status.error_message = status.error
        return response
