"""The child process that runs onnx2tf for :mod:`packager.sources.onnx_file`.

onnx2tf changes the whole process it is imported into (recursion limit, warnings, legacy Keras,
op determinism, random seeds) and prints on stdout, so it never runs in tfpack's own process:
``onnx_file`` starts ``python -c`` calling :func:`convert_in_this_process` with a request file,
and reads the result file it writes. This module imports nothing of tfpack's beyond the standard
library, so the child imports only what the conversion needs.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf
    import tf_keras

# The ranks of tensors with a channel axis: NCW, NCHW, NCDHW.
CHANNELS_RANKS = (3, 4, 5)
# The ranks onnx2tf 1.29.24 can keep channels-first inside (keeping rank 5 crashes it): an input
# of rank 5 is converted channels-last by onnx2tf and moved back at the signature's edge.
KEPT_RANKS = (3, 4)
SIGNATURE = "serving_default"
# The result's ``error`` values.
UNSUPPORTED_OP = "unsupported_op"
IMPORT_FAILED = "import"
FAILED = "failed"


def convert_in_this_process(request_file: str) -> int:
    """Convert with onnx2tf and save a SavedModel whose signature serves each tensor in the
    requested layout, whatever onnx2tf does inside. Writes the request's result file.

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
        return finish(error=IMPORT_FAILED, message=str(exc))
    if not Path(onnx2tf.__file__ or "").resolve().is_relative_to(Path(onnx2tf_dir).resolve()):
        return finish(
            error=IMPORT_FAILED,
            message=f"an onnx2tf other than tfpack's pinned one is installed in this Python ({onnx2tf.__file__}): "
            "uninstall it (pip uninstall onnx2tf); tfpack installs its own",
        )
    input_names: list[str] = request["input_names"]
    input_shapes: list[list[int | None] | None] = request["input_shapes"]
    kept = [name for name, shape in zip(input_names, input_shapes) if shape is not None and len(shape) in KEPT_RANKS]
    failing_node = _record_failing_node(onnx2tf)
    try:
        model = onnx2tf.convert(
            input_onnx_file_path=request["model"],
            output_folder_path=str(Path(request["model"]).parent / "onnx2tf"),
            # The model is returned, not saved: its own save path also writes TFLite files.
            disable_model_save=True,
            non_verbose=True,
            # onnxsim is not installed (a native build), and the proof needs the model as written.
            not_use_onnxsim=True,
            # Inputs of rank 3 and 4 keep their ONNX layout inside; the signature's edge moves
            # channels where the served layout differs from what onnx2tf computes on.
            keep_ncw_or_nchw_or_ncdhw_input_names=kept or None,
        )
    except ModuleNotFoundError as exc:  # onnx2tf imports onnx2tf.ops.OPTYPE for each node
        op = re.fullmatch(r"onnx2tf\.ops\.(\w+)", exc.name or "")
        if op:
            return finish(error=UNSUPPORTED_OP, op=op.group(1), node=failing_node())
        return finish(error=IMPORT_FAILED, message=str(exc))
    except (Exception, SystemExit) as exc:  # onnx2tf raises any type, or calls sys.exit
        return finish(error=FAILED, message=_cause(exc), node=failing_node())
    try:
        saved = _save_served_model(model, request)
        return finish(onnx2tf_version=onnx2tf.__version__, **saved)
    except (ValueError, TypeError) as exc:
        return finish(error=FAILED, message=f"saving its SavedModel: {_plain(str(exc)).strip()}", node=None)


def _record_failing_node(onnx2tf: object) -> _NodeRecord:
    """Wrap onnx2tf's op converters so that a failure can name the ONNX node it failed on.

    Each ``onnx2tf.ops.OP`` module has a ``make_node(graph_node=..., ...)``; the last one entered
    and not left is the node that failed.
    """
    record = _NodeRecord()
    try:
        import onnx2tf.onnx2tf as driver  # type: ignore[import-not-found]  # the cache dir's onnx2tf
    except ImportError:
        return record
    importer = getattr(driver, "importlib", None)
    if importer is None:
        return record
    original = importer.import_module

    def import_module(name: str, package: str | None = None) -> object:
        module = original(name, package)
        make_node = getattr(module, "make_node", None)
        if name.startswith("onnx2tf.ops.") and callable(make_node) and not getattr(make_node, "_tfpack", False):

            def wrapped(*args: object, **kwargs: object) -> object:
                node = kwargs.get("graph_node", args[0] if args else None)
                record.current = f"{getattr(node, 'op', '?')} (node {getattr(node, 'name', '?')})"
                result = make_node(*args, **kwargs)
                record.current = None
                return result

            wrapped._tfpack = True  # type: ignore[attr-defined]  # marks a wrapper, not to wrap twice
            module.make_node = wrapped  # the module attribute onnx2tf calls
        return module

    importer.import_module = import_module
    return record


class _NodeRecord:
    """The ONNX node onnx2tf is converting, if any (see :func:`_record_failing_node`)."""

    current: str | None = None

    def __call__(self) -> str | None:
        return self.current


def _save_served_model(model: tf_keras.Model, request: dict[str, object]) -> dict[str, object]:
    """Save onnx2tf's Keras model behind a signature in the served layout."""
    import tensorflow as tf

    input_names: list[str] = request["input_names"]  # type: ignore[assignment]  # JSON of onnx_file's request
    output_names_: list[str] = request["output_names"]  # type: ignore[assignment]
    input_shapes: list[list[int | None] | None] = request["input_shapes"]  # type: ignore[assignment]
    output_shapes: list[list[int | None] | None] = request["output_shapes"]  # type: ignore[assignment]
    served_last_inputs: list[bool] = request["channels_last_inputs"]  # type: ignore[assignment]
    channels_last = bool(request["channels_last"])

    specs = []
    moves: list[str | None] = []  # per model input: None, "to_first" or "to_last" on the way in
    for tensor in model.inputs:  # model.inputs order is the order the model is called with
        k = _position(tensor.name, input_names)
        shape = list(tensor.shape)
        onnx_shape = input_shapes[k]
        kept = onnx_shape is not None and len(onnx_shape) in KEPT_RANKS
        computes_last = len(shape) in CHANNELS_RANKS and _computed_channels_last(shape, onnx_shape, not kept)
        wanted_last = served_last_inputs[k]
        if computes_last == wanted_last:
            moves.append(None)
            served_shape = shape
        elif wanted_last:  # served NHWC, computed NCHW
            moves.append("to_first")
            served_shape = [shape[0], *shape[2:], shape[1]]
        else:  # served NCHW, computed NHWC
            moves.append("to_last")
            served_shape = [shape[0], shape[-1], *shape[1:-1]]
        specs.append(tf.TensorSpec(served_shape, tensor.dtype, name=input_names[k]))
    output_names: list[str] = list(model.output_names)
    # onnx2tf computes some outputs channels-last (its own layout): each is put in the served one.
    layouts = getattr(model, "onnx_output_layouts", {})
    computed_last = {
        name: _computed_channels_last(
            list(tensor.shape), output_shapes[_position(name, output_names_)], bool(layouts.get(name, False))
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
        feeds = [to_first(x) if move == "to_first" else to_last(x) if move else x for x, move in zip(args, moves)]
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
    tf.saved_model.save(holder, str(request["saved_model"]), signatures={SIGNATURE: serve.get_concrete_function()})
    return {
        "channels_last_outputs": sorted(
            output_names_[_position(name, output_names_)] for name, last in served_last.items() if last
        )
    }


def _computed_channels_last(
    tf_shape: list[int | None], onnx_shape: list[int | None] | None, onnx2tf_says: bool
) -> bool:
    """Whether onnx2tf's tensor of ``tf_shape`` is the ONNX tensor moved channels-last.

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


def _cause(exc: BaseException) -> str:
    """The line of an onnx2tf failure that says what went wrong, without TensorFlow's wrapping."""
    lines = [line.strip() for line in _plain(str(exc)).splitlines() if line.strip()]
    # Keras wraps the cause in "Exception encountered when calling layer ...", the cause below it.
    while len(lines) > 1 and lines[0].startswith("Exception encountered when calling layer"):
        lines = lines[1:]
    cause = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", lines[0]) if lines else ""
    return cause or type(exc).__name__


def _plain(text: str) -> str:
    """``text`` without the terminal colour codes onnx2tf puts in its messages."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _position(name: str, names: list[str]) -> int:
    """The position of the tensor tfpack named ``names[K]`` (Keras may add ``:0``)."""
    bare = re.sub(r":\d+$", "", name)
    if bare not in names:
        raise ValueError(f"onnx2tf renamed tensor {name!r}")
    return names.index(bare)
