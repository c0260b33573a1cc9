"""The in-memory form every source format is loaded into, and that graph/ analyses.

Whatever the source (frozen GraphDef, checkpoint, Keras file, SavedModel), sources/ turns it into
a *frozen* GraphDef — every weight folded into a constant — plus, when the format itself knows
them, the tensors that are its inputs and outputs, and a way to run the *original* model. The
graph/ package analyses and rewrites the GraphDef; export.py writes it as a SavedModel; the
reference runner is what the written SavedModel is proven equal to.

The form lives here, below sources/, so that imports go one way: sources/ builds it with graph/'s
help, graph/ never needs to know which source built it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from packager.errors import SourceError, first_line
from packager.layout import TensorSummary
from packager.tf_runtime import tensorflow

if TYPE_CHECKING:
    import tensorflow as tf
    from tensorflow.core.framework.graph_pb2 import GraphDef

SourceFormat = Literal["saved_model", "checkpoint", "frozen_graph", "keras", "tflite", "onnx"]

# Ops that hold state a frozen graph must not have: their values live in a checkpoint.
VARIABLE_OPS = frozenset({"Variable", "VariableV2", "VarHandleOp", "AutoReloadVariable"})


@dataclass(frozen=True)
class TensorRef:
    """One signature input or output: its key, its tensor in the GraphDef, dtype and shape."""

    key: str  # the signature key release engineers and clients use
    tensor_name: str  # "op_name:index" in the frozen GraphDef
    dtype: str  # numpy-style dtype name ("float32", "int32", "string", ...)
    shape: tuple[int | None, ...] | None  # None when the rank is unknown

    @property
    def op_name(self) -> str:
        return self.tensor_name.rsplit(":", 1)[0]

    def summary(self) -> TensorSummary:
        return TensorSummary(dtype=self.dtype, shape=list(self.shape) if self.shape is not None else None)

    def to_json(self) -> dict[str, Any]:  # a JSON object: values of several types
        return {
            "key": self.key,
            "tensor": self.tensor_name,
            "dtype": self.dtype,
            "shape": list(self.shape) if self.shape is not None else None,
        }


# Runs the original model: (feeds keyed by TensorRef.key, inputs, outputs, fixed) -> arrays keyed
# by output key. ``fixed`` maps tensor names to the --constant values folded into the serving
# graph, which graph sources feed to the unfrozen original; other sources never get any.
ReferenceRunner = Callable[
    [Mapping[str, np.ndarray], list[TensorRef], list[TensorRef], Mapping[str, np.ndarray]], dict[str, np.ndarray]
]


@dataclass
class LoadedSource:
    """A source model in tfpack's in-memory form.

    Attributes:
        path: what the user named.
        format: which sources/ module loaded it.
        graph_def: the frozen GraphDef.
        inputs: the inputs the format declares (Keras inputs, SavedModel signature), else None and
            graph analysis discovers them.
        outputs: likewise for outputs.
        files: the files the source consists of (their digests go into the provenance).
        run_reference: runs the original model for the equivalence proof.
        details: format-specific facts for inspect and provenance (e.g. keras_version): a JSON
            object, so its values are of several types.
        training_fed: ops of a training graph that only training machinery (losses, gradients,
            optimizer) consumed; freezing drops that machinery and leaves them dangling, so they
            are not outputs, only where to trace predictions back from.
        losses: the ops a training graph's gradients differentiate (its losses, whatever their
            names): never served unless named with --outputs.
        graph: graph_def already imported into a tf.Graph, when the loader made one.
    """

    path: Path
    format: SourceFormat
    graph_def: GraphDef
    inputs: list[TensorRef] | None
    outputs: list[TensorRef] | None
    files: list[Path]
    run_reference: ReferenceRunner
    details: dict[str, Any] = field(default_factory=dict)
    training_fed: frozenset[str] = frozenset()
    losses: frozenset[str] = frozenset()  # ops gradients were taken of, found before freezing
    graph: tf.Graph | None = None


def import_graph(graph_def: GraphDef, path: Path | str) -> tf.Graph:
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
