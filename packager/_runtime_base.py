"""The embedded runtime base image: Debian bookworm, a Python venv and the serving stack.

No image registry is reachable where tfpack is usually built, so the base is made from nothing:

1. ``debootstrap --variant=minbase`` writes a bookworm root filesystem, cached as a tarball.
2. The tarball is imported as the image ``tfpack-rootfs:KEY``.
3. A wheelhouse for CPython 3.11 / manylinux x86_64 is downloaded on the host (which trusts the
   PyPI proxy's CA; a fresh rootfs does not), also cached.
4. A container of the rootfs image, with the wheelhouse mounted read-only and no network,
   creates ``/opt/tfpack/venv`` and installs the wheelhouse with ``pip install --no-index``; the
   container is committed as ``tfpack-runtime:KEY``. Committing instead of ``COPY``-ing the
   wheelhouse keeps half a gigabyte of wheels out of the image's layers.

KEY is a hash of everything that decides the result (suite, packages, Python version,
requirement pins, install script), so the base is built once per machine and rebuilt only when
one of those changes. tfpack itself is not part of the base, nor of KEY: each model image installs
a wheel packed from the running tfpack (:mod:`packager._runtime_wheel`), from a checkout or a pip
install alike, so neither a code change nor a different install of tfpack forces a base rebuild.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import requests

from packager.errors import ToolError, UsageError
from packager.progress import SILENT, Progress
from packager.signing import MODEL_SIGNING_VERSION

SUITE = "bookworm"
PYTHON_VERSION = "3.11"  # bookworm's python3; the wheelhouse is downloaded for exactly this ABI
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
VENV = "/opt/tfpack/venv"
RUNTIME_REPOSITORY = "tfpack-runtime"
ROOTFS_REPOSITORY = "tfpack-rootfs"
BASE_KEY_LABEL = "dev.tfpack.runtime-base.key"
# Bumped when how the base is made changes in a way its inputs do not show (2: no VOLUME left
# behind by the wheelhouse mount), so that a cached base of the old recipe is not reused.
_RECIPE_REVISION = 2

# The serving stack, pinned to the versions tfpack is tested with on the host. tensorflow-cpu
# instead of tensorflow keeps CUDA out of the image; tensorflow-serving-api would pull the full
# tensorflow back in, so it is installed without its dependencies (it needs only protobuf and
# grpcio, pinned here anyway). model-signing imports pyOpenSSL and certifi without declaring them.
REQUIREMENTS = (
    "tensorflow-cpu==2.21.0",
    "grpcio==1.85.1",
    "grpcio-health-checking==1.85.1",
    "numpy==2.4.6",
    "protobuf==7.36.2",
    f"model-signing=={MODEL_SIGNING_VERSION}",
    "pyopenssl==26.4.0",
    "certifi==2026.10.18",
)
NO_DEPS_REQUIREMENTS = ("tensorflow-serving-api==2.21.0",)

# Every manylinux tag bookworm's glibc (2.36) can load: pip does not infer the older ones.
_WHEEL_PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)

_INSTALL_SCRIPT = f"""set -eu
test "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "{PYTHON_VERSION}"
python3 -m venv {VENV}
{VENV}/bin/pip install --no-index --no-cache-dir --find-links /wheelhouse -r /wheelhouse/requirements.txt
{VENV}/bin/pip install --no-index --no-cache-dir --no-deps --find-links /wheelhouse -r /wheelhouse/no-deps-requirements.txt
{VENV}/bin/python -c 'import tensorflow, tensorflow_serving.apis.prediction_service_pb2_grpc, grpc_health, model_signing, OpenSSL, certifi'
find {VENV} -name __pycache__ -prune -exec rm -rf {{}} +
"""

_INSTALL_TIMEOUT_S = 900


def cache_dir() -> Path:
    """Where rootfs tarballs and wheelhouses are kept: $TFPACK_CACHE_DIR or ~/.cache/tfpack."""
    configured = os.environ.get("TFPACK_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "tfpack"


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def rootfs_key() -> str:
    """Hash of what decides the bootstrapped root filesystem."""
    return _digest(SUITE, "minbase", DEBIAN_PACKAGES)


def wheelhouse_key() -> str:
    """Hash of what decides the wheelhouse."""
    return _digest(PYTHON_VERSION, _WHEEL_PLATFORMS, REQUIREMENTS, NO_DEPS_REQUIREMENTS)


def base_key() -> str:
    """Hash of everything that decides the runtime base image."""
    return _digest(rootfs_key(), wheelhouse_key(), VENV, _INSTALL_SCRIPT, _RECIPE_REVISION)


def runtime_base_tag() -> str:
    """The tag the embedded base for the current requirements has (or will have)."""
    return f"{RUNTIME_REPOSITORY}:{base_key()}"


def debian_mirror(sources_dir: Path = Path("/etc/apt/sources.list.d")) -> str:
    """Return the Debian mirror apt already uses (debootstrap must use one this host reaches)."""
    for sources in sorted(sources_dir.glob("*.sources")):
        stanzas = sources.read_text().split("\n\n")
        for stanza in stanzas:
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.lstrip().startswith("#")
            )
            uris = fields.get("URIs", "").split()
            suites = fields.get("Suites", "").split()
            if uris and SUITE in suites:
                return uris[0]
    for sources in [sources_dir.parent / "sources.list", *sorted(sources_dir.glob("*.list"))]:
        if not sources.is_file():
            continue
        for line in sources.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return next(word for word in words[1:] if not word.startswith("["))
    return "http://deb.debian.org/debian"


def ensure_runtime_base(client: docker.DockerClient, progress: Progress = SILENT) -> str:
    """Return the tag of the embedded runtime base, building whatever is not cached yet.

    Raises:
        UsageError: debootstrap is missing or tfpack does not run as root (debootstrap needs it).
        ToolError: debootstrap, the wheel download or the venv install failed.
    """
    tag = runtime_base_tag()
    if _image_exists(client, tag):
        return tag
    with _build_lock(progress):
        # Another process may have built it while this one waited for the lock.
        if _image_exists(client, tag):
            return tag
        return _build_runtime_base(client, tag, progress)


@contextlib.contextmanager
def _build_lock(progress: Progress) -> Iterator[None]:
    """Serialise base builds on this machine: parallel test runs or CI jobs build it once."""
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".build.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.step("waiting for another tfpack process building the embedded base")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_runtime_base(client: docker.DockerClient, tag: str, progress: Progress) -> str:
    """Install the wheelhouse into a no-network container of the rootfs and commit it as ``tag``."""
    rootfs_image = ensure_rootfs_image(client, progress)
    wheelhouse = _ensure_wheelhouse(progress)
    progress.step(f"installing the serving stack into {VENV} (no network)")
    container = client.containers.create(
        rootfs_image,
        command=["/bin/sh", "-c", _INSTALL_SCRIPT],
        # A bind mount in the host config only: ``volumes=`` would also declare /wheelhouse a
        # VOLUME in the container's config, which the commit would carry into every serving
        # image (an anonymous volume the entrypoint rightly refuses as a run-time mount).
        mounts=[docker.types.Mount("/wheelhouse", str(wheelhouse), type="bind", read_only=True)],
        network_disabled=True,
    )
    try:
        container.start()
        try:
            status = container.wait(timeout=_INSTALL_TIMEOUT_S)
        except requests.exceptions.ConnectionError:
            raise ToolError(
                f"installing the serving stack into the runtime base took over "
                f"{_INSTALL_TIMEOUT_S} s; see 'docker logs {container.short_id}' before rerunning"
            ) from None
        if status.get("StatusCode") != 0:
            tail = container.logs(tail=5).decode(errors="replace").strip().splitlines()
            raise ToolError(
                f"installing the serving stack into the runtime base failed: "
                f"{tail[-1] if tail else 'no output'} (wheelhouse {wheelhouse})"
            )
        repository, _, key = tag.partition(":")
        container.commit(
            repository=repository,
            tag=key,
            changes=[
                f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
                f"LABEL {BASE_KEY_LABEL}={key}",
                'CMD ["python3"]',
            ],
        )
    finally:
        container.remove(force=True)
    return tag


def _image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_rootfs_image(client: docker.DockerClient, progress: Progress) -> str:
    key = rootfs_key()
    tag = f"{ROOTFS_REPOSITORY}:{key}"
    if _image_exists(client, tag):
        return tag
    tarball = cache_dir() / f"rootfs-{SUITE}-{key}.tar"
    if not tarball.is_file():
        _bootstrap_rootfs(tarball, progress)
    progress.step(f"importing {tarball.name} as {tag}")
    client.api.import_image_from_file(str(tarball), repository=ROOTFS_REPOSITORY, tag=key)
    return tag


def _bootstrap_rootfs(tarball: Path, progress: Progress) -> None:
    if shutil.which("debootstrap") is None:
        raise UsageError(
            "building the embedded base needs debootstrap: apt-get install -y debootstrap "
            "(or build with --base tensorflow/serving:2.21.0 where that image can be pulled)"
        )
    if os.geteuid() != 0:
        raise UsageError(
            "building the embedded base runs debootstrap, which needs root: rerun as root once "
            "(the base is cached and reused afterwards)"
        )
    tarball.parent.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=tarball.parent) as work:
        rootfs = Path(work) / "rootfs"
        progress.step(f"bootstrapping Debian {SUITE} (minbase + python3) from {mirror}")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(DEBIAN_PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            what="debootstrap",
            log=tarball.with_suffix(".debootstrap.log"),
        )
        # apt's package lists are stale the moment the image exists; they only add weight.
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        progress.step(f"packing the root filesystem into {tarball}")
        partial = tarball.with_suffix(".tar.partial")
        _run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
            what="tar",
            log=tarball.with_suffix(".tar.log"),
        )
        partial.rename(tarball)


def _ensure_wheelhouse(progress: Progress) -> Path:
    wheelhouse = cache_dir() / f"wheelhouse-cp311-{wheelhouse_key()}"
    complete = wheelhouse / ".complete"
    if complete.is_file():
        return wheelhouse
    wheelhouse.mkdir(parents=True, exist_ok=True)
    (wheelhouse / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    (wheelhouse / "no-deps-requirements.txt").write_text("\n".join(NO_DEPS_REQUIREMENTS) + "\n")
    target = [
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        "--abi",
        "cp" + PYTHON_VERSION.replace(".", ""),
        *(option for platform in _WHEEL_PLATFORMS for option in ("--platform", platform)),
    ]
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheelhouse)]
    progress.step(f"downloading the serving stack's wheels for CPython {PYTHON_VERSION}")
    _run([*download, *target, *REQUIREMENTS], what="pip download", log=wheelhouse / "download.log")
    _run(
        [*download, *target, "--no-deps", *NO_DEPS_REQUIREMENTS],
        what="pip download",
        log=wheelhouse / "download-no-deps.log",
    )
    complete.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
    return wheelhouse


def _run(command: list[str], *, what: str, log: Path) -> None:
    """Run ``command``, keep its output in ``log``, raise ToolError naming the log on failure."""
    with log.open("wb") as sink:
        result = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        raise ToolError(
            f"{what} failed (exit {result.returncode}): {lines[-1] if lines else 'no output'} (full log: {log})"
        )
