"""What the smoke tests share: half_plus_two's goldens and provenance, a served copy, the checks a
good run lists, JUnit counts, and the fake fronts the negative and deadline tests need."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf

from packager import layout
from packager.smoke import (
    GRPC_LATENCY,
    GRPC_MODEL_STATUS,
    GRPC_PREDICT,
    GRPC_SIGNATURE,
    REST_MODEL_STATUS,
    REST_PREDICT,
    REST_PREDICT_ROWS,
    REST_SIGNATURE,
    negative_check_names,
)

MODEL = "half_plus_two"
VERSION = 3
GOLDEN_X = np.array([[-1.0], [0.0], [1.5], [1000.0]], dtype=np.float32)
# The signatures of tests.factories.half_plus_two's TF2 model, all of the predict method.
TF2_SIGNATURES = [
    "classify_x2_to_y3",
    "classify_x_to_y",
    "regress_x2_to_y3",
    "regress_x_to_y",
    "regress_x_to_y2",
    "serving_default",
]


def title(name: str, subject: str | None) -> str:
    """A check as the JUnit testcase and the failure message name it."""
    return f"{name} ({subject})" if subject else name


def good_run(
    model: str = MODEL,
    version: int = VERSION,
    signatures: list[str] = TF2_SIGNATURES,
    *,
    rest: bool = True,
) -> list[tuple[str, str]]:
    """The (name, subject) of every check a good run of one served version lists, in order."""
    default = f"{model}/{version}/{layout.DEFAULT_SIGNATURE}"
    checks = [(GRPC_MODEL_STATUS, model)]
    checks += [(GRPC_SIGNATURE, f"{model}/{version}/{s}") for s in signatures]
    checks.append((GRPC_PREDICT, default))
    if rest:
        checks.append((REST_MODEL_STATUS, model))
        checks += [(REST_SIGNATURE, f"{model}/{version}/{s}") for s in signatures]
        checks += [(REST_PREDICT, default), (REST_PREDICT_ROWS, default)]
    checks += [(name, default) for name in negative_check_names("grpc")]
    if rest:
        checks += [(name, default) for name in negative_check_names("rest")]
    checks.append((GRPC_LATENCY, default))
    return checks


def write_assets(
    version_dir: Path,
    outputs: dict[str, np.ndarray],
    *,
    output_dtype: str = "float32",
    input_key: str = "x",
) -> Path:
    """Write goldens and provenance for half_plus_two's serving_default into version_dir."""
    layout.Goldens(inputs={"x": GOLDEN_X}, outputs=outputs).save(version_dir / layout.GOLDENS_FILE)
    layout.Provenance(
        model_name=MODEL,
        version=int(version_dir.name),
        source={"path": "test", "format": "saved_model", "files": {}},
        tfpack_version="test",
        tensorflow_version=tf.__version__,
        options={},
        inputs={input_key: layout.TensorSummary(dtype="float32", shape=[None, 1])},
        outputs={"y": layout.TensorSummary(dtype=output_dtype, shape=[None, 1])},
        tolerance=1e-6,
        max_abs_error=0.0,
    ).save(version_dir / layout.PROVENANCE_FILE)
    return version_dir


def golden_y(offset: float = 2.0) -> np.ndarray:
    return (0.5 * GOLDEN_X + offset).astype(np.float32)


@dataclass(frozen=True)
class Served:
    version_dir: Path
    grpc_target: str
    rest_target: str


def assets_only_copy(served: Served, destination: Path) -> Path:
    """A local version dir with the served version's number, holding only its assets.extra.

    smoke_target reads the expectation from the version dir it is given, so a doctored copy
    asks the unchanged server a question it must fail. Without saved_model.pb, the expectation
    is the provenance's serving_default only.
    """
    version_dir = destination / MODEL / str(VERSION)
    shutil.copytree(served.version_dir / layout.ASSETS_EXTRA, version_dir / layout.ASSETS_EXTRA)
    return version_dir


def junit_counts(path: Path) -> tuple[int, int, list[str]]:
    """(tests, failures, the failed testcases' names) of a JUnit file, which must parse."""
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    failed = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None]
    assert int(suite.get("failures")) == len(failed)
    assert int(suite.get("tests")) == len(list(suite.iter("testcase")))
    return int(suite.get("tests")), len(failed), failed


# --- fake fronts --------------------------------------------------------------------------------


@contextlib.contextmanager
def silent_port() -> Iterator[str]:
    """A loopback port that accepts TCP connections and never answers: a server stuck starting."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(connection)  # held open, never read from or written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
        for connection in accepted:
            connection.close()


class _RewritingProxy(grpc.GenericRpcHandler):
    """Forwards every unary call to an upstream server as raw bytes, rewriting one status code."""

    def __init__(self, upstream: grpc.Channel, rewrite: tuple[grpc.StatusCode, grpc.StatusCode]) -> None:
        self._upstream = upstream
        self._rewrite = rewrite

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        forward = self._upstream.unary_unary(method)  # no (de)serializers: bytes in, bytes out

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                return forward(request, timeout=30)
            except grpc.RpcError as exc:
                code = exc.code()
                context.abort(self._rewrite[1] if code == self._rewrite[0] else code, exc.details() or "")
                raise  # abort raises; this line is never reached

        return grpc.unary_unary_rpc_method_handler(handle)


@contextlib.contextmanager
def rewriting_grpc_proxy(upstream_target: str, rewrite: tuple[grpc.StatusCode, grpc.StatusCode]) -> Iterator[str]:
    """A gRPC front for ``upstream_target`` that answers ``rewrite[0]`` as ``rewrite[1]``; its address."""
    with grpc.insecure_channel(upstream_target) as upstream:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[_RewritingProxy(upstream, rewrite)])
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.stop(grace=None)


@dataclass(frozen=True)
class Fleet:
    models_dir: Path
    grpc_target: str
    rest_target: str
