"""Tools tfpack installs for itself under its cache dir, outside the user's environment.

Some converters declare requirements that conflict with the TensorFlow tfpack runs (tensorflowjs
pins tensorflow-decision-forests, onnx2tf pins an older TensorFlow, numpy and protobuf), although
the code paths tfpack uses need none of the conflicting packages. Such a package is installed
alone — ``pip install --no-deps --require-hashes`` of one pinned wheel — into
``CACHE/DIRECTORY/VERSION`` and put on ``sys.path`` only by the code that uses it; what it does
import comes from tfpack's extras.

Every install here (pip's and the Node runtime's) happens on first use, under a lock, into a temp
dir renamed into place: a concurrent or interrupted install never leaves a half-populated
environment that later runs trust.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from packager._runtime_base import cache_dir
from packager.errors import ToolError, shorten
from packager.progress import Progress

INSTALL_TIMEOUT_S = 900
# Written last into an install: a directory without it (an install from before hashes were
# pinned, or one another tool touched) is not trusted and is installed again.
STAMP_FILE = "tfpack-install.json"

__all__ = ["PinnedWheel", "ensure_wheel", "install_lock", "run_installer", "staging_dir"]


@dataclass(frozen=True)
class PinnedWheel:
    """One pure-Python wheel tfpack installs without its dependencies.

    Attributes:
        distribution: the name on PyPI.
        version: the exact version.
        sha256: of the ``py3-none-any`` wheel of that version (pip refuses any other file).
        module: the top-level package it installs (what proves the install is there).
        directory: the cache subdirectory it goes into, as ``CACHE/DIRECTORY/VERSION``.
    """

    distribution: str
    version: str
    sha256: str
    module: str
    directory: str

    @property
    def requirement(self) -> str:
        """The requirements-file line pip installs, with the pinned hash."""
        return f"{self.distribution}=={self.version} --hash=sha256:{self.sha256}"

    def install_dir(self) -> Path:
        """Where this wheel is (or will be) installed."""
        return cache_dir() / self.directory / self.version


def ensure_wheel(wheel: PinnedWheel, progress: Progress) -> Path:
    """Return the directory ``wheel`` is installed in, installing it there on first use.

    The directory is not added to ``sys.path``: the caller decides where its import may happen.

    Raises:
        ToolError: pip cannot install it (index unreachable, hash mismatch) or tfpack's cache dir
            cannot be written (the message says what to check).
    """
    target = wheel.install_dir()
    if _installed(wheel, target):
        return target
    with install_lock(target.parent):
        if _installed(wheel, target):  # another process installed it while this one waited
            return target
        progress.step(f"installing {wheel.distribution}=={wheel.version} without its dependencies into {target} (once)")
        with staging_dir(target) as staging:
            requirements = staging / "requirements.txt"
            requirements.write_text(wheel.requirement + "\n")
            run_installer(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-deps",
                    "--no-compile",
                    # A hash pins the exact wheel: a changed or substituted file on the index is
                    # refused rather than run in the same process as the user's model.
                    "--require-hashes",
                    "--only-binary",
                    ":all:",
                    "--target",
                    str(staging),
                    "--requirement",
                    str(requirements),
                ],
                staging,
                f"pip install --no-deps {wheel.distribution}=={wheel.version}",
                "check that pip works in this Python and PyPI is reachable",
            )
            requirements.unlink()
            record = _record_file(wheel, staging)
            stamp = {"requirement": wheel.requirement, "record_sha256": _digest(record) if record else None}
            (staging / STAMP_FILE).write_text(json.dumps(stamp) + "\n")
    return target


def _installed(wheel: PinnedWheel, target: Path) -> bool:
    """Whether ``target`` holds exactly what pip installed from the pinned wheel: every file the
    wheel's RECORD lists with the digest it lists, and no other Python file in its packages.

    A deleted, changed or added file (a disk error, another tool, someone's edit) makes it
    installed again rather than imported: the code runs in the same process as the user's model.
    """
    try:
        stamp = json.loads((target / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not (isinstance(stamp, dict) and stamp.get("requirement") == wheel.requirement):
        return False
    record = _record_file(wheel, target)
    if record is None or stamp.get("record_sha256") != _digest(record):
        return False
    try:
        rows = list(csv.reader(record.read_text().splitlines()))
    except (OSError, csv.Error, UnicodeDecodeError):
        return False
    listed: set[Path] = set()
    packages: set[Path] = set()
    for row in rows:
        if len(row) < 2 or row[0].startswith("..") or Path(row[0]).is_absolute():
            continue  # scripts pip puts outside the target (bin/), which tfpack never runs
        file = target / row[0]
        listed.add(file)
        if not row[1]:
            continue  # RECORD itself and pip's markers (INSTALLER, REQUESTED) carry no digest
        algorithm, _, expected = row[1].partition("=")
        if algorithm != "sha256" or not file.is_file() or _digest(file) != f"sha256={expected}":
            return False
        top = Path(row[0]).parts[0]
        if not top.endswith(".dist-info"):
            packages.add(target / top)
    if (target / wheel.module / "__init__.py") not in listed:
        return False
    return not any(extra not in listed for package in packages if package.is_dir() for extra in package.rglob("*.py"))


def _record_file(wheel: PinnedWheel, target: Path) -> Path | None:
    record = target / f"{wheel.distribution.replace('-', '_')}-{wheel.version}.dist-info" / "RECORD"
    return record if record.is_file() else None


def _digest(file: Path) -> str:
    """``sha256=`` and the urlsafe base64 digest without padding, as a wheel's RECORD writes it."""
    try:
        digest = hashlib.sha256(file.read_bytes()).digest()
    except OSError:
        return "unreadable"  # matches no digest: the install is made again
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def run_installer(command: list[str], cwd: Path, what: str, hint: str) -> None:
    """Run an installer (pip, npm) quietly; on failure raise one line with its first error.

    Raises:
        ToolError: it could not start, timed out or failed (``what`` failed: cause; ``hint``).
    """
    try:
        result = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolError(f"{what} failed: {shorten(str(exc))}; {hint}") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        # npm ends with the path of its debug log; the cause is its first error line. pip's
        # cause is its last line (a hash mismatch lists the hashes after it: take its ERROR line).
        errors = [
            line
            for line in lines
            if (line.startswith("npm error") and "complete log" not in line) or line.startswith("ERROR:")
        ]
        cause = errors[0] if errors else lines[-1] if lines else "no output"
        raise ToolError(f"{what} failed: {shorten(cause)}; {hint}")


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A temp dir beside ``target``, renamed to it when the block succeeds, removed otherwise.

    Raises:
        ToolError: tfpack's cache dir cannot be written (the message names it).
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    except OSError as exc:
        raise _unwritable(target.parent, exc) from None
    try:
        yield staging
        shutil.rmtree(target, ignore_errors=True)  # an older, incomplete or stale install
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def install_lock(directory: Path) -> Iterator[None]:
    """Serialise installs on this machine: parallel test runs or CI jobs install once.

    Raises:
        ToolError: tfpack's cache dir cannot be written (the message names it).
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(directory / ".install.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise _unwritable(directory, exc) from None
    with os.fdopen(descriptor, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _unwritable(directory: Path, exc: OSError) -> ToolError:
    return ToolError(
        f"cannot write tfpack's cache dir {directory}: {exc.strerror or exc} (set TFPACK_CACHE_DIR to a writable dir)"
    )
