"""The image's health check: ready only when every baked version of every model is AVAILABLE.

Run as ``python -I -m serving.healthcheck [--serving-config PATH] [--rest-port N] [--timeout S]
[--live]`` (the image's HEALTHCHECK, every 10 s on both bases, and the Kubernetes startup and
readiness exec probes; with ``--live`` the liveness probe: the server answers at all). It
asks the model server in the same container, over REST on 127.0.0.1,
``GET /v1/models/NAME`` for each model /etc/tfpack/serving.json lists, and reads TF Serving's
answer (``model_version_status[].state``, and ``status.error_message`` when a load failed).

Exit 0 and one ``ready: ...`` line when every version is AVAILABLE; exit 1 and one line naming
each model that is not (and why: not answering, unknown to the server, a version LOADING, or
END with the server's own load error); exit 2 for a bad command line.

It must stay cheap, since it runs every 10 s in a container that may be memory-bound: no
TensorFlow, no protobuf, no gRPC; the standard library's urllib and json, and serving.json read
by the entrypoint's own rules.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from packager.errors import UsageError
from packager.layout import IMAGE_ETC_DIR, REST_PORT
from serving.entrypoint import SERVING_FILE, BakedServing

DEFAULT_SERVING_CONFIG = Path(IMAGE_ETC_DIR) / SERVING_FILE
DEFAULT_TIMEOUT_S = 3.0  # within the image HEALTHCHECK's 5 s, Python's start-up included
AVAILABLE = "AVAILABLE"
HOST = "127.0.0.1"
EXIT_READY = 0
EXIT_NOT_READY = 1
_MAX_ERROR_CHARS = 200  # the server's load error can be long; Docker keeps the health output


class _NoAnswer(Exception):
    """The server did not answer at all (not listening yet, or too slow)."""


class Verdict(NamedTuple):
    """Whether the server is ready, and the one line that says so or says why not."""

    ready: bool
    line: str


def _get(url: str, timeout: float) -> tuple[int, Any]:
    """(HTTP status, parsed JSON body or None) of GET ``url``.

    Raises:
        _NoAnswer: no HTTP answer within ``timeout``.
    """
    # No proxy: an HTTP(S)_PROXY in the container's environment must not route 127.0.0.1 away.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise _NoAnswer(str(getattr(reason, "strerror", None) or reason)) from None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def _model_problem(name: str, wanted: Sequence[int], status: int, body: Any, *, every_version: bool) -> str | None:
    """Why model ``name`` is not ready given the server's answer, or None when it is."""
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("model_version_status"), list):
        error = body.get("error") if isinstance(body, dict) else None
        return f"{name}: the server does not serve it (HTTP {status}{f': {error}' if error else ''})"
    states: dict[int, tuple[str, str]] = {}
    for entry in body["model_version_status"]:
        if isinstance(entry, dict) and str(entry.get("version", "")).isdecimal():
            error = entry.get("status", {}).get("error_message", "") if isinstance(entry.get("status"), dict) else ""
            states[int(entry["version"])] = (str(entry.get("state", "UNKNOWN")), str(error or ""))
    if not every_version:
        if any(state == AVAILABLE for state, _ in states.values()):
            return None
        wanted = sorted(states) or wanted
    waiting = []
    for version in wanted:
        state, error = states.get(version, ("not loaded", ""))
        if state != AVAILABLE:
            why = f" ({error[:_MAX_ERROR_CHARS]})" if error else ""
            waiting.append(f"version {version} {state}{why}")
    return f"{name}: {', '.join(waiting)}" if waiting else None


def check(baked: BakedServing, rest_port: int = REST_PORT, timeout: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Ask the server on 127.0.0.1:``rest_port`` for every baked model; the verdict and its line.

    Every baked version must be AVAILABLE, not merely one per model: the image serves all of
    them and its labels name them, so a client pinned to a version or a label gets NOT_FOUND
    while that version is LOADING, or forever once its load failed (TF Serving keeps a failed
    version in END with the load error, and keeps serving the others). In an image built to
    allow config reloads what is served may legitimately change at run time: there one
    AVAILABLE version per baked model is enough.

    Args:
        timeout: seconds for all the requests together (the HEALTHCHECK's own timeout must be
            longer).
    """
    deadline = time.monotonic() + timeout
    problems = []
    for name, versions in baked.models.items():
        url = f"http://{HOST}:{rest_port}/v1/models/{name}"
        try:
            status, body = _get(url, max(deadline - time.monotonic(), 0.1))
        except _NoAnswer as error:
            return Verdict(False, f"not ready: no answer from the model server at {HOST}:{rest_port} ({error})")
        problem = _model_problem(name, versions, status, body, every_version=not baked.allow_reload_config)
        if problem:
            problems.append(problem)
    if problems:
        return Verdict(False, "not ready: " + "; ".join(problems))
    served = ", ".join(f"{name} v{','.join(map(str, versions))}" for name, versions in baked.models.items())
    return Verdict(True, f"ready: {served} AVAILABLE")


def check_alive(baked: BakedServing, rest_port: int = REST_PORT, timeout: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Whether the server answers at all (``--live``): any HTTP answer about a baked model.

    A Kubernetes liveness probe restarts the container when it fails, so it must not depend on
    what a restart cannot fix or what is still in progress: a version LOADING or failed is for
    readiness to report; a server that no longer answers HTTP is what a restart is for.
    """
    name = next(iter(baked.models))
    try:
        status, _ = _get(f"http://{HOST}:{rest_port}/v1/models/{name}", timeout)
    except _NoAnswer as error:
        return Verdict(False, f"not alive: no answer from the model server at {HOST}:{rest_port} ({error})")
    return Verdict(True, f"alive: the model server answers (HTTP {status} for {name})")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the verdict in one line; 0 when ready, 1 when not (2 for a bad command line)."""
    parser = argparse.ArgumentParser(
        prog="python -I -m serving.healthcheck",
        description="Exit 0 when the model server in this container serves every baked model version.",
    )
    parser.add_argument(
        "--serving-config",
        type=Path,
        default=DEFAULT_SERVING_CONFIG,
        help=f"the image's serving.json: which models and versions (default {DEFAULT_SERVING_CONFIG})",
    )
    parser.add_argument(
        "--rest-port", type=int, default=REST_PORT, help=f"the server's REST port on {HOST} (default {REST_PORT})"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds for all requests together (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="only check that the server answers (a liveness probe), not that every version is AVAILABLE",
    )
    options = parser.parse_args(argv)
    try:
        baked = BakedServing.loads(options.serving_config.read_text(), str(options.serving_config))
    except OSError as error:
        print(f"not ready: cannot read {options.serving_config} ({error.strerror})", flush=True)
        return EXIT_NOT_READY
    except UsageError as error:
        print(f"not ready: {error}", flush=True)
        return EXIT_NOT_READY
    verdict = (check_alive if options.live else check)(baked, options.rest_port, options.timeout)
    print(verdict.line, flush=True)
    return EXIT_READY if verdict.ready else EXIT_NOT_READY


if __name__ == "__main__":
    sys.exit(main())
