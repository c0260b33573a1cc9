"""The provenance of a version dir as an in-toto Statement v1, signed along with the model.

``assets.extra/tfpack_provenance.intoto.json`` says, in the attestation format supply-chain tools
read (in-toto Statement v1, https://github.com/in-toto/attestation/tree/main/spec/v1), which model
files came from which source and how::

    {
      "_type": "https://in-toto.io/Statement/v1",
      "subject": [{"name": "NAME/VERSION", "digest": {"sha256": ROOT_DIGEST}}],
      "predicateType": "https://tfpack.dev/provenance/v1",
      "predicate": {
        "source": {"path", "format", "files": [{"name", "digest": {"sha256"}}]},
        "builder": {"tfpack": VERSION, "tensorflow": VERSION},
        "conversion": {"options": {...}, "towers": {...} | null, "signature": {...}},
        "equivalence": {"tolerance", "max_abs_error", "met": true}
      }
    }

ROOT_DIGEST is the model's root digest exactly as OpenSSF model-signing defines its subject
digest: sha256 over the concatenated raw sha256 digests of every file, in model-signing's
canonical (sorted path) order. It covers every file of the version dir except ``model.sig`` and
the statement itself, which cannot contain its own digest. It is written after the goldens,
warmup requests and provenance JSON and before signing, so ``model.sig`` then covers the
statement too, and the trust check (:func:`packager.layout.check_statement_subject`) can
recompute the subject from the verified signature's manifest alone, without hashing the files a
second time. The file's name and types, and its reader, are in :mod:`packager.layout`, which the
trust check shares with the serving image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from packager.errors import UsageError, VerificationError
from packager.layout import (
    PREDICATE_TYPE,
    PROVENANCE_FILE,
    SIGNATURE_FILE,
    STATEMENT_FILE,
    STATEMENT_TYPE,
    Provenance,
    check_statement_subject,
    file_sha256,
    read_provenance_statement,
)

__all__ = [
    "PREDICATE_TYPE",
    "STATEMENT_FILE",
    "STATEMENT_TYPE",
    "ProvenanceStatement",
    "check_statement_current",
    "model_root_digest",
    "read_provenance_statement",
    "recorded_allowed_ops",
    "write_provenance_statement",
]


@dataclass(frozen=True)
class ProvenanceStatement:
    """The statement ``write_provenance_statement`` wrote."""

    path: Path
    subject: str  # NAME/VERSION
    digest: str  # the model's root digest (hex sha256)

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "subject": self.subject, "digest": f"sha256:{self.digest}"}


def model_root_digest(version_dir: Path) -> str:
    """Hex sha256 root digest of every file of ``version_dir`` but model.sig and the statement.

    The same digest model-signing records as a bundle's subject (its "files" serialization:
    sha256 of each file, concatenated in the order of their relative paths as PurePosixPath
    sorts them, hashed again); a test checks it against the reference CLI. Computed here with
    hashlib because importing model-signing alone costs a quarter of a second per conversion.
    """
    root = hashlib.sha256()
    for _, path in _subject_files(version_dir):
        root.update(bytes.fromhex(file_sha256(path)))
    return root.hexdigest()


def _subject_files(version_dir: Path) -> list[tuple[PurePosixPath, Path]]:
    """The files the statement's subject covers, in model-signing's canonical order."""
    ignored = {PurePosixPath(SIGNATURE_FILE), PurePosixPath(STATEMENT_FILE)}
    files: list[tuple[PurePosixPath, Path]] = []
    for path in version_dir.rglob("*"):
        relative = PurePosixPath(path.relative_to(version_dir).as_posix())
        if path.is_symlink():
            raise UsageError(f"{path} is a symlink: a version dir must hold regular files only")
        if path.is_file() and relative not in ignored:
            files.append((relative, path))
    return sorted(files)


def check_statement_current(version_dir: Path, *, required: bool) -> None:
    """Check that the provenance statement still describes the files of ``version_dir``, by the
    same check ``tfpack verify`` runs on a signed dir (:func:`packager.layout.check_statement_subject`),
    here over the files as they are now: a dir changed after tfpack wrote it is not what its
    provenance says.

    Args:
        version_dir: a version dir, signed or not.
        required: a dir without a statement fails too (else it passes: older tfpack wrote none).

    Raises:
        VerificationError: the statement is missing (with ``required``), unreadable, or its
            subject is not the root digest of the files.
    """
    statement = version_dir / STATEMENT_FILE
    if not statement.is_file():
        if required:
            raise VerificationError(
                f"{version_dir} has no provenance statement ({STATEMENT_FILE}): nothing says its files are the "
                "ones tfpack wrote; convert it again"
            )
        return
    resources = [
        {"name": relative.as_posix(), "algorithm": "sha256", "digest": file_sha256(path)}
        for relative, path in _subject_files(version_dir)
    ]
    resources.append({"name": STATEMENT_FILE, "algorithm": "sha256", "digest": file_sha256(statement)})
    check_statement_subject(version_dir, resources)


def write_provenance_statement(version_dir: Path, provenance: Provenance) -> ProvenanceStatement:
    """Write ``version_dir/assets.extra/tfpack_provenance.intoto.json`` from tfpack's provenance.

    Call it after every other file of the version dir is written and before signing: its subject
    digest covers all of them.

    Args:
        version_dir: the (staged) version dir.
        provenance: the record written beside it as tfpack_provenance.json.
    """
    subject = f"{provenance.model_name}/{provenance.version}"
    source = provenance.source
    tolerance, max_abs_error = provenance.tolerance, provenance.max_abs_error
    digest = model_root_digest(version_dir)
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject, "digest": {"sha256": digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "source": {
                "path": source.get("path"),
                "format": source.get("format"),
                "files": [
                    {"name": name, "digest": {"sha256": sha256}}
                    for name, sha256 in sorted(source.get("files", {}).items())
                ],
            },
            "builder": {
                "tfpack": provenance.tfpack_version,
                "tensorflow": provenance.tensorflow_version,
            },
            "conversion": {
                "options": provenance.options,
                "towers": provenance.extra.get("towers"),
                "signature": provenance.to_json()["signature"],
            },
            "equivalence": {
                "tolerance": tolerance,
                "max_abs_error": max_abs_error,
                "met": max_abs_error <= tolerance,
            },
        },
    }
    path = version_dir / STATEMENT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(statement, indent=2, sort_keys=True) + "\n")
    return ProvenanceStatement(path=path, subject=subject, digest=digest)


def recorded_allowed_ops(version_dir: Path) -> frozenset[str]:
    """The ops ``tfpack convert --allow-op`` let through, as the version's provenance records
    them (empty when there is no readable record). Trust it only as far as the record is signed
    or about to be signed by the caller."""
    # What the file claims, read leniently (a partial record too): the callers decide how far to
    # trust it, and `tfpack sign` names a claim it will not honour.
    try:
        record = json.loads((version_dir / PROVENANCE_FILE).read_text())
        allowed = record.get("options", {}).get("allowed_ops") or []
    except (OSError, ValueError, AttributeError):
        return frozenset()
    return frozenset(op for op in allowed if isinstance(op, str)) if isinstance(allowed, list) else frozenset()
