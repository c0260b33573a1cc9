"""ONNX models (``.onnx``, e.g. what ``torch.onnx.export`` writes), converted by onnx2tf and
proven against onnxruntime.

    read (onnx; external data beside the file) ─▶ check ─▶ every op convertible? ─▶ onnx2tf,
    in a child process ─▶ SavedModel ─▶ frozen like any SavedModel signature, keyed by the
    ONNX input and output names

The reference the written model is proven equal to is onnxruntime running the file itself, never
onnx2tf's own output: a conversion that changes the numbers fails the proof.

Layout: ONNX vision models are channels-first (NCHW). By default the signature keeps each tensor
as the ONNX model declares it; ``channels_last`` moves axis 1 of every input and output of rank 3
to 5 to the end (NCW/NCHW/NCDHW → NWC/NHWC/NDHWC), done by tfpack at the signature's edge so that the layout is
exactly the declared one, whatever onnx2tf does inside.

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
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from packager._isolated_packages import PinnedWheel, ensure_wheel
from packager.errors import SourceError, ToolError, UsageError, first_line, shorten
from packager.graph.frozen_model import LoadedSource, TensorRef
from packager.progress import SILENT, Progress
from packager.sources.saved_model import freeze_signature
from packager.tf_runtime import tensorflow

if TYPE_CHECKING:
    import onnx
    import onnxruntime  # type: ignore[import-untyped]  # ships no type information
    import tensorflow as tf
    import tf_keras

ONNX2TF_WHEEL = PinnedWheel(
    distribution="onnx2tf",
    version="1.29.24",
    sha256="dc8b5b1cdc13cbb0b55f4b1a19cfbc60939f334638c1a025885b4f1a7fed8ab5",  # py3-none-any
    module="onnx2tf",
    directory="onnx2tf",
)
EXTRA_HINT = "pip install 'tfpack[onnx]'"
# Imported to read, run and convert an ONNX model (the onnx extra), by module and distribution.
# onnx2tf imports the LiteRT interpreter at module level, although tfpack never asks it for TFLite.
REQUIRED_MODULES = {
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnx_graphsurgeon": "onnx-graphsurgeon",
    "sng4onnx": "sng4onnx",
    "psutil": "psutil",
    "ai_edge_litert": "ai-edge-litert",
}
# The ranks of tensors with a channel axis to move: NCW, NCHW, NCDHW (what onnx2tf can keep, too).
CHANNELS_RANKS = (3, 4, 5)
# What the copy handed to onnx2tf calls the graph's inputs and outputs: onnx2tf rewrites names
# with ':' and silently drops an output it then cannot find (1.29.24 renames only when none is
# found), so it never sees the model's own names; the keys are mapped back by position.
_INPUT_NAME = "tfpack_input_{}"
_OUTPUT_NAME = "tfpack_output_{}"
_SIGNATURE = "serving_default"
_RESULT_FILE = "result.json"
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
    _refuse_training_behaviour(path, model)
    onnx2tf_dir = ensure_wheel(ONNX2TF_WHEEL, progress)
    _refuse_unconvertible_ops(path, model, onnx2tf_dir)
    session = _reference_session(path)
    transposed = {t.name for t in inputs if channels_last and t.has_channels()}
    details = {
        "ir_version": model.ir_version,
        "opset": {opset.domain or "ai.onnx": opset.version for opset in model.opset_import},
        "producer_name": model.producer_name,
        "producer_version": model.producer_version,
    }
    progress.step(f"converting {path.name} with onnx2tf {ONNX2TF_WHEEL.version}")
    tf = tensorflow()
    with tempfile.TemporaryDirectory(prefix="tfpack-onnx-") as scratch:
        work = Path(scratch)
        _write_renamed(model, inputs, outputs, work / "model.onnx")
        del model  # the child reads the copy; the weights need not stay in this process twice
        result = _convert_in_child(path, work, onnx2tf_dir, inputs, outputs, transposed, channels_last)
        try:
            loaded = tf.saved_model.load(str(work / "saved_model"))
        except Exception as exc:  # a SavedModel onnx2tf wrote but TensorFlow cannot read
            raise SourceError(f"{path}: onnx2tf's SavedModel does not load: {first_line(exc)}") from None
        frozen = freeze_signature(loaded.signatures[_SIGNATURE], f"onnx2tf's conversion of {path}")
    served_inputs = _keyed(frozen.inputs, _INPUT_NAME, inputs, path)
    served_outputs = _keyed(frozen.outputs, _OUTPUT_NAME, outputs, path)
    channels_last_outputs = {outputs[_position(name, _OUTPUT_NAME)].name for name in result["channels_last_outputs"]}
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
    data = (base / location).resolve()
    if not location or not data.is_relative_to(base):
        # A location such as ../../secret would read a file the user never named as the source.
        raise SourceError(f"{path}: tensor {tensor.name!r} names external data outside the model's directory")
    if not data.is_file():
        raise SourceError(
            f"{path}: its weights are stored in {location}, which is not beside it: keep the data file "
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
        listing = ", ".join(list(missing.values())[:5])
        raise SourceError(
            f"{path}: onnx2tf {ONNX2TF_WHEEL.version} cannot convert op(s) {listing}: export the model "
            "without them (another opset, or the op decomposed)"
        )


def _reference_session(path: Path) -> onnxruntime.InferenceSession:
    """onnxruntime on the CPU, reading the file itself (and its external data) as the reference."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: tfpack reports failures itself, in one line
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors derive from Exception alone (Fail, InvalidGraph...)
        raise SourceError(f"{path}: onnxruntime cannot load it: {first_line(exc)}") from None


def _write_renamed(model: onnx.ModelProto, inputs: list[OnnxTensor], outputs: list[OnnxTensor], target: Path) -> None:
    """Write ``model`` with inputs and outputs renamed to tfpack's (Identity nodes keep the graph
    unchanged inside); weights as external data, so a model over 2 GB can be written too.

    ``model`` is changed in place (renamed, its weights moved out): a copy would double the memory
    a large model takes.
    """
    import onnx
    from onnx import helper

    graph = model.graph
    renamed = {t.name: _INPUT_NAME.format(k) for k, t in enumerate(inputs)}
    entry_nodes = []
    for value in graph.input:
        if value.name in renamed:
            original, value.name = value.name, renamed[value.name]
            entry_nodes.append(helper.make_node("Identity", [value.name], [original], name=f"{value.name}_identity"))
    exit_nodes = []
    for k, value in enumerate(graph.output):
        original, value.name = value.name, _OUTPUT_NAME.format(k)
        exit_nodes.append(helper.make_node("Identity", [original], [value.name], name=f"{value.name}_identity"))
    nodes = [*entry_nodes, *graph.node, *exit_nodes]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(target), save_as_external_data=True, location=f"{target.name}.data", size_threshold=1024)


def _convert_in_child(
    path: Path,
    work: Path,
    onnx2tf_dir: Path,
    inputs: list[OnnxTensor],
    outputs: list[OnnxTensor],
    transposed: set[str],
    channels_last: bool,
) -> dict[str, Any]:
    """Run onnx2tf on ``work/model.onnx`` in a child process; it writes ``work/saved_model``.

    Returns:
        the child's result (a JSON object): onnx2tf_version, and channels_last_outputs (the
        tfpack output names served channels-last).

    Raises:
        SourceError: onnx2tf cannot convert an op or fails on the model.
        ToolError: the child cannot import onnx2tf or dies.
    """
    import packager

    request = {
        "model": str(work / "model.onnx"),
        "saved_model": str(work / "saved_model"),
        "onnx2tf_dir": str(onnx2tf_dir),
        "channel_inputs": [t.has_channels() for t in inputs],
        "transposed_inputs": [t.name in transposed for t in inputs],
        "output_shapes": [t.shape for t in outputs],
        "channels_last": channels_last,
        "result": str(work / _RESULT_FILE),
    }
    (work / "request.json").write_text(json.dumps(request))
    # The child imports this module from the same tfpack, installed or not.
    project = str(Path(packager.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [project, os.environ.get("PYTHONPATH")]))}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    command = [
        sys.executable,
        "-c",
        "import sys; from packager.sources.onnx_file import convert_in_this_process; "
        "sys.exit(convert_in_this_process(sys.argv[1]))",
        str(work / "request.json"),
    ]
    try:
        completed = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ToolError(f"cannot start a Python child process for onnx2tf: {exc.strerror or exc}") from None
    try:
        result = json.loads((work / _RESULT_FILE).read_text())
    except (OSError, ValueError):
        lines = [line for line in (completed.stderr or completed.stdout).splitlines() if line.strip()]
        cause = lines[-1] if lines else f"exit status {completed.returncode}"
        raise ToolError(f"onnx2tf {ONNX2TF_WHEEL.version} died converting {path}: {shorten(cause)}") from None
    if result.get("error") == "unsupported_op":
        raise SourceError(
            f"{path}: onnx2tf {ONNX2TF_WHEEL.version} cannot convert op {result['op']}: export the model "
            "without it (another opset, or the op decomposed)"
        )
    if result.get("error") == "import":
        raise ToolError(f"onnx2tf {ONNX2TF_WHEEL.version} cannot be imported: {result['message']} ({EXTRA_HINT})")
    if result.get("error"):
        raise SourceError(f"{path}: onnx2tf {ONNX2TF_WHEEL.version} cannot convert it: {result['message']}")
    return dict(result)


def _keyed(refs: list[TensorRef], pattern: str, tensors: list[OnnxTensor], path: Path) -> list[TensorRef]:
    """``refs`` keyed by the ONNX names again, in the ONNX graph's order."""
    by_key = {ref.key: ref for ref in refs}
    keys = [pattern.format(k) for k in range(len(tensors))]
    if sorted(by_key) != sorted(keys):
        raise SourceError(
            f"{path}: onnx2tf's SavedModel has signature keys {', '.join(sorted(by_key))}, "
            f"not one per ONNX tensor ({', '.join(t.name for t in tensors)})"
        )
    return [replace(by_key[key], key=tensor.name) for key, tensor in zip(keys, tensors)]


def convert_in_this_process(request_file: str) -> int:
    """The child process: convert with onnx2tf and save a SavedModel whose signature keeps (or,
    asked to, moves) the ONNX layout at its edge. Writes the request's result file.

    Not for use in tfpack's own process: importing onnx2tf changes process-wide state.

    Returns:
        the exit status (0 whenever a result file was written).
    """
    request = json.loads(Path(request_file).read_text())
    result_file = Path(request["result"])

    def finish(**result: object) -> int:
        result_file.write_text(json.dumps(result))
        return 0

    onnx2tf_dir = request["onnx2tf_dir"]
    if onnx2tf_dir not in sys.path:
        sys.path.append(onnx2tf_dir)  # appended: it must never shadow the project's own packages
    try:
        import onnx2tf  # type: ignore[import-not-found]  # in tfpack's cache dir, not site-packages
    except ImportError as exc:
        return finish(error="import", message=shorten(str(exc)))
    if not Path(onnx2tf.__file__ or "").resolve().is_relative_to(Path(onnx2tf_dir).resolve()):
        return finish(
            error="import",
            message=f"an onnx2tf other than tfpack's pinned one is installed in this Python ({onnx2tf.__file__}): "
            "uninstall it (pip uninstall onnx2tf); tfpack installs its own",
        )
    transposed: list[bool] = request["transposed_inputs"]
    with_channels: list[bool] = request["channel_inputs"]
    try:
        model = onnx2tf.convert(
            input_onnx_file_path=request["model"],
            output_folder_path=str(Path(request["model"]).parent / "onnx2tf"),
            # The model is returned, not saved: its own save path also writes TFLite files.
            disable_model_save=True,
            non_verbose=True,
            # onnxsim is not installed (a native build), and the proof needs the model as written.
            not_use_onnxsim=True,
            # Every input keeps its ONNX layout inside (onnx2tf takes ranks 3 to 5 here, and
            # leaves the others as they are); the signature's edge moves channels.
            keep_ncw_or_nchw_or_ncdhw_input_names=[
                _INPUT_NAME.format(k) for k, channels in enumerate(with_channels) if channels
            ]
            or None,
        )
    except ModuleNotFoundError as exc:  # onnx2tf imports onnx2tf.ops.OPTYPE for each node
        op = re.fullmatch(r"onnx2tf\.ops\.(\w+)", exc.name or "")
        if op:
            return finish(error="unsupported_op", op=op.group(1))
        return finish(error="import", message=shorten(str(exc)))
    except (Exception, SystemExit) as exc:  # onnx2tf raises any type, or calls sys.exit
        return finish(error="failed", message=_plain(first_line(exc)) or type(exc).__name__)
    try:
        saved = _save_served_model(
            model, transposed, request["output_shapes"], request["channels_last"], request["saved_model"]
        )
        return finish(onnx2tf_version=onnx2tf.__version__, **saved)
    except (ValueError, TypeError) as exc:
        return finish(error="failed", message=f"saving its SavedModel: {first_line(exc)}")


def _save_served_model(
    model: tf_keras.Model,
    transposed: list[bool],
    onnx_output_shapes: list[list[int | None] | None],
    channels_last: bool,
    export_dir: str,
) -> dict[str, object]:
    """Save onnx2tf's Keras model behind a signature in the served layout (child process only)."""
    import tensorflow as tf

    specs = []
    for tensor in model.inputs:  # model.inputs order is the order the model is called with
        k = _position(tensor.name, _INPUT_NAME)
        shape = list(tensor.shape)
        moved = transposed[k]
        specs.append(
            tf.TensorSpec([shape[0], *shape[2:], shape[1]] if moved else shape, tensor.dtype, name=tensor.name)
        )
    moved_inputs = [transposed[_position(tensor.name, _INPUT_NAME)] for tensor in model.inputs]
    output_names: list[str] = list(model.output_names)
    # onnx2tf computes some outputs channels-last (its own layout): each is put in the served one.
    layouts = getattr(model, "onnx_output_layouts", {})
    computed_last = {
        name: _computed_channels_last(
            list(tensor.shape), onnx_output_shapes[_position(name, _OUTPUT_NAME)], bool(layouts.get(name, False))
        )
        for name, tensor in zip(output_names, model.outputs)
    }
    served_last = {
        name: channels_last and tensor.shape.rank in CHANNELS_RANKS for name, tensor in zip(output_names, model.outputs)
    }

    def to_first(x: tf.Tensor) -> tf.Tensor:
        rank = x.shape.rank
        return tf.transpose(x, [0, rank - 1, *range(1, rank - 1)])

    def to_last(x: tf.Tensor) -> tf.Tensor:
        rank = x.shape.rank
        return tf.transpose(x, [0, *range(2, rank), 1])

    @tf.function(input_signature=specs)
    def serve(*args: tf.Tensor) -> dict[str, tf.Tensor]:
        feeds = [to_first(x) if moved else x for x, moved in zip(args, moved_inputs)]
        result = model(feeds if len(feeds) != 1 else feeds[0], training=False)
        values = list(result) if isinstance(result, list | tuple) else [result]
        served = {}
        for name, value in zip(output_names, values):
            computed, wanted = computed_last[name], served_last[name]
            if computed != wanted:
                value = to_last(value) if wanted else to_first(value)
            served[name] = tf.identity(value)
        return served

    holder = tf.Module()
    holder.model = model  # tracked: its variables are saved with the signature
    tf.saved_model.save(holder, export_dir, signatures={_SIGNATURE: serve.get_concrete_function()})
    return {"channels_last_outputs": sorted(name for name, last in served_last.items() if last)}


def _computed_channels_last(
    tf_shape: list[int | None], onnx_shape: list[int | None] | None, onnx2tf_says: bool
) -> bool:
    """Whether onnx2tf's output of ``tf_shape`` is the ONNX output moved channels-last.

    onnx2tf records a layout per output, but not always the right one (1.29.24 calls a
    training-mode BatchNormalization's NHWC output channels-first): the declared ONNX shape
    decides when exactly one of the two layouts fits it; otherwise onnx2tf's record stands.
    """
    if onnx_shape is None or len(onnx_shape) != len(tf_shape) or len(tf_shape) not in CHANNELS_RANKS:
        return onnx2tf_says
    moved = [onnx_shape[0], *onnx_shape[2:], onnx_shape[1]]

    def fits(declared: list[int | None]) -> bool:
        return all(a is None or b is None or a == b for a, b in zip(tf_shape, declared))

    as_declared, as_moved = fits(onnx_shape), fits(moved)
    return as_moved if as_declared != as_moved else onnx2tf_says


def _plain(text: str) -> str:
    """``text`` without the terminal colour codes onnx2tf puts in its messages."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _position(name: str, pattern: str) -> int:
    """K of a tensor tfpack named ``pattern.format(K)`` (Keras may add ``:0``)."""
    prefix = pattern.removesuffix("{}")
    match = re.fullmatch(re.escape(prefix) + r"(\d+)(?::\d+)?", name)
    if match is None:
        raise ValueError(f"onnx2tf renamed tensor {name!r}")
    return int(match.group(1))
