"""Issue 13: the image's HEALTHCHECK (python -I -m serving.healthcheck) is true.

Ready (exit 0) only when every baked version of every model in serving.json is AVAILABLE; else
exit 1 with one line naming the model and why: a version LOADING, a failed load with the
server's own error, a model the server does not serve, no server at all. TF Serving's answers
are played by a stub HTTP server (fast); then the real tfpack-model-server, started with the
entrypoint's own command line, is checked by the module run as the image runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from factories.image_layout import baked_layout

from serving.entrypoint import EMBEDDED_SERVER, BakedServing, ImageLayout, load_baked, server_command
from serving.healthcheck import check, check_alive, main
from tests.factories.half_plus_two import write_half_plus_two_tf1
from tests.servers import REPO, ServerHandle, free_port, running_model_server

# What the health check reads of serving.json is the models (trust is the entrypoint's business).
BAKED = BakedServing(
    model_server=EMBEDDED_SERVER, models={"half": [1, 2], "twin": [1]}, allow_unsigned=True, trust="none"
)
OK = {"error_code": "OK", "error_message": ""}


def _status(*versions: tuple[int, str, str]) -> dict[str, object]:
    """TF Serving's GET /v1/models/NAME answer for (version, state, load error)."""
    return {
        "model_version_status": [
            {
                "version": str(version),
                "state": state,
                "status": {"error_code": "UNKNOWN", "error_message": error} if error else OK,
            }
            for version, state, error in versions
        ]
    }


@pytest.fixture
def answers() -> Iterator[tuple[int, dict[str, tuple[int, object]]]]:
    """A stub REST server on a free port answering GET path -> (status, JSON) from the dict."""
    table: dict[str, tuple[int, object]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = table.get(self.path, (404, {"error": f"Could not find any versions of model {self.path}"}))
            data = json.dumps(body).encode() if not isinstance(body, bytes) else body
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], table
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.fast
def test_ready_only_when_every_baked_version_is_available(answers) -> None:
    port, table = answers
    table["/v1/models/half"] = (200, _status((2, "AVAILABLE", ""), (1, "AVAILABLE", "")))
    table["/v1/models/twin"] = (200, _status((1, "AVAILABLE", "")))
    assert check(BAKED, port) == (True, "ready: half v1,2, twin v1 AVAILABLE")

    # One version of half is still loading: a client pinned to it (or to its label) would get
    # NOT_FOUND, so the image is not ready yet.
    table["/v1/models/half"] = (200, _status((2, "AVAILABLE", ""), (1, "LOADING", "")))
    assert check(BAKED, port) == (False, "not ready: half: version 1 LOADING")

    # A failed load stays END with the server's error (TF Serving serves the other versions on).
    error = "Failed to load: Could not find SavedModel .pb or .pbtxt at supplied export directory path"
    table["/v1/models/half"] = (200, _status((2, "AVAILABLE", ""), (1, "END", error)))
    assert check(BAKED, port) == (False, f"not ready: half: version 1 END ({error})")

    # A version the server never heard of, and a model it does not serve: both named, one line.
    table["/v1/models/half"] = (200, _status((2, "AVAILABLE", "")))
    del table["/v1/models/twin"]
    ready, line = check(BAKED, port)
    assert not ready
    assert line == (
        "not ready: half: version 1 not loaded; twin: the server does not serve it "
        "(HTTP 404: Could not find any versions of model /v1/models/twin)"
    )


@pytest.mark.fast
def test_live_while_a_version_is_loading_or_failed_and_not_live_when_nothing_answers(answers) -> None:
    """The liveness probe restarts the pod when it fails: a slow or failed load is readiness's
    to report (a restart would not fix it), a server that answers nothing is liveness's."""
    port, table = answers
    error = "Failed to load: Could not find SavedModel .pb or .pbtxt at supplied export directory path"
    table["/v1/models/half"] = (200, _status((2, "LOADING", ""), (1, "END", error)))
    assert not check(BAKED, port).ready
    assert check_alive(BAKED, port) == (True, "alive: the model server answers (HTTP 200 for half)")
    del table["/v1/models/half"]
    assert check_alive(BAKED, port).ready  # a 404 is still an answer
    alive, line = check_alive(BAKED, free_port(), timeout=1)
    assert not alive and line.startswith("not alive: no answer from the model server at 127.0.0.1:")


@pytest.mark.fast
def test_an_image_that_allows_reloads_needs_one_available_version_per_model(answers) -> None:
    port, table = answers
    reloading = BakedServing(
        model_server=EMBEDDED_SERVER,
        models={"half": [1, 2]},
        allow_reload_config=True,
        allow_unsigned=True,
        trust="none",
    )
    # A reload may legitimately have replaced the baked versions.
    table["/v1/models/half"] = (200, _status((3, "AVAILABLE", ""), (2, "END", ""), (1, "END", "")))
    assert check(reloading, port).ready
    table["/v1/models/half"] = (200, _status((3, "LOADING", ""), (2, "END", "")))
    assert check(reloading, port) == (False, "not ready: half: version 2 END, version 3 LOADING")


@pytest.mark.fast
def test_no_server_or_a_bad_serving_json_is_not_ready_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], answers
) -> None:
    closed = free_port()
    ready, line = check(BAKED, closed, timeout=2)
    assert not ready
    assert line.startswith(f"not ready: no answer from the model server at 127.0.0.1:{closed} (")

    port, table = answers
    table["/v1/models/half"] = (200, b"<html>not TF Serving</html>")
    assert check(
        BakedServing(model_server=EMBEDDED_SERVER, models={"half": [1]}, allow_unsigned=True, trust="none"), port
    ) == (
        False,
        "not ready: half: the server does not serve it (HTTP 200)",
    )

    serving_json = tmp_path / "serving.json"
    assert main(["--serving-config", str(serving_json)]) == 1
    assert capsys.readouterr().out == f"not ready: cannot read {serving_json} (No such file or directory)\n"
    serving_json.write_text('{"format": 1}')
    assert main(["--serving-config", str(serving_json)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"not ready: {serving_json} is not a tfpack serving config (format 1")
    assert out.count("\n") == 1


@pytest.mark.fast
def test_a_proxy_in_the_environment_is_not_used(answers, monkeypatch: pytest.MonkeyPatch) -> None:
    port, table = answers
    table["/v1/models/half"] = (200, _status((1, "AVAILABLE", ""), (2, "AVAILABLE", "")))
    table["/v1/models/twin"] = (200, _status((1, "AVAILABLE", "")))
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    assert check(BAKED, port).ready


# --- against the real tfpack-model-server --------------------------------------------------------------


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> ImageLayout:
    root = tmp_path_factory.mktemp("healthy")
    for version in (1, 2):
        write_half_plus_two_tf1(root / "models" / "half", version=version, offset=float(version))
    return baked_layout(root, None, EMBEDDED_SERVER, allow_unsigned=True, labels={"half": {"stable": 1}})


@pytest.fixture(scope="module")
def server(layout: ImageLayout) -> Iterator[ServerHandle]:
    command = server_command(layout, load_baked(layout), [])
    with running_model_server([a for a in command[1:] if not a.startswith(("--port=", "--rest_api_port="))]) as handle:
        yield handle


def _run_healthcheck(serving_json: Path, rest_port: int) -> subprocess.CompletedProcess[str]:
    """The module as the image's HEALTHCHECK runs it (isolated mode)."""
    return subprocess.run(
        [
            sys.executable,
            "-I",
            "-m",
            "serving.healthcheck",
            f"--serving-config={serving_json}",
            f"--rest-port={rest_port}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_real_server_is_healthy_when_it_serves_every_baked_version(
    layout: ImageLayout, server: ServerHandle, tmp_path: Path
) -> None:
    assert server.rest_port is not None
    healthy = _run_healthcheck(layout.serving_file, server.rest_port)
    assert (healthy.returncode, healthy.stdout, healthy.stderr) == (0, "ready: half v1,2 AVAILABLE\n", "")

    # serving.json promising a version or a model the server does not serve.
    baked = load_baked(layout)
    promised = tmp_path / "serving.json"
    promised.write_text(
        BakedServing(
            model_server=EMBEDDED_SERVER, models={"half": [1, 2, 3], "ghost": [1]}, allow_unsigned=True, trust="none"
        ).dumps()
    )
    unhealthy = _run_healthcheck(promised, server.rest_port)
    assert unhealthy.returncode == 1
    assert unhealthy.stdout == (  # serving.json's order: its keys are sorted
        "not ready: ghost: the server does not serve it (HTTP 404: Could not find any versions of model ghost); "
        "half: version 3 not loaded\n"
    )
    assert baked.models == {"half": [1, 2]}

    down = _run_healthcheck(layout.serving_file, free_port())
    assert down.returncode == 1
    assert down.stdout.startswith("not ready: no answer from the model server at 127.0.0.1:")
    assert down.stdout.count("\n") == 1
