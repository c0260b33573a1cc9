"""Scan a serving graph for ops that have no business in a model server.

A SavedModel is code: an op can read or write the server's file system, run Python or a shell
(py_func), or print tensors — secrets included — into the server's logs. TF Serving runs whatever
the graph holds, so tfpack refuses such ops on the serving path unless the release engineer allows
each by name (``--allow-op``), and reports ops TensorFlow does not know (custom ops), which a
stock server cannot load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from packager.tf_runtime import tensorflow

# Ops that draw random numbers each time they run (the stateful ones), and the stateless ones
# whose seed usually comes from a counter: random augmentation or dropout left in a graph.
RANDOM_OP_PREFIXES = (
    "Random", "TruncatedNormal", "ParameterizedTruncatedNormal", "Multinomial", "Stateful",
    "StatelessRandom", "StatelessTruncatedNormal", "StatelessMultinomial", "StatelessParameterized",
    "SampleDistortedBoundingBox", "RngSkip", "RngReadAndSkip", "NonDeterministicInts",
)

# Op type -> why it is refused on a serving path.
DENYLIST: dict[str, str] = {
    "ReadFile": "reads the server's file system",
    "WriteFile": "writes the server's file system",
    "MatchingFiles": "lists the server's file system",
    "DeleteFile": "deletes from the server's file system",
    "ImmutableConst": "memory-maps a file from the server's file system",
    "PyFunc": "runs Python code",
    "PyFuncStateless": "runs Python code",
    "EagerPyFunc": "runs Python code",
    "PrintV2": "prints tensors (possibly secrets) into the server's log",
    "Print": "prints tensors (possibly secrets) into the server's log",
    "Save": "writes checkpoints from the serving path",
    "SaveV2": "writes checkpoints from the serving path",
    "SaveSlices": "writes checkpoints from the serving path",
    "MergeV2Checkpoints": "writes checkpoints from the serving path",
    "Restore": "reads checkpoints from the serving path",
    "RestoreV2": "reads checkpoints from the serving path",
    "RestoreSlice": "reads checkpoints from the serving path",
}


@dataclass(frozen=True)
class OpFinding:
    """One denied or unknown op on a serving path."""

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
        }

    def summary(self) -> str:
        if not self.blocking:
            allowed = sum(f.allowed for f in self.findings)
            random = (f"; {len(self.notices)} random op(s) make outputs vary between identical requests: "
                      + ", ".join(f"{f.op_type} ({f.node})" for f in self.notices[:4])) if self.notices else ""
            return (f"{self.target}: {self.ops_scanned} ops scanned, nothing denied"
                    + (f" ({allowed} allowed by --allow-op)" if allowed else "") + random)
        listing = ", ".join(f"{f.op_type} ({f.node}: {f.reason})" for f in self.blocking[:6])
        more = f" and {len(self.blocking) - 6} more" if len(self.blocking) > 6 else ""
        return f"{self.target}: denied ops on the serving path: {listing}{more}"


def _is_registered(op_type: str) -> bool:
    tensorflow()
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(op_type) is not None


def _called_functions(node) -> list[str]:  # type: ignore[no-untyped-def]
    names = [node.op]
    for attr in node.attr.values():
        if attr.func.name:
            names.append(attr.func.name)
        names.extend(f.name for f in attr.list.func)
    return names


def scan_graph_def(graph_def, target: str, allowed: frozenset[str] = frozenset()) -> ScanResult:  # type: ignore[no-untyped-def]
    """Scan every node of ``graph_def`` (already cut to the serving path) and its function bodies."""
    functions = {f.signature.name: f for f in graph_def.library.function}
    nodes = [(node.name, node.op) for node in graph_def.node]
    # Only functions reachable from the graph's nodes (and from each other) count: called as an
    # op, or named in an attr (PartitionedCall's f, While's body, Case's branches).
    pending = [name for node in graph_def.node for name in _called_functions(node)]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        for node in functions[name].node_def:
            nodes.append((f"{name}/{node.name}", node.op))
            pending.extend(_called_functions(node))
    findings, notices = [], []
    for name, op_type in nodes:
        if op_type in functions:
            continue
        if op_type.startswith(RANDOM_OP_PREFIXES):
            notices.append(OpFinding(op_type, name, "draws random numbers: outputs vary between identical requests"))
        if op_type in DENYLIST:
            findings.append(OpFinding(op_type, name, DENYLIST[op_type], allowed=op_type in allowed))
        elif not _is_registered(op_type):
            findings.append(OpFinding(op_type, name, "custom op unknown to TensorFlow: a stock TF Serving cannot load it",
                                      allowed=op_type in allowed))
    return ScanResult(target=target, findings=findings, ops_scanned=len(nodes), notices=notices)


def scan_saved_model(version_dir, allowed: frozenset[str] = frozenset()) -> ScanResult:  # type: ignore[no-untyped-def]
    """Scan the serving paths of a SavedModel: what its signatures' outputs need, per meta graph."""
    tf = tensorflow()
    from google.protobuf import message
    from tensorflow.core.protobuf import saved_model_pb2

    from packager.errors import SourceError
    from packager.graph.io_discovery import input_op_name

    path = version_dir / "saved_model.pb"
    try:
        saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    except (OSError, message.DecodeError) as exc:
        raise SourceError(f"{path} is not a readable SavedModel: {exc}") from None
    findings: list[OpFinding] = []
    scanned = 0
    for meta_graph in saved_model.meta_graphs:
        outputs = {
            input_op_name(tensor.name)
            for signature in meta_graph.signature_def.values() for tensor in signature.outputs.values()
        }
        serving = tf.compat.v1.graph_util.extract_sub_graph(meta_graph.graph_def, sorted(outputs)) if outputs else meta_graph.graph_def
        result = scan_graph_def(serving, str(version_dir), allowed)
        findings.extend(f for f in result.findings if f not in findings)
        scanned += result.ops_scanned
    return ScanResult(target=str(version_dir), findings=findings, ops_scanned=scanned)
