"""Scan a model for ops that have no business in a model server, decided by what each op does.

A SavedModel is code: an op can read or write the server's file system, reach the network, run
Python, or print tensors — secrets included — into the server's logs. TF Serving runs whatever
the graph holds, so tfpack refuses such ops unless the release engineer allows each op type by
name (``--allow-op``).

The decision is made per op *type* from TensorFlow's own op registry (the OpDef: its input
names and types, its attrs, ``is_stateful``), not from a short list of names, in this order:

1. **unknown** — an op type TensorFlow does not register (a custom op) is denied: the scan cannot
   know what it does, and a stock TF Serving cannot load it.
2. **effectful categories** — every op that matches one is denied:

   - *python*: PyFunc, PyFuncStateless, EagerPyFunc (any ``*PyFunc*``): run Python code.
   - *printing*: Print, PrintV2, DumpTensor, every ``Debug*`` op, summary writers
     (``Write*Summary``, ``CreateSummary*Writer``, ...), stats aggregators: tensors into logs,
     event files or a debugger.
   - *checkpoint*: Save/SaveV2/SaveSlices/MergeV2Checkpoints/Restore/RestoreV2/RestoreSlice and
     kin. Exempt only inside the SavedModel's own saver (``saver_def``), which is how a server
     loads the variables.
   - *dataset*: every tf.data op whatever its name — a name containing ``Dataset`` or
     ``Iterator``, or an input/output named like a dataset or iterator — and every TF1 reader
     (``*Reader*``, a ``reader_handle`` input). Datasets read and write files
     (TextLineDataset, TFRecordDataset, FixedLengthRecordDataset, DatasetToTFRecord,
     SaveDataset, CacheDataset, snapshots), databases (SqlDataset) and services (DataService);
     an inference graph needs none of them.
   - *network*: an input naming an address, protocol or database URI; RPC, remote calls,
     collectives, NCCL, send/receive, in/outfeed, debug URLs.
   - *file system*: ReadFile, WriteFile, MatchingFiles, ImmutableConst, and any op whose
     DT_STRING input is named like a path (``filename``, ``filenames``, ``file_pattern``,
     ``path``, ``prefix``, ``directory``, ``logdir``, ...) or whose attr names a file
     (``vocab_file``, ``descriptor_source`` other than ``local://``, ...): vocabulary tables
     initialized from a file among them.
   - *environment*: ops that reach outside the request: session-handle tensors that persist
     between requests, file-system configuration, sleeps.
   - *native code*: XLA custom calls, which call native functions the scan cannot see.

3. **stateful, unclassified** — a registered op TensorFlow marks stateful that is in none of
   the known in-process categories below is denied too: side effects tfpack has not vetted.
   Known in-process (allowed): variables and resource updates, random number generators
   (reported as notices: outputs vary between identical requests), control flow and function
   calls, assertions and numeric checks, TensorArrays, stacks and queues, lookup tables (not
   their file initializers), mutexes, sparse-tensor maps, boosted trees, cuDNN RNNs.
4. Everything else — registered, not stateful, no path-like input — is pure computation.

What is scanned: every node of a graph and every function in its library (reachable or not);
for a SavedModel, per meta graph, everything its signatures reach (``__saved_model_init_op``
included), its main/legacy-init ops and table initializers, its saver's save and restore ops,
every library function, and its assets (asset paths must stay inside ``assets/``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from packager.tf_runtime import tensorflow

if TYPE_CHECKING:
    from tensorflow.core.framework.function_pb2 import FunctionDef
    from tensorflow.core.framework.graph_pb2 import GraphDef
    from tensorflow.core.framework.node_def_pb2 import NodeDef
    from tensorflow.core.framework.op_def_pb2 import OpDef
    from tensorflow.core.protobuf.meta_graph_pb2 import MetaGraphDef
    from tensorflow.core.protobuf.saved_model_pb2 import SavedModel

# Ops that draw random numbers each time they run (the stateful ones), and the stateless ones
# whose seed usually comes from a counter: random augmentation or dropout left in a graph.
RANDOM_OP_PREFIXES = (
    "Random",
    "TruncatedNormal",
    "ParameterizedTruncatedNormal",
    "Multinomial",
    "Stateful",
    "StatelessRandom",
    "StatelessTruncatedNormal",
    "StatelessMultinomial",
    "StatelessParameterized",
    "SampleDistortedBoundingBox",
    "RngSkip",
    "RngReadAndSkip",
    "NonDeterministicInts",
    "StatelessSampleDistortedBoundingBox",
    "StatelessShuffle",
)
# "Stateful" above is for StatefulUniform & co., not for a function call.
_NOT_RANDOM = frozenset({"StatefulPartitionedCall"})

# --- categories -------------------------------------------------------------------------------

PYTHON = "runs Python code"
PRINTING = "prints tensors (possibly secrets) into the server's log, event files or a debugger"
CHECKPOINT = "reads or writes checkpoints on the server's file system"
DATASET = "a tf.data or TF1 reader op (datasets read and write files, databases, services)"
NETWORK = "reaches the network (addresses, RPC, remote calls, collectives, send/receive)"
FILE_SYSTEM = "reads, writes or lists the server's file system"
ENVIRONMENT = "reaches outside the request (session state kept between requests, file-system configuration, sleeps)"
NATIVE = "calls native code the scan cannot see into (an XLA custom call)"
UNCLASSIFIED = "a stateful op whose side effects tfpack has not classified"
UNKNOWN = "custom op unknown to TensorFlow: a stock TF Serving cannot load it"

# Op type -> reason, for ops whose effect their OpDef does not show (no path-like input).
_NAMED: dict[str, str] = {
    "ReadFile": "reads the server's file system",
    "WriteFile": "writes the server's file system",
    "MatchingFiles": "lists the server's file system",
    "DeleteFile": "deletes from the server's file system",
    "ImmutableConst": "memory-maps a file from the server's file system",
    "Print": PRINTING,
    "PrintV2": PRINTING,
    "DumpTensor": PRINTING,
    "ImportEvent": PRINTING,
    "CalibrationStatisticsSaver": PRINTING,
    "Save": CHECKPOINT,
    "SaveV2": CHECKPOINT,
    "SaveSlices": CHECKPOINT,
    "MergeV2Checkpoints": CHECKPOINT,
    "Restore": CHECKPOINT,
    "RestoreV2": CHECKPOINT,
    "RestoreSlice": CHECKPOINT,
    "DTensorRestoreV2": CHECKPOINT,
    "LoadAndRemapMatrix": CHECKPOINT,
    # Tensors stored in the session outlive the request: one client's data reaches the next.
    "GetSessionHandle": ENVIRONMENT,
    "GetSessionHandleV2": ENVIRONMENT,
    "GetSessionTensor": ENVIRONMENT,
    "DeleteSessionTensor": ENVIRONMENT,
    "FileSystemSetConfiguration": ENVIRONMENT,
    "SleepOp": ENVIRONMENT,
    "SleepIdentityOp": ENVIRONMENT,
    "XlaCustomCall": NATIVE,
    "XlaCustomCallV2": NATIVE,
    "_Send": NETWORK,
    "_Recv": NETWORK,
    "_HostSend": NETWORK,
    "_HostRecv": NETWORK,
    "Send": NETWORK,
    "Recv": NETWORK,
    "WorkerHeartbeat": NETWORK,
    "CrossReplicaSum": NETWORK,
    "AllToAll": NETWORK,
}
# The checkpoint ops a SavedModel's own saver may hold: the server runs its restore op (with the
# variables path fed) to load the weights; nothing runs its save op.
SAVER_OPS = frozenset(op for op, reason in _NAMED.items() if reason == CHECKPOINT)
# What a loader runs to read the variables; the others only write checkpoints.
RESTORE_OPS = frozenset({"Restore", "RestoreV2", "RestoreSlice"})

# Op-name fragments -> category, for families whose every member has the effect.
_NAME_FRAGMENTS: tuple[tuple[str, str], ...] = (
    ("PyFunc", PYTHON),
    ("Dataset", DATASET),
    ("Iterator", DATASET),
    ("Reader", DATASET),
    ("Rpc", NETWORK),
    ("Remote", NETWORK),
    ("Collective", NETWORK),
    ("Nccl", NETWORK),
    ("DataService", NETWORK),
    ("Infeed", NETWORK),
    ("Outfeed", NETWORK),
    ("SendTo", NETWORK),
    ("RecvFrom", NETWORK),
    ("SendFrom", NETWORK),
    ("RecvAt", NETWORK),
    ("XlaSend", NETWORK),
    ("XlaRecv", NETWORK),
    ("SummaryWriter", PRINTING),
    ("StatsAggregator", PRINTING),
)
_DEBUG_OP = re.compile(r"^_?Debug")  # tfdbg ops: DebugIdentity(V2/V3), DebugNanCount, ... (debug_urls)
_SUMMARY_WRITE = re.compile(r"^Write\w*Summary$|^CreateSummary\w*Writer$")

# DT_STRING inputs whose name says they are a path or an address (from the registry's OpDefs:
# ReadFile/WriteFile filename, dataset readers' filenames, SaveV2 prefix, CacheDataset filename,
# SaveDataset path, summary writers' logdir, RegisterDataset address, SqlDataset db_uri...).
_PATH_INPUTS = frozenset(
    {
        "filename",
        "filenames",
        "file_pattern",
        "path",
        "prefix",
        "shard_dir",
        "checkpoint_prefixes",
        "destination_prefix",
        "directory",
        "logdir",
        "ckpt_path",
        "chunk_file",
        "new_vocab_file",
        "old_vocab_file",
        "snapshot_path",
        "patterns",
    }
)
_NETWORK_INPUTS = frozenset({"address", "server_address", "protocol", "db_uri", "data_source_name", "driver_name"})
# Inputs/outputs naming a dataset or iterator (structure, whatever the op's name).
_DATASET_ARGS = frozenset(
    {"input_dataset", "input_datasets", "dataset", "iterator", "multi_device_iterator", "reader_handle"}
)
# String attrs that name a file: an op declaring one reads or writes that file (Skipgram's
# filename, RecordInput's file_pattern, DumpTensor's log_dir_path, snapshot prefixes, ...).
_PATH_ATTRS = frozenset(
    {
        "file_pattern",
        "filename",
        "file_name",
        "log_dir_path",
        "output_file_path",
        "reader_prefix",
        "writer_prefix",
        "reader_path_prefix",
        "writer_path_prefix",
        "memory_region_name",
    }
)
# Optional ones: the op reads a file only when the node sets it ("" reads none; for
# DecodeProtoV2/EncodeProto's descriptor_source, "local://" means the descriptors linked in).
_OPTIONAL_PATH_ATTRS = {"vocab_file": "", "descriptor_source": "local://"}
_NETWORK_ATTRS = frozenset({"debug_urls"})

# Stateful ops with known, in-process effects only (the conservative rule's allowlist).
_IN_PROCESS_STATEFUL = frozenset(
    {
        # variables
        "VarHandleOp",
        "_VarHandlesOp",
        "ReadVariableOp",
        "_ReadVariablesOp",
        "AssignVariableOp",
        "AssignAddVariableOp",
        "AssignSubVariableOp",
        "VarIsInitializedOp",
        "VariableShape",
        "Variable",
        "VariableV2",
        "TemporaryVariable",
        "DestroyResourceOp",
        "DisableCopyOnRead",
        "ReadVariableXlaSplitND",
        "AssignVariableXlaConcatND",
        "MakeWeakResourceHandle",
        "IsResourceHandleRefCounting",
        "_XlaAotOnlyVarHandleOp",
        "ConditionalAccumulator",
        "SparseConditionalAccumulator",
        # control flow and function calls (the functions themselves are scanned)
        "If",
        "While",
        "Case",
        "StatefulPartitionedCall",
        "_If",
        "_While",
        "RiscWhile",
        "XlaIf",
        "XlaWhile",
        "_Arg",
        "_Retval",
        "_DeviceArg",
        "_DeviceRetval",
        "XlaLaunch",
        # assertions, numerics, facts about the build
        "Assert",
        "CheckNumerics",
        "CheckNumericsV2",
        "GuaranteeConst",
        "Empty",
        "DeepCopy",
        "_ParallelConcatStart",
        "Timestamp",
        "GraphDefVersion",
        "DeviceIndex",
        "IsTensorFloat32Enabled",
        "_ScopedAllocator",
        "_ScopedAllocatorConcat",
        "_ScopedAllocatorSplit",
        # containers
        "TensorArray",
        "Stack",
        "StackV2",
        "StackPushV2",
        "StackPopV2",
        "StackCloseV2",
        "FIFOQueue",
        "FIFOQueueV2",
        "PaddingFIFOQueue",
        "PaddingFIFOQueueV2",
        "PriorityQueue",
        "PriorityQueueV2",
        "RandomShuffleQueue",
        "RandomShuffleQueueV2",
        "FakeQueue",
        "Barrier",
        "Stage",
        "Unstage",
        "StagePeek",
        "StageSize",
        "StageClear",
        "AddSparseToTensorsMap",
        "AddManySparseToTensorsMap",
        "TakeManySparseFromTensorsMap",
        "IsBoostedTreesEnsembleInitialized",
        "IsBoostedTreesQuantileStreamResourceInitialized",
        # lookup tables (their file initializers are caught by the path rule first)
        "HashTable",
        "HashTableV2",
        "MutableHashTable",
        "MutableHashTableV2",
        "MutableHashTableOfTensors",
        "MutableHashTableOfTensorsV2",
        "MutableDenseHashTable",
        "MutableDenseHashTableV2",
        "AnonymousHashTable",
        "AnonymousMutableHashTable",
        "AnonymousMutableHashTableOfTensors",
        "AnonymousMutableDenseHashTable",
        "InitializeTableV2",
        # locks
        "MutexV2",
        "MutexLock",
        "ConsumeMutexLock",
        # random numbers (also reported as notices)
        "RandomCrop",
        "RandomShuffle",
        "RandomGamma",
        "RandomPoisson",
        "RandomPoissonV2",
        "Multinomial",
        "NonDeterministicInts",
        "StatelessRandomGetAlg",
        "AnonymousRandomSeedGenerator",
        "AnonymousSeedGenerator",
        "DummySeedGenerator",
        "DeleteRandomSeedGenerator",
        "DeleteSeedGenerator",
    }
)
_IN_PROCESS_PREFIXES = (
    "Resource",  # ResourceGather, ResourceScatter*, ResourceApply* (in-process variable updates)
    "TensorArray",
    "Queue",
    "MapClear",
    "MapIncompleteSize",
    "MapPeek",
    "MapSize",
    "MapStage",
    "MapUnstage",
    "OrderedMap",
    "LookupTable",
    "BoostedTrees",
    "CudnnRNN",
    "Random",
    "Stateful",
    "TruncatedNormal",
    "ParameterizedTruncatedNormal",
    "SampleDistortedBoundingBox",
    "RngSkip",
    "RngReadAndSkip",
)
_CANDIDATE_SAMPLER = "CandidateSampler"  # random and in-process, unless it reads a vocab_file


@dataclass(frozen=True)
class OpFinding:
    """One denied or unknown op (or an asset that escapes its directory)."""

    op_type: str
    node: str  # node name ("function_name/node" inside a function body)
    reason: str
    allowed: bool = False

    def to_json(self) -> dict[str, object]:
        return {"op": self.op_type, "node": self.node, "reason": self.reason, "allowed": self.allowed}


@dataclass(frozen=True)
class ScanResult:
    """Everything the scan found; ``blocking`` are the findings not allowed."""

    target: str
    findings: list[OpFinding]
    ops_scanned: int
    # Not denied, but worth a release engineer's eye: ops that make outputs vary between
    # identical requests (convert refuses them unless --allow-random).
    notices: list[OpFinding] = field(default_factory=list)
    # A SavedModel's asset files (assets/, assets.extra/), relative to the version dir.
    assets: list[str] = field(default_factory=list)

    @property
    def blocking(self) -> list[OpFinding]:
        return [f for f in self.findings if not f.allowed]

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "ops_scanned": self.ops_scanned,
            "clean": not self.blocking,
            "findings": [f.to_json() for f in self.findings],
            "notices": [f.to_json() for f in self.notices],
            "assets": list(self.assets),
        }

    def summary(self) -> str:
        if not self.blocking:
            allowed = sum(f.allowed for f in self.findings)
            random = (
                (
                    f"; {len(self.notices)} random op(s) make outputs vary between identical requests: "
                    + ", ".join(f"{f.op_type} ({f.node})" for f in self.notices[:4])
                )
                if self.notices
                else ""
            )
            return (
                f"{self.target}: {self.ops_scanned} ops scanned, nothing denied"
                + (f" ({allowed} allowed by --allow-op)" if allowed else "")
                + random
            )
        listing = ", ".join(f"{f.op_type} ({f.node}: {f.reason})" for f in self.blocking[:6])
        more = f" and {len(self.blocking) - 6} more" if len(self.blocking) > 6 else ""
        return f"{self.target}: denied ops on the serving path: {listing}{more}"

    def refusal(self) -> str:
        """The one-line error convert gives for a blocking result: what, and the flag that allows it."""
        return f"{self.summary()}: remove them, or allow each with --allow-op {self.blocking[0].op_type}"


# --- classification ---------------------------------------------------------------------------


def _op_def(op_type: str) -> OpDef | None:
    tensorflow()
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(op_type)


@functools.cache
def classify_op(op_type: str) -> str | None:
    """Why ``op_type`` is denied on a server, from its registered OpDef; None for an allowed op.

    Attr values are not looked at here (see :func:`classify_node`).
    """
    op_def = _op_def(op_type)
    if op_def is None:
        return UNKNOWN
    if op_type in _NAMED:
        return _NAMED[op_type]
    for fragment, reason in _NAME_FRAGMENTS:
        if fragment in op_type:
            return reason
    if _DEBUG_OP.match(op_type) or _SUMMARY_WRITE.match(op_type):
        return PRINTING
    from tensorflow.core.framework import types_pb2

    args = [*op_def.input_arg, *op_def.output_arg]
    if any(arg.name in _DATASET_ARGS for arg in args):
        return DATASET
    strings = {arg.name for arg in op_def.input_arg if arg.type == types_pb2.DT_STRING}
    if strings & _NETWORK_INPUTS or any(a.name in _NETWORK_ATTRS for a in op_def.attr):
        return NETWORK
    if strings & _PATH_INPUTS or any(a.name in _PATH_ATTRS for a in op_def.attr):
        return FILE_SYSTEM
    if op_def.is_stateful and not _known_in_process(op_type):
        return UNCLASSIFIED
    return None


def _known_in_process(op_type: str) -> bool:
    return (
        op_type in _IN_PROCESS_STATEFUL
        or op_type.startswith(_IN_PROCESS_PREFIXES)
        or op_type.endswith(_CANDIDATE_SAMPLER)
    )


def classify_node(node: NodeDef) -> str | None:
    """Why ``node`` (a NodeDef) is denied, or None: its op type's verdict, then attrs naming files."""
    reason = classify_op(node.op)
    if reason is not None:
        return reason
    # Attrs are checked only where the op declares them (TensorFlow rejects undeclared ones).
    op_def = _op_def(node.op)
    if op_def is None:  # not reached: classify_op calls an unregistered op UNKNOWN
        return UNKNOWN
    declared = {a.name for a in op_def.attr}
    for name, names_no_file in _OPTIONAL_PATH_ATTRS.items():
        if (
            name in declared
            and name in node.attr
            and node.attr[name].s.decode(errors="replace") not in ("", names_no_file)
        ):
            return FILE_SYSTEM
    return None


def is_random(op_type: str) -> bool:
    """True for an op that draws random numbers (a notice, not a denial)."""
    return (
        op_type.startswith(RANDOM_OP_PREFIXES) or op_type.endswith("CandidateSampler")
    ) and op_type not in _NOT_RANDOM


# --- walking graphs ---------------------------------------------------------------------------


def _called_functions(node: NodeDef) -> list[str]:
    """Functions a node may call: as its op, or named in an attr (PartitionedCall's f, While's body)."""
    names = [node.op]
    for attr in node.attr.values():
        if attr.func.name:
            names.append(attr.func.name)
        names.extend(f.name for f in attr.list.func)
    return names


def _functions_reached(nodes: Iterable[NodeDef], functions: dict[str, FunctionDef]) -> set[str]:
    pending = [name for node in nodes for name in _called_functions(node)]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        pending.extend(called for node in functions[name].node_def for called in _called_functions(node))
    return seen


def reachable_functions(graph_def: GraphDef) -> set[str]:
    """Names of the library functions ``graph_def``'s nodes call, directly or through each other."""
    return _functions_reached(graph_def.node, {f.signature.name: f for f in graph_def.library.function})


def _node_name(tensor_or_input: str) -> str:
    return tensor_or_input.lstrip("^").split(":")[0]


def _closure(graph_def: GraphDef, roots: Iterable[str]) -> list[NodeDef]:
    """The nodes ``roots`` depend on (data and control inputs), roots included; unknown names skipped."""
    by_name = {node.name: node for node in graph_def.node}
    pending = [_node_name(r) for r in roots]
    seen: dict[str, NodeDef] = {}
    while pending:
        name = pending.pop()
        if name in seen or name not in by_name:
            continue
        seen[name] = by_name[name]
        pending.extend(_node_name(i) for i in by_name[name].input)
    return list(seen.values())


@dataclass
class _Scan:
    """Accumulates findings over (node name, NodeDef, op types exempt there) triples."""

    functions: dict[str, FunctionDef]
    allowed: frozenset[str]
    findings: list[OpFinding] = field(default_factory=list)
    notices: list[OpFinding] = field(default_factory=list)
    scanned: int = 0

    def add(self, nodes: Iterator[tuple[str, NodeDef, frozenset[str]]]) -> None:
        for name, node, exempt in nodes:
            op_type = node.op
            self.scanned += 1
            if op_type in self.functions:
                continue  # a call of a library function: its body is scanned on its own
            if is_random(op_type):
                self.notices.append(
                    OpFinding(op_type, name, "draws random numbers: outputs vary between identical requests")
                )
            if op_type in exempt:
                continue
            reason = classify_node(node)
            if reason is not None:
                self.findings.append(OpFinding(op_type, name, reason, allowed=op_type in self.allowed))

    def add_functions(self, exempt: Mapping[str, frozenset[str]]) -> None:
        """Every function in the library, reachable or not, with the op types exempt in each
        (checkpoint ops in the saver's own functions)."""
        for fname, function in self.functions.items():
            self.add((f"{fname}/{node.name}", node, exempt.get(fname, frozenset())) for node in function.node_def)


def scan_graph_def(graph_def: GraphDef, target: str, allowed: frozenset[str] = frozenset()) -> ScanResult:
    """Scan every node of ``graph_def`` and every function in its library."""
    scan = _Scan({f.signature.name: f for f in graph_def.library.function}, allowed)
    scan.add((node.name, node, frozenset()) for node in graph_def.node)
    scan.add_functions({})
    return ScanResult(target=target, findings=scan.findings, ops_scanned=scan.scanned, notices=scan.notices)


# Collections holding the ops a SavedModel loader runs after restoring the variables.
INIT_COLLECTIONS = ("saved_model_main_op", "legacy_init_op", "table_initializer")


def _collection_nodes(meta_graph: MetaGraphDef, key: str) -> list[str]:
    if key not in meta_graph.collection_def:
        return []
    collection = meta_graph.collection_def[key]
    values = list(collection.node_list.value) + [v.decode(errors="replace") for v in collection.bytes_list.value]
    return [_node_name(v) for v in values]


def _saver_roots(meta_graph: MetaGraphDef) -> list[str]:
    saver = meta_graph.saver_def
    return [name for name in (saver.restore_op_name, saver.save_tensor_name, saver.filename_tensor_name) if name]


def scan_meta_graph(meta_graph: MetaGraphDef, target: str, allowed: frozenset[str] = frozenset()) -> ScanResult:
    """Scan what a SavedModel loader and server can run from ``meta_graph``.

    That is: everything any signature reaches (``__saved_model_init_op`` is one), the init ops
    (main_op, legacy_init_op, table initializers), the saver's restore and save ops (with
    checkpoint ops exempt there: they load the variables), and every library function. Nodes no
    root reaches (a TF1 training graph's input pipeline, its summaries) never run and are not
    scanned.
    """
    graph_def = meta_graph.graph_def
    functions = {f.signature.name: f for f in graph_def.library.function}
    roots = [t.name for sig in meta_graph.signature_def.values() for t in (*sig.inputs.values(), *sig.outputs.values())]
    roots += [name for key in INIT_COLLECTIONS for name in _collection_nodes(meta_graph, key)]
    served = _closure(graph_def, roots)
    served_names = {node.name for node in served}
    restore = [node for node in _restore_closure(meta_graph) if node.name not in served_names]
    restore_names = {node.name for node in restore}
    saver = meta_graph.saver_def
    save_only = [
        node
        for node in _closure(graph_def, [saver.save_tensor_name] if saver.save_tensor_name else [])
        if node.name not in served_names | restore_names
    ]
    served_functions = _functions_reached(served, functions)
    restore_functions = _functions_reached(restore, functions) - served_functions
    save_functions = _functions_reached(save_only, functions) - served_functions - restore_functions
    scan = _Scan(functions, allowed)
    scan.add((node.name, node, frozenset()) for node in served)
    scan.add((node.name, node, _restore_exemption(meta_graph, node)) for node in restore)
    # The save path only runs when a checkpoint is written (never by a loader or a server).
    scan.add((node.name, node, SAVER_OPS) for node in save_only)
    scan.add_functions({**{f: RESTORE_OPS for f in restore_functions}, **{f: SAVER_OPS for f in save_functions}})
    return ScanResult(target=target, findings=scan.findings, ops_scanned=scan.scanned, notices=scan.notices)


def _restore_closure(meta_graph: MetaGraphDef) -> list[NodeDef]:
    """Everything a loader runs to restore the variables: the restore op and what it depends on."""
    restore = meta_graph.saver_def.restore_op_name
    return _closure(meta_graph.graph_def, [restore] if restore else [])


def _restore_exemption(meta_graph: MetaGraphDef, node: NodeDef) -> frozenset[str]:
    """The checkpoint op types a node of the restore path may be: only a restore whose prefix is
    the saver's own filename tensor (what a loader feeds the variables' path to). A Save hung off
    the restore op, or a restore from a path baked into the graph, would run at load: scanned."""
    if node.op not in RESTORE_OPS or not node.input:
        return frozenset()
    by_name = {n.name: n for n in meta_graph.graph_def.node}
    filename = _node_name(meta_graph.saver_def.filename_tensor_name)
    name = _node_name(node.input[0])
    while name in by_name and name != filename and by_name[name].op in ("Identity", "Snapshot") and by_name[name].input:
        name = _node_name(by_name[name].input[0])
    return RESTORE_OPS if filename and name == filename else frozenset()


def scan_restore_path(meta_graph: MetaGraphDef, target: str, allowed: frozenset[str] = frozenset()) -> ScanResult:
    """Scan what restoring a TF1 checkpoint through ``meta_graph``'s saver runs, before it runs.

    tfpack runs only the saver's restore op from a training meta graph (its init ops never); the
    serving path is scanned after it is cut. An op hidden in the restore op's dependencies (a
    WriteFile as a control input of ``save/restore_all``) would run at load, so it is refused here.
    """
    graph_def = meta_graph.graph_def
    functions = {f.signature.name: f for f in graph_def.library.function}
    nodes = _restore_closure(meta_graph)
    reached = _functions_reached(nodes, functions)
    scan = _Scan({name: functions[name] for name in reached}, allowed)
    scan.add((node.name, node, _restore_exemption(meta_graph, node)) for node in nodes)
    scan.add_functions({name: RESTORE_OPS for name in reached})
    return ScanResult(target=target, findings=scan.findings, ops_scanned=scan.scanned, notices=[])


# --- SavedModels on disk ----------------------------------------------------------------------

ASSET_DIRS = ("assets", "assets.extra")


def read_saved_model(version_dir: Path) -> SavedModel:
    """Parse ``version_dir``'s saved_model.pb (or .pbtxt) without loading or running any of it.

    Raises:
        SourceError: missing or not a SavedModel proto.
    """
    tensorflow()
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import saved_model_pb2

    from packager.errors import SourceError

    binary, text = version_dir / "saved_model.pb", version_dir / "saved_model.pbtxt"
    path = binary if binary.is_file() or not text.is_file() else text
    try:
        if path is text:
            return text_format.Parse(path.read_text(encoding="utf-8"), saved_model_pb2.SavedModel())
        return saved_model_pb2.SavedModel.FromString(path.read_bytes())
    except (OSError, UnicodeDecodeError, message.DecodeError, text_format.ParseError) as exc:
        from packager.errors import first_line

        raise SourceError(f"{path} is not a readable SavedModel: {first_line(exc)}") from None


def _asset_findings(version_dir: Path, saved_model: SavedModel) -> tuple[list[str], list[OpFinding]]:
    """The asset files on disk, and assets that point outside ``assets/`` (a loader would read there)."""
    listed, findings = [], []
    root = version_dir.resolve()
    for directory in ASSET_DIRS:
        base = version_dir / directory
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            relative = str(path.relative_to(version_dir))
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                findings.append(OpFinding("asset", relative, f"a symlink to {path.resolve()}, outside the version dir"))
            elif path.is_file():
                listed.append(relative)
    for meta_graph in saved_model.meta_graphs:
        for asset in meta_graph.asset_file_def:
            name = asset.filename
            # The loader feeds assets/NAME into the asset's tensor: NAME must stay inside assets/.
            if not name or name.startswith(("/", "\\")) or ".." in re.split(r"[\\/]", name):
                findings.append(
                    OpFinding(
                        "asset",
                        asset.tensor_info.name or name,
                        f"asset path {name!r} leads outside the assets directory",
                    )
                )
    return listed, findings


def scan_saved_model(version_dir: Path | str, allowed: frozenset[str] = frozenset()) -> ScanResult:
    """Scan everything a server can run from the SavedModel in ``version_dir`` (see :func:`scan_meta_graph`),
    and its assets. Reads the proto only: nothing of the model is loaded or run.

    Raises:
        SourceError: saved_model.pb is missing or unreadable.
    """
    version_dir = Path(version_dir)
    saved_model = read_saved_model(version_dir)
    findings: list[OpFinding] = []
    notices: list[OpFinding] = []
    scanned = 0
    for meta_graph in saved_model.meta_graphs:
        result = scan_meta_graph(meta_graph, str(version_dir), allowed)
        findings.extend(f for f in result.findings if f not in findings)
        notices.extend(f for f in result.notices if f not in notices)
        scanned += result.ops_scanned
    assets, asset_findings = _asset_findings(version_dir, saved_model)
    return ScanResult(
        target=str(version_dir), findings=findings + asset_findings, ops_scanned=scanned, notices=notices, assets=assets
    )
