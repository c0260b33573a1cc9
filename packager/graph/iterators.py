"""Replace tf.data iterators and input queues by placeholders.

A training graph fed by ``dataset.make_one_shot_iterator().get_next()`` or a FIFO queue has no
placeholder at all: its model reads IteratorGetNext / QueueDequeue* outputs. Serving needs to feed
those tensors, so each output becomes a Placeholder of the same dtype and shape with a free batch
dimension, and every consumer is rewired to it. The iterator itself is left unconsumed, and
pruning for serving removes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from packager.graph.io_discovery import input_op_name
from packager.graph.surgery import unique_op_name
from packager.tf_runtime import numpy_dtype_name, tensorflow

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef
    from tensorflow.core.framework.node_def_pb2 import NodeDef
    from tensorflow.core.framework.tensor_shape_pb2 import TensorShapeProto

ITERATOR_OPS = frozenset({"IteratorGetNext", "IteratorGetNextSync", "IteratorGetNextAsOptional"})
QUEUE_DEQUEUE_OPS = frozenset(
    {
        "QueueDequeue",
        "QueueDequeueV2",
        "QueueDequeueMany",
        "QueueDequeueManyV2",
        "QueueDequeueUpTo",
        "QueueDequeueUpToV2",
    }
)
_BATCHED_DEQUEUE_OPS = frozenset({"QueueDequeueMany", "QueueDequeueManyV2", "QueueDequeueUpTo", "QueueDequeueUpToV2"})


@dataclass(frozen=True)
class ReplacedInput:
    """One iterator/queue output that became a placeholder."""

    placeholder: str  # the new placeholder's op name
    replaced: str  # the tensor it stands for, e.g. "IteratorGetNext:1"
    dtype: str
    shape: list[int | None] | None

    def to_json(self) -> dict[str, object]:
        return {"placeholder": self.placeholder, "replaces": self.replaced, "dtype": self.dtype, "shape": self.shape}


def find_data_inputs(graph_def: GraphDef) -> list[str]:
    """Names of the iterator and queue-dequeue ops whose outputs the graph consumes."""
    consumed = {input_op_name(i) for node in graph_def.node for i in node.input if not i.startswith("^")}
    return [
        n.name for n in graph_def.node if (n.op in ITERATOR_OPS or n.op in QUEUE_DEQUEUE_OPS) and n.name in consumed
    ]


def _output_specs(graph_def: GraphDef, node: NodeDef) -> list[tuple[int, list[int | None] | None]]:
    """(dtype enum, shape) of each output of an iterator or dequeue op."""
    if node.op in ITERATOR_OPS:
        types = list(node.attr["output_types"].list.type)
        shapes = [_shape(s) for s in node.attr["output_shapes"].list.shape] or [None] * len(types)
        return list(zip(types, shapes))
    types = list(node.attr["component_types"].list.type)
    queue = next((n for n in graph_def.node if n.name == input_op_name(node.input[0])), None)
    queue_shapes = (
        [_shape(s) for s in queue.attr["shapes"].list.shape] if queue is not None and "shapes" in queue.attr else []
    )
    shapes = queue_shapes or [None] * len(types)
    if node.op in _BATCHED_DEQUEUE_OPS:
        shapes = [None if s is None else [None, *s] for s in shapes]
    return list(zip(types, shapes))


def _shape(shape_proto: TensorShapeProto) -> list[int | None] | None:
    if shape_proto.unknown_rank:
        return None
    return [None if d.size < 0 else int(d.size) for d in shape_proto.dim]


def replace_data_inputs(graph_def: GraphDef) -> tuple[GraphDef, list[ReplacedInput]]:
    """Return (new GraphDef, [ReplacedInput]) with every consumed iterator/queue output replaced.

    A single replaced tensor becomes placeholder ``input``; several become ``input_0``,
    ``input_1``, … in iterator then output order. The leading dimension is freed (a training
    batch size of 32 must not bind serving).
    """
    tf = tensorflow()
    from tensorflow.core.framework import graph_pb2

    sources = find_data_inputs(graph_def)
    if not sources:
        return graph_def, []
    nodes = {n.name: n for n in graph_def.node}
    consumed = {i.split("^")[-1] for node in graph_def.node for i in node.input if not i.startswith("^")}
    outputs: list[tuple[str, int, list[int | None] | None]] = []
    for name in sources:
        for index, (dtype, shape) in enumerate(_output_specs(graph_def, nodes[name])):
            tensor = name if index == 0 else f"{name}:{index}"
            if tensor in consumed or f"{name}:{index}" in consumed:
                outputs.append((f"{name}:{index}", dtype, shape))
    existing = set(nodes)
    names = ["input"] if len(outputs) == 1 else [f"input_{i}" for i in range(len(outputs))]
    names = [unique_op_name(n, existing) for n in names]

    rewritten = graph_pb2.GraphDef()
    rewritten.CopyFrom(graph_def)
    mapping: dict[str, str] = {}
    replaced: list[ReplacedInput] = []
    for placeholder, (tensor, dtype, shape) in zip(names, outputs):
        free_shape = None if shape is None else ([None, *shape[1:]] if shape else [])
        node = rewritten.node.add(name=placeholder, op="Placeholder")
        node.attr["dtype"].type = dtype
        if free_shape is not None:
            node.attr["shape"].shape.CopyFrom(tf.TensorShape(free_shape).as_proto())
        mapping[tensor] = placeholder
        if tensor.endswith(":0"):
            mapping[tensor[:-2]] = placeholder
        replaced.append(ReplacedInput(placeholder, tensor, numpy_dtype_name(dtype), free_shape))
    for node in rewritten.node:
        node.input[:] = [mapping.get(i, i) for i in node.input]
    return rewritten, replaced
