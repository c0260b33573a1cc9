"""The serving base: the image ``tfpack build`` assembles a model image's own layers on.

Those layers are files only (:mod:`packager.image`): tfpack's code under /opt/tfpack/lib,
/etc/tfpack, the models. What they need below them cannot be written as files alone:

- a Python venv at /opt/tfpack/venv that can run the verifier (and, embedded, the model server);
- the user and group 10001 "tfpack" the server runs as;
- ``tfpack.pth`` in that venv's site-packages, naming /opt/tfpack/lib, so the venv imports tfpack.

The embedded runtime base holds them all once it is built by a tfpack that puts them there (see
:mod:`packager._runtime_base`); then it is the serving base as it is. Any other base
(tensorflow/serving, or an embedded base built before) gets them from tfpack's Dockerfile, built
with ``docker build`` once and cached as ``tfpack-serving-base:KEY``, KEY a hash of the base
image's ID, the Dockerfile, the verifier requirements and the build arguments: a new base, or a
tfpack whose recipe changed, builds a new one; anything else reuses it.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import tempfile
from pathlib import Path

import docker

import packager
from packager import _runtime_base
from packager.docker_engine import (
    ImageNotFound,
    PathNotFound,
    build_from_context,
    create_container,
    get_archive,
    inspect_image,
    remove_container,
)
from packager.errors import ToolError
from packager.progress import Progress
from packager.signing import MODEL_SIGNING_VERSION

REPOSITORY = "tfpack-serving-base"
KEY_LABEL = "dev.tfpack.serving-base.key"
CODE_DIR = "/opt/tfpack/lib"  # where the code layer puts tfpack's packages
SERVER_USER = "10001:10001"
# Where the embedded runtime base keeps tfpack.pth (tensorflow/serving's venv may have another Python).
EMBEDDED_PTH = f"{_runtime_base.VENV}/lib/python{_runtime_base.PYTHON_VERSION}/site-packages/tfpack.pth"

# What the entrypoint needs where the base has no Python of its own (tensorflow/serving):
# packager.layout's trust check, nothing of TensorFlow.
VERIFIER_REQUIREMENTS = (
    f"model-signing=={MODEL_SIGNING_VERSION}",
    "pyopenssl>=24,<27",
    "certifi>=2024.2.2",
    "cryptography>=43",
    "numpy>=1.26,<3",
)

# Package data: in a checkout packager/_assets/Dockerfile links to the top-level Dockerfile; a wheel
# carries a copy (see pyproject.toml's package-data).
DOCKERFILE = Path(packager.__file__).resolve().parent / "_assets" / "Dockerfile"
_PROBE_LABEL = "dev.tfpack.probe"


def ensure_serving_base(
    client: docker.DockerClient,
    base: str,
    *,
    model_server_path: str | None,
    building_for: str,
    progress: Progress,
) -> str:
    """Return the serving base for ``base``: ``base`` itself when it is one, else the cached build.

    Args:
        client: The engine holding ``base``.
        base: The base image (the embedded runtime's tag, or a TF Serving image) present locally.
        model_server_path: The server the base must already have (tensorflow_model_server), or
            None when the code layer brings it (tfpack-model-server): then a base that has the
            venv, the user and tfpack.pth is used as it is.
        building_for: The model image's tag, which a failing build names.
        progress: Receives the steps of a build.

    Raises:
        ToolError: The Dockerfile is missing or a step of its build failed (exit 2).
        UsageError: The engine refused the build.
    """
    base_id = inspect_image(client, base)["Id"]
    if model_server_path is None and _has_serving_setup(client, base):
        return base
    if not DOCKERFILE.is_file():
        raise ToolError(f"tfpack's Dockerfile is missing from {DOCKERFILE.parent}: reinstall tfpack")
    dockerfile = DOCKERFILE.read_bytes()
    buildargs = {"BASE": base, "MODEL_SERVER_PATH": model_server_path or ""}
    key = serving_base_key(base_id, dockerfile, buildargs)
    tag = f"{REPOSITORY}:{key}"
    try:
        inspect_image(client, tag)
        return tag
    except ImageNotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="tfpack-serving-base-") as work:
        context = Path(work)
        shutil.copyfile(DOCKERFILE, context / "Dockerfile")
        (context / "verifier-requirements.txt").write_text("\n".join(VERIFIER_REQUIREMENTS) + "\n")
        build_from_context(
            client,
            context,
            tag=tag,
            buildargs=buildargs,
            labels={KEY_LABEL: key},
            progress=progress,
            building_for=building_for,
        )
    return tag


def serving_base_key(base_id: str, dockerfile: bytes, buildargs: dict[str, str]) -> str:
    """Hash of everything that decides a serving base built from the Dockerfile."""
    parts = (base_id, hashlib.sha256(dockerfile).hexdigest(), VERIFIER_REQUIREMENTS, sorted(buildargs.items()))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _has_serving_setup(client: docker.DockerClient, image: str) -> bool:
    """Whether ``image`` already has the user 10001 and a tfpack.pth naming the code dir."""
    container = create_container(client, image, loopback_ports=(), labels={_PROBE_LABEL: "serving-base"})
    try:
        pth = _read_file(container, EMBEDDED_PTH)
        passwd = _read_file(container, "/etc/passwd")
    finally:
        remove_container(container)
    if pth is None or passwd is None:
        return False
    users = [line.split(":") for line in passwd.decode(errors="replace").splitlines()]
    has_user = any(len(fields) > 3 and fields[2:4] == ["10001", "10001"] for fields in users)
    return has_user and CODE_DIR in pth.decode(errors="replace").split()


def _read_file(container: docker.models.containers.Container, path: str) -> bytes | None:
    """The content of the file at ``path`` in a created container, or None where there is none."""
    try:
        archive = get_archive(container, path)
    except PathNotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = next(iter(tar), None)
        handle = tar.extractfile(member) if member is not None and member.isfile() else None
        return handle.read() if handle is not None else None
