"""Golden inputs that exercise the model: constraints derived from real graphs, and the ladder of
free-dimension sizes (issue 9)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from packager.equivalence import (
    FREE_DIMENSION_LADDER,
    GOLDEN_BATCH,
    UNKNOWN_DIMENSION,
    free_dimension_ladder,
    generate_inputs,
    golden_shape,
)
from packager.graph.frozen_model import TensorRef
from packager.graph.input_constraints import InputConstraint, derive_input_constraints
from packager.tf_runtime import tensorflow

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

_OLD_SEED = 20261123


def _old_generate_inputs(refs: list[TensorRef], seed: int = _OLD_SEED) -> dict[str, np.ndarray]:
    """generate_inputs as it was before constraints existed: stored goldens came from this."""
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for ref in refs:
        dims = ref.shape
        shape = (2,) if dims is None else tuple((2 if a == 0 else 4) if d is None else d for a, d in enumerate(dims))
        if ref.dtype == "string":
            count = int(np.prod(shape)) if shape else 1
            values = np.array([f"tfpack-golden-{i}".encode() for i in range(count)], dtype=object)
            inputs[ref.key] = values.reshape(shape).astype(np.bytes_)
        elif ref.dtype == "bool":
            inputs[ref.key] = rng.integers(0, 2, size=shape).astype(bool)
        elif np.issubdtype(np.dtype(ref.dtype), np.integer):
            inputs[ref.key] = rng.integers(0, 2, size=shape).astype(ref.dtype)
        elif np.issubdtype(np.dtype(ref.dtype), np.complexfloating):
            inputs[ref.key] = (rng.uniform(-1, 1, shape) + 1j * rng.uniform(-1, 1, shape)).astype(ref.dtype)
        else:
            inputs[ref.key] = rng.uniform(-1.0, 1.0, size=shape).astype(ref.dtype)
    return inputs


# ── building and running real graphs ─────────────────────────────────────────────────────────


def _v1_graph(build: Callable[[Any], None]):  # type: ignore[no-untyped-def]
    """The GraphDef a tf.compat.v1 graph builder makes."""
    tf = tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        build(tf)
    return graph.as_graph_def()


def _frozen_keras(model, spec) -> tuple[Any, str]:  # type: ignore[no-untyped-def]
    """A Keras model frozen the way sources freeze it: its GraphDef and its output tensor name."""
    tf = tensorflow()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    function = tf.function(lambda x: model(x)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(function)
    return frozen.graph.as_graph_def(), frozen.outputs[0].name


def _run(graph_def, feeds: dict[str, np.ndarray], refs: list[TensorRef], fetch: str):  # type: ignore[no-untyped-def]
    """Run a GraphDef the way graph sources run the reference: imported, in a TF1 session."""
    tf = tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(fetch, {ref.tensor_name: feeds[ref.key] for ref in refs})


def _float(name: str, shape: tuple[int | None, ...] = (None, 3)) -> TensorRef:
    return TensorRef(key=name, tensor_name=f"{name}:0", dtype="float32", shape=shape)


def _ids(name: str = "ids", shape: tuple[int | None, ...] = (None, 4), dtype: str = "int32") -> TensorRef:
    return TensorRef(key=name, tensor_name=f"{name}:0", dtype=dtype, shape=shape)


# ── backwards compatibility ──────────────────────────────────────────────────────────────────

_MIXED_REFS = [
    _float("x", (None, 3)),
    _ids("ids", (None, None)),
    TensorRef("text", "text:0", "string", (None,)),
    TensorRef("mask", "mask:0", "bool", (None, 5)),
    TensorRef("z", "z:0", "complex64", (2, None)),
    TensorRef("h", "h:0", "float16", None),
    _ids("long", (None, 2, None), "int64"),
]


def test_unconstrained_inputs_keep_the_values_stored_goldens_were_made_from() -> None:
    old = _old_generate_inputs(_MIXED_REFS)
    for new in (generate_inputs(_MIXED_REFS), generate_inputs(_MIXED_REFS, constraints={})):
        assert new.keys() == old.keys()
        for key in old:
            assert new[key].dtype == old[key].dtype and new[key].shape == old[key].shape
            np.testing.assert_array_equal(new[key], old[key])


def test_a_constrained_input_leaves_every_other_input_as_it_was() -> None:
    old = _old_generate_inputs(_MIXED_REFS)
    constraints = {"x": InputConstraint(positive=True), "ids": InputConstraint(upper_bound=50)}
    new = generate_inputs(_MIXED_REFS, constraints=constraints)
    for key in ("text", "mask", "z", "h", "long"):
        np.testing.assert_array_equal(new[key], old[key])
    assert new["x"].min() >= 0.1 and new["ids"].max() >= 2
    # Deterministic: the same seed gives the same constrained values.
    again = generate_inputs(_MIXED_REFS, constraints=constraints)
    for key in new:
        np.testing.assert_array_equal(new[key], again[key])


def test_golden_shape_takes_the_free_dimension_and_batch() -> None:
    ref = _ids("ids", (None, None, 3, None))
    assert golden_shape(ref) == (GOLDEN_BATCH, UNKNOWN_DIMENSION, 3, UNKNOWN_DIMENSION)
    assert golden_shape(ref, free_dimension=32, batch=5) == (5, 32, 3, 32)
    assert golden_shape(TensorRef("s", "s:0", "float32", None), batch=3) == (3,)
    feeds = generate_inputs([ref], free_dimension=16, batch=1)
    assert feeds["ids"].shape == (1, 16, 3, 16)


def test_the_ladder_starts_at_the_default_size_and_only_climbs_when_something_is_free() -> None:
    ladder = free_dimension_ladder()
    assert ladder[0] == UNKNOWN_DIMENSION and ladder == sorted(ladder) and ladder == list(FREE_DIMENSION_LADDER)
    fixed = [_float("x", (None, 3)), TensorRef("s", "s:0", "float32", None)]
    assert free_dimension_ladder(fixed) == [UNKNOWN_DIMENSION]
    assert free_dimension_ladder([_float("x", (None, None, 3))]) == ladder


# ── positivity ───────────────────────────────────────────────────────────────────────────────


def test_a_sqrt_model_gets_positive_inputs_and_finite_outputs() -> None:
    def build(tf) -> None:  # type: ignore[no-untyped-def]
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        moved = tf.transpose(tf.reshape(tf.identity(x), [-1, 3, 1]), [0, 2, 1])
        tf.math.sqrt(moved, name="y")

    graph_def, refs = _v1_graph(build), [_float("x")]
    constraints = derive_input_constraints(graph_def, refs)
    assert constraints["x"].positive and not constraints["x"].divisor and constraints["x"].upper_bound is None
    assert "Sqrt at y" in constraints["x"].describe()

    # The problem: today's inputs give NaN goldens.
    assert np.isnan(_run(graph_def, generate_inputs(refs), refs, "y:0")).any()
    feeds = generate_inputs(refs, constraints=constraints)
    assert feeds["x"].min() >= 0.1 and feeds["x"].max() < 2.0
    assert np.isfinite(_run(graph_def, feeds, refs, "y:0")).all()


@pytest.mark.parametrize("op", ["log", "log1p", "rsqrt", "pow_half"])
def test_log_and_friends_get_positive_inputs(op: str) -> None:
    def build(tf) -> None:  # type: ignore[no-untyped-def]
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        parts = tf.unstack(tf.cast(x, tf.float64), axis=1)  # Unpack: every output carries x
        column = tf.concat([tf.expand_dims(parts[1], 1), tf.expand_dims(parts[2], 1)], axis=1)
        if op == "log":
            tf.math.log(column, name="y")
        elif op == "log1p":
            tf.math.log1p(column, name="y")
        elif op == "rsqrt":
            tf.math.rsqrt(column, name="y")
        else:
            tf.math.pow(column, tf.constant(0.5, tf.float64), name="y")

    graph_def, refs = _v1_graph(build), [_float("x")]
    constraints = derive_input_constraints(graph_def, refs)
    assert constraints["x"].positive
    feeds = generate_inputs(refs, constraints=constraints)
    assert np.isfinite(_run(graph_def, feeds, refs, "y:0")).all()


def test_a_divisor_is_kept_away_from_zero_and_the_dividend_is_left_alone() -> None:
    def build(tf) -> None:  # type: ignore[no-untyped-def]
        a = tf.compat.v1.placeholder(tf.float32, [None, 3], name="a")
        b = tf.compat.v1.placeholder(tf.float32, [None, 3], name="b")
        tf.math.reciprocal(tf.math.divide(a, b), name="y")

    graph_def, refs = _v1_graph(build), [_float("a"), _float("b")]
    constraints = derive_input_constraints(graph_def, refs)
    assert set(constraints) == {"b"} and constraints["b"].divisor
    feeds = generate_inputs(refs, constraints=constraints)
    assert feeds["b"].min() >= 0.5 and feeds["b"].max() < 1.5
    np.testing.assert_array_equal(feeds["a"], _old_generate_inputs(refs)["a"])


def test_arithmetic_and_integer_powers_are_not_walked_through() -> None:
    """Conservative: x*x under a Sqrt or x**2 is fine with any sign; nothing is claimed."""

    def build(tf) -> None:  # type: ignore[no-untyped-def]
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        tf.math.sqrt(x * x, name="y")
        tf.math.pow(x, tf.constant(2.0), name="z")
        ids = tf.compat.v1.placeholder(tf.int32, [None, 4], name="ids")
        tf.gather(tf.zeros([7, 2]), ids + 1, name="g")

    graph_def = _v1_graph(build)
    assert derive_input_constraints(graph_def, [_float("x"), _ids()]) == {}


# ── ids ──────────────────────────────────────────────────────────────────────────────────────


def test_a_keras_embedding_of_seven_rows_gets_ids_across_the_whole_table() -> None:
    import keras

    tf = tensorflow()
    inputs = keras.Input((None,), dtype="int32", name="ids")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(7, 3)(inputs))
    graph_def, output = _frozen_keras(keras.Model(inputs, pooled), tf.TensorSpec([None, None], tf.int32, name="ids"))
    refs = [_ids("ids", (None, None))]

    constraints = derive_input_constraints(graph_def, refs)
    assert constraints["ids"].upper_bound == 7
    feeds = generate_inputs(refs, constraints=constraints)  # (2, 4): 8 ids, so all 7 rows
    assert set(feeds["ids"].ravel().tolist()) == set(range(7))
    assert feeds["ids"].dtype == np.int32
    assert np.isfinite(_run(graph_def, feeds, refs, output)).all()


def test_few_ids_still_reach_both_ends_of_a_large_table() -> None:
    def build(tf) -> None:  # type: ignore[no-untyped-def]
        ids = tf.compat.v1.placeholder(tf.int64, [None, 3], name="ids")
        table = tf.constant(np.arange(1000 * 2, dtype=np.float32).reshape(1000, 2))
        tf.nn.embedding_lookup(table, ids, name="y")

    graph_def, refs = _v1_graph(build), [_ids("ids", (None, 3), "int64")]
    constraints = derive_input_constraints(graph_def, refs)
    assert constraints["ids"].upper_bound == 1000
    ids = generate_inputs(refs, constraints=constraints)["ids"]
    assert ids.min() == 0 and ids.max() == 999 and len(set(ids.ravel().tolist())) == ids.size
    assert _run(graph_def, {"ids": ids}, refs, "y:0").shape == (2, 3, 2)


def test_one_hot_and_segment_counts_bound_ids_and_the_smallest_use_wins() -> None:
    def build(tf) -> None:  # type: ignore[no-untyped-def]
        label = tf.compat.v1.placeholder(tf.int32, [None], name="label")
        tf.one_hot(label, 5, name="onehot")
        segment = tf.compat.v1.placeholder(tf.int32, [None, 4], name="segment")
        tf.math.unsorted_segment_sum(tf.ones([2, 4]), segment, num_segments=6, name="sums")
        both = tf.compat.v1.placeholder(tf.int32, [None, 4], name="both")
        tf.gather(tf.zeros([9, 2]), both, name="rows")
        tf.one_hot(tf.reshape(both, [-1]), 3, name="narrow")

    graph_def = _v1_graph(build)
    refs = [_ids("label", (None,)), _ids("segment"), _ids("both")]
    constraints = derive_input_constraints(graph_def, refs)
    assert {key: c.upper_bound for key, c in constraints.items()} == {"label": 5, "segment": 6, "both": 3}
    assert "OneHot at narrow" in constraints["both"].describe()
    feeds = generate_inputs(refs, constraints=constraints)
    assert sorted(feeds["label"].tolist()) == [0, 4]  # two labels: both ends of the depth
    assert set(feeds["segment"].ravel().tolist()) == set(range(6))
    assert set(feeds["both"].ravel().tolist()) == set(range(3))
    assert _run(graph_def, feeds, refs, "onehot:0").sum() == 2  # every label hit a column


def test_float_ids_cast_for_a_gather_become_whole_numbers_in_range() -> None:
    def build(tf) -> None:  # type: ignore[no-untyped-def]
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        tf.gather(tf.zeros([5, 2]), tf.cast(x, tf.int32), name="y")

    graph_def, refs = _v1_graph(build), [_float("x", (None, 4))]
    constraints = derive_input_constraints(graph_def, refs)
    values = generate_inputs(refs, constraints=constraints)["x"]
    assert constraints["x"].upper_bound == 5 and values.dtype == np.float32
    assert set(values.ravel().tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}


# ── free dimensions ──────────────────────────────────────────────────────────────────────────


def test_a_free_time_axis_through_a_strided_conv_and_a_wide_pool_runs_at_some_ladder_size() -> None:
    import keras

    tf = tensorflow()
    inputs = keras.Input((None, 3), name="x")
    hidden = keras.layers.Conv1D(4, 3, strides=2)(inputs)
    hidden = keras.layers.MaxPooling1D(8)(hidden)
    pooled = keras.layers.GlobalAveragePooling1D()(hidden)
    graph_def, output = _frozen_keras(keras.Model(inputs, pooled), tf.TensorSpec([None, None, 3], tf.float32, name="x"))
    refs = [_float("x", (None, None, 3))]
    assert derive_input_constraints(graph_def, refs) == {}

    def attempt(size: int) -> np.ndarray | None:
        try:
            result = _run(graph_def, generate_inputs(refs, free_dimension=size), refs, output)
        except tf.errors.OpError:
            return None
        return result if result.size and np.isfinite(result).all() else None

    ladder = free_dimension_ladder(refs)
    assert attempt(ladder[0]) is None  # the default length 4 is too short for this model
    working = [size for size in ladder if attempt(size) is not None]
    assert working, "no ladder size runs a strided conv followed by an 8-wide pool"
    assert attempt(working[0]).shape == (GOLDEN_BATCH, 4)  # type: ignore[union-attr]


def test_values_are_followed_through_splits_stacks_and_gathers() -> None:
    def build(tf) -> None:  # type: ignore[no-untyped-def]
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        left, _ = tf.split(x, 2, axis=1)  # Split: the value is its second input
        stacked = tf.stack([left, left])  # Pack
        tf.math.log(tf.gather(stacked, [0], axis=2), name="y")  # GatherV2 on the params side
        cell = tf.compat.v1.placeholder(tf.int32, [None, 2], name="cell")
        tf.gather_nd(tf.zeros([6, 4]), cell, name="picked")  # GatherNd: below every dim

    graph_def = _v1_graph(build)
    refs = [_float("x", (None, 4)), _ids("cell", (None, 2))]
    constraints = derive_input_constraints(graph_def, refs)
    assert constraints["x"].positive and constraints["cell"].upper_bound == 4
    feeds = generate_inputs(refs, constraints=constraints)
    assert np.isfinite(_run(graph_def, feeds, refs, "y:0")).all()
    assert _run(graph_def, feeds, refs, "picked:0").shape == (2,)
