"""TFLite: serving_default converted by TFLiteConverter and run by the LiteRT interpreter.

The proof uses ai-edge-litert's interpreter (``tf.lite.Interpreter`` is deprecated), installed
with the ``tflite`` extra. Its wheel has no Flex delegate, so a model that needs Select TF ops
converts with ``--select-tf-ops`` but cannot be proved here; that is an exit 2 saying so, never
an unproved artefact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from packager.errors import ToolError, UsageError, first_line
from packager.formats.tflite_signatures import signature_defs_from_native, with_signature_defs
from packager.layout import DEFAULT_SIGNATURE
from packager.tf_runtime import stderr_silenced, tensorflow

QUANTIZE_NONE = "none"
QUANTIZE_DYNAMIC = "dynamic"
QUANTIZE_FLOAT16 = "float16"
QUANTIZE_MODES = (QUANTIZE_NONE, QUANTIZE_DYNAMIC, QUANTIZE_FLOAT16)
RUNTIME = "ai-edge-litert Interpreter"
MISSING_EXTRA = "tfpack export --format tflite needs the tflite extra: pip install 'tfpack[tflite]'"

# The converter's summary lines: ops a Flex (Select TF ops) kernel exists for, and ops with none.
_SELECT_OPS = re.compile(r"^TF Select ops: (.+)$", re.MULTILINE)
_CUSTOM_OPS = re.compile(r"^Custom ops: (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class TfliteModel:
    """A converted flatbuffer and the Select TF ops it contains (empty for builtins only)."""

    content: bytes
    select_tf_ops: list[str]


@dataclass(frozen=True)
class TfliteRun:
    """What the interpreter computed, and the tensor names of the signature inside the model."""

    outputs: dict[str, np.ndarray]
    input_names: dict[str, str]
    output_names: dict[str, str]


def require_litert() -> ModuleType:
    """Return ``ai_edge_litert.interpreter``.

    Raises:
        UsageError: ai-edge-litert is not installed (the message names the extra).
    """
    try:
        # ai-edge-litert ships no type information (no py.typed); its API is used through Any.
        from ai_edge_litert import interpreter
    except ImportError:
        raise UsageError(MISSING_EXTRA) from None
    return interpreter


def convert_to_tflite(version_dir: Path, quantize: str, select_tf_ops: bool) -> TfliteModel:
    """Convert serving_default of the SavedModel in ``version_dir`` to a TFLite flatbuffer.

    Builtin ops only first; with ``select_tf_ops`` a model that needs TensorFlow kernels is then
    converted again with them, and the ops are recorded.

    Raises:
        UsageError: the model needs Select TF ops and ``select_tf_ops`` is off (the message names
            them and the flag), it needs ops TFLite has no kernel for at all, or it fails to convert.
    """
    tensorflow()  # imported quietly first
    # The converter's own error type; TensorFlow exports it under no public name.
    from tensorflow.lite.python.convert_phase import ConverterError

    try:
        return TfliteModel(_servable(_convert(version_dir, quantize, with_select_tf_ops=False)), [])
    except ConverterError as exc:
        message, failure = str(exc), first_line(exc)
        select_ops = _op_list(_SELECT_OPS, message)
        custom_ops = _op_list(_CUSTOM_OPS, message)
    if custom_ops:
        raise UsageError(
            f"TFLite has no kernel for {', '.join(custom_ops)}, not even with --select-tf-ops: "
            "this model cannot be exported to TFLite"
        )
    if not select_ops:
        raise UsageError(f"TFLite conversion failed: {failure}")
    if not select_tf_ops:
        raise UsageError(
            f"TFLite builtins lack {', '.join(select_ops)}: rerun with --select-tf-ops to use TensorFlow "
            "kernels for them (the app then needs the Select TF ops runtime)"
        )
    return TfliteModel(_servable(_convert(version_dir, quantize, with_select_tf_ops=True)), select_ops)


def _servable(content: bytes) -> bytes:
    """``content`` with its serving_default also stored as signature_defs_metadata.

    TF Serving serves a model.tflite's metadata SignatureDefs and never the converter's own
    signatures: without this copy it would key the model by tensor names
    ("serving_default_x", "StatefulPartitionedCall") instead of the version's input and output
    keys. Interpreters ignore the metadata, so the artefact runs the same everywhere else.
    """
    return with_signature_defs(content, signature_defs_from_native(content, {DEFAULT_SIGNATURE: DEFAULT_SIGNATURE}))


def _convert(version_dir: Path, quantize: str, *, with_select_tf_ops: bool) -> bytes:
    tf = tensorflow()
    # From the loaded signature function rather than from_saved_model: TF2's loader places ops
    # softly, while from_saved_model's TF1 loader honours a tower graph's /gpu:N pins and fails on
    # a CPU-only host. The converter names the single function's signature serving_default.
    try:
        loaded = tf.saved_model.load(str(version_dir))
    except (OSError, ValueError, tf.errors.OpError) as exc:
        raise UsageError(f"cannot load the SavedModel in {version_dir}: {first_line(exc)}") from None
    if DEFAULT_SIGNATURE not in loaded.signatures:
        raise UsageError(f"{version_dir} has no {DEFAULT_SIGNATURE} signature: re-create it with 'tfpack convert'")
    converter = tf.lite.TFLiteConverter.from_concrete_functions([loaded.signatures[DEFAULT_SIGNATURE]], loaded)
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if with_select_tf_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    if quantize in (QUANTIZE_DYNAMIC, QUANTIZE_FLOAT16):
        # Without a representative dataset Optimize.DEFAULT quantizes weights only (dynamic range).
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == QUANTIZE_FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    with stderr_silenced():
        content: bytes = converter.convert()
    return content


def _op_list(pattern: re.Pattern[str], message: str) -> list[str]:
    found = pattern.search(message)
    return [] if found is None else [op.strip() for op in found.group(1).split(",") if op.strip()]


def run_tflite(model: TfliteModel, feeds: dict[str, np.ndarray]) -> TfliteRun:
    """Run serving_default of ``model`` in the LiteRT interpreter on ``feeds`` (keyed by signature key).

    Raises:
        UsageError: ai-edge-litert is missing.
        ToolError: the interpreter cannot run the model (Select TF ops need a Flex delegate its
            wheel lacks).
    """
    interpreter_module = require_litert()
    try:
        interpreter = interpreter_module.Interpreter(model_content=model.content)
        runner = interpreter.get_signature_runner(DEFAULT_SIGNATURE)
        input_names = {key: str(detail["name"]) for key, detail in runner.get_input_details().items()}
        output_names = {key: str(detail["name"]) for key, detail in runner.get_output_details().items()}
        outputs = runner(**feeds)
    except (RuntimeError, ValueError) as exc:
        if model.select_tf_ops:
            raise ToolError(
                f"the LiteRT interpreter has no Flex delegate, so the Select TF ops ({', '.join(model.select_tf_ops)}) "
                "cannot be proved here; nothing was written"
            ) from None
        raise ToolError(f"the LiteRT interpreter cannot run the converted model: {first_line(exc)}") from None
    return TfliteRun(
        outputs={key: np.asarray(value) for key, value in outputs.items()},
        input_names=input_names,
        output_names=output_names,
    )
