"""The op scan of a version dir, whatever it serves: its SavedModel and its model.tflite.

``tfpack sign`` and ``tfpack build`` refuse a version dir whose scan finds denied ops
(:mod:`packager.graph.op_scan` decides what is denied). A version dir may hold a SavedModel, a
model.tflite (served instead of the SavedModel with --prefer_tflite_model), or both; each model
file in it is scanned, since either can be what a server runs.

A TFLite model runs three kinds of op:

* builtins (TFLite's own kernels): pure computation, none reads files, the network or the
  environment. The random ones (RANDOM_UNIFORM, RANDOM_STANDARD_NORMAL, MULTINOMIAL) are
  reported as notices, as random TensorFlow ops are.
* Select TF ops ("Flex" custom ops): TensorFlow kernels, each carrying the TensorFlow NodeDef
  it runs in its custom options. Those NodeDefs are scanned exactly as a GraphDef's nodes are:
  a FlexReadFile is a ReadFile.
* other custom ops: code the scan cannot see into, registered by whoever runs the model; denied
  as unknown, as a TensorFlow custom op is.

Only the flatbuffer is read: nothing of the model is loaded or run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from packager.errors import SourceError
from packager.graph.op_scan import UNKNOWN, OpFinding, ScanResult, scan_graph_def, scan_saved_model
from packager.layout import TFLITE_MODEL_FILE, holds_saved_model
from packager.tf_runtime import tensorflow

if TYPE_CHECKING:
    from tensorflow.core.framework.node_def_pb2 import NodeDef

# The prefix TFLite's converter gives a Select TF op's custom code: "Flex" + the TensorFlow op.
FLEX_PREFIX = "Flex"
RANDOM_BUILTINS = frozenset({"RANDOM_UNIFORM", "RANDOM_STANDARD_NORMAL", "MULTINOMIAL"})
RANDOM_NOTICE = "draws random numbers: outputs vary between identical requests"
# The flatbuffer file identifier of a TFLite model, at bytes 4 to 8.
TFLITE_IDENTIFIER = b"TFL3"
CUSTOM_OP = "TFLite custom op: code outside TFLite and TensorFlow that the scan cannot see into"


def is_tflite_flatbuffer(content: bytes) -> bool:
    """Whether ``content`` carries the TFLite flatbuffer file identifier (no more is checked)."""
    return content[4:8] == TFLITE_IDENTIFIER


def scan_version_dir(version_dir: Path, allowed: frozenset[str] = frozenset()) -> ScanResult:
    """Scan every model file of ``version_dir``: its SavedModel and its model.tflite, if present.

    Args:
        version_dir: a version dir holding a SavedModel, a model.tflite or both.
        allowed: op types let through (``--allow-op``); a Flex op is allowed by its TensorFlow
            op type (ReadFile), a custom op by its custom code.

    Raises:
        SourceError: a model file is missing (neither is present) or unreadable.
    """
    tflite = version_dir / TFLITE_MODEL_FILE
    results: list[ScanResult] = []
    if holds_saved_model(version_dir) or not tflite.is_file():
        results.append(scan_saved_model(version_dir, allowed))
    if tflite.is_file():
        results.append(scan_tflite_model(tflite, allowed))
    if len(results) == 1:
        return results[0]
    return ScanResult(
        target=str(version_dir),
        findings=[finding for result in results for finding in result.findings],
        ops_scanned=sum(result.ops_scanned for result in results),
        notices=[notice for result in results for notice in result.notices],
        assets=results[0].assets,
    )


def scan_tflite_model(path: Path, allowed: frozenset[str] = frozenset()) -> ScanResult:
    """Scan every operator of every subgraph of the TFLite model at ``path``.

    Raises:
        SourceError: the file cannot be read or is not a TFLite flatbuffer.
    """
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if not is_tflite_flatbuffer(content):
        raise SourceError(f"{path} is not a TFLite model (no TFL3 flatbuffer identifier)")
    tensorflow()
    from tensorflow.core.framework import graph_pb2

    findings: list[OpFinding] = []
    notices: list[OpFinding] = []
    flex_nodes: list[NodeDef] = []
    scanned = 0
    try:
        for where, code, options in _operators(content):
            scanned += 1
            if isinstance(code, str):  # a builtin's name
                if code in RANDOM_BUILTINS:
                    notices.append(OpFinding(code, where, RANDOM_NOTICE))
            elif code.startswith(FLEX_PREFIX.encode()):
                node = _flex_node_def(options)
                if node is None:
                    op = code.decode(errors="replace")
                    findings.append(OpFinding(op, where, f"{UNKNOWN} (its TensorFlow NodeDef cannot be read)"))
                else:
                    node.name = where
                    flex_nodes.append(node)
            else:
                op = code.decode(errors="replace")
                findings.append(OpFinding(op, where, CUSTOM_OP, allowed=op in allowed))
    except (IndexError, ValueError, TypeError) as exc:  # a flatbuffer that does not parse
        raise SourceError(f"{path} is not a readable TFLite model: {exc}") from None
    flex = scan_graph_def(graph_pb2.GraphDef(node=flex_nodes), str(path), allowed)
    return ScanResult(
        target=str(path),
        findings=flex.findings + findings,
        ops_scanned=scanned,
        notices=flex.notices + notices,
    )


def operator_codes(content: bytes) -> tuple[list[str], list[str]]:
    """The builtin operator names and the custom op codes (Select TF ops are "Flex...") the
    operators of a verified TFLite flatbuffer run, each sorted."""
    tensorflow()
    builtins: set[str] = set()
    custom: set[str] = set()
    for _, code, _ in _operators(content):
        if isinstance(code, str):
            builtins.add(code)
        else:
            custom.add(code.decode("utf-8", "replace"))
    return sorted(builtins), sorted(custom)


def _operators(content: bytes) -> list[tuple[str, str | bytes, bytes]]:
    """(where, builtin name or custom code, custom options) of every operator, in order."""
    from tensorflow.lite.python import schema_py_generated as schema

    builtin_names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = schema.Model.GetRootAsModel(content, 0)
    codes: list[str | bytes] = []
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        # Codes past 127 live in BuiltinCode; older files keep theirs in DeprecatedBuiltinCode.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        codes.append(custom if custom else builtin_names.get(builtin, f"BUILTIN_{builtin}"))
    operators: list[tuple[str, str | bytes, bytes]] = []
    for graph_index in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(graph_index)
        for op_index in range(subgraph.OperatorsLength()):
            operator = subgraph.Operators(op_index)
            code = codes[operator.OpcodeIndex()]
            options = b""
            if isinstance(code, bytes):
                if operator.CustomOptionsLength():
                    options = operator.CustomOptionsAsNumpy().tobytes()
                elif operator.LargeCustomOptionsSize():  # a model past 2 GB keeps them outside
                    start = operator.LargeCustomOptionsOffset()
                    options = content[start : start + operator.LargeCustomOptionsSize()]
            operators.append((f"subgraph {graph_index} op {op_index}", code, options))
    return operators


def _flex_node_def(options: bytes) -> NodeDef | None:
    """The TensorFlow NodeDef a Flex op carries: its custom options are a FlexBuffer vector
    [op name, serialized NodeDef]. None when they are not."""
    from flatbuffers import flexbuffers
    from tensorflow.core.framework.node_def_pb2 import NodeDef

    try:
        serialized = flexbuffers.GetRoot(options).AsVector[1]
        # The converter writes it as a FlexBuffer string of raw bytes (no UTF-8 to decode).
        node = NodeDef.FromString(bytes(serialized.AsStringBytes if serialized.IsString else serialized.AsBlob))
    # Custom options are the model author's bytes, and the flexbuffers reader raises whatever a
    # malformed buffer leads it to (KeyError for an unknown type byte, struct.error...).
    except Exception:
        return None
    return node if node.op else None
