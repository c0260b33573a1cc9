"""Serving-readiness proofs: what will be served is an inference model.

Equivalence proves that the written SavedModel computes what tfpack's reading of the source
computes. It cannot tell whether that reading is an *inference* model: a graph that normalises
with the batch's statistics, draws random numbers, or whose "output" is a loss is equal to itself
too. These checks close that gap; ``convert`` runs them around the equivalence proof and stops
(exit 2, nothing written) at the first that fails, naming the ops at fault and the flag that
fixes or deliberately accepts it; ``inspect`` reports every verdict.

    outputs  ─▶ inference outputs   no loss, no gradient/optimizer op, batch dimension kept
    goldens  ─▶ finite goldens      the comparison exercised numbers, not NaN
    source×2 ─▶ determinism         the source agrees with itself (no random op on the path)
    batch N  ─▶ batch independence each sample alone equals itself inside a batch of N (odd)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from packager.errors import UsageError, VerificationError
from packager.equivalence import compare_outputs
from packager.graph.op_scan import RANDOM_OP_PREFIXES
from packager.tf_runtime import tensorflow

CHECKS = ("inference_outputs", "finite_goldens", "determinism", "batch_independence")
Status = Literal["passed", "failed", "allowed", "skipped"]
Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]

INDEPENDENCE_BATCH = 3  # odd and >= 3: an even split across two towers would hide an off-by-one

# Reductions that mix samples when they reduce over axis 0 (the batch).
_REDUCTION_OPS = frozenset({"Mean", "Sum", "Max", "Min", "Prod", "All", "Any", "EuclideanNorm", "ArgMax", "ArgMin"})
_FUSED_BATCH_NORM = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})
# The seed tfpack gives unseeded random ops in the proof of a stochastic model (--allow-random).
_PROOF_SEED = 20261124


@dataclass(frozen=True)
class Verdict:
    """The outcome of one readiness check."""

    check: str
    status: Status
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail}


@dataclass
class ReadinessReport:
    """Every check's verdict, in the order they ran."""

    verdicts: list[Verdict] = field(default_factory=list)

    def add(self, verdict: Verdict) -> Verdict:
        self.verdicts.append(verdict)
        return verdict

    def status(self, check: str) -> Status | None:
        return next((v.status for v in self.verdicts if v.check == check), None)

    def to_json(self) -> dict[str, Any]:
        return {v.check: {"status": v.status, "detail": v.detail} for v in self.verdicts}


class NotServingReady(UsageError):
    """The model as it stands is not an inference model (exit 2): the message names the ops at
    fault and the flag that fixes it; ``result`` carries the readiness verdicts."""


def _function_nodes(graph_def) -> Iterable[Any]:  # type: ignore[no-untyped-def]
    """Every NodeDef of the graph and of its function library (map_fn/cond bodies)."""
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def _is_random(op_type: str) -> bool:
    return op_type.startswith(RANDOM_OP_PREFIXES)


def random_ops(graph_def) -> list[str]:  # type: ignore[no-untyped-def]
    """Names of the ops that draw random numbers, ``op (Type)``, functions' bodies included."""
    return sorted({f"{node.name} ({node.op})" for node in _function_nodes(graph_def) if _is_random(node.op)})


# Stateful random op -> its stateless twin, which draws from an explicit seed input instead of a
# kernel's hidden state.
_STATELESS_TWINS = {
    "RandomUniform": "StatelessRandomUniform",
    "RandomStandardNormal": "StatelessRandomNormal",
    "TruncatedNormal": "StatelessTruncatedNormal",
    "RandomUniformInt": "StatelessRandomUniformInt",
}


def derandomize(graph_def):  # type: ignore[no-untyped-def]
    """A copy of ``graph_def`` whose stateful random ops draw from fixed seeds, for the proof of a
    deliberately stochastic model (--allow-random).

    Seeding the ops themselves is not enough: a stateful kernel inside a function body keeps its
    stream across sessions of one process, so two "fresh" runs can still differ. Each op becomes
    its stateless twin fed a constant seed, so the source's graph and the written model, each
    derandomized the same way, compare like with like; what is served keeps its random ops.

    Returns:
        (GraphDef, names of the random ops that have no stateless twin and were left as they are)
    """
    tensorflow_module = tensorflow()
    from tensorflow.core.framework import graph_pb2, node_def_pb2

    derandomized = graph_pb2.GraphDef()
    derandomized.CopyFrom(graph_def)
    left: list[str] = []

    def rewrite(nodes, in_function: bool) -> list[Any]:  # type: ignore[no-untyped-def]
        seeds = []
        for position, node in enumerate(list(nodes)):
            if not _is_random(node.op):
                continue
            twin = _STATELESS_TWINS.get(node.op)
            if twin is None:
                left.append(f"{node.name} ({node.op})")
                continue
            seed_name = f"{node.name}/tfpack_seed"
            value = [node.attr["seed"].i or _PROOF_SEED, node.attr["seed2"].i or position + 1]
            seed = node_def_pb2.NodeDef(name=seed_name, op="Const", device=node.device)
            seed.attr["dtype"].type = tensorflow_module.int64.as_datatype_enum
            seed.attr["value"].tensor.CopyFrom(tensorflow_module.make_tensor_proto(np.array(value, np.int64)))
            seeds.append(seed)
            out_type = node.attr["Tout" if node.op == "RandomUniformInt" else "dtype"].type
            shape_type = node.attr["T"].type
            inputs = list(node.input)
            seed_input = f"{seed_name}:output:0" if in_function else f"{seed_name}:0"
            node.op = twin
            del node.input[:]
            node.input.extend([inputs[0], seed_input, *inputs[1:]])
            node.ClearField("attr")
            node.attr["dtype"].type = out_type
            node.attr["T"].type = shape_type
            node.attr["Tseed"].type = tensorflow_module.int64.as_datatype_enum
        return seeds

    derandomized.node.extend(rewrite(derandomized.node, in_function=False))
    for function in derandomized.library.function:
        function.node_def.extend(rewrite(function.node_def, in_function=True))
    return derandomized, left


def _const_ints(node) -> list[int] | None:  # type: ignore[no-untyped-def]
    if node is None or node.op != "Const":
        return None
    from tensorflow.python.framework import tensor_util

    try:
        return [int(v) for v in np.ravel(tensor_util.MakeNdarray(node.attr["value"].tensor))]
    except (TypeError, ValueError):
        return None


def batch_mixing_ops(graph_def) -> list[str]:  # type: ignore[no-untyped-def]
    """Ops that combine values across samples: batch norm on batch statistics, reductions over
    axis 0, and the batch split of merged towers. The names a batch-independence failure cites."""
    nodes = {node.name: node for node in graph_def.node}
    found = []
    for node in graph_def.node:
        if node.op in _FUSED_BATCH_NORM and node.attr["is_training"].b:
            found.append(f"{node.name} ({node.op}, is_training)")
        elif node.op in _REDUCTION_OPS and len(node.input) > 1:
            axes = _const_ints(nodes.get(node.input[1].split(":")[0]))
            if axes is not None and 0 in axes:
                found.append(f"{node.name} ({node.op} over axis 0)")
        elif node.name.startswith("tfpack_tower_split/") and node.op in ("GatherV2", "Split", "SplitV"):
            found.append(f"{node.name} ({node.op}, tower split)")
    return found


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_finite(outputs: Mapping[str, Mapping[str, np.ndarray]], where: str) -> Verdict:
    """Every golden output is finite: a comparison over NaN proves nothing.

    Args:
        outputs: {signature: {output key: array}}.
    """
    for signature, values in outputs.items():
        for key, value in values.items():
            array = np.asarray(value)
            if np.issubdtype(array.dtype, np.inexact) and not np.all(np.isfinite(array)):
                bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
                return Verdict("finite_goldens", "failed",
                               f"output {key!r} of signature {signature} has {bad} non-finite value(s) on {where}")
    return Verdict("finite_goldens", "passed", f"every golden output is finite ({where})")


def check_determinism(
    first: Mapping[str, Mapping[str, np.ndarray]],
    second: Mapping[str, Mapping[str, np.ndarray]],
    tolerance: float,
    graph_def,  # type: ignore[no-untyped-def]
    control_flags: list[str],
) -> Verdict:
    """The source run twice on the same inputs agrees within the tolerance.

    Args:
        first, second: {signature: {output key: array}} from two runs.
        graph_def: the serving graph, where the random ops are looked for.
        control_flags: ``--constant NAME=VALUE`` suggestions for the control placeholders that
            may switch randomness off (a ``training`` flag).
    """
    for signature, values in first.items():
        try:
            compare_outputs(values, second[signature], tolerance, f"signature {signature} of the source run twice")
        except VerificationError as exc:
            found = random_ops(graph_def)
            ops = f"random ops on the serving path: {_listing(found)}" if found else "no random op found by name"
            fix = f"fix {' or '.join(control_flags)}, or " if control_flags else ""
            return Verdict(
                "determinism", "failed",
                f"the source gives different outputs for the same inputs ({exc}); {ops}: {fix}"
                "serve it as a stochastic model with --allow-random",
            )
    return Verdict("determinism", "passed", "the source run twice on the goldens agrees")


def independence_inputs(goldens: Mapping[str, np.ndarray], batch: int = INDEPENDENCE_BATCH) -> dict[str, np.ndarray]:
    """A batch of ``batch`` samples built from the goldens' rows (repeated with a small shift when
    there are fewer), so that every sample differs from its neighbours."""
    inputs = {}
    for key, value in goldens.items():
        rows = [value[i % len(value)] for i in range(batch)]
        if np.issubdtype(value.dtype, np.floating):
            # Repeated rows are nudged apart: identical samples would hide a mix of the batch.
            rows = [row + np.asarray(0.0625 * (i // len(value)), dtype=value.dtype) for i, row in enumerate(rows)]
        inputs[key] = np.stack(rows).astype(value.dtype)
    return inputs


def check_batch_independence(
    run: Callable[[str, Mapping[str, np.ndarray]], dict[str, np.ndarray]],
    batched: Mapping[str, Mapping[str, np.ndarray]],
    tolerance: float,
    graph_def,  # type: ignore[no-untyped-def]
) -> Verdict:
    """Each sample's outputs inside a batch equal its outputs sent alone (batch 1).

    Args:
        run: runs signature NAME of the model that will be served on feeds.
        batched: {signature: feeds} with a batch of INDEPENDENCE_BATCH samples, for each
            signature whose inputs all have a batch dimension.
        graph_def: the serving graph, where ops that mix samples are looked for.
    """
    for signature, feeds in batched.items():
        batch = len(next(iter(feeds.values())))
        try:
            together = run(signature, feeds)
            alone = [run(signature, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(batch)]
        except Exception as exc:  # an OpError from TensorFlow: the served model fails at some batch size
            from packager.errors import first_line

            mixing = batch_mixing_ops(graph_def)
            return Verdict("batch_independence", "failed",
                           f"signature {signature} fails on a batch of 1 or {batch}: {first_line(exc)}"
                           + (f"; ops that split or mix the batch: {_listing(mixing)}" if mixing else ""))
        for i, single in enumerate(alone):
            row = {key: np.asarray(value)[i:i + 1] for key, value in together.items()
                   if np.ndim(value) and np.shape(value)[0] == batch}
            try:
                compare_outputs(row, single, tolerance, f"sample {i} alone vs inside a batch of {batch}")
            except VerificationError as exc:
                mixing = batch_mixing_ops(graph_def)
                cause = f"ops that mix samples: {_listing(mixing)}" if mixing else "no op that mixes samples found by type"
                return Verdict(
                    "batch_independence", "failed",
                    f"signature {signature}: {exc}; {cause}: for batch norm use --batchnorm inference, "
                    "or serve outputs that depend on the batch on purpose with --batch-dependent",
                )
    if not batched:
        return Verdict("batch_independence", "skipped", "no signature has a batch dimension on every input")
    return Verdict("batch_independence", "passed",
                   f"each of {INDEPENDENCE_BATCH} samples alone equals itself inside the batch")


def raise_first_failure(report: ReadinessReport) -> None:
    """Raise NotServingReady for the first failed verdict, carrying every verdict as the result."""
    for verdict in report.verdicts:
        if verdict.status == "failed":
            raise NotServingReady(f"not serving-ready ({verdict.check}): {verdict.detail}",
                                  result={"readiness": report.to_json()})
