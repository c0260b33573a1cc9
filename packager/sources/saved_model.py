"""SavedModel directories (TF1 or TF2): re-exported from their serving signature.

The signature is frozen into a GraphDef so that a SavedModel from anywhere goes through the same
analysis, export and equivalence proof as every other source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from packager.errors import SourceError, UsageError, first_line
from packager.graph.frozen_model import LoadedSource, TensorRef
from packager.graph.op_scan import scan_saved_model
from packager.layout import DEFAULT_SIGNATURE
from packager.tf_runtime import numpy_dtype_name, shape_tuple, tensorflow

if TYPE_CHECKING:
    import tensorflow as tf
    from tensorflow.core.framework.graph_pb2 import GraphDef


@dataclass(frozen=True)
class FrozenSignature:
    """A SavedModel signature with its variables folded into constants.

    Attributes:
        graph_def: the frozen graph.
        inputs: keyed by the signature's input keys, in its flat (sorted key) order.
        outputs: likewise for the outputs.
    """

    graph_def: GraphDef
    inputs: list[TensorRef]
    outputs: list[TensorRef]


def freeze_signature(signature: tf.types.experimental.ConcreteFunction, description: str) -> FrozenSignature:
    """Freeze one loaded SavedModel signature into a GraphDef and its keyed inputs and outputs.

    Args:
        signature: ``loaded.signatures[name]`` of a ``tf.saved_model.load``.
        description: what the signature is, for the error message ("signature 'x' of DIR").

    Raises:
        SourceError: the signature cannot be frozen.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    input_specs = signature.structured_input_signature[1]
    try:
        frozen = convert_variables_to_constants_v2(signature)
    except Exception as exc:
        raise SourceError(f"cannot freeze {description}: {first_line(exc)}") from None
    # A signature's flat inputs and outputs are ordered by sorted key (tf.nest order for dicts).
    input_keys = sorted(input_specs)
    output_keys = sorted(signature.structured_outputs)
    inputs = [
        TensorRef(
            key=key, tensor_name=t.name, dtype=numpy_dtype_name(t.dtype), shape=shape_tuple(input_specs[key].shape)
        )
        for key, t in zip(input_keys, frozen.inputs)
    ]
    outputs = [
        TensorRef(key=key, tensor_name=t.name, dtype=numpy_dtype_name(t.dtype), shape=shape_tuple(t.shape))
        for key, t in zip(output_keys, frozen.outputs)
    ]
    return FrozenSignature(graph_def=frozen.graph.as_graph_def(), inputs=inputs, outputs=outputs)


def load_saved_model(path: Path, allowed_ops: frozenset[str] = frozenset()) -> LoadedSource:
    """Load a SavedModel directory's serving signature as a frozen GraphDef.

    The SavedModel is scanned before it is loaded: loading runs its code (the saver's restore
    op, its main_op / legacy_init_op / ``__saved_model_init_op``, resource initializers), so a
    denied op anywhere a loader or server could run is refused while nothing of it has run.

    Raises:
        UsageError: the scan found ops not in ``allowed_ops`` (exit 2).
        SourceError: the SavedModel cannot be read, loaded or frozen.
    """
    tf = tensorflow()
    scan = scan_saved_model(path, allowed_ops)
    if scan.blocking:
        raise UsageError(scan.refusal())
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # corrupt protos surface as DecodeError, OSError or OpError
        raise SourceError(f"{path} is not a loadable SavedModel: {first_line(exc)}") from None
    names = sorted(loaded.signatures.keys())
    if DEFAULT_SIGNATURE in loaded.signatures:
        signature_name = DEFAULT_SIGNATURE
    elif len(names) == 1:
        signature_name = names[0]
    else:
        raise SourceError(
            f"{path} has no '{DEFAULT_SIGNATURE}' signature and several others "
            f"({', '.join(names) or 'none'}): re-export it with a serving_default signature"
        )
    signature = loaded.signatures[signature_name]
    frozen = freeze_signature(signature, f"signature {signature_name!r} of {path}")

    def run_reference(
        feeds: Mapping[str, np.ndarray],
        inputs_: list[TensorRef],
        outputs_: list[TensorRef],
        fixed: Mapping[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        del inputs_, fixed  # the model declares its own inputs; --constant is for graph sources
        result = signature(**{k: tf.constant(v) for k, v in feeds.items()})
        return {o.key: result[o.key].numpy() for o in outputs_}

    files = sorted(p for p in path.rglob("*") if p.is_file())
    return LoadedSource(
        path=path,
        format="saved_model",
        graph_def=frozen.graph_def,
        inputs=frozen.inputs,
        outputs=frozen.outputs,
        files=files,
        run_reference=run_reference,
        details={"signature": signature_name, "signatures": names},
    )
