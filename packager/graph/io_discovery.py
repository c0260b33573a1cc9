"""Find a graph's serving inputs and outputs, or resolve the ones the user named.

Outputs are the graph's sinks — ops nothing consumes — once the subgraphs that only exist for
training are set aside (saver, init, summaries, gradients, optimizer updates). Inputs are the
placeholders those outputs actually depend on, so a label placeholder that only feeds the loss is
not an input.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from packager.errors import SourceError, UsageError
from packager.graph.frozen_model import TensorRef
from packager.tf_runtime import numpy_dtype_name, shape_tuple

if TYPE_CHECKING:
    import tensorflow as tf
    from tensorflow.core.framework.graph_pb2 import GraphDef
    from tensorflow.core.framework.node_def_pb2 import NodeDef

PLACEHOLDER_OPS = frozenset({"Placeholder", "PlaceholderV2"})

# Sinks of these types are never serving outputs: they produce no value a client wants.
_NON_OUTPUT_OPS = frozenset(
    {
        "NoOp",
        "Const",
        "Assert",
        "Print",
        "PrintV2",
        "Placeholder",
        "PlaceholderV2",
        "PlaceholderWithDefault",
        "VarHandleOp",
        "Variable",
        "VariableV2",
        "VarIsInitializedOp",
        "IsVariableInitialized",
        "SaveV2",
        "Save",
        "SaveSlices",
        "RestoreV2",
        "Restore",
        "RestoreSlice",
        "MergeV2Checkpoints",
        "ShardedFilename",
        "StringJoin",
        "Assign",
        "AssignAdd",
        "AssignSub",
        "AssignVariableOp",
        "AssignAddVariableOp",
        "AssignSubVariableOp",
        "ReadVariableOp",
        "DestroyResourceOp",
        "MakeIterator",
        "IteratorToStringHandle",
        "IteratorV2",
        "Iterator",
        "OneShotIterator",
        "AnonymousIteratorV2",
        "DeleteIterator",
        "QueueEnqueueV2",
        "QueueEnqueueManyV2",
        "QueueCloseV2",
        "QueueSizeV2",
        "InitializeTableV2",
        "InitializeTableFromTextFileV2",
        "HashTableV2",
        "MutableHashTableV2",
        "WriteSummary",
        "FlushSummaryWriter",
        "CreateSummaryFileWriter",
        "SummaryWriter",
        # Metadata and control-flow plumbing: never a value a client asks for.
        "Shape",
        "ShapeN",
        "Size",
        "Rank",
        "TensorListReserve",
        "TensorListLength",
        "TensorListElementShape",
        "TensorArrayV3",
        "TensorArraySizeV3",
        "LoopCond",
    }
)
# Unconsumed outputs of TF1 while loops (map_fn leaves several): plumbing, not outputs.
_LOOP_PLUMBING = re.compile(r"/while(_\d+)?/(Identity|Exit|NextIteration|Merge|Switch|Enter)(_\d+)?$")
_NON_OUTPUT_OP_PATTERNS = (
    re.compile(r".*Summary(V2)?$"),  # ScalarSummary, HistogramSummary, MergeSummary, ...
    re.compile(r"^(Resource)?(Sparse)?Apply.*"),  # optimizer updates
    re.compile(r"^Save.*|^Restore.*"),
)
# Name scopes that hold training or checkpointing machinery rather than inference.
_NON_OUTPUT_SCOPES = re.compile(
    r"^(save(_\d+)?|init(_\d+)?|init_all_tables|report_uninitialized_variables|gradients(_\d+)?|"
    r"summaries|summary|train|training|optimizer|Optimizer|metrics|global_step|"
    r"ExponentialMovingAverage|.*_grad)(/|$)"
)
# Losses by name, at any depth: loss, losses, total_loss, tower_0/xent_loss, Loss/...
_LOSS_NAME = re.compile(r"(^|/)[A-Za-z0-9_]*(loss|losses|Loss|Losses)(_\d+)?(/|$)")


@dataclass(frozen=True)
class GraphIndex:
    """A GraphDef's nodes with their consumers, for reachability questions."""

    nodes: dict[str, NodeDef]  # op name -> NodeDef
    consumers: dict[str, set[str]]  # op name -> names of ops that use it (data or control)

    @classmethod
    def build(cls, graph_def: GraphDef) -> GraphIndex:
        nodes = {node.name: node for node in graph_def.node}
        consumers: dict[str, set[str]] = {name: set() for name in nodes}
        for node in graph_def.node:
            for producer in node.input:
                consumers.setdefault(input_op_name(producer), set()).add(node.name)
        return cls(nodes=nodes, consumers=consumers)

    def ancestors(self, op_names: Iterable[str]) -> set[str]:
        """Every op the given ops depend on, through data and control edges, themselves included."""
        seen: set[str] = set()
        stack = list(op_names)
        while stack:
            name = stack.pop()
            if name in seen or name not in self.nodes:
                continue
            seen.add(name)
            stack.extend(input_op_name(i) for i in self.nodes[name].input)
        return seen


def input_op_name(graph_input: str) -> str:
    """Op name of a NodeDef input entry ("^ctrl", "op:1", "op")."""
    return graph_input.lstrip("^").split(":", 1)[0]


def is_training_machinery(node: NodeDef) -> bool:
    """True for saver, init, summary, gradient and optimizer ops and other non-outputs."""
    if node.op in _NON_OUTPUT_OPS or any(p.match(node.op) for p in _NON_OUTPUT_OP_PATTERNS):
        return True
    return bool(_NON_OUTPUT_SCOPES.match(node.name) or _LOSS_NAME.search(node.name) or _LOOP_PLUMBING.search(node.name))


def training_subgraphs(graph_def: GraphDef) -> dict[str, int]:
    """How many ops of each kind of training machinery a graph carries (for inspect)."""
    kinds: dict[str, int] = {}
    for node in graph_def.node:
        if not is_training_machinery(node) or node.op == "Const":
            continue
        name, op = node.name, node.op
        if op.startswith(("Save", "Restore", "MergeV2Checkpoints")) or name.startswith("save"):
            kind = "saver"
        elif name.startswith("gradients") or "_grad/" in name:
            kind = "gradients"
        elif "Apply" in op or name.startswith(("train", "optimizer", "Optimizer")):
            kind = "optimizer"
        elif "Summary" in op or name.startswith(("summaries", "summary")):
            kind = "summaries"
        elif (
            name.startswith(("init", "report_uninitialized"))
            or op.startswith("Assign")
            or "IsInitialized" in op
            or "Initialized" in op
        ):
            kind = "init"
        elif _LOSS_NAME.search(name):
            kind = "loss"
        elif "Iterator" in op or "Queue" in op:
            kind = "input_pipeline"
        elif "ExponentialMovingAverage" in name:
            kind = "ema"
        else:
            continue  # not machinery, just not an output (placeholders, shapes, variable reads)
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items()))


def candidate_output_ops(index: GraphIndex) -> list[str]:
    """Sink ops that may be serving outputs, in graph order."""
    return [
        name for name, node in index.nodes.items() if not index.consumers.get(name) and not is_training_machinery(node)
    ]


def placeholder_ops(index: GraphIndex, within: set[str] | None = None) -> list[str]:
    """Placeholder ops in graph order, optionally only those in ``within``."""
    return [
        name for name, node in index.nodes.items() if node.op in PLACEHOLDER_OPS and (within is None or name in within)
    ]


def signature_keys(tensor_names: list[str]) -> list[str]:
    """Signature keys for tensors: the last component of the op name, unique.

    ``scope/logits:0`` becomes ``logits``. When two tensors would share a key (towers, or several
    outputs of one op) the full op name with '/' replaced by '_' is used for those, plus the output
    index when it is not 0.
    """

    def short(name: str) -> str:
        op, _, index = name.partition(":")
        base = op.rsplit("/", 1)[-1]
        return base if index in ("", "0") else f"{base}_{index}"

    def long(name: str) -> str:
        op, _, index = name.partition(":")
        base = op.replace("/", "_")
        return base if index in ("", "0") else f"{base}_{index}"

    shorts = [short(n) for n in tensor_names]
    return [s if shorts.count(s) == 1 else long(n) for s, n in zip(shorts, tensor_names)]


def tensor_refs(graph: tf.Graph, tensor_names: list[str], keys: list[str] | None = None) -> list[TensorRef]:
    """TensorRefs for tensors of an imported tf.Graph, keyed by :func:`signature_keys`."""
    keys = keys or signature_keys(tensor_names)
    refs = []
    for key, name in zip(keys, tensor_names):
        tensor = graph.get_tensor_by_name(name)
        refs.append(
            TensorRef(key=key, tensor_name=name, dtype=numpy_dtype_name(tensor.dtype), shape=shape_tuple(tensor.shape))
        )
    return refs


def resolve_names(
    requested: list[str], index: GraphIndex, graph: tf.Graph, flag: str, known: list[TensorRef] | None = None
) -> list[str]:
    """Turn user-given names ("op", "op:1" or a signature key) into tensor names.

    Raises:
        UsageError: a name matches nothing; the message lists the closest existing names.
    """
    by_key = {ref.key: ref.tensor_name for ref in known or []}
    resolved = []
    for name in requested:
        if name in by_key:
            resolved.append(by_key[name])
            continue
        op_name, _, index_text = name.partition(":")
        if op_name in index.nodes:
            tensor_name = f"{op_name}:{index_text or '0'}"
            try:
                graph.get_tensor_by_name(tensor_name)
            except (KeyError, ValueError):
                raise UsageError(f"{flag}: op {op_name!r} has no output {tensor_name!r}") from None
            resolved.append(tensor_name)
            continue
        choices = list(by_key) + list(index.nodes)
        close = difflib.get_close_matches(op_name, choices, n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else "; run 'tfpack inspect' to list candidates"
        raise UsageError(f"{flag}: no tensor named {name!r} in the graph{hint}")
    return resolved


@dataclass(frozen=True)
class OutputCandidate:
    """A sink op that may be a serving output, with the placeholders it needs."""

    op_name: str
    tensor_names: tuple[str, ...]
    placeholders: frozenset[str]
    depth: int  # how many ops it depends on: the final op of a model is usually the deepest

    def to_json(self) -> dict[str, object]:
        return {
            "op": self.op_name,
            "tensors": list(self.tensor_names),
            "needs": sorted(self.placeholders),
            "depth": self.depth,
        }


def output_candidates(
    index: GraphIndex, graph: tf.Graph, *, training_fed: frozenset[str] = frozenset()
) -> list[OutputCandidate]:
    """Candidate output ops, deepest first; ops that need no placeholder at all are not outputs.

    Args:
        training_fed: for a graph frozen from a training graph, the ops that only training
            machinery consumed (frozen_model.LoadedSource.training_fed). Such a sink is no output:
            it is a loss (traced back to where the labels join the predictions) or a value the
            gradients reused (dropped).
    """
    needs = placeholder_sets(index)
    sinks: list[str] = []
    traced: list[str] = []  # predictions found behind losses
    for sink in candidate_output_ops(index):
        if sink in training_fed:
            traced.extend(name for name in label_frontier(index, sink, needs) if name not in traced)
        else:
            sinks.append(sink)
    # A traced prediction that feeds an inference sink (logits under a softmax) is not an output.
    behind_sinks = index.ancestors(sinks) if traced else set()
    names = sinks + [name for name in traced if name not in behind_sinks and name not in sinks]
    candidates = []
    for op_name in names:
        op = graph.get_operation_by_name(op_name)
        if not needs[op_name] or not op.outputs:
            continue
        depth = len(index.ancestors([op_name]))
        candidates.append(OutputCandidate(op_name, tuple(t.name for t in op.outputs), needs[op_name], depth))
    return sorted(candidates, key=lambda c: (-c.depth, c.op_name))


@dataclass(frozen=True)
class OutputChoice:
    """The outputs discovery chose and the candidates it set aside as training sinks."""

    chosen: list[OutputCandidate]
    set_aside: list[OutputCandidate]


def placeholder_sets(index: GraphIndex) -> dict[str, frozenset[str]]:
    """For every op, the placeholders it depends on (computed once, in topological order)."""
    sets: dict[str, frozenset[str]] = {}
    for name in topological_order(index):
        node = index.nodes[name]
        own = frozenset({name}) if node.op in PLACEHOLDER_OPS else frozenset()
        sets[name] = own.union(*(sets.get(input_op_name(i), frozenset()) for i in node.input))
    return sets


def topological_order(index: GraphIndex) -> list[str]:
    """Op names, producers before consumers (iterative: graphs can be deep)."""
    remaining = {
        name: {input_op_name(i) for i in node.input} & index.nodes.keys() for name, node in index.nodes.items()
    }
    ready = [name for name, inputs in remaining.items() if not inputs]
    order: list[str] = []
    while ready:
        name = ready.pop()
        order.append(name)
        for consumer in index.consumers.get(name, ()):
            pending = remaining.get(consumer)
            if pending is not None and name in pending:
                pending.discard(name)
                if not pending:
                    ready.append(consumer)
    # Ops in cycles (TF1 while loops: NextIteration) come last, in graph order.
    seen = set(order)
    order.extend(name for name in index.nodes if name not in seen)
    return order


def label_frontier(index: GraphIndex, sink: str, needs: dict[str, frozenset[str]]) -> list[str]:
    """The ops of a training sink (a loss) where the labels join the model's predictions.

    In a training graph the prediction is no sink: the loss consumes it together with a label
    placeholder. The frontier are the ops on the sink's fan-in that some consumer joins with a
    placeholder they lack; the deepest of them (most ops behind it) are the predictions — a
    shallower frontier is where a second input joins a branch inside the model.
    """
    ancestors = index.ancestors([sink])
    frontier = [
        name
        for name in ancestors
        if index.nodes[name].op not in PLACEHOLDER_OPS
        and needs[name]
        and any(
            consumer in ancestors and not needs[consumer] <= needs[name] for consumer in index.consumers.get(name, ())
        )
    ]
    if not frontier:
        return []
    depth = {name: len(index.ancestors([name])) for name in frontier}
    deepest = max(depth.values())
    top = [name for name in frontier if depth[name] == deepest]
    return sorted(top)


def choose_outputs(candidates: list[OutputCandidate], source: str) -> OutputChoice:
    """Pick the inference outputs among the candidates, or refuse when that is a guess.

    Candidates needing the same placeholders are heads of one model: all are kept. When one group
    needs strictly fewer placeholders than every other group, the others consume something more —
    labels — so they are training sinks (a loss, a metric) and are set aside. Any other mix is
    ambiguous.

    Raises:
        SourceError: no candidate, or an ambiguous mix (the message lists them and --outputs).
    """
    if not candidates:
        raise SourceError(f"{source}: found no output (every sink is training machinery): name them with --outputs")
    groups: dict[frozenset[str], list[OutputCandidate]] = {}
    for candidate in candidates:
        groups.setdefault(candidate.placeholders, []).append(candidate)
    if len(groups) == 1:
        return OutputChoice(chosen=candidates, set_aside=[])
    smallest = [key for key in groups if all(key < other for other in groups if other != key)]
    if smallest:
        chosen = groups[smallest[0]]
        return OutputChoice(chosen=chosen, set_aside=[c for c in candidates if c not in chosen])
    listing = "; ".join(f"{c.op_name} (needs {', '.join(sorted(c.placeholders))})" for c in candidates[:8])
    raise SourceError(f"{source}: the outputs are ambiguous — candidates: {listing}: pick with --outputs NAME[,NAME]")


def discover_inputs(index: GraphIndex, output_tensor_names: list[str]) -> list[str]:
    """Tensor names of the placeholders the given outputs depend on, in graph order."""
    needed = index.ancestors(input_op_name(n) for n in output_tensor_names)
    return [f"{name}:0" for name in placeholder_ops(index, within=needed)]


# A gradient scope names the forward op it differentiates: gradients/dense/MatMul_grad/MatMul
# (also nested: training/Adam/gradients_1/loss/Mean_grad/Tile).
_GRADIENT_SCOPE = re.compile(r"(?:^|/)gradients(?:_\d+)?/(?P<op>.+?)_grad/")


def gradient_roots(graph_def: GraphDef) -> frozenset[str]:
    """The ops gradients were taken of — the losses — in an unfrozen training graph.

    Every forward op on the way from the variables to a loss has a ``…/OP_grad/`` scope; the
    loss is the one of them no other differentiated op consumes. Whatever it is named (``Mean_1``),
    a loss is what training minimised, never what a client asks for.
    """
    differentiated = set()
    for node in graph_def.node:
        match = _GRADIENT_SCOPE.search(node.name)
        if match:
            differentiated.add(match.group("op"))
    index = GraphIndex.build(graph_def)
    differentiated &= index.nodes.keys()
    return frozenset(
        name
        for name in differentiated
        if not any(consumer in differentiated for consumer in index.consumers.get(name, ()))
    )


def has_batch_dimension(shape: tuple[int | None, ...] | None) -> bool | None:
    """True when the leading dimension is free (a batch), False when fixed or a scalar, None when
    the rank is unknown."""
    if shape is None:
        return None
    return bool(shape) and shape[0] is None


def non_inference_reason(
    tensor_names: Iterable[str],
    placeholders: Iterable[str],
    index: GraphIndex,
    graph: tf.Graph,
    losses: frozenset[str],
) -> str | None:
    """Why output tensors are not inference outputs, or None when they may be.

    A loss (what gradients differentiate), an op of the gradient/optimizer machinery, or — in a
    model whose inputs carry a batch dimension — a tensor without one (a scalar statistic or
    loss) is never served unless named with --outputs.

    Args:
        tensor_names: the tensors of one output op.
        placeholders: the input placeholders (op names) they depend on.
    """
    tensor_names = list(tensor_names)
    name = input_op_name(tensor_names[0])
    if name in losses:
        return "a loss: gradients differentiate it"
    if name in index.nodes and is_training_machinery(index.nodes[name]):
        return "training machinery"
    batched = [has_batch_dimension(shape_tuple(graph.get_tensor_by_name(f"{p}:0").shape)) for p in placeholders]
    if any(batched):  # one batched input makes a batched model (a scalar temperature beside it does not)
        for tensor_name in tensor_names:
            if has_batch_dimension(shape_tuple(graph.get_tensor_by_name(tensor_name).shape)) is False:
                return "no batch dimension, though its inputs have one"
    return None


def batched_ops(index: GraphIndex, graph: tf.Graph, losses: frozenset[str] = frozenset(), limit: int = 5) -> list[str]:
    """The deepest non-machinery ops whose first output keeps a batch dimension: what to suggest
    for --outputs when every sink was set aside (never a loss)."""
    needs = placeholder_sets(index)
    found = []
    for name, node in index.nodes.items():
        if (
            not needs.get(name)
            or node.op in PLACEHOLDER_OPS
            or is_training_machinery(node)
            or name in losses
            or _GRADIENT_SCOPE.search(name)
        ):
            continue
        operation = graph.get_operation_by_name(name)
        if operation.outputs and has_batch_dimension(shape_tuple(operation.outputs[0].shape)):
            found.append((len(index.ancestors([name])), name))
    return [name for _, name in sorted(found, key=lambda item: (-item[0], item[1]))[:limit]]
