"""One loaded model version: the :class:`Servable` interface every request handler uses, and its
SavedModel implementation, a MetaGraphDef and a TensorFlow session over it (serving/tflite.py
holds the other, a TFLite interpreter).

This is how TF Serving serves a SavedModel: the MetaGraphDef tagged "serve" is imported into a
session, variables are restored, and each request feeds and fetches tensors by the names the
SignatureDef records. It works alike for TF1 graphs (predict, classify and regress signatures)
and TF2 ``tf.saved_model.save`` exports, whose signatures are graph functions behind the same
kind of named tensors.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Memory under reload. TensorFlow's x86 wheels run with oneDNN on, and then its CPU allocator
# (MklCPUAllocator) serves large tensors -- a model's variables among them -- from a BFC pool
# that only grows: an unloaded version's 50 MB of weights stayed resident (the next load reused
# them, RSS never came back down; gc.collect() and malloc_trim(0) changed nothing). With the
# system allocator, as TensorFlow Serving's own build has, a freed session's buffers go back to
# the OS as soon as its last reference goes (tests/serving/test_memory.py). TensorFlow
# reads the variable once, when its allocator first needs it: set before TensorFlow is imported
# to be sure. An operator's own setting is kept.
os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, saved_model_pb2

from serving.batching import BatchScheduler
from serving.status import ServingError

_LOG = logging.getLogger(__name__)

SAVED_MODEL_FILE = "saved_model.pb"
_MAX_CALLABLES = 64  # distinct (inputs, outputs, deadline) combinations kept per servable

# A session callable: the feeds' values in the order it was made for -> the fetched values.
SessionCallable = Callable[..., list[np.ndarray]]
# What a session callable is made for: (feed names, fetch names, deadline in ms).
_CallableKey = tuple[tuple[str, ...], tuple[str, ...], int | None]


class Servable(Protocol):
    """A loaded model version as the request handlers see it, whatever runs it.

    Its SignatureDefs say which tensor names each signature's keys stand for; ``run`` feeds and
    fetches tensors by those names. Implementations are thread-safe: one servable answers
    concurrent requests.

    Attributes:
        name: the model name.
        version: the version number.
        path: the version dir it was loaded from.
        meta_graph: the MetaGraphDef whose signature_def map is served.
    """

    name: str
    version: int
    path: Path
    meta_graph: meta_graph_pb2.MetaGraphDef

    @property
    def signature_defs(self) -> dict[str, meta_graph_pb2.SignatureDef]:
        """The SignatureDefs served, by key."""
        ...

    def run(self, feeds: dict[str, np.ndarray], fetches: list[str], timeout_ms: int | None = None) -> list[np.ndarray]:
        """Feed tensors by name, return the fetched tensors' values in order.

        Raises:
            ServingError: the run failed, with the status code a client gets.
        """
        ...

    def close(self) -> None:
        """Release what can be released before the last reference goes (an abandoned load)."""
        ...


@dataclass(frozen=True)
class SessionOptions:
    """How sessions are configured (tensorflow_model_server's parallelism flags)."""

    tags: frozenset[str] = frozenset({"serve"})
    intra_op_parallelism: int = 0
    inter_op_parallelism: int = 0
    prefer_tflite_model: bool = False  # serve VERSION_DIR/model.tflite when there is one
    base_config: bytes = b""  # serialized ConfigProto from --tensorflow_session_config_file

    def config_proto(self) -> config_pb2.ConfigProto:
        """Return the ConfigProto for a servable's session: the session config file's, with the
        parallelism flags applied over it when they are set."""
        config = config_pb2.ConfigProto.FromString(self.base_config)
        if self.intra_op_parallelism:
            config.intra_op_parallelism_threads = self.intra_op_parallelism
        if self.inter_op_parallelism:
            config.inter_op_parallelism_threads = self.inter_op_parallelism
        return config


def read_session_config(path: Path) -> bytes:
    """Read a text-format tensorflow.ConfigProto (--tensorflow_session_config_file), serialized.

    Raises:
        ValueError: the file is unreadable or not a ConfigProto.
    """
    from google.protobuf import text_format

    try:
        return text_format.Parse(path.read_text(), config_pb2.ConfigProto()).SerializeToString()
    except (OSError, text_format.ParseError) as error:
        raise ValueError(f"Error parsing text-format tensorflow.ConfigProto in {path}: {error}") from None


class LoadError(RuntimeError):
    """A version dir could not be loaded; the message is what TF Serving's log would say."""


def _status_code(error: tf.errors.OpError) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == error.error_code:
            return code
    return grpc.StatusCode.UNKNOWN


def read_meta_graph(version_dir: Path, tags: frozenset[str]) -> meta_graph_pb2.MetaGraphDef:
    """Return the MetaGraphDef of ``version_dir/saved_model.pb`` whose tag set equals ``tags``."""
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString((version_dir / SAVED_MODEL_FILE).read_bytes())
    except OSError as error:
        raise LoadError(f"SavedModel not found or unreadable in {version_dir}: {error}") from None
    except Exception as error:  # protobuf's DecodeError has no stable public base class
        raise LoadError(f"Could not parse {version_dir / SAVED_MODEL_FILE}: {error}") from None
    for meta_graph in saved_model.meta_graphs:
        if frozenset(meta_graph.meta_info_def.tags) == tags:
            return meta_graph
    available = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise LoadError(
        f"Could not find meta graph def matching supplied tags: {{ {' '.join(sorted(tags))} }}. "
        f"Available tag-sets: {available}. To inspect available tag-sets in the SavedModel, "
        "please use the SavedModel CLI: `saved_model_cli`"
    )


class SavedModelServable:
    """A loaded SavedModel version (a :class:`Servable`): signature metadata and a session to run it.

    Sessions are thread-safe, so one servable answers concurrent requests. The session is closed
    when the last reference goes away, so requests that still hold an unloaded version finish.
    With a batch scheduler, runs are merged with concurrent runs of the same feeds and fetches.
    """

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        meta_graph: meta_graph_pb2.MetaGraphDef,
        session: tf.compat.v1.Session,
        batch_scheduler: BatchScheduler | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.meta_graph = meta_graph
        self._session = session
        self._batching = batch_scheduler.session(self._run) if batch_scheduler else None
        self._callables: OrderedDict[_CallableKey, SessionCallable] = OrderedDict()
        self._callables_lock = threading.Lock()

    @property
    def signature_defs(self) -> dict[str, meta_graph_pb2.SignatureDef]:
        """The SignatureDefs of the served MetaGraphDef, by key."""
        return dict(self.meta_graph.signature_def)

    def run(self, feeds: dict[str, np.ndarray], fetches: list[str], timeout_ms: int | None = None) -> list[np.ndarray]:
        """Run the graph: feed tensors by name, return the fetched tensors' values in order.

        Raises:
            ServingError: With TensorFlow's status code and message when the run fails.
        """
        if self._batching is not None:
            return self._batching.run(feeds, fetches, timeout_ms)
        return self._run(feeds, fetches, timeout_ms)

    def _run(self, feeds: dict[str, np.ndarray], fetches: list[str], timeout_ms: int | None) -> list[np.ndarray]:
        names = tuple(feeds)
        try:
            run = self._callable(names, tuple(fetches), timeout_ms)
            return list(run(*(feeds[name] for name in names)))
        except tf.errors.OpError as error:
            raise ServingError(_status_code(error), error.message) from None
        except (ValueError, TypeError) as error:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None

    def _callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...], timeout_ms: int | None) -> SessionCallable:
        """A session callable for these feeds and fetches, made once and reused.

        TensorFlow Serving runs the C++ session, which feeds a tensor whatever the placeholder's
        declared shape says: half_plus_two (x: [None, 1]) answers a request shaped [1] or [3]
        elementwise, and clients depend on that. ``Session.run`` (and the public
        ``make_callable``) check feed shapes in Python first and refuse; a callable made from
        CallableOptions feeds the way the C++ session does. A dtype the graph cannot take is
        still refused by TensorFlow itself.
        """
        key = (feeds, fetches, timeout_ms)
        with self._callables_lock:
            found = self._callables.get(key)
            if found is not None:
                self._callables.move_to_end(key)
                return found
        options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetches))
        if timeout_ms:
            options.run_options.timeout_in_ms = timeout_ms
        made = self._session._make_callable_from_options(options)
        with self._callables_lock:
            self._callables[key] = made
            while len(self._callables) > _MAX_CALLABLES:  # one per distinct request shape of keys
                self._callables.popitem(last=False)
        return made

    def close(self) -> None:
        """Release the session now (used when a load is abandoned)."""
        self._session.close()


def load_servable(
    name: str,
    version: int,
    version_dir: Path,
    options: SessionOptions,
    batch_scheduler: BatchScheduler | None = None,
) -> SavedModelServable:
    """Load ``version_dir`` (a SavedModel) as version ``version`` of model ``name``.

    Args:
        name: The model name.
        version: The version number.
        version_dir: The SavedModel directory.
        options: Session configuration and tags.
        batch_scheduler: Batch this servable's runs (--enable_batching); None runs each alone.

    Raises:
        LoadError: If the SavedModel is missing, malformed, lacks the tag set or fails to restore.
    """
    meta_graph = read_meta_graph(version_dir, options.tags)
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=options.config_proto())
    try:
        with graph.as_default():
            tf.compat.v1.saved_model.loader.load(session, list(options.tags), str(version_dir))
    except Exception as error:  # TensorFlow raises many unrelated types for a bad SavedModel
        session.close()
        raise LoadError(f"{type(error).__name__}: {error}") from None
    _LOG.info("Restored SavedModel %s version %d from %s", name, version, version_dir)
    return SavedModelServable(name, version, version_dir, meta_graph, session, batch_scheduler)
