"""Reading a model-signing bundle (``model.sig``) without verifying it: the signed in-toto
statement in its DSSE envelope, the files it lists, its subject digest, how it was signed.

Everything here is read before (or instead of) model-signing's verification, so a malformed
bundle is a failed verification (VerificationError, exit 3), never a crash.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packager.errors import VerificationError, first_line
from packager.layout.paths import SIGNATURE_FILE


@dataclass(frozen=True)
class Bundle:
    """A model-signing bundle as JSON, and the in-toto statement its envelope carries."""

    path: Path
    document: dict[str, Any]
    statement: dict[str, Any]

    @property
    def signed_with_certificate(self) -> bool:
        """Whether the bundle carries a certificate chain (else it was signed with a bare key)."""
        return "x509CertificateChain" in self.document.get("verificationMaterial", {})

    @property
    def resources(self) -> list[dict[str, Any]]:
        """The signed manifest: one {"name", "algorithm", "digest"} per file, in model-signing's order."""
        return list(self.statement.get("predicate", {}).get("resources", []))

    @property
    def ignored_paths(self) -> set[str]:
        """The paths the signature leaves out, as the bundle records them (model.sig among them)."""
        return set(self.statement.get("predicate", {}).get("serialization", {}).get("ignore_paths", []))

    @property
    def subject_digest(self) -> str:
        """The hex sha256 model digest recorded as the statement's subject.

        Raises:
            VerificationError: the statement has no sha256 subject digest.
        """
        try:
            return str(self.statement["subject"][0]["digest"]["sha256"])
        except (KeyError, IndexError, TypeError):
            raise VerificationError("the signature bundle has no sha256 subject digest") from None


def read_bundle(signature_path: Path) -> Bundle:
    """Read the bundle at ``signature_path`` and decode its statement (no verification).

    Raises:
        VerificationError: the file is unreadable or not a model-signing bundle.
    """
    try:
        document = json.loads(signature_path.read_text())
        statement = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VerificationError(f"{signature_path} is not a model-signing bundle: {first_line(exc)}") from None
    # Fields read before model-signing checks the bundle must have the types the format gives
    # them: a garbage bundle is a failed verification (exit 3), never a crash.
    if not isinstance(document.get("verificationMaterial", {}), dict) or not isinstance(statement, dict):
        raise VerificationError(
            f"{signature_path} is not a model-signing bundle: malformed verificationMaterial or statement"
        )
    return Bundle(path=signature_path, document=document, statement=statement)


def read_signed_statement(signature_path: Path) -> dict[str, Any]:
    """Return the in-toto statement inside the model-signing bundle at ``signature_path``.

    No verification: call the trust check first when it matters.

    Raises:
        VerificationError: not a model-signing bundle.
    """
    return read_bundle(signature_path).statement


def signed_digest(version_dir: Path) -> str:
    """Return ``sha256:<hex>``, the model digest recorded in ``version_dir/model.sig``.

    This reads the bundle without verifying it; verify first when it matters.

    Raises:
        VerificationError: the dir is unsigned or its bundle is malformed.
    """
    signature_path = version_dir / SIGNATURE_FILE
    if not signature_path.is_file():
        raise VerificationError(f"{version_dir} is unsigned: {SIGNATURE_FILE} is missing")
    return f"sha256:{read_bundle(signature_path).subject_digest}"
