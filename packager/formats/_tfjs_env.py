"""The two environments a TensorFlow.js export needs, each managed by tfpack under its cache dir.

- Python: tensorflowjs's SavedModel converter. Its package declares tensorflow-decision-forests
  (which pins an older TensorFlow), jax and flax; the SavedModel → graph model path uses none of
  them. So tensorflowjs is installed alone, its wheel pinned by hash, into a directory of its own
  (``CACHE/tfjs-python/VERSION``, never the project's site-packages: see
  :mod:`packager._isolated_packages`), and imported with placeholders standing in for those
  modules during the import only.
- Node.js: ``@tensorflow/tfjs`` (the pure-JS CPU backend; tfjs-node downloads a native binary and
  cannot be installed here), pinned, in ``CACHE/tfjs-node-env/VERSION`` with a small runner that
  loads a graph model from disk and runs it on JSON inputs.

Both are created on first use, under a lock, into a temp dir renamed into place (the machinery of
:mod:`packager._isolated_packages`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

from packager._isolated_packages import PinnedWheel, ensure_wheel, install_lock, run_installer, staging_dir
from packager._runtime_base import cache_dir
from packager.errors import ToolError, UsageError, shorten
from packager.progress import Progress

TENSORFLOWJS_VERSION = "4.22.0"  # the Python converter, installed without its dependencies
TENSORFLOWJS_WHEEL = PinnedWheel(
    distribution="tensorflowjs",
    version=TENSORFLOWJS_VERSION,
    sha256="bd4deb1e7feab538ee7f2625fe85446742bb4765bebab345b534688ab41e3e1c",  # py3-none-any
    module="tensorflowjs",
    directory="tfjs-python",
)
TFJS_VERSION = "4.22.0"  # @tensorflow/tfjs, the runtime the proof runs in
RUNNER_FILE = "run_graph_model.js"
# Imported at module level by tensorflowjs but used only by conversions tfpack never runs
# (decision forests' custom ops, TF Hub modules). JAX is reached through tensorflowjs's own
# jax_conversion module, stood in for itself: a placeholder named jax would be found by every
# later `import jax` in the process (Keras probes for it).
_UNUSED_IMPORTS = ("tensorflow_decision_forests", "tensorflow_hub")
_JAX_CONVERSION = "tensorflowjs.converters.jax_conversion"

# Loads model.json and its weight shards with fs (the pure-JS package has no file:// handler for
# Node), runs the graph model on the CPU backend, and writes the outputs to a JSON file: tfjs
# prints notices on stdout, so stdout cannot carry the result.
RUNNER_SOURCE = """\
// Written by tfpack: runs a TensorFlow.js graph model on JSON inputs with the pure-JS CPU backend.
// usage: node run_graph_model.js MODEL_DIR REQUEST.json RESULT.json
'use strict';
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

function fileHandler(modelDir) {
  return {
    load: async () => {
      const model = JSON.parse(fs.readFileSync(path.join(modelDir, 'model.json'), 'utf8'));
      const weightSpecs = [];
      const shards = [];
      for (const group of model.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const shard of group.paths) shards.push(fs.readFileSync(path.join(modelDir, shard)));
      }
      const weights = Buffer.concat(shards);
      return {
        modelTopology: model.modelTopology,
        format: model.format,
        generatedBy: model.generatedBy,
        convertedBy: model.convertedBy,
        signature: model.signature,
        userDefinedMetadata: model.userDefinedMetadata,
        modelInitializer: model.modelInitializer,
        weightSpecs,
        weightData: weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength),
      };
    },
  };
}

async function main() {
  const [modelDir, requestFile, resultFile] = process.argv.slice(2);
  const request = JSON.parse(fs.readFileSync(requestFile, 'utf8'));
  await tf.setBackend('cpu');
  const model = await tf.loadGraphModel(fileHandler(modelDir));
  const feeds = {};
  for (const [key, value] of Object.entries(request.inputs)) {
    feeds[key] = tf.tensor(value.values, value.shape, value.dtype);
  }
  // Signature keys in and out: the graph model maps them to its tensors by model.json's signature.
  const keys = request.outputs;
  let results = await model.executeAsync(feeds, keys);
  if (!Array.isArray(results)) results = [results];
  const outputs = {};
  for (let i = 0; i < keys.length; i++) {
    const values = Array.from(await results[i].data());
    outputs[keys[i]] = { dtype: results[i].dtype, shape: results[i].shape, values };
  }
  fs.writeFileSync(resultFile, JSON.stringify({ backend: tf.getBackend(), outputs }));
}

main().catch((error) => {
  const message = error && error.message ? error.message : String(error);
  process.stderr.write(`tfjs: ${message.split('\\n')[0]}\\n`);
  process.exit(1);
});
"""


# package.json and package-lock.json of the Node side, shipped with tfpack (package data).
NPM_PROJECT_DIR = Path(__file__).resolve().parent / "tfjs_runner"


def node_env_dir() -> Path:
    """Where the pinned @tensorflow/tfjs and the runner live."""
    return cache_dir() / "tfjs-node-env" / TFJS_VERSION


def python_env_dir() -> Path:
    """Where tensorflowjs is installed without its declared dependencies."""
    return TENSORFLOWJS_WHEEL.install_dir()


def require_node() -> str:
    """Return the path of ``node``.

    Raises:
        UsageError: node or npm is not on PATH (the message says what to install).
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise UsageError(
            "tfpack export --format tfjs proves the model in Node.js: install Node.js 18 or newer with npm "
            "(e.g. apt-get install nodejs npm) and put node and npm on PATH"
        )
    return node


def ensure_node_env(progress: Progress) -> Path:
    """Return the runner script, installing @tensorflow/tfjs and writing the runner on first use.

    Raises:
        UsageError: node or npm is missing.
        ToolError: npm cannot install @tensorflow/tfjs (registry unreachable, disk full).
    """
    require_node()
    target = node_env_dir()
    runner = target / RUNNER_FILE
    if _node_env_ready(target):
        return runner
    with install_lock(target.parent):
        if _node_env_ready(target):  # another process installed it while this one waited
            return runner
        progress.step(f"installing @tensorflow/tfjs@{TFJS_VERSION} with npm into {target} (once)")
        with staging_dir(target) as staging:
            # The lockfile tfpack ships pins every package and its integrity hash, and npm ci
            # installs exactly that; no package's install script runs.
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(NPM_PROJECT_DIR / name, staging / name)
            run_installer(
                ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                staging,
                f"npm ci (@tensorflow/tfjs@{TFJS_VERSION}, pinned by tfpack's package-lock.json)",
                "check that the npm registry is reachable (npm config get registry)",
            )
            (staging / RUNNER_FILE).write_text(RUNNER_SOURCE)
    return runner


def _node_env_ready(target: Path) -> bool:
    package = target / "node_modules" / "@tensorflow" / "tfjs" / "package.json"
    runner = target / RUNNER_FILE
    try:
        installed = json.loads(package.read_text()).get("version")
        locked = (target / "package-lock.json").read_bytes() == (NPM_PROJECT_DIR / "package-lock.json").read_bytes()
        return installed == TFJS_VERSION and locked and runner.read_text() == RUNNER_SOURCE
    except (OSError, ValueError):
        return False


def load_saved_model_converter(progress: Progress) -> types.ModuleType:
    """Return ``tensorflowjs.converters.tf_saved_model_conversion_v2``, installing it on first use.

    Raises:
        ToolError: pip cannot install tensorflowjs, or it cannot be imported with this TensorFlow.
    """
    target = ensure_wheel(TENSORFLOWJS_WHEEL, progress)
    if str(target) not in sys.path:
        sys.path.append(str(target))  # appended: it must never shadow the project's own packages
    # Placeholders only for modules that are absent, only for the import, then removed again: the
    # rest of the process sees exactly what is installed.
    placeholders = {name: types.ModuleType(name) for name in _UNUSED_IMPORTS if not _importable(name)}
    if _JAX_CONVERSION not in sys.modules:
        # tensorflowjs.converters imports convert_jax from it; it stays the placeholder once
        # imported, and says so if ever called.
        jax_conversion = types.ModuleType(_JAX_CONVERSION)
        jax_conversion.convert_jax = _jax_conversion_unavailable  # type: ignore[attr-defined]  # a bare module
        sys.modules[_JAX_CONVERSION] = jax_conversion
    sys.modules.update(placeholders)
    try:
        converter = importlib.import_module("tensorflowjs.converters.tf_saved_model_conversion_v2")
        # The cache dir is appended to sys.path, so a tensorflowjs installed in this Python would
        # win: proving with another version than the one named would be a lie.
        if not Path(converter.__file__ or "").resolve().is_relative_to(target.resolve()):
            raise ToolError(
                f"a tensorflowjs other than tfpack's pinned {TENSORFLOWJS_VERSION} is installed in this Python "
                f"({converter.__file__}): uninstall it (pip uninstall tensorflowjs); tfpack installs its own"
            )
        return converter
    except ImportError as exc:
        raise ToolError(
            f"tensorflowjs {TENSORFLOWJS_VERSION} cannot be imported: {shorten(str(exc))} "
            "(pip install 'tfpack[tfjs]' installs what its converter needs)"
        ) from None
    finally:
        for name, module in placeholders.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def _jax_conversion_unavailable(*args: object, **kwargs: object) -> None:
    raise ToolError("tfpack installs tensorflowjs without JAX: its JAX conversion is not available")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
