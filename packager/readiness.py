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
DETERMINISM_TOLERANCE = 1e-6
RANDOM_RERUNS = 4  # reruns when random ops are reachable: a shuffle of 2 rows repeats itself half the time

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


_CONDITIONALS = frozenset({"If", "StatelessIf"})


def serving_random_ops(graph_def) -> list[str]:  # type: ignore[no-untyped-def]
    """The random ops a request can reach: the graph's and those of the functions it calls,
    except the branch a cond with a constant predicate never takes (dropout behind
    ``tf.cond(training)`` once ``--constant training=false`` folded it)."""
    nodes = {node.name: node for node in graph_def.node}
    functions = {f.signature.name: f for f in graph_def.library.function}

    def constant_predicate(node) -> bool | None:  # type: ignore[no-untyped-def]
        name = node.input[0].lstrip("^").split(":")[0] if node.input else ""
        while name in nodes and nodes[name].op in ("Identity", "Snapshot"):
            name = nodes[name].input[0].lstrip("^").split(":")[0]
        producer = nodes.get(name)
        if producer is None or producer.op != "Const":
            return None
        from tensorflow.python.framework import tensor_util

        return bool(np.ravel(tensor_util.MakeNdarray(producer.attr["value"].tensor))[0])

    def called(node, in_graph: bool) -> list[str]:  # type: ignore[no-untyped-def]
        predicate = constant_predicate(node) if in_graph and node.op in _CONDITIONALS else None
        if predicate is not None:
            return [node.attr["then_branch" if predicate else "else_branch"].func.name]
        names = [node.op] if node.op in functions else []
        for attr in node.attr.values():
            names.extend([attr.func.name] if attr.func.name else [])
            names.extend(f.name for f in attr.list.func)
        return names

    found = [f"{node.name} ({node.op})" for node in graph_def.node if _is_random(node.op)]
    pending = [name for node in graph_def.node for name in called(node, True)]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        for node in functions[name].node_def:
            if _is_random(node.op):
                found.append(f"{name}/{node.name} ({node.op})")
            pending.extend(called(node, False))
    return sorted(set(found))


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
            if not _is_random(node.op) or node.op.startswith("Stateless"):
                continue  # a stateless op already draws from its seed input
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
    rerun: Callable[[], Mapping[str, Mapping[str, np.ndarray]]],
    tolerance: float,
    graph_def,  # type: ignore[no-untyped-def]
    control_flags: list[str],
) -> Verdict:
    """The source run again on the same inputs agrees with its first run.

    Without random ops on the serving path one rerun must agree within min(tolerance, 1e-6).
    With random ops a request can reach, RANDOM_RERUNS reruns must agree to the last bit: only
    random ops whose draws cannot change the outputs (dropout at keep_prob 1.0) pass, however
    small the noise of the others.

    Args:
        first: {signature: {output key: array}} from the first run.
        rerun: runs the source again on the same inputs.
        graph_def: the serving graph, where the random ops are looked for.
        control_flags: ``--constant NAME=VALUE`` suggestions for the control placeholders that
            may switch randomness off (a ``training`` flag).
    """
    found = serving_random_ops(graph_def)
    fix = (f"fix {' or '.join(control_flags)}, or " if control_flags else "") + "serve it as a stochastic model with --allow-random"
    stateless = [name for name in found if "(Stateless" in name]
    if stateless:
        # A stateless draw repeats itself on every request, so no rerun can show it: a dropout
        # mask or an augmentation frozen with a fixed seed still changes every answer.
        return Verdict("determinism", "failed",
                       f"seeded random ops on the serving path draw the same numbers for every request "
                       f"(dropout or augmentation left in with a fixed seed): {_listing(stateless)}: {fix}")
    # Two runs of one deterministic graph agree to the last bit or nearly: the equivalence
    # tolerance (which a user may loosen) must not hide a random op's small effect.
    tight = 0.0 if found else min(tolerance, DETERMINISM_TOLERANCE)
    for _ in range(RANDOM_RERUNS if found else 1):
        again = rerun()
        for signature, values in first.items():
            try:
                if tight == 0.0:
                    for key, value in values.items():
                        if not np.array_equal(np.asarray(value), np.asarray(again[signature][key]), equal_nan=True):
                            raise VerificationError(f"signature {signature} of the source run again: output {key!r} differs")
                else:
                    compare_outputs(values, again[signature], tight, f"signature {signature} of the source run twice")
            except VerificationError as exc:
                ops = f"random ops on the serving path: {_listing(found)}" if found else "no random op found by name"
                return Verdict("determinism", "failed",
                               f"the source gives different outputs for the same inputs ({exc}); {ops}: {fix}")
    if found:
        return Verdict("determinism", "passed",
                       f"random ops on the serving path ({_listing(found)}) do not change the outputs: "
                       f"{RANDOM_RERUNS + 1} runs agree to the last bit (e.g. dropout at keep_prob 1.0)")
    return Verdict("determinism", "passed", "no random op on the serving path; the source run twice agrees")


@dataclass(frozen=True)
class IndependenceBatch:
    """The batch a signature's batch independence is checked on.

    Attributes:
        feeds: every input; those in ``batched`` hold INDEPENDENCE_BATCH samples.
        batched: the inputs whose leading axis is the batch (the others, a scalar temperature,
            are sent unchanged with every sample).
        distinct: whether the samples differ from each other (identical samples would hide a mix).
    """

    feeds: dict[str, np.ndarray]
    batched: frozenset[str]
    distinct: bool


def _varied_row(row: np.ndarray, repeat: int) -> np.ndarray:
    """The ``repeat``-th reuse of a golden row, changed so that it differs from the row itself
    while staying in the values the model was shown to accept."""
    if repeat == 0:
        return row
    if np.issubdtype(row.dtype, np.floating):
        return row + np.asarray(0.0625 * repeat, dtype=row.dtype)
    if row.dtype == np.bool_:
        return ~row if repeat % 2 else row
    if np.issubdtype(row.dtype, np.integer) and row.size and int(row.max()) > 0:
        # Within [0, max]: ids stay below the table size the goldens respected.
        return ((row.astype(np.int64) + repeat) % (int(row.max()) + 1)).astype(row.dtype)
    return row


def independence_batch(goldens: Mapping[str, np.ndarray], batched: Iterable[str],
                       batch: int = INDEPENDENCE_BATCH) -> IndependenceBatch:
    """A batch of ``batch`` samples built from the goldens' rows, reused rows varied."""
    batched = frozenset(batched)
    feeds: dict[str, np.ndarray] = {}
    for key, value in goldens.items():
        if key not in batched:
            feeds[key] = value
            continue
        rows = [_varied_row(value[i % len(value)], i // len(value)) for i in range(batch)]
        feeds[key] = np.stack(rows).astype(value.dtype)
    distinct = all(
        any(not np.array_equal(feeds[key][i], feeds[key][j]) for key in batched)
        for i in range(batch) for j in range(i + 1, batch)
    ) if batched else False
    return IndependenceBatch(feeds, batched, distinct)


def check_batch_independence(
    run: Callable[[str, Mapping[str, np.ndarray]], dict[str, np.ndarray]],
    batches: Mapping[str, IndependenceBatch],
    tolerance: float,
    graph_def,  # type: ignore[no-untyped-def]
    *,
    stochastic: bool = False,
) -> Verdict:
    """Each sample's outputs inside a batch equal its outputs sent alone (batch 1).

    Every output must come one row per sample (a flattened or first-row-only output mixes or
    drops samples in a way no per-sample comparison would see). A stochastic model's samples
    differ between runs anyway: for it the model must run at both batch sizes and no op may mix
    samples.

    Args:
        run: runs signature NAME of the model that will be served on feeds.
        batches: per signature with at least one batched input.
        graph_def: the serving graph, where ops that mix samples are looked for.
        stochastic: --allow-random.
    """
    mixing = batch_mixing_ops(graph_def)
    cause = (f"ops that mix samples: {_listing(mixing)}" if mixing
             else "no op that mixes samples found by type" + (f" (random ops: {_listing(random_ops(graph_def))})"
                                                              if random_ops(graph_def) else ""))
    fix = ("for batch norm use --batchnorm inference, or serve outputs that depend on the batch on purpose "
           "with --batch-dependent")
    undistinct = []
    for signature, checked in batches.items():
        feeds = checked.feeds
        batch = len(next(feeds[k] for k in checked.batched))
        try:
            together = run(signature, feeds)
            alone = [run(signature, {k: (v[i:i + 1] if k in checked.batched else v) for k, v in feeds.items()})
                     for i in range(batch)]
        except Exception as exc:  # an OpError from TensorFlow: the served model fails at some batch size
            from packager.errors import first_line

            return Verdict("batch_independence", "failed",
                           f"signature {signature} fails on a batch of 1 or {batch}: {first_line(exc)}"
                           + (f"; ops that split or mix the batch: {_listing(mixing)}" if mixing else ""))
        for key, value in together.items():
            rows = np.shape(value)[0] if np.ndim(value) else None
            single_rows = [np.shape(s[key])[0] if np.ndim(s[key]) else None for s in alone]
            if rows != batch or any(r != 1 for r in single_rows):
                return Verdict(
                    "batch_independence", "failed",
                    f"signature {signature}: output {key!r} has shape {np.shape(value)} for a batch of {batch} "
                    f"and {np.shape(alone[0][key])} for one sample: its rows are not one per sample; {fix}")
        if stochastic:
            continue
        if not checked.distinct:
            undistinct.append(signature)
        for i, single in enumerate(alone):
            row = {key: np.asarray(value)[i:i + 1] for key, value in together.items()}
            try:
                compare_outputs(row, single, tolerance, f"sample {i} alone vs inside a batch of {batch}")
            except VerificationError as exc:
                return Verdict("batch_independence", "failed", f"signature {signature}: {exc}; {cause}: {fix}")
    if not batches:
        return Verdict("batch_independence", "skipped", "no signature has an input with a batch dimension")
    if stochastic:
        if mixing:
            return Verdict("batch_independence", "failed",
                           f"a stochastic model's samples cannot be compared, and {cause}: {fix}")
        return Verdict("batch_independence", "passed",
                       "stochastic model: runs at batch 1 and 3, one row per sample, no op mixes samples")
    if undistinct:
        if mixing:
            return Verdict("batch_independence", "failed",
                           f"signature(s) {', '.join(undistinct)}: the samples are identical, so a mix cannot show, "
                           f"and {cause}: give --sample-inputs with different samples, or {fix}")
        return Verdict("batch_independence", "skipped",
                       f"signature(s) {', '.join(undistinct)}: the samples are identical; give --sample-inputs "
                       "with different samples to check")
    return Verdict("batch_independence", "passed",
                   f"each of {INDEPENDENCE_BATCH} samples alone equals itself inside the batch")


def raise_first_failure(report: ReadinessReport) -> None:
    """Raise NotServingReady for the first failed verdict, carrying every verdict as the result."""
    for verdict in report.verdicts:
        if verdict.status == "failed":
            raise NotServingReady(f"not serving-ready ({verdict.check}): {verdict.detail}",
                                  result={"readiness": report.to_json()})
