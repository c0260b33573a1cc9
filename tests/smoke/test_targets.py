"""Smoke targets: a running server's arguments, and images started by the real Docker engine and
always removed, Ctrl-C included."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from packager import docker_engine
from packager.errors import SmokeTestFailed, UsageError
from packager.image import build_image
from packager.progress import SILENT, Progress
from packager.signing import sign
from packager.smoke import (
    GRPC_MODEL_STATUS,
    Expectation,
    SmokeTarget,
    StartedImage,
    run_smoke,
    smoke_image,
    smoke_target,
)
from packager.smoke.targets import CONTAINER_LABEL, Endpoints
from tests.smoke.support import ALL_CHECKS, MODEL, VERSION, Served, junit_counts

# --- a running server ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "rest_target", "message"),
    [
        ("localhost", None, "--target 'localhost' is not HOST:PORT"),
        ("localhost:8500", "localhost:http", "--rest-target 'localhost:http' is not HOST:PORT"),
        ("localhost:²", None, r"--target 'localhost:²' is not HOST:PORT"),
        ("localhost:65536", None, "--target 'localhost:65536' is not HOST:PORT"),
    ],
)
def test_bad_addresses_are_usage_errors(served: Served, target: str, rest_target: str | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        smoke_target(target, MODEL, served.version_dir, rest_target=rest_target)


def test_version_dir_without_goldens_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / MODEL / "1").mkdir(parents=True)
    with pytest.raises(UsageError, match="not written by 'tfpack convert'"):
        smoke_target("localhost:8500", MODEL, tmp_path / MODEL / "1")
    with pytest.raises(UsageError, match="not a version dir"):
        smoke_target("localhost:8500", MODEL, tmp_path / MODEL)


class _InterruptedTarget(SmokeTarget):
    """A target whose server "answers" with Ctrl-C: run_smoke must still stop it."""

    def __init__(self) -> None:
        self.stopped = 0

    def start(self, progress: Progress) -> Endpoints:
        return Endpoints(grpc="127.0.0.1:9", rest=None)

    def pinned_version(self) -> int | None:
        return None

    def expectation(self, model: str, version: int) -> Expectation:
        raise AssertionError("never reached")

    def exit_status(self) -> str | None:
        raise KeyboardInterrupt

    def stop(self, progress: Progress) -> None:
        self.stopped += 1


def test_ctrl_c_during_the_checks_still_stops_the_target() -> None:
    target = _InterruptedTarget()
    with pytest.raises(KeyboardInterrupt):
        run_smoke(target, MODEL, timeout=5)
    assert target.stopped == 1


# --- a real image built by tfpack build, run by the real Docker engine --------------------------


@pytest.fixture(scope="module")
def images(
    docker_client: docker.DockerClient,
    served: Served,
    signing_keys: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """ "good": the served version dir signed and built into an image; "broken": that image
    with MODEL_BASE_PATH pointing nowhere, so its entrypoint exits instead of serving."""
    base_path = tmp_path_factory.mktemp("image") / MODEL
    shutil.copytree(served.version_dir, base_path / str(VERSION))
    sign(base_path / str(VERSION), signing_keys["private"])
    suffix = uuid.uuid4().hex[:10]
    tags = {"good": f"tfpack-test/smoke-{MODEL}:{suffix}", "broken": f"tfpack-test/smoke-broken:{suffix}"}
    try:
        build_image(base_path, tags["good"], public_key=signing_keys["public"])
        dockerfile = f"FROM {tags['good']}\nENV MODEL_BASE_PATH=/nonexistent\n".encode()
        docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=tags["broken"], rm=True)
        yield tags
    finally:
        for tag in tags.values():
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(tag, force=True)


def smoke_containers(client: docker.DockerClient) -> list[str]:
    return [c.id for c in client.containers.list(all=True, filters={"label": CONTAINER_LABEL})]


@pytest.mark.docker
def test_smoke_image_passes_and_removes_its_container(
    docker_client: docker.DockerClient, images: dict[str, str], tmp_path: Path
) -> None:
    report = smoke_image(images["good"], MODEL, report_path=tmp_path / "smoke.json")
    assert report.passed
    assert [check.name for check in report.checks] == ALL_CHECKS
    assert report.image == images["good"]
    assert report.version == VERSION
    assert json.loads((tmp_path / "smoke.json").read_text())["image"] == images["good"]
    assert smoke_containers(docker_client) == []


@pytest.mark.docker
def test_smoke_image_reports_a_server_that_exits_with_its_logs(
    docker_client: docker.DockerClient, images: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(SmokeTestFailed, match="first grpc_model_status: the container exited with code"):
        smoke_image(images["broken"], MODEL, timeout=60, junit_path=tmp_path / "smoke.xml")
    assert junit_counts(tmp_path / "smoke.xml") == (1, 1, [GRPC_MODEL_STATUS])
    failure = ET.parse(tmp_path / "smoke.xml").getroot().find("testsuite/testcase/failure")
    assert failure is not None and failure.text is not None
    log_tail = failure.text.split("container log lines ---\n", 1)[1]
    assert "/nonexistent" in log_tail
    assert smoke_containers(docker_client) == []


@pytest.mark.docker
def test_smoke_image_of_another_model_is_a_usage_error(
    docker_client: docker.DockerClient, images: dict[str, str]
) -> None:
    with pytest.raises(UsageError, match="has no /models/other"):
        smoke_image(images["good"], "other")
    assert smoke_containers(docker_client) == []


@pytest.mark.docker
def test_an_image_the_engine_lacks_is_a_usage_error(docker_client: docker.DockerClient) -> None:
    with pytest.raises(UsageError, match="is not in the local Docker engine"):
        smoke_image(f"tfpack-test/absent:{uuid.uuid4().hex[:10]}", MODEL)
    assert smoke_containers(docker_client) == []


@pytest.mark.docker
def test_ctrl_c_while_the_image_runs_removes_its_container(
    docker_client: docker.DockerClient, images: dict[str, str]
) -> None:
    target = StartedImage(images["good"], MODEL)
    with pytest.raises(KeyboardInterrupt), target.running(SILENT) as endpoints:
        assert endpoints.grpc.startswith("127.0.0.1:") and endpoints.rest is not None
        assert len(smoke_containers(docker_client)) == 1
        raise KeyboardInterrupt
    assert smoke_containers(docker_client) == []
    target.stop(SILENT)  # stopping twice is harmless


@pytest.mark.docker
def test_removing_a_container_that_is_already_gone_is_fine(
    docker_client: docker.DockerClient, images: dict[str, str]
) -> None:
    container = docker_engine.create_container(
        docker_client, images["good"], loopback_ports=(), labels={CONTAINER_LABEL: "gone"}
    )
    assert docker_engine.exit_code(container) is None  # created, never started
    container.remove(force=True)
    docker_engine.remove_container(container)
    with pytest.raises(docker_engine.DockerEngineError):
        docker_engine.exit_code(container)
