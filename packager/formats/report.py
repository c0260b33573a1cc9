"""What ``tfpack export`` reports: the artefact written and the proof it passed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ExportReport:
    """An exported artefact, proved against the goldens of the version dir it came from.

    ``inputs`` and ``outputs`` map each serving_default key to the tensor name it has inside the
    artefact (what a user of that format feeds and fetches); ``max_abs_error`` is the largest
    absolute difference from the golden outputs, per output key.
    """

    format: str
    path: Path
    bytes: int
    sha256: str
    version_dir: Path
    runtime: str  # the runtime the proof ran in
    inputs: dict[str, str]
    outputs: dict[str, str]
    max_abs_error: dict[str, float]
    tolerance: float
    quantize: str
    select_tf_ops_needed: list[str] = field(default_factory=list)
    # --into-version: ``path`` is VERSION_DIR/model.tflite, and the served model's error (the
    # model server's own TFLite loader on the goldens) is ``served_max_abs_error``.
    into_version: bool = False
    served_max_abs_error: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        """The report as ``tfpack export --json`` prints it."""
        return {
            "format": self.format,
            "path": str(self.path),
            "bytes": self.bytes,
            "sha256": self.sha256,
            "version_dir": str(self.version_dir),
            "runtime": self.runtime,
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "max_abs_error": dict(self.max_abs_error),
            "tolerance": self.tolerance,
            "quantize": self.quantize,
            "select_tf_ops_needed": list(self.select_tf_ops_needed),
            "into_version": self.into_version,
            "served_max_abs_error": None if self.served_max_abs_error is None else dict(self.served_max_abs_error),
        }
