"""Prometheus metrics with TF Serving's names (--monitoring_config_file).

TF Serving's monitoring is process-global, and so is this registry: the transports record
requests, the manager records load attempts, and the REST server renders the text exposition
format at the configured path. Names and labels follow TF Serving's exports, e.g.
``:tensorflow:serving:request_count{model_name="m",status="OK"}``.
"""

from __future__ import annotations

import bisect
import threading
from pathlib import Path
from typing import ClassVar

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
# Request latency buckets in microseconds, as TF Serving's exponential buckets (10us x 1.8^k).
_LATENCY_BUCKETS_US = [10 * 1.8**k for k in range(33)]


def _monitoring_config_class() -> type:
    # tensorflow-serving-api ships no monitoring_config_pb2: describe the two messages here.
    file = descriptor_pb2.FileDescriptorProto(
        name="tfpack/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    field = descriptor_pb2.FieldDescriptorProto
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    monitoring = file.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_OPTIONAL,
        type_name=".tensorflow.serving.PrometheusConfig",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


MonitoringConfig = _monitoring_config_class()


def read_prometheus_path(config_file: Path) -> str | None:
    """Return the metrics path a MonitoringConfig text file enables, or None if disabled.

    Raises:
        ValueError: If the file is unreadable or not a text-format MonitoringConfig.
    """
    try:
        config = text_format.Parse(Path(config_file).read_text(), MonitoringConfig())
    except (OSError, text_format.ParseError) as error:
        raise ValueError(
            f"Error parsing text-format tensorflow.serving.MonitoringConfig in {config_file}: {error}"
        ) from None
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return ",".join(f'{n}="{v}"' for n, v in zip(names, escaped, strict=True))


class Registry:
    """Thread-safe counters and histograms, rendered in Prometheus text format."""

    _COUNTERS: ClassVar[dict[str, tuple[str, ...]]] = {
        ":tensorflow:serving:request_count": ("model_name", "status"),
        ":tensorflow:cc:saved_model:load_attempt_count": ("model_path", "status"),
        # One per batched run of a session (--enable_batching), as TF Serving's BatchingSession.
        ":tensorflow:serving:batching_session:wrapped_run_count": (),
    }
    _HISTOGRAMS: ClassVar[dict[str, tuple[str, ...]]] = {
        ":tensorflow:serving:request_latency": ("model_name", "API", "entrypoint")
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, tuple[str, ...]], int] = {}
        self._histograms: dict[tuple[str, tuple[str, ...]], tuple[list[int], list[float]]] = {}

    def increment(self, name: str, *labels: str) -> None:
        """Add one to counter ``name`` with the given label values."""
        with self._lock:
            key = (name, labels)
            self._counts[key] = self._counts.get(key, 0) + 1

    def observe(self, name: str, value: float, *labels: str) -> None:
        """Record ``value`` in histogram ``name`` with the given label values."""
        with self._lock:
            buckets, totals = self._histograms.setdefault((name, labels), ([0] * (len(_LATENCY_BUCKETS_US) + 1), [0.0]))
            buckets[bisect.bisect_left(_LATENCY_BUCKETS_US, value)] += 1
            totals[0] += value

    def record_request(self, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """Count one request and its latency (microseconds), as TF Serving does."""
        self.increment(":tensorflow:serving:request_count", model_name, status)
        self.observe(":tensorflow:serving:request_latency", seconds * 1e6, model_name, api, entrypoint)

    def render(self) -> str:
        """Return every metric in Prometheus text exposition format."""
        lines: list[str] = []
        with self._lock:
            for name, label_names in self._COUNTERS.items():
                lines.append(f"# TYPE {name} counter")
                for (metric, values), count in sorted(self._counts.items()):
                    if metric == name:
                        labels = _labels(label_names, values)
                        lines.append(f"{name}{{{labels}}} {count}" if labels else f"{name} {count}")
            for name, label_names in self._HISTOGRAMS.items():
                lines.append(f"# TYPE {name} histogram")
                for (metric, values), (buckets, totals) in sorted(self._histograms.items()):
                    if metric != name:
                        continue
                    labels = _labels(label_names, values)
                    cumulative = 0
                    for bound, count in zip([*_LATENCY_BUCKETS_US, "+Inf"], buckets, strict=True):
                        cumulative += count
                        le = bound if isinstance(bound, str) else f"{bound:g}"
                        lines.append(f'{name}_bucket{{{labels},le="{le}"}} {cumulative}')
                    lines.append(f"{name}_sum{{{labels}}} {totals[0]:g}")
                    lines.append(f"{name}_count{{{labels}}} {cumulative}")
        return "\n".join(lines) + "\n"


REGISTRY = Registry()
