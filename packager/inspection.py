"""``tfpack inspect``: what a source is, the signature convert would write, and every readiness
verdict — without writing anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.convert import ProofOptions, check_batch_independence_of, check_tflite_flags, graph_runner, prepare
from packager.convert_tflite import SOURCE_FORMAT as TFLITE_FORMAT
from packager.convert_tflite import check_tflite_batch_independence, is_tflite_source, prepare_tflite
from packager.graph.constants import ControlPlaceholder
from packager.graph.frozen_model import TensorRef
from packager.graph.io_discovery import OutputCandidate
from packager.graph.towers import TowerFamily
from packager.progress import SILENT, Progress
from packager.readiness import Verdict


@dataclass(frozen=True)
class InspectReport:
    """A source's format, serving inputs/outputs, size and serving readiness."""

    path: Path
    source_format: str
    inputs: list[TensorRef]
    outputs: list[TensorRef]
    op_count: int
    serving_op_count: int
    variable_count: int
    constant_count: int
    training_ops: int
    devices: list[str]
    controls: list[ControlPlaceholder] = field(default_factory=list)
    set_aside: list[OutputCandidate] = field(default_factory=list)
    towers: TowerFamily | None = None
    candidates: list[OutputCandidate] = field(default_factory=list)
    training_subgraphs: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # a JSON object: values of several types
    signatures: list[str] = field(default_factory=lambda: ["serving_default"])
    readiness: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:  # a JSON object: values of several types
        return {
            "path": str(self.path),
            "format": self.source_format,
            "inputs": [r.to_json() for r in self.inputs],
            "outputs": [r.to_json() for r in self.outputs],
            "signatures": self.signatures,
            "ops": {
                "total": self.op_count,
                "serving": self.serving_op_count,
                "variables": self.variable_count,
                "constants": self.constant_count,
                "training_machinery": self.training_ops,
            },
            "devices": self.devices,
            "control_placeholders": [c.to_json() for c in self.controls],
            "set_aside_outputs": [c.to_json() for c in self.set_aside],
            "towers": self.towers.to_json() if self.towers else None,
            "output_candidates": [c.to_json() for c in self.candidates],
            "training_subgraphs": self.training_subgraphs,
            "details": self.details,
            "readiness": self.readiness,
        }


def inspect_source(path: Path, options: ProofOptions = ProofOptions(), progress: Progress = SILENT) -> InspectReport:
    """Describe ``path`` and run every readiness check on what convert would serve.

    Batch independence runs on the serving graph itself (convert runs it on the written model,
    which the equivalence proof shows computes the same); for a .tflite source, on the LiteRT
    interpreter of the source.
    """
    if is_tflite_source(path):
        return _inspect_tflite(path, options, progress)
    prepared = prepare(path, options, progress, strict=False)
    report = prepared.readiness
    if prepared.goldens:
        progress.step("one sample alone vs inside a batch: batch independent?")
        run = graph_runner(prepared.graph_def, prepared.signatures)
        report.add(check_batch_independence_of(run, prepared, options, prepared.graph_def))
    else:
        report.add(Verdict("batch_independence", "skipped", "no golden inputs to run the model on"))
    facts = prepared.facts
    details = prepared.source_record["details"]
    return InspectReport(
        path=path,
        source_format=prepared.source_record["format"],
        inputs=prepared.inputs,
        outputs=prepared.outputs,
        op_count=facts.op_count,
        serving_op_count=len(prepared.graph_def.node),
        variable_count=facts.variable_count,
        constant_count=facts.constant_count,
        training_ops=sum(facts.training_subgraphs.values()),
        devices=facts.devices,
        controls=prepared.controls,
        set_aside=facts.set_aside,
        towers=facts.towers,
        candidates=facts.candidates,
        training_subgraphs=facts.training_subgraphs,
        details={k: v for k, v in details.items() if k not in ("training_subgraphs", "variables")},
        signatures=sorted(prepared.signatures),
        readiness=report.to_json(),
    )


def _inspect_tflite(path: Path, options: ProofOptions, progress: Progress) -> InspectReport:
    """A .tflite source: the signatures TF Serving serves it with, and the verdicts that apply."""
    check_tflite_flags(options)
    prepared = prepare_tflite(
        path, tolerance=options.tolerance, sample_inputs=options.sample_inputs, progress=progress, strict=False
    )
    report = prepared.readiness
    if prepared.goldens:
        progress.step("one sample alone vs inside a batch: batch independent?")
    report.add(
        check_tflite_batch_independence(prepared.reference, prepared, options.tolerance, options.batch_dependent)
    )
    return InspectReport(
        path=path,
        source_format=TFLITE_FORMAT,
        inputs=prepared.inputs,
        outputs=prepared.outputs,
        op_count=prepared.operator_count,
        serving_op_count=prepared.operator_count,
        variable_count=0,
        constant_count=prepared.constant_count,
        training_ops=0,
        devices=[],
        details=prepared.details,
        signatures=sorted(prepared.signatures),
        readiness=report.to_json(),
    )
