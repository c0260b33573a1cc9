"""The in-memory form every source format is loaded into.

Whatever the source (frozen GraphDef, Keras file, SavedModel), it becomes a *frozen* GraphDef —
every weight folded into a constant — plus, when the format itself knows them, the tensors that
are its inputs and outputs, and a way to run the *original* model. The graph/ package analyses and
rewrites the GraphDef; export.py writes it as a SavedModel; the reference runner is what the
written SavedModel is proven equal to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packager.layout import TensorSummary


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
        return TensorSummary(dtype=self.dtype, shape=list(self.shape) if self.shape is not None else None)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
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
        format: "frozen_graph", "keras", "saved_model".
        graph_def: the frozen GraphDef (tensorflow.core.framework.graph_pb2.GraphDef).
        inputs: the inputs the format declares (Keras inputs, SavedModel signature), else None and
            graph analysis discovers them.
        outputs: likewise for outputs.
        files: the files the source consists of (their digests go into the provenance).
        run_reference: runs the original model for the equivalence proof.
        details: format-specific facts for inspect and provenance (e.g. keras_version).
        training_fed: ops of a training graph that only training machinery (losses, gradients,
            optimizer) consumed; freezing drops that machinery and leaves them dangling, so they
            are not outputs, only where to trace predictions back from.
        losses: the ops a training graph's gradients differentiate (its losses, whatever their
            names): never served unless named with --outputs.
    """

    path: Path
    format: str
    graph_def: Any
    inputs: list[TensorRef] | None
    outputs: list[TensorRef] | None
    files: list[Path]
    run_reference: ReferenceRunner
    details: dict[str, Any] = field(default_factory=dict)
    training_fed: frozenset[str] = frozenset()
    losses: frozenset[str] = frozenset()  # ops gradients were taken of, found before freezing
    graph: Any = None  # graph_def already imported into a tf.Graph, when the loader made one
