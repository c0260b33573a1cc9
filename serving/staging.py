"""Copying the served version dirs out of a models claim, and the rule both sides of the copy keep.

An image built with ``--models-from-volume`` never serves from the claim itself: its verifier
(``serving.verify --stage-from``, a Kubernetes initContainer) copies each *served* version dir
``CLAIM/NAME/N`` into ``/models/NAME/N`` (an emptyDir only the pod can write), then verifies the
copy, and the model server mounts that copy read-only. What the claim holds afterwards, or what
else it holds (other models, other versions), changes nothing the pod serves.

A version dir holds only directories and regular files, on the claim and in ``/models``
(:func:`unservable_entries`): a symlink could point at something other than what was verified, and
a FIFO, socket or device is no model file. The copy never follows a link, even one that appears
after the check: every entry is opened relative to its parent's descriptor with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from packager.errors import UsageError, VerificationError
from packager.layout import is_version_name

_CHUNK = 1 << 20
_FILE_MODE = 0o644
_DIR_MODE = 0o755
_READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
# O_NONBLOCK: opening a FIFO put in place of a checked file must fail the copy, not hang it.
_READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
_WRITE_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


def _kind(mode: int) -> str | None:
    """What an entry is, in words, when it is neither a directory nor a regular file."""
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file or directory"


def _refusal(path: Path, kind: str) -> str:
    return f"{path} is {kind}: model and version dirs hold only directories and regular files"


def unservable_entries(root: Path) -> list[str]:
    """One line per entry at any depth under ``root`` that is not a directory or a regular file.

    Entries are examined with lstat and links are never followed, so a link to a directory is
    named, not walked into. ``root`` itself is examined too; a missing ``root`` has none.
    """
    try:
        kind = _kind(root.lstat().st_mode)
    except FileNotFoundError:
        return []
    if kind is not None:
        return [_refusal(root, kind)]
    problems: list[str] = []
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs.sort()
        for name in sorted([*subdirs, *files]):
            path = Path(directory) / name
            try:
                kind = _kind(path.lstat().st_mode)
            except FileNotFoundError:
                continue  # gone meanwhile: nothing left there to serve
            if kind is not None:
                problems.append(_refusal(path, kind))
    return problems


def stage_versions(claim: Path, models_root: Path, models: Mapping[str, Sequence[int]]) -> list[Path]:
    """Copy each served ``claim/NAME/N`` into ``models_root/NAME/N``; return the copies, in order.

    Only the served versions are read: nothing else on the claim is copied or even opened. Each
    copy holds the source's directories (0755) and regular files (0644), owned by whoever runs
    this; nothing else is copied (no owners, times, links). When anything fails, what was copied
    is removed again, so a retry starts from an empty ``models_root``.

    Args:
        claim: where the claim is mounted (read-only).
        models_root: the empty, writable dir the server will mount read-only.
        models: every served model with every served version (serving.json's).

    Raises:
        VerificationError: a served version is missing from the claim, named twice ("1" and
            "01"), or holds (or is) a symlink, FIFO, socket or device, or changed while it was
            copied; every offender before the copy is named, on one line.
        UsageError: a copy cannot be written (no room in ``models_root``, say).
    """
    sources, problems = _served_sources(claim, models)
    try:
        for source in sources.values():
            problems += unservable_entries(source)
        if problems:
            raise VerificationError(" | ".join(problems))
        copies: list[Path] = []
        try:
            for (name, version), source in sources.items():
                target = models_root / name / str(version)
                _make_dir(models_root / name, exist_ok=True)
                _copy_version(claim, source, target)
                copies.append(target)
        except BaseException:
            remove_staged(models_root, models)
            raise
    # What a hostile or changing claim can still raise past the named checks: an entry gone
    # between listing and stat, a tree nested deeper than Python recurses. Both refuse (exit 3).
    except RecursionError:
        raise VerificationError(f"{claim} holds a version dir nested too deep to be a model: refusing it") from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise VerificationError(
            f"the claim changed or cannot be read while it was checked or copied: {exc.strerror or exc}{where}"
        ) from None
    return copies


def remove_staged(models_root: Path, models: Mapping[str, Sequence[int]]) -> None:
    """Remove what :func:`stage_versions` copies (``models_root/NAME`` of every model), as far as
    it can: a dir that cannot be removed is left for the retry's emptiness check to name."""
    for name in models:
        shutil.rmtree(models_root / name, ignore_errors=True)


def _served_sources(claim: Path, models: Mapping[str, Sequence[int]]) -> tuple[dict[tuple[str, int], Path], list[str]]:
    """({(name, version): its dir on the claim}, [one line per served version that cannot be staged]).

    A version is named by ASCII digits, leading zeros allowed (layout's rule): two entries naming
    one served version ("1" and "01") are refused, since which one was meant is not defined.
    """
    sources: dict[tuple[str, int], Path] = {}
    problems: list[str] = []
    for name, versions in models.items():
        model_dir = claim / name
        try:
            mode = model_dir.lstat().st_mode
            entries = sorted(model_dir.iterdir()) if stat.S_ISDIR(mode) else []
        except FileNotFoundError:
            problems.append(f"{model_dir} is missing: the claim must hold {name}/N for every version this image serves")
            continue
        except OSError as exc:
            problems.append(f"{model_dir} cannot be read ({exc.strerror or exc})")
            continue
        if not stat.S_ISDIR(mode):
            problems.append(_refusal(model_dir, _kind(mode) or "not a directory"))
            continue
        by_version: dict[str, list[Path]] = {}
        for entry in entries:
            if is_version_name(entry.name):
                by_version.setdefault(entry.name.lstrip("0") or "0", []).append(entry)
        for version in versions:
            found = by_version.get(str(version), [])
            if not found:
                problems.append(f"{model_dir}/{version} (a version this image serves) is missing from the claim")
            elif len(found) > 1:
                problems.append(
                    f"{' and '.join(map(str, found))} all name version {version} of {model_dir}: remove all but one"
                )
            else:
                sources[(name, version)] = found[0]
    return sources, problems


def _make_dir(path: Path, *, exist_ok: bool = False) -> None:
    try:
        path.mkdir(mode=_DIR_MODE, exist_ok=exist_ok)
        path.chmod(_DIR_MODE)  # whatever the umask
    except OSError as exc:
        raise UsageError(f"cannot create {path} ({exc.strerror or exc}): stage into an empty writable dir") from None


def _copy_version(claim: Path, source: Path, target: Path) -> None:
    """Copy the version dir ``source`` (``claim/NAME/N``) to ``target``, never following a link:
    every component below ``claim`` is opened relative to its parent with O_NOFOLLOW."""
    descriptor = _open_dir(claim, None, claim)
    try:
        for part in source.relative_to(claim).parts:
            inner = _open_dir(part, descriptor, source)
            os.close(descriptor)
            descriptor = inner
        _copy_dir(descriptor, source, target)
    finally:
        os.close(descriptor)


def _open_dir(name: str | Path, parent: int | None, shown: Path) -> int:
    try:
        return os.open(name, _READ_DIR, dir_fd=parent)
    except OSError as exc:
        raise VerificationError(
            f"{shown} cannot be opened as a directory ({exc.strerror or exc}): it changed on the claim while it "
            "was copied, or is a symlink"
        ) from None


def _copy_dir(source_fd: int, source: Path, target: Path) -> None:
    _make_dir(target)
    for name in sorted(os.listdir(source_fd)):
        path = source / name
        mode = os.stat(name, dir_fd=source_fd, follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            inner = _open_dir(name, source_fd, path)
            try:
                _copy_dir(inner, path, target / name)
            finally:
                os.close(inner)
        elif stat.S_ISREG(mode):
            _copy_file(source_fd, name, path, target / name)
        else:
            raise VerificationError(_refusal(path, _kind(mode) or "not a regular file or directory"))


def _copy_file(parent_fd: int, name: str, path: Path, target: Path) -> None:
    try:
        source_fd = os.open(name, _READ_FILE, dir_fd=parent_fd)
    except OSError as exc:
        raise VerificationError(
            f"{path} cannot be opened ({exc.strerror or exc}): it changed on the claim while it was copied"
        ) from None
    with os.fdopen(source_fd, "rb") as source:
        kind = _kind(os.fstat(source.fileno()).st_mode)
        if kind is not None:
            raise VerificationError(_refusal(path, kind))
        try:
            target_fd = os.open(target, _WRITE_FILE, _FILE_MODE)
        except OSError as exc:
            raise UsageError(f"cannot write {target} ({exc.strerror or exc})") from None
        with os.fdopen(target_fd, "wb") as copy:
            os.fchmod(copy.fileno(), _FILE_MODE)  # whatever the umask
            while True:
                try:
                    chunk = source.read(_CHUNK)
                except OSError as exc:
                    raise VerificationError(f"{path} cannot be read ({exc.strerror or exc})") from None
                if not chunk:
                    break
                try:
                    copy.write(chunk)
                except OSError as exc:
                    raise UsageError(
                        f"cannot write {target} ({exc.strerror or exc}): the dir staged into needs room for "
                        "every served version"
                    ) from None
