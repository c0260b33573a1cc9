"""``tfpack convert model.tflite``: a TFLite model served as it is, proven as the server runs it.

    read the flatbuffer (the LiteRT interpreter verifies it) ─▶ the model.tflite to write and
    the SignatureDefs TF Serving serves it with ─▶ goldens: generated for their dtypes and
    shapes, or --sample-inputs, run by the LiteRT interpreter on the source (the reference),
    finite ─▶ the reference twice: deterministic
      ─▶ model.tflite into a staged version dir ─▶ run by the LiteRT interpreter as the source
         was: the same numbers to the last bit ─▶ loaded by the model server's own TFLite
         loader, run on the goldens: equal to the reference, batch independent
      ─▶ goldens, warmup, provenance ─▶ rename into DIR/NAME/N

The version dir is TF Serving's TFLite layout (``N/model.tflite`` and ``assets.extra/``, no
saved_model.pb), served with --prefer_tflite_model. TF Serving serves a .tflite model with the
SignatureDefs of its "signature_defs_metadata", else with a serving_default keyed by the
interpreter's tensor names, never with the model's own signatures (serving/tflite.py). So the
model.tflite written is:

* the source unchanged when it has signature_defs_metadata (all of its SignatureDefs served);
* else, when it has signatures of its own, the source with signature_defs_metadata added
  (:mod:`packager.formats.tflite_signatures`): its serving_default signature, or its only one
  whatever its name, as serving_default, keyed by the signature's input and output names;
* else the source unchanged, served with the serving_default TF Serving synthesises from the
  interpreter's tensors (keyed by tensor name without ":N").

Why this is not a ``packager/sources`` module: a source there is read into a frozen GraphDef
(:class:`~packager.graph.frozen_model.LoadedSource`) that graph/ cuts and export.py writes as a
SavedModel. A TFLite model has no GraphDef and is never rewritten: none of graph/'s analysis or
surgery applies, and what is written is the file itself. It shares convert's golden inputs and
records (:mod:`packager.version_assets`) and its readiness checks, nothing of its graph path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from packager.equivalence import compare_outputs
from packager.errors import SourceError, UsageError, VerificationError, first_line, shorten
from packager.export import SignatureRunner, staged_version_dir
from packager.graph.frozen_model import TensorRef
from packager.graph.io_discovery import has_batch_dimension
from packager.layout import DEFAULT_SIGNATURE, TFLITE_MODEL_FILE, file_sha256
from packager.progress import SILENT, Progress
from packager.readiness import (
    RANDOM_RERUNS,
    ReadinessReport,
    Verdict,
    check_batch_independence,
    independence_batch,
    raise_first_failure,
    rerun_disagreement,
)
from packager.sources import TFLITE_SUFFIX, detect_format
from packager.tf_runtime import tensorflow
from packager.version_assets import (
    DefaultSignature,
    SampleRecord,
    SignatureArrays,
    golden_run,
    write_version_records,
)
from packager.version_scan import RANDOM_BUILTINS, operator_codes

if TYPE_CHECKING:
    from tensorflow.core.protobuf.meta_graph_pb2 import SignatureDef, TensorInfo

    from serving.examples import ExampleInference
    from serving.inference import Inference
    from serving.tflite import TfLiteServable

SOURCE_FORMAT = "tflite"
REFERENCE = "source run by the LiteRT interpreter"
MISSING_EXTRA = "a .tflite source is proven with the LiteRT interpreter: pip install 'tfpack[tflite]'"

Signatures = dict[str, tuple[list[TensorRef], list[TensorRef]]]


def is_tflite_source(path: Path) -> bool:
    """Whether ``path`` names a .tflite file (converted by this module, not through a GraphDef)."""
    return path.suffix.lower() == TFLITE_SUFFIX and not path.is_dir()


@dataclass(frozen=True)
class ServedModel:
    """The model.tflite written for a source, and where its served SignatureDefs come from.

    Attributes:
        content: the bytes written as model.tflite.
        native_key: the model's own signature written into its signature_defs_metadata as
            serving_default; None when the file is written unchanged.
        metadata: what the provenance records of its signature_defs_metadata (None: it has
            none, TF Serving synthesises serving_default).
        signature_source: how the served SignatureDefs came about, in words.
    """

    content: bytes
    native_key: str | None
    metadata: str | None
    signature_source: str


@dataclass
class PreparedTflite(DefaultSignature):
    """A .tflite source read, its served signatures found, its goldens run by the reference and
    its source-side readiness proven: everything convert has before it writes.

    Attributes:
        model_bytes: the source file.
        served: the model.tflite to write (the source, or the source with signature_defs_metadata).
        signatures: {name: (inputs, outputs)} as TF Serving serves ``served``; shapes are the
            served SignatureDef's (a synthesised signature has the tensors' current dims).
        golden_inputs: {name: inputs} with the dims the model accepts (-1 in its shape
            signature: a batch) that the goldens were generated for.
        goldens, expected: {signature: {key: array}} — the inputs and the reference's outputs.
        reference: the LiteRT interpreter of the source, by signature.
    """

    path: Path
    model_bytes: bytes
    served: ServedModel
    signatures: Signatures
    golden_inputs: dict[str, list[TensorRef]]
    operators: list[str]
    custom_ops: list[str]
    operator_count: int
    constant_count: int
    goldens: SignatureArrays
    expected: SignatureArrays
    readiness: ReadinessReport
    reference: SignatureRunner
    sample_inputs: SampleRecord | None = None

    @property
    def details(self) -> dict[str, Any]:  # a JSON object: values of several types
        """What inspect and the provenance show of the model beyond its signature."""
        return {
            "signature_source": self.served.signature_source,
            "bytes": len(self.model_bytes),
            "operators": self.operators,
            "custom_ops": self.custom_ops,
            # The interpreter's shape signature (None: any size), whatever the served
            # SignatureDef shows (a synthesised one: the tensors' current dims).
            "accepted_input_shapes": {
                r.key: list(r.shape) if r.shape is not None else None for r in self.golden_inputs[DEFAULT_SIGNATURE]
            },
        }

    @property
    def tensor_names(self) -> dict[str, dict[str, dict[str, str]]]:
        """{signature: {"inputs"|"outputs": {key: tensor name inside the model}}}."""
        return {
            name: {"inputs": _tensor_names(inputs), "outputs": _tensor_names(outputs)}
            for name, (inputs, outputs) in sorted(self.signatures.items())
        }

    @property
    def source_record(self) -> dict[str, Any]:  # a JSON object: values of several types
        """The source as the provenance records it."""
        record: dict[str, Any] = {
            "path": str(self.path),
            "format": SOURCE_FORMAT,
            "details": self.details,
            "files": {self.path.name: file_sha256(self.path)},
            "read": [str(self.path.resolve())],
        }
        if self.sample_inputs:
            record["sample_inputs"] = self.sample_inputs
        return record


@dataclass(frozen=True)
class TfliteConversion(DefaultSignature):
    """A published TFLite version dir and what was proven about it."""

    version_dir: Path
    signatures: Signatures
    max_abs_error: float
    readiness: dict[str, dict[str, str]]


def _tensor_names(refs: list[TensorRef]) -> dict[str, str]:
    return {r.key: r.tensor_name for r in refs}


def _tensor_ref(key: str, info: TensorInfo) -> TensorRef:
    tf = tensorflow()
    shape = (
        None
        if info.tensor_shape.unknown_rank
        else tuple(d.size if d.size >= 0 else None for d in info.tensor_shape.dim)
    )
    return TensorRef(key=key, tensor_name=info.name, dtype=tf.as_dtype(info.dtype).name, shape=shape)


def _signatures(signature_defs: Mapping[str, SignatureDef]) -> Signatures:
    return {
        name: (
            [_tensor_ref(key, info) for key, info in signature.inputs.items()],
            [_tensor_ref(key, info) for key, info in signature.outputs.items()],
        )
        for name, signature in signature_defs.items()
    }


def _read_model(path: Path, progress: Progress) -> tuple[bytes, Any]:  # Any: ai-edge-litert is untyped
    """The file and a LiteRT interpreter of it, tensors allocated.

    Raises:
        SourceError: not a TFLite flatbuffer, or a model the interpreter cannot prepare.
        UsageError: ai-edge-litert is missing.
    """
    from packager.formats.tflite import require_litert

    detect_format(path)  # its one-line refusals: a missing or an empty file
    try:
        litert = require_litert()
    except UsageError:
        raise UsageError(MISSING_EXTRA) from None
    progress.step(f"loading {path}")
    try:
        model_bytes = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        interpreter = litert.Interpreter(model_content=model_bytes)
    except ValueError as exc:  # the flatbuffer verifier's refusal
        raise SourceError(f"{path} is not a TFLite model: {first_line(exc)}") from None
    try:
        interpreter.allocate_tensors()
    except RuntimeError as exc:
        custom = operator_codes(model_bytes)[1]
        if custom and all(op.startswith("Flex") for op in custom):
            raise SourceError(
                f"the LiteRT interpreter cannot prepare {path}: it needs Select TF ops ({', '.join(custom)}) and "
                "the interpreter has no Flex delegate to run them, so tfpack cannot prove it"
            ) from None
        needs = f" (it needs {', '.join(custom)})" if custom else ""
        raise SourceError(f"the LiteRT interpreter cannot prepare {path}{needs}: {first_line(exc)}") from None
    return model_bytes, interpreter


def _model_counts(model_bytes: bytes) -> tuple[int, int]:
    """(operators in every subgraph, tensors holding constant data) of a verified flatbuffer."""
    tensorflow()
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(model_bytes, 0)
    operators = constants = 0
    for index in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(index)
        operators += subgraph.OperatorsLength()
        for tensor_index in range(subgraph.TensorsLength()):
            buffer = model.Buffers(subgraph.Tensors(tensor_index).Buffer())
            # Past 2 GB a buffer's data lies outside the flatbuffer, at an offset.
            if buffer is not None and (buffer.DataLength() > 0 or buffer.Offset() > 1):
                constants += 1
    return operators, constants


def _one_line(exc: BaseException) -> str:
    """A runtime LoadError on one line: TF Serving's messages add their context after "\\n\\t"."""
    return shorten(str(exc).replace("\n\t", "; ").replace("\n", " "))


def served_model(path: Path, model_bytes: bytes) -> ServedModel:
    """The model.tflite to write for source ``model_bytes`` (see the module docstring).

    Raises:
        SourceError: unreadable signature_defs_metadata, several signatures of its own and none
            named serving_default, or a signature TF Serving cannot serve.
    """
    from packager.formats.tflite_signatures import (
        native_signature_keys,
        signature_defs_from_native,
        with_signature_defs,
    )
    from serving.servables import LoadError
    from serving.tflite import read_metadata_signature_defs

    try:
        stored = read_metadata_signature_defs(model_bytes)
    except LoadError as exc:
        raise SourceError(f"the model server's TFLite runtime cannot serve {path}: {_one_line(exc)}") from None
    if stored:
        return ServedModel(model_bytes, None, "the source's, unchanged", "the model's signature_defs_metadata")
    keys = native_signature_keys(model_bytes)
    if not keys:
        return ServedModel(model_bytes, None, None, "synthesised from the model's inputs and outputs")
    native_key = _native_serving_key(keys)
    if native_key is None:
        raise SourceError(
            f"{path} has signatures {', '.join(keys)} and none named {DEFAULT_SIGNATURE}: TF Serving serves a "
            f"TFLite model's signatures only from its signature_defs_metadata, where tfpack writes one of them as "
            f"{DEFAULT_SIGNATURE}; convert the model to TFLite with the signature to serve named {DEFAULT_SIGNATURE}"
        )
    try:
        signature_defs = signature_defs_from_native(model_bytes, {native_key: DEFAULT_SIGNATURE})
    except SourceError as exc:
        raise SourceError(f"{path}: {exc}") from None
    return ServedModel(
        with_signature_defs(model_bytes, signature_defs),
        native_key,
        f"added from the model's signature {native_key}",
        f"the model's signature {native_key}, written into its signature_defs_metadata as {DEFAULT_SIGNATURE}",
    )


def _served_signature_defs(path: Path, model_bytes: bytes) -> dict[str, SignatureDef]:
    from serving.servables import LoadError
    from serving.tflite import read_signature_defs

    try:
        return read_signature_defs(model_bytes)
    except LoadError as exc:
        raise SourceError(f"the model server's TFLite runtime cannot serve {path}: {_one_line(exc)}") from None


def _accepted_shapes(interpreter: Any, signatures: Signatures) -> dict[str, list[TensorRef]]:  # Any: LiteRT
    """Each signature's inputs with the dims the model accepts: a synthesised signature shows the
    tensors' current dims (1 for a free batch), the interpreter's shape signature has -1 there."""
    shape_signatures = {
        str(detail["name"]): tuple(int(d) if d >= 0 else None for d in detail["shape_signature"])
        for detail in interpreter.get_input_details()
    }
    return {
        name: [replace(r, shape=shape_signatures.get(r.tensor_name, r.shape)) for r in inputs]
        for name, (inputs, _) in signatures.items()
    }


def litert_reference(
    path: Path, interpreter: Any, signatures: Signatures, natives: Mapping[str, str]
) -> SignatureRunner:  # Any: LiteRT
    """The source run by the LiteRT interpreter: signature NAME on feeds keyed by input key.

    A served signature that is one of the model's own (``natives``: served name -> native key)
    runs through LiteRT's signature runner of that signature, by its input and output names,
    independently of the tensor names the signature_defs_metadata gives them (checked to agree
    with it beforehand); any other signature is fed and fetched by the tensor names of the
    served SignatureDef.

    Raises (from the runner):
        SourceError: the interpreter cannot run the feeds.
    """

    def by_tensor(name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs, outputs = signatures[name]
        details = {str(d["name"]): d for d in interpreter.get_input_details()}
        indices = {r.key: int(details[r.tensor_name]["index"]) for r in inputs}
        for ref in inputs:
            interpreter.resize_tensor_input(indices[ref.key], list(np.shape(feeds[ref.key])))
        interpreter.allocate_tensors()
        for key, value in feeds.items():
            interpreter.set_tensor(indices[key], value)
        interpreter.invoke()
        fetched = {str(d["name"]): int(d["index"]) for d in interpreter.get_output_details()}
        return {r.key: np.array(interpreter.get_tensor(fetched[r.tensor_name])) for r in outputs}

    def by_signature(name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        runner = interpreter.get_signature_runner(natives[name])
        return {key: np.array(value) for key, value in runner(**feeds).items()}

    def reference(name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return (by_signature if name in natives else by_tensor)(name, feeds)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise SourceError(f"{path} fails to run on the signature's golden inputs: {first_line(exc)}") from None

    return reference


def _native_serving_key(keys: list[str]) -> str | None:
    """The model's own signature served as serving_default: that name, else the only one."""
    if DEFAULT_SIGNATURE in keys:
        return DEFAULT_SIGNATURE
    return keys[0] if len(keys) == 1 else None


def _native_counterparts(model_bytes: bytes, served: Mapping[str, SignatureDef]) -> dict[str, str]:
    """served signature -> the model's own signature it must agree with (same name, or the
    native serving signature for serving_default)."""
    from packager.formats.tflite_signatures import native_signature_keys

    keys = native_signature_keys(model_bytes)
    pairs = {name: name for name in served if name in keys}
    default = _native_serving_key(keys)
    if DEFAULT_SIGNATURE in served and default is not None:
        pairs[DEFAULT_SIGNATURE] = default
    return pairs


def check_metadata_signatures(
    path: Path, interpreter: Any, model_bytes: bytes, served: Mapping[str, SignatureDef]
) -> dict[str, str]:  # Any: LiteRT
    """Check the SignatureDefs stored in the source's signature_defs_metadata against the model
    itself, as nothing in TF Serving does: each signature feeds every interpreter input exactly
    once (an input left out runs on uninitialised memory), declares each tensor's dtype and a
    shape its shape signature accepts, and, where the model has a signature of its own under that
    name (serving_default: its serving signature), maps the same keys to the same tensors.

    Args:
        served: the SignatureDefs as the runtime serves them (tensor names fixed).

    Returns:
        served signature -> the model's own signature it agrees with (the reference runs those).

    Raises:
        SourceError: the first disagreement, named.
    """
    from packager.formats.tflite_signatures import signature_defs_from_native

    tf = tensorflow()
    where = f"{path}'s signature_defs_metadata"
    inputs = {str(d["name"]): d for d in interpreter.get_input_details()}
    outputs = {str(d["name"]): d for d in interpreter.get_output_details()}
    for name, signature in sorted(served.items()):
        fed: dict[str, str] = {}
        for key, info in sorted(signature.inputs.items()):
            if info.name in fed:
                raise SourceError(
                    f"{where}: signature {name} feeds tensor {info.name} twice (inputs {fed[info.name]} and {key}): "
                    "each interpreter input must have exactly one key"
                )
            fed[info.name] = key
        unfed = sorted(set(inputs) - set(fed))
        if unfed:
            raise SourceError(
                f"{where}: signature {name} leaves interpreter input {', '.join(unfed)} unfed: TF Serving would run "
                "the model on whatever that memory holds; list every input in the signature"
            )
        for kind, infos, tensors in (("input", signature.inputs, inputs), ("output", signature.outputs, outputs)):
            for key, info in sorted(infos.items()):
                detail = tensors[info.name]
                dtype = tf.as_dtype(np.dtype(detail["dtype"])).as_datatype_enum
                if info.dtype != dtype:
                    raise SourceError(
                        f"{where}: signature {name} declares {kind} {key} {tf.as_dtype(info.dtype).name}, its tensor "
                        f"{info.name} is {tf.as_dtype(dtype).name}"
                    )
                accepted = [int(d) for d in detail["shape_signature"]]
                if info.HasField("tensor_shape") and not info.tensor_shape.unknown_rank:
                    declared = [int(d.size) for d in info.tensor_shape.dim]
                    if len(declared) != len(accepted) or any(
                        # A free dimension over a fixed one too: the goldens would run the fixed size
                        # only, and a client sending another would reach a model never proved on it.
                        (a >= 0 and d != a)
                        for d, a in zip(declared, accepted, strict=False)
                    ):
                        raise SourceError(
                            f"{where}: signature {name} declares {kind} {key} with shape {declared}, its tensor "
                            f"{info.name} has shape {accepted} (-1: any size)"
                        )
    natives = _native_counterparts(model_bytes, served)
    for name, native_key in sorted(natives.items()):
        try:
            native = signature_defs_from_native(model_bytes, {native_key: name})[name]
        except SourceError as exc:
            raise SourceError(f"{where}: signature {name} cannot be checked against the model's own: {exc}") from None
        for kind, stored, own in (
            ("inputs", served[name].inputs, native.inputs),
            ("outputs", served[name].outputs, native.outputs),
        ):
            stored_names = {key: info.name for key, info in stored.items()}
            own_names = {key: info.name for key, info in own.items()}
            if stored_names != own_names:
                differ = sorted(
                    k for k in stored_names.keys() | own_names.keys() if stored_names.get(k) != own_names.get(k)
                )
                raise SourceError(
                    f"{where}: signature {name} disagrees with the model's own signature {native_key} on {kind} "
                    + ", ".join(
                        f"{k} (metadata: {stored_names.get(k, 'absent')}, model: {own_names.get(k, 'absent')})"
                        for k in differ
                    )
                    + ": a client would get other tensors than the model's signature says; rewrite the metadata"
                )
    return natives


def check_synthesised_keys(path: Path, interpreter: Any) -> None:  # Any: LiteRT
    """Refuse a model without signatures whose tensors share a key once ':N' is cut from their
    names: TF Serving's synthesised serving_default keeps only one of them.

    Raises:
        SourceError: two inputs or two outputs with one key.
    """
    for kind, details in (("inputs", interpreter.get_input_details()), ("outputs", interpreter.get_output_details())):
        by_key: dict[str, list[str]] = {}
        for detail in details:
            name = str(detail["name"])
            by_key.setdefault(name.split(":", 1)[0], []).append(name)
        for key, names in sorted(by_key.items()):
            if len(names) > 1:
                raise SourceError(
                    f"{path} has no signature and its {kind} {', '.join(sorted(names))} share the key {key} TF Serving "
                    "serves them under (the name without ':N'), so only one is reachable: convert it with a "
                    "signature (TFLiteConverter from a tf.function or a SavedModel signature)"
                )


def check_servable_inputs(
    path: Path, interpreter: Any, golden_inputs: Mapping[str, list[TensorRef]], sample_inputs: Path | None
) -> None:  # Any: LiteRT
    """Refuse inputs TF Serving does not feed as the model expects, and inputs tfpack cannot
    generate representative values for.

    Raises:
        SourceError: a string input of rank other than 1 (TF Serving resizes a string input to
            [batch], tflite_session.cc); a quantized integer input without --sample-inputs.
    """
    quantized = {
        str(d["name"]): d["quantization"]
        for d in interpreter.get_input_details()
        if np.issubdtype(np.dtype(d["dtype"]), np.integer) and d["quantization"][0] != 0
    }
    for name, refs in sorted(golden_inputs.items()):
        for ref in refs:
            if ref.dtype == "string" and (ref.shape is None or len(ref.shape) != 1):
                raise SourceError(
                    f"{path}: string input {ref.key} of signature {name} has shape "
                    f"{list(ref.shape) if ref.shape is not None else 'unknown'}: TF Serving resizes a string input "
                    "to [batch], so only rank-1 string inputs are served as the model expects"
                )
            if ref.tensor_name in quantized and sample_inputs is None:
                scale, zero_point = quantized[ref.tensor_name]
                raise SourceError(
                    f"{path}: input {ref.key} is quantized (scale {scale:g}, zero point {zero_point}): generated "
                    "integers say nothing of the real values it stands for; give --sample-inputs"
                )


def check_tflite_determinism(
    expected: SignatureArrays,
    rerun: Callable[[], SignatureArrays],
    tolerance: float,
    operators: list[str],
) -> Verdict:
    """The reference run again on the goldens agrees with its first run.

    As convert's determinism check: one rerun within min(tolerance, 1e-6), or, with random ops in
    the model, RANDOM_RERUNS reruns to the last bit. A TFLite model is served as it is, so there is
    no flag to serve it stochastic: its random ops must go.
    """
    random_ops = sorted(RANDOM_BUILTINS.intersection(operators))
    disagreement = rerun_disagreement(expected, rerun, tolerance, with_random_ops=bool(random_ops))
    if disagreement is not None:
        ops = f"random ops in the model: {', '.join(random_ops)}" if random_ops else "no random op in the model"
        return Verdict(
            "determinism",
            "failed",
            f"the source gives different outputs for the same inputs ({disagreement}); {ops}: a TFLite model is "
            "served as it is, so convert it without its random ops (or with them outside the served graph)",
        )
    if random_ops:
        return Verdict(
            "determinism",
            "passed",
            f"random ops in the model ({', '.join(random_ops)}) do not change the outputs: "
            f"{RANDOM_RERUNS + 1} runs agree to the last bit",
        )
    return Verdict("determinism", "passed", "no random op in the model; the source run twice agrees")


def check_tflite_batch_independence(
    run: SignatureRunner, prepared: PreparedTflite, tolerance: float, batch_dependent: bool
) -> Verdict:
    """Batch independence of the model ``run`` serves, or why it was not checked."""
    if batch_dependent:
        return Verdict("batch_independence", "allowed", "--batch-dependent: outputs may mix samples on purpose")
    if prepared.readiness.status("determinism") == "failed":
        return Verdict("batch_independence", "skipped", "the model is not deterministic: its samples differ anyway")
    if not prepared.goldens:
        return Verdict("batch_independence", "skipped", "no golden inputs to run the model on")
    batches = {}
    for name, inputs in prepared.golden_inputs.items():
        batched = [r.key for r in inputs if has_batch_dimension(r.shape)]
        if batched:
            batches[name] = independence_batch(prepared.goldens[name], batched)
    tensorflow()

    # No GraphDef to name the ops that mix samples in, nor a graph rewrite to advise.
    return check_batch_independence(run, batches, tolerance, None)


def prepare_tflite(
    path: Path,
    *,
    tolerance: float,
    sample_inputs: Path | None,
    progress: Progress = SILENT,
    strict: bool = True,
) -> PreparedTflite:
    """Read a .tflite source, find its served signatures and prove everything that needs no
    written version: finite goldens from the reference, and a deterministic reference.

    Args:
        strict: False (inspect) reports readiness failures in ``PreparedTflite.readiness``
            instead of raising.

    Raises:
        UsageError / SourceError: a bad flag or source, or ai-edge-litert missing (exit 2).
        NotServingReady: a readiness check failed (exit 2), with ``strict``.
    """
    if not tolerance > 0 or not np.isfinite(tolerance):
        raise UsageError(f"--tolerance must be a positive finite number, not {tolerance}")
    if sample_inputs is not None and not sample_inputs.is_file():
        raise UsageError(f"--sample-inputs {sample_inputs}: no such file")
    model_bytes, interpreter = _read_model(path, progress)
    served = served_model(path, model_bytes)
    signature_defs = _served_signature_defs(path, served.content)
    if DEFAULT_SIGNATURE not in signature_defs:
        # TF Serving serves each SignatureDef of the metadata under its own key; the goldens, the
        # warmup requests and the smoke test are serving_default's.
        raise SourceError(
            f"{path} has no {DEFAULT_SIGNATURE} signature in its signature_defs_metadata (its signatures: "
            f"{', '.join(sorted(signature_defs))}): tfpack proves, warms up and smoke-tests {DEFAULT_SIGNATURE}: "
            f"write the model's signature_defs_metadata with a {DEFAULT_SIGNATURE}"
        )
    if served.native_key is not None:
        natives = {DEFAULT_SIGNATURE: served.native_key}
    elif served.metadata is not None:
        natives = check_metadata_signatures(path, interpreter, model_bytes, signature_defs)
    else:
        check_synthesised_keys(path, interpreter)
        natives = {}
    signatures = _signatures(signature_defs)
    operators, custom_ops = operator_codes(model_bytes)
    inputs, outputs = signatures[DEFAULT_SIGNATURE]
    progress.step(
        f"inputs {', '.join(r.key for r in inputs)}; outputs {', '.join(r.key for r in outputs)}; signature "
        + served.signature_source
    )
    # The interpreter's shape signature says what the model accepts (a -1 batch), whatever the
    # served SignatureDef shows (a synthesised one: the current dims, 1).
    golden_inputs = _accepted_shapes(interpreter, signatures)
    check_servable_inputs(path, interpreter, golden_inputs, sample_inputs)
    reference = litert_reference(path, interpreter, signatures, natives)
    report = ReadinessReport()
    progress.step("running the source on " + ("--sample-inputs" if sample_inputs else "generated inputs"))
    try:
        goldens, expected, sample_record, finite = golden_run(golden_inputs, reference, sample_inputs)
    except SourceError as exc:
        if strict:
            raise
        goldens, expected, sample_record, finite = {}, {}, None, Verdict("finite_goldens", "failed", str(exc))
    report.add(finite)
    if goldens:
        progress.step("running the source again: deterministic?")
        report.add(
            check_tflite_determinism(
                expected, lambda: {name: reference(name, goldens[name]) for name in goldens}, tolerance, operators
            )
        )
    else:
        report.add(Verdict("determinism", "skipped", "no golden inputs to run the source on"))
    if strict:
        raise_first_failure(report)
    operator_count, constant_count = _model_counts(model_bytes)
    return PreparedTflite(
        path=path,
        model_bytes=model_bytes,
        served=served,
        signatures=signatures,
        golden_inputs=golden_inputs,
        operators=operators,
        custom_ops=custom_ops,
        operator_count=operator_count,
        constant_count=constant_count,
        goldens=goldens,
        expected=expected,
        readiness=report,
        reference=reference,
        sample_inputs=sample_record,
    )


def check_rewrite_unchanged(prepared: PreparedTflite) -> None:
    """The model.tflite with signature_defs_metadata added, run by the LiteRT interpreter through
    the same signature as the reference ran the source, gives the reference's outputs to the last
    bit: the rewrite changed nothing but the metadata.

    Raises:
        VerificationError: it does not run, or its outputs differ.
    """
    from packager.formats.tflite import require_litert

    native_key = prepared.served.native_key
    try:
        interpreter = require_litert().Interpreter(model_content=prepared.served.content)
        runner = interpreter.get_signature_runner(native_key)
        actual = {
            name: {key: np.array(value) for key, value in runner(**feeds).items()}
            for name, feeds in prepared.goldens.items()
        }
    except (RuntimeError, ValueError, TypeError) as exc:
        raise VerificationError(
            f"the written {TFLITE_MODEL_FILE} (signature_defs_metadata added) fails in the LiteRT interpreter: "
            f"{first_line(exc)}"
        ) from None
    for name, outputs in prepared.expected.items():
        compare_outputs(
            outputs,
            actual[name],
            0.0,
            f"the written {TFLITE_MODEL_FILE} (signature_defs_metadata added), run by the LiteRT interpreter, vs "
            "the source",
        )


def _load_served(staging: Path, name: str, version: int) -> TfLiteServable:
    """The staged version loaded by the model server's TFLite loader (--prefer_tflite_model)."""
    from serving.servables import LoadError
    from serving.tflite import load_tflite_servable

    try:
        return load_tflite_servable(name, version, staging)
    except LoadError as exc:
        raise VerificationError(
            f"the model server cannot load the written {TFLITE_MODEL_FILE}: {_one_line(exc)}"
        ) from None


def served_runner(servable: TfLiteServable) -> SignatureRunner:
    """Run signature NAME of a loaded servable as a client's Predict request runs: a
    PredictRequest of the feeds, handled by the runtime's Predict handler
    (:meth:`serving.inference.Inference.predict_with`: its signature, key and dtype checks),
    the outputs decoded from its response."""
    from tensorflow_serving.apis import predict_pb2

    from serving import tensors

    inference = _request_handlers()[0]

    def run(name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = servable.name
        request.model_spec.signature_name = name
        for key, value in feeds.items():
            request.inputs[key].CopyFrom(tensors.to_proto(np.asarray(value)))
        response = inference.predict_with(servable, request)
        return {key: tensors.to_ndarray(proto) for key, proto in response.outputs.items()}

    return run


def _request_handlers() -> tuple[Inference, ExampleInference]:
    """The runtime's Predict and example handlers as the model server makes them by default
    (TF Serving's defaults: no method name check)."""
    from serving.examples import ExampleInference
    from serving.inference import Inference
    from serving.manager import LoadPolicy, ModelManager

    # The handlers resolve model specs through a manager; a proof hands them the servable.
    manager = ModelManager(LoadPolicy())
    return Inference(manager), ExampleInference(manager)


def _replay_warmup(servable: TfLiteServable) -> None:
    """Replay the staged version's warmup file as the model server does at load time.

    Raises:
        VerificationError: a request fails: the model server would not load the version.
    """
    from serving.servables import LoadError
    from serving.warmup import Warmup

    inference, examples = _request_handlers()
    try:
        Warmup(inference, examples)(servable)
    except LoadError as exc:
        raise VerificationError(
            f"the model server would fail to load the written version at warmup: {_one_line(exc)}"
        ) from None


def _prove_served(servable: TfLiteServable, prepared: PreparedTflite, tolerance: float) -> float:
    """Run every signature of the loaded servable on the goldens; return the largest error.

    Raises:
        VerificationError: the server serves other SignatureDefs than those proven, a signature
            fails to run, or its outputs differ from the reference's.
    """
    from serving.status import ServingError

    served = _signatures(servable.signature_defs)
    if served != prepared.signatures:
        raise VerificationError(
            f"the model server serves signatures {sorted(served)} other than the ones read from the source "
            f"({sorted(prepared.signatures)})"
        )
    run = served_runner(servable)
    max_error = 0.0
    for name in prepared.signatures:
        try:
            actual = run(name, prepared.goldens[name])
        except ServingError as exc:
            raise VerificationError(f"the written version fails to run signature {name}: {first_line(exc)}") from None
        comparison = compare_outputs(
            prepared.expected[name],
            actual,
            tolerance,
            f"signature {name} of the written version, as the model server runs it, vs the {REFERENCE}",
        )
        max_error = max(max_error, comparison.max_abs_error)
    return max_error


def convert_tflite(
    path: Path,
    *,
    name: str,
    output_dir: Path,
    version: int,
    tolerance: float,
    sample_inputs: Path | None,
    batch_dependent: bool,
    options: dict[str, Any],  # a JSON object: the flags as the provenance records them
    progress: Progress = SILENT,
) -> TfliteConversion:
    """Write ``path`` as ``output_dir/name/version/model.tflite``, proven as the server runs it.

    The caller has checked the name, version and output dir (as for any source).

    Raises:
        UsageError / SourceError: a bad flag or source (exit 2); nothing is written.
        NotServingReady: a readiness check failed (exit 2); nothing is written.
        VerificationError: the runtime does not reproduce the reference (exit 3); nothing is
            published.
    """
    prepared = prepare_tflite(path, tolerance=tolerance, sample_inputs=sample_inputs, progress=progress)
    report = prepared.readiness
    with staged_version_dir(output_dir, name, version) as staging:
        progress.step(f"writing TFLite version {version}")
        staging.mkdir(parents=True)
        (staging / TFLITE_MODEL_FILE).write_bytes(prepared.served.content)
        if prepared.served.native_key is not None:
            progress.step("running it in the LiteRT interpreter as the source was: the same numbers?")
            check_rewrite_unchanged(prepared)
        progress.step("loading it as the model server does (--prefer_tflite_model) and comparing with the source")
        servable = _load_served(staging, name, version)
        max_error = _prove_served(servable, prepared, tolerance)
        progress.step("one sample alone vs inside a batch: batch independent?")
        report.add(check_tflite_batch_independence(served_runner(servable), prepared, tolerance, batch_dependent))
        raise_first_failure(report)
        write_version_records(
            staging,
            model_name=name,
            version=version,
            source=prepared.source_record,
            options=options,
            inputs=prepared.inputs,
            outputs=prepared.outputs,
            goldens=prepared.goldens[DEFAULT_SIGNATURE],
            expected=prepared.expected[DEFAULT_SIGNATURE],
            tolerance=tolerance,
            max_abs_error=max_error,
            extra={
                "served_as": SOURCE_FORMAT,
                "model": {"file": TFLITE_MODEL_FILE, "sha256": file_sha256(staging / TFLITE_MODEL_FILE)},
                "signature_defs_metadata": prepared.served.metadata,
                "signatures": sorted(prepared.signatures),
                "tensors": prepared.tensor_names,
                "readiness": report.to_json(),
                "reference": REFERENCE,
            },
        )
        progress.step("replaying its warmup requests as the model server does when it loads it")
        _replay_warmup(servable)
    return TfliteConversion(
        version_dir=output_dir / name / str(version),
        signatures=prepared.signatures,
        max_abs_error=max_error,
        readiness=report.to_json(),
    )
