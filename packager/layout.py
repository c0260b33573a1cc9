"""The on-disk contract between stages: model base paths, version dirs and what they hold.

A model base path ``DIR/NAME`` holds numeric version dirs ``DIR/NAME/N`` (TF Serving's layout).
A version dir written by tfpack holds, besides the SavedModel itself::

    assets.extra/tf_serving_warmup_requests   PredictionLog TFRecords TF Serving replays at load
    assets.extra/tfpack_goldens.npz           inputs the converter fed and the outputs it verified
    assets.extra/tfpack_provenance.json       source digests, versions, options, signature summary
    assets.extra/tfpack_provenance.intoto.json the same as an in-toto Statement v1 (subject: the
                                              model's root digest), written last before signing
    model.sig                                 OpenSSF model-signing bundle over every other file

This module only names and reads those files; it imports neither TensorFlow nor Docker, so the
image entrypoint and the smoke test can use it cheaply.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packager.errors import UsageError

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = f"{ASSETS_EXTRA}/tf_serving_warmup_requests"
GOLDENS_FILE = f"{ASSETS_EXTRA}/tfpack_goldens.npz"
PROVENANCE_FILE = f"{ASSETS_EXTRA}/tfpack_provenance.json"
SIGNATURE_FILE = "model.sig"
SERVING_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"

# Keys inside the goldens archive: "input/<signature input key>", "output/<signature output key>".
_GOLDEN_INPUT_PREFIX = "input/"
_GOLDEN_OUTPUT_PREFIX = "output/"

# The Docker reference grammar (distribution/reference): [host[:port]/]path[:tag][@digest].
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REFERENCE = re.compile(
    rf"^(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_model_name(name: str, flag: str = "--name") -> str:
    """Return ``name`` if it can be a model name and a path component, else raise UsageError.

    TF Serving uses the model name in URLs (/v1/models/NAME) and as a directory name, so only a
    plain name is accepted: letters, digits, '.', '_' and '-', not starting with a separator.
    """
    if not _PLAIN_NAME.match(name) or name in {".", ".."}:
        raise UsageError(
            f"{flag} {name!r} is not a plain model name: use letters, digits, '.', '_' or '-' "
            "(at most 63 characters, starting with a letter or digit)"
        )
    return name


_VERSION_NAME = re.compile(r"^[0-9]+$")  # ASCII digits only: "²" and "١" are not versions
# A version is an int64 (ModelSpec.version, TF Serving's ParseVersionNumber: safe_strto64);
# a directory naming a larger number is no version TF Serving would load.
MAX_VERSION = 2**63 - 1


def _version_number(name: str) -> int:
    digits = name.lstrip("0") or "0"
    return int(digits) if len(digits) <= 19 else MAX_VERSION + 1


def find_version_dirs(model_base_path: Path) -> tuple[dict[int, Path], list[str]]:
    """({version: the directory itself}, [problems]) for a model base path's version dirs.

    A version dir is named by ASCII digits; leading zeros are allowed ("00000123" is version
    123, as TF Serving reads it). The directories are returned as found, never rebuilt from the
    number, so whoever verifies a version checks the very directory a server loads. Two
    directories naming one version ("1" and "01") are left out, with a problem saying so: which
    one a server would load is not defined, so neither is trusted.
    """
    if not model_base_path.is_dir():
        return {}, []
    found: dict[int, list[Path]] = {}
    too_large: list[Path] = []
    for child in sorted(model_base_path.iterdir()):
        if _VERSION_NAME.match(child.name) and child.is_dir():
            if _version_number(child.name) > MAX_VERSION:
                too_large.append(child)
            else:
                found.setdefault(int(child.name), []).append(child)
    unique = {version: dirs[0] for version, dirs in sorted(found.items()) if len(dirs) == 1}
    problems = [
        f"{' and '.join(str(d) for d in dirs)} all name version {version} of {model_base_path}: "
        "remove all but one (a server would load any of them)"
        for version, dirs in sorted(found.items()) if len(dirs) > 1
    ]
    problems += [
        f"{path} is not a version dir: versions are at most {MAX_VERSION} (int64), as TF "
        "Serving reads them"
        for path in too_large
    ]
    return unique, problems


def version_dirs(model_base_path: Path) -> dict[int, Path]:
    """{version: directory} of a model base path (see :func:`find_version_dirs`).

    Raises:
        UsageError: two directories name the same version.
    """
    unique, problems = find_version_dirs(model_base_path)
    if problems:
        raise UsageError(problems[0])
    return unique


def check_image_reference(reference: str, flag: str) -> str:
    """Return ``reference`` if it is a Docker image reference, else raise UsageError naming ``flag``."""
    if not _IMAGE_REFERENCE.match(reference):
        raise UsageError(
            f"{flag} {reference!r} is not an image reference: use REGISTRY/NAME:TAG or "
            "REGISTRY/NAME@sha256:DIGEST (lowercase name)"
        )
    return reference


def numeric_versions(model_base_path: Path) -> list[int]:
    """Return the version numbers of a model base path's version dirs, ascending."""
    return list(version_dirs(model_base_path))


def next_version(model_base_path: Path) -> int:
    """Return one more than the highest existing version under ``model_base_path``, else 1."""
    versions = numeric_versions(model_base_path)
    return versions[-1] + 1 if versions else 1


def latest_version_dir(model_base_path: Path) -> Path:
    """Return the highest numeric version dir of a model base path, as TF Serving would serve."""
    versions = numeric_versions(model_base_path)
    if not versions:
        raise UsageError(
            f"{model_base_path} holds no numeric version directory (expected {model_base_path}/1/ "
            "as written by 'tfpack convert')"
        )
    return version_dirs(model_base_path)[versions[-1]]


def is_version_name(name: str) -> bool:
    """Whether ``name`` can name a version dir: ASCII digits only ("²" and "١" pass str.isdigit)."""
    return bool(_VERSION_NAME.match(name))


def is_version_dir(path: Path) -> bool:
    """True when ``path`` looks like a SavedModel version dir."""
    return (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()


@dataclass(frozen=True)
class Goldens:
    """Inputs fed to a signature and the outputs the converter verified against the source."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]

    def save(self, path: Path) -> None:
        """Write the goldens as an .npz archive (no pickled objects)."""
        arrays = {_GOLDEN_INPUT_PREFIX + k: v for k, v in self.inputs.items()}
        arrays.update({_GOLDEN_OUTPUT_PREFIX + k: v for k, v in self.outputs.items()})
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(cls, path: Path) -> "Goldens":
        """Read goldens written by :meth:`save`; UsageError when absent or unreadable."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                inputs = {
                    k[len(_GOLDEN_INPUT_PREFIX):]: archive[k]
                    for k in archive.files
                    if k.startswith(_GOLDEN_INPUT_PREFIX)
                }
                outputs = {
                    k[len(_GOLDEN_OUTPUT_PREFIX):]: archive[k]
                    for k in archive.files
                    if k.startswith(_GOLDEN_OUTPUT_PREFIX)
                }
        except FileNotFoundError:
            raise UsageError(
                f"{path} is missing: the version dir was not written by 'tfpack convert'"
            ) from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read goldens {path}: {exc}") from None
        return cls(inputs=inputs, outputs=outputs)


@dataclass(frozen=True)
class TensorSummary:
    """dtype and shape of one signature input or output, as recorded in the provenance."""

    dtype: str  # numpy-style name, e.g. "float32", "int32", "string"
    shape: list[int | None]  # None for an unknown dimension; [] for a scalar

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": self.shape}


@dataclass
class Provenance:
    """The JSON record tfpack writes beside the goldens.

    ``signature`` summarises serving_default: {"inputs": {key: TensorSummary}, "outputs": {...}}.
    """

    model_name: str
    version: int
    source: dict[str, Any]  # {"path", "format", "files": {relative path: sha256}}
    tfpack_version: str
    tensorflow_version: str
    options: dict[str, Any]
    inputs: dict[str, TensorSummary]
    outputs: dict[str, TensorSummary]
    tolerance: float
    max_abs_error: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "source": self.source,
            "tfpack_version": self.tfpack_version,
            "tensorflow_version": self.tensorflow_version,
            "options": self.options,
            "signature": {
                "name": DEFAULT_SIGNATURE,
                "inputs": {k: v.to_json() for k, v in self.inputs.items()},
                "outputs": {k: v.to_json() for k, v in self.outputs.items()},
            },
            "equivalence": {"tolerance": self.tolerance, "max_abs_error": self.max_abs_error},
            **self.extra,
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    @staticmethod
    def load_json(path: Path) -> dict[str, Any]:
        """Read a provenance record as plain JSON; UsageError when absent or unreadable."""
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(
                f"{path} is missing: the version dir was not written by 'tfpack convert'"
            ) from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
