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
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from packager import docker_engine
from packager.errors import SmokeTestFailed, UsageError
from packager.image import build_image
from packager.progress import SILENT, Progress
from packager.signing import sign
from packager.smoke import (
    GRPC_MODEL_STATUS,
    Expectation,
    ServingPlan,
    SmokeTarget,
    StartedImage,
    run_smoke,
    smoke_image,
    smoke_target,
)
from packager.smoke.targets import CONTAINER_LABEL, Endpoints, served_versions
from tests.smoke.support import MODEL, VERSION, Served, good_run, junit_counts, title

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

    def plan(self) -> ServingPlan:
        return ServingPlan({MODEL: None})

    def expectation(self, model: str, version: int) -> Expectation:
        raise AssertionError("never reached")

    def exit_status(self) -> str | None:
        raise KeyboardInterrupt

    def stop(self, progress: Progress) -> None:
        self.stopped += 1


def test_ctrl_c_during_the_checks_still_stops_the_target() -> None:
    target = _InterruptedTarget()
    with pytest.raises(KeyboardInterrupt):
        run_smoke(target, timeout=5)
    assert target.stopped == 1


# --- what an image's baked config says it serves ----------------------------------------------


def _config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


@pytest.mark.fast
def test_served_versions_follow_tf_servings_version_policies() -> None:
    config = _config(
        "model_config_list {"
        " config { name: 'pinned' model_version_policy { specific { versions: 2 versions: 1 } } }"
        " config { name: 'every' model_version_policy { all {} } }"
        " config { name: 'newest' }"
        " config { name: 'two_newest' model_version_policy { latest { num_versions: 2 } } }"
        " config { name: 'unbaked' }"
        "}"
    )
    baked = {"pinned": [1, 2, 3], "every": [1, 4], "newest": [1, 5], "two_newest": [1, 2, 3], "no_config": [8, 9]}
    assert served_versions(config, baked) == {
        "pinned": (1, 2),
        "every": (1, 4),
        "newest": (5,),
        "two_newest": (2, 3),
        "unbaked": None,
        "no_config": (9,),
    }


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


def smoke_containers(client: docker.DockerClient, image: str) -> list[str]:
    """The smoke containers of ``image`` (other runs on this engine may have their own)."""
    return [
        c.id
        for c in client.containers.list(all=True, filters={"label": CONTAINER_LABEL})
        if c.attrs["Config"]["Image"] == image
    ]


@pytest.mark.docker
def test_smoke_image_passes_and_removes_its_container(
    docker_client: docker.DockerClient, images: dict[str, str], tmp_path: Path
) -> None:
    report = smoke_image(images["good"], MODEL, report_path=tmp_path / "smoke.json", requests=10)
    assert report.passed
    # The plan and the contract come from the image: every signature of the baked version dir.
    assert [(check.name, check.subject) for check in report.checks] == good_run()
    assert report.image == images["good"]
    assert report.version == VERSION
    assert json.loads((tmp_path / "smoke.json").read_text())["image"] == images["good"]
    assert smoke_containers(docker_client, images["good"]) == []


@pytest.mark.docker
def test_smoke_image_without_a_model_checks_every_model_the_image_serves(
    docker_client: docker.DockerClient, images: dict[str, str]
) -> None:
    report = smoke_image(images["good"], None, requests=5)
    assert report.models == {MODEL: [VERSION]}
    assert (report.model, report.version) == (MODEL, VERSION)
    assert smoke_containers(docker_client, images["good"]) == []


@pytest.mark.docker
def test_smoke_image_reports_a_server_that_exits_with_its_logs(
    docker_client: docker.DockerClient, images: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(
        SmokeTestFailed, match=r"first grpc_model_status \(half_plus_two\): the container exited with code"
    ):
        smoke_image(images["broken"], MODEL, timeout=60, junit_path=tmp_path / "smoke.xml")
    assert junit_counts(tmp_path / "smoke.xml") == (1, 1, [title(GRPC_MODEL_STATUS, MODEL)])
    failure = ET.parse(tmp_path / "smoke.xml").getroot().find("testsuite/testcase/failure")
    assert failure is not None and failure.text is not None
    log_tail = failure.text.split("container log lines ---\n", 1)[1]
    assert "/nonexistent" in log_tail
    assert smoke_containers(docker_client, images["broken"]) == []


@pytest.mark.docker
def test_smoke_image_of_another_model_is_a_usage_error(
    docker_client: docker.DockerClient, images: dict[str, str]
) -> None:
    with pytest.raises(UsageError, match="has no /models/other"):
        smoke_image(images["good"], "other")
    assert smoke_containers(docker_client, images["good"]) == []


@pytest.mark.docker
def test_an_image_the_engine_lacks_is_a_usage_error(docker_client: docker.DockerClient) -> None:
    absent = f"tfpack-test/absent:{uuid.uuid4().hex[:10]}"
    with pytest.raises(UsageError, match="is not in the local Docker engine"):
        smoke_image(absent, MODEL)
    assert smoke_containers(docker_client, absent) == []


@pytest.mark.docker
def test_ctrl_c_while_the_image_runs_removes_its_container(
    docker_client: docker.DockerClient, images: dict[str, str]
) -> None:
    target = StartedImage(images["good"], MODEL)
    with pytest.raises(KeyboardInterrupt), target.running(SILENT) as endpoints:
        assert endpoints.grpc.startswith("127.0.0.1:") and endpoints.rest is not None
        assert len(smoke_containers(docker_client, images["good"])) == 1
        raise KeyboardInterrupt
    assert smoke_containers(docker_client, images["good"]) == []
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


# --- issue 13's acceptance, on images tfpack built ---------------------------------------------


def _copy_version(served: Served, base_path: Path, version: int) -> Path:
    return Path(shutil.copytree(served.version_dir, base_path / str(version)))


@pytest.fixture(scope="module")
def fleet_image(
    docker_client: docker.DockerClient,
    served: Served,
    signing_keys: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """Two models with two signed versions each and a stable label, built by tfpack build."""
    root = tmp_path_factory.mktemp("fleet-image") / "models"
    for name in (MODEL, "twin"):
        for version in (1, 2):
            sign(_copy_version(served, root / name, version), signing_keys["private"])
    tag = f"tfpack-test/smoke-fleet:{uuid.uuid4().hex[:10]}"
    build_image(root, tag, public_key=signing_keys["public"], version_labels={MODEL: {"stable": 1}})
    yield tag
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(tag, force=True)


@pytest.mark.docker
def test_a_two_model_image_with_two_versions_and_a_stable_label_passes_every_check(
    docker_client: docker.DockerClient, fleet_image: str, tmp_path: Path
) -> None:
    report = smoke_image(fleet_image, None, requests=5, junit_path=tmp_path / "smoke.xml")
    assert report.passed
    assert report.models == {MODEL: [1, 2], "twin": [1, 2]}
    checked = {(check.name, check.subject) for check in report.checks}
    for name in (MODEL, "twin"):
        for version in (1, 2):
            assert ("grpc_predict", f"{name} v{version}") in checked or any(
                c[0] == "grpc_predict" and name in c[1] and str(version) in c[1] for c in checked
            ), sorted(checked)
        for negative in ("unknown_model", "unknown_version", "unknown_signature", "wrong_input_name", "wrong_dtype"):
            assert any(c[0] == f"grpc_{negative}" for c in checked) and any(c[0] == f"rest_{negative}" for c in checked)
    assert any(c[0] == "grpc_label" and "stable" in c[1] for c in checked), sorted(checked)
    assert any(c[0] == "rest_label" and "stable" in c[1] for c in checked), sorted(checked)
    testcases = ET.parse(tmp_path / "smoke.xml").getroot().findall("testsuite/testcase")
    assert len(testcases) == len(report.checks)
    assert smoke_containers(docker_client, fleet_image) == []


@pytest.fixture
def unsigned_image(
    docker_client: docker.DockerClient, served: Served, tmp_path: Path
) -> Iterator[tuple[Path, list[str]]]:
    """(a copy of the served version dir to damage, the tags to remove); build with allow-unsigned."""
    tags: list[str] = []
    yield _copy_version(served, tmp_path / "models" / MODEL, VERSION), tags
    for tag in tags:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)


def _build_unsigned(version_dir: Path, tags: list[str]) -> str:
    tags.append(f"tfpack-test/smoke-damaged:{uuid.uuid4().hex[:10]}")
    build_image(version_dir.parent, tags[-1], allow_unsigned=True)
    return tags[-1]


@pytest.mark.docker
def test_an_image_whose_goldens_no_longer_match_fails_the_predict_checks(
    unsigned_image: tuple[Path, list[str]], tmp_path: Path
) -> None:
    from packager import layout

    version_dir, tags = unsigned_image
    goldens = layout.Goldens.load(version_dir / layout.GOLDENS_FILE)
    shifted = {key: value + 1.0 for key, value in goldens.outputs.items()}
    layout.Goldens(inputs=goldens.inputs, outputs=shifted).save(version_dir / layout.GOLDENS_FILE)
    with pytest.raises(SmokeTestFailed, match=r"grpc_predict"):
        smoke_image(_build_unsigned(version_dir, tags), MODEL, requests=5, report_path=tmp_path / "r.json")
    failed = [c["name"] for c in json.loads((tmp_path / "r.json").read_text())["checks"] if not c["passed"]]
    assert "grpc_predict" in failed and "rest_predict" in failed


@pytest.mark.docker
def test_an_image_whose_model_cannot_load_fails_with_the_servers_load_error(
    unsigned_image: tuple[Path, list[str]], tmp_path: Path
) -> None:
    version_dir, tags = unsigned_image
    for data in (version_dir / "variables").glob("variables.data-*"):
        data.write_bytes(data.read_bytes()[:7])  # a truncated checkpoint: the restore fails
    with pytest.raises(SmokeTestFailed) as failed:
        smoke_image(_build_unsigned(version_dir, tags), MODEL, timeout=120, report_path=tmp_path / "r.json")
    report = (tmp_path / "r.json").read_text()
    # The server's own words about the failed load reach the report, not just "not available",
    # and at once: a baked model that cannot load stops the server instead of being retried.
    assert "Read less bytes than requested" in report, report
    assert "grpc_model_status" in str(failed.value)


@pytest.mark.docker
def test_an_image_that_is_not_available_by_the_deadline_fails_naming_it(fleet_image: str, tmp_path: Path) -> None:
    with pytest.raises(SmokeTestFailed, match=r"deadline|within"):
        smoke_image(fleet_image, MODEL, timeout=0.5, requests=5)


@pytest.mark.docker
def test_sigterm_while_the_image_runs_removes_its_container(
    docker_client: docker.DockerClient, images: dict[str, str]
) -> None:
    """A cancelled CI job sends SIGTERM, not Ctrl-C: the container must go all the same."""
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "packager.cli", "smoke", images["good"], "--model", MODEL],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not smoke_containers(docker_client, images["good"]):
            assert process.poll() is None and time.monotonic() < deadline, "the smoke container never started"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr.decode()
    assert "tfpack: terminated" in stderr.decode()
    assert smoke_containers(docker_client, images["good"]) == []
