"""``tfpack export``: one version dir to one other format, proved against its goldens, then written.

The artefact is built in memory, run in its format's own runtime on the version dir's golden
inputs, compared with the golden outputs, and only then written (temp file + rename): a failed
proof leaves nothing in the output dir, and a reader never sees half a file. With
``into_version`` a TFLite model is written into the version dir itself, as model.tflite, and
proved again as the model server serves it (:mod:`.into_version`).
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from packager.equivalence import compare_outputs
from packager.errors import UsageError, VerificationError
from packager.formats.frozen_pb import freeze_serving_default, run_frozen_graph
from packager.formats.into_version import SERVED_RUNTIME, check_into_version, place_tflite
from packager.formats.report import ExportReport
from packager.formats.tfjs import RUNTIME as TFJS_RUNTIME
from packager.formats.tfjs import convert_to_tfjs, files_digest, require_tfjs_runtime, run_tfjs, write_model_dir
from packager.formats.tflite import (
    QUANTIZE_DYNAMIC,
    QUANTIZE_FLOAT16,
    QUANTIZE_MODES,
    QUANTIZE_NONE,
    convert_to_tflite,
    require_litert,
    run_tflite,
)
from packager.formats.tflite import RUNTIME as TFLITE_RUNTIME
from packager.layout import GOLDENS_FILE, PROVENANCE_FILE, SAVED_MODEL_FILE, TFLITE_MODEL_FILE, Goldens, Provenance
from packager.progress import SILENT, Progress

FORMAT_TFLITE = "tflite"
FORMAT_TFJS = "tfjs"
FORMAT_FROZEN_PB = "frozen-pb"
EXPORT_FORMATS = (FORMAT_TFLITE, FORMAT_TFJS, FORMAT_FROZEN_PB)

# Quantized weights change the numbers by design; these bound the change, per element, relative
# to each golden output's range: |exported - golden| <= tolerance * (max - min of that output).
# Not convert's tolerance * (1 + |golden|): near zero that is an absolute 0.05, which accepts small
# outputs zeroed or a softmax's top two classes swapped. Dynamic-range quantization stores weights
# in 8 bits (steps of 1/127 of a tensor's range, errors that add up over a layer); float16 keeps 11
# significant bits (relative steps of about 1e-3).
QUANTIZED_TOLERANCE = {QUANTIZE_DYNAMIC: 0.05, QUANTIZE_FLOAT16: 1e-2}
# An output whose goldens are all one value has no range: bound it as one of this range.
_MIN_RANGE = 1e-6
FROZEN_PB_RUNTIME = "tf.compat.v1.Session"


def export_version(
    version_dir: Path,
    fmt: str,
    output_dir: Path | None,
    *,
    quantize: str = QUANTIZE_NONE,
    select_tf_ops: bool = False,
    tolerance: float | None = None,
    into_version: bool = False,
    progress: Progress = SILENT,
) -> ExportReport:
    """Export the serving_default signature of ``version_dir`` to ``fmt`` and prove it.

    Writes ``output_dir/NAME.pb`` (frozen-pb), ``output_dir/NAME.tflite`` (tflite) or the graph
    model dir ``output_dir/NAME_tfjs/`` (tfjs: model.json and its weight shards), NAME being the
    model name the version dir was converted under, replacing a file or model of that name; or,
    with ``into_version``, ``version_dir/model.tflite`` (see :mod:`.into_version`).

    Args:
        version_dir: a version dir written by ``tfpack convert`` (it holds the goldens).
        fmt: one of :data:`EXPORT_FORMATS`.
        output_dir: where the artefact is written; created if absent. None with ``into_version``.
        quantize: TFLite weight quantization, one of :data:`QUANTIZE_MODES`.
        select_tf_ops: allow TensorFlow kernels for ops TFLite's builtins lack.
        tolerance: the bound of the proof; by default the tolerance the conversion met, or for
            a quantized export the mode's :data:`QUANTIZED_TOLERANCE`.
        into_version: write the TFLite model into the (unsigned) version dir as model.tflite,
            which TF Serving then serves with --prefer_tflite_model; ``fmt`` must be tflite,
            unquantized, and ``output_dir`` None.
        progress: receives a line per step.

    Returns:
        The artefact's path, size and digest, its tensor names and the error the proof measured.

    Raises:
        UsageError: bad flags, a version dir without goldens, a model the format cannot hold
            (TFLite ops that need --select-tf-ops), or a missing optional dependency; with
            ``into_version`` a signed version dir or a SavedModel with signatures besides
            serving_default.
        ToolError: the format's runtime cannot run the artefact.
        VerificationError: the artefact's outputs differ from the goldens beyond the tolerance
            (or, with ``into_version``, the served model's outputs or contract differ).
    """
    _check_flags(fmt, quantize, select_tf_ops, tolerance)
    _check_destination(output_dir, into_version, fmt)
    goldens, provenance = _read_version_dir(version_dir)
    if output_dir is not None:
        _check_output_dir(output_dir, version_dir)
    else:
        check_into_version(version_dir, quantize, tolerance, provenance)
    destination = version_dir if output_dir is None else output_dir
    bound = tolerance if tolerance is not None else QUANTIZED_TOLERANCE.get(quantize, provenance.tolerance)
    what = f"the {fmt} export of {version_dir}"
    select_tf_ops_needed: list[str] = []
    tfjs_files: dict[str, bytes] = {}
    if fmt == FORMAT_FROZEN_PB:
        progress.step(f"freezing serving_default of {version_dir}")
        frozen = freeze_serving_default(version_dir)
        _check_inputs(goldens, frozen.inputs, what)
        progress.step("running the frozen graph in a TF1 session on the goldens")
        actual = run_frozen_graph(frozen, goldens.inputs)
        content, inputs, outputs, runtime = frozen.content, frozen.inputs, frozen.outputs, FROZEN_PB_RUNTIME
        filename = f"{provenance.model_name}.pb"
    elif fmt == FORMAT_TFJS:
        require_tfjs_runtime()  # before a conversion that would be wasted
        progress.step(f"converting {version_dir} to a TensorFlow.js graph model")
        graph_model = convert_to_tfjs(version_dir, progress)
        _check_inputs(goldens, graph_model.inputs, what)
        progress.step("running the graph model in Node.js with @tensorflow/tfjs on the goldens")
        actual = run_tfjs(graph_model, goldens.inputs, progress)
        content, inputs, outputs, runtime = b"", graph_model.inputs, graph_model.outputs, TFJS_RUNTIME
        tfjs_files, filename = graph_model.files, f"{provenance.model_name}_tfjs"
    else:
        require_litert()  # before a conversion that would be wasted
        progress.step(f"converting {version_dir} to TFLite (quantize {quantize})")
        model = convert_to_tflite(version_dir, quantize, select_tf_ops)
        progress.step("running the TFLite model in the LiteRT interpreter on the goldens")
        run = run_tflite(model, goldens.inputs)
        _check_inputs(goldens, run.input_names, what)
        content, inputs, outputs, runtime = model.content, run.input_names, run.output_names, TFLITE_RUNTIME
        actual, select_tf_ops_needed = run.outputs, model.select_tf_ops
        filename = f"{provenance.model_name}.tflite"
    try:
        if set(actual) != set(goldens.outputs):
            raise VerificationError(
                f"{what} in {runtime} gives outputs {sorted(actual)}, the goldens hold {sorted(goldens.outputs)}"
            )
        if quantize == QUANTIZE_NONE:
            per_output = compare_outputs(goldens.outputs, actual, bound, f"{what} in {runtime}").per_output
        else:
            per_output = _compare_to_range(goldens, actual, bound, f"{what} in {runtime}")
    except VerificationError as exc:
        raise VerificationError(f"{exc}; nothing was written to {destination}") from None
    served_error: dict[str, float] | None = None
    if output_dir is None:
        progress.step(f"writing {version_dir / TFLITE_MODEL_FILE} and proving it in {SERVED_RUNTIME}")
        placed = place_tflite(version_dir, content, goldens, provenance, bound, _write_atomically)
        path, served_error = placed.path, placed.max_abs_error
        size, digest = len(content), hashlib.sha256(content).hexdigest()
    elif fmt == FORMAT_TFJS:
        progress.step(f"writing {output_dir / filename}")
        path = write_model_dir(output_dir / filename, tfjs_files)
        size, digest = sum(len(data) for data in tfjs_files.values()), files_digest(tfjs_files)
    else:
        progress.step(f"writing {output_dir / filename}")
        path = _write_atomically(output_dir / filename, content)
        size, digest = len(content), hashlib.sha256(content).hexdigest()
    return ExportReport(
        format=fmt,
        path=path,
        bytes=size,
        sha256=digest,
        version_dir=version_dir,
        runtime=runtime,
        inputs=inputs,
        outputs=outputs,
        max_abs_error=per_output,
        tolerance=bound,
        quantize=quantize,
        select_tf_ops_needed=select_tf_ops_needed,
        into_version=into_version,
        served_max_abs_error=served_error,
    )


def _check_destination(output_dir: Path | None, into_version: bool, fmt: str) -> None:
    """Exactly one of --output-dir and --into-version; the latter for TFLite only."""
    if into_version and output_dir is not None:
        raise UsageError(
            "give --output-dir DIR or --into-version, not both: --into-version writes model.tflite into the "
            "version dir itself"
        )
    if not into_version and output_dir is None:
        raise UsageError("give --output-dir DIR (or, for --format tflite, --into-version)")
    if into_version and fmt != FORMAT_TFLITE:
        raise UsageError(f"--into-version goes with --format tflite only (TF Serving serves model.tflite), not {fmt}")


def _check_flags(fmt: str, quantize: str, select_tf_ops: bool, tolerance: float | None) -> None:
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    if quantize not in QUANTIZE_MODES:
        raise UsageError(f"--quantize {quantize!r} is not one of {', '.join(QUANTIZE_MODES)}")
    if fmt != FORMAT_TFLITE and (quantize != QUANTIZE_NONE or select_tf_ops):
        raise UsageError("--quantize and --select-tf-ops apply to --format tflite only")
    if tolerance is not None and not (tolerance > 0 and math.isfinite(tolerance)):
        raise UsageError(f"--tolerance must be a positive finite number, not {tolerance}")


def _compare_to_range(goldens: Goldens, actual: dict[str, np.ndarray], tolerance: float, what: str) -> dict[str, float]:
    """Max |error| per output, each bound by ``tolerance`` times its golden range (quantized exports).

    Raises:
        VerificationError: a shape change, or an element beyond the bound (named with the error).
    """
    per_output: dict[str, float] = {}
    for key, want in goldens.outputs.items():
        got, want = np.asarray(actual[key], dtype=np.float64), np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            raise VerificationError(f"{what}: output {key!r} has shape {got.shape}, expected {want.shape}")
        error = float(np.max(np.abs(got - want))) if want.size else 0.0
        span = float(np.ptp(want)) if want.size else 0.0
        limit = tolerance * max(span, _MIN_RANGE)
        if not math.isfinite(error) or error > limit:
            raise VerificationError(
                f"{what}: output {key!r} differs by up to {error:.3g}, more than {tolerance:g} of its range "
                f"{span:.3g} (--tolerance)"
            )
        per_output[key] = error
    return per_output


def _check_output_dir(output_dir: Path, version_dir: Path) -> None:
    """UsageError, before any conversion, for an output dir that cannot or must not take the artefact."""
    resolved, source = output_dir.resolve(), version_dir.resolve()
    if resolved == source or source in resolved.parents:
        raise UsageError(
            f"--output-dir {output_dir} is inside the version dir {version_dir}: a file added there breaks its "
            "signature; give a directory outside it"
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output-dir {output_dir} is a file: give a directory")
    existing = next((p for p in [output_dir, *output_dir.parents] if p.exists()), None)
    if existing is not None and (not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK)):
        raise UsageError(f"--output-dir {output_dir} cannot be written ({existing} is not a writable directory)")


def _read_version_dir(version_dir: Path) -> tuple[Goldens, Provenance]:
    if not (version_dir / SAVED_MODEL_FILE).is_file():
        tflite_only = (version_dir / TFLITE_MODEL_FILE).is_file()
        raise UsageError(
            f"{version_dir} holds no {SAVED_MODEL_FILE}: "
            + (
                f"a TFLite version dir is exported already (its {TFLITE_MODEL_FILE})"
                if tflite_only
                else "export a version dir 'tfpack convert' wrote"
            )
        )
    if not (version_dir / GOLDENS_FILE).is_file() or not (version_dir / PROVENANCE_FILE).is_file():
        raise UsageError(
            f"{version_dir} has no goldens to prove an export against: convert the model with 'tfpack convert' "
            "first and export the version dir it writes"
        )
    return Goldens.load(version_dir / GOLDENS_FILE), Provenance.load(version_dir / PROVENANCE_FILE)


def _check_inputs(goldens: Goldens, artefact_inputs: dict[str, str], what: str) -> None:
    if set(goldens.inputs) != set(artefact_inputs):
        raise VerificationError(
            f"{what} takes inputs {sorted(artefact_inputs)}, the goldens feed {sorted(goldens.inputs)}"
        )


def _write_atomically(path: Path, content: bytes) -> Path:
    """Write ``content`` to ``path`` through a temp file in the same dir and a rename.

    Raises:
        UsageError: the dir cannot be created or written, or ``path`` is a directory.
    """
    if path.is_dir():
        raise UsageError(f"cannot write {path}: a directory is there; remove it or give another --output-dir")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(descriptor, 0o644)  # mkstemp's 0600 would hide the artefact from other users
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as exc:
        Path(partial).unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return path
