"""Write a servable SavedModel version dir atomically: the model, its warmup file, its goldens.

The version dir is assembled in a hidden temp dir beside ``DIR/NAME/N`` and renamed into place
only when complete, so a model server polling ``DIR/NAME`` never sees a half-written version, and
a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from packager.errors import UsageError
from packager.graph.frozen_model import TensorRef
from packager.layout import DEFAULT_SIGNATURE, SERVING_TAG
from packager.tf_runtime import tensorflow

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef

# Runs signature NAME of a loaded model on feeds keyed by input key; outputs keyed by output key.
SignatureRunner = Callable[[str, Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@contextmanager
def staged_version_dir(output_dir: Path, name: str, version: int) -> Iterator[Path]:
    """Yield a temp path to write version ``version`` of ``name`` into; publish it on success.

    On any exception the temp dir is removed, and so are ``output_dir`` and ``output_dir/name`` if
    this call created them, so a failed conversion leaves the file system as it found it.

    Raises:
        UsageError: the version already exists.
    """
    model_dir = output_dir / name
    target = model_dir / str(version)
    if target.exists():
        raise UsageError(f"{target} already exists: choose another --version or remove it")
    created = [d for d in (output_dir, model_dir) if not d.exists()]
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        # Hidden and non-numeric: TF Serving only considers numeric version dir names.
        staging_parent = Path(tempfile.mkdtemp(prefix=f".tfpack-{version}-", dir=model_dir))
    except OSError as exc:
        _remove(created)
        raise UsageError(f"cannot write under {output_dir}: {exc.strerror}") from None
    staging = staging_parent / "version"
    try:
        yield staging
        try:
            os.rename(staging, target)
        except OSError as exc:  # e.g. another conversion published the same version meanwhile
            raise UsageError(f"cannot publish {target}: {exc.strerror}") from None
    except BaseException:
        _remove(created)
        raise
    finally:
        shutil.rmtree(staging_parent, ignore_errors=True)


def check_writable(output_dir: Path) -> None:
    """Refuse early (before any model is loaded) an output dir tfpack could not write into.

    Raises:
        UsageError: the dir, or the nearest existing parent it would be created in, is not a
            writable directory.
    """
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir {output_dir}: {existing} is not a writable directory")


def _remove(directories: list[Path]) -> None:
    for directory in reversed(directories):
        shutil.rmtree(directory, ignore_errors=True)


def write_saved_model(
    graph_def: GraphDef, signatures: Mapping[str, tuple[list[TensorRef], list[TensorRef]]], export_dir: Path
) -> None:
    """Write frozen ``graph_def`` as a TF1-style SavedModel with predict signatures by name.

    A TF1 SavedModel keeps the graph's own tensor names in the SignatureDefs (what
    GetModelMetadata shows) and loads in every TF Serving version. Default-valued attrs are
    stripped, so older servers accept ops whose attrs gained defaults since.

    The graph is frozen (no variables), so the SavedModel proto is assembled directly rather than
    through SavedModelBuilder, which would import the whole graph into a session only to export
    it again; the result is what the builder writes for a variable-free graph (an empty
    variables/ dir, no saver), and it is loaded back and run before it is published.
    """
    tf = tensorflow()
    from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
    from tensorflow.python.framework import meta_graph as meta_graph_lib

    def info(refs: list[TensorRef]) -> dict[str, meta_graph_pb2.TensorInfo]:
        return {
            r.key: meta_graph_pb2.TensorInfo(
                name=r.tensor_name,
                dtype=tf.as_dtype("string" if r.dtype == "string" else r.dtype).as_datatype_enum,
                tensor_shape=tf.TensorShape(r.shape).as_proto(),
            )
            for r in refs
        }

    meta_graph = meta_graph_pb2.MetaGraphDef()
    meta_graph.graph_def.CopyFrom(graph_def)
    meta_info = meta_graph.meta_info_def
    meta_info.tags.append(SERVING_TAG)
    meta_info.tensorflow_version = tf.__version__
    meta_info.tensorflow_git_version = tf.__git_version__
    meta_info.stripped_op_list.CopyFrom(meta_graph_lib.stripped_op_list_for_graph(graph_def))
    meta_graph_lib.strip_graph_default_valued_attrs(meta_graph)
    for name, (inputs, outputs) in signatures.items():
        meta_graph.signature_def[name].CopyFrom(
            meta_graph_pb2.SignatureDef(
                inputs=info(inputs),
                outputs=info(outputs),
                method_name=tf.compat.v1.saved_model.signature_constants.PREDICT_METHOD_NAME,
            )
        )
    saved_model = saved_model_pb2.SavedModel(saved_model_schema_version=1, meta_graphs=[meta_graph])
    export_dir.mkdir(parents=True)
    (export_dir / "variables").mkdir()
    (export_dir / "saved_model.pb").write_bytes(saved_model.SerializeToString())


@contextmanager
def loaded_saved_model(export_dir: Path, *, soft_placement: bool = False) -> Iterator[SignatureRunner]:
    """Load a SavedModel the way TF Serving does (a session on its meta graph) and yield a
    function that runs one of its signatures: ``run(signature_name, feeds) -> outputs``.

    ``soft_placement`` is for graphs with deliberate device strings (merged towers), which the
    serving images load with a session config that allows soft placement.

    Grappler is off, and so are the session's own graph optimisations (constant folding, common
    subexpression elimination: OptimizerOptions L0): this proves what the written graph computes,
    as written, without first spending a second or more optimising a large graph for a few runs
    (constant folding alone copies a ~100 MB model's weights once more, ~0.3 s and ~50-200 MB).
    The optimised execution a model server performs is what ``tfpack smoke`` checks, with the
    same goldens, against the running server.
    """
    tf = tensorflow()
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow.python.saved_model.loader_impl import SavedModelLoader

    v1 = tf.compat.v1
    config = v1.ConfigProto(allow_soft_placement=soft_placement)
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    config.graph_options.optimizer_options.opt_level = v1.OptimizerOptions.L0
    with v1.Session(graph=tf.Graph(), config=config) as session:
        # What v1.saved_model.loader.load does, minus its second parse of saved_model.pb (kept
        # only for a usage metric): ~0.15 s and a ~100 MB copy for a ~100 MB model.
        loader = SavedModelLoader(str(export_dir))
        with session.graph.as_default():
            saver, _ = loader.load_graph(session.graph, [SERVING_TAG])
            loader.restore_variables(session, saver)
            loader.run_init_ops(session, [SERVING_TAG])
        # Fresh copies of the signatures: a sub-message would keep the whole parsed SavedModel
        # (every weight) alive while the session, which holds its own copy, runs.
        meta_graph = loader.get_meta_graph_def_from_tags([SERVING_TAG])
        signature_defs = {
            name: meta_graph_pb2.SignatureDef.FromString(signature.SerializeToString())
            for name, signature in meta_graph.signature_def.items()
        }
        del loader, meta_graph

        def run(signature_name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            signature = signature_defs[signature_name]
            fetch_keys = sorted(signature.outputs)
            values = session.run(
                [signature.outputs[k].name for k in fetch_keys],
                feed_dict={signature.inputs[k].name: v for k, v in feeds.items()},
            )
            return dict(zip(fetch_keys, values))

        yield run


def run_saved_model(
    export_dir: Path,
    feeds: Mapping[str, np.ndarray],
    signature_name: str = DEFAULT_SIGNATURE,
    *,
    soft_placement: bool = False,
) -> dict[str, np.ndarray]:
    """Run one signature of a SavedModel once, in a session of its own (see loaded_saved_model)."""
    with loaded_saved_model(export_dir, soft_placement=soft_placement) as run:
        return run(signature_name, feeds)


def write_warmup_requests(path: Path, model_name: str, feeds: Mapping[str, np.ndarray]) -> None:
    """Write TF Serving's warmup file: one PredictionLog with a Predict request of ``feeds``."""
    tf = tensorflow()
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=DEFAULT_SIGNATURE)
    )
    for key, value in feeds.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(log.SerializeToString())
