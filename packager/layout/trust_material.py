"""Loading what a signature is verified against: an EC public key or PEM certificates.

Only public material is accepted: a file holding a private key is refused, so a key that should
stay with the signer never ends up in an image or a verifier's configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from packager.errors import UsageError, first_line

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

# The curves model-signing accepts (those of Sigstore's protobuf specs).
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` resolved if it is a file, else raise UsageError naming ``what`` it should be.

    Raises:
        UsageError: ``path`` does not exist or is not a file.
    """
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist or is not a file")
    return path.resolve()


def _read_public_pem(path: Path, what: str) -> bytes:
    """The bytes of a file that must hold only public material (a key or certificates)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        raise UsageError(
            f"{path} is a private key, not a {what}: pass the {what} (private keys never go into an image "
            "or a verifier)"
        )
    return data


def load_ec_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Load a PEM public key model-signing can verify with (EC on a supported curve).

    Raises:
        UsageError: unreadable, not a public key (a private key included), or not such a key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _read_public_pem(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise UsageError(f"{path} is not a PEM public key: {first_line(exc)}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in SUPPORTED_CURVES:
        kind = (
            f"an EC key on {key.curve.name}"
            if isinstance(key, ec.EllipticCurvePublicKey)
            else f"a {type(key).__name__.lstrip('_')}"
        )
        raise UsageError(
            f"public key {path} is {kind}: model-signing verifies EC keys on {', '.join(SUPPORTED_CURVES)}"
        )
    return key


def load_certificates(paths: list[Path]) -> list[x509.Certificate]:
    """Load the PEM certificates in ``paths``, in order (a file may hold several).

    Raises:
        UsageError: a file is unreadable, holds a private key, or holds no PEM certificate.
    """
    from cryptography import x509

    certificates: list[x509.Certificate] = []
    for path in paths:
        data = _read_public_pem(path, "certificate file")
        try:
            certificates.extend(x509.load_pem_x509_certificates(data))
        except ValueError as exc:
            raise UsageError(f"{path} is not a PEM certificate file: {first_line(exc)}") from None
    return certificates
