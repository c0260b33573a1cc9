"""The version-dir rule: which directories of a model base path ``DIR/NAME`` are its versions.

One rule for everything that lists versions (convert's next version, ``tfpack build``, the image
entrypoint that verifies them, the model server that loads them), so the server never loads a
directory the entrypoint did not check. A version dir is named by ASCII digits ("²" and other
Unicode digits pass ``str.isdigit`` and are not versions); leading zeros are allowed ("00000123" is
version 123, as TF Serving reads it); the number is an int64 (ModelSpec.version, TF Serving's
ParseVersionNumber).

A version dir holds a SavedModel (saved_model.pb or .pbtxt), a TFLite model (model.tflite, TF
Serving's TFLite layout), or both: :func:`served_format` says which one a server started with
--prefer_tflite_model serves, as every image ``tfpack build`` makes of such a dir is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from packager.errors import UsageError
from packager.layout.paths import SAVED_MODEL_FILE, SAVED_MODEL_TEXT_FILE, TFLITE_MODEL_FILE

ServedFormat = Literal["saved_model", "tflite"]
SERVED_SAVED_MODEL: ServedFormat = "saved_model"
SERVED_TFLITE: ServedFormat = "tflite"

_VERSION_NAME = re.compile(r"[0-9]+")
# A directory naming a larger number is no version TF Serving would load.
MAX_VERSION = 2**63 - 1
_INT64_DIGITS = 19


def _version_number(name: str) -> int:
    digits = name.lstrip("0") or "0"
    # Past 19 digits the number is out of range whatever it is: no need to build a huge int.
    return int(digits) if len(digits) <= _INT64_DIGITS else MAX_VERSION + 1


def is_version_name(name: str) -> bool:
    """Whether ``name`` can name a version dir: ASCII digits only ("²" and other Unicode digits pass str.isdigit)."""
    return bool(_VERSION_NAME.fullmatch(name))  # fullmatch: "1\n" is no version


def holds_saved_model(path: Path) -> bool:
    """Whether ``path`` holds a SavedModel (saved_model.pb or .pbtxt)."""
    return (path / SAVED_MODEL_FILE).is_file() or (path / SAVED_MODEL_TEXT_FILE).is_file()


def is_version_dir(path: Path) -> bool:
    """Whether ``path`` looks like a version dir: it holds a SavedModel or a model.tflite."""
    return holds_saved_model(path) or (path / TFLITE_MODEL_FILE).is_file()


def served_format(version_dir: Path) -> ServedFormat:
    """What a server started with --prefer_tflite_model serves of ``version_dir``.

    Its model.tflite when it holds one (the SavedModel beside it, if any, is then not served),
    else its SavedModel. ``tfpack build`` starts the server so whenever a version dir it bakes
    holds a model.tflite, so this is what its images serve; the contract and the smoke test read
    the same file.
    """
    return SERVED_TFLITE if (version_dir / TFLITE_MODEL_FILE).is_file() else SERVED_SAVED_MODEL


def find_version_dirs(model_base_path: Path) -> tuple[dict[int, Path], list[str]]:
    """Return ({version: the directory itself}, [problems]) for a model base path's version dirs.

    The directories are returned as found, never rebuilt from the number, so whoever verifies a
    version checks the very directory a server loads. Two directories naming one version ("1" and
    "01") are left out, with a problem saying so: which one a server would load is not defined,
    so neither is trusted. A directory naming a number past int64 is left out with a problem too.

    Args:
        model_base_path: ``DIR/NAME``; a missing one has no versions and no problems.

    Returns:
        The unique versions, ascending, and one line per directory left out.
    """
    if not model_base_path.is_dir():
        return {}, []
    found: dict[int, list[Path]] = {}
    too_large: list[Path] = []
    for child in sorted(model_base_path.iterdir()):
        if is_version_name(child.name) and child.is_dir():
            if _version_number(child.name) > MAX_VERSION:
                too_large.append(child)
            else:
                found.setdefault(int(child.name), []).append(child)
    unique = {version: dirs[0] for version, dirs in sorted(found.items()) if len(dirs) == 1}
    problems = [
        f"{' and '.join(str(d) for d in dirs)} all name version {version} of {model_base_path}: "
        "remove all but one (a server would load any of them)"
        for version, dirs in sorted(found.items())
        if len(dirs) > 1
    ]
    problems += [
        f"{path} is not a version dir: versions are at most {MAX_VERSION} (int64), as TF Serving reads them"
        for path in too_large
    ]
    return unique, problems


def version_dirs(model_base_path: Path) -> dict[int, Path]:
    """Return {version: directory} of a model base path, ascending (see :func:`find_version_dirs`).

    For callers that must not go on past a problem (convert, build, the image entrypoint).

    Raises:
        UsageError: two directories name the same version, or one names a number past int64.
    """
    unique, problems = find_version_dirs(model_base_path)
    if problems:
        raise UsageError(problems[0])
    return unique


def numeric_versions(model_base_path: Path) -> list[int]:
    """Return the version numbers of a model base path's version dirs, ascending.

    Raises:
        UsageError: as :func:`version_dirs`.
    """
    return list(version_dirs(model_base_path))


def next_version(model_base_path: Path) -> int:
    """Return one more than the highest existing version under ``model_base_path``, else 1.

    Raises:
        UsageError: as :func:`version_dirs`.
    """
    versions = numeric_versions(model_base_path)
    return versions[-1] + 1 if versions else 1


def latest_version_dir(model_base_path: Path) -> Path:
    """Return the highest version dir of a model base path, as TF Serving would serve.

    Raises:
        UsageError: there is none, or as :func:`version_dirs`.
    """
    dirs = version_dirs(model_base_path)
    if not dirs:
        raise UsageError(
            f"{model_base_path} holds no numeric version directory (expected {model_base_path}/1/ "
            "as written by 'tfpack convert')"
        )
    return dirs[max(dirs)]


def require_version_dir(version_dir: Path) -> Path:
    """Return ``version_dir`` resolved if it is a version dir (:func:`is_version_dir`), else raise UsageError.

    Raises:
        UsageError: not a directory, or neither saved_model.pb nor model.tflite in it.
    """
    if not version_dir.is_dir():
        raise UsageError(f"{version_dir} is not a directory: give a version dir such as models/NAME/1")
    if not is_version_dir(version_dir):
        raise UsageError(
            f"{version_dir} holds no saved_model.pb (nor {TFLITE_MODEL_FILE}): give a version dir written by "
            "'tfpack convert'"
        )
    return version_dir.resolve()
