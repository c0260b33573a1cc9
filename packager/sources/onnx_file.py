"""ONNX models (``.onnx``, e.g. what ``torch.onnx.export`` writes), converted by onnx2tf and
proven against onnxruntime.

    read (onnx; external data beside the file) ─▶ check ─▶ refuse what onnx2tf cannot serve
    faithfully ─▶ every op convertible? ─▶ onnx2tf, in a child process (:mod:`._onnx2tf_child`)
    ─▶ SavedModel ─▶ frozen like any SavedModel signature, keyed by the
    ONNX input and output names

The reference the written model is proven equal to is onnxruntime running the file itself, never
onnx2tf's own output: a conversion that changes the numbers fails the proof.

Layout: ONNX vision models are channels-first (NCHW). By default the signature keeps each tensor
as the ONNX model declares it; ``channels_last`` moves axis 1 of every input and output of rank 3
to 5 to the end (NCW/NCHW/NCDHW → NWC/NHWC/NDHWC), done by tfpack at the signature's edge so
that the layout is exactly the declared one, whatever onnx2tf does inside.

onnx2tf pins an older TensorFlow, numpy and protobuf, so it is installed alone into tfpack's cache
dir (:mod:`packager._isolated_packages`). It runs in a child process because importing it changes
the whole process: it sets the recursion limit to 2**31-1, silences every warning, sets
TF_USE_LEGACY_KERAS, turns on TensorFlow's op determinism and seeds the random generators; and it
prints its progress on stdout, which carries ``--json`` results.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import keyword
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from packager._isolated_packages import PinnedWheel, ensure_wheel
from packager.errors import SourceError, ToolError, UsageError, first_line, shorten
from packager.graph.frozen_model import LoadedSource, TensorRef
from packager.progress import SILENT, Progress
from packager.sources._onnx2tf_child import (
    CHANNELS_RANKS,
    IMPORT_FAILED,
    SIGNATURE,
    UNSUPPORTED_OP,
)
from packager.sources.saved_model import freeze_signature
from packager.tf_runtime import tensorflow

if TYPE_CHECKING:
    import onnx
    import onnxruntime  # type: ignore[import-untyped]  # ships no type information
    import tensorflow as tf

ONNX2TF_WHEEL = PinnedWheel(
    distribution="onnx2tf",
    version="1.29.24",
    sha256="dc8b5b1cdc13cbb0b55f4b1a19cfbc60939f334638c1a025885b4f1a7fed8ab5",  # py3-none-any
    module="onnx2tf",
    directory="onnx2tf",
)
EXTRA_HINT = "pip install 'tfpack[onnx]'"
# Imported to read, run and convert an ONNX model, by module and distribution: the onnx extra of
# pyproject.toml, which a test holds this equal to (a copy, since a source checkout run without
# installing has no package metadata to read the extra from; the test extra names the extra).
# onnx2tf imports the LiteRT interpreter at module level, although tfpack never asks it for TFLite.
REQUIRED_MODULES = {
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnx_graphsurgeon": "onnx-graphsurgeon",
    "sng4onnx": "sng4onnx",
    "psutil": "psutil",
    "ai_edge_litert": "ai-edge-litert",
}
# The names the copy handed to onnx2tf gives the graph's inputs and outputs: onnx2tf rewrites names
# with ':' and silently drops an output it then cannot find (1.29.24 renames only when none is
# found), so it never sees the model's own names; the keys are mapped back by position. The
# prefix is one no name in the graph starts with.
_INPUT_PREFIX = "input_"
_OUTPUT_PREFIX = "output_"
_RESULT_FILE = "result.json"
# The child may take long on a large model, but never forever (a hung onnx2tf must not hang CI).
CHILD_TIMEOUT_S = 1800
_ONNX_DOMAINS = ("", "ai.onnx")
# Ops that draw random numbers on every run. onnx2tf folds some into one constant draw and fails
# on others, so neither the proof nor --allow-random could make such a model what it claims.
RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}
)


@dataclass(frozen=True)
class OnnxTensor:
    """One graph input or output of an ONNX model.

    Attributes:
        name: its name in the ONNX graph (the signature key tfpack serves it under).
        dtype: the numpy dtype onnxruntime takes or gives.
        shape: as declared, None for a symbolic or unknown dimension; None when the model
            declares no shape.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def has_channels(self) -> bool:
        """Whether it has a channel axis ``--channels-last`` moves."""
        return self.rank in CHANNELS_RANKS


def load_onnx_file(path: Path, *, channels_last: bool = False, progress: Progress = SILENT) -> LoadedSource:
    """Convert the ONNX model at ``path`` into tfpack's frozen form, onnxruntime as its reference.

    Args:
        channels_last: serve inputs and outputs of rank 3 to 5 channels-last (NHWC) instead of
            in the ONNX model's own layout.
        progress: told when onnx2tf is installed (once) and when it converts.

    Raises:
        UsageError: the onnx extra is missing.
        SourceError: the file is not a readable, valid ONNX model, its external data is missing,
            onnxruntime cannot run it or onnx2tf cannot convert one of its ops.
        ToolError: onnx2tf cannot be installed or fails outside the model's ops.
    """
    missing = [dist for module, dist in REQUIRED_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UsageError(f"converting an ONNX model needs {', '.join(missing)}: {EXTRA_HINT}")
    model, data_files = _read_model(path)
    inputs, outputs = _graph_tensors(model)
    if not outputs:
        raise SourceError(f"{path}: the ONNX graph has no outputs")
    _refuse_unservable_names(path, inputs, outputs)
    _refuse_constant_outputs(path, model, inputs, outputs)
    _refuse_training_behaviour(path, model)
    _refuse_unfaithful_ops(path, model)
    onnx2tf_dir = ensure_wheel(ONNX2TF_WHEEL, progress)
    _refuse_unconvertible_ops(path, model, onnx2tf_dir)
    session = _reference_session(path)
    transposed = {t.name for t in inputs if channels_last and t.has_channels()}
    details = {
        "ir_version": model.ir_version,
        "opset": {opset.domain or "ai.onnx": opset.version for opset in model.opset_import},
        "producer_name": model.producer_name,
        "producer_version": model.producer_version,
        # Integer inputs looked up in a table of the model, and its size: the ids valid inputs hold.
        "index_bounds": _index_bounds(model, inputs),
    }
    prefix = _unused_prefix(model)
    input_names = [f"{prefix}{_INPUT_PREFIX}{k}" for k in range(len(inputs))]
    output_names_ = [f"{prefix}{_OUTPUT_PREFIX}{k}" for k in range(len(outputs))]
    progress.step(f"converting {path.name} with onnx2tf {ONNX2TF_WHEEL.version}")
    tf = tensorflow()
    with tempfile.TemporaryDirectory(prefix="tfpack-onnx-") as scratch:
        work = Path(scratch)
        _write_renamed(path, model, input_names, output_names_, work / "model.onnx")
        del model  # the child reads the copy; the weights need not stay in this process twice
        result = _convert_in_child(
            path,
            work,
            onnx2tf_dir,
            {
                "input_names": input_names,
                "output_names": output_names_,
                "input_shapes": [t.shape for t in inputs],
                "output_shapes": [t.shape for t in outputs],
                "channels_last_inputs": [t.name in transposed for t in inputs],
                "channels_last": channels_last,
            },
        )
        try:
            loaded = tf.saved_model.load(str(work / "saved_model"))
        except Exception as exc:  # a SavedModel onnx2tf wrote but TensorFlow cannot read
            raise SourceError(f"{path}: onnx2tf's SavedModel does not load: {first_line(exc)}") from None
        _refuse_failing_conversion(path, loaded.signatures[SIGNATURE], session, inputs, input_names, transposed)
        frozen = freeze_signature(loaded.signatures[SIGNATURE], f"onnx2tf's conversion of {path}")
    served_inputs = _keyed(frozen.inputs, input_names, inputs, path)
    served_outputs = _keyed(frozen.outputs, output_names_, outputs, path)
    channels_last_outputs = {outputs[output_names_.index(name)].name for name in result["channels_last_outputs"]}
    by_name = {t.name: t for t in inputs}
    output_names = [t.name for t in outputs]

    def run_reference(
        feeds: Mapping[str, np.ndarray],
        inputs_: list[TensorRef],
        outputs_: list[TensorRef],
        fixed: Mapping[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        del inputs_, fixed  # onnxruntime takes every graph input; --constant is for graph sources
        unknown = [o.key for o in outputs_ if o.key not in output_names]
        if unknown:
            raise UsageError(
                f"{path}: an ONNX source serves its graph outputs ({', '.join(output_names)}), not "
                f"{', '.join(unknown)}: name some of those with --outputs, or export the tensor as an output"
            )
        absent = [name for name in by_name if name not in feeds]
        if absent:
            raise UsageError(f"{path}: onnxruntime needs every graph input: {', '.join(absent)} left out by --inputs")
        onnx_feeds = {
            name: np.asarray(np.moveaxis(feeds[name], -1, 1) if name in transposed else feeds[name]).astype(
                tensor.dtype, copy=False
            )
            for name, tensor in by_name.items()
        }
        try:
            values = session.run([o.key for o in outputs_], onnx_feeds)
        except Exception as exc:  # onnxruntime's errors derive from Exception alone (Fail, InvalidArgument...)
            # ValueError: a run that fails on these inputs is a source that cannot run them, and the
            # generated-input ladder may try other sizes.
            raise ValueError(f"onnxruntime: {first_line(exc)}") from None
        return {
            o.key: np.moveaxis(value, 1, -1) if o.key in channels_last_outputs else np.asarray(value)
            for o, value in zip(outputs_, values)
        }

    return LoadedSource(
        path=path,
        format="onnx",
        graph_def=frozen.graph_def,
        inputs=served_inputs,
        outputs=served_outputs,
        files=[path, *data_files],
        run_reference=run_reference,
        details={
            **details,
            "converter": f"onnx2tf {result['onnx2tf_version']}",
            "reference": f"onnxruntime {importlib.metadata.version('onnxruntime')} (CPUExecutionProvider)",
            "layout": "channels_last" if channels_last else "onnx",
            "channels_last": sorted(transposed | channels_last_outputs),
        },
    )


def _read_model(path: Path) -> tuple[onnx.ModelProto, list[Path]]:
    """The model with its external data loaded, and the external data files it read.

    Raises:
        SourceError: not a protobuf ModelProto, invalid, or its external data is missing,
            outside its directory or shorter than the model says.
    """
    import onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import load_external_data_for_model

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError) as exc:
        raise SourceError(f"{path} is not an ONNX model (corrupt or truncated?): {first_line(exc)}") from None
    base = path.parent.resolve()
    data_files = sorted({_external_file(path, base, tensor) for tensor in _external_tensors(model.graph)})
    try:
        # Given the path, the checker also sees the external data files beside it (and models
        # over protobuf's 2 GB limit).
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, DecodeError, ValueError) as exc:
        raise SourceError(f"{path} is not a valid ONNX model: {first_line(exc)}") from None
    try:
        load_external_data_for_model(model, str(base))
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: its external data cannot be read: {first_line(exc)}") from None
    return model, data_files


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph of its nodes (If, Loop, Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graphs(subgraph)


def _external_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    from onnx.external_data_helper import uses_external_data

    for each in _graphs(graph):
        tensors = [*each.initializer, *(sparse.values for sparse in each.sparse_initializer)]
        for node in each.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    tensors.append(attribute.t)
                tensors.extend(attribute.tensors)
        yield from (tensor for tensor in tensors if uses_external_data(tensor))


def _external_file(path: Path, base: Path, tensor: onnx.TensorProto) -> Path:
    location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
    shown = shorten(repr(location), 80)
    try:
        data = (base / location).resolve()
        is_file = data.is_file()
    except (OSError, ValueError):  # a NUL byte, a name longer than the file system allows
        raise SourceError(
            f"{path}: tensor {tensor.name!r} names external data {shown}, not a usable file name"
        ) from None
    if not location or not data.is_relative_to(base):
        # A location such as ../../secret would read a file the user never named as the source.
        raise SourceError(f"{path}: tensor {tensor.name!r} names external data outside the model's directory")
    if data.is_dir():
        raise SourceError(f"{path}: tensor {tensor.name!r} names external data {shown}, a directory, not a file")
    if not is_file:
        raise SourceError(
            f"{path}: its weights are stored in {shown}, which is not beside it: keep the data file "
            "torch.onnx.export wrote next to the .onnx"
        )
    return data


def _graph_tensors(model: onnx.ModelProto) -> tuple[list[OnnxTensor], list[OnnxTensor]]:
    """The graph's inputs (without the initializers older exporters list among them) and outputs."""
    from onnx.helper import tensor_dtype_to_np_dtype

    def tensor(value: onnx.ValueInfoProto) -> OnnxTensor:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise SourceError(
                f"graph input/output {value.name!r} is not a tensor (a sequence or map): TensorFlow Serving "
                "signatures carry tensors only"
            )
        shape = (
            tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
            if tensor_type.HasField("shape")
            else None
        )
        return OnnxTensor(name=value.name, dtype=np.dtype(tensor_dtype_to_np_dtype(tensor_type.elem_type)), shape=shape)

    initialized = {t.name for t in model.graph.initializer}
    inputs = [tensor(value) for value in model.graph.input if value.name not in initialized]
    return inputs, [tensor(value) for value in model.graph.output]


def _refuse_training_behaviour(path: Path, model: onnx.ModelProto) -> None:
    """Raise SourceError for what a model exported in training mode carries: random draws
    (dropout in training mode, random ops) and batch norm on the batch's statistics.

    onnxruntime runs them faithfully but onnx2tf does not (random draws folded into constants,
    batch norm with the running statistics), and a server must not mix the samples of a batch.
    """
    from onnx.numpy_helper import to_array

    constants = {t.name: t for graph in _graphs(model.graph) for t in graph.initializer}
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
                if value is not None:
                    constants[node.output[0]] = value

    def constant_false(name: str) -> bool:
        return name in constants and not np.asarray(to_array(constants[name])).any()

    random: list[str] = []
    batch_statistics: list[str] = []
    for graph in _graphs(model.graph):
        for node in graph.node:
            label = f"{node.op_type} (node {node.name})" if node.name else node.op_type
            training_mode = node.input[2] if len(node.input) > 2 else ""
            if node.domain in _ONNX_DOMAINS and (
                node.op_type in RANDOM_OPS
                or (node.op_type == "Dropout" and training_mode and not constant_false(training_mode))
            ):
                random.append(label)
            elif node.op_type == "BatchNormalization" and any(
                a.name == "training_mode" and a.i for a in node.attribute
            ):
                batch_statistics.append(label)
    if random:
        raise SourceError(
            f"{path}: random ops in the graph: {', '.join(random[:4])}: a model exported in training "
            "mode keeps dropout drawing (call model.eval() before torch.onnx.export); onnx2tf cannot serve "
            "random draws faithfully"
        )
    if batch_statistics:
        raise SourceError(
            f"{path}: batch norm on the batch's statistics (training_mode=1): {', '.join(batch_statistics[:4])}: "
            "each answer would depend on the rest of its batch; export the model in inference mode "
            "(model.eval() before torch.onnx.export)"
        )


def _refuse_unservable_names(path: Path, inputs: list[OnnxTensor], outputs: list[OnnxTensor]) -> None:
    """Raise SourceError for graph outputs listed twice, and for inputs whose names TensorFlow
    makes the same parameter name (it replaces what is not a letter or digit by ``_``): the
    SavedModel would not load and the exports would fail on it."""
    names = [t.name for t in outputs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise SourceError(
            f"{path}: the ONNX graph lists output(s) {', '.join(map(repr, twice))} more than once: a signature "
            "serves each output under one key"
        )
    by_parameter: dict[str, list[str]] = {}
    for tensor in inputs:
        by_parameter.setdefault(_parameter_name(tensor.name), []).append(tensor.name)
    keywords = sorted(
        name for parameter, names in by_parameter.items() if keyword.iskeyword(parameter) for name in names
    )
    if keywords:
        # TensorFlow refuses a Python keyword as a parameter name when the SavedModel is loaded,
        # long after it was written: refused here, before anything is.
        raise SourceError(
            shorten(
                f"{path}: input name(s) {', '.join(map(repr, keywords))} are Python keywords, which TensorFlow "
                "cannot load as signature parameters: rename the inputs (input_names= in torch.onnx.export)"
            )
        )
    clashes = [names for names in by_parameter.values() if len(names) > 1]
    if clashes:
        listed = "; ".join(", ".join(map(repr, names)) for names in clashes[:3])
        raise SourceError(
            shorten(
                f"{path}: input names {listed} all become the TensorFlow parameter name "
                f"{_parameter_name(clashes[0][0])!r}: rename the inputs (input_names= in torch.onnx.export)"
            )
        )


def _parameter_name(name: str) -> str:
    """The name TensorFlow gives a function parameter called ``name`` (its sanitize_arg_name)."""
    swapped = "".join(c if c.isalnum() else "_" for c in name)
    return swapped if swapped[:1].isalpha() else "arg_" + swapped


def _refuse_constant_outputs(
    path: Path, model: onnx.ModelProto, inputs: list[OnnxTensor], outputs: list[OnnxTensor]
) -> None:
    """Raise SourceError for an output no input reaches: onnx2tf turns it into a constant layer
    it cannot save behind a signature, and a server answering the same whatever it is sent is
    almost certainly a mistaken export."""
    reached = {t.name for t in inputs}

    def names_used(node: onnx.NodeProto) -> set[str]:
        used = set(node.input)
        for attribute in node.attribute:  # a subgraph may read outer tensors by name
            for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                for inner in _graphs(graph):
                    for each in inner.node:
                        used.update(each.input)
                    used.update(o.name for o in inner.output)
        return used

    changed = True
    while changed:  # nodes are topologically sorted, but one pass is not relied on
        changed = False
        for node in model.graph.node:
            if not set(node.output) <= reached and names_used(node) & reached:
                reached.update(node.output)
                changed = True
    constant = [t.name for t in outputs if t.name not in reached]
    if constant:
        raise SourceError(
            shorten(
                f"{path}: output(s) {', '.join(map(repr, constant[:4]))} are constants of the model (they do not "
                "depend on any input): export the model without them"
            )
        )


def _refuse_unfaithful_ops(path: Path, model: onnx.ModelProto) -> None:
    """Raise SourceError for ops onnx2tf converts into something that computes other numbers on
    some inputs: Mod with fmod=1 (C's remainder, torch.fmod, integer division's remainder in a
    torch export) becomes floor modulo, which differs whenever the operands' signs differ."""
    refused = [
        f"Mod (node {node.name})" if node.name else "Mod"
        for graph in _graphs(model.graph)
        for node in graph.node
        if node.domain in _ONNX_DOMAINS
        and node.op_type == "Mod"
        and any(a.name == "fmod" and a.i for a in node.attribute)
    ]
    if refused:
        raise SourceError(
            f"{path}: {', '.join(refused[:4])} takes the remainder with fmod=1 (torch.fmod, C's remainder): "
            f"onnx2tf {ONNX2TF_WHEEL.version} computes floor modulo instead, which differs for negative values; "
            "export it with floor semantics (torch.remainder, %) or avoid the op"
        )


def _index_bounds(model: onnx.ModelProto, inputs: list[OnnxTensor]) -> dict[str, int]:
    """The exclusive upper bound of each integer input used as Gather indices into a table the
    model holds (an Embedding's weights), read from the ONNX graph: onnx2tf's TensorFlow graph
    wraps such a lookup in index arithmetic (negative ids) the TensorFlow-side analysis does not
    follow. Ids only pass through ops that keep values (Cast, Reshape, ...) on the way."""
    keeps_values = {"Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Expand"}
    tables = {t.name: list(t.dims) for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    bounds: dict[str, int] = {}
    for tensor in inputs:
        if not np.issubdtype(tensor.dtype, np.integer):
            continue
        reached, frontier, found = {tensor.name}, [tensor.name], []
        while frontier:
            name = frontier.pop()
            for node in consumers.get(name, []):
                if node.op_type in keeps_values and node.input[0] == name:
                    fresh = [out for out in node.output[:1] if out not in reached]
                    reached.update(fresh)
                    frontier.extend(fresh)
                elif node.op_type == "Gather" and node.input[1] == name and node.input[0] in tables:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    dims = tables[node.input[0]]
                    if -len(dims) <= axis < len(dims):
                        found.append(dims[axis])
        if found:
            bounds[tensor.name] = min(found)
    return bounds


def _unused_prefix(model: onnx.ModelProto) -> str:
    """A prefix for tfpack's names of the graph's inputs and outputs that no tensor, node or
    graph of the model starts with, so that a renamed input never joins a tensor of the graph."""
    names: set[str] = set()
    for graph in _graphs(model.graph):
        names.update(value.name for value in [*graph.input, *graph.output, *graph.value_info])
        names.update(tensor.name for tensor in graph.initializer)
        for node in graph.node:
            names.update([node.name, *node.input, *node.output])
    for function in model.functions:
        names.update(function.input)
        names.update(function.output)
    k = 0
    while any(name.startswith(_prefix(k)) for name in names):
        k += 1
    return _prefix(k)


def _prefix(k: int) -> str:
    return "tfpack_" if k == 0 else f"tfpack{k}_"


def _refuse_unconvertible_ops(path: Path, model: onnx.ModelProto, onnx2tf_dir: Path) -> None:
    """Raise SourceError naming the ops onnx2tf has no converter for (it has one module per op)."""
    converters = {p.stem for p in (onnx2tf_dir / "onnx2tf" / "ops").glob("*.py")}
    functions = {function.name for function in model.functions}
    missing: dict[str, str] = {}
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.op_type not in converters and node.op_type not in functions:
                op = node.op_type if node.domain in _ONNX_DOMAINS else f"{node.domain}:{node.op_type}"
                missing.setdefault(op, f"{op} (node {node.name})" if node.name else op)
    if missing:
        raise SourceError(_cannot_convert(path, list(missing.values())))


def _reference_session(path: Path) -> onnxruntime.InferenceSession:
    """onnxruntime on the CPU, reading the file itself (and its external data) as the reference."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: tfpack reports failures itself, in one line
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors derive from Exception alone (Fail, InvalidGraph...)
        raise SourceError(f"{path}: onnxruntime cannot load it: {first_line(exc)}") from None


def _write_renamed(
    path: Path, model: onnx.ModelProto, input_names: list[str], output_names: list[str], target: Path
) -> None:
    """Write ``model`` with its inputs and outputs renamed to ``input_names`` and ``output_names``
    (Identity nodes keep the graph unchanged inside) and check the copy; weights as external
    data, so a model over 2 GB can be written too.

    ``model`` is changed in place (renamed, its weights moved out): a copy would double the memory
    a large model takes.

    Raises:
        ToolError: the renamed copy is not a valid model (a tfpack bug the message names).
    """
    import onnx
    from onnx import helper

    graph = model.graph
    inputs = iter(input_names)
    initialized = {t.name for t in graph.initializer}
    entry_nodes = []
    for value in graph.input:
        if value.name not in initialized:
            original, value.name = value.name, next(inputs)
            entry_nodes.append(helper.make_node("Identity", [value.name], [original], name=f"{value.name}_identity"))
    exit_nodes = []
    for value, name in zip(graph.output, output_names):
        original, value.name = value.name, name
        exit_nodes.append(helper.make_node("Identity", [original], [value.name], name=f"{value.name}_identity"))
    nodes = [*entry_nodes, *graph.node, *exit_nodes]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(target), save_as_external_data=True, location=f"{target.name}.data", size_threshold=1024)
    try:
        onnx.checker.check_model(str(target))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ToolError(
            f"{path}: tfpack's renamed copy for onnx2tf is invalid (a tfpack bug): {first_line(exc)}"
        ) from None


def _convert_in_child(path: Path, work: Path, onnx2tf_dir: Path, request: dict[str, object]) -> dict[str, Any]:
    """Run onnx2tf on ``work/model.onnx`` in a child process; it writes ``work/saved_model``.

    Returns:
        the child's result (a JSON object): onnx2tf_version, and channels_last_outputs (the
        tfpack output names served channels-last).

    Raises:
        SourceError: onnx2tf cannot convert an op or fails on the model.
        ToolError: the child cannot import onnx2tf, dies or times out.
    """
    import packager

    (work / "request.json").write_text(
        json.dumps(
            {
                **request,
                "model": str(work / "model.onnx"),
                "saved_model": str(work / "saved_model"),
                "onnx2tf_dir": str(onnx2tf_dir),
                "result": str(work / _RESULT_FILE),
            }
        )
    )
    # The child imports the child module from the same tfpack, installed or not. Its directory
    # goes first only when the child's Python would not find it (a source checkout): the
    # site-packages of an installed tfpack must not come before the standard library.
    project = str(Path(packager.__file__).resolve().parent.parent)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    command = [
        sys.executable,
        "-c",
        "import sys\n"
        "if sys.argv[2] not in sys.path: sys.path.insert(0, sys.argv[2])\n"
        "from packager.sources._onnx2tf_child import convert_in_this_process\n"
        "sys.exit(convert_in_this_process(sys.argv[1]))",
        str(work / "request.json"),
        project,
    ]
    version = f"onnx2tf {ONNX2TF_WHEEL.version}"
    try:
        completed = subprocess.run(
            command, cwd=work, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise ToolError(f"{version} took over {CHILD_TIMEOUT_S} s converting {path}: stopped") from None
    except OSError as exc:
        raise ToolError(f"cannot start a Python child process for onnx2tf: {exc.strerror or exc}") from None
    try:
        result = json.loads((work / _RESULT_FILE).read_text())
    except (OSError, ValueError):
        lines = [line for line in (completed.stderr or completed.stdout).splitlines() if line.strip()]
        cause = lines[-1] if lines else f"exit status {completed.returncode}"
        raise ToolError(f"{version} died converting {path}: {shorten(cause)}") from None
    error = result.get("error")
    if error == UNSUPPORTED_OP:
        raise SourceError(_cannot_convert(path, [result["node"] or result["op"]]))
    if error == IMPORT_FAILED:
        raise ToolError(f"{version} cannot be imported: {shorten(result['message'])} ({EXTRA_HINT})")
    if error:
        where = f" at {result['node']}" if result.get("node") else ""
        raise SourceError(
            f"{path}: {version} fails{where} (a limitation of onnx2tf, not of the model): "
            f"{shorten(result['message'], 200)}"
        )
    return dict(result)


def _refuse_failing_conversion(
    path: Path,
    signature: Callable[..., Mapping[str, tf.Tensor]],
    session: onnxruntime.InferenceSession,
    inputs: list[OnnxTensor],
    input_names: list[str],
    transposed: set[str],
) -> None:
    """Raise SourceError when onnx2tf's SavedModel fails on inputs onnxruntime runs: zeros, with
    free dimensions of sizes other than 1 (onnx2tf sometimes fixes a dynamic axis to the size it
    traced). Caught here, the failure is named as onnx2tf's, not as the written version's."""
    tf = tensorflow()
    feeds = {
        t.name: np.zeros([(2 if k == 0 else 3) if d is None else d for k, d in enumerate(t.shape or ())], dtype=t.dtype)
        for t in inputs
    }
    try:
        session.run(None, feeds)
    except Exception:  # onnxruntime's errors derive from Exception alone: the probe says nothing
        return
    served = {
        name: tf.constant(np.moveaxis(feeds[t.name], 1, -1) if t.name in transposed else feeds[t.name])
        for name, t in zip(input_names, inputs)
    }
    try:
        signature(**served)
    except (tf.errors.OpError, ValueError, TypeError) as exc:
        shapes = ", ".join(f"{t.name} {list(feeds[t.name].shape)}" for t in inputs)
        raise SourceError(
            f"{path}: onnx2tf {ONNX2TF_WHEEL.version}'s SavedModel fails on inputs onnxruntime runs ({shapes}); a "
            f"limitation of onnx2tf, not of the model: {shorten(first_line(exc), 200)}"
        ) from None


def _cannot_convert(path: Path, ops: list[str]) -> str:
    """The one message for ops onnx2tf has no converter for, found before or during conversion."""
    return (
        f"{path}: onnx2tf {ONNX2TF_WHEEL.version} cannot convert op(s) {', '.join(ops[:5])}: export the model "
        "without them (another opset, or the op decomposed)"
    )


def _keyed(refs: list[TensorRef], keys: list[str], tensors: list[OnnxTensor], path: Path) -> list[TensorRef]:
    """``refs`` (keyed by tfpack's ``keys``) keyed by the ONNX names again, in the ONNX graph's order."""
    by_key = {ref.key: ref for ref in refs}
    if sorted(by_key) != sorted(keys):
        raise SourceError(
            f"{path}: onnx2tf's SavedModel has signature keys {', '.join(sorted(by_key))}, "
            f"not one per ONNX tensor ({', '.join(t.name for t in tensors)})"
        )
    return [replace(by_key[key], key=tensor.name) for key, tensor in zip(keys, tensors)]
