"""Golden inputs for a signature, and the numerical comparison that proves a conversion.

Inputs are generated deterministically (fixed seed) so that two conversions of the same source
store the same goldens.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from packager.errors import VerificationError
from packager.graph.frozen_model import TensorRef
from packager.graph.input_constraints import InputConstraint

GOLDEN_BATCH = 2  # > 1 so batch-dependent bugs (a reshape that folds the batch) show up
UNKNOWN_DIMENSION = 4  # for unknown non-batch dimensions, e.g. a sequence length
# Sizes to try for unknown non-batch dimensions when the default is too small for the model (a
# time axis through strided convolutions and a large pooling window): see free_dimension_ladder.
FREE_DIMENSION_LADDER: tuple[int, ...] = (UNKNOWN_DIMENSION, 16, 32, 64, 128, 224)
_SEED = 20261123


def golden_shape(
    ref: TensorRef, *, free_dimension: int = UNKNOWN_DIMENSION, batch: int = GOLDEN_BATCH
) -> tuple[int, ...]:
    """A concrete shape for ``ref``: ``batch`` in a leading unknown dim, ``free_dimension`` elsewhere."""
    if ref.shape is None:
        return (batch,)
    return tuple((batch if axis == 0 else free_dimension) if dim is None else dim for axis, dim in enumerate(ref.shape))


def has_free_dimensions(refs: list[TensorRef]) -> bool:
    """True when some input has an unknown non-batch dimension, so its size is tfpack's choice."""
    return any(ref.shape is not None and None in ref.shape[1:] for ref in refs)


def free_dimension_ladder(refs: list[TensorRef] | None = None) -> list[int]:
    """The sizes to try, smallest first, for unknown non-batch dimensions until the source runs.

    The smallest keeps goldens and warmup requests small; the larger ones give a time or length
    axis room for strided convolutions, large pooling windows and reshapes, up to a typical image
    side. With ``refs`` that have no unknown non-batch dimension there is nothing to vary: the
    ladder is the default size alone.
    """
    if refs is not None and not has_free_dimensions(refs):
        return [UNKNOWN_DIMENSION]
    return list(FREE_DIMENSION_LADDER)


def generate_inputs(
    refs: list[TensorRef],
    seed: int = _SEED,
    *,
    constraints: Mapping[str, InputConstraint] | None = None,
    free_dimension: int = UNKNOWN_DIMENSION,
    batch: int = GOLDEN_BATCH,
) -> dict[str, np.ndarray]:
    """Deterministic inputs of the right dtypes and shapes, keyed by signature key.

    Unconstrained integers are kept to {0, 1} (masks, segment ids and ids all accept those) and
    floats are uniform in [-1, 1). An input with an InputConstraint instead gets ids spread over
    [0, upper_bound) — every id when there are enough elements, else evenly spaced ones including
    both ends of the table — floats in [0.1, 2.0) when they must be positive, or [0.5, 1.5) when
    they are divided by.

    Args:
        refs: the signature inputs.
        seed: the generator seed; the default keeps goldens stable between conversions.
        constraints: from graph.input_constraints.derive_input_constraints, keyed by TensorRef.key.
        free_dimension: the size of unknown non-batch dimensions (see free_dimension_ladder).
        batch: the size of a leading unknown dimension.
    """
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for ref in refs:
        shape = golden_shape(ref, free_dimension=free_dimension, batch=batch)
        # Always drawn, even when a constraint replaces it: the shared stream then advances as it
        # always did, so unconstrained inputs keep the exact values (and goldens) they had before
        # constraints existed, whatever other inputs of the model need.
        values = _unconstrained_values(ref, shape, rng)
        constraint = (constraints or {}).get(ref.key)
        if constraint is not None and constraint.constrained:
            own_rng = np.random.default_rng([seed, zlib.crc32(ref.key.encode())])
            constrained = _constrained_values(ref, shape, constraint, own_rng)
            values = values if constrained is None else constrained
        inputs[ref.key] = values
    return inputs


def _unconstrained_values(ref: TensorRef, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if ref.dtype == "string":
        count = int(np.prod(shape)) if shape else 1
        values = np.array([f"tfpack-golden-{i}".encode() for i in range(count)], dtype=object)
        return values.reshape(shape).astype(np.bytes_)
    if ref.dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if np.issubdtype(np.dtype(ref.dtype), np.integer):
        return rng.integers(0, 2, size=shape).astype(ref.dtype)
    if np.issubdtype(np.dtype(ref.dtype), np.complexfloating):
        return (rng.uniform(-1, 1, shape) + 1j * rng.uniform(-1, 1, shape)).astype(ref.dtype)
    return rng.uniform(-1.0, 1.0, size=shape).astype(ref.dtype)


def _constrained_values(
    ref: TensorRef, shape: tuple[int, ...], constraint: InputConstraint, rng: np.random.Generator
) -> np.ndarray | None:
    """Values meeting ``constraint``, or None for dtypes constraints do not apply to."""
    if ref.dtype in ("string", "bool"):
        return None
    dtype = np.dtype(ref.dtype)
    if np.issubdtype(dtype, np.complexfloating):
        return None
    away_from_zero = constraint.positive or constraint.divisor
    if np.issubdtype(dtype, np.integer) or constraint.upper_bound is not None:
        # A float reaching an index slot was cast to an integer on the way: whole numbers.
        high = constraint.upper_bound if constraint.upper_bound is not None else 3
        if np.issubdtype(dtype, np.integer):
            high = min(high, int(np.iinfo(dtype).max) + 1)
        # An index must stay in range even if a one-row table also wants it positive.
        low = 1 if away_from_zero and high > 1 else 0
        return _spread(low, high, shape, rng).astype(dtype)
    if constraint.divisor:
        return rng.uniform(0.5, 1.5, size=shape).astype(dtype)
    return rng.uniform(0.1, 2.0, size=shape).astype(dtype)


def _spread(low: int, high: int, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Integers in [low, high) in random order: all of them when there are enough elements, else
    evenly spaced ones with both ends, so the first and the last row of a table are exercised."""
    count = int(np.prod(shape)) if shape else 1
    span = high - low
    if count >= span:
        values = low + np.arange(count, dtype=np.int64) % span
    else:
        values = np.round(np.linspace(low, high - 1, count)).astype(np.int64)
    return rng.permutation(values).reshape(shape)


@dataclass(frozen=True)
class Comparison:
    """The largest absolute difference found, per output and overall."""

    max_abs_error: float
    per_output: dict[str, float]


def compare_outputs(
    expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], tolerance: float, what: str
) -> Comparison:
    """Check ``actual`` equals ``expected`` output by output.

    Floating outputs pass when every element satisfies |actual - expected| <= tolerance * (1 +
    |expected|) — absolute near zero, relative for large values; other dtypes must be equal.

    Raises:
        VerificationError: a missing output, a shape or dtype change, or a value out of tolerance.
    """
    per_output: dict[str, float] = {}
    for key, want in expected.items():
        if key not in actual:
            raise VerificationError(f"{what}: output {key!r} is missing")
        got = np.asarray(actual[key])
        want = np.asarray(want)
        if got.shape != want.shape:
            raise VerificationError(f"{what}: output {key!r} has shape {got.shape}, expected {want.shape}")
        if np.issubdtype(want.dtype, np.inexact):
            # complex128 keeps both parts of complex outputs; float64 is exact for float16/32.
            wide = np.complex128 if np.issubdtype(want.dtype, np.complexfloating) else np.float64
            diff = np.abs(got.astype(wide) - want.astype(wide))
            both_nan = np.isnan(got) & np.isnan(want)
            diff = np.where(both_nan, 0.0, diff)
            error = float(np.max(diff)) if diff.size else 0.0
            limit = tolerance * (1.0 + np.abs(want.astype(wide)))
            if np.isnan(error) or np.any(diff > limit):
                raise VerificationError(
                    f"{what}: output {key!r} differs by up to {error:.3g} (tolerance {tolerance:g})"
                )
        else:
            if not np.array_equal(got, want):
                raise VerificationError(f"{what}: output {key!r} differs")
            error = 0.0
        per_output[key] = error
    return Comparison(max_abs_error=max(per_output.values(), default=0.0), per_output=per_output)
