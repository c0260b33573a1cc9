"""Readers (and the writers convert uses) of the records a version dir carries beside the model:
the goldens, the provenance record and the in-toto provenance statement."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.errors import UsageError

if TYPE_CHECKING:  # numpy loads only where goldens are read or written: the image's health
    import numpy as np  # check imports this package every 10 s and reads none
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
            import numpy as np

            np.savez(handle, allow_pickle=True, **arrays)

    @classmethod
    def load(cls, path: Path) -> Goldens:
        """Read goldens written by :meth:`save`.

        Raises:
            UsageError: the file is absent or unreadable.
        """
        try:
            import numpy as np

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
    shape: list[int | None] | None  # None for an unknown rank or dimension; [] for a scalar

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

    @classmethod
    def from_json(cls, record: object, where: str) -> Provenance:
        """The record :meth:`to_json` wrote, read back into its fields.

        Raises:
            UsageError: a field is missing or of the wrong kind (``where`` names the record).
        """
        try:
            if not isinstance(record, dict):
                raise TypeError("a JSON object")
            signature = record["signature"]
            equivalence = record["equivalence"]
            return cls(
                model_name=str(record["model_name"]),
                version=int(record["version"]),
                source=dict(record["source"]),
                tfpack_version=str(record["tfpack_version"]),
                tensorflow_version=str(record["tensorflow_version"]),
                options=dict(record["options"]),
                inputs=_summaries(signature["inputs"]),
                outputs=_summaries(signature["outputs"]),
                tolerance=float(equivalence["tolerance"]),
                max_abs_error=float(equivalence["max_abs_error"]),
                extra={k: v for k, v in record.items() if k not in _PROVENANCE_FIELDS},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"{where} lacks {exc}: re-create the version dir with 'tfpack convert'") from None

    @classmethod
    def load(cls, path: Path) -> Provenance:
        """Read ``tfpack_provenance.json``.

        Raises:
            UsageError: the file is absent, unreadable or not a record tfpack convert wrote.
        """
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"{path} is missing: the version dir was not written by 'tfpack convert'") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        return cls.from_json(record, str(path))


# The keys to_json writes from Provenance's own fields; any other key is kept in ``extra``.
_PROVENANCE_FIELDS = frozenset(
    {"model_name", "version", "source", "tfpack_version", "tensorflow_version", "options", "signature", "equivalence"}
)


def _summaries(entries: dict[str, Any]) -> dict[str, TensorSummary]:
    """Signature entries ``{key: {"dtype", "shape"}}``; a null shape is an unknown rank."""
    return {
        str(key): TensorSummary(
            dtype=str(value["dtype"]),
            shape=None if value["shape"] is None else [None if d is None else int(d) for d in value["shape"]],
        )
        for key, value in entries.items()
    }


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
