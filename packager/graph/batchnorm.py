"""Batch norms frozen in training mode: find them, and rewrite them to use the moving statistics.

A batch norm built with ``training=True`` as a Python constant —
``tf.compat.v1.layers.batch_normalization(x, training=True)``, ``slim.batch_norm(is_training=True)``,
``BatchNormalization()(x, training=True)`` — normalises with the statistics of the batch it is
given. Served, a request's outputs then depend on whatever other requests the server batched it
with: one sample alone gives different outputs than the same sample inside a batch. Two forms
reach a frozen graph:

* fused: a ``FusedBatchNorm``/``V2``/``V3`` op with ``is_training=True`` (4-D inputs, the default
  of tf.compat.v1.layers and slim);
* moments: ``tf.nn.moments`` — a ``Mean`` over axes that include the batch axis 0, a
  ``SquaredDifference`` and a second ``Mean`` — feeding ``tf.nn.batch_normalization``'s arithmetic
  (``Rsqrt(variance + epsilon)``): 2-D inputs, ``fused=False``, and Keras 3.

Each is paired with the moving mean and variance constants the checkpoint held: through the fused
op's own mean/variance inputs, by layer scope (``S/FusedBatchNormV3`` or ``S/moments/mean`` with
``S/moving_mean`` and ``S/moving_variance``, also when S carries an extra tower prefix), or through
the moving-average update (``Sub(moving_mean, batch_mean)``) left beside it. The rewrite makes each
site what the same layer built with ``training=False`` computes.

This module works on GraphDefs only, like all of graph/: it imports nothing from packager.sources.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from packager.errors import SourceError, UsageError
from packager.graph.io_discovery import GraphIndex, input_op_name
from packager.graph.surgery import unique_op_name
from packager.modes import BATCHNORM_MODES, BatchNormMode
from packager.tf_runtime import tensorflow

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef
    from tensorflow.core.framework.node_def_pb2 import NodeDef

FUSED_OPS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})
MOVING_MEAN = "moving_mean"
MOVING_VARIANCE = "moving_variance"

# Ops that pass a value on unchanged: the reads freezing leaves between a statistic and its Const
# (a ref variable's ``S/moving_mean/read``, a resource variable's ReadVariableOp turned Identity).
_READS = frozenset({"Identity", "ReadVariableOp", "Snapshot"})
# Ops allowed between the batch variance and tf.nn.batch_normalization's Rsqrt(variance + eps).
_TO_RSQRT = frozenset({"Squeeze", "Identity", "Cast", "Reshape", "Add", "AddV2"})
# A batch norm behind a Switch sits in a TF1 cond branch: it follows its training flag, a
# placeholder that constant folding (is_training=False) already settles.
_CONDITIONAL = frozenset({"Switch", "RefSwitch"})
# Batch renormalization's correction terms (r, d) read the batch statistics too, and vanish in
# inference mode; swapping only the mean and variance would not give the training=False model.
_RENORM_STATISTICS = ("renorm_mean", "renorm_stddev")


@dataclass(frozen=True)
class BatchNormSite:
    """One batch norm that normalises with its batch's statistics.

    Attributes:
        kind: "fused" (a FusedBatchNorm op with is_training=True) or "moments" (tf.nn.moments
            feeding batchnorm arithmetic).
        ops: the fused op; or the moments' mean and variance ``Mean`` ops.
        scope: the layer's name scope (``net/bn``).
        batch_mean: the op whose output the normalisation reads as the mean ("moments" only):
            the moments' Squeeze, or the Mean itself when the moments keep their dimensions.
        batch_variance: likewise for the variance.
        moving_mean: the Const holding the layer's moving mean, None when none was found.
        moving_variance: likewise for the moving variance.
        unrewritable: why the inference rewrite would not give the training=False model, if so.
    """

    kind: Literal["fused", "moments"]
    ops: tuple[str, ...]
    scope: str
    batch_mean: str | None = None
    batch_variance: str | None = None
    moving_mean: str | None = None
    moving_variance: str | None = None
    unrewritable: str | None = None

    @property
    def op(self) -> str:
        """The op that names the site in messages: the fused op, or the moments' mean."""
        return self.ops[0]

    @property
    def paired(self) -> bool:
        """True when both moving statistics were found."""
        return self.moving_mean is not None and self.moving_variance is not None

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "ops": list(self.ops),
            "scope": self.scope,
            "moving_mean": self.moving_mean,
            "moving_variance": self.moving_variance,
            "unrewritable": self.unrewritable,
        }


def find_batch_statistics_norms(graph_def: GraphDef, within: Collection[str] | None = None) -> list[BatchNormSite]:
    """Every batch norm of ``graph_def`` that normalises with batch statistics, in graph order.

    Only the graph's own nodes are scanned (not its function library): a batch norm inside a
    tf.function body or a TF1 cond branch follows a training flag rather than a constant.

    Args:
        graph_def: a frozen GraphDef (not modified).
        within: op names on the serving path (e.g. ``GraphIndex.ancestors`` of the outputs); sites
            outside are ignored. None scans the whole graph.
    """
    index = GraphIndex.build(graph_def)
    sites: list[BatchNormSite] = []
    for node in graph_def.node:
        if within is not None and node.name not in within:
            continue
        if node.op in FUSED_OPS:
            site = _fused_site(index, node)
        elif node.op == "Mean":
            site = _moments_site(index, node)
        else:
            site = None
        if site is not None:
            sites.append(site)
    return sites


def rewrite_to_inference(
    graph_def: GraphDef, sites: list[BatchNormSite], *, keep: Collection[str] = ()
) -> tuple[GraphDef, list[str]]:
    """Make each site normalise with its moving mean and variance, as training=False would.

    Fused ops get ``is_training=False`` with inputs 3 and 4 the moving mean and variance. For the
    moments form, the batch mean and variance the normalisation reads are replaced by the moving
    ones. Ops only the batch statistics needed (the moments, a Bessel correction) are removed, so
    the rewrite leaves no new sink behind to be mistaken for an output.

    Args:
        graph_def: the frozen GraphDef (not modified).
        sites: from :func:`find_batch_statistics_norms` on ``graph_def``.
        keep: op names never removed (the signature's inputs and outputs).

    Returns:
        (a new GraphDef, one line per site saying what changed); the argument is never modified.

    Raises:
        SourceError: a site has no moving statistics in the graph, or cannot be rewritten exactly.
    """
    tensorflow()
    from tensorflow.core.framework import graph_pb2

    _check_rewritable(sites)
    rewritten = graph_pb2.GraphDef()
    rewritten.CopyFrom(graph_def)
    if not sites:
        return rewritten, []
    nodes = {node.name: node for node in rewritten.node}
    taken = set(nodes)
    consumed_before = {input_op_name(i) for node in rewritten.node for i in node.input}
    description: list[str] = []
    for site in sites:
        assert site.moving_mean is not None and site.moving_variance is not None  # _check_rewritable
        if site.kind == "fused":
            node = nodes[site.op]
            node.attr["is_training"].b = False
            node.input[3], node.input[4] = site.moving_mean, site.moving_variance
            description.append(
                f"{site.op}: is_training=False, mean {site.moving_mean}, variance {site.moving_variance}"
            )
        else:
            assert site.batch_mean is not None and site.batch_variance is not None
            mean_op, _variance_op = site.ops
            exempt = _variance_computation(rewritten, mean_op)
            _substitute(rewritten, nodes, site.batch_mean, site.moving_mean, taken, exempt)
            _substitute(rewritten, nodes, site.batch_variance, site.moving_variance, taken, frozenset())
            description.append(
                f"{site.scope}: batch mean {site.batch_mean} -> {site.moving_mean}, "
                f"batch variance {site.batch_variance} -> {site.moving_variance}"
            )
    _drop_newly_dead(rewritten, consumed_before, frozenset(keep))
    return rewritten, description


def apply_batchnorm_mode(
    graph_def: GraphDef,
    mode: BatchNormMode,
    *,
    within: Collection[str] | None = None,
    keep: Collection[str] = (),
    source: str = "the model",
) -> tuple[GraphDef, list[BatchNormSite], list[str]]:
    """``--batchnorm auto|inference|batch`` in one call.

    auto refuses a graph with batch-statistics norms, naming them and both flags; inference
    rewrites them (:func:`rewrite_to_inference`); batch leaves the graph as it is.

    Args:
        graph_def: the frozen (control-placeholder-folded) GraphDef; not modified.
        mode: auto|inference|batch.
        within: op names on the serving path; norms elsewhere are ignored (None: the whole graph).
        keep: op names the rewrite must not remove (the signature's input and output ops).
        source: how messages name the model (its path).

    Returns:
        (the GraphDef to serve — the argument itself unless rewritten —, the sites found, the
        rewrite's description lines).

    Raises:
        UsageError: an unknown mode; auto with sites found.
        SourceError: inference with a site that has no moving statistics.
    """
    if mode not in BATCHNORM_MODES:
        raise UsageError(f"--batchnorm must be one of {', '.join(BATCHNORM_MODES)}, not {mode!r}")
    sites = find_batch_statistics_norms(graph_def, within)
    if not sites or mode == "batch":
        return graph_def, sites, []
    if mode == "auto":
        raise UsageError(
            f"{source}: {len(sites)} batch norm(s) normalise with the statistics of the batch (built with "
            f"training=True): {_names(sites)}; served, a request's outputs would depend on the requests "
            "batched with it: pass --batchnorm inference to use the moving mean and variance (as training=False "
            "would), or --batchnorm batch to keep batch statistics"
        )
    claimed: dict[tuple[str | None, str | None], set[str]] = {}
    for site in sites:
        if site.moving_mean is not None:
            tower = _TOWER_PREFIX.match(site.scope)
            claimed.setdefault((site.moving_mean, site.moving_variance), set()).add(
                site.scope[tower.end() :] if tower else site.scope
            )
    shared = {pair: scopes for pair, scopes in claimed.items() if len(scopes) > 1}
    if shared:
        (mean, _), scopes = next(iter(shared.items()))
        raise SourceError(
            f"{source}: batch norms {', '.join(sorted(scopes))} would all be rewritten to the moving statistics "
            f"{mean}: only one of them can own them; convert from the checkpoint with --batchnorm batch, or "
            "rebuild the graph with training=False"
        )
    rewritten, description = rewrite_to_inference(graph_def, sites, keep=keep)
    return rewritten, sites, description


def _names(sites: list[BatchNormSite], limit: int = 5) -> str:
    shown = ", ".join(site.op for site in sites[:limit])
    return shown + (f" and {len(sites) - limit} more" if len(sites) > limit else "")


def _check_rewritable(sites: list[BatchNormSite]) -> None:
    unpaired = [site for site in sites if not site.paired]
    if unpaired:
        raise SourceError(
            f"batch norm(s) {_names(unpaired)} normalise with batch statistics, and the graph holds no moving "
            "mean/variance for them (a freeze that dropped them?): convert from the training checkpoint "
            "(its .meta graph, or the GraphDef with --checkpoint) instead, or keep batch statistics with "
            "--batchnorm batch"
        )
    unrewritable = [site for site in sites if site.unrewritable]
    if unrewritable:
        raise SourceError(
            f"batch norm(s) {_names(unrewritable)} cannot be rewritten to inference: {unrewritable[0].unrewritable}; "
            "rebuild the model with training=False and convert its checkpoint (--builder), or keep batch "
            "statistics with --batchnorm batch"
        )


# --- detection -------------------------------------------------------------------------------


def _scope(op_name: str) -> str:
    return op_name.rsplit("/", 1)[0] if "/" in op_name else ""


def _producer(index: GraphIndex, graph_input: str) -> NodeDef | None:
    return index.nodes.get(input_op_name(graph_input))


def _data_inputs(node: NodeDef) -> list[str]:
    return [i for i in node.input if not i.startswith("^")]


def _const_behind(index: GraphIndex, graph_input: str) -> str | None:
    """The Const a tensor is read from through Identity-like reads, or None."""
    node = _producer(index, graph_input)
    for _ in range(4):
        if node is None:
            return None
        if node.op == "Const":
            return str(node.name)
        if node.op not in _READS or not _data_inputs(node):
            return None
        node = _producer(index, _data_inputs(node)[0])
    return None


def _statistic_name(const_name: str) -> str | None:
    """ "moving_mean"/"moving_variance" when a Const is named as a layer's moving statistic."""
    last = const_name.rsplit("/", 1)[-1]
    return last if last in (MOVING_MEAN, MOVING_VARIANCE) else None


def _is_vector_const(node: NodeDef) -> bool:
    """A Const holding one value per channel (the moving statistics are vectors)."""
    shape = node.attr["value"].tensor.tensor_shape
    return not shape.unknown_rank and len(shape.dim) == 1 and shape.dim[0].size > 0


_TOWER_PREFIX = re.compile(r"^(?:tower|Tower|Card|card|clone|replica|gpu|GPU)_?\d+/")


def _by_scope(index: GraphIndex, scope: str) -> tuple[str | None, str | None]:
    """``scope/moving_mean`` and ``scope/moving_variance`` Consts, or those of the scope without
    its tower prefix.

    Tower copies (``tower_0/net/bn``) share their variables (``net/bn/moving_mean``), so a leading
    tower scope (``tower_N``, ``Card_N``, ``clone_N``, ``replica_N``, ``gpu_N``) may be dropped —
    only that: dropping any other scope would pair ``head/bn`` with another layer's ``bn``.
    """
    if not scope:
        return None, None
    candidates = [scope]
    tower = _TOWER_PREFIX.match(scope)
    if tower:
        candidates.append(scope[tower.end() :])
    for prefix in candidates:
        mean, variance = index.nodes.get(f"{prefix}/{MOVING_MEAN}"), index.nodes.get(f"{prefix}/{MOVING_VARIANCE}")
        if mean is not None and variance is not None and mean.op == "Const" and variance.op == "Const":
            return str(mean.name), str(variance.name)
    return None, None


def _by_update(index: GraphIndex, batch_statistic: str) -> str | None:
    """The moving statistic the moving-average update subtracts ``batch_statistic`` from.

    ``AssignMovingAvg/sub = Sub(moving_mean/read, batch_mean)``: the update arithmetic survives
    freezing (its AssignSub does not), and it names the Const whatever it is called.
    """
    op_name, _, _ = batch_statistic.partition(":")
    for consumer_name in sorted(index.consumers.get(op_name, ())):
        consumer = index.nodes.get(consumer_name)
        if consumer is None or consumer.op != "Sub":
            continue
        inputs = _data_inputs(consumer)
        if len(inputs) == 2 and _same_tensor(inputs[1], batch_statistic):
            const = _const_behind(index, inputs[0])
            if const is not None and _is_vector_const(index.nodes[const]):
                return const
    return None


def _same_tensor(graph_input: str, tensor: str) -> bool:
    def canonical(name: str) -> str:
        return name if ":" in name else f"{name}:0"

    return canonical(graph_input) == canonical(tensor)


def _renorm(index: GraphIndex, scope: str) -> str | None:
    if any(f"{scope}/{name}" in index.nodes for name in _RENORM_STATISTICS):
        return "batch renormalization (renorm=True) corrects with batch statistics too"
    return None


def _fused_site(index: GraphIndex, node: NodeDef) -> BatchNormSite | None:
    if "is_training" not in node.attr or not node.attr["is_training"].b:
        return None
    inputs = _data_inputs(node)
    if len(inputs) < 5:
        return None
    source = _producer(index, inputs[0])
    if source is not None and source.op in _CONDITIONAL:
        return None
    scope = _scope(node.name)
    # The training-mode op's own mean/variance inputs are the moving statistics in
    # tf.compat.v1.layers (it reads them for the fused running-average update); slim passes
    # empty constants, and tf_keras a Bessel-corrected variance, so fall back to scope and update.
    mean, variance = _const_behind(index, inputs[3]), _const_behind(index, inputs[4])
    if (
        mean is None
        or _statistic_name(mean) != MOVING_MEAN
        or variance is None
        or _statistic_name(variance) != MOVING_VARIANCE
    ):
        mean, variance = _by_scope(index, scope)
    if mean is None or variance is None:
        mean, variance = _by_update(index, f"{node.name}:1"), _by_update(index, f"{node.name}:2")
    return BatchNormSite(
        kind="fused",
        ops=(str(node.name),),
        scope=scope,
        moving_mean=mean,
        moving_variance=variance,
        unrewritable=_renorm(index, scope),
    )


def _axes(index: GraphIndex, graph_input: str) -> tuple[int, ...] | None:
    """The reduction axes of a Mean, when they are a Const."""
    node = _producer(index, graph_input)
    if node is None or node.op != "Const":
        return None
    values = tensorflow().make_ndarray(node.attr["value"].tensor)
    return tuple(int(v) for v in values.reshape(-1))


def _follow_single(index: GraphIndex, op_name: str, op_type: str) -> str | None:
    """The one consumer of ``op_name`` of type ``op_type``, or None."""
    found = [c for c in index.consumers.get(op_name, ()) if index.nodes[c].op == op_type]
    return found[0] if len(found) == 1 else None


def _reaches_rsqrt(index: GraphIndex, op_name: str, hops: int = 4) -> bool:
    """True when the variance feeds ``Rsqrt(variance + epsilon)`` — tf.nn.batch_normalization's form."""
    frontier = {op_name}
    for _ in range(hops):
        following: set[str] = set()
        for name in frontier:
            for consumer in index.consumers.get(name, ()):
                op = index.nodes[consumer].op
                if op == "Rsqrt":
                    return True
                if op in _TO_RSQRT:
                    following.add(consumer)
        frontier = following
    return False


def _moments_site(index: GraphIndex, mean_node: NodeDef) -> BatchNormSite | None:
    """The tf.nn.moments batch norm whose batch mean is ``mean_node``, or None."""
    inputs = _data_inputs(mean_node)
    if len(inputs) != 2:
        return None
    axes = _axes(index, inputs[1])
    if axes is None or 0 not in axes:  # over the batch axis: not a layer or instance norm
        return None
    source = _producer(index, inputs[0])
    if source is not None and source.op in _CONDITIONAL:
        return None
    # moments: variance = Mean(SquaredDifference(x, StopGradient(mean)), axes)
    stop = _follow_single(index, mean_node.name, "StopGradient")
    difference = _follow_single(index, stop or mean_node.name, "SquaredDifference")
    if difference is None:
        return None
    difference_inputs = _data_inputs(index.nodes[difference])
    if not any(_same_tensor(i, inputs[0]) for i in difference_inputs):
        return None
    variance_name = _follow_single(index, difference, "Mean")
    if variance_name is None:
        return None
    variance_inputs = _data_inputs(index.nodes[variance_name])
    if len(variance_inputs) != 2 or _axes(index, variance_inputs[1]) != axes:
        return None
    if not _reaches_rsqrt(index, variance_name):
        return None
    batch_mean = _follow_single(index, mean_node.name, "Squeeze") or mean_node.name
    batch_variance = _follow_single(index, variance_name, "Squeeze") or variance_name
    # tf.nn.moments names its ops S/moments/mean: the layer's scope is S.
    moments_scope = _scope(mean_node.name)
    scope = _scope(moments_scope) if moments_scope.rsplit("/", 1)[-1] == "moments" else moments_scope
    moving_mean, moving_variance = _by_scope(index, scope)
    if moving_mean is None or moving_variance is None:
        moving_mean, moving_variance = _by_update(index, batch_mean), _by_update(index, batch_variance)
    return BatchNormSite(
        kind="moments",
        ops=(str(mean_node.name), variance_name),
        scope=scope,
        batch_mean=batch_mean,
        batch_variance=batch_variance,
        moving_mean=moving_mean,
        moving_variance=moving_variance,
        unrewritable=_renorm(index, scope),
    )


# --- rewriting -------------------------------------------------------------------------------


def _variance_computation(graph_def: GraphDef, mean_op: str) -> frozenset[str]:
    """The consumers of the batch mean that compute the variance (StopGradient, SquaredDifference):
    they must keep reading the batch mean."""
    return frozenset(
        node.name
        for node in graph_def.node
        if node.op in ("StopGradient", "SquaredDifference") and any(input_op_name(i) == mean_op for i in node.input)
    )


def _substitute(
    graph_def: GraphDef, nodes: dict[str, NodeDef], statistic: str, moving: str, taken: set[str], exempt: frozenset[str]
) -> None:
    """Make what reads ``statistic`` read ``moving`` instead.

    A Squeeze (the moments' usual [C] output) becomes Identity(moving) in place, so every reader
    follows under the same name. A Mean with kept dimensions ([1, 1, 1, C]) is replaced, for its
    readers outside ``exempt``, by ``moving`` reshaped to its shape.
    """
    node = nodes[statistic]
    if node.op == "Squeeze":
        node.op = "Identity"
        del node.input[:]
        node.input.append(moving)
        for attr in list(node.attr):
            if attr != "T":
                del node.attr[attr]
        return
    dtype = node.attr["T"].type
    shape = graph_def.node.add(name=unique_op_name(f"{statistic}/moving_shape", taken), op="Shape")
    shape.input.append(statistic)
    shape.attr["T"].type = dtype
    shape.attr["out_type"].type = 3  # DT_INT32
    reshaped = graph_def.node.add(name=unique_op_name(f"{statistic}/moving", taken), op="Reshape")
    reshaped.input.extend([moving, shape.name])
    reshaped.attr["T"].type = dtype
    reshaped.attr["Tshape"].type = 3
    nodes[shape.name], nodes[reshaped.name] = shape, reshaped
    for reader in graph_def.node:
        if reader.name in exempt or reader.name in (shape.name, reshaped.name):
            continue
        for position, graph_input in enumerate(reader.input):
            if not graph_input.startswith("^") and _same_tensor(graph_input, statistic):
                reader.input[position] = reshaped.name


def _drop_newly_dead(graph_def: GraphDef, consumed_before: set[str], keep: frozenset[str]) -> None:
    """Remove ops the rewrite left unconsumed (the batch moments), so no new sink appears.

    Only ops that had a consumer before the rewrite go, never a placeholder nor an op in
    ``keep``: an op that was a sink already (an output) stays.
    """
    while True:
        consumed = {input_op_name(i) for node in graph_def.node for i in node.input}
        dead = {
            node.name
            for node in graph_def.node
            if node.name in consumed_before
            and node.name not in consumed
            and node.name not in keep
            and node.op not in ("Placeholder", "PlaceholderWithDefault")
        }
        if not dead:
            return
        kept = [node for node in graph_def.node if node.name not in dead]
        del graph_def.node[:]
        graph_def.node.extend(kept)
