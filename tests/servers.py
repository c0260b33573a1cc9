"""Start tfpack-model-server for a test and always stop it.

    with running_model_server(["--model_name=m", "--model_base_path=/tmp/m"]) as server:
        with server.channel() as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            ...

The server runs as a subprocess on free loopback ports; the context manager waits (bounded)
until ModelService.GetModelStatus reports every model given by --model_name (or in
--model_config_file) AVAILABLE, and on failure raises with the server's stderr attached.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

REPO = Path(__file__).resolve().parent.parent
_CONSOLE_SCRIPT = REPO / ".venv" / "bin" / "tfpack-model-server"
_STOP_SECONDS = 15.0
_AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE


class ModelServerFailed(RuntimeError):
    """The server exited or never became ready; the message holds its stderr."""


@dataclass
class ServerHandle:
    """A running tfpack-model-server subprocess."""

    host: str
    grpc_port: int
    rest_port: int | None
    process: subprocess.Popen[bytes]
    stderr_path: Path

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the gRPC API."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        """``http://host:port`` of the REST API (raises if REST is off)."""
        if self.rest_port is None:
            raise ValueError("this server was started with rest=False")
        return f"http://{self.host}:{self.rest_port}"

    def channel(self) -> grpc.Channel:
        """Return a new insecure channel to the gRPC API (close it when done)."""
        return grpc.insecure_channel(self.grpc_target)

    def stderr(self) -> str:
        """Return what the server has logged so far."""
        return self.stderr_path.read_text(errors="replace")


def free_port() -> int:
    """Return a loopback TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _flag(args: list[str], name: str) -> str | None:
    for arg in args:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def _expected_models(args: list[str]) -> list[str]:
    config_file = _flag(args, "model_config_file")
    if config_file:
        config = text_format.Parse(Path(config_file).read_text(), model_server_config_pb2.ModelServerConfig())
        return [model.name for model in config.model_config_list.config]
    return [_flag(args, "model_name") or "default"]


def _command() -> list[str]:
    if _CONSOLE_SCRIPT.exists():
        return [str(_CONSOLE_SCRIPT)]
    return [sys.executable, "-m", "serving.model_server"]


def _all_available(channel: grpc.Channel, models: list[str]) -> bool:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    for name in models:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            response = stub.GetModelStatus(request, timeout=2)
        except grpc.RpcError:
            return False
        if not any(s.state == _AVAILABLE for s in response.model_version_status):
            return False
    return True


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=_STOP_SECONDS)


@contextlib.contextmanager
def running_model_server(args: list[str], *, rest: bool = True, timeout: float = 60) -> Iterator[ServerHandle]:
    """Run tfpack-model-server with ``args`` plus free --port/--rest_api_port until exit.

    Args:
        args: tensorflow_model_server flags (without --port/--rest_api_port).
        rest: Also open the REST API on a free port.
        timeout: Seconds to wait for every configured model to be AVAILABLE.

    Yields:
        The running server.

    Raises:
        ModelServerFailed: If the server exits early or is not ready within ``timeout``.
    """
    host = "127.0.0.1"
    grpc_port = free_port()
    rest_port = free_port() if rest else None
    command = [*_command(), f"--port={grpc_port}", *args]
    if rest_port is not None:
        command.append(f"--rest_api_port={rest_port}")
    models = _expected_models(args)
    with tempfile.TemporaryDirectory(prefix="tfpack-model-server-") as scratch:
        stderr_path = Path(scratch) / "stderr.log"
        with stderr_path.open("wb") as stderr_file:
            process = subprocess.Popen(command, cwd=REPO, stdout=stderr_file, stderr=subprocess.STDOUT)
        handle = ServerHandle(host, grpc_port, rest_port, process, stderr_path)
        try:
            deadline = time.monotonic() + timeout
            with handle.channel() as channel:
                while not _all_available(channel, models):
                    if process.poll() is not None:
                        raise ModelServerFailed(
                            f"tfpack-model-server exited with {process.returncode}:\n{handle.stderr()}"
                        )
                    if time.monotonic() > deadline:
                        raise ModelServerFailed(
                            f"tfpack-model-server not ready after {timeout:.0f}s:\n{handle.stderr()}"
                        )
                    time.sleep(0.2)
            yield handle
        except BaseException:
            # pytest shows captured stderr of a failing test: include the server's log.
            print(f"--- tfpack-model-server log ---\n{handle.stderr()}", file=sys.stderr)
            raise
        finally:
            _stop(process)


def http(method: str, url: str, body: object | None = None) -> tuple[int, dict]:
    """Send a JSON request; the status and the JSON answer, error statuses included."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
