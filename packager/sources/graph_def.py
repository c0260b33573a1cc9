"""Frozen GraphDefs: binary ``.pb`` or text ``.pbtxt`` files, as written by freeze_graph."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from packager.errors import SourceError, first_line
from packager.graph.frozen_model import VARIABLE_OPS, LoadedSource, TensorRef, import_graph
from packager.tf_runtime import reference_session, tensorflow

if TYPE_CHECKING:
    import tensorflow as tf
    from tensorflow.core.framework.graph_pb2 import GraphDef


def read_graph_def(path: Path) -> GraphDef:
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
    # One session, made on first use and reused (towers run the source per tower).
    sessions: list[tf.compat.v1.Session] = []

    def run_reference(
        feeds: Mapping[str, np.ndarray],
        inputs: list[TensorRef],
        outputs: list[TensorRef],
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
        details={
            "encoding": "text" if path.suffix == ".pbtxt" else "binary",
            "replaced_inputs": [r.to_json() for r in replaced],
            "repairs": repaired.repairs,
        },
    )
