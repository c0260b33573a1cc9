"""Readers (and the writers convert uses) of the records a version dir carries beside the model:
the goldens, the provenance record and the in-toto provenance statement."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packager.errors import UsageError
from packager.layout.paths import DEFAULT_SIGNATURE, STATEMENT_FILE

# Keys inside the goldens archive: "input/<signature input key>", "output/<signature output key>".
_GOLDEN_INPUT_PREFIX = "input/"
_GOLDEN_OUTPUT_PREFIX = "output/"

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://tfpack.dev/provenance/v1"


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
            # allow_pickle named so the array keys cannot be taken for it (numpy's own default).
            np.savez(handle, allow_pickle=True, **arrays)

    @classmethod
    def load(cls, path: Path) -> Goldens:
        """Read goldens written by :meth:`save`.

        Raises:
            UsageError: the file is absent or unreadable.
        """
        try:
            with np.load(path, allow_pickle=False) as archive:
                inputs = {
                    k[len(_GOLDEN_INPUT_PREFIX) :]: archive[k]
                    for k in archive.files
                    if k.startswith(_GOLDEN_INPUT_PREFIX)
                }
                outputs = {
                    k[len(_GOLDEN_OUTPUT_PREFIX) :]: archive[k]
                    for k in archive.files
                    if k.startswith(_GOLDEN_OUTPUT_PREFIX)
                }
        except FileNotFoundError:
            raise UsageError(f"{path} is missing: the version dir was not written by 'tfpack convert'") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read goldens {path}: {exc}") from None
        return cls(inputs=inputs, outputs=outputs)


@dataclass(frozen=True)
class TensorSummary:
    """dtype and shape of one signature input or output, as recorded in the provenance."""

    dtype: str  # numpy-style name, e.g. "float32", "int32", "string"
    shape: list[int | None]  # None for an unknown dimension; [] for a scalar

    def to_json(self) -> dict[str, Any]:
        """The summary as the provenance records it."""
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
        """The record as written to tfpack_provenance.json."""
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
        """Write the record as sorted, indented JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")

    @staticmethod
    def load_json(path: Path) -> dict[str, Any]:
        """Read a provenance record as plain JSON.

        Raises:
            UsageError: the file is absent or unreadable.
        """
        try:
            record: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"{path} is missing: the version dir was not written by 'tfpack convert'") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        return record


def read_provenance_statement(version_dir: Path) -> dict[str, Any]:
    """Return the in-toto provenance statement of ``version_dir`` as JSON.

    Raises:
        UsageError: the statement is absent, unreadable or not a tfpack provenance statement.
    """
    path = version_dir / STATEMENT_FILE
    try:
        statement = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} is missing: the version dir predates provenance statements") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if (
        not isinstance(statement, dict)
        or statement.get("_type") != STATEMENT_TYPE
        or statement.get("predicateType") != PREDICATE_TYPE
    ):
        raise UsageError(f"{path} is not a tfpack in-toto provenance statement")
    return statement
