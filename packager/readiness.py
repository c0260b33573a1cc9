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
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from packager.equivalence import compare_outputs
from packager.errors import UsageError, VerificationError
from packager.graph.serving_path import batch_mixing_ops, reachable_random_ops

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef

Check = Literal["inference_outputs", "finite_goldens", "determinism", "batch_independence"]
CHECKS: tuple[Check, ...] = get_args(Check)
Status = Literal["passed", "failed", "allowed", "skipped"]
Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]

INDEPENDENCE_BATCH = 3  # odd and >= 3: an even split across two towers would hide an off-by-one
DETERMINISM_TOLERANCE = 1e-6
RANDOM_RERUNS = 4  # reruns when random ops are reachable: a shuffle of 2 rows repeats itself half the time


@dataclass(frozen=True)
class Verdict:
    """The outcome of one readiness check."""

    check: Check
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

    def status(self, check: Check) -> Status | None:
        return next((v.status for v in self.verdicts if v.check == check), None)

    def to_json(self) -> dict[str, dict[str, str]]:
        return {v.check: {"status": v.status, "detail": v.detail} for v in self.verdicts}


class NotServingReady(UsageError):
    """The model as it stands is not an inference model (exit 2): the message names the ops at
    fault and the flag that fixes it; ``result`` carries the readiness verdicts."""


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
                return Verdict(
                    "finite_goldens",
                    "failed",
                    f"output {key!r} of signature {signature} has {bad} non-finite value(s) on {where}",
                )
    return Verdict("finite_goldens", "passed", f"every golden output is finite ({where})")


def check_determinism(
    first: Mapping[str, Mapping[str, np.ndarray]],
    rerun: Callable[[], Mapping[str, Mapping[str, np.ndarray]]],
    tolerance: float,
    graph_def: GraphDef,
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
    found, conditional = reachable_random_ops(graph_def)
    fix = (
        f"fix {' or '.join(control_flags)}, or " if control_flags else ""
    ) + "serve it as a stochastic model with --allow-random"
    if conditional:
        # The goldens may never take the branch a real request takes: no rerun can clear them.
        return Verdict(
            "determinism",
            "failed",
            f"random ops behind a condition on the request's values: {_listing(conditional)}: {fix}",
        )
    stateless = [name for name in found if "(Stateless" in name]
    if stateless:
        # A stateless draw repeats itself on every request, so no rerun can show it: a dropout
        # mask or an augmentation frozen with a fixed seed still changes every answer.
        return Verdict(
            "determinism",
            "failed",
            f"seeded random ops on the serving path draw the same numbers for every request "
            f"(dropout or augmentation left in with a fixed seed): {_listing(stateless)}: {fix}",
        )
    disagreement = rerun_disagreement(first, rerun, tolerance, with_random_ops=bool(found))
    if disagreement is not None:
        ops = f"random ops on the serving path: {_listing(found)}" if found else "no random op found by name"
        return Verdict(
            "determinism",
            "failed",
            f"the source gives different outputs for the same inputs ({disagreement}); {ops}: {fix}",
        )
    if found:
        return Verdict(
            "determinism",
            "passed",
            f"random ops on the serving path ({_listing(found)}) do not change the outputs: "
            f"{RANDOM_RERUNS + 1} runs agree to the last bit (e.g. dropout at keep_prob 1.0)",
        )
    return Verdict("determinism", "passed", "no random op on the serving path; the source run twice agrees")


def rerun_disagreement(
    first: Mapping[str, Mapping[str, np.ndarray]],
    rerun: Callable[[], Mapping[str, Mapping[str, np.ndarray]]],
    tolerance: float,
    *,
    with_random_ops: bool,
) -> str | None:
    """How a rerun of the source differs from its first run, or None when every rerun agrees.

    Two runs of one deterministic model agree to the last bit or nearly: the equivalence
    tolerance (which a user may loosen) must not hide a random op's small effect. So one rerun
    within min(tolerance, 1e-6); with random ops, RANDOM_RERUNS reruns to the last bit.
    """
    tight = 0.0 if with_random_ops else min(tolerance, DETERMINISM_TOLERANCE)
    for _ in range(RANDOM_RERUNS if with_random_ops else 1):
        again = rerun()
        for signature, values in first.items():
            try:
                if tight == 0.0:
                    for key, value in values.items():
                        if not np.array_equal(np.asarray(value), np.asarray(again[signature][key]), equal_nan=True):
                            raise VerificationError(
                                f"signature {signature} of the source run again: output {key!r} differs"
                            )
                else:
                    compare_outputs(values, again[signature], tight, f"signature {signature} of the source run twice")
            except VerificationError as exc:
                return str(exc)
    return None


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


def _varied_row(row: np.ndarray, variant: int) -> np.ndarray:
    """Variant ``variant`` of a sample, changed so that it differs from the sample itself while
    staying in the values the model was shown to accept."""
    if variant == 0:
        return row
    if np.issubdtype(row.dtype, np.floating):
        return row + np.asarray(0.0625 * variant, dtype=row.dtype)
    if row.dtype == np.bool_:
        return ~row if variant % 2 else row
    if np.issubdtype(row.dtype, np.integer) and row.size and int(row.max()) > 0:
        # Within [0, max]: ids stay below the table size the goldens respected.
        return ((row.astype(np.int64) + variant) % (int(row.max()) + 1)).astype(row.dtype)
    if row.dtype.kind == "S":
        return np.char.add(row, f"~{variant}".encode())
    return row


def independence_batch(
    goldens: Mapping[str, np.ndarray], batched: Iterable[str], batch: int = INDEPENDENCE_BATCH
) -> IndependenceBatch:
    """A batch of ``batch`` samples built from the goldens' rows; a row equal to an earlier one
    (a reused golden row, or a sample file repeating one request) is varied."""
    batched = frozenset(batched)
    feeds: dict[str, np.ndarray] = dict(goldens)
    if not batched:
        return IndependenceBatch(feeds, batched, False)
    size = len(next(goldens[k] for k in batched))
    samples: list[dict[str, np.ndarray]] = []
    for i in range(batch):
        sample = {key: goldens[key][i % size] for key in batched}
        variant = 0
        while (
            any(all(np.array_equal(sample[k], earlier[k]) for k in batched) for earlier in samples) and variant < batch
        ):
            variant += 1
            sample = {key: _varied_row(goldens[key][i % size], variant) for key in batched}
        samples.append(sample)
    for key in batched:
        feeds[key] = np.stack([sample[key] for sample in samples]).astype(goldens[key].dtype)
    distinct = all(
        any(not np.array_equal(feeds[key][i], feeds[key][j]) for key in batched)
        for i in range(batch)
        for j in range(i + 1, batch)
    )
    return IndependenceBatch(feeds, batched, distinct)


def check_batch_independence(
    run: Callable[[str, Mapping[str, np.ndarray]], dict[str, np.ndarray]],
    batches: Mapping[str, IndependenceBatch],
    tolerance: float,
    graph_def: GraphDef | None,
    *,
    exempt: frozenset[str] = frozenset(),
    fixes: tuple[str, ...] = (),
) -> Verdict:
    """Each sample's outputs inside a batch equal its outputs sent alone (batch 1).

    Every output must come one row per sample (a flattened or first-row-only output mixes or
    drops samples in a way no per-sample comparison would see), except those in ``exempt``
    (batchless outputs named with --outputs).

    Args:
        run: runs signature NAME of the model that will be served (for a stochastic model, a copy
            whose random draws are constants) on feeds.
        batches: per signature with at least one batched input.
        graph_def: the serving graph, where ops that mix samples are looked for; None for a
            model that is no TensorFlow graph (a .tflite source), which no graph rewrite fixes.
        exempt: output keys allowed to have no row per sample.
        fixes: control-placeholder flags that may switch batch statistics off.
    """
    mixing = batch_mixing_ops(graph_def) if graph_def is not None else []
    cause = f"ops that mix samples: {_listing(mixing)}" if mixing else "no op that mixes samples found by type"
    fix = (
        "".join(f"fix {flag}, or " for flag in fixes[:1])
        + ("for batch norm use --batchnorm inference, or " if graph_def is not None else "")
        + "serve outputs that depend on the batch on purpose with --batch-dependent"
    )
    for signature, checked in batches.items():
        feeds = checked.feeds
        batch = len(next(feeds[k] for k in checked.batched))
        if not checked.distinct:
            return Verdict(
                "batch_independence",
                "failed",
                f"signature {signature}: the samples are identical, so a mix of them cannot show ({cause}): "
                f"give --sample-inputs with different samples, or {fix}",
            )
        try:
            together = run(signature, feeds)
            alone = [
                run(signature, {k: (v[i : i + 1] if k in checked.batched else v) for k, v in feeds.items()})
                for i in range(batch)
            ]
        except Exception as exc:  # an OpError from TensorFlow: the served model fails at some batch size
            from packager.errors import first_line

            return Verdict(
                "batch_independence",
                "failed",
                f"signature {signature} fails on a batch of 1 or {batch}: {first_line(exc)}"
                + (f"; ops that split or mix the batch: {_listing(mixing)}" if mixing else ""),
            )
        checked_keys = [key for key in together if key not in exempt]
        for key in checked_keys:
            value = together[key]
            rows = np.shape(value)[0] if np.ndim(value) else None
            single_rows = [np.shape(s[key])[0] if np.ndim(s[key]) else None for s in alone]
            if rows != batch or any(r != 1 for r in single_rows):
                return Verdict(
                    "batch_independence",
                    "failed",
                    f"signature {signature}: output {key!r} has shape {np.shape(value)} for a batch of {batch} "
                    f"and {np.shape(alone[0][key])} for one sample: its rows are not one per sample; {fix}",
                )
        for i, single in enumerate(alone):
            row = {key: np.asarray(together[key])[i : i + 1] for key in checked_keys}
            try:
                compare_outputs(
                    row,
                    {key: single[key] for key in checked_keys},
                    tolerance,
                    f"sample {i} alone vs inside a batch of {batch}",
                )
            except VerificationError as exc:
                return Verdict("batch_independence", "failed", f"signature {signature}: {exc}; {cause}: {fix}")
    if not batches:
        return Verdict("batch_independence", "skipped", "no signature has an input with a batch dimension")
    return Verdict(
        "batch_independence", "passed", f"each of {INDEPENDENCE_BATCH} samples alone equals itself inside the batch"
    )


def raise_first_failure(report: ReadinessReport) -> None:
    """Raise NotServingReady for the first failed verdict, carrying every verdict as the result."""
    for verdict in report.verdicts:
        if verdict.status == "failed":
            raise NotServingReady(
                f"not serving-ready ({verdict.check}): {verdict.detail}", result={"readiness": report.to_json()}
            )
