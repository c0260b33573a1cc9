"""TF1 checkpoints: a prefix, a directory with a ``checkpoint`` state file, or a ``.meta`` file;
a GraphDef plus ``--checkpoint PREFIX`` (the freeze_graph case); or ``--builder MODULE:FUNC``
for a checkpoint that has no graph at all.

The graph is imported, the checkpoint restored into a session, and the session's values folded
into constants (TensorFlow's own convert_variables_to_constants). The reference runner is that
same restored session running the original, unfrozen graph.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from packager.errors import SourceError, UsageError, first_line
from packager.graph.frozen_model import VARIABLE_OPS, LoadedSource, TensorRef
from packager.graph.io_discovery import GraphIndex, gradient_roots, is_training_machinery, training_subgraphs
from packager.graph.iterators import replace_data_inputs
from packager.graph.legacy_repair import repair_legacy_graph
from packager.graph.surgery import repair_frozen_functions, repair_reference_ops
from packager.modes import EMA_MODES, EmaMode
from packager.sources.graph_def import read_graph_def
from packager.tf_runtime import reference_session, tensorflow

if TYPE_CHECKING:
    import tensorflow as tf
    from tensorflow.core.framework.graph_pb2 import GraphDef
    from tensorflow.core.protobuf.meta_graph_pb2 import MetaGraphDef
    from tensorflow.python.training.py_checkpoint_reader import CheckpointReader

STATE_FILE = "checkpoint"
META_SUFFIX = ".meta"
# A shard of a checkpoint's values: PREFIX.data-00000-of-00002 (the count says which are missing).
_SHARD = re.compile(r"\.data-(\d+)-of-(\d+)$")


def _shard_number(name: str) -> tuple[int, int]:
    """(index, count) of a ``.data-00000-of-00002`` shard; only names _SHARD matched get here."""
    match = _SHARD.search(name)
    assert match is not None, name
    return int(match.group(1)), int(match.group(2))


# A path a state file written on Windows holds: C:\train\model.ckpt or \\server\share\model.ckpt.
_WINDOWS_ABSOLUTE = re.compile(r"^([A-Za-z]:[\\/]|\\\\)")


@dataclass(frozen=True)
class CheckpointFiles:
    """A resolved checkpoint: where its files are and which of them the source consists of.

    The prefix is held as a directory and a basename, not one Path: ``Saver.save(sess, "DIR/")``
    writes ``DIR/.index`` and ``DIR/.data-*`` (an empty basename), which a Path cannot spell —
    ``Path("DIR/")`` is ``DIR``.

    Attributes:
        directory: where the checkpoint's files are.
        basename: the prefix's last component; may be empty.
        meta_graph: the .meta file, when there is one.
        state_file: the ``checkpoint`` state file read to find the prefix, if one was.
        relocated_from: what the state file named when it was a path from another machine and
            the checkpoint of that basename in ``directory`` was used instead.
    """

    directory: Path
    basename: str
    meta_graph: Path | None
    state_file: Path | None = None
    relocated_from: str | None = None

    @property
    def prefix(self) -> str:
        """The prefix as TensorFlow takes it ("DIR/" for an empty basename)."""
        return os.path.join(self.directory, self.basename)

    @property
    def index(self) -> Path:
        return self.directory / f"{self.basename}.index"

    def shards(self) -> list[Path]:
        """The .data-NNNNN-of-MMMMM files of this prefix (not of model.ckpt-10 for model.ckpt-1)."""
        return sorted(
            p
            for p in self.directory.iterdir()
            if p.name.startswith(f"{self.basename}.data-") and _SHARD.fullmatch(p.name[len(self.basename) :])
        )

    def files(self) -> list[Path]:
        """Resolved paths of every file loading this checkpoint reads (for provenance digests)."""
        read = [self.state_file] if self.state_file else []
        read += [self.index, *self.shards()]
        read += [self.meta_graph] if self.meta_graph else []
        return [p.resolve() for p in read]

    def details(self) -> dict[str, str]:
        """Facts for inspect and provenance: the prefix used and, when remapped, what was named."""
        facts = {"checkpoint": self.prefix}
        if self.relocated_from is not None:
            facts["state_file_named"] = self.relocated_from
        return facts


def looks_like_checkpoint(path: Path) -> bool:
    """True for a checkpoint prefix, a .meta file, or a directory with a checkpoint state file."""
    if path.is_dir():
        return (path / STATE_FILE).is_file()
    if _is_meta(path) and path.is_file():
        return True
    return Path(f"{path}.index").is_file()


def _is_meta(path: Path) -> bool:
    # ".meta" alone is the meta graph of an empty-basename checkpoint; Path gives it no suffix.
    return path.suffix == META_SUFFIX or path.name == META_SUFFIX


def _split_saved_path(named: str) -> tuple[str, str]:
    """(directory, basename) of a path a state file holds, written on POSIX or Windows.

    Plain string splitting on purpose: the basename may be empty ("/train/" from
    Saver.save(sess, "/train/")), which os.path.basename keeps but Path drops.
    """
    separators = "/\\" if _WINDOWS_ABSOLUTE.match(named) else "/"
    cut = max(named.rfind(s) for s in separators)
    return named[: cut + 1], named[cut + 1 :]


def _read_state_file(directory: Path) -> tuple[Path, str]:
    """The state file of ``directory`` and the checkpoint path it names; SourceError if none."""
    tensorflow()
    from google.protobuf import text_format
    from tensorflow.python.training.checkpoint_state_pb2 import CheckpointState

    state_file = directory / STATE_FILE
    if not state_file.is_file():
        raise SourceError(
            f"{directory} has no '{STATE_FILE}' state file: give the checkpoint prefix (the path without .index)"
        )
    state = CheckpointState()
    try:
        text_format.Parse(state_file.read_text(encoding="utf-8"), state)
    except (text_format.ParseError, UnicodeDecodeError, OSError) as exc:
        raise SourceError(
            f"{state_file} is not a checkpoint state file ({first_line(exc)}): give the checkpoint prefix instead"
        ) from None
    if not state.model_checkpoint_path:
        raise SourceError(f"{state_file} names no checkpoint: give the checkpoint prefix (the path without .index)")
    return state_file, state.model_checkpoint_path


def _resolve_state_file(directory: Path) -> CheckpointFiles:
    """The checkpoint a directory's state file means, read from inside that directory.

    Training jobs write absolute paths into the state file (model_checkpoint_path:
    "/home/someone/train/model.ckpt-1000"), so a checkpoint dir copied to another machine names
    a place that does not exist here: the checkpoint of that basename beside the state file is
    meant. When the named place does exist elsewhere, reading from it would take weights from
    outside the source the user named, so that is refused unless the user names it.
    """
    state_file, named = _read_state_file(directory)
    named_dir, basename = _split_saved_path(named)
    is_absolute = named.startswith("/") or bool(_WINDOWS_ABSOLUTE.match(named))
    local = CheckpointFiles(directory, basename, None, state_file)
    if not is_absolute:  # relative to the state file's directory, as TensorFlow reads it
        nested = CheckpointFiles(directory / named_dir, basename, None, state_file) if named_dir else local
        if not nested.index.is_file():
            raise SourceError(
                f"{state_file} names checkpoint {named}, but {nested.index} does not exist: the checkpoint is incomplete"
            )
        if not nested.directory.resolve().is_relative_to(directory.resolve()):
            raise SourceError(
                f"{state_file} names checkpoint {named}, outside {directory}: give its prefix "
                f"{nested.prefix} as the source if those are the weights to convert"
            )
        return nested
    named_here = not _WINDOWS_ABSOLUTE.match(named) and Path(f"{named}.index").is_file()
    if named_here:
        if Path(named_dir).resolve() == directory.resolve():
            return local  # the directory where it was trained, or a link to it
        raise SourceError(
            f"{state_file} names checkpoint {named}, outside {directory}: tfpack reads weights only from "
            f"the source you name — give {named} as the source to convert it"
            + (f", or {local.prefix} for the one in {directory}" if local.index.is_file() else "")
        )
    if not local.index.is_file():
        raise SourceError(
            f"{state_file} names checkpoint {named}, which is not on this machine, and {directory} has no "
            f"{basename}.index either: give the checkpoint prefix (the path without .index)"
        )
    return CheckpointFiles(directory, basename, None, state_file, relocated_from=named)


def resolve_checkpoint(path: Path) -> CheckpointFiles:
    """Find the prefix (the latest, for a directory) and meta graph a checkpoint path means.

    Raises:
        SourceError: no checkpoint there, a state file naming one elsewhere, or its .index or
            .data files are missing.
    """
    if path.is_dir():
        checkpoint = _resolve_state_file(path)
    elif _is_meta(path):
        checkpoint = CheckpointFiles(path.parent, path.name[: -len(META_SUFFIX)], None)
    else:
        checkpoint = CheckpointFiles(path.parent, path.name, None)
    if not checkpoint.index.is_file():
        raise SourceError(
            f"checkpoint {checkpoint.prefix} has no {checkpoint.index.name}: give the checkpoint prefix (path without .index)"
        )
    shards = checkpoint.shards()
    if not shards:
        raise SourceError(f"checkpoint {checkpoint.prefix} has no .data-* file: the checkpoint is incomplete")
    numbered = [_shard_number(shard.name) for shard in shards]
    expected = numbered[0][1]
    present = {index for index, _ in numbered}
    missing = sorted(set(range(expected)) - present)
    if missing:
        raise SourceError(
            f"checkpoint {checkpoint.prefix} lacks {len(missing)} of its {expected} .data shards "
            f"(e.g. {checkpoint.basename}.data-{missing[0]:05d}-of-{expected:05d}): the checkpoint is incomplete"
        )
    meta = checkpoint.directory / f"{checkpoint.basename}{META_SUFFIX}"
    return CheckpointFiles(
        checkpoint.directory,
        checkpoint.basename,
        meta if meta.is_file() else None,
        checkpoint.state_file,
        checkpoint.relocated_from,
    )


def checkpoint_reader(prefix: str) -> CheckpointReader:
    """A reader of the checkpoint at ``prefix`` exactly.

    Not tf.train.load_checkpoint: given "DIR/" (an empty basename) it sees a directory and goes
    to the state file, which may name a path on another machine.
    """
    return tensorflow().compat.v1.train.NewCheckpointReader(prefix)


def read_checkpoint_variables(prefix: str) -> dict[str, tuple[str, list[int]]]:
    """{variable name: (dtype, shape)} from a checkpoint's index; SourceError when it is corrupt."""
    tf = tensorflow()
    try:
        reader = checkpoint_reader(prefix)
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError) as exc:
        raise SourceError(f"checkpoint {prefix} is unreadable (corrupt .index or .data?): {first_line(exc)}") from None
    return {name: (dtypes[name].name, shapes[name]) for name in shapes}


_INITIALIZATION_CHECKS = frozenset({"VarIsInitializedOp", "IsVariableInitialized"})


# Ops tf.gradients builds: under gradients/, gradients_1/, tower_0/gradients/.
_GRADIENT_SCOPE = re.compile(r"(^|/)gradients(_\d+)?/")


def _gradient_dependent(index: GraphIndex) -> set[str]:
    """Ops that depend, through data or control edges, on a gradient.

    Inference never needs a gradient, but the optimizer's ops live under its own name (Adam/,
    GradientDescent/, Momentum/ — any name): the sparse updates of resource variables
    (ResourceSparseApplyAdam, ResourceScatterAdd), Adam's beta-power updates and the step counter,
    which run after the updates. Kept, they would read the variables freezing turns into
    constants and the frozen graph would not import.
    """
    seen: set[str] = set()
    stack = [name for name in index.nodes if _GRADIENT_SCOPE.search(name)]
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(index.consumers.get(name, ()))
    return seen


def _keep_node_names(graph_def: GraphDef) -> list[str]:
    """The ops freezing keeps (with what they need): all but training machinery, what runs after
    the gradients, and variable initialization logic (ops that ask whether a variable is
    initialized cannot be frozen: the variable becomes a constant)."""
    index = GraphIndex.build(graph_def)
    after_gradients = _gradient_dependent(index)
    initialization = set()
    stack = [n.name for n in graph_def.node if n.op in _INITIALIZATION_CHECKS]
    while stack:
        name = stack.pop()
        if name not in initialization:
            initialization.add(name)
            stack.extend(index.consumers.get(name, ()))
    # Batch norms' moving statistics are kept even when only their update (training machinery)
    # reads them: --batchnorm inference rewrites a training-mode batch norm to use them.
    moving_statistics = ("/moving_mean", "/moving_variance")
    return [
        n.name
        for n in graph_def.node
        if (
            not is_training_machinery(n)
            and n.op not in VARIABLE_OPS
            and n.name not in initialization
            and n.name not in after_gradients
        )
        or (n.op in VARIABLE_OPS and f"/{n.name}".endswith(moving_statistics))
    ]


def _freeze(session: tf.compat.v1.Session, graph_def: GraphDef, source: Path) -> GraphDef:
    tf = tensorflow()
    try:
        with session.graph.as_default():
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                session, graph_def, _keep_node_names(graph_def)
            )
        # Training branches kept behind a tf.cond(is_training) still assign to what are now
        # constants; TensorFlow 2 would refuse to import them.
        return repair_frozen_functions(repair_reference_ops(frozen))
    except (tf.errors.OpError, ValueError, KeyError) as exc:
        raise SourceError(
            f"cannot fold the checkpoint's variables of {source} into constants: {first_line(exc)}"
        ) from None


def _restore(session: tf.compat.v1.Session, saver: tf.compat.v1.train.Saver, prefix: str) -> None:
    tf = tensorflow()
    try:
        # Inside the graph: outside it TF2 runs Saver.restore eagerly and finds no variables.
        with session.graph.as_default():
            saver.restore(session, prefix)
    except (tf.errors.OpError, ValueError) as exc:
        raise SourceError(f"cannot restore checkpoint {prefix}: {first_line(exc)}") from None


def _source(
    path: Path, session: tf.compat.v1.Session, graph_def: GraphDef, files: list[Path], details: dict[str, Any]
) -> LoadedSource:
    """A LoadedSource whose reference runner is the restored session on the unfrozen graph."""
    frozen = _freeze(session, graph_def, path)
    training_fed = _training_fed(graph_def)
    details["trained_graph"] = bool(training_fed)
    details["training_subgraphs"] = training_subgraphs(graph_def)  # freezing drops them: record now
    details["variables"] = sum(1 for n in graph_def.node if n.op in VARIABLE_OPS)

    def run_reference(
        feeds: Mapping[str, np.ndarray],
        inputs: list[TensorRef],
        outputs: list[TensorRef],
        fixed: Mapping[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        by_key = {r.key: r.tensor_name for r in inputs}
        feed_dict = {**fixed, **{by_key[k]: v for k, v in feeds.items()}}
        values = session.run([o.tensor_name for o in outputs], feed_dict=feed_dict)
        return {o.key: v for o, v in zip(outputs, values)}

    return LoadedSource(
        path=path,
        format="checkpoint",
        graph_def=frozen,
        inputs=None,
        outputs=None,
        files=files,
        run_reference=run_reference,
        details=details,
        training_fed=training_fed,
        losses=gradient_roots(graph_def),
    )


def _restored_source(
    path: Path,
    graph: tf.Graph,
    saver: tf.compat.v1.train.Saver,
    checkpoint: CheckpointFiles,
    stored: dict[str, tuple[str, list[int]]],
    ema: EmaMode,
    details: dict[str, Any],
) -> LoadedSource:
    """Restore the checkpoint into a session on ``graph``, apply EMA, and freeze it as a source."""
    session = reference_session(graph)
    _restore(session, saver, checkpoint.prefix)
    ema_report = _apply_ema(session, stored, ema, checkpoint.prefix)
    return _source(
        path, session, graph.as_graph_def(), checkpoint.files(), {**checkpoint.details(), "ema": ema_report, **details}
    )


def _training_fed(graph_def: GraphDef) -> frozenset[str]:
    """Inference-side ops whose every consumer is training machinery (a loss feeding gradients,
    forward values the gradients reuse): they dangle once the graph is frozen.

    A loss is one too whatever its name (Mean_1): with the gradients' Shape folded away nothing
    consumes it, yet it is where predictions are traced back from, never an output.
    """
    index = GraphIndex.build(graph_def)
    losses = gradient_roots(graph_def)
    after_gradients = _gradient_dependent(index)

    def training(name: str) -> bool:
        return name in after_gradients or name in losses or is_training_machinery(index.nodes[name])

    def only_training_consumes(name: str) -> bool:
        return all(training(c) for c in index.consumers.get(name, ()) if c in index.nodes)

    fed = {
        name
        for name in index.nodes
        if not training(name) and index.consumers.get(name) and only_training_consumes(name)
    }
    unnamed_losses = {
        name
        for name in losses
        if name in index.nodes and not is_training_machinery(index.nodes[name]) and only_training_consumes(name)
    }
    return frozenset(fed | unnamed_losses)


EMA_SUFFIX = "/ExponentialMovingAverage"


def _checkpoint_name(variable: tf.Variable) -> str:
    """The name a variable has in a checkpoint (a partition's full, unpartitioned name)."""
    slice_info = getattr(variable, "_save_slice_info", None)
    return slice_info.full_name if slice_info else variable.op.name


def _apply_ema(
    session: tf.compat.v1.Session, stored: dict[str, tuple[str, list[int]]], ema: EmaMode, prefix: str
) -> dict[str, object]:
    """After a plain restore, overwrite variables with their EMA shadows when asked or available.

    Shadows are read from the checkpoint and loaded into the live variables, slicing them for
    partitioned variables — a Saver cannot map one partition to a slice of a shadow's name.

    Returns:
        {"mode", "averaged", "raw"}: how many model variables got their average, how many kept raw values.
    """
    tf = tensorflow()
    if ema not in EMA_MODES:
        raise UsageError(f"--ema must be one of {', '.join(EMA_MODES)}, not {ema!r}")
    with session.graph.as_default():
        trainable = [v for v in tf.compat.v1.trainable_variables() if EMA_SUFFIX not in v.op.name]
        averaged = [v for v in trainable if _checkpoint_name(v) + EMA_SUFFIX in stored]
        if ema == "on" and not averaged:
            raise UsageError(f"--ema on: checkpoint {prefix} holds no ExponentialMovingAverage shadow variables")
        if ema == "off":
            averaged = []
        if averaged:
            reader = checkpoint_reader(prefix)
            for variable in averaged:
                try:
                    value = reader.get_tensor(_checkpoint_name(variable) + EMA_SUFFIX)
                except (tf.errors.OpError, ValueError) as exc:
                    raise SourceError(
                        f"cannot read the EMA shadow of {_checkpoint_name(variable)} from {prefix}: {first_line(exc)}"
                    ) from None
                slice_info = getattr(variable, "_save_slice_info", None)
                if slice_info:
                    value = value[tuple(slice(o, o + n) for o, n in zip(slice_info.var_offset, slice_info.var_shape))]
                variable.load(value, session)
    averaged_names = {_checkpoint_name(v) for v in averaged}
    raw_names = {_checkpoint_name(v) for v in trainable} - averaged_names
    return {"mode": ema, "averaged": len(averaged_names), "raw": len(raw_names)}


def read_meta_graph(path: Path) -> MetaGraphDef:
    """Parse a .meta file (MetaGraphDef) or raise SourceError."""
    tensorflow()
    from google.protobuf import message
    from tensorflow.core.protobuf import meta_graph_pb2

    try:
        return meta_graph_pb2.MetaGraphDef.FromString(path.read_bytes())
    except (message.DecodeError, OSError) as exc:
        raise SourceError(f"{path} is not a valid meta graph: {first_line(exc)}") from None


def load_checkpoint_with_meta_graph(path: Path, *, ema: EmaMode = "auto") -> LoadedSource:
    """A checkpoint whose .meta file holds the graph (tf.compat.v1.train.Saver's default).

    tf.data iterators and input queues in the graph are replaced by placeholders; with ``ema``
    auto/on, variables are restored from their ExponentialMovingAverage shadows.
    """
    tf = tensorflow()
    checkpoint = resolve_checkpoint(path)
    stored = read_checkpoint_variables(checkpoint.prefix)
    if checkpoint.meta_graph is None:
        raise SourceError(
            f"checkpoint {checkpoint.prefix} has no .meta graph: give the graph with "
            "'tfpack convert GRAPH.pb --checkpoint PREFIX' or build it with --builder MODULE:FUNC"
        )
    meta_graph = read_meta_graph(checkpoint.meta_graph)
    repaired = repair_legacy_graph(meta_graph.graph_def)
    graph_def, replaced = replace_data_inputs(repaired.graph_def)
    meta_graph.graph_def.CopyFrom(graph_def)
    graph = tf.Graph()
    with graph.as_default():
        try:
            saver = tf.compat.v1.train.import_meta_graph(meta_graph, clear_devices=True)
        except Exception as exc:  # ValueError, KeyError for unknown ops, TypeError for bad attrs
            raise SourceError(f"{checkpoint.meta_graph} is not a loadable meta graph: {first_line(exc)}") from None
        if saver is None:  # a meta graph exported without its saver
            saver = tf.compat.v1.train.Saver()
    return _restored_source(
        path,
        graph,
        saver,
        checkpoint,
        stored,
        ema,
        {"graph": "meta_graph", "replaced_inputs": [r.to_json() for r in replaced], "repairs": repaired.repairs},
    )


def load_graph_with_checkpoint(graph_path: Path, checkpoint_path: Path) -> LoadedSource:
    """A GraphDef (.pb/.pbtxt) whose variables' values are in a separate checkpoint."""
    tf = tensorflow()
    checkpoint = resolve_checkpoint(checkpoint_path)
    stored = read_checkpoint_variables(checkpoint.prefix)
    repaired = repair_legacy_graph(read_graph_def(graph_path))
    graph_def, replaced = replace_data_inputs(repaired.graph_def)
    variables = [n for n in graph_def.node if n.op in VARIABLE_OPS]
    missing = [n.name for n in variables if n.name not in stored]
    if missing:
        raise SourceError(
            f"checkpoint {checkpoint.prefix} has no value for {len(missing)} variable(s) of {graph_path.name} "
            f"(e.g. {missing[0]}): is it the checkpoint this graph was trained with?"
        )
    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.graph_util.import_graph_def(graph_def, name="")
        except (ValueError, TypeError, KeyError) as exc:
            raise SourceError(f"{graph_path} cannot be imported by TensorFlow: {first_line(exc)}") from None
        reader = checkpoint_reader(checkpoint.prefix)
        assignments = []
        for node in variables:
            stored_dtype, stored_shape = stored[node.name]
            graph_dtype = tf.as_dtype(node.attr["dtype"].type).name
            graph_shape = tf.TensorShape(node.attr["shape"].shape) if "shape" in node.attr else tf.TensorShape(None)
            if graph_dtype != stored_dtype or not graph_shape.is_compatible_with(stored_shape):
                raise SourceError(
                    f"variable {node.name} is {graph_dtype}{graph_shape.as_list() if graph_shape.rank is not None else ''} "
                    f"in {graph_path.name} but {stored_dtype}{stored_shape} in checkpoint {checkpoint.prefix}: "
                    "is it the checkpoint this graph was trained with?"
                )
            value = tf.constant(reader.get_tensor(node.name))
            handle = graph.get_operation_by_name(node.name).outputs[0]
            if node.op == "VarHandleOp":
                assignments.append(tf.raw_ops.AssignVariableOp(resource=handle, value=value))
            else:
                assignments.append(tf.raw_ops.Assign(ref=handle, value=value))
    session = reference_session(graph)
    try:
        session.run(assignments)
    except tf.errors.OpError as exc:
        raise SourceError(
            f"cannot load checkpoint {checkpoint.prefix} into {graph_path.name}: {first_line(exc)}"
        ) from None
    return _source(
        graph_path,
        session,
        graph_def,
        [graph_path.resolve(), *checkpoint.files()],
        {
            **checkpoint.details(),
            "graph": graph_path.name,
            "replaced_inputs": [r.to_json() for r in replaced],
            "repairs": repaired.repairs,
        },
    )


BUILDER_CONTRACT = (
    "FUNC() must build the inference graph in the default graph and return a dict {output_key: tensor}, "
    "a tuple ({input_key: tensor}, {output_key: tensor}), or None to let tfpack discover the signature"
)


def load_checkpoint_with_builder(checkpoint_path: Path, builder: str, *, ema: EmaMode = "auto") -> LoadedSource:
    """A checkpoint with no graph: ``MODULE:FUNC`` builds the inference graph, then it is restored.

    The contract (README, "--builder"): FUNC takes no arguments and builds placeholders and the
    inference ops in the default graph (tf.compat.v1 style), creating variables with the names the
    checkpoint uses. It returns {output_key: tensor} (the inputs are then the placeholders those
    outputs need), or ({input_key: tensor}, {output_key: tensor}); the tensors become the serving
    signature as a Keras model's or a SavedModel's would. None (builders written before the
    contract) leaves the signature to discovery.

    Raises:
        UsageError: FUNC cannot be imported, takes arguments or returns anything else.
        SourceError: FUNC raised, or its variables are not the checkpoint's.
    """
    tf = tensorflow()
    checkpoint = resolve_checkpoint(checkpoint_path)
    stored = read_checkpoint_variables(checkpoint.prefix)
    build = _import_builder(builder)
    graph = tf.Graph()
    with graph.as_default():
        try:
            returned = build()
        except Exception as exc:  # the user's code: report it, do not crash
            raise SourceError(f"--builder {builder} failed: {type(exc).__name__}: {first_line(exc)}") from None
        declared = _declared_signature(returned, graph, builder)
        if not tf.compat.v1.global_variables():
            raise SourceError(f"--builder {builder} created no variables to restore from {checkpoint.prefix}")
        missing = sorted({_checkpoint_name(v) for v in tf.compat.v1.global_variables()} - stored.keys())
        if missing:
            raise SourceError(
                f"--builder {builder} made variable(s) the checkpoint {checkpoint.prefix} lacks "
                f"(e.g. {missing[0]}): the builder must use the checkpoint's variable names"
            )
        saver = tf.compat.v1.train.Saver()
    source = _restored_source(
        checkpoint_path,
        graph,
        saver,
        checkpoint,
        stored,
        ema,
        {"graph": f"builder {builder}", "builder_signature": "discovered" if declared is None else "declared"},
    )
    if declared is not None:
        source.inputs, source.outputs = declared
    return source


def _declared_signature(
    returned: object, graph: tf.Graph, builder: str
) -> tuple[list[TensorRef], list[TensorRef]] | None:
    """The signature a builder's return value declares (None: it declares none), or UsageError."""
    from packager.graph.io_discovery import discover_inputs, signature_keys
    from packager.tf_runtime import numpy_dtype_name, shape_tuple

    if returned is None:
        return None
    if isinstance(returned, dict):
        inputs, outputs = None, returned
    elif isinstance(returned, tuple) and len(returned) == 2 and all(isinstance(part, dict) for part in returned):
        inputs, outputs = returned
    else:
        raise UsageError(f"--builder {builder} returned a {type(returned).__name__}: {BUILDER_CONTRACT}")
    if not outputs:
        raise UsageError(f"--builder {builder} returned no output tensors: {BUILDER_CONTRACT}")
    tf = tensorflow()

    def refs(tensors: dict[object, object], role: str) -> list[TensorRef]:
        result = []
        for key, tensor in tensors.items():
            if not isinstance(key, str) or not key:
                raise UsageError(
                    f"--builder {builder}: {role} key {key!r} is not a non-empty string: {BUILDER_CONTRACT}"
                )
            if not isinstance(tensor, tf.Tensor) or tensor.graph is not graph:
                what = "a tensor of another graph" if isinstance(tensor, tf.Tensor) else f"a {type(tensor).__name__}"
                raise UsageError(
                    f"--builder {builder}: {role} {key!r} is {what}, not a tensor of the default graph: {BUILDER_CONTRACT}"
                )
            result.append(TensorRef(key, tensor.name, numpy_dtype_name(tensor.dtype), shape_tuple(tensor.shape)))
        return result

    output_refs = refs(outputs, "output")
    if inputs is None:
        # The dict form: the inputs are the placeholders the outputs need, keyed by their names.
        names = discover_inputs(GraphIndex.build(graph.as_graph_def()), [r.tensor_name for r in output_refs])
        if not names:
            raise UsageError(
                f"--builder {builder}: no placeholder feeds its outputs: return ({{input_key: tensor}}, {{output_key: tensor}})"
            )
        inputs = {key: graph.get_tensor_by_name(name) for key, name in zip(signature_keys(names), names)}
    return refs(inputs, "input"), output_refs


def _import_builder(builder: str) -> Callable[[], object]:
    module_name, _, function_name = builder.partition(":")
    if not module_name or not function_name:
        raise UsageError(f"--builder {builder!r} must be MODULE:FUNC, e.g. mypkg.model:build_inference_graph")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(
            f"--builder: cannot import {module_name}: {first_line(exc)}: put the directory holding it on "
            "PYTHONPATH (e.g. PYTHONPATH=src tfpack convert ...)"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UsageError(f"--builder: {module_name} has no function {function_name}")
    try:
        required = [
            p.name
            for p in inspect.signature(function).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
    except (TypeError, ValueError):  # builtins without a signature: let the call tell
        required = []
    if required:
        raise UsageError(f"--builder {builder} takes arguments ({', '.join(required)}): {BUILDER_CONTRACT}")
    return function
