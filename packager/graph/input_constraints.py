"""What values a model's inputs must take for the equivalence proof to exercise it.

Golden inputs default to uniform(-1, 1) floats and {0, 1} integers. That gives NaN goldens for a
model taking the square root or the log of its input, and leaves an embedding table all but
untouched (only rows 0 and 1 are ever looked up). This module walks forward from each input
through the frozen GraphDef, along ops that only move or reshape values, and records what the
first op that *uses* the values needs:

- an exclusive upper bound for integers used as indices (gather, one-hot, unsorted segments),
  taken from a constant table shape, depth or segment count; the lowest over all uses wins;
- positivity for values that reach Sqrt, Rsqrt, Log, Log1p or a Pow with a non-integer exponent;
- distance from zero for values used as divisors.

It is conservative on purpose: a path through any op not known to pass values through unchanged
is not followed, so a missing constraint only leaves today's inputs in place — a bound tfpack
cannot prove is never invented. Functions in ``graph_def.library`` are not entered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from packager.graph.frozen_model import TensorRef
from packager.graph.io_discovery import input_op_name
from packager.tf_runtime import tensorflow

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef
    from tensorflow.core.framework.node_def_pb2 import NodeDef

# Constants larger than this are only ever looked at for their shape: reading an embedding table's
# values to learn a one-hot depth would copy hundreds of megabytes for nothing.
_MAX_CONST_VALUES = 1 << 16


@dataclass(frozen=True)
class InputConstraint:
    """What one input's generated values must satisfy.

    Attributes:
        upper_bound: exclusive upper bound for values used as indices (lower bound 0), or None.
        positive: the values reach an op defined only for positive inputs (Sqrt, Log, ...).
        divisor: the values are divided by, so they must stay away from zero.
        uses: why, one "Op at node" line per use that constrained the input (for messages).
    """

    upper_bound: int | None = None
    positive: bool = False
    divisor: bool = False
    uses: tuple[str, ...] = field(default=(), compare=False)

    @property
    def constrained(self) -> bool:
        """True when generated values must differ from the unconstrained defaults."""
        return self.upper_bound is not None or self.positive or self.divisor

    def describe(self) -> str:
        """One short phrase for messages, e.g. "integers in [0, 7), used by GatherV2 at emb/GatherV2"."""
        parts = [f"integers in [0, {self.upper_bound})"] if self.upper_bound is not None else []
        if self.divisor:
            parts.append("away from zero")
        elif self.positive:
            parts.append("positive")
        what = " and ".join(parts) or "unconstrained"
        return f"{what}, used by {', '.join(self.uses)}" if self.uses else what

    def merge(self, other: InputConstraint) -> InputConstraint:
        """Both constraints at once: the lower bound, and either positivity requirement."""
        bounds = [b for b in (self.upper_bound, other.upper_bound) if b is not None]
        return InputConstraint(
            upper_bound=min(bounds) if bounds else None,
            positive=self.positive or other.positive,
            divisor=self.divisor or other.divisor,
            uses=self.uses + tuple(u for u in other.uses if u not in self.uses),
        )


# ── the graph, tensor by tensor ──────────────────────────────────────────────────────────────


def _tensor_name(graph_input: str) -> str:
    """ "op:1" for a NodeDef input or a tensor name; "op" means "op:0"."""
    op_name, _, index = graph_input.partition(":")
    return f"{op_name}:{index or '0'}"


@dataclass(frozen=True)
class _Graph:
    nodes: dict[str, NodeDef]  # op name -> NodeDef
    uses: dict[str, list[tuple[NodeDef, int]]]  # tensor name -> (consuming NodeDef, input slot)

    @classmethod
    def build(cls, graph_def: GraphDef) -> _Graph:
        nodes = {node.name: node for node in graph_def.node}
        uses: dict[str, list[tuple[NodeDef, int]]] = {}
        for node in graph_def.node:
            for slot, graph_input in enumerate(node.input):
                if graph_input.startswith("^"):  # control edges carry no values
                    continue
                uses.setdefault(_tensor_name(graph_input), []).append((node, slot))
        return cls(nodes=nodes, uses=uses)

    def producer(self, tensor: str) -> NodeDef | None:
        return self.nodes.get(input_op_name(tensor))

    def source_const(self, tensor: str) -> NodeDef | None:
        """The Const (or variable handle) behind ``tensor`` through Identity-like ops, or None."""
        seen: set[str] = set()
        node = self.producer(tensor)
        while node is not None and node.name not in seen:
            seen.add(node.name)
            if node.op in ("Const", "VarHandleOp"):
                return node
            if node.op not in _IDENTITY_LIKE or not node.input:
                return None
            node = self.producer(node.input[0])
        return None

    def const_shape(self, tensor: str) -> tuple[int, ...] | None:
        """The static shape of a constant (or a variable's declared shape) behind ``tensor``."""
        node = self.source_const(tensor)
        if node is None:
            return None
        proto_shape = node.attr["value"].tensor.tensor_shape if node.op == "Const" else node.attr["shape"].shape
        if proto_shape.unknown_rank or any(d.size < 0 for d in proto_shape.dim):
            return None
        return tuple(int(d.size) for d in proto_shape.dim)

    def const_value(self, tensor: str) -> np.ndarray | None:
        """The value of a small constant behind ``tensor``, or None."""
        node = self.source_const(tensor)
        shape = self.const_shape(tensor)
        if node is None or node.op != "Const" or shape is None or int(np.prod(shape)) > _MAX_CONST_VALUES:
            return None
        return np.asarray(tensorflow().make_ndarray(node.attr["value"].tensor))


# Ops whose single output is their first input's values, unchanged.
_IDENTITY_LIKE = frozenset(
    {
        "Identity",
        "Snapshot",
        "StopGradient",
        "PreventGradient",
        "CheckNumerics",
        "EnsureShape",
        "DebugIdentity",
        "DebugIdentityV2",
    }
)
# Ops whose output holds a subset or a rearrangement of their first input's values (possibly
# repeated), never new ones: an index bound or a sign downstream applies to the input as well.
# A PlaceholderWithDefault passes its default on when not fed (forward only: walking back to a
# table, a feedable default is no constant).
_MOVES_FIRST_INPUT = _IDENTITY_LIKE | frozenset(
    {
        "PlaceholderWithDefault",
        "Cast",
        "Reshape",
        "ExpandDims",
        "Squeeze",
        "Transpose",
        "StridedSlice",
        "Slice",
        "Tile",
        "BroadcastTo",
        "ReverseV2",
        "Reverse",
        "Gather",
        "GatherV2",
        "GatherNd",
        "SpaceToBatchND",
        "BatchToSpaceND",
        "SpaceToDepth",
        "DepthToSpace",
    }
)
# Not here on purpose: Pad and MirrorPad (Pad adds zeros, which would break a Log downstream
# even for positive inputs), and every arithmetic op.


def _value_outputs(node: NodeDef, slot: int) -> list[str]:
    """The output tensors of ``node`` that carry the values fed into input ``slot`` unchanged."""
    op = node.op
    if (op == "SplitV" and slot == 0) or (op == "Split" and slot == 1):
        return [f"{node.name}:{i}" for i in range(node.attr["num_split"].i)]
    if op in _MOVES_FIRST_INPUT:
        return [f"{node.name}:0"] if slot == 0 else []
    if op == "ConcatV2":
        return [f"{node.name}:0"] if slot < node.attr["N"].i else []  # the last input is the axis
    if op == "Concat":
        return [f"{node.name}:0"] if slot > 0 else []  # the first input is the axis
    if op == "Pack":
        return [f"{node.name}:0"]
    if op == "Unpack":
        return [f"{node.name}:{i}" for i in range(node.attr["num"].i)]
    if op == "IdentityN":
        return [f"{node.name}:{slot}"]
    if op in ("Select", "SelectV2"):
        # Keras 3's Embedding wraps negative ids: SelectV2(ids < 0, ids + n, ids). The values
        # of the branches reach the output; the condition does not.
        return [f"{node.name}:0"] if slot in (1, 2) else []
    return []


# ── what an op needs of the values it uses ───────────────────────────────────────────────────


def _axis_dim(graph: _Graph, params: str, axis_tensor: str | None, batch_dims: int = 0) -> int | None:
    """The size of the gathered axis of a constant ``params``, or None when not known."""
    shape = graph.const_shape(params)
    if shape is None or not shape:
        return None
    axis = batch_dims
    if axis_tensor is not None:
        value = graph.const_value(axis_tensor)
        if value is None or value.size != 1:
            return None
        axis = int(value.reshape(()))
    if not -len(shape) <= axis < len(shape):
        return None
    return shape[axis]


def _scalar(graph: _Graph, tensor: str) -> int | None:
    value = graph.const_value(tensor)
    if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.integer):
        return None
    return int(value.reshape(()))


def _bound(node: NodeDef, slot: int, graph: _Graph) -> int | None:
    """The exclusive upper bound ``node`` needs of the values in input ``slot``, or None."""
    op, inputs = node.op, list(node.input)
    if op in ("GatherV2", "ResourceGather") and slot == 1:
        axis = inputs[2] if op == "GatherV2" and len(inputs) > 2 else None
        return _axis_dim(graph, inputs[0], axis, node.attr["batch_dims"].i if "batch_dims" in node.attr else 0)
    if op == "Gather" and slot == 1:
        return _axis_dim(graph, inputs[0], None)
    if op in ("GatherNd", "ResourceGatherNd") and slot == 1:
        # The last index dimension addresses several params dims at once: ids below the smallest
        # of them fit whichever dims they address.
        shape = graph.const_shape(inputs[0])
        return min(shape) if shape else None
    if op == "OneHot" and slot == 0:
        return _scalar(graph, inputs[1])
    if op.startswith("UnsortedSegment") and slot == 1 and len(inputs) > 2:
        return _scalar(graph, inputs[2])
    if op.startswith("SparseSegment") and slot == 1:
        # The indices pick rows of data; the segment ids (slot 2) must also be sorted, which a
        # bound cannot express, so they are left alone.
        return _axis_dim(graph, inputs[0], None)
    if op == "ScatterNd" and slot == 0 and len(inputs) > 2:
        shape_value = graph.const_value(inputs[2])
        return int(shape_value.min()) if shape_value is not None and shape_value.size else None
    return None


def _integral_constant(graph: _Graph, tensor: str) -> bool:
    value = graph.const_value(tensor)
    if value is None:
        return False
    return bool(np.issubdtype(value.dtype, np.integer) or np.all(np.equal(np.mod(value, 1), 0)))


_NEEDS_POSITIVE = frozenset({"Sqrt", "Rsqrt", "Log", "Log1p"})
_DIVIDES_BY_FIRST = frozenset({"Reciprocal", "Inv"})
_DIVIDES_BY_SECOND = frozenset(
    {
        "RealDiv",
        "Div",
        "FloorDiv",
        "TruncateDiv",
        "FloorMod",
        "Mod",
        "TruncateMod",
        "Xdivy",
    }
)


def _sign_needs(node: NodeDef, slot: int, graph: _Graph) -> tuple[bool, bool]:
    """(positive, divisor): what ``node`` needs of the sign of the values in input ``slot``."""
    op = node.op
    if op in _NEEDS_POSITIVE and slot == 0:
        return True, False
    if op == "Pow" and slot == 0:
        # A negative base is fine only with an integer exponent tfpack can see.
        return not _integral_constant(graph, node.input[1]), False
    if (op in _DIVIDES_BY_FIRST and slot == 0) or (op in _DIVIDES_BY_SECOND and slot == 1):
        return False, True
    return False, False


def _constraint_of_use(node: NodeDef, slot: int, graph: _Graph) -> InputConstraint | None:
    bound = _bound(node, slot, graph)
    positive, divisor = _sign_needs(node, slot, graph)
    if bound is None and not positive and not divisor:
        return None
    if bound is not None and bound < 1:
        bound = None  # an empty table: nothing to exercise, keep the defaults
        if not positive and not divisor:
            return None
    use = f"{node.op} at {node.name}"
    return InputConstraint(upper_bound=bound, positive=positive, divisor=divisor, uses=(use,))


# ── the walk ─────────────────────────────────────────────────────────────────────────────────


def _constraint_from(tensor: str, graph: _Graph) -> InputConstraint:
    constraint = InputConstraint()
    seen: set[str] = set()
    stack = [tensor]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        for node, slot in graph.uses.get(current, ()):
            use = _constraint_of_use(node, slot, graph)
            if use is not None:
                constraint = constraint.merge(use)
            stack.extend(_value_outputs(node, slot))
    return constraint


def derive_input_constraints(graph_def: GraphDef, inputs: Iterable[TensorRef]) -> dict[str, InputConstraint]:
    """What each input's golden values must satisfy for the model to run on them and stay finite.

    Args:
        graph_def: the frozen GraphDef the inputs belong to.
        inputs: the signature inputs.

    Returns:
        An InputConstraint per input that has one, keyed by TensorRef.key; unconstrained inputs
        are left out, so an empty dict means today's generated inputs are fine.
    """
    graph = _Graph.build(graph_def)
    constraints = {}
    for ref in inputs:
        constraint = _constraint_from(_tensor_name(ref.tensor_name), graph)
        if constraint.constrained:
            constraints[ref.key] = constraint
    return constraints
