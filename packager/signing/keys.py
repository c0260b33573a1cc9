"""Signing keys: EC private keys in PEM files (optionally encrypted), keys in a PKCS#11 token,
signing certificates, and finding private keys where they must not be (inside a version dir).

Every loader says precisely what is wrong with a key; no message ever contains a password or PIN.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from packager.errors import UsageError, first_line
from packager.layout import SIGNATURE_FILE, SUPPORTED_CURVES, load_certificates
from packager.layout import _model_signing_compat as compat

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from model_signing._signing.sign_pkcs11 import Signer as Pkcs11Signer

# Where Debian and Fedora keep PKCS#11 modules, for URIs that name a module by module-name.
PKCS11_MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/pkcs11/",
    "/usr/lib/aarch64-linux-gnu/pkcs11/",
    "/usr/lib/x86_64-linux-gnu/softhsm/",
    "/usr/lib/softhsm/",
    "/usr/lib64/pkcs11/",
    "/usr/lib/pkcs11/",
)

PASSWORD_HINT = "set TFPACK_KEY_PASSWORD or pass --prompt-password"

# A PEM private key block of any kind: "PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY".
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
# Key files are small; model weights, which may be large, are not read looking for one.
_KEY_FILE_SCAN_LIMIT = 1 << 20  # read size of the streaming PEM scan
_PEM_HEADER_OVERLAP = 64  # longer than any PEM private key header: one split across reads is found
_DER_KEY_LIMIT = 64 << 10  # a DER private key file is a few KiB at most


def load_private_key(path: Path, password: bytes | None) -> ec.EllipticCurvePrivateKey:
    """Load and decrypt a PEM EC private key on a curve model-signing signs with.

    Raises:
        UsageError: unreadable, not a PEM private key, encrypted without (or with a wrong)
            password, a password for a plain key, not an EC key, or on another curve.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read private key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError:  # cryptography's way of saying "password missing" or "password not needed"
        if password is None:
            raise UsageError(f"private key {path} is encrypted: {PASSWORD_HINT}") from None
        raise UsageError(
            f"private key {path} is not encrypted but a password was given: unset "
            "TFPACK_KEY_PASSWORD (or drop --prompt-password)"
        ) from None
    except ValueError as exc:
        if password is not None and b"ENCRYPTED" in data:
            raise UsageError(f"wrong password for private key {path}") from None
        raise UsageError(f"{path} is not a PEM private key: {first_line(exc)}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(
            f"private key {path} is not an elliptic-curve key: model-signing signs with EC keys "
            f"({', '.join(SUPPORTED_CURVES)})"
        )
    if key.curve.name not in SUPPORTED_CURVES:
        raise UsageError(f"private key {path} is on curve {key.curve.name}: use one of {', '.join(SUPPORTED_CURVES)}")
    return key


def load_signing_certificate(path: Path) -> x509.Certificate:
    """Load the signing certificate and check now what the verifier will require of it.

    Raises:
        UsageError: not a PEM certificate, or neither digitalSignature nor codeSigning usage.
    """
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    certificate = load_certificates([path])[0]
    extensions = certificate.extensions
    try:
        digital_signature = extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    except x509.ExtensionNotFound:
        digital_signature = False
    try:
        code_signing = (
            ExtendedKeyUsageOID.CODE_SIGNING in extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        )
    except x509.ExtensionNotFound:
        code_signing = False
    if not (digital_signature or code_signing):
        raise UsageError(
            f"certificate {path} cannot sign: it needs the digitalSignature key usage or the "
            "codeSigning extended key usage"
        )
    return certificate


def open_pkcs11_key(uri: str, pin: bytes | None) -> Pkcs11Signer:
    """Log in to the PKCS#11 token of ``uri`` with ``pin`` and return a signer for its key.

    Args:
        uri: RFC 7512 URI of the key, without ``pin-value``.
        pin: the token's PIN, if it needs one. Never part of any message.

    Raises:
        UsageError: not a pkcs11: URI, a URI carrying the PIN, PyKCS11 missing, a wrong PIN, or
            a module, token or key the URI names that cannot be used.
    """
    if not uri.startswith("pkcs11:"):
        raise UsageError(f"--pkcs11-uri must be an RFC 7512 'pkcs11:' URI, not {uri!r}")
    if "pin-value=" in uri:
        raise UsageError(
            "the PKCS#11 URI carries pin-value, which would show the PIN in process lists and logs: "
            f"remove it and {PASSWORD_HINT}, or use pin-source=file:/path"
        )
    try:
        import PyKCS11
    except ImportError:
        raise UsageError("PKCS#11 signing needs the PyKCS11 package: pip install 'PyKCS11>=1.5,<2'") from None

    login_uri = uri
    if pin is not None:
        login_uri += ("&" if "?" in uri else "?") + "pin-value=" + quote(pin.decode(), safe="")
    try:
        return compat.pkcs11_signer(login_uri, PKCS11_MODULE_DIRS)
    except PyKCS11.PyKCS11Error as exc:
        if exc.value == PyKCS11.CKR_PIN_INCORRECT:
            raise UsageError(f"wrong PIN for the PKCS#11 token of {uri}") from None
        reason = str(exc).split(" (")[0]  # "CKR_TOKEN_NOT_PRESENT (0x000000E0)": the name is enough
        raise UsageError(f"PKCS#11 token of {uri} refused: {reason}") from None
    except ValueError as exc:
        # model-signing's messages name the URI part it could not resolve; none contains the PIN.
        hint = f" (if the token needs a PIN, {PASSWORD_HINT})" if pin is None else ""
        raise UsageError(f"cannot use PKCS#11 key {uri}: {first_line(exc) or 'module not found'}{hint}") from None


def certify_pkcs11_key(
    signer: Pkcs11Signer, uri: str, certificate: x509.Certificate, chain: Sequence[x509.Certificate]
) -> None:
    """Make ``signer`` (a token key) record ``certificate`` and ``chain`` in its bundles.

    Raises:
        UsageError: the certificate is not the token key's.
    """
    if certificate.public_key() != compat.pkcs11_public_key(signer):
        raise UsageError(f"the certificate does not belong to PKCS#11 key {uri}: their public keys differ")
    compat.attach_certificate(signer, certificate, chain)


def private_key_files(directory: Path) -> list[Path]:
    """Return the files under ``directory`` that hold a private key.

    A file holds one when a PEM private key block sits anywhere in it, whatever its size (padding
    a key past a size limit must not hide it), or when the whole file parses as a DER private key
    (PKCS#8, encrypted or not, or a bare EC/RSA key).

    Raises:
        UsageError: a file cannot be read.
    """
    found = []
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.name == SIGNATURE_FILE:
            continue
        try:
            if _holds_pem_private_key(path) or (
                path.stat().st_size <= _DER_KEY_LIMIT and _is_der_private_key(path.read_bytes())
            ):
                found.append(path)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return found


def _holds_pem_private_key(path: Path) -> bool:
    """Stream ``path`` for a PEM private key header, chunks overlapping by a header's length."""
    tail = b""
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_KEY_FILE_SCAN_LIMIT), b""):
            if _PEM_PRIVATE_KEY.search(tail + chunk):
                return True
            tail = chunk[-_PEM_HEADER_OVERLAP:]
    return False


def _is_der_private_key(data: bytes) -> bool:
    if not data.startswith(b"\x30"):  # every DER key is a SEQUENCE
        return False
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_der_private_key(data, None)
    except TypeError:  # "password was not given but private key is encrypted": a key all the same
        return True
    except (ValueError, UnsupportedAlgorithm):  # not a key, or one of a kind cryptography cannot load
        return False
    return True
