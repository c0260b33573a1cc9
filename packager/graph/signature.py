"""Decide a source's serving signatures: which tensors go in and out, and what gets fixed.

The user's ``--inputs``/``--outputs`` win; otherwise a format that declares them (Keras, a
SavedModel signature) is believed; otherwise the graph is analysed. Control placeholders are
folded first (defaults, ``--constant``), so they never become inputs. A multi-GPU tower family
is served merged (one batch across every tower), split (a signature per tower) or single.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from packager.errors import SourceError, UsageError
from packager.graph.batchnorm import BatchNormSite, apply_batchnorm_mode
from packager.graph.constants import ControlPlaceholder, find_control_placeholders, fold_control_placeholders
from packager.graph.frozen_model import LoadedSource, TensorRef, import_graph
from packager.graph.io_discovery import (
    GraphIndex,
    OutputCandidate,
    batched_ops,
    choose_outputs,
    discover_inputs,
    has_batch_dimension,
    input_op_name,
    non_inference_reason,
    output_candidates,
    placeholder_sets,
    resolve_names,
    signature_keys,
    tensor_refs,
)
from packager.graph.towers import TowerFamily, check_mode, detect_towers, merge_towers
from packager.layout import DEFAULT_SIGNATURE
from packager.modes import BatchNormMode, ServedTowerMode, TowerMode
from packager.tf_runtime import shape_tuple

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef

Reference = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
# The TensorRefs of tensor names: (names, the refs a format declared, keys to give them).
RefsOf = Callable[[list[str], "list[TensorRef] | None", "list[str] | None"], list[TensorRef]]


@dataclass
class SignatureSpec:
    """One signature: its tensors, and how the *source* computes its outputs (the reference)."""

    inputs: list[TensorRef]
    outputs: list[TensorRef]
    reference: Reference


@dataclass
class SignaturePlan:
    """What the serving signatures will be, and the graph they are cut from.

    Attributes:
        graph_def: the serving graph (control placeholders folded; towers merged when asked).
        signatures: by name; serving_default is always present.
        keep_devices: the graph's device strings are deliberate (merged towers) and must stay.
        controls: the control placeholders found on the serving path (before folding).
        set_aside: output candidates discovery judged to be training sinks.
        towers: the tower family found, and the mode it is served in.
    """

    graph_def: GraphDef
    signatures: dict[str, SignatureSpec]
    keep_devices: bool = False
    controls: list[ControlPlaceholder] = field(default_factory=list)
    set_aside: list[OutputCandidate] = field(default_factory=list)
    candidates: list[OutputCandidate] = field(default_factory=list)
    towers: TowerFamily | None = None
    tower_mode: ServedTowerMode = "off"
    # Outputs that are not inference outputs (a loss, training machinery, no batch dimension),
    # by output key with the reason; only possible when named with --outputs or declared.
    output_findings: dict[str, str] = field(default_factory=dict)
    outputs_named: bool = False
    # Batch norms found running on batch statistics, and how --batchnorm inference rewrote them
    # (the graph then deliberately differs from the source).
    batchnorm_sites: list[BatchNormSite] = field(default_factory=list)
    batchnorm_rewrites: list[str] = field(default_factory=list)

    @property
    def default(self) -> SignatureSpec:
        return self.signatures[DEFAULT_SIGNATURE]

    def output_tensor_names(self) -> list[str]:
        return sorted({r.tensor_name for spec in self.signatures.values() for r in spec.outputs})


def plan_signature(
    source: LoadedSource,
    requested_inputs: list[str] | None = None,
    requested_outputs: list[str] | None = None,
    constants: dict[str, str] | None = None,
    *,
    towers: TowerMode = "auto",
    batchnorm: BatchNormMode = "auto",
    strict: bool = True,
) -> SignaturePlan:
    """Choose the signatures for ``source`` and fold its control placeholders.

    Args:
        towers: auto|merge|split|single|off — how to serve a tower family (auto: merge).
        batchnorm: auto|inference|batch — batch norm on batch statistics is refused, rewritten
            to the moving statistics, or served as it is (graph.batchnorm).
        strict: False (inspect) leaves a scalar control placeholder without a value as an input
            instead of refusing, and reports batch norm on batch statistics instead of refusing
            it; both are listed in the plan either way.

    Raises:
        UsageError: unknown names, --constant on a source without a graph of its own, a scalar
            control placeholder (keep_prob) left without --constant, a tower mode without towers.
        SourceError: no outputs, ambiguous outputs, or no input feeding them.
    """
    constants = constants or {}
    declared = source.inputs is not None
    if constants and declared:
        raise UsageError(f"--constant applies to graph sources (GraphDef, checkpoint), not to a {source.format}")

    original_index = GraphIndex.build(source.graph_def)
    original_graph = source.graph or import_graph(source.graph_def, source.path)
    requested_input_names = (
        resolve_names(requested_inputs, original_index, original_graph, "--inputs", source.inputs)
        if requested_inputs
        else []
    )
    fixed: dict[str, np.ndarray] = {}
    if declared:
        graph_def, graph, index = source.graph_def, original_graph, original_index
    else:
        graph_def, fixed = fold_control_placeholders(
            source.graph_def, constants, keep=frozenset(input_op_name(n) for n in requested_input_names)
        )
        if graph_def is source.graph_def:  # nothing folded: no second import of a large graph
            graph, index = original_graph, original_index
        else:
            graph, index = import_graph(graph_def, source.path), GraphIndex.build(graph_def)

    def reference_for(inputs: list[TensorRef], outputs: list[TensorRef]) -> Reference:
        return lambda feeds: source.run_reference(feeds, inputs, outputs, fixed)

    def refs(
        names: list[str], declared_refs: list[TensorRef] | None = None, keys: list[str] | None = None
    ) -> list[TensorRef]:
        by_name = {r.tensor_name: r for r in declared_refs or []}
        keys = keys or [by_name[n].key if n in by_name else k for n, k in zip(names, signature_keys(names))]
        return tensor_refs(graph, names, keys)

    def norms(
        graph_def: GraphDef, output_names: list[str], input_names: list[str]
    ) -> tuple[GraphDef, list[BatchNormSite], list[str]]:
        """The graph with --batchnorm applied on the serving path: (GraphDef, sites, rewrites)."""
        # inspect reports batch statistics, never refuses them
        mode: BatchNormMode = "batch" if batchnorm == "auto" and not strict else batchnorm
        return apply_batchnorm_mode(
            graph_def,
            mode,
            within=index.ancestors(input_op_name(n) for n in output_names),
            keep={input_op_name(n) for n in output_names + input_names},
            source=str(source.path),
        )

    family = None
    set_aside: list[OutputCandidate] = []
    candidates: list[OutputCandidate] = []
    findings: dict[str, str] = {}
    if requested_outputs:
        output_names = resolve_names(requested_outputs, index, graph, "--outputs", source.outputs)
    elif declared:
        output_names = [r.tensor_name for r in source.outputs or []]
    else:
        candidates = output_candidates(index, graph, training_fed=source.training_fed)
        refused = {
            c.op_name: reason
            for c in candidates
            if (reason := non_inference_reason(c.tensor_names, c.placeholders, index, graph, source.losses))
        }
        if len(refused) == len(candidates):
            refused.update(
                {loss: "a loss: gradients differentiate it" for loss in sorted(source.losses) if loss not in refused}
            )
            listing = "; ".join(f"{name} ({reason})" for name, reason in list(refused.items())[:6])
            left = batched_ops(index, graph, source.losses)
            raise SourceError(
                f"{source.path}: every sink is training machinery"
                + (f" — {listing}" if listing else "")
                + (f"; candidates left, deepest first: {', '.join(left)}" if left else "")
                + ": name the outputs with --outputs NAME[,NAME]"
            )
        set_aside = [c for c in candidates if c.op_name in refused]
        candidates = [c for c in candidates if c.op_name not in refused]
        family = detect_towers(index, candidates) if towers != "off" else None
        mode = check_mode(towers, family)
        if family is not None and mode != "off":
            controls = find_control_placeholders(
                source.graph_def,
                within=original_index.ancestors(input_op_name(t) for tower in family.towers for t in tower.outputs),
            )
            tower_outputs = [t for tower in family.towers for t in tower.outputs]
            tower_inputs = [t for tower in family.towers for t in tower.inputs]
            graph_def, sites, rewrites = norms(graph_def, tower_outputs, tower_inputs)
            plan = _tower_plan(graph_def, family, mode, refs, reference_for, controls)
            plan.candidates, plan.batchnorm_sites, plan.batchnorm_rewrites = candidates, sites, rewrites
            return plan
        choice = choose_outputs(candidates, str(source.path))
        output_names = [name for candidate in choice.chosen for name in candidate.tensor_names]
        set_aside = choice.set_aside + set_aside
    if towers in ("merge", "split", "single") and family is None:
        check_mode(towers, None)  # raises: towers were asked for, but names were given or declared

    needed = original_index.ancestors(input_op_name(n) for n in output_names)
    controls = [] if declared else find_control_placeholders(source.graph_def, within=needed)
    if requested_input_names:
        input_names = requested_input_names
    elif declared:
        # Every declared input stays, even one the outputs do not need (a label_ids a serving
        # signature declares): clients send it, and the server must accept it.
        input_names = [r.tensor_name for r in source.inputs or []]
    else:
        input_names = discover_inputs(index, output_names)
        unfixed = [c.name for c in controls if not c.has_default and f"{c.name}:0" in input_names]
        if unfixed and strict:
            raise UsageError(
                f"{source.path}: scalar placeholder(s) {', '.join(unfixed)} steer the graph (like keep_prob) "
                f"and have no default: fix each with --constant {unfixed[0]}=VALUE, or list it in --inputs"
            )
    if not input_names:
        raise SourceError(
            f"{source.path}: no placeholder feeds the outputs {', '.join(output_names)}: "
            "name the input tensors with --inputs"
        )
    if requested_outputs or declared:
        needs = placeholder_sets(index)
        model_batched = any(has_batch_dimension(shape_tuple(graph.get_tensor_by_name(n).shape)) for n in input_names)
        for tensor_name in output_names:
            placeholders = needs.get(input_op_name(tensor_name), frozenset())
            reason = non_inference_reason([tensor_name], placeholders, index, graph, source.losses)
            if (
                reason is None
                and not placeholders
                and model_batched
                and has_batch_dimension(shape_tuple(graph.get_tensor_by_name(tensor_name).shape)) is False
            ):
                # A constant table (class names): no row per sample, which TF Serving's batching rejects.
                reason = "a constant with no batch dimension"
            if reason:
                findings[tensor_name] = reason
    inputs, outputs = refs(input_names, source.inputs), refs(output_names, source.outputs)
    findings = {ref.key: findings[ref.tensor_name] for ref in outputs if ref.tensor_name in findings}
    graph_def, sites, rewrites = norms(graph_def, output_names, input_names)
    return SignaturePlan(
        graph_def=graph_def,
        signatures={DEFAULT_SIGNATURE: SignatureSpec(inputs, outputs, reference_for(inputs, outputs))},
        controls=controls,
        set_aside=set_aside,
        candidates=candidates,
        output_findings=findings,
        outputs_named=bool(requested_outputs),
        batchnorm_sites=sites,
        batchnorm_rewrites=rewrites,
    )


def _tower_plan(
    graph_def: GraphDef,
    family: TowerFamily,
    mode: ServedTowerMode,
    refs: RefsOf,
    reference_for: Callable[[list[TensorRef], list[TensorRef]], Reference],
    controls: list[ControlPlaceholder],
) -> SignaturePlan:
    """Signatures for a tower family in ``mode`` (merge, split or single)."""
    roles_in, roles_out = list(family.input_roles), list(family.output_roles)
    keys_in, keys_out = [r.replace(":", "_") for r in roles_in], [r.replace(":", "_") for r in roles_out]
    per_tower = [
        SignatureSpec(
            inputs := refs(list(t.inputs), None, keys_in),
            outputs := refs(list(t.outputs), None, keys_out),
            reference_for(inputs, outputs),
        )
        for t in family.towers
    ]
    if mode == "single":
        signatures = {DEFAULT_SIGNATURE: per_tower[0]}
    elif mode == "split":
        signatures = {DEFAULT_SIGNATURE: per_tower[0], **{f"tower_{i}": spec for i, spec in enumerate(per_tower)}}
    else:
        merged, merged_inputs, merged_outputs = merge_towers(graph_def, family)
        merged_graph = import_graph(merged, "the merged tower graph")
        inputs = tensor_refs(merged_graph, [merged_inputs[r] for r in roles_in], keys_in)
        outputs = tensor_refs(merged_graph, [merged_outputs[r] for r in roles_out], keys_out)
        spec = SignatureSpec(inputs, outputs, _merged_reference(per_tower, family.count))
        return SignaturePlan(
            merged, {DEFAULT_SIGNATURE: spec}, keep_devices=True, controls=controls, towers=family, tower_mode=mode
        )
    return SignaturePlan(graph_def, signatures, controls=controls, towers=family, tower_mode=mode)


def tower_slices(batch: int, count: int) -> list[slice]:
    """How a batch is split across towers: in order, sizes differing by at most one."""
    sizes = [(batch + count - 1 - i) // count for i in range(count)]
    starts = np.cumsum([0, *sizes])
    return [slice(int(starts[i]), int(starts[i + 1])) for i in range(count)]


def _merged_reference(per_tower: list[SignatureSpec], count: int) -> Reference:
    """The source's answer for a merged batch: each tower on its slice, concatenated in order."""

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(next(iter(feeds.values())))
        parts: list[dict[str, np.ndarray]] = []
        for spec, rows in zip(per_tower, tower_slices(batch, count)):
            if rows.stop > rows.start:
                parts.append(spec.reference({k: v[rows] for k, v in feeds.items()}))
        return {key: np.concatenate([p[key] for p in parts], axis=0) for key in parts[0]}

    return run
