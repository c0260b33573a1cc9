"""``tfpack scan``: the op scan of convert, for a source or an existing version dir."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from packager.errors import VerificationError
from packager.graph.op_scan import ScanResult, scan_graph_def, scan_saved_model
from packager.graph.signature import plan_signature
from packager.graph.surgery import prune_for_serving
from packager.layout import is_version_dir
from packager.progress import SILENT, Progress
from packager.sources import SourceOptions, detect_format, load_source, scan_restore
from packager.sources.graph_def import read_graph_def
from packager.version_scan import scan_tflite_model, scan_version_dir


def scan_target(
    target: Path,
    options: SourceOptions = SourceOptions(),
    allowed: frozenset[str] = frozenset(),
    progress: Progress = SILENT,
) -> ScanResult:
    """Scan ``target``'s serving paths; a SavedModel version dir is scanned as written.

    Raises:
        VerificationError: denied or unknown ops that are not allowed (exit 3); the result is
            attached for --json.
        UsageError / SourceError: the target cannot be read.
    """
    progress.step(f"scanning {target}")
    source_format = "saved_model" if target.is_dir() and is_version_dir(target) else detect_format(target)
    if source_format == "saved_model" and target.is_dir():
        # Read, never loaded: loading a SavedModel runs its init ops, which are what is scanned.
        # A version dir may hold a model.tflite too (or only one): what it serves is scanned.
        result = scan_version_dir(target, allowed)
    elif source_format == "saved_model":
        result = scan_saved_model(target.parent, allowed)
    elif source_format == "tflite":
        result = scan_tflite_model(target, allowed)
    elif (
        source_format == "checkpoint"
        and options.builder is None
        and ((restore := scan_restore(target, allowed)) is not None and restore.blocking)
    ):
        # Restoring runs the meta graph's restore op: what it depends on is refused before it runs.
        result = restore
    elif source_format == "frozen_graph" and options.checkpoint is None:
        # Scanned as read, without importing it: a graph with custom ops cannot be imported,
        # and those ops are what the scan must report.
        result = scan_graph_def(read_graph_def(target), str(target), allowed)
    else:
        source = load_source(target, replace(options, allowed_ops=allowed))
        plan = plan_signature(source, strict=False)
        result = scan_graph_def(prune_for_serving(plan.graph_def, plan.output_tensor_names()), str(target), allowed)
    if result.blocking:
        raise VerificationError(result.summary(), result=result.to_json())
    return result
