"""Source formats: detect what a path is and load it into the common in-memory form.

One module per format; each returns a :class:`~packager.graph.frozen_model.LoadedSource`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packager.errors import SourceError, UsageError
from packager.graph.frozen_model import LoadedSource, SourceFormat
from packager.modes import BatchNormMode, EmaMode
from packager.progress import SILENT, Progress

if TYPE_CHECKING:
    from packager.graph.op_scan import ScanResult

GRAPH_SUFFIXES = frozenset({".pb", ".pbtxt", ".graphdef"})
KERAS_SUFFIXES = frozenset({".keras", ".h5", ".hdf5"})
TFLITE_SUFFIX = ".tflite"
ONNX_SUFFIX = ".onnx"

__all__ = ["SourceOptions", "detect_format", "load_source"]


@dataclass(frozen=True)
class SourceOptions:
    """How to load a source beyond its path.

    Attributes:
        checkpoint: variable values for a GraphDef that still has variables (freeze_graph's case).
        builder: ``MODULE:FUNC`` that builds the inference graph for a checkpoint without one.
        custom_objects: a module whose public classes/functions Keras may deserialize.
        unsafe: allow Keras Lambda layers (they run arbitrary Python from the file).
        ema: auto|on|off — restore checkpoint variables from their ExponentialMovingAverage shadows.
        batchnorm: auto|inference|batch — what a Keras file's BatchNormalization layers called
            with training=True become (graph sources are rewritten by graph.batchnorm instead).
        allowed_ops: op types the op scan lets through (``--allow-op``); a SavedModel or a
            checkpoint's restore path is scanned with them before any of it runs.
        channels_last: serve an ONNX model's inputs and outputs of rank 3 to 5 channels-last
            (NCHW → NHWC) instead of in its own layout.
    """

    checkpoint: Path | None = None
    builder: str | None = None
    custom_objects: str | None = None
    unsafe: bool = False
    ema: EmaMode = "auto"
    batchnorm: BatchNormMode = "auto"
    allowed_ops: frozenset[str] = frozenset()
    channels_last: bool = False


def detect_format(path: Path) -> SourceFormat:
    """Name the source format of ``path`` from what is on disk, or raise SourceError saying why not."""
    from packager.sources.checkpoint import looks_like_checkpoint

    if not path.exists():
        if looks_like_checkpoint(path):  # a prefix: model.ckpt-1000 beside model.ckpt-1000.index
            return "checkpoint"
        raise SourceError(f"{path} does not exist")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "saved_model"
        if looks_like_checkpoint(path):
            return "checkpoint"
        if not any(path.iterdir()):
            raise SourceError(f"{path} is an empty directory: give a model file or a SavedModel directory")
        from packager.layout import is_version_dir, numeric_versions

        versions = [v for v in numeric_versions(path) if is_version_dir(path / str(v))]
        if versions:
            raise SourceError(
                f"{path} is a model dir holding versions {', '.join(map(str, versions))}: give one "
                f"version dir, e.g. {path / str(versions[-1])}"
            )
        raise SourceError(
            f"{path} is a directory with neither saved_model.pb nor a checkpoint state file: give a "
            "SavedModel directory, a checkpoint, a frozen graph (.pb/.pbtxt) or a Keras file (.keras/.h5)"
        )
    if path.stat().st_size == 0:
        raise SourceError(f"{path} is an empty file")
    if path.name in {"saved_model.pb", "saved_model.pbtxt"}:
        return "saved_model"
    suffix = path.suffix.lower()
    if suffix == ".meta" or looks_like_checkpoint(path):
        return "checkpoint"
    if suffix in GRAPH_SUFFIXES:
        return "frozen_graph"
    if suffix in KERAS_SUFFIXES:
        return "keras"
    if suffix == TFLITE_SUFFIX:
        return "tflite"
    if suffix == ONNX_SUFFIX:
        return "onnx"
    if suffix == ".index" or ".data-" in path.name:
        raise SourceError(f"{path} is one file of a checkpoint: give its prefix ({path.name.split('.')[0]}...)")
    raise SourceError(
        f"{path}: unsupported source type {suffix or '(no suffix)'}: expected a SavedModel directory, "
        "a TF1 checkpoint, .pb/.pbtxt (GraphDef), .keras/.h5 (Keras), .onnx (ONNX) or .tflite (TFLite)"
    )


def scan_restore(path: Path, allowed_ops: frozenset[str] = frozenset()) -> ScanResult | None:
    """Scan what restoring the checkpoint at ``path`` through its .meta graph's saver would run.

    Returns None for a checkpoint without a .meta graph (nothing of the source runs).
    """
    from packager.graph.op_scan import scan_restore_path
    from packager.sources.checkpoint import read_meta_graph, resolve_checkpoint

    meta_graph_path = resolve_checkpoint(path).meta_graph
    if meta_graph_path is None:
        return None
    return scan_restore_path(read_meta_graph(meta_graph_path), str(path), allowed_ops)


def refuse_unscanned_restore(path: Path, allowed_ops: frozenset[str] = frozenset()) -> None:
    """Raise UsageError when restoring ``path`` would run a denied op (before it is imported)."""
    result = scan_restore(path, allowed_ops)
    if result is not None and result.blocking:
        raise UsageError(result.refusal())


def load_source(path: Path, options: SourceOptions = SourceOptions(), progress: Progress = SILENT) -> LoadedSource:
    """Load ``path`` in whatever supported format it is (``progress`` hears the long steps: an
    ONNX conversion and its converter's first-use install)."""
    source_format = detect_format(path)
    if options.checkpoint is not None and source_format != "frozen_graph":
        raise UsageError(f"--checkpoint goes with a GraphDef source (.pb/.pbtxt), not a {source_format}")
    if options.builder is not None and source_format != "checkpoint":
        raise UsageError(f"--builder goes with a checkpoint source, not a {source_format}")
    if (options.custom_objects is not None or options.unsafe) and source_format != "keras":
        flag = "--custom-objects" if options.custom_objects is not None else "--unsafe"
        raise UsageError(f"{flag} goes with a Keras source (.keras/.h5), not a {source_format}")
    if options.ema == "on" and source_format != "checkpoint":
        raise UsageError(f"--ema on needs a checkpoint with ExponentialMovingAverage shadows, not a {source_format}")
    if options.channels_last and source_format != "onnx":
        raise UsageError(f"--channels-last goes with an ONNX source (.onnx), not a {source_format}")
    if source_format == "onnx":
        from packager.sources.onnx_file import load_onnx_file

        return load_onnx_file(path, channels_last=options.channels_last, progress=progress)
    if source_format == "tflite":
        # Served as it is, never read into a GraphDef: packager.convert_tflite converts it.
        raise SourceError(f"{path} is a TFLite model, not a TensorFlow graph: 'tfpack convert' serves it as TFLite")
    if source_format == "saved_model":
        from packager.sources.saved_model import load_saved_model

        return load_saved_model(path if path.is_dir() else path.parent, options.allowed_ops)
    if source_format == "checkpoint":
        from packager.sources import checkpoint

        if options.builder is not None:
            return checkpoint.load_checkpoint_with_builder(path, options.builder, ema=options.ema)
        refuse_unscanned_restore(path, options.allowed_ops)
        return checkpoint.load_checkpoint_with_meta_graph(path, ema=options.ema)
    if source_format == "frozen_graph":
        if options.checkpoint is not None:
            from packager.sources.checkpoint import load_graph_with_checkpoint

            return load_graph_with_checkpoint(path, options.checkpoint)
        from packager.sources.graph_def import load_frozen_graph

        return load_frozen_graph(path)
    from packager.sources.keras_file import load_keras_file

    return load_keras_file(
        path, custom_objects=options.custom_objects, unsafe=options.unsafe, batchnorm=options.batchnorm
    )
