"""``tfpack export --format tflite --into-version``: model.tflite placed inside the version dir itself.

TF Serving serves ``VERSION_DIR/model.tflite`` instead of the SavedModel beside it when started
with ``--prefer_tflite_model`` (which ``tfpack build`` then sets). The version dir keeps one
contract and one set of goldens, so the TFLite model must be the same model:

* refused (VerificationError, before converting) when its files are not those its provenance
  statement describes: the statement written again afterwards would vouch for them;
* refused (UsageError, before converting) on a signed version dir (a file added breaks its
  signature: sign after), with quantization (a quantized model is a different model, proved by
  another bound), with a --tolerance looser than the conversion's, and for a SavedModel serving
  signatures besides serving_default (a TFLite model serves serving_default only);
* after the LiteRT proof :mod:`.export` runs, the file is written (temp file and rename) and
  proved again as the server will run it: loaded by the runtime's own loader
  (:func:`serving.tflite.load_tflite_servable`), fed the golden inputs by the tensor names of
  the SignatureDefs it builds, compared with the goldens at the conversion's tolerance, and its
  contract checked against the SavedModel's (nothing a client relies on may change);
* then the provenance record says so and the provenance statement is written again (its subject
  covers every model file, model.tflite now included).

Any failure after the write puts back what was there before (no model.tflite, or the earlier
unsigned one, and the earlier records).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from packager import __version__
from packager.contract import compare_contracts, contract_of_signature_defs, read_saved_model_contract
from packager.equivalence import compare_outputs
from packager.errors import UsageError, VerificationError
from packager.layout import (
    DEFAULT_SIGNATURE,
    PROVENANCE_FILE,
    SIGNATURE_FILE,
    STATEMENT_FILE,
    TFLITE_MODEL_FILE,
    Goldens,
    Provenance,
)
from packager.provenance import check_statement_current, write_provenance_statement

SERVED_RUNTIME = "serving.tflite.load_tflite_servable (the model server's TFLite loader)"
# What the provenance record gains: the model.tflite placed in the dir, and how it was proved.
PROVENANCE_KEY = "tflite_into_version"
# Writes a file atomically (the export's temp file and rename) and returns its path.
WriteFile = Callable[[Path, bytes], Path]


@dataclass(frozen=True)
class PlacedModel:
    """The model.tflite written into a version dir, and the error the served model measured."""

    path: Path
    replaced: bool  # an earlier (unsigned) model.tflite was replaced
    max_abs_error: dict[str, float]


def check_into_version(version_dir: Path, quantize: str, tolerance: float | None, provenance: Provenance) -> None:
    """Refuse, before converting, a version dir or flags the model.tflite could not be served from.

    Raises:
        UsageError: a signed dir, quantization, a tolerance looser than the conversion's, or
            signatures besides serving_default.
        VerificationError: the dir's files are not the ones its provenance statement describes
            (changed after tfpack wrote them), or it has no statement.
    """
    if (version_dir / SIGNATURE_FILE).is_file():
        raise UsageError(
            f"{version_dir} is signed ({SIGNATURE_FILE}): a model.tflite added now would break its signature; "
            "export --into-version an unsigned version dir and sign after ('tfpack sign')"
        )
    # The statement is written again over the dir once model.tflite is in: whatever replaced
    # the files convert wrote would be vouched for by it (and then by the signature).
    try:
        check_statement_current(version_dir, required=True)
    except VerificationError as exc:
        raise VerificationError(f"{exc}: export --into-version adds to a version dir only as tfpack wrote it") from None
    if quantize != "none":
        raise UsageError(
            f"--into-version with --quantize {quantize}: the model served from the version dir must meet its own "
            "goldens at the conversion's tolerance, and a quantized model is a different model; export it with "
            "--output-dir instead"
        )
    if tolerance is not None and tolerance > provenance.tolerance:
        raise UsageError(
            f"--tolerance {tolerance:g} is looser than the tolerance the conversion met ({provenance.tolerance:g}): "
            "the model served from the version dir must meet it"
        )
    others = sorted(set(read_saved_model_contract(version_dir).signatures) - {DEFAULT_SIGNATURE})
    if others:
        raise UsageError(
            f"{version_dir} serves signatures {', '.join(others)} besides {DEFAULT_SIGNATURE}: served from "
            f"{TFLITE_MODEL_FILE} it would serve {DEFAULT_SIGNATURE} only; export it with --output-dir instead"
        )


def place_tflite(
    version_dir: Path,
    content: bytes,
    goldens: Goldens,
    provenance: Provenance,
    tolerance: float,
    write: WriteFile,
) -> PlacedModel:
    """Write ``content`` as ``version_dir/model.tflite`` and prove it as the model server serves it.

    Args:
        version_dir: an unsigned version dir (checked by :func:`check_into_version`).
        content: the TFLite model, already proved in the LiteRT interpreter.
        goldens: the version dir's goldens.
        provenance: the version dir's provenance record (updated on success).
        tolerance: the bound of the proof (convert's rule, as for the SavedModel).
        write: writes a file atomically (the export's own temp file and rename).

    Raises:
        VerificationError: the served model's outputs differ from the goldens, or its contract
            is not the SavedModel's; nothing is left changed.
        UsageError: a file cannot be written.
    """
    path = version_dir / TFLITE_MODEL_FILE
    replaced = path.is_file()
    with _restored_on_failure([path, version_dir / PROVENANCE_FILE, version_dir / STATEMENT_FILE]):
        write(path, content)
        try:
            per_output = _prove_served(version_dir, goldens, tolerance)
        except VerificationError as exc:
            undone = "the earlier one was put back" if replaced else "it was removed"
            raise VerificationError(f"{exc}; {undone}") from None
        _record(version_dir, provenance, content, per_output, tolerance, write)
    return PlacedModel(path=path, replaced=replaced, max_abs_error=per_output)


def _prove_served(version_dir: Path, goldens: Goldens, tolerance: float) -> dict[str, float]:
    """Run the goldens through the runtime's TFLite loader; check outputs and contract.

    Raises:
        VerificationError: the model does not load, or its outputs or contract differ.
    """
    from serving.servables import LoadError
    from serving.status import ServingError
    from serving.tflite import load_tflite_servable

    what = f"{version_dir / TFLITE_MODEL_FILE} as the model server serves it"
    try:
        servable = load_tflite_servable(version_dir.parent.name, 0, version_dir)
    except LoadError as exc:
        raise VerificationError(f"{what}: it does not load: {exc}") from None
    served = contract_of_signature_defs(version_dir, servable.signature_defs)
    diff = compare_contracts(read_saved_model_contract(version_dir), served)
    if diff.breaking:
        raise VerificationError(f"{what}: its contract is not the SavedModel's: {'; '.join(diff.breaking)}")
    signature = servable.signature_defs[DEFAULT_SIGNATURE]
    try:
        fetched = servable.run(
            {signature.inputs[key].name: value for key, value in goldens.inputs.items()},
            [signature.outputs[key].name for key in goldens.outputs],
        )
    except (KeyError, ServingError) as exc:
        raise VerificationError(f"{what}: it cannot run the golden inputs: {exc}") from None
    actual = dict(zip(goldens.outputs, fetched, strict=True))
    return compare_outputs(goldens.outputs, actual, tolerance, what).per_output


def _record(
    version_dir: Path,
    provenance: Provenance,
    content: bytes,
    per_output: dict[str, float],
    tolerance: float,
    write: WriteFile,
) -> None:
    """Record the model.tflite in the provenance, then write the statement again over every file."""
    provenance.extra[PROVENANCE_KEY] = {
        "file": TFLITE_MODEL_FILE,
        "sha256": hashlib.sha256(content).hexdigest(),
        "bytes": len(content),
        "tfpack_version": __version__,
        "runtime": SERVED_RUNTIME,
        "tolerance": tolerance,
        "max_abs_error": per_output,
    }
    write(version_dir / PROVENANCE_FILE, (json.dumps(provenance.to_json(), indent=2, sort_keys=True) + "\n").encode())
    write_provenance_statement(version_dir, provenance)


@contextlib.contextmanager
def _restored_on_failure(paths: list[Path]) -> Iterator[None]:
    """Put ``paths`` back as they were (content, or absence) when the block fails, Ctrl-C included."""
    before = {path: path.read_bytes() if path.is_file() else None for path in paths}
    try:
        yield
    except BaseException:
        for path, content in before.items():
            with contextlib.suppress(OSError):
                if content is None:
                    path.unlink(missing_ok=True)
                else:
                    path.write_bytes(content)
        raise
