"""The HTTP/REST front end (TF Serving's /v1 API): an event loop reading requests, a bounded
pool of worker threads answering them.

Routes, as tensorflow_serving/model_servers/http_rest_api_util.cc matches them:
``GET /v1/models/NAME[/versions/N|/labels/L][/metadata]`` and
``POST /v1/models/NAME[/versions/N|/labels/L]:(predict|classify|regress)``. Errors answer
``{"error": message}`` with the HTTP status TF Serving maps the error's code to; so do the HTTP
layer's own refusals (400 malformed, 404 outside /v1, 408 too slow, 413 too large).

As TF Serving's net_http server (libevent reading, an executor of --rest_api_num_threads
threads, default 4 per CPU, answering: model_servers/http_server.cc), connections cost no
thread: one asyncio loop reads every request whole, with an idle timeout between requests and
a deadline for the request head and for each piece of the body, and only a complete request
reaches a worker. A thousand half-sent requests hold a thousand sockets, not the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import re
import resource
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from google.protobuf import json_format
from google.protobuf.message import Message
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from serving import rest_json, tensors
from serving.examples import ExampleInference
from serving.inference import SIGNATURE_DEF_FIELD, Inference, find_signature
from serving.manager import ModelManager
from serving.metrics import REGISTRY
from serving.status import ServingError, invalid_argument

_LOG = logging.getLogger(__name__)

# ASCII digits only, as RE2's \d in TF Serving's patterns: "/versions/١" is no version.
_VERSION_OR_LABEL = r"(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?"
_PREDICTION_PATH = re.compile(rf"/v1/models/([^/:]+){_VERSION_OR_LABEL}:(classify|regress|predict)", re.IGNORECASE)
# TF Serving's HTTP server sets no body limit; a request still has to become one protobuf
# message, which cannot exceed 2 GiB, so larger bodies are refused before they are read. A
# body is also refused above the request tensor cap (--tfpack_max_request_tensor_bytes).
MAX_BODY_BYTES = 2**31 - 1
_STATUS_PATH = re.compile(rf"/v1/models(?:/([^/:]+))?{_VERSION_OR_LABEL}(?:/(metadata))?", re.IGNORECASE)
_INT64_MAX = 2**63 - 1

# Connection limits (TF Serving's evhttp server has a read timeout; these are tighter).
IDLE_TIMEOUT_SECONDS = 30.0  # a kept-alive connection waiting for its next request
HEADER_TIMEOUT_SECONDS = 10.0  # from a request's first byte to the end of its head
BODY_READ_TIMEOUT_SECONDS = 30.0  # for each piece of a body to arrive
MAX_HEAD_BYTES = 64 << 10  # request line and headers
_BODY_PIECE = 1 << 20
_LINGER_SECONDS, _LINGER_READS = 2.0, 64  # reading what a refused client still sends
_CHUNK_LINE = re.compile(rb"([0-9a-fA-F]{1,16})(?:;[^\r\n]*)?\r\n")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTENT_LENGTH = re.compile(r"[0-9]+")  # ASCII digits: "١٢" is not a length


def _model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=unquote(name))
    if version is not None:
        # http_rest_api_util.cc ParseModelInfo: absl::SimpleAtoi into an int64_t, else this.
        if len(version) > 19 or int(version) > _INT64_MAX:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
        spec.version.value = int(version)
    if label is not None:
        spec.version_label = unquote(label)
    return spec


def _message_dict(message: Message) -> dict[str, Any]:  # a JSON object: values of several types
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class RestApi:
    """Turns (method, path, body) into (HTTP status, JSON body) using Inference."""

    def __init__(
        self,
        inference: Inference,
        examples: ExampleInference,
        manager: ModelManager,
        timeout_ms: int,
        metrics_path: str | None = None,
    ) -> None:
        """Create the API.

        Args:
            inference: The Predict/metadata/status handlers.
            examples: The Classify/Regress handlers.
            manager: Resolves model specs, to read signatures when decoding JSON inputs.
            timeout_ms: Run timeout per request (0: none), --rest_api_timeout_in_ms.
            metrics_path: Where Prometheus metrics are served (None: not served).
        """
        self.metrics_path = metrics_path
        self._inference = inference
        self._examples = examples
        self._manager = manager
        self._timeout_ms = timeout_ms or None

    @property
    def max_body_bytes(self) -> int:
        """The largest request body accepted: the request tensor cap, at most MAX_BODY_BYTES."""
        return min(self._inference.max_request_tensor_bytes, MAX_BODY_BYTES)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """Answer one request; never raises."""
        try:
            return HTTPStatus.OK, rest_json.dumps(self._dispatch(method, path, body))
        except ServingError as error:
            return error.http_status, rest_json.dumps({"error": error.message})
        except Exception as error:  # a bug: answer it, log one line, keep serving
            _LOG.error("REST %s %s failed: %s: %s", method, path[:200], type(error).__name__, error)
            return HTTPStatus.INTERNAL_SERVER_ERROR, rest_json.dumps(
                {"error": f"Internal error: {type(error).__name__}"}
            )

    def _dispatch(self, method: str, path: str, body: bytes) -> dict[str, Any]:
        path = path.split("?", 1)[0]
        if method == "POST":
            match = _PREDICTION_PATH.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                spec = _model_spec(name, version, label)
                started, status = time.monotonic(), "OK"
                try:
                    if verb.lower() == "predict":
                        return self._predict(spec, body)
                    return self._classify_or_regress(verb.lower(), spec, body)
                except ServingError as error:
                    status = error.error_code_name
                    raise
                finally:
                    REGISTRY.record_request(spec.name, verb.capitalize(), "REST", status, time.monotonic() - started)
        elif method == "GET":
            match = _STATUS_PATH.fullmatch(path)
            if match:
                name, version, label, subresource = match.groups()
                if not name:
                    raise invalid_argument("Missing model name in request.")
                spec = _model_spec(name, version, label)
                if subresource:
                    return self._metadata(spec)
                request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
                return _message_dict(self._inference.get_model_status(request))
        raise invalid_argument(f"Malformed request: {method} {path}")

    def _metadata(self, spec: model_pb2.ModelSpec) -> dict[str, Any]:
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD])
        response = self._inference.get_model_metadata(request)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_defs)
        return {
            "model_spec": _message_dict(response.model_spec),
            "metadata": {SIGNATURE_DEF_FIELD: _message_dict(signature_defs)},
        }

    def _parse(self, body: bytes) -> dict[str, Any]:
        # Parsing may take a few times the tensors' own size; no more than that.
        return rest_json.parse_body(body, 4 * self._inference.max_request_tensor_bytes)

    def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> dict[str, Any]:
        document = self._parse(body)
        spec.signature_name = rest_json.signature_name(document)
        servable = self._manager.servable(spec)
        try:
            signature = find_signature(servable, spec.signature_name)
        except ServingError:
            raise invalid_argument(
                f'Serving signature name: "{spec.signature_name or "serving_default"}" not found in signature def'
            ) from None
        inputs, row_format = rest_json.predict_inputs(document, dict(signature.inputs))
        # Pin the version resolved above so decoding and running use the same servable.
        spec.ClearField("version_label")
        spec.version.value = servable.version
        request = predict_pb2.PredictRequest(model_spec=spec, inputs=inputs)
        response = self._inference.predict(request, self._timeout_ms)
        outputs = {alias: tensors.to_ndarray(proto) for alias, proto in response.outputs.items()}
        return rest_json.predict_response(outputs, row_format)

    def _classify_or_regress(self, verb: str, spec: model_pb2.ModelSpec, body: bytes) -> dict[str, Any]:
        document = self._parse(body)
        spec.signature_name = rest_json.signature_name(document)
        request_input = rest_json.examples_input(document)
        if verb == "classify":
            classified = self._examples.classify(
                classification_pb2.ClassificationRequest(model_spec=spec, input=request_input),
                self._timeout_ms,
            )
            return rest_json.classify_response(classified.result)
        regressed = self._examples.regress(
            regression_pb2.RegressionRequest(model_spec=spec, input=request_input),
            self._timeout_ms,
        )
        return rest_json.regress_response(regressed.result)


SERVER_NAME = "tfpack-model-server"


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""


class _Refusal(Exception):
    """A request that cannot be read: answer ``status`` with ``message``, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.head_only = False  # the answer to a HEAD request has no body


def _phrase(status: int) -> str:
    if status == 499:
        return "Client Closed Request"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _response(
    status: int,
    payload: bytes,
    content_type: str = "application/json",
    *,
    close: bool = False,
    keep_alive_header: bool = False,
    with_body: bool = True,
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_phrase(status)}",
        f"Server: {SERVER_NAME}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(payload)}",
    ]
    if close:
        lines.append("Connection: close")
    elif keep_alive_header:
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + payload if with_body else head


def _error(message: str) -> bytes:
    return rest_json.dumps({"error": message})


def _shown(text: str, limit: int = 200) -> str:
    """A piece of the request (read as latin-1, as HTTP heads are) as its UTF-8 client wrote it."""
    return text[:limit].encode("latin-1").decode("utf-8", errors="replace")


def _parse_head(head: bytes) -> _Request:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _HEADER_NAME.fullmatch(parts[0]) or not parts[1]:
        raise _Refusal(HTTPStatus.BAD_REQUEST, f"Malformed request line: {_shown(lines[0])!r}")
    method, target, version = parts
    target = _shown(target, len(target))  # a target should be ASCII; UTF-8 is read as such
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _Refusal(HTTPStatus.BAD_REQUEST, f"Unsupported HTTP version: {_shown(version, 20)!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name):
            raise _Refusal(HTTPStatus.BAD_REQUEST, f"Malformed header line: {_shown(line)!r}")
        name, value = name.lower(), value.strip(" \t")
        if name in headers:
            if name == "content-length" and headers[name] != value:
                raise _Refusal(HTTPStatus.BAD_REQUEST, "Conflicting Content-Length headers")
            if name != "content-length":
                headers[name] = f"{headers[name]}, {value}"
        else:
            headers[name] = value
    return _Request(method, target, version, headers)


def _connection_tokens(request: _Request) -> set[str]:
    return {token.strip().lower() for token in request.headers.get("connection", "").split(",")}


class RestServer:
    """The REST API served on a socket: one asyncio loop for connections, a worker pool."""

    def __init__(self, api: RestApi, host: str, port: int, num_threads: int) -> None:
        """Bind ``host:port`` and start serving from background threads.

        Raises:
            OSError: If the address cannot be bound.
        """
        self._api = api
        self._socket = socket.create_server((host, port), backlog=1024)
        self._pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="rest")
        self._loop = asyncio.new_event_loop()
        self._connections: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="rest", daemon=True)
        self._thread.start()
        started.wait()

    @property
    def server_address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        return self._socket.getsockname()[:2]

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve_connection, sock=self._socket, limit=MAX_HEAD_BYTES)
            )
        finally:
            started.set()
        self._loop.run_forever()
        self._loop.close()

    def shutdown(self) -> None:
        """Stop accepting, close every connection and stop the loop (waits a bounded time)."""
        if self._loop.is_closed() or not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def server_close(self) -> None:
        """Release the listening socket (after shutdown)."""
        self._socket.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        # drain() then waits until every byte has reached the socket, not just most of them.
        writer.transport.set_write_buffer_limits(high=0)
        try:
            while True:
                try:
                    request = await self._read_request(reader, writer)
                except _Refusal as refusal:
                    _LOG.debug("REST request refused: %d %s", refusal.status, refusal.message)
                    await self._send(
                        writer,
                        _response(
                            refusal.status,
                            _error(refusal.message),
                            close=True,
                            with_body=not refusal.head_only,
                        ),
                    )
                    await self._linger(reader, writer)
                    return
                if request is None:
                    return
                tokens = _connection_tokens(request)
                close = "close" in tokens or (request.version == "HTTP/1.0" and "keep-alive" not in tokens)
                status, content_type, payload = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._answer, request
                )
                await self._send(
                    writer,
                    _response(
                        status,
                        payload,
                        content_type,
                        close=close,
                        keep_alive_header=request.version == "HTTP/1.0",
                        with_body=request.method != "HEAD",
                    ),
                )
                if close:
                    await self._linger(reader, writer)
                    return
        except (TimeoutError, OSError, EOFError, RuntimeError, asyncio.CancelledError):
            pass  # the client went away or stalled, or the server is stopping: just close
        finally:
            self._connections.discard(task)
            writer.transport.abort()  # whatever was to be sent has been sent (_linger)

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Close our side after the response has left, reading (and dropping) what the client
        still sends for a moment: closing with unread input would reset the connection and
        could destroy the response before the client reads it (e.g. a refused body)."""
        with contextlib.suppress(OSError, EOFError, asyncio.TimeoutError):
            writer.write_eof()
            deadline = time.monotonic() + _LINGER_SECONDS
            for _ in range(_LINGER_READS):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not await asyncio.wait_for(reader.read(_BODY_PIECE), remaining):
                    break

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT_SECONDS)

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Request | None:
        """Read one whole request; None when the client closed or stayed idle too long."""
        try:
            first = await asyncio.wait_for(reader.read(1), IDLE_TIMEOUT_SECONDS)
        except TimeoutError:
            return None
        if not first:
            return None
        try:
            rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_TIMEOUT_SECONDS)
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError:
            raise _Refusal(HTTPStatus.BAD_REQUEST, f"Request head exceeds {MAX_HEAD_BYTES} bytes") from None
        except TimeoutError:
            raise _Refusal(
                HTTPStatus.REQUEST_TIMEOUT,
                f"Request head not received within {HEADER_TIMEOUT_SECONDS:g} s",
            ) from None
        head = (first + rest).lstrip(b"\r\n")
        try:
            return await self._read_body(_parse_head(head), reader, writer)
        except _Refusal as refusal:
            refusal.head_only = head.startswith(b"HEAD ")
            raise

    async def _read_body(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Request:
        headers = request.headers
        limit = self._api.max_body_bytes
        if "transfer-encoding" in headers:
            if "content-length" in headers:
                raise _Refusal(HTTPStatus.BAD_REQUEST, "Both Transfer-Encoding and Content-Length given")
            if headers["transfer-encoding"].lower() != "chunked":
                raise _Refusal(
                    HTTPStatus.BAD_REQUEST,
                    f"Unsupported Transfer-Encoding: {_shown(headers['transfer-encoding'], 100)}",
                )
            self._continue(request, writer)
            request.body = await self._read_chunked(reader, limit)
            return request
        text = headers.get("content-length", "0")
        if not _CONTENT_LENGTH.fullmatch(text):
            raise _Refusal(HTTPStatus.BAD_REQUEST, f"Invalid Content-Length: {_shown(text, 100)}")
        length = int(text) if len(text) <= 19 else MAX_BODY_BYTES + 1
        if length > MAX_BODY_BYTES:
            raise _Refusal(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"Request body of {text} bytes exceeds the limit of {MAX_BODY_BYTES} bytes",
            )
        if length > limit:
            raise _Refusal(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"Request body of {length} bytes exceeds the request tensor limit of {limit} "
                "bytes (--tfpack_max_request_tensor_bytes)",
            )
        if length:
            self._continue(request, writer)
            request.body = await self._read_exactly(reader, length)
        return request

    @staticmethod
    def _continue(request: _Request, writer: asyncio.StreamWriter) -> None:
        if request.version == "HTTP/1.1" and (request.headers.get("expect", "").lower() == "100-continue"):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    @staticmethod
    async def _read_exactly(reader: asyncio.StreamReader, length: int) -> bytes:
        pieces = []
        while length:
            piece = await asyncio.wait_for(reader.readexactly(min(length, _BODY_PIECE)), BODY_READ_TIMEOUT_SECONDS)
            pieces.append(piece)
            length -= len(piece)
        return b"".join(pieces)

    async def _read_chunked(self, reader: asyncio.StreamReader, limit: int) -> bytes:
        pieces, total = [], 0
        while True:
            line = await self._read_line(reader)
            match = _CHUNK_LINE.fullmatch(line)
            if not match:
                raise _Refusal(HTTPStatus.BAD_REQUEST, "Malformed chunk in a chunked body")
            size = int(match.group(1), 16)
            if not size:
                break
            total += size
            if total > limit:
                raise _Refusal(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"Chunked request body exceeds the request tensor limit of {limit} bytes "
                    "(--tfpack_max_request_tensor_bytes)",
                )
            pieces.append(await self._read_exactly(reader, size))
            if await self._read_exactly(reader, 2) != b"\r\n":
                raise _Refusal(HTTPStatus.BAD_REQUEST, "Malformed chunk in a chunked body")
        for _ in range(100):  # trailer fields, ignored
            if await self._read_line(reader) == b"\r\n":
                return b"".join(pieces)
        raise _Refusal(HTTPStatus.BAD_REQUEST, "Too many trailer fields in a chunked body")

    @staticmethod
    async def _read_line(reader: asyncio.StreamReader) -> bytes:
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n"), BODY_READ_TIMEOUT_SECONDS)
        except asyncio.LimitOverrunError:
            raise _Refusal(HTTPStatus.BAD_REQUEST, "Malformed chunk in a chunked body") from None

    def _answer(self, request: _Request) -> tuple[int, str, bytes]:
        """Answer a whole request (on a worker thread); never raises."""
        path = request.target
        status: int
        if request.method == "GET" and path.split("?", 1)[0] == self._api.metrics_path:
            status, content_type = HTTPStatus.OK, "text/plain; version=0.0.4"
            payload = REGISTRY.render().encode()
        elif not path.lower().startswith("/v1/"):
            status, content_type, payload = HTTPStatus.NOT_FOUND, "application/json", (b'{"error": "Not Found"}')
        else:
            content_type = "application/json"
            status, payload = self._api.handle(request.method, path, request.body)
        _LOG.debug("REST %s %s %d", request.method, path[:200], status)
        return int(status), content_type, payload


def _raise_open_file_limit() -> None:
    # Each connection is a descriptor; idle ones are cheap, so let there be many.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def start_rest_server(api: RestApi, port: int, host: str = "0.0.0.0", *, num_threads: int = 0) -> RestServer:
    """Serve ``api`` on ``host:port`` from background threads; returns the server to stop.

    Args:
        api: What answers requests.
        port: The TCP port.
        host: The address to bind.
        num_threads: Worker threads answering requests (--rest_api_num_threads; 0: four per
            CPU, TF Serving's default).

    Raises:
        OSError: If the address cannot be bound.
    """
    _raise_open_file_limit()
    workers = num_threads if num_threads > 0 else 4 * (os.cpu_count() or 1)
    return RestServer(api, host, port, workers)
