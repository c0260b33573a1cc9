"""Classify, Regress and MultiInference: signatures that take serialized tf.Examples.

Follows tensorflow_serving/servables/tensorflow (classifier.cc, regressor.cc, util.cc,
multi_inference.cc): the request's Input becomes a DT_STRING tensor of serialized Examples fed to
the signature's single input ("inputs"); "classes"/"scores" or "outputs" come back as results.
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    regression_pb2,
)

from serving.inference import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    REGRESS_METHOD,
    response_model_spec,
)
from serving.manager import ModelManager
from serving.servables import Servable
from serving.status import failed_precondition, invalid_argument

CLASSIFY_INPUTS, CLASSES, SCORES = "inputs", "classes", "scores"
REGRESS_INPUTS, REGRESS_OUTPUTS = "inputs", "outputs"


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """Return the Input as a 1-D array of serialized tf.Examples (context merged in first)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        records = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        # Concatenated serializations parse as a merge, the example's features winning.
        context = with_context.context.SerializeToString()
        records = [context + e.SerializeToString() for e in with_context.examples]
    else:
        records = []
    if not records:
        raise invalid_argument("Input is empty.")
    return np.array(records, dtype=object)


def _signature(
    servable: Servable, name: str, method: str, what: str, check_method: bool
) -> meta_graph_pb2.SignatureDef:
    signature_name = name or DEFAULT_SIGNATURE
    signature = servable.meta_graph.signature_def.get(signature_name)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {signature_name}")
    if check_method and signature.method_name != method:
        raise invalid_argument(f"Expected {what} signature method_name to be {method}. Was: {signature.method_name}")
    return signature


def _shape(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"


class ExampleInference:
    """Classify, Regress and MultiInference over one ModelManager."""

    def __init__(self, manager: ModelManager, *, check_method_names: bool = False) -> None:
        """Args: manager: resolves model specs; check_method_names: as
        --enable_signature_method_name_check."""
        self._manager = manager
        self._check = check_method_names

    def classify(
        self, request: classification_pb2.ClassificationRequest, timeout_ms: int | None = None
    ) -> classification_pb2.ClassificationResponse:
        """PredictionService.Classify."""
        servable = self._manager.servable(request.model_spec)
        return self.classify_with(servable, request, timeout_ms)

    def classify_with(
        self,
        servable: Servable,
        request: classification_pb2.ClassificationRequest,
        timeout_ms: int | None = None,
    ) -> classification_pb2.ClassificationResponse:
        """Classify on a given servable."""
        name = request.model_spec.signature_name
        signature = _signature(servable, name, CLASSIFY_METHOD, "classification", self._check)
        result = self._classify(servable, signature, request.input, timeout_ms)
        return classification_pb2.ClassificationResponse(
            model_spec=response_model_spec(servable, name or DEFAULT_SIGNATURE), result=result
        )

    def _classify(
        self,
        servable: Servable,
        signature: meta_graph_pb2.SignatureDef,
        request_input: input_pb2.Input,
        timeout_ms: int | None,
    ) -> classification_pb2.ClassificationResult:
        if len(signature.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        if len(signature.outputs) not in (1, 2):
            raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
        if CLASSIFY_INPUTS not in signature.inputs:
            raise failed_precondition(f"No classification inputs found in SignatureDef: {signature}")
        present = [key for key in (CLASSES, SCORES) if key in signature.outputs]
        if not present:
            raise failed_precondition(
                'Expected classification signature outputs to contain at least one of "classes" '
                f'or "scores". Signature was: {signature}'
            )
        examples = serialized_examples(request_input)
        values = dict(
            zip(
                present,
                servable.run(
                    {signature.inputs[CLASSIFY_INPUTS].name: examples},
                    [signature.outputs[key].name for key in present],
                    timeout_ms,
                ),
                strict=True,
            )
        )
        classes, scores = values.get(CLASSES), values.get(SCORES)
        for key, array, kind in ((CLASSES, classes, "O"), (SCORES, scores, "f")):
            if array is None:
                continue
            if array.ndim != 2:
                raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got {_shape(array)}")
            if array.dtype.kind != kind or (kind == "f" and array.dtype != np.float32):
                wanted = "DT_STRING" if key == CLASSES else "DT_FLOAT"
                raise invalid_argument(f"Expected {key} Tensor of {wanted}. Got: {array.dtype}")
            if array.shape[0] != len(examples):
                raise invalid_argument(f"Expected {key} output batch size of {len(examples)}. Got: {array.shape[0]}")
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise invalid_argument(
                f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
            )
        num_classes = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
        result = classification_pb2.ClassificationResult()
        for row in range(len(examples)):
            classifications = result.classifications.add()
            for column in range(num_classes):
                entry = classifications.classes.add()
                if classes is not None:
                    label = classes[row, column]
                    entry.label = label.decode("utf-8", errors="replace") if isinstance(label, bytes) else str(label)
                if scores is not None:
                    entry.score = scores[row, column]
        return result

    def regress(
        self, request: regression_pb2.RegressionRequest, timeout_ms: int | None = None
    ) -> regression_pb2.RegressionResponse:
        """PredictionService.Regress."""
        servable = self._manager.servable(request.model_spec)
        return self.regress_with(servable, request, timeout_ms)

    def regress_with(
        self,
        servable: Servable,
        request: regression_pb2.RegressionRequest,
        timeout_ms: int | None = None,
    ) -> regression_pb2.RegressionResponse:
        """Regress on a given servable."""
        name = request.model_spec.signature_name
        signature = _signature(servable, name, REGRESS_METHOD, "regression", self._check)
        result = self._regress(servable, signature, request.input, timeout_ms)
        return regression_pb2.RegressionResponse(
            model_spec=response_model_spec(servable, name or DEFAULT_SIGNATURE), result=result
        )

    def _regress(
        self,
        servable: Servable,
        signature: meta_graph_pb2.SignatureDef,
        request_input: input_pb2.Input,
        timeout_ms: int | None,
    ) -> regression_pb2.RegressionResult:
        if len(signature.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        if len(signature.outputs) != 1:
            raise invalid_argument("Expected one output Tensor.")
        if REGRESS_INPUTS not in signature.inputs:
            raise failed_precondition(f"No regression inputs found in SignatureDef: {signature}")
        if REGRESS_OUTPUTS not in signature.outputs:
            raise failed_precondition(f"No regression outputs found in SignatureDef: {signature}")
        examples = serialized_examples(request_input)
        (values,) = servable.run(
            {signature.inputs[REGRESS_INPUTS].name: examples},
            [signature.outputs[REGRESS_OUTPUTS].name],
            timeout_ms,
        )
        if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
            raise invalid_argument(
                f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {_shape(values)}"
            )
        if values.dtype != np.float32:
            raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype}")
        if values.shape[0] != len(examples):
            raise invalid_argument(
                f"Input batch size did not match output batch size: {len(examples)} vs. {values.shape[0]}"
            )
        result = regression_pb2.RegressionResult()
        for value in values.reshape(-1):
            result.regressions.add(value=value)
        return result

    def multi_inference(
        self, request: inference_pb2.MultiInferenceRequest, timeout_ms: int | None = None
    ) -> inference_pb2.MultiInferenceResponse:
        """PredictionService.MultiInference: several classify/regress signatures, one input."""
        if not request.tasks:
            raise invalid_argument("Expected at least one task")
        first = request.tasks[0].model_spec
        seen: set[str] = set()
        for task in request.tasks:
            if task.model_spec.name != first.name:
                raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if signature_name in seen:
                raise invalid_argument(f"Duplicate evaluation of signature: {signature_name}")
            seen.add(signature_name)
            if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise invalid_argument(f"Unsupported signature method_name: {task.method_name}")
        servable = self._manager.servable(first)
        return self.multi_inference_with(servable, request, timeout_ms)

    def multi_inference_with(
        self,
        servable: Servable,
        request: inference_pb2.MultiInferenceRequest,
        timeout_ms: int | None = None,
    ) -> inference_pb2.MultiInferenceResponse:
        """MultiInference on a given servable."""
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            name = task.model_spec.signature_name
            result = response.results.add(model_spec=response_model_spec(servable, name or DEFAULT_SIGNATURE))
            if task.method_name == CLASSIFY_METHOD:
                signature = _signature(servable, name, CLASSIFY_METHOD, "classification", self._check)
                result.classification_result.CopyFrom(self._classify(servable, signature, request.input, timeout_ms))
            else:
                signature = _signature(servable, name, REGRESS_METHOD, "regression", self._check)
                result.regression_result.CopyFrom(self._regress(servable, signature, request.input, timeout_ms))
        return response
