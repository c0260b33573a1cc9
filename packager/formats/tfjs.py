"""TensorFlow.js: serving_default converted to a graph model by tensorflowjs, run in Node.js.

The converter is tensorflowjs's own (``tf_saved_model_conversion_v2``), installed by
:mod:`._tfjs_env` without the dependencies that conflict with this TensorFlow. The proof runs the
written graph model in Node.js with @tensorflow/tfjs on its pure-JS CPU backend, the runtime a
browser or Node app without native bindings uses, fed and fetched by signature key through the
``signature`` of model.json.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packager.errors import ToolError, UsageError, first_line, shorten
from packager.formats._tfjs_env import TFJS_VERSION, ensure_node_env, load_saved_model_converter, require_node
from packager.layout import DEFAULT_SIGNATURE
from packager.progress import SILENT, Progress
from packager.tf_runtime import stderr_silenced, tensorflow

RUNTIME = f"Node.js @tensorflow/tfjs {TFJS_VERSION} (cpu backend)"
MODEL_JSON = "model.json"
_RUN_TIMEOUT_S = 600


@dataclass(frozen=True)
class TfjsModel:
    """A converted graph model: its files by name and the tensor names of its signature."""

    files: dict[str, bytes]  # model.json and its weight shards
    inputs: dict[str, str]  # signature input key -> tensor name in model.json's signature
    outputs: dict[str, str]  # signature output key -> tensor name


def require_tfjs_runtime() -> None:
    """Fail fast, before a conversion that would be wasted, when Node.js or npm is missing.

    Raises:
        UsageError: node or npm is not on PATH.
    """
    require_node()


def convert_to_tfjs(version_dir: Path, progress: Progress = SILENT) -> TfjsModel:
    """Convert serving_default of the SavedModel in ``version_dir`` to a TensorFlow.js graph model.

    Raises:
        UsageError: the model cannot be converted (an op TensorFlow.js lacks, no serving_default).
        ToolError: tensorflowjs cannot be installed or imported.
    """
    tf = tensorflow()
    converter = load_saved_model_converter(progress)
    with tempfile.TemporaryDirectory(prefix="tfpack-tfjs-") as scratch:
        try:
            # The converter prints progress on stdout, which carries --json: kept out of it.
            with stderr_silenced(), contextlib.redirect_stdout(io.StringIO()):
                converter.convert_tf_saved_model(
                    str(version_dir), scratch, signature_def=DEFAULT_SIGNATURE, saved_model_tags="serve"
                )
        except (ValueError, TypeError, KeyError, RuntimeError, AttributeError, AssertionError, OSError) as exc:
            raise UsageError(f"TensorFlow.js conversion failed: {first_line(exc)}") from None
        except tf.errors.OpError as exc:
            raise UsageError(f"TensorFlow.js conversion failed: {first_line(exc)}") from None
        files = {path.name: path.read_bytes() for path in sorted(Path(scratch).iterdir()) if path.is_file()}
    if MODEL_JSON not in files:
        raise ToolError(f"the TensorFlow.js converter wrote no {MODEL_JSON} for {version_dir}")
    signature = json.loads(files[MODEL_JSON]).get("signature", {})
    return TfjsModel(
        files=files,
        inputs={key: str(info["name"]) for key, info in signature.get("inputs", {}).items()},
        outputs={key: str(info["name"]) for key, info in signature.get("outputs", {}).items()},
    )


def run_tfjs(model: TfjsModel, feeds: dict[str, np.ndarray], progress: Progress = SILENT) -> dict[str, np.ndarray]:
    """Run ``model`` in Node.js with @tensorflow/tfjs on ``feeds`` (keyed by signature key).

    Returns:
        Every signature output, keyed by signature key (float32, int32 or bool: tfjs's dtypes).

    Raises:
        UsageError: node or npm is missing, or an input has a dtype TensorFlow.js cannot feed.
        ToolError: @tensorflow/tfjs cannot be installed, or Node.js cannot run the model.
    """
    runner = ensure_node_env(progress)
    request = {
        "inputs": {key: _to_json_tensor(key, value) for key, value in feeds.items()},
        "outputs": list(model.outputs),
    }
    with tempfile.TemporaryDirectory(prefix="tfpack-tfjs-run-") as scratch:
        model_dir = Path(scratch) / "model"
        model_dir.mkdir()
        for name, content in model.files.items():
            (model_dir / name).write_bytes(content)
        request_file, result_file = Path(scratch) / "request.json", Path(scratch) / "result.json"
        request_file.write_text(json.dumps(request))
        command = ["node", str(runner), str(model_dir), str(request_file), str(result_file)]
        try:
            run = subprocess.run(
                command, cwd=runner.parent, capture_output=True, text=True, timeout=_RUN_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ToolError(f"Node.js cannot run the TensorFlow.js model: {shorten(str(exc))}") from None
        if run.returncode != 0 or not result_file.is_file():
            lines = [line for line in run.stderr.splitlines() if line.strip()]
            raise ToolError(
                f"Node.js cannot run the TensorFlow.js model: {shorten(lines[-1] if lines else 'no output')}"
            )
        result = json.loads(result_file.read_text())
    return {key: _from_json_tensor(value) for key, value in result["outputs"].items()}


def _to_json_tensor(key: str, value: np.ndarray) -> dict[str, object]:
    """A golden input as tfjs takes it: tfjs has float32, int32 and bool tensors (no 64-bit)."""
    array = np.asarray(value)
    values: list[float] | list[int] | list[bool]
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            # JSON has no NaN or Infinity: JSON.parse would refuse them, JSON.stringify null them.
            raise UsageError(f"input {key!r} holds NaN or infinite goldens: the TensorFlow.js proof cannot feed them")
        dtype, values = "float32", array.astype(np.float32).ravel().tolist()
    elif np.issubdtype(array.dtype, np.integer):
        # tfjs stores integers in an Int32Array: a wider value would wrap silently and the proof
        # would compare the wrong computation (or pass by coincidence).
        info = np.iinfo(np.int32)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise UsageError(
                f"input {key!r} ({array.dtype}) holds values outside int32, which TensorFlow.js cannot represent: "
                "the export would compute on wrapped values"
            )
        dtype, values = "int32", array.astype(np.int64).ravel().tolist()
    elif array.dtype == np.bool_:
        dtype, values = "bool", array.ravel().tolist()
    else:
        raise UsageError(f"input {key!r} is {array.dtype}: a TensorFlow.js export takes float, integer or bool inputs")
    return {"dtype": dtype, "shape": list(array.shape), "values": values}


def _from_json_tensor(tensor: dict[str, Any]) -> np.ndarray:
    dtypes = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
    dtype = dtypes.get(str(tensor["dtype"]))
    if dtype is None:
        raise ToolError(f"the TensorFlow.js model returned a {tensor['dtype']} output, which tfpack cannot compare")
    shape = [int(size) for size in tensor["shape"]]
    return np.asarray(tensor["values"], dtype=dtype).reshape(shape)


def files_digest(files: dict[str, bytes]) -> str:
    """One sha256 for a model dir: of each file's name and sha256, in name order."""
    manifest = "".join(f"{name}\0{hashlib.sha256(content).hexdigest()}\n" for name, content in sorted(files.items()))
    return hashlib.sha256(manifest.encode()).hexdigest()


def write_model_dir(path: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` as the directory ``path``: a temp dir beside it, then a rename.

    A graph model already at ``path`` (a dir holding model.json) is replaced: moved aside, the new
    one renamed in, the old one deleted only then (a dir cannot be renamed over a non-empty one,
    so for that instant ``path`` is absent — never half a model). Interrupted or failed between
    the two renames, the old model is put back.

    Raises:
        UsageError: ``path`` is a file or a directory that is not a TensorFlow.js model, or the
            parent cannot be written.
    """
    if path.exists() and not (path.is_dir() and (path / MODEL_JSON).is_file()):
        raise UsageError(
            f"cannot write {path}: something other than a TensorFlow.js model is there; remove it or give "
            "another --output-dir"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _writers_serialized(path.parent):
            staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
            return _swap_in(path, staging, files)
    except OSError as exc:  # the dir, its lock or the temp dir (_swap_in turns its own into UsageError)
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _writers_serialized(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` itself (flock on its descriptor: no lock file left
    in the user's output dir) while a model dir is swapped in. Two exports of one model into one
    dir then replace each other whole, in turn; unserialized, the second rename lands on the
    first's fresh dir, which a dir rename cannot replace, and that export fails."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _swap_in(path: Path, staging: Path, files: dict[str, bytes]) -> Path:
    """Fill ``staging`` with ``files`` and rename it to ``path`` (see :func:`write_model_dir`)."""
    retired = path.parent / f"{staging.name}.old"
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users
        for name, content in files.items():
            with (staging / name).open("wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        if path.exists():
            os.replace(path, retired)  # a dir cannot be renamed over a non-empty one: moved aside first
        os.replace(staging, path)
    except BaseException as exc:  # Ctrl-C and SIGTERM too: the old model back rather than none
        if retired.exists() and not path.exists():
            os.replace(retired, path)
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    shutil.rmtree(retired, ignore_errors=True)  # only once the new model is in place
    return path
