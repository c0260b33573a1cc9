"""``tfpack contract``: a version's serving contract, and what changed between two versions.

The contract is what clients depend on: per signature, its method and the dtype and shape of
every input and output key. A change breaks clients when a request that worked before can fail
(a signature, input or output gone, a new input, a dtype change, a shape that accepts less or
returns something else) — ``contract diff`` exits 5 on those, and lists compatible changes too.

A version dir's contract is that of the model it serves (:func:`packager.layout.served_format`):
its SavedModel's 'serve' meta graph, or, when it holds a model.tflite, the SignatureDefs TF
Serving builds for that model — exactly those tfpack's own runtime builds
(:func:`serving.tflite.load_tflite_servable`), so a SavedModel version followed by a TFLite one
is compared by what clients are served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packager.errors import ContractBreak, SourceError, UsageError
from packager.layout import (
    SAVED_MODEL_FILE,
    SERVED_TFLITE,
    SERVING_TAG,
    TFLITE_MODEL_FILE,
    is_version_dir,
    served_format,
)

if TYPE_CHECKING:
    from tensorflow.core.protobuf.meta_graph_pb2 import SignatureDef, TensorInfo

Shape = list[int | None] | None  # None: unknown rank


@dataclass(frozen=True)
class TensorContract:
    """What a client may send or get for one input or output key."""

    dtype: str  # TensorFlow's dtype name ("float32", "string"); "invalid" when none is recorded
    shape: Shape

    def to_json(self) -> dict[str, object]:
        return {"dtype": self.dtype, "shape": self.shape}


@dataclass(frozen=True)
class SignatureContract:
    """One signature: its method (tensorflow/serving/predict, ...) and its tensors by key."""

    method: str
    inputs: dict[str, TensorContract]
    outputs: dict[str, TensorContract]

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "inputs": {k: v.to_json() for k, v in sorted(self.inputs.items())},
            "outputs": {k: v.to_json() for k, v in sorted(self.outputs.items())},
        }


@dataclass(frozen=True)
class Contract:
    """The serving contract of one version dir: its signatures by name (``__`` ones left out)."""

    version_dir: Path
    signatures: dict[str, SignatureContract]

    def to_json(self) -> dict[str, object]:
        return {
            "version_dir": str(self.version_dir),
            "signatures": {k: v.to_json() for k, v in sorted(self.signatures.items())},
        }

    def summary(self) -> str:
        """The contract for people: one line per signature, then one per tensor."""
        lines = [f"{self.version_dir}:"]
        for name, signature in sorted(self.signatures.items()):
            lines.append(f"  {name} ({signature.method.rsplit('/', 1)[-1]})")
            for direction, tensors in (("in ", signature.inputs), ("out", signature.outputs)):
                for key, tensor in sorted(tensors.items()):
                    lines.append(f"    {direction} {key}: {tensor.dtype} {_shape_text(tensor.shape)}")
        return "\n".join(lines)


@dataclass(frozen=True)
class ContractDiff:
    """What changed from one version's contract to the next's, one line per change.

    Attributes:
        breaking: changes that can fail a request that worked before (``contract diff`` exits 5).
        compatible: changes every client survives (a signature or an output added, a shape
            relaxed).
    """

    old: Path
    new: Path
    breaking: tuple[str, ...] = ()
    compatible: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "old": str(self.old),
            "new": str(self.new),
            "breaking": list(self.breaking),
            "compatible": list(self.compatible),
        }

    def summary(self) -> str:
        """The diff for people: unchanged, or one line per change, breaking ones first."""
        if not self.breaking and not self.compatible:
            return f"{self.old} -> {self.new}: the serving contract is unchanged"
        lines = [f"{self.old} -> {self.new}:"]
        lines += [f"  BREAKING {c}" for c in self.breaking]
        lines += [f"  compatible {c}" for c in self.compatible]
        return "\n".join(lines)


def _shape_text(shape: Shape) -> str:
    return "?" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def read_contract(version_dir: Path) -> Contract:
    """Read the serving contract of a version dir: that of the model it serves.

    Its SavedModel's 'serve' meta graph, or the SignatureDefs of its model.tflite when it holds
    one (see the module docstring).

    Raises:
        UsageError: not a version dir.
        SourceError: its model cannot be read.
    """
    if not version_dir.is_dir() or not is_version_dir(version_dir):
        raise UsageError(f"{version_dir} is not a version dir (neither saved_model.pb nor {TFLITE_MODEL_FILE})")
    if served_format(version_dir) == SERVED_TFLITE:
        return contract_of_signature_defs(version_dir, _tflite_signature_defs(version_dir))
    return read_saved_model_contract(version_dir)


def read_saved_model_contract(version_dir: Path) -> Contract:
    """The contract of the version dir's SavedModel, even when a model.tflite beside it is served.

    Raises:
        SourceError: saved_model.pb is missing or unreadable, or has no 'serve' meta graph.
    """
    return contract_of_signature_defs(version_dir, _saved_model_signature_defs(version_dir))


def _saved_model_signature_defs(version_dir: Path) -> Mapping[str, SignatureDef]:
    """The SignatureDefs of the SavedModel's 'serve' meta graph."""
    from packager.tf_runtime import tensorflow

    tensorflow()
    from google.protobuf import message
    from tensorflow.core.protobuf import saved_model_pb2

    try:
        saved_model = saved_model_pb2.SavedModel.FromString((version_dir / SAVED_MODEL_FILE).read_bytes())
    except (OSError, message.DecodeError) as exc:
        raise SourceError(f"{version_dir}/{SAVED_MODEL_FILE} is not a readable SavedModel: {exc}") from None
    meta_graph = next((m for m in saved_model.meta_graphs if SERVING_TAG in m.meta_info_def.tags), None)
    if meta_graph is None:
        raise SourceError(f"{version_dir} has no meta graph tagged '{SERVING_TAG}'")
    return meta_graph.signature_def


def _tflite_signature_defs(version_dir: Path) -> Mapping[str, SignatureDef]:
    """The SignatureDefs the runtime serves for the version dir's model.tflite."""
    from serving.servables import LoadError
    from serving.tflite import load_tflite_servable

    try:
        # Name and version only label the servable's log line: nothing is served.
        return load_tflite_servable(version_dir.parent.name, 0, version_dir).signature_defs
    except LoadError as exc:
        raise SourceError(f"{version_dir}/{TFLITE_MODEL_FILE} is not a readable TFLite model: {exc}") from None


def contract_of_signature_defs(version_dir: Path, signature_defs: Mapping[str, SignatureDef]) -> Contract:
    """The contract of ``signature_defs`` (``__`` ones left out), as served from ``version_dir``."""
    from packager.tf_runtime import tensorflow

    tf = tensorflow()

    def tensors(infos: Mapping[str, TensorInfo]) -> dict[str, TensorContract]:
        result = {}
        for key, info in infos.items():
            dtype = tf.as_dtype(info.dtype).name if info.dtype else "invalid"
            shape = (
                None
                if info.tensor_shape.unknown_rank
                else [None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim]
            )
            result[key] = TensorContract(dtype, shape)
        return result

    return Contract(
        version_dir,
        {
            name: SignatureContract(signature.method_name, tensors(signature.inputs), tensors(signature.outputs))
            for name, signature in signature_defs.items()
            if not name.startswith("__")  # __saved_model_init_op is no client contract
        },
    )


def _accepts_all_of(new: Shape, old: Shape) -> bool:
    """True when every tensor the old shape accepted still fits the new one."""
    if new is None:
        return True
    if old is None or len(new) != len(old):
        return False
    return all(n is None or n == o for n, o in zip(new, old))


def diff_contracts(old_dir: Path, new_dir: Path) -> ContractDiff:
    """Compare two versions' contracts.

    Raises:
        ContractBreak: any breaking change (exit 5); the diff is attached for --json.
    """
    diff = compare_contracts(read_contract(old_dir), read_contract(new_dir))
    if diff.breaking:
        raise ContractBreak(
            f"breaking serving-contract change {old_dir} -> {new_dir}: {'; '.join(diff.breaking)}",
            result=diff.to_json(),
        )
    return diff


def compare_contracts(old: Contract, new: Contract) -> ContractDiff:
    """What changed from ``old`` to ``new``, breaking and compatible (see :class:`ContractDiff`)."""
    breaking: list[str] = []
    compatible: list[str] = []
    for name in sorted(old.signatures.keys() - new.signatures.keys()):
        breaking.append(f"signature {name} removed")
    for name in sorted(new.signatures.keys() - old.signatures.keys()):
        compatible.append(f"signature {name} added")
    for name in sorted(old.signatures.keys() & new.signatures.keys()):
        before, after = old.signatures[name], new.signatures[name]
        if before.method != after.method:
            breaking.append(f"{name}: method {before.method} -> {after.method}")
        for key in sorted(before.inputs.keys() - after.inputs.keys()):
            breaking.append(f"{name}: input {key} removed (requests that send it are refused)")
        for key in sorted(after.inputs.keys() - before.inputs.keys()):
            breaking.append(f"{name}: input {key} added (requests without it are refused)")
        for key in sorted(before.outputs.keys() - after.outputs.keys()):
            breaking.append(f"{name}: output {key} removed")
        for key in sorted(after.outputs.keys() - before.outputs.keys()):
            compatible.append(f"{name}: output {key} added")
        for key in sorted(before.inputs.keys() & after.inputs.keys()):
            was, now = before.inputs[key], after.inputs[key]
            if was.dtype != now.dtype:
                breaking.append(f"{name}: input {key} dtype {was.dtype} -> {now.dtype}")
            elif not _accepts_all_of(now.shape, was.shape):
                breaking.append(f"{name}: input {key} shape {_shape_text(was.shape)} -> {_shape_text(now.shape)}")
            elif now.shape != was.shape:
                compatible.append(
                    f"{name}: input {key} shape relaxed {_shape_text(was.shape)} -> {_shape_text(now.shape)}"
                )
        for key in sorted(before.outputs.keys() & after.outputs.keys()):
            was, now = before.outputs[key], after.outputs[key]
            if was.dtype != now.dtype:
                breaking.append(f"{name}: output {key} dtype {was.dtype} -> {now.dtype}")
            elif not _accepts_all_of(now.shape, was.shape):
                breaking.append(f"{name}: output {key} shape {_shape_text(was.shape)} -> {_shape_text(now.shape)}")
            elif now.shape != was.shape:  # declared less precisely; the values clients get are the same
                compatible.append(
                    f"{name}: output {key} shape relaxed {_shape_text(was.shape)} -> {_shape_text(now.shape)}"
                )
    return ContractDiff(old.version_dir, new.version_dir, tuple(breaking), tuple(compatible))
