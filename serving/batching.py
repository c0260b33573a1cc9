"""Server-side batching (--enable_batching, --batching_parameters_file).

As TF Serving's BatchingSession over a SharedBatchScheduler: every servable's session runs go
through one scheduler shared by the whole server. Concurrent runs with the same feeds and
fetches are queued together, merged along dimension 0 into batches of at most max_batch_size
rows, run once, and the outputs split back to each caller. A batch is processed as soon as a
batch thread is free and it is full, or has waited batch_timeout_micros, or a later batch for
the same queue exists. Padding to allowed_batch_sizes repeats the batch's first row, as TF
Serving does.

One deliberate difference: queues are also keyed by the non-batch dimensions and dtypes of the
feeds, so a request whose shape cannot be concatenated with others runs in its own batch (and
gets its own error) instead of failing every request batched with it.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from google.protobuf.message import Message

from serving.metrics import REGISTRY
from serving.status import ServingError, invalid_argument

_LOG = logging.getLogger(__name__)

RunFunction = Callable[[dict[str, np.ndarray], list[str], "int | None"], list[np.ndarray]]
WRAPPED_RUN_COUNT = ":tensorflow:serving:batching_session:wrapped_run_count"


def _batching_parameters_class() -> type:
    # tensorflow-serving-api does not ship session_bundle_config_pb2: describe the message as
    # tensorflow_serving/servables/tensorflow/session_bundle_config.proto declares it.
    file = descriptor_pb2.FileDescriptorProto(
        name="tfpack/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    field_type = descriptor_pb2.FieldDescriptorProto
    message = file.message_type.add(name="BatchingParameters")
    wrapped = (
        ("max_batch_size", 1, "Int64Value"),
        ("batch_timeout_micros", 2, "Int64Value"),
        ("max_enqueued_batches", 3, "Int64Value"),
        ("num_batch_threads", 4, "Int64Value"),
        ("thread_pool_name", 5, "StringValue"),
        ("max_execution_batch_size", 9, "Int64Value"),
    )
    for name, number, wrapper in wrapped:
        message.field.add(
            name=name,
            number=number,
            type=field_type.TYPE_MESSAGE,
            label=field_type.LABEL_OPTIONAL,
            type_name=f".google.protobuf.{wrapper}",
        )
    message.field.add(
        name="allowed_batch_sizes",
        number=6,
        type=field_type.TYPE_INT64,
        label=field_type.LABEL_REPEATED,
    )
    for name, number in (("pad_variable_length_inputs", 7), ("enable_large_batch_splitting", 8)):
        message.field.add(name=name, number=number, type=field_type.TYPE_BOOL, label=field_type.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParameters = _batching_parameters_class()


@dataclass(frozen=True)
class BatchingOptions:
    """The batching parameters acted on, with SharedBatchScheduler's defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()


def batching_options(parameters: Message) -> BatchingOptions:
    """Return the options a BatchingParameters message asks for, checked as TF Serving does.

    Raises:
        ValueError: If a value is out of range or allowed_batch_sizes is malformed.
    """
    chosen: dict[str, int] = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        if parameters.HasField(name):
            chosen[name] = int(getattr(parameters, name).value)
    options = BatchingOptions(
        **chosen,
        allowed_batch_sizes=tuple(parameters.allowed_batch_sizes),
    )
    for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
        if getattr(options, name) < 1:
            raise ValueError(f"BatchingParameters.{name} must be positive")
    if options.batch_timeout_micros < 0:
        raise ValueError("BatchingParameters.batch_timeout_micros must be non-negative")
    sizes = options.allowed_batch_sizes
    if sizes:
        if any(later <= earlier for earlier, later in itertools.pairwise(sizes)) or sizes[0] < 1:
            raise ValueError("allowed_batch_sizes entries must be positive and increasing")
        if sizes[-1] != options.max_batch_size:
            raise ValueError("final entry in allowed_batch_sizes must equal max_batch_size")
    for name in ("pad_variable_length_inputs", "enable_large_batch_splitting"):
        if getattr(parameters, name):
            _LOG.warning("BatchingParameters.%s is accepted and has no effect here", name)
    return options


def read_batching_parameters(path: Path) -> BatchingOptions:
    """Read a text-format BatchingParameters file (--batching_parameters_file).

    Raises:
        ValueError: If the file is unreadable, not a BatchingParameters, or has bad values.
    """
    try:
        parameters = text_format.Parse(Path(path).read_text(), BatchingParameters())
    except (OSError, text_format.ParseError) as error:
        raise ValueError(
            f"Error parsing text-format tensorflow.serving.BatchingParameters in {path}: {error}"
        ) from None
    try:
        return batching_options(parameters)
    except ValueError as error:
        raise ValueError(f"{error} (in {path})") from None


class _Task:
    """One caller's run waiting for its slice of a batch."""

    def __init__(self, feeds: dict[str, np.ndarray], size: int, deadline: float | None) -> None:
        self.feeds = feeds
        self.size = size
        self.deadline = deadline
        self.outputs: list[np.ndarray] | None = None
        self.error: ServingError | None = None
        self.done = threading.Event()

    def fail(self, error: ServingError) -> None:
        self.error = error
        self.done.set()


@dataclass
class _Batch:
    created: float
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0


class _Queue:
    """The batches waiting for one (feeds, fetches, shapes) key of one servable."""

    def __init__(self, run: RunFunction, fetches: list[str]) -> None:
        self.run = run
        self.fetches = fetches
        self.batches: deque[_Batch] = deque()


class BatchScheduler:
    """The server's batch threads, forming and running batches from every servable's queues."""

    def __init__(self, options: BatchingOptions) -> None:
        """Start ``options.num_batch_threads`` daemon batch threads."""
        self.options = options
        self._condition = threading.Condition()
        self._queues: list[weakref.ref[_Queue]] = []
        for index in range(options.num_batch_threads):
            threading.Thread(target=self._process_batches, name=f"batch-{index}", daemon=True).start()

    def session(self, run: RunFunction) -> BatchingSession:
        """Return a batching front for ``run`` (one servable's session run)."""
        return BatchingSession(self, run)

    def schedule(self, queue: _Queue, task: _Task, register: bool) -> None:
        """Add ``task`` to ``queue`` (first registering the queue); raises ServingError."""
        limit = self.options.max_batch_size
        if task.size > limit:
            raise invalid_argument(f"Task size {task.size} is larger than maximum input batch size {limit}")
        with self._condition:
            if register:
                self._queues.append(weakref.ref(queue))
            batches = queue.batches
            if not batches or batches[-1].size + task.size > limit:
                if len(batches) >= self.options.max_enqueued_batches:
                    raise ServingError(
                        grpc.StatusCode.UNAVAILABLE,
                        "The batch scheduling queue to which this task was submitted is full",
                    )
                batches.append(_Batch(created=time.monotonic()))
            batch = batches[-1]
            batch.tasks.append(task)
            batch.size += task.size
            self._condition.notify()

    def _ready_batch(self, now: float) -> tuple[_Queue | None, _Batch | None, float | None]:
        """Return the oldest ready batch (removed from its queue), or the next time one may be."""
        timeout = self.options.batch_timeout_micros / 1e6
        best: tuple[_Queue, _Batch] | None = None
        wake_at: float | None = None
        alive: list[weakref.ref[_Queue]] = []
        for reference in self._queues:
            queue = reference()
            if queue is None:
                continue  # the servable was unloaded and its last request has finished
            alive.append(reference)
            if not queue.batches:
                continue
            head = queue.batches[0]
            ready = len(queue.batches) > 1 or head.size >= self.options.max_batch_size or now - head.created >= timeout
            if ready and (best is None or head.created < best[1].created):
                best = (queue, head)
            elif not ready:
                wake_at = min(wake_at or head.created + timeout, head.created + timeout)
        self._queues = alive
        if best is None:
            return None, None, wake_at
        best[0].batches.popleft()
        return best[0], best[1], None

    def _process_batches(self) -> None:
        while True:
            with self._condition:
                while True:
                    now = time.monotonic()
                    queue, batch, wake_at = self._ready_batch(now)
                    if batch is not None:
                        break
                    self._condition.wait(None if wake_at is None else max(wake_at - now, 0))
            self._run_batch(queue, batch)  # type: ignore[arg-type]
            del queue, batch  # a finished batch must not keep an unloaded servable alive

    def _run_batch(self, queue: _Queue, batch: _Batch) -> None:
        now = time.monotonic()
        tasks = []
        for task in batch.tasks:
            if task.deadline is not None and task.deadline <= now:
                task.fail(
                    ServingError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        "Run() timeout exceeded while waiting in batching queue",
                    )
                )
            else:
                tasks.append(task)
        if not tasks:
            return
        size = sum(task.size for task in tasks)
        padded = next((s for s in self.options.allowed_batch_sizes if s >= size), size)
        feeds = {}
        for name in tasks[0].feeds:
            parts = [task.feeds[name] for task in tasks]
            if padded > size:
                parts.append(np.repeat(parts[0][:1], padded - size, axis=0))
            feeds[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        deadlines = [task.deadline for task in tasks if task.deadline is not None]
        # A task without a deadline waits as long as the session takes: then so does the batch.
        timeout_ms = None if len(deadlines) < len(tasks) else max(int((max(deadlines) - now) * 1000), 1)
        REGISTRY.increment(WRAPPED_RUN_COUNT)
        try:
            outputs = queue.run(feeds, queue.fetches, timeout_ms)
            for output in outputs:
                if np.ndim(output) == 0:
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "Batched output tensor has 0 dimensions",
                    )
                if np.shape(output)[0] != padded:
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "Batched output tensor's 0th dimension does not equal the sum of the "
                        "0th dimension sizes of the input tensors",
                    )
        except ServingError as error:
            for task in tasks:
                task.fail(error)
            return
        except Exception as error:  # a batch thread must survive whatever the run raises
            _LOG.exception("Batched run failed")
            for task in tasks:
                task.fail(ServingError(grpc.StatusCode.INTERNAL, str(error)))
            return
        offset = 0
        for task in tasks:
            task.outputs = [output[offset : offset + task.size] for output in outputs]
            offset += task.size
            task.done.set()


class BatchingSession:
    """One servable's run, routed through the shared scheduler (thread-safe)."""

    def __init__(self, scheduler: BatchScheduler, run: RunFunction) -> None:
        self._scheduler = scheduler
        self._run = run
        self._queues: dict[tuple, _Queue] = {}
        self._lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray], fetches: list[str], timeout_ms: int | None = None) -> list[np.ndarray]:
        """Run ``fetches`` on ``feeds`` as part of a batch; returns this call's rows.

        Raises:
            ServingError: INVALID_ARGUMENT for inputs that cannot be batched, UNAVAILABLE when
                the queue is full, DEADLINE_EXCEEDED when the call times out in the queue, or
                whatever the batched run failed with.
        """
        if not feeds:
            return self._run(feeds, fetches, timeout_ms)  # nothing to batch along
        sizes = set()
        for value in feeds.values():
            if np.ndim(value) == 0:
                raise invalid_argument("Batching Run() input tensors must have at least one dimension")
            sizes.add(np.shape(value)[0])
        if len(sizes) > 1:
            raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
        key = (
            tuple(sorted((name, np.shape(value)[1:], np.asarray(value).dtype.str) for name, value in feeds.items())),
            tuple(fetches),
        )
        with self._lock:
            queue = self._queues.get(key)
            register = queue is None
            if queue is None:
                queue = self._queues[key] = _Queue(self._run, list(fetches))
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
        task = _Task(feeds, sizes.pop(), deadline)
        self._scheduler.schedule(queue, task, register)
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs  # type: ignore[return-value]
