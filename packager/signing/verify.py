"""``tfpack verify``: the trust check of :mod:`packager.layout.trust` on one version dir, with a
public key or a certificate chain, reporting what the signature covers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packager.layout import verify_version_dir
from packager.progress import SILENT, Progress


@dataclass(frozen=True)
class VerifyResult:
    """A successful verification."""

    version_dir: Path
    digest: str
    files: int

    def to_json(self) -> dict[str, Any]:
        """The result as ``tfpack verify --json`` prints it."""
        return {
            "version_dir": str(self.version_dir),
            "verified": True,
            "digest": f"sha256:{self.digest}",
            "files": self.files,
        }


def verify(
    version_dir: Path,
    public_key: Path | None = None,
    *,
    certificate_chain: list[Path] | None = None,
    progress: Progress = SILENT,
) -> VerifyResult:
    """Verify ``version_dir`` against its ``model.sig`` with a public key or a certificate chain.

    Args:
        version_dir: the signed version dir.
        public_key: PEM public key of the signing key.
        certificate_chain: PEM certificates to trust (the root, and intermediates if the bundle
            does not carry them), instead of ``public_key``.
        progress: receives the step being performed.

    Returns:
        The verified dir, its model digest and how many files the signature covers.

    Raises:
        UsageError: the dir, key or chain do not exist or are not PEM.
        VerificationError: no signature, a signature by another key or by a certificate that
            does not chain to ``certificate_chain``, any modified, added or missing file, or files
            the signature leaves out; the message names them.
    """
    verified = verify_version_dir(
        version_dir,
        public_key,
        certificate_chain=certificate_chain,
        on_verify=lambda resolved: progress.step(f"verifying {resolved}"),
    )
    return VerifyResult(version_dir=verified.version_dir, digest=verified.digest, files=verified.files)
