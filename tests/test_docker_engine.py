"""packager.docker_engine's error paths: whatever the engine connection does, exit 2 with one line.

The engine's happy paths run against the real daemon in tests/test_image.py and tests/smoke/;
here a client whose connection breaks stands in for a daemon that dies mid-build or mid-push,
which a real engine cannot be made to do on cue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from packager.docker_engine import DockerEngineError, build_from_context, push_tag
from packager.errors import ToolError
from packager.progress import SILENT

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast


class _DroppedConnection:
    """An engine client whose every request fails as a dropped connection does."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.api = self
        self.images = self

    def build(self, **_: Any) -> Any:
        raise self.error

    def push(self, *_: Any, **__: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    "error", [requests.ConnectionError("Connection aborted."), requests.ReadTimeout("Read timed out.")]
)
def test_a_build_whose_engine_connection_breaks_is_an_environment_error(tmp_path: Path, error: Exception) -> None:
    with pytest.raises(DockerEngineError, match="the Docker engine failed while building m:1") as caught:
        build_from_context(
            _DroppedConnection(error),  # type: ignore[arg-type]  # a stand-in for docker.DockerClient
            tmp_path,
            tag="m:1",
            buildargs={"BASE": "base"},
            labels={},
            progress=SILENT,
        )
    assert isinstance(caught.value, ToolError) and caught.value.exit_code == 2


def test_a_push_whose_engine_connection_breaks_is_an_environment_error() -> None:
    with pytest.raises(DockerEngineError, match="the Docker engine failed while pushing localhost:5000/m:1"):
        push_tag(_DroppedConnection(requests.ConnectionError("reset")), "localhost:5000/m:1", SILENT)  # type: ignore[arg-type]
