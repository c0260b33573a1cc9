"""The running tfpack as files: what a serving image runs, and the same packed as a wheel.

A pip-installed tfpack has no source tree to build a wheel from, and a build host may have no
network for pip's isolated build backend; so tfpack is taken from what is already here: the
files of its top-level packages (``packager`` and ``serving``, including the Dockerfile and k8s
templates they carry as package data) and the installed distribution's metadata (METADATA,
entry_points.txt). One path serves both installs: from a wheel install the package dirs are
site-packages' copies; from a source checkout (an editable install) they are the checkout's dirs,
whose ``_assets`` symlinks are followed to the top-level Dockerfile and k8s/.

:func:`runtime_files` is the one list of those files: ``tfpack build`` writes them into the
serving image's code layer (:mod:`packager.image`), so the image runs exactly the tfpack that
built it, and :func:`build_runtime_wheel` packs them into a wheel. Both are sorted and stamped
with fixed times and modes, so the same tfpack gives the same bytes.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packager.errors import ToolError

DISTRIBUTION = "tfpack"
PACKAGES = ("packager", "serving")
# The earliest time a zip entry can carry: no build time leaks into the wheel's bytes.
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_COMPRESS_LEVEL = 6
# Installed-metadata files the wheel carries; RECORD, INSTALLER, REQUESTED and direct_url.json
# describe one installation, not the distribution, and are left behind.
_REQUIRED_METADATA = ("METADATA", "entry_points.txt")
# An .egg-info calls its METADATA PKG-INFO (same format).
_METADATA_ALIASES = {"METADATA": "PKG-INFO"}
_OPTIONAL_METADATA = ("top_level.txt",)
_WHEEL_FILE = "Wheel-Version: 1.0\nGenerator: tfpack\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


@dataclass(frozen=True)
class RuntimeFile:
    """One file of the running tfpack, as an installer lays it out in site-packages."""

    name: str  # relative to site-packages, "/"-separated: packager/image.py, tfpack-0.1.0.dist-info/METADATA
    data: bytes
    mode: int  # 0o755 for an executable file, 0o644 otherwise


def runtime_files() -> list[RuntimeFile]:
    """Every file of the running tfpack as installed: its packages, then its .dist-info, sorted.

    The packages' files (``packager`` and ``serving`` with their package data, no bytecode) and
    the installed distribution's metadata (METADATA, entry_points.txt, licenses, a WHEEL file);
    not RECORD, which describes one installation.

    Raises:
        ToolError: tfpack's distribution metadata or one of its packages cannot be found or read.
    """
    distribution = _installed_distribution()
    dist_info = _dist_info_name(distribution)
    try:
        files = [RuntimeFile(arcname, path.read_bytes(), _mode(path)) for arcname, path in _package_files()]
        files += [RuntimeFile(f"{dist_info}/{file}", data, 0o644) for file, data in _metadata_files(distribution)]
    except OSError as exc:
        raise ToolError(f"reading the running tfpack's files failed: {exc}") from None
    files.append(RuntimeFile(f"{dist_info}/WHEEL", _WHEEL_FILE.encode(), 0o644))
    return files


def build_runtime_wheel(wheel_dir: Path) -> Path:
    """Pack the running tfpack into ``wheel_dir/tfpack-VERSION-py3-none-any.whl``; return its path.

    The same installed tfpack always gives the same bytes. The file is written beside its final
    name and renamed into place, so ``wheel_dir`` never holds half a wheel.

    Raises:
        ToolError: tfpack's distribution metadata or one of its packages cannot be found, or a
            file cannot be read or written.
    """
    distribution = _installed_distribution()
    dist_info = _dist_info_name(distribution)
    entries = [(file.name, file.data, file.mode) for file in runtime_files()]
    try:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        wheel = wheel_dir / f"{dist_info.removesuffix('.dist-info')}-py3-none-any.whl"
        partial = wheel.with_name(wheel.name + ".partial")
        with zipfile.ZipFile(partial, "w") as archive:
            for arcname, data, mode in entries:
                _write_entry(archive, arcname, data, mode)
            _write_entry(archive, f"{dist_info}/RECORD", _record(entries, f"{dist_info}/RECORD"), 0o644)
        partial.replace(wheel)
    except OSError as exc:
        raise ToolError(f"packing tfpack into a wheel for the image failed: {exc}") from None
    return wheel


def _dist_info_name(distribution: importlib.metadata.Distribution) -> str:
    """``NAME-VERSION.dist-info`` with the name normalised as wheels spell it."""
    name = re.sub(r"[-_.]+", "_", distribution.metadata["Name"]).lower()
    return f"{name}-{distribution.version}.dist-info"


def _installed_distribution() -> importlib.metadata.Distribution:
    """The tfpack distribution pip installed (a .dist-info), before any other one on sys.path.

    A checkout's tfpack.egg-info, left behind by in-tree builds and possibly stale, is found first
    when the checkout is the working directory of ``python -m``; it is only used when nothing else
    describes tfpack.

    Raises:
        ToolError: no tfpack distribution is installed.
    """
    found = list(importlib.metadata.distributions(name=DISTRIBUTION))
    if not found:
        raise ToolError(
            f"no installed {DISTRIBUTION} distribution to pack into the image: install tfpack "
            "(pip install tfpack, or pip install -e . in a checkout)"
        )
    installed = [distribution for distribution in found if distribution.read_text("METADATA") is not None]
    return (installed or found)[0]


def _package_files() -> list[tuple[str, Path]]:
    """(name in the wheel, file) for every file of tfpack's packages, sorted; no bytecode."""
    files: list[tuple[str, Path]] = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        # The directory of the package's own __init__.py: the code that runs. (Both packages are
        # regular packages, so no other directory of the same name on sys.path can merge into them.)
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        if origin is not None and origin.name == "__init__.py" and origin.is_file():
            root = origin.parent
        else:
            # An editable install made while serving/ was a namespace package still maps it as
            # one: the portion holding the __init__.py is the package.
            portions = list(spec.submodule_search_locations or []) if spec is not None else []
            regular = [Path(p) for p in portions if (Path(p) / "__init__.py").is_file()]
            if len(regular) != 1:
                raise ToolError(f"tfpack's package {package!r} is not importable as a directory: reinstall tfpack")
            root = regular[0]
        # followlinks: in a checkout packager/_assets links to the top-level Dockerfile and k8s/.
        for directory, subdirs, names in os.walk(root, followlinks=True):
            subdirs[:] = [d for d in subdirs if not _is_build_debris(d)]
            for file_name in names:
                if not _is_build_debris(file_name):
                    path = Path(directory) / file_name
                    files.append((f"{package}/{path.relative_to(root).as_posix()}", path))
    return sorted(files)


def _is_build_debris(name: str) -> bool:
    """Bytecode caches and hidden files (editor swap files, tool caches) are no part of tfpack."""
    return name == "__pycache__" or name.startswith(".") or name.endswith((".pyc", ".pyo"))


def _metadata_files(distribution: importlib.metadata.Distribution) -> list[tuple[str, bytes]]:
    """(name inside .dist-info, bytes) of the installed metadata the wheel carries, sorted."""
    files: list[tuple[str, bytes]] = []
    for file_name in (*_REQUIRED_METADATA, *_OPTIONAL_METADATA):
        text = distribution.read_text(file_name)
        if text is None and file_name in _METADATA_ALIASES:
            text = distribution.read_text(_METADATA_ALIASES[file_name])
        if text is None:
            if file_name in _REQUIRED_METADATA:
                raise ToolError(
                    f"tfpack's installed metadata has no {file_name}, which the image needs: reinstall tfpack"
                )
            continue
        files.append((file_name, text.encode()))
    for path in distribution.files or []:
        # License files (PEP 639) sit in .dist-info/licenses/ of both wheel and editable installs.
        if len(path.parts) > 2 and path.parts[0].endswith(".dist-info") and path.parts[1] == "licenses":
            files.append(("/".join(path.parts[1:]), path.read_binary()))
    return sorted(files)


def _mode(path: Path) -> int:
    """0755 for an executable file, 0644 otherwise: nothing of the host's umask reaches the wheel."""
    return 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644


def _write_entry(archive: zipfile.ZipFile, arcname: str, data: bytes, mode: int) -> None:
    info = zipfile.ZipInfo(arcname, date_time=_FIXED_TIME)
    info.create_system = 3  # Unix, so that installers apply external_attr's mode
    info.external_attr = (stat.S_IFREG | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data, compresslevel=_COMPRESS_LEVEL)


def _record(entries: list[tuple[str, bytes, int]], record_name: str) -> bytes:
    """The wheel's RECORD: every entry's urlsafe-base64 sha256 and size, then RECORD itself."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    for arcname, data, _ in entries:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([arcname, f"sha256={digest}", str(len(data))])
    writer.writerow([record_name, "", ""])
    return text.getvalue().encode()
