"""``tfpack sign``: sign every file of a version dir into ``model.sig``, a standard OpenSSF
model-signing bundle the reference CLI (``model_signing verify key|certificate ...``) accepts.

Three kinds of signing key:

* an elliptic-curve private key in a PEM file, optionally encrypted (the password comes from the
  caller, never from the command line);
* the same with a signing certificate and its chain, verified later against a root of trust;
* a key inside a PKCS#11 token (an HSM, or SoftHSM), addressed by an RFC 7512 ``pkcs11:`` URI,
  with or without a certificate.

A version dir holding a private key, or one whose op scan fails, is never signed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.errors import UsageError
from packager.layout import _model_signing_compat as compat
from packager.layout import load_certificates, require_file, require_version_dir
from packager.progress import SILENT, Progress
from packager.provenance import check_statement_current
from packager.signing.bundle import write_signature
from packager.signing.keys import (
    certify_pkcs11_key,
    load_private_key,
    load_signing_certificate,
    open_pkcs11_key,
    private_key_files,
)

if TYPE_CHECKING:
    from cryptography import x509
    from model_signing._signing.signing import Signer


class SignerKind(enum.StrEnum):
    """What signed a version dir, as ``tfpack sign --json`` reports it."""

    KEY = "key"
    CERTIFICATE = "certificate"
    PKCS11 = "pkcs11"
    PKCS11_CERTIFICATE = "pkcs11-certificate"


@dataclass(frozen=True)
class SignResult:
    """What ``sign`` wrote."""

    version_dir: Path
    signature: Path
    digest: str  # sha256 over the signed manifest, as recorded in the bundle's subject
    files: int
    signer: SignerKind

    def to_json(self) -> dict[str, Any]:
        """The result as ``tfpack sign --json`` prints it."""
        return {
            "version_dir": str(self.version_dir),
            "signature": str(self.signature),
            "digest": f"sha256:{self.digest}",
            "files": self.files,
            "signer": self.signer.value,
        }


def sign(
    version_dir: Path,
    private_key: Path | None = None,
    *,
    password: bytes | None = None,
    certificate: Path | None = None,
    chain: list[Path] | None = None,
    pkcs11_uri: str | None = None,
    allowed_ops: frozenset[str] = frozenset(),
    progress: Progress = SILENT,
) -> SignResult:
    """Sign every file of ``version_dir`` into ``version_dir/model.sig``.

    Args:
        version_dir: a version dir (a SavedModel, a model.tflite or both); sign it after
            everything else is written into it.
        private_key: PEM elliptic-curve private key (P-256, P-384 or P-521); exactly one of
            ``private_key`` and ``pkcs11_uri``.
        password: the private key's password when it is encrypted, or the token's PIN with
            ``pkcs11_uri``. Never part of any message.
        certificate: signing certificate (PEM) for the key; ``chain`` then lists the
            intermediate and root certificates recorded in the bundle.
        chain: certificate chain (PEM files, each may hold several), only with ``certificate``.
        pkcs11_uri: RFC 7512 URI of a key in a PKCS#11 token, e.g.
            ``pkcs11:token=release;object=model-signing?module-name=libsofthsm2``. It must not
            carry ``pin-value`` (pass ``password``, or use ``pin-source=file:...``).
        allowed_ops: op types the signer vouches for (``tfpack sign --allow-op``): the op scan
            lets them through, and the provenance may not allow any other.
        progress: receives the step being performed.

    Returns:
        Where the signature went and what it covers.

    Raises:
        UsageError: missing paths, an unreadable, unsupported or encrypted key without (or with
            a wrong) password, a certificate that does not belong to the key or cannot sign, an
            unusable PKCS#11 token or key, a failing op scan, a provenance allowing ops the
            signer did not vouch for.
        VerificationError: the provenance statement describes other files than the dir holds.
    """
    version_dir = require_version_dir(version_dir)
    if (private_key is None) == (pkcs11_uri is None):
        raise UsageError("give exactly one signing key: --key KEY.pem or --pkcs11-uri URI")
    _refuse_private_keys(version_dir)
    # A signature over a statement describing other files would only fail at verify time.
    check_statement_current(version_dir, required=False)
    if chain and certificate is None:
        raise UsageError("a certificate chain goes with a signing certificate (--cert)")
    signing_certificate = None
    trust_chain: list[x509.Certificate] = []
    if certificate is not None:
        signing_certificate = load_signing_certificate(require_file(certificate, "certificate"))
        trust_chain = load_certificates([require_file(c, "chain certificate") for c in chain or []])
    signer, kind = _signer(private_key, password, pkcs11_uri, certificate, signing_certificate, trust_chain)
    # After the signer is made: TensorFlow (which the scan imports) loaded before a PKCS#11
    # module crashes the process (their native libraries clash); loaded after, both work.
    _refuse_failed_scan(version_dir, allowed_ops)

    progress.step(f"hashing and signing {version_dir}")
    bundle = write_signature(signer, version_dir)
    return SignResult(
        version_dir=version_dir,
        signature=bundle.path,
        digest=bundle.subject_digest,
        files=len(bundle.resources),
        signer=kind,
    )


def _signer(
    private_key: Path | None,
    password: bytes | None,
    pkcs11_uri: str | None,
    certificate_path: Path | None,
    certificate: x509.Certificate | None,
    chain: list[x509.Certificate],
) -> tuple[Signer, SignerKind]:
    """model-signing's signer for the key given (a token key or a PEM file), and its kind."""
    if pkcs11_uri is not None:
        token_signer = open_pkcs11_key(pkcs11_uri, password)
        if certificate is None:
            return token_signer, SignerKind.PKCS11
        certify_pkcs11_key(token_signer, pkcs11_uri, certificate, chain)
        return token_signer, SignerKind.PKCS11_CERTIFICATE
    assert private_key is not None  # sign() checked that exactly one key was given
    key = load_private_key(require_file(private_key, "private key"), password)
    if certificate is None:
        return compat.key_signer(key), SignerKind.KEY
    if certificate.public_key() != key.public_key():
        raise UsageError(
            f"certificate {certificate_path} does not belong to private key {private_key}: their public keys differ"
        )
    return compat.key_signer(key, certificate, chain), SignerKind.CERTIFICATE


def _refuse_private_keys(version_dir: Path) -> None:
    """Refuse to sign a version dir holding a private key: it would be signed and shipped."""
    keys = private_key_files(version_dir)
    if keys:
        raise UsageError(
            f"{keys[0]} is a private key inside the version dir: move it out (it would be signed "
            "and shipped with the model)"
        )


def _refuse_failed_scan(version_dir: Path, allowed: frozenset[str]) -> None:
    """Refuse to sign a version dir whose op scan fails: a signature is a promise that what the
    image serves was scanned. Only the signer decides what is allowed (``allowed``): the
    provenance inside the dir is the caller's file until it is signed, so one that allows more
    (which ``tfpack build`` would then honour) is refused too."""
    from packager.provenance import recorded_allowed_ops
    from packager.version_scan import scan_version_dir

    unvouched = sorted(recorded_allowed_ops(version_dir) - allowed)
    if unvouched:
        raise UsageError(
            f"{version_dir}'s provenance allows {', '.join(unvouched)} on the serving path: sign it with "
            f"--allow-op {' --allow-op '.join(unvouched)} to vouch for that, or reconvert without --allow-op"
        )
    # Its SavedModel and its model.tflite, whichever it holds: either can be what a server runs.
    result = scan_version_dir(version_dir, allowed)
    if result.blocking:
        raise UsageError(
            f"{result.summary()}: 'tfpack sign' refuses a model whose op scan fails "
            f"(reconvert it, or vouch for each op with --allow-op {result.blocking[0].op_type})"
        )
