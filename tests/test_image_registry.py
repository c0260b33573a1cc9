"""`tfpack build --push` against a real registry: the digest it prints is the one the registry
serves, the image pulled by that digest is the image built (same ID), and it passes `tfpack smoke`.

The registry is Debian's docker-registry (`make setup` installs it) on a free loopback port with
filesystem storage in a temp dir; Docker talks plain HTTP to a loopback registry without being
told to. Every image pushed, pulled or built here is removed again.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import requests
from factories.sources import write_frozen_classifier

from packager.errors import UsageError
from packager.image import build_image
from packager.signing import sign

MODEL = "classifier"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry serving on a free loopback port: its HOST:PORT."""
    registry = shutil.which("docker-registry")
    if registry is None:
        pytest.fail("no local registry: 'make setup' installs Debian's docker-registry")
    directory = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{_free_port()}"
    config = directory / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {directory / 'data'}\nhttp:\n  addr: {address}\n"
    )
    with (directory / "registry.log").open("wb") as log:
        process = subprocess.Popen([registry, "serve", str(config)], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if requests.get(f"http://{address}/v2/", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"docker-registry did not start: {(directory / 'registry.log').read_text()}")
                time.sleep(0.2)
            yield address
        finally:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory, signing_keys: dict[str, Path]) -> Path:
    """models/classifier/1: a converted model (goldens for the smoke test), signed."""
    from packager.convert import ConvertOptions, convert

    root = tmp_path_factory.mktemp("pushed")
    source = write_frozen_classifier(root / "classifier.pb")
    version_dir = convert(source, ConvertOptions(name=MODEL, output_dir=root / "models")).version_dir
    sign(version_dir, signing_keys["private"])
    return version_dir.parent


def _registry_digest(registry: str, repository: str, reference: str) -> str | None:
    """The digest the registry serves for ``repository:reference`` (None: not there)."""
    reply = requests.head(
        f"http://{registry}/v2/{repository}/manifests/{reference}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        timeout=30,
    )
    return reply.headers["Docker-Content-Digest"] if reply.status_code == 200 else None


@pytest.mark.docker
def test_push_prints_the_digest_and_the_image_pulled_by_it_passes_smoke(
    docker_client: docker.DockerClient,
    classifier: Path,
    signing_keys: dict[str, Path],
    local_registry: str,
    image_tags: list[str],
    tfpack_cli,
) -> None:
    repository = f"{local_registry}/tfpack-test/pushed"
    version = uuid.uuid4().hex[:10]
    tag = f"{repository}:{version}"
    image_tags.append(tag)
    build = ("build", classifier, "--tag", tag, "--public-key", signing_keys["public"], "--push")

    built = tfpack_cli(*build, "--json")
    assert built.exit_code == 0, built.stderr
    result = json.loads(built.stdout)
    assert result["pushed"] is True and result["repo_digest"].startswith(f"{repository}@sha256:")
    digest = result["repo_digest"].split("@", 1)[1]
    assert _registry_digest(local_registry, "tfpack-test/pushed", version) == digest
    assert result["image_id"] == docker_client.images.get(tag).id

    # The human form prints the digest too; the same inputs push the same image, so the same digest.
    again = tfpack_cli(*build)
    assert again.exit_code == 0, again.stderr
    assert f"pushed {result['repo_digest']}" in again.stdout.splitlines()

    # Gone from the engine, then pulled back by digest: the very image that was built.
    docker_client.images.remove(tag, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(result["image_id"])
    image_tags.append(result["repo_digest"])
    pulled = docker_client.images.pull(result["repo_digest"])
    assert pulled.id == result["image_id"]
    assert pulled.labels["dev.tfpack.models"] == MODEL

    smoke = tfpack_cli("smoke", result["repo_digest"], "--model", MODEL, "--json")
    assert smoke.exit_code == 0, smoke.stdout + smoke.stderr
    assert json.loads(smoke.stdout)["passed"] is True


@pytest.mark.docker
def test_push_to_an_unreachable_registry_is_a_usage_error(
    classifier: Path, signing_keys: dict[str, Path], image_tags: list[str]
) -> None:
    tag = f"127.0.0.1:{_free_port()}/tfpack-test/unreachable:{uuid.uuid4().hex[:10]}"
    image_tags.append(tag)
    with pytest.raises(UsageError, match=r"push of .* failed"):
        build_image(classifier, tag, public_key=signing_keys["public"], push=True)


@pytest.mark.docker
def test_k8s_pins_the_digest_of_a_pushed_tag_and_refuses_one_it_cannot_pin(
    docker_client: docker.DockerClient,
    classifier: Path,
    signing_keys: dict[str, Path],
    local_registry: str,
    image_tags: list[str],
    tfpack_cli,
    tmp_path: Path,
) -> None:
    repository = f"{local_registry}/tfpack-test/deployed"
    version = uuid.uuid4().hex[:10]
    tag = f"{repository}:{version}"
    image_tags.append(tag)
    build = ("build", classifier, "--tag", tag, "--public-key", signing_keys["public"], "--json")

    def k8s(image: str, name: str, *options: str):  # type: ignore[no-untyped-def]
        return tfpack_cli("k8s", "--image", image, "--model", MODEL, "--output-dir", tmp_path / name, *options)

    assert tfpack_cli(*build).exit_code == 0
    # Built here, never pushed: no digest a cluster could pull, so refused (nothing written)...
    never_pushed = k8s(tag, "never-pushed")
    assert never_pushed.exit_code == 2
    assert "never pushed" in never_pushed.stderr and "--allow-tag" in never_pushed.stderr
    assert not (tmp_path / "never-pushed").exists()
    # ...unless the tag is allowed as it is.
    allowed = json.loads(k8s(tag, "allowed", "--allow-tag", "--json").stdout)
    assert (allowed["image"], allowed["pinned"]) == (tag, False)

    pushed = json.loads(tfpack_cli(*build, "--push").stdout)["repo_digest"]
    image_tags.append(pushed)
    held = json.loads(k8s(tag, "held", "--json").stdout)
    assert (held["image"], held["pinned"]) == (pushed, True)
    assert pushed in (tmp_path / "held" / "base" / "deployment.yaml").read_text()

    # Not held by the engine: the registry's digest for the tag, pulled to read its labels.
    docker_client.images.remove(tag, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(pushed)
    from_registry = json.loads(k8s(tag, "from-registry", "--json").stdout)
    assert from_registry["image"] == pushed
    assert docker_client.images.get(pushed).labels["dev.tfpack.models"] == MODEL

    # A tag the registry does not have cannot be pinned.
    missing = k8s(f"{repository}:no-such-tag", "missing")
    assert missing.exit_code == 2 and "cannot resolve --image" in missing.stderr, missing.stderr
    assert len([line for line in missing.stderr.splitlines() if line.startswith("tfpack: error:")]) == 1
