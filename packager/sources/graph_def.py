"""Frozen GraphDefs: binary ``.pb`` or text ``.pbtxt`` files, as written by freeze_graph."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from packager.errors import SourceError, first_line
from packager.sources.base import LoadedSource, TensorRef
from packager.tf_runtime import reference_session, tensorflow

# Ops that hold state a frozen graph must not have: their values live in a checkpoint.
VARIABLE_OPS = frozenset({"Variable", "VariableV2", "VarHandleOp", "AutoReloadVariable"})


def read_graph_def(path: Path):  # -> GraphDef
    """Parse a binary or text GraphDef, raising SourceError for anything that is not one."""
    tensorflow()  # imported through tf_runtime so its start-up noise stays hidden
    from google.protobuf import message, text_format
    from tensorflow.core.framework import graph_pb2

    data = path.read_bytes()
    graph_def = graph_pb2.GraphDef()
    try:
        if path.suffix == ".pbtxt":
            text_format.Parse(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError, RuntimeWarning) as exc:
        raise SourceError(
            f"{path} is not a valid GraphDef ({first_line(exc)}): the file is corrupt or truncated, "
            "or not a TensorFlow graph"
        ) from None
    if not graph_def.node:
        raise SourceError(f"{path} is not a valid GraphDef: it holds no nodes")
    return graph_def


def import_graph(graph_def, path: Path | str):  # -> tf.Graph
    """Import ``graph_def`` into a new tf.Graph, names unchanged; SourceError when TF refuses it.

    Random bytes can parse as a protobuf message by accident; importing is what proves the file is
    a graph TensorFlow can run (every op registered, every input resolvable).
    """
    tf = tensorflow()
    from tensorflow.python.framework import op_def_registry

    functions = {f.signature.name for f in graph_def.library.function}
    unknown = sorted({n.op for n in graph_def.node if n.op not in functions and op_def_registry.get(n.op) is None})
    if unknown:
        raise SourceError(
            f"{path} uses ops TensorFlow does not know (custom ops): {', '.join(unknown[:5])}: "
            "a stock TensorFlow Serving cannot load them either ('tfpack scan' lists where they are)"
        )
    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
    except (ValueError, TypeError, KeyError, tf.errors.OpError) as exc:
        raise SourceError(f"{path} cannot be imported by TensorFlow: {first_line(exc)}") from None
    return graph


def load_frozen_graph(path: Path) -> LoadedSource:
    """Load a frozen GraphDef; inputs and outputs are left for graph analysis to discover."""
    from packager.graph.iterators import replace_data_inputs
    from packager.graph.legacy_repair import repair_legacy_graph
    from packager.graph.surgery import repair_frozen_functions, repair_reference_ops

    repaired = repair_legacy_graph(repair_frozen_functions(repair_reference_ops(read_graph_def(path))))
    graph_def, replaced = replace_data_inputs(repaired.graph_def)
    variables = sorted(n.name for n in graph_def.node if n.op in VARIABLE_OPS)
    if variables:
        raise SourceError(
            f"{path} is not frozen: it has {len(variables)} variable op(s) (e.g. {variables[0]}) "
            "whose values live in a checkpoint: add --checkpoint PREFIX"
        )
    graph = import_graph(graph_def, path)
    sessions = []  # one session, made on first use and reused (towers run the source per tower)

    def run_reference(
        feeds: Mapping[str, np.ndarray], inputs: list[TensorRef], outputs: list[TensorRef],
        fixed: Mapping[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        if not sessions:
            sessions.append(reference_session(graph))
        by_key = {ref.key: ref.tensor_name for ref in inputs}
        feed_dict = {**fixed, **{by_key[k]: v for k, v in feeds.items()}}
        values = sessions[0].run([o.tensor_name for o in outputs], feed_dict=feed_dict)
        return {o.key: v for o, v in zip(outputs, values)}

    return LoadedSource(
        path=path,
        format="frozen_graph",
        graph_def=graph_def,
        inputs=None,
        outputs=None,
        files=[path.resolve()],
        run_reference=run_reference,
        graph=graph,
        details={"encoding": "text" if path.suffix == ".pbtxt" else "binary",
                 "replaced_inputs": [r.to_json() for r in replaced], "repairs": repaired.repairs},
    )
