"""How fast the server answers: percentiles over N sequential Predicts, and throughput under load.

grpc_latency   N gRPC Predicts of one request, one after another (--requests N): p50, p95,
               p99; every request must succeed. With the run's first Predict (the cold one)
               it makes the report's latency_ms {first, p50, p95, p99}.
grpc_load      C clients, each on its own channel, sending that request back to back for S
               seconds (--load C,S): requests, errors, throughput in requests per second;
               any error fails the check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from packager.smoke.checks import CheckFailed, check, signature_subject
from packager.smoke.client import GrpcClient, ModelSpec, ServingClient, ServingRequestError
from packager.smoke.report import CheckResult, LatencyPercentiles, LoadSummary, percentiles

GRPC_LATENCY = "grpc_latency"
GRPC_LOAD = "grpc_load"
DEFAULT_REQUESTS = 100


@dataclass(frozen=True)
class LoadSpec:
    """--load C,S: C concurrent clients for S seconds."""

    clients: int
    seconds: float


def latency_measured(
    client: ServingClient,
    spec: ModelSpec,
    inputs: Mapping[str, np.ndarray],
    output_dtypes: Mapping[str, np.dtype[Any]],
    requests: int,
) -> tuple[CheckResult, LatencyPercentiles | None, float | None]:
    """Send ``requests`` Predicts one after another.

    Returns:
        The check, the percentiles (None when a request failed) and the first request's latency
        (None when it failed).
    """
    latencies: list[float] = []

    def body() -> tuple[str, float | None]:
        for attempt in range(1, requests + 1):
            try:
                latencies.append(client.predict(spec, inputs, output_dtypes).latency_ms)
            except ServingRequestError as exc:
                raise CheckFailed(f"request {attempt} of {requests} failed: {exc}") from None
        summary = percentiles(latencies)
        return (
            f"{requests} requests: p50 {summary['p50']:.2f} ms, p95 {summary['p95']:.2f} ms, p99 {summary['p99']:.2f} ms",
            summary["p50"],
        )

    result = check(GRPC_LATENCY, signature_subject(spec.name, spec.version, spec.signature), body)
    first = latencies[0] if latencies else None
    return result, (percentiles(latencies) if result.passed else None), first


def load_applied(
    target: str,
    spec: ModelSpec,
    inputs: Mapping[str, np.ndarray],
    output_dtypes: Mapping[str, np.dtype[Any]],
    load: LoadSpec,
    *,
    client_factory: Callable[[str], ServingClient] = GrpcClient,
) -> tuple[CheckResult, LoadSummary]:
    """Run ``load.clients`` clients, each on its own connection, for ``load.seconds``.

    Returns:
        The check (failed on any error, or when no request completed) and the summary the
        report's ``load`` field holds.
    """
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    started = time.monotonic()
    stop_at = started + load.seconds

    def run_client() -> None:
        # Whatever goes wrong in a client (a refused request, an answer that does not decode, a
        # channel that cannot be made) is an error of the load: a thread that died quietly would
        # leave a passing check with fewer clients than asked for.
        try:
            with client_factory(target) as client:
                while time.monotonic() < stop_at:
                    try:
                        latency = client.predict(spec, inputs, output_dtypes).latency_ms
                    except ServingRequestError as exc:
                        with lock:
                            errors.append(str(exc))
                        continue
                    with lock:
                        latencies.append(latency)
        except Exception as exc:
            with lock:
                errors.append(f"a load client failed: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run_client, name=f"tfpack-smoke-load-{n}") for n in range(load.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    completed = len(latencies)
    summary: LoadSummary = {
        "clients": load.clients,
        "seconds": round(elapsed, 3),
        "requests": completed + len(errors),
        "errors": len(errors),
        "throughput_rps": round(completed / elapsed, 3) if elapsed > 0 else 0.0,
        "latency_ms": percentiles(latencies) if latencies else None,
    }

    def body() -> tuple[str, float | None]:
        if errors:
            raise CheckFailed(
                f"{len(errors)} of {summary['requests']} requests failed under {load.clients} clients; first: {errors[0]}"
            )
        if not completed:
            raise CheckFailed(f"no request completed in {load.seconds:g}s under {load.clients} clients")
        return (
            f"{load.clients} clients, {elapsed:.1f}s: {completed} requests, 0 errors, "
            f"{summary['throughput_rps']:.1f} requests/s",
            summary["latency_ms"]["p50"] if summary["latency_ms"] else None,
        )

    return check(GRPC_LOAD, signature_subject(spec.name, spec.version, spec.signature), body), summary
