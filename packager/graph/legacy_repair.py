"""Repair what old TensorFlow versions leave in graphs before they are imported and served.

Two leftovers, both repaired on a copy (the caller's GraphDef is never modified) and each
reported in one line for inspect and provenance:

- attrs an op's current definition no longer has (an attr dropped from an op, or written by a
  fork): TensorFlow logs "NodeDef mentions attribute ... which is not in the op definition" at
  every import — also in the model server, at every load — and older runtimes refuse the graph;
- ``_output_shapes`` hints that disagree with the shapes TensorFlow infers (written by
  ``as_graph_def(add_shapes=True)`` under an older op's shape function): TensorFlow versions that
  validate them refuse the graph ("has an _output_shapes attribute inconsistent with the
  GraphDef"), and they would be written into the served graph as they are.

Attrs starting with "_" are the runtime's own and are kept; so are the ``_output_shapes`` that
agree with TensorFlow's shape inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from packager.tf_runtime import tensorflow

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef

OUTPUT_SHAPES = "_output_shapes"


@dataclass
class RepairedGraph:
    """A GraphDef fit for import and what was changed to make it so."""

    graph_def: GraphDef
    repairs: list[str] = field(default_factory=list)  # one line per kind of repair


def _examples(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _copy(graph_def: GraphDef) -> GraphDef:
    from tensorflow.core.framework import graph_pb2

    copy = graph_pb2.GraphDef()
    copy.CopyFrom(graph_def)
    return copy


def _unknown_attrs(graph_def: GraphDef) -> dict[str, list[str]]:
    """{node name: attrs its registered op does not define}; ops TF does not know are skipped
    (the import reports them)."""
    from tensorflow.python.framework import op_def_registry

    unknown: dict[str, list[str]] = {}
    for node in graph_def.node:
        op_def = op_def_registry.get(node.op)
        if op_def is None:
            continue
        known = {a.name for a in op_def.attr}
        extra = sorted(a for a in node.attr if not a.startswith("_") and a not in known)
        if extra:
            unknown[node.name] = extra
    return unknown


def _stale_output_shapes(graph_def: GraphDef) -> list[str]:
    """Nodes whose ``_output_shapes`` disagree with TensorFlow's own shape inference.

    The graph is imported once without any of the hints; a hint is stale when it names fewer
    shapes than the op has outputs or one incompatible with what TensorFlow infers.
    """
    tf = tensorflow()
    stripped = _copy(graph_def)
    for node in stripped.node:
        if OUTPUT_SHAPES in node.attr:
            del node.attr[OUTPUT_SHAPES]
    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.graph_util.import_graph_def(stripped, name="")
    except (ValueError, TypeError, KeyError, tf.errors.OpError):
        return []  # not importable for another reason: the caller's import reports it
    stale = []
    for node in graph_def.node:
        if OUTPUT_SHAPES not in node.attr:
            continue
        outputs = graph.get_operation_by_name(node.name).outputs
        hints = node.attr[OUTPUT_SHAPES].list.shape
        if len(hints) < len(outputs) or any(
            not tf.TensorShape(hint).is_compatible_with(tensor.shape) for hint, tensor in zip(hints, outputs)
        ):
            stale.append(node.name)
    return stale


def repair_legacy_graph(graph_def: GraphDef) -> RepairedGraph:
    """Drop attrs the ops no longer define and stale ``_output_shapes`` hints, on a copy.

    Returns:
        The argument itself when nothing needs repair (no copy of a possibly large graph),
        else a repaired copy; ``repairs`` lists what was done.
    """
    tensorflow()
    unknown = _unknown_attrs(graph_def)
    has_hints = any(OUTPUT_SHAPES in node.attr for node in graph_def.node)
    if not unknown and not has_hints:
        return RepairedGraph(graph_def)
    repaired = _copy(graph_def)
    repairs = []
    if unknown:
        for node in repaired.node:
            for attr in unknown.get(node.name, ()):
                del node.attr[attr]
        attrs = sorted({a for extra in unknown.values() for a in extra})
        repairs.append(
            f"dropped attrs the ops no longer define ({_examples(attrs)}) on {len(unknown)} op(s): "
            f"{_examples(sorted(unknown))}"
        )
    stale = set(_stale_output_shapes(repaired)) if has_hints else set()
    if stale:
        for node in repaired.node:
            if node.name in stale:
                del node.attr[OUTPUT_SHAPES]
        repairs.append(f"dropped stale {OUTPUT_SHAPES} on {len(stale)} op(s): {_examples(sorted(stale))}")
    if not repairs:
        return RepairedGraph(graph_def)
    return RepairedGraph(repaired, repairs)
