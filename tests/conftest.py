"""Shared fixtures: the tfpack CLI (in-process and as a real process), keys, Docker, shared data."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_TESTDATA = REPO.parent / "shared" / "testdata" / "tf_serving"
TFPACK = Path(sys.executable).with_name("tfpack")


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_tfpack_in_process(*args: str) -> CliResult:
    """Run the tfpack CLI in this process (no TensorFlow start-up per call)."""
    from packager.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="tfpack")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


def run_tfpack_process(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> CliResult:
    """Run the installed tfpack console script as a real process."""
    completed = subprocess.run(
        [str(TFPACK), *[str(a) for a in args]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


@pytest.fixture(scope="session")
def tfpack_cli():
    return run_tfpack_in_process


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two EC P-256 key pairs (PEM): 'private'/'public' and 'other_private'/'other_public'."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = tmp_path_factory.mktemp("keys")
    paths: dict[str, Path] = {}
    for prefix in ("", "other_"):
        key = ec.generate_private_key(ec.SECP256R1())
        private = directory / f"{prefix}private.pem"
        public = directory / f"{prefix}public.pem"
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        paths[f"{prefix}private"] = private
        paths[f"{prefix}public"] = public
    return paths


@pytest.fixture(scope="session")
def docker_client():
    """A client of the real Docker engine `make setup` starts; an error (not a skip) without one."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # docker raises DockerException subclasses and requests errors
        pytest.fail(f"no Docker engine answers ({exc}); run `make setup` (as root) first")
    yield client
    client.close()


@pytest.fixture(scope="module")
def image_tags(docker_client):  # type: ignore[no-untyped-def]
    """Tags a module's tests create (see new_image_tag); all removed when the module ends."""
    import docker

    tags: list[str] = []
    yield tags
    for tag in reversed(tags):
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)


def new_image_tag(tags: list[str], name: str) -> str:
    """A fresh ``tfpack-test/NAME:RANDOM`` tag, recorded in ``tags`` for removal."""
    import uuid

    tag = f"tfpack-test/{name}:{uuid.uuid4().hex[:10]}"
    tags.append(tag)
    return tag


@pytest.fixture(scope="session")
def shared_testdata() -> Path:
    """TF Serving's own test models in ../shared/testdata (absent in a user's fresh clone)."""
    if not SHARED_TESTDATA.is_dir():
        pytest.skip(f"conformance data absent: {SHARED_TESTDATA} (only CI and developers have ../shared)")
    return SHARED_TESTDATA


# Fixtures that start or reach a Docker engine or a model server: a `fast` test must use none.
_SLOW_FIXTURES = frozenset({"docker_client", "image_tags", "served", "fleet"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test marked `fast` that needs Docker or a model server: make test-fast must not."""
    wrong = [
        item.nodeid
        for item in items
        if item.get_closest_marker("fast")
        and (item.get_closest_marker("docker") or _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())))
    ]
    if wrong:
        raise pytest.UsageError(f"tests marked fast need Docker or a model server: {', '.join(wrong[:5])}")
