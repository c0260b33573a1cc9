"""Every use of model-signing's internals, and every reading of its error messages, in one place.

tfpack uses model-signing's public API (``model_signing.hashing``, ``model_signing.verifying``)
wherever it can. What that API cannot do is done here and only here, against the release named by
:data:`MODEL_SIGNING_VERSION`; ``tests/signing/test_compat.py`` exercises each use against the
installed model-signing and fails, naming this module, when an upgrade breaks one:

* signing with a key tfpack loaded and decrypted itself: model-signing's key and certificate
  signers read the key from a path in their constructors, and the certificate signer cannot
  decrypt one, so the signer objects are made without their constructors and given the
  attributes their ``sign`` reads (``_private_key``, ``_signing_certificate``, ``_trust_chain``);
* signing with a key in a PKCS#11 token (``model_signing._signing.sign_pkcs11``), and with a
  certificate for it: 1.1.1's own PKCS#11 certificate signer writes the DER certificates
  unencoded where its bundle wants base64, so the certificate signer's verification material is
  borrowed instead;
* hashing a version dir and signing the manifest (``model_signing._signing.signing.Payload``),
  what model-signing's ``signing.Config.sign`` does with a signer it made itself;
* verification failures model-signing reports as a bare ``ValueError``, told apart only by the
  start of their message (:func:`verification_failure`).

This module lives in :mod:`packager.layout` because the trust check the serving image runs reads
those messages too, and ``serving/`` may import nothing else from ``packager/``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path
from types import MethodType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from model_signing import hashing
    from model_signing._signing.sign_pkcs11 import Signer as Pkcs11Signer
    from model_signing._signing.signing import Signer

# The model-signing release this module was written and tested against: the serving images pin
# it (pyproject.toml declares the range a tfpack install accepts).
MODEL_SIGNING_VERSION = "1.1.1"


class VerificationFailure(enum.Enum):
    """What a ``ValueError`` from model-signing's ``verifying.Config.verify`` means."""

    MANIFEST_MISMATCH = "the files differ from the verified manifest"
    KEY_MISMATCH = "the bundle names another public key"
    CERTIFICATE_CANNOT_SIGN = "the signing certificate's key usage does not allow signing"
    OTHER = "any other failure (a malformed bundle, an unexpected payload)"


# model-signing 1.1.x raises these as bare ValueErrors; the start of the message is all that
# tells them apart (verifying.Config.verify, sign_ec_key.Verifier._verify_bundle,
# sign_certificate.Verifier._verify_certificates).
_FAILURE_PREFIXES = (
    ("Signature mismatch", VerificationFailure.MANIFEST_MISMATCH),
    ("Key mismatch", VerificationFailure.KEY_MISMATCH),
    ("Signing certificate cannot be used for signing", VerificationFailure.CERTIFICATE_CANNOT_SIGN),
)


def verification_failure(error: ValueError) -> VerificationFailure:
    """Tell what a ``ValueError`` raised by model-signing's verification means.

    Args:
        error: the error ``verifying.Config.verify`` raised.

    Returns:
        The failure its message names; OTHER when it names none of them.
    """
    message = str(error)
    return next(
        (failure for prefix, failure in _FAILURE_PREFIXES if message.startswith(prefix)),
        VerificationFailure.OTHER,
    )


def key_signer(
    private_key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate | None = None,
    chain: Sequence[x509.Certificate] = (),
) -> Signer:
    """Return model-signing's key signer (or certificate signer, given ``certificate``) for a loaded key.

    The key stays in memory only; ``certificate`` must belong to it and ``chain`` lists the
    intermediate and root certificates to record in the bundle.
    """
    from model_signing._signing import sign_certificate, sign_ec_key

    if certificate is None:
        signer = object.__new__(sign_ec_key.Signer)
    else:
        signer = object.__new__(sign_certificate.Signer)
        signer._signing_certificate = certificate
        signer._trust_chain = list(chain)
    signer._private_key = private_key
    return signer


def pkcs11_signer(uri: str, module_dirs: Sequence[str]) -> Pkcs11Signer:
    """Return model-signing's PKCS#11 signer for ``uri``, logged in to its token.

    Args:
        uri: an RFC 7512 URI, carrying ``pin-value`` when the token needs a PIN.
        module_dirs: where to look for a module the URI names by ``module-name``.

    Raises:
        ImportError: PyKCS11 is not installed.
        PyKCS11.PyKCS11Error: the token refused (e.g. a wrong PIN).
        ValueError: the URI names no usable module, token or key (the message says which part).
    """
    from model_signing._signing import sign_pkcs11

    return sign_pkcs11.Signer(uri, list(module_dirs))


def pkcs11_public_key(signer: Pkcs11Signer) -> ec.EllipticCurvePublicKey:
    """Return the public key of the token key a PKCS#11 signer signs with."""
    public_key: ec.EllipticCurvePublicKey = signer.public_key()
    return public_key


def attach_certificate(signer: Pkcs11Signer, certificate: x509.Certificate, chain: Sequence[x509.Certificate]) -> None:
    """Make a PKCS#11 signer emit a certificate-chain bundle, as model-signing's certificate signer does.

    ``certificate`` must belong to the token's key; the certificate signer's verification
    material reads only these two attributes.
    """
    from model_signing._signing import sign_certificate

    signer._signing_certificate = certificate  # type: ignore[attr-defined]  # read by the borrowed method
    signer._trust_chain = list(chain)  # type: ignore[attr-defined]  # read by the borrowed method
    signer._get_verification_material = MethodType(  # type: ignore[method-assign]  # the borrowed method
        sign_certificate.Signer._get_verification_material, signer
    )


def sign_files(signer: Signer, config: hashing.Config, model_dir: Path, signature_path: Path) -> None:
    """Hash ``model_dir`` with ``config`` and write ``signer``'s bundle to ``signature_path``.

    Raises:
        OSError: a file cannot be read or the bundle cannot be written.
        ValueError, TypeError: model-signing cannot hash or sign (the message says why).
    """
    from model_signing._signing import signing as signing_payload

    manifest = config.hash(model_dir)
    signer.sign(signing_payload.Payload(manifest)).write(signature_path)
