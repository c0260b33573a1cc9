"""Control placeholders and the constants that replace them.

Training graphs carry placeholders that steer training rather than carry data: ``is_training``
(usually a PlaceholderWithDefault) and ``keep_prob`` (a scalar Placeholder with no default). For
serving they must be fixed: a PlaceholderWithDefault is folded to its default, and a scalar
placeholder without one needs ``--constant NAME=VALUE`` — tfpack will not guess a dropout rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from packager.errors import UsageError
from packager.tf_runtime import tensorflow

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef
    from tensorflow.core.framework.node_def_pb2 import NodeDef

WITH_DEFAULT = "PlaceholderWithDefault"


@dataclass(frozen=True)
class ControlPlaceholder:
    """A placeholder that steers the graph: a default-valued one, or a scalar without default."""

    name: str
    dtype: str
    has_default: bool

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "has_default": self.has_default}


def parse_constants(assignments: list[str]) -> dict[str, str]:
    """Parse repeated ``--constant NAME=VALUE`` flags into {NAME: VALUE text}."""
    constants: dict[str, str] = {}
    for assignment in assignments:
        name, separator, value = assignment.partition("=")
        name = name.strip().removesuffix(":0")
        if not separator or not name or not value.strip():
            raise UsageError(f"--constant {assignment!r} must be NAME=VALUE, e.g. keep_prob=1.0")
        if name in constants:
            raise UsageError(f"--constant {name} is given twice ({constants[name]} and {value.strip()}): give it once")
        constants[name] = value.strip()
    return constants


def _node_dtype(node: NodeDef) -> str:
    tf = tensorflow()
    dtype = tf.as_dtype(node.attr["dtype"].type)
    return "string" if dtype == tf.string else dtype.name


def _is_scalar(node: NodeDef) -> bool:
    shape = node.attr["shape"].shape if "shape" in node.attr else None
    return shape is not None and not shape.unknown_rank and len(shape.dim) == 0


def find_control_placeholders(graph_def: GraphDef, within: set[str] | None = None) -> list[ControlPlaceholder]:
    """PlaceholderWithDefault ops, and scalar Placeholders, optionally only those in ``within``."""
    found = []
    for node in graph_def.node:
        if within is not None and node.name not in within:
            continue
        if node.op == WITH_DEFAULT:
            found.append(ControlPlaceholder(node.name, _node_dtype(node), has_default=True))
        elif node.op == "Placeholder" and _is_scalar(node):
            found.append(ControlPlaceholder(node.name, _node_dtype(node), has_default=False))
    return found


def constant_value(text: str, dtype: str, name: str) -> np.ndarray:
    """Convert ``--constant`` text to a scalar of the placeholder's dtype."""
    try:
        if dtype == "bool":
            lowered = text.lower()
            if lowered not in {"true", "false", "1", "0"}:
                raise ValueError(text)
            return np.array(lowered in {"true", "1"})
        if dtype == "string":
            return np.array(text.encode())
        return np.array(text, dtype=np.float64).astype(dtype) if "float" in dtype else np.array(int(text), dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise UsageError(f"--constant {name}={text}: not a valid {dtype} value") from None


def fold_control_placeholders(
    graph_def: GraphDef, constants: dict[str, str], keep: frozenset[str] = frozenset()
) -> tuple[GraphDef, dict[str, np.ndarray]]:
    """Replace named placeholders by constants and fold the remaining defaults.

    PlaceholderWithDefault ops named in ``keep`` (the user asked for them as inputs) stay.

    Returns:
        (GraphDef, {tensor name: value} of the constants applied), so the unfrozen source can be
        fed the same values when it is run as the reference. The GraphDef is a new one, or the
        argument itself when there was nothing to fold.

    Raises:
        UsageError: a --constant names no placeholder in the graph.
    """
    tf = tensorflow()
    from tensorflow.core.framework import graph_pb2

    names = {n.name for n in graph_def.node if n.op in {"Placeholder", WITH_DEFAULT}}
    unknown = sorted(set(constants) - names)
    if unknown:
        raise UsageError(
            f"--constant {unknown[0]}: no placeholder of that name (placeholders: {', '.join(sorted(names)) or 'none'})"
        )
    defaults = {n.name for n in graph_def.node if n.op == WITH_DEFAULT} - keep
    if not constants and not defaults:
        return graph_def, {}  # nothing to fold: no copy of a possibly large graph
    folded = graph_pb2.GraphDef()
    folded.CopyFrom(graph_def)
    placeholders = {n.name: n for n in folded.node if n.op in {"Placeholder", WITH_DEFAULT}}
    applied: dict[str, np.ndarray] = {}
    for name, node in placeholders.items():
        if name in constants:
            value = constant_value(constants[name], _node_dtype(node), name)
            dtype_enum = node.attr["dtype"].type
            node.op = "Const"
            del node.input[:]
            node.ClearField("attr")
            node.attr["dtype"].type = dtype_enum
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, dtype=tf.as_dtype(dtype_enum)))
            applied[f"{name}:0"] = value
        elif node.op == WITH_DEFAULT and name not in keep:
            # Serving uses the default: the op becomes an Identity of its default input.
            dtype_enum = node.attr["dtype"].type
            node.op = "Identity"
            node.ClearField("attr")
            node.attr["T"].type = dtype_enum
    return folded, applied
