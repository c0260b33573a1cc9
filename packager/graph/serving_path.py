"""What a request can reach in a serving graph: random ops (and whether a data-dependent condition
guards them), ops that mix the samples of a batch, and the proof copies of a graph whose random
draws are fixed (derandomize) or replaced by constants (random_ops_as_constants).

The walk covers the graph and every function it calls (map_fn and while bodies, cond branches,
PartitionedCall), except the branch a cond with a constant predicate never takes — dropout
behind ``tf.cond(training)`` once ``--constant training=false`` folded it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from packager.graph.io_discovery import input_op_name
from packager.graph.op_scan import is_random
from packager.tf_runtime import tensorflow

if TYPE_CHECKING:
    from tensorflow.core.framework.function_pb2 import FunctionDef
    from tensorflow.core.framework.graph_pb2 import GraphDef
    from tensorflow.core.framework.node_def_pb2 import NodeDef

# Rewrites one random op in place (the op, its position, the suffix naming an added node's
# output): the nodes to add, or None when the op cannot be rewritten.
RandomOpRewrite = Callable[["NodeDef", int, str], "list[NodeDef] | None"]

_IF = frozenset({"If", "StatelessIf"})
_CASE = frozenset({"Case", "StatelessCase"})
_REDUCTIONS = frozenset({"Mean", "Sum", "Max", "Min", "Prod", "All", "Any", "EuclideanNorm", "ArgMax", "ArgMin"})
_CUMULATIVE = frozenset({"Cumsum", "Cumprod", "CumulativeLogsumexp"})
_FUSED_BATCH_NORM = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})
_PASS_THROUGH = frozenset({"Identity", "Snapshot", "StopGradient"})
_PROOF_SEED = 20261124  # the seed unseeded random ops get in the proof of a stochastic model


@dataclass(frozen=True)
class ReachedNode:
    """A node a request can run: ``name`` is qualified by its function (``fn/node``) when it is
    in one; ``conditional`` when a data-dependent predicate decides whether it runs."""

    name: str
    node: NodeDef
    conditional: bool

    @property
    def label(self) -> str:
        return f"{self.name} ({self.node.op})"


def _constant_value(nodes: dict[str, NodeDef], graph_input: str) -> np.ndarray | None:
    """The value behind ``graph_input`` when it is a Const (through Identity ops), else None."""
    name = input_op_name(graph_input)
    while name in nodes and nodes[name].op in _PASS_THROUGH and nodes[name].input:
        name = input_op_name(nodes[name].input[0])
    producer = nodes.get(name)
    if producer is None or producer.op != "Const":
        return None
    from tensorflow.python.framework import tensor_util

    try:
        return tensor_util.MakeNdarray(producer.attr["value"].tensor)
    except (TypeError, ValueError):
        return None


def _called(node: NodeDef, nodes: dict[str, NodeDef], functions: dict[str, FunctionDef]) -> list[tuple[str, bool]]:
    """(function, decided by data) for each function ``node`` may call."""
    if node.op in _IF or node.op in _CASE:
        predicate = _constant_value(nodes, node.input[0]) if node.input else None
        if predicate is not None:
            if node.op in _IF:
                return [(node.attr["then_branch" if bool(np.ravel(predicate)[0]) else "else_branch"].func.name, False)]
            branches = [f.name for f in node.attr["branches"].list.func]
            index = int(np.ravel(predicate)[0])
            return [(branches[index if 0 <= index < len(branches) else -1], False)]
        branches = (
            [node.attr["then_branch"].func.name, node.attr["else_branch"].func.name]
            if node.op in _IF
            else [f.name for f in node.attr["branches"].list.func]
        )
        return [(name, True) for name in branches]
    names = [node.op] if node.op in functions else []
    for attr in node.attr.values():
        names.extend([attr.func.name] if attr.func.name else [])
        names.extend(f.name for f in attr.list.func)
    return [(name, False) for name in names]


def _behind_data_switch(name: str, nodes: dict[str, NodeDef], cache: dict[str, bool]) -> bool:
    """Whether a TF1 Switch with a non-constant predicate decides if op ``name`` runs: walking its
    inputs back, a Switch is met before any Merge (past a Merge the cond is over)."""
    if name in cache:
        return cache[name]
    seen: set[str] = set()
    stack = [name]
    found = False
    while stack and not found:
        current = stack.pop()
        if current in seen or current not in nodes:
            continue
        seen.add(current)
        node = nodes[current]
        if node.op in ("Switch", "RefSwitch") and len(node.input) > 1 and _constant_value(nodes, node.input[1]) is None:
            found = True
        elif node.op not in ("Merge", "RefMerge") or current == name:
            stack.extend(input_op_name(i) for i in node.input)
    cache[name] = found
    return found


def reached_nodes(graph_def: GraphDef) -> Iterator[ReachedNode]:
    """Every node a request can run, the graph's and its called functions'. ``conditional`` is
    worked out for random ops (the only ones it matters for); a function reached both ways is
    walked again when it is first seen conditionally and later unconditionally."""
    nodes = {node.name: node for node in graph_def.node}
    functions = {f.signature.name: f for f in graph_def.library.function}
    cache: dict[str, bool] = {}
    pending: list[tuple[str, bool]] = []
    for node in graph_def.node:
        conditional = is_random(node.op) and _behind_data_switch(node.name, nodes, cache)
        yield ReachedNode(node.name, node, conditional)
        pending.extend(_called(node, nodes, functions))
    done: dict[str, bool] = {}
    while pending:
        name, conditional = pending.pop()
        if name not in functions or (name in done and (not done[name] or conditional)):
            continue  # seen already: unconditionally, or as conditionally as now
        done[name] = conditional
        body = {n.name: n for n in functions[name].node_def}
        for node in functions[name].node_def:
            yield ReachedNode(f"{name}/{node.name}", node, conditional)
            pending.extend((called, conditional or decided) for called, decided in _called(node, body, functions))


def random_ops(graph_def: GraphDef) -> list[str]:
    """Every random op of the graph and its library, ``name (Type)``, reachable or not."""
    library = [(f"{f.signature.name}/{n.name}", n) for f in graph_def.library.function for n in f.node_def]
    return sorted(
        {f"{name} ({node.op})" for name, node in [(n.name, n) for n in graph_def.node] + library if is_random(node.op)}
    )


def reachable_random_ops(graph_def: GraphDef) -> tuple[list[str], list[str]]:
    """(random ops a request always reaches, random ops a data-dependent condition guards)."""
    always: set[str] = set()
    conditional: set[str] = set()
    for reached in reached_nodes(graph_def):
        if is_random(reached.node.op):
            (conditional if reached.conditional else always).add(reached.label)
    return sorted(always), sorted(conditional - always)


def _const_ints(nodes: dict[str, NodeDef], graph_input: str) -> list[int] | None:
    value = _constant_value(nodes, graph_input)
    if value is None:
        return None
    try:
        return [int(v) for v in np.ravel(value)]
    except (TypeError, ValueError):
        return None


def batch_mixing_ops(graph_def: GraphDef) -> list[str]:
    """Reached ops that combine values across samples: batch norm on batch statistics, reductions
    and cumulative ops over axis 0 (or over axes only known at run time), and the batch split of
    merged towers. The names a batch-independence failure cites."""
    found = []
    scopes: dict[str, dict[str, NodeDef]] = {"": {node.name: node for node in graph_def.node}}
    for function in graph_def.library.function:
        scopes[function.signature.name] = {node.name: node for node in function.node_def}
    for reached in reached_nodes(graph_def):
        node = reached.node
        nodes = scopes.get(reached.name[: -len(node.name) - 1] if reached.name != node.name else "", {})
        if node.op in _FUSED_BATCH_NORM and node.attr["is_training"].b:
            found.append(f"{reached.name} ({node.op}, is_training)")
        elif (node.op in _REDUCTIONS or node.op in _CUMULATIVE) and len(node.input) > 1:
            axes = _const_ints(nodes, node.input[1])
            if axes is None:
                found.append(f"{reached.name} ({node.op} over axes known only at run time)")
            elif 0 in axes:
                found.append(f"{reached.name} ({node.op} over axis 0)")
        elif node.name.startswith("tfpack_tower_split/") and node.op in ("GatherV2", "Split", "SplitV"):
            found.append(f"{reached.name} ({node.op}, tower split)")
    return found


# Stateful random op -> its stateless twin, which draws from an explicit seed input instead of a
# kernel's hidden state.
_STATELESS_TWINS = {
    "RandomUniform": "StatelessRandomUniform",
    "RandomStandardNormal": "StatelessRandomNormal",
    "TruncatedNormal": "StatelessTruncatedNormal",
    "RandomUniformInt": "StatelessRandomUniformInt",
}


def _new_const(name: str, value: np.ndarray, dtype_enum: int, anchor: str, device: str) -> NodeDef:
    """A Const node, ordered after ``anchor`` (a control input keeps it in a while loop's frame)."""
    tf = tensorflow()
    from tensorflow.core.framework import node_def_pb2

    const = node_def_pb2.NodeDef(name=name, op="Const", device=device)
    const.input.append("^" + input_op_name(anchor))
    const.attr["dtype"].type = dtype_enum
    const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, dtype=tf.as_dtype(dtype_enum)))
    return const


def _rewrite_random_ops(graph_def: GraphDef, rewrite: RandomOpRewrite) -> tuple[GraphDef, list[str]]:
    """A copy of ``graph_def`` with ``rewrite(node, position, output_suffix)`` applied to each
    stateful random op (in functions too); it returns the new nodes to add, or None when it
    cannot rewrite that op (listed in the result)."""
    from tensorflow.core.framework import graph_pb2

    copy = graph_pb2.GraphDef()
    copy.CopyFrom(graph_def)
    left: list[str] = []

    def each(nodes: Iterable[NodeDef], suffix: str) -> list[NodeDef]:
        added: list[NodeDef] = []
        for position, node in enumerate(list(nodes)):
            if not is_random(node.op):
                continue
            new = rewrite(node, position, suffix)
            if new is None:
                left.append(f"{node.name} ({node.op})")
            else:
                added.extend(new)
        return added

    copy.node.extend(each(copy.node, ":0"))
    for function in copy.library.function:
        function.node_def.extend(each(function.node_def, ":output:0"))
    return copy, left


def derandomize(graph_def: GraphDef) -> tuple[GraphDef, list[str]]:
    """A copy of ``graph_def`` whose stateful random ops draw from fixed seeds, for the proof of a
    deliberately stochastic model (--allow-random).

    Seeding the ops themselves is not enough: a stateful kernel inside a function body keeps its
    stream across sessions of one process, so two "fresh" runs can still differ. Each op becomes
    its stateless twin fed a constant seed, so the source's graph and the written model, each
    derandomized the same way, compare like with like; what is served keeps its random ops.

    Returns:
        (GraphDef, names of the random ops that have no stateless twin and were left as they are)
    """
    tf = tensorflow()

    def rewrite(node: NodeDef, position: int, suffix: str) -> list[NodeDef] | None:
        if node.op.startswith("Stateless"):
            return []  # already draws from its seed input
        twin = _STATELESS_TWINS.get(node.op)
        if twin is None:
            return None
        seed_value = np.array([node.attr["seed"].i or _PROOF_SEED, node.attr["seed2"].i or position + 1], np.int64)
        seed = _new_const(f"{node.name}/tfpack_seed", seed_value, tf.int64.as_datatype_enum, node.input[0], node.device)
        out_type = node.attr["Tout" if node.op == "RandomUniformInt" else "dtype"].type
        shape_type = node.attr["T"].type
        inputs = list(node.input)
        node.op = twin
        del node.input[:]
        node.input.extend([inputs[0], seed.name + suffix, *inputs[1:]])
        node.ClearField("attr")
        node.attr["dtype"].type = out_type
        node.attr["T"].type = shape_type
        node.attr["Tseed"].type = tf.int64.as_datatype_enum
        return [seed]

    return _rewrite_random_ops(graph_def, rewrite)


# Random op -> (the constant that stands for its draws, the input holding an int op's minval).
_CONSTANT_DRAWS = {
    "RandomUniform": 0.5,
    "StatelessRandomUniform": 0.5,
    "StatelessRandomUniformV2": 0.5,
    "RandomStandardNormal": 0.0,
    "StatelessRandomNormal": 0.0,
    "StatelessRandomNormalV2": 0.0,
    "TruncatedNormal": 0.0,
    "StatelessTruncatedNormal": 0.0,
    "StatelessTruncatedNormalV2": 0.0,
}
_INT_MINVAL_INPUT = {"RandomUniformInt": 1, "StatelessRandomUniformInt": 2, "StatelessRandomUniformIntV2": 4}


def random_ops_as_constants(graph_def: GraphDef) -> tuple[GraphDef, list[str]]:
    """A copy of ``graph_def`` whose random draws are constants of the same shape (a uniform's
    midpoint, a normal's mean, an int's minval): a stochastic model made deterministic, so that
    what its samples share can be compared sample by sample (--allow-random's batch check).

    Returns:
        (GraphDef, names of the random ops it could not replace)
    """
    tensorflow()  # imported quietly before the rewrite imports TensorFlow's protos

    def rewrite(node: NodeDef, position: int, suffix: str) -> list[NodeDef] | None:
        del position
        dtype_attr = "Tout" if node.op == "RandomUniformInt" else "dtype"
        if node.op in _INT_MINVAL_INPUT:
            value_input = node.input[_INT_MINVAL_INPUT[node.op]]
            added = []
        elif node.op in _CONSTANT_DRAWS:
            dtype = node.attr[dtype_attr].type
            value = _new_const(
                f"{node.name}/tfpack_draw", np.array(_CONSTANT_DRAWS[node.op]), dtype, node.input[0], node.device
            )
            value_input, added = value.name + suffix, [value]
        else:
            return None
        shape_type = node.attr["T"].type if "T" in node.attr else node.attr["Tshape"].type
        shape = node.input[0]
        node.op = "Fill"
        del node.input[:]
        node.input.extend([shape, value_input])
        value_type = node.attr[dtype_attr].type
        node.ClearField("attr")
        node.attr["T"].type = value_type
        node.attr["index_type"].type = shape_type
        return added

    return _rewrite_random_ops(graph_def, rewrite)
