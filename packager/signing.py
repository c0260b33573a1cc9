"""Sign and verify version dirs with OpenSSF model-signing.

The signature is a standard model-signing bundle at ``VERSION_DIR/model.sig`` covering every other
file of the version dir, so the reference CLI (``model_signing verify key|certificate ...``)
accepts it and tfpack accepts the reference CLI's. The bundle records ``model.sig`` among its
ignored paths, which is how the verifier knows to leave the signature itself out again.

Three kinds of signing key:

* an elliptic-curve private key in a PEM file, optionally encrypted (the password comes from the
  caller, never from the command line);
* the same with a signing certificate and its chain, verified later against a root of trust;
* a key inside a PKCS#11 token (an HSM, or SoftHSM), addressed by an RFC 7512 ``pkcs11:`` URI,
  with or without a certificate.

Verification fails (VerificationError, exit 3) with a message that names what failed: the
modified, added or missing files, a signature by another key or certificate authority, an
unsigned model, files the signature leaves out, or a signed provenance statement
(:mod:`packager.provenance`) whose subject is not the signed files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import MethodType
from typing import Any
from urllib.parse import quote

from packager.errors import UsageError, VerificationError, first_line
from packager.layout import SIGNATURE_FILE, is_version_dir
from packager.progress import SILENT, Progress
from packager.provenance import check_statement_subject

# The curves model-signing accepts (those of Sigstore's protobuf specs).
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")

# Where Debian and Fedora keep PKCS#11 modules, for URIs that name a module by module-name.
PKCS11_MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/pkcs11/",
    "/usr/lib/aarch64-linux-gnu/pkcs11/",
    "/usr/lib/x86_64-linux-gnu/softhsm/",
    "/usr/lib/softhsm/",
    "/usr/lib64/pkcs11/",
    "/usr/lib/pkcs11/",
)

_PASSWORD_HINT = "set TFPACK_KEY_PASSWORD or pass --prompt-password"

# A PEM private key block of any kind: "PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY".
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
# Key files are small; model weights, which may be large, are not read looking for one.
_KEY_FILE_SCAN_LIMIT = 1 << 20  # read size of the streaming PEM scan
_DER_KEY_LIMIT = 64 << 10  # a DER private key file is a few KiB at most


@dataclass(frozen=True)
class SignResult:
    """What ``sign`` wrote."""

    version_dir: Path
    signature: Path
    digest: str  # sha256 over the signed manifest, as recorded in the bundle's subject
    files: int
    signer: str  # "key", "certificate", "pkcs11" or "pkcs11-certificate"

    def to_json(self) -> dict[str, Any]:
        return {
            "version_dir": str(self.version_dir),
            "signature": str(self.signature),
            "digest": f"sha256:{self.digest}",
            "files": self.files,
            "signer": self.signer,
        }


@dataclass(frozen=True)
class VerifyResult:
    """A successful verification."""

    version_dir: Path
    digest: str
    files: int

    def to_json(self) -> dict[str, Any]:
        return {
            "version_dir": str(self.version_dir),
            "verified": True,
            "digest": f"sha256:{self.digest}",
            "files": self.files,
        }


def hashing_config() -> Any:
    """The model-signing hashing configuration of every tfpack signature.

    model.sig lives inside the dir it signs; model-signing's CLI leaves it out by itself, the API
    does not, so it is named here (and recorded in the bundle for the verifier). Unlike the
    reference CLI, git files are not left out: nothing in a version dir goes unsigned.
    """
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[Path(SIGNATURE_FILE)], ignore_git_paths=False)


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
        version_dir: a SavedModel version dir; sign it after everything else is written into it.
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

    Raises:
        UsageError: missing paths, an unreadable, unsupported or encrypted key without (or with
            a wrong) password, a certificate that does not belong to the key or cannot sign, an
            unusable PKCS#11 token or key, a failing op scan, a provenance allowing ops the
            signer did not vouch for.
    """
    version_dir = _check_version_dir(version_dir)
    if (private_key is None) == (pkcs11_uri is None):
        raise UsageError("give exactly one signing key: --key KEY.pem or --pkcs11-uri URI")
    _refuse_private_keys(version_dir)
    if chain and certificate is None:
        raise UsageError("a certificate chain goes with a signing certificate (--cert)")
    signing_certificate = None
    trust_chain: list[Any] = []
    if certificate is not None:
        signing_certificate = _load_signing_certificate(_require_file(certificate, "certificate"))
        trust_chain = load_certificates([_require_file(c, "chain certificate") for c in chain or []])
    if pkcs11_uri is not None:
        signer = _pkcs11_signer(pkcs11_uri, password, signing_certificate, trust_chain)
        kind = "pkcs11" if certificate is None else "pkcs11-certificate"
    else:
        assert private_key is not None
        key = _load_private_key(_require_file(private_key, "private key"), password)
        signer = _key_signer(key, private_key, signing_certificate, certificate, trust_chain)
        kind = "key" if certificate is None else "certificate"
    # After the signer is made: TensorFlow (which the scan imports) loaded before a PKCS#11
    # module crashes the process (their native libraries clash); loaded after, both work.
    _refuse_failed_scan(version_dir, allowed_ops)

    signature_path = version_dir / SIGNATURE_FILE
    temporary = version_dir.parent / f".{version_dir.name}.{SIGNATURE_FILE}.tmp"
    progress.step(f"hashing and signing {version_dir}")
    # Write beside the dir and rename, so a reader never sees a half-written signature and a
    # failure leaves any previous model.sig untouched.
    try:
        _sign_with(signer, version_dir, temporary)
        temporary.replace(signature_path)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"signing {version_dir} failed: {first_line(exc)}") from None
    except OSError as exc:
        raise UsageError(
            f"cannot write {signature_path} (via {temporary.name} beside it): {exc.strerror}"
        ) from None
    finally:
        temporary.unlink(missing_ok=True)
    statement = read_signed_statement(signature_path)
    return SignResult(
        version_dir=version_dir,
        signature=signature_path,
        digest=_subject_digest(statement),
        files=len(_resources(statement)),
        signer=kind,
    )


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

    Raises:
        UsageError: the dir, key or chain do not exist or are not PEM.
        VerificationError: no signature, a signature by another key or by a certificate that
            does not chain to ``certificate_chain``, any modified, added or missing file, or files
            the signature leaves out; the message names them.
    """
    version_dir = _check_version_dir(version_dir)
    signature_path = version_dir / SIGNATURE_FILE
    if not signature_path.is_file():
        raise VerificationError(f"{version_dir} is unsigned: {SIGNATURE_FILE} is missing")
    if certificate_chain:
        chain = [_require_file(c, "certificate chain") for c in certificate_chain]
        load_certificates(chain)  # a readable error for a non-PEM chain, before model-signing
        config = _verifying_config().use_certificate_verifier(certificate_chain=chain)
        trust = "the certificate chain " + ", ".join(str(c) for c in chain)
    elif public_key is not None:
        key_path = _require_file(public_key, "public key")
        load_ec_public_key(key_path)
        config = _verifying_config().use_elliptic_key_verifier(public_key=key_path)
        trust = f"public key {key_path}"
    else:
        raise UsageError("verification needs --public-key PUB.pem or --cert-chain CHAIN.pem")

    links = sorted(str(p) for p in version_dir.rglob("*") if p.is_symlink())
    if links:
        # model-signing refuses them too, but in words that read like a wrong key.
        raise VerificationError(
            f"{version_dir} holds symlinks ({', '.join(links[:3])}): a signed version dir holds only real "
            "files; replace each link with the file it points to and sign again"
        )
    bundle, statement = _read_bundle(signature_path)
    signed_with_certificate = "x509CertificateChain" in bundle.get("verificationMaterial", {})
    if signed_with_certificate and not certificate_chain:
        raise VerificationError(
            f"{signature_path} was signed with a certificate: verify it with --cert-chain CHAIN.pem"
        )
    if certificate_chain and not signed_with_certificate:
        raise VerificationError(
            f"{signature_path} was signed with a bare key, not a certificate: verify it with "
            "--public-key PUB.pem"
        )
    progress.step(f"verifying {version_dir}")
    try:
        config.verify(version_dir, signature_path)
    except ValueError as exc:
        message = str(exc)
        if message.startswith("Signature mismatch"):
            raise VerificationError(
                f"{version_dir} does not match its signature: {_describe_changes(version_dir, statement)}"
            ) from None
        if message.startswith("Signing certificate cannot be used for signing"):
            raise VerificationError(
                f"{signature_path} was signed with a certificate whose key usage does not allow "
                "signing (needs digitalSignature or the codeSigning extended key usage)"
            ) from None
        if message.startswith("Key mismatch"):
            raise VerificationError(f"{signature_path} was signed by another key, not {trust}") from None
        raise VerificationError(f"{signature_path} was not signed by {trust}: {first_line(exc)}") from None
    except Exception as exc:  # model-signing raises OpenSSL's and cryptography's own types
        raise VerificationError(_describe_failure(exc, signature_path, trust)) from None
    _refuse_unsigned_files(version_dir, statement)
    check_statement_subject(version_dir, _resources(statement))
    return VerifyResult(
        version_dir=version_dir,
        digest=_subject_digest(statement),
        files=len(_resources(statement)),
    )


def signed_digest(version_dir: Path) -> str:
    """Return ``sha256:<hex>``, the model digest recorded in ``version_dir/model.sig``.

    This reads the bundle without verifying it; call :func:`verify` first when it matters.
    """
    signature_path = version_dir / SIGNATURE_FILE
    if not signature_path.is_file():
        raise VerificationError(f"{version_dir} is unsigned: {SIGNATURE_FILE} is missing")
    return f"sha256:{_subject_digest(read_signed_statement(signature_path))}"


def read_signed_statement(signature_path: Path) -> dict[str, Any]:
    """Decode the in-toto statement inside a model-signing bundle (no verification)."""
    return _read_bundle(signature_path)[1]


def _read_bundle(signature_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bundle's JSON and the in-toto statement in its DSSE envelope (no verification)."""
    try:
        bundle = json.loads(signature_path.read_text())
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VerificationError(
            f"{signature_path} is not a model-signing bundle: {first_line(exc)}"
        ) from None
    # Fields read before model-signing checks the bundle must have the types the format gives
    # them: a garbage bundle is a failed verification (exit 3), never a crash.
    if not isinstance(bundle.get("verificationMaterial", {}), dict) or not isinstance(statement, dict):
        raise VerificationError(f"{signature_path} is not a model-signing bundle: malformed verificationMaterial or statement")
    return bundle, statement


# --- signing keys -----------------------------------------------------------------------------


def _load_private_key(path: Path, password: bytes | None) -> Any:
    """Load and decrypt a PEM EC private key, saying precisely what is wrong with it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError:  # cryptography's way of saying "password missing" or "password not needed"
        if password is None:
            raise UsageError(f"private key {path} is encrypted: {_PASSWORD_HINT}") from None
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
        raise UsageError(
            f"private key {path} is on curve {key.curve.name}: use one of {', '.join(SUPPORTED_CURVES)}"
        )
    return key


def _read_public_pem(path: Path, what: str) -> bytes:
    """The bytes of a file that must hold only public material (a key or certificates)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        raise UsageError(f"{path} is a private key, not a {what}: pass the {what} (private keys never go into an image or a verifier)")
    return data


def load_ec_public_key(path: Path) -> Any:
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
        kind = f"an EC key on {key.curve.name}" if isinstance(key, ec.EllipticCurvePublicKey) else f"a {type(key).__name__.lstrip('_')}"
        raise UsageError(
            f"public key {path} is {kind}: model-signing verifies EC keys on {', '.join(SUPPORTED_CURVES)}"
        )
    return key


def load_certificates(paths: list[Path]) -> list[Any]:
    """Load the PEM certificates in ``paths`` (x509.Certificate objects, in order).

    Raises:
        UsageError: a file is unreadable, holds a private key, or holds no PEM certificate.
    """
    from cryptography import x509

    certificates = []
    for path in paths:
        data = _read_public_pem(path, "certificate file")
        try:
            certificates.extend(x509.load_pem_x509_certificates(data))
        except ValueError as exc:
            raise UsageError(f"{path} is not a PEM certificate file: {first_line(exc)}") from None
    return certificates


def _load_signing_certificate(path: Path) -> Any:
    """Load the signing certificate and check now what the verifier will require of it."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    certificate = load_certificates([path])[0]
    extensions = certificate.extensions
    try:
        digital_signature = extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    except x509.ExtensionNotFound:
        digital_signature = False
    try:
        code_signing = ExtendedKeyUsageOID.CODE_SIGNING in extensions.get_extension_for_class(
            x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        code_signing = False
    if not (digital_signature or code_signing):
        raise UsageError(
            f"certificate {path} cannot sign: it needs the digitalSignature key usage or the "
            "codeSigning extended key usage"
        )
    return certificate


def private_key_files(directory: Path) -> list[Path]:
    """Files under ``directory`` that hold a private key: a PEM private key block anywhere in a
    file of any size (padding a key past a size limit must not hide it), or a whole file that
    parses as a DER private key (PKCS#8, encrypted or not, or a bare EC/RSA key).

    Raises:
        UsageError: a file cannot be read.
    """
    found = []
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.name == SIGNATURE_FILE:
            continue
        try:
            if _holds_pem_private_key(path) or (path.stat().st_size <= _DER_KEY_LIMIT and _is_der_private_key(path.read_bytes())):
                found.append(path)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return found


def _holds_pem_private_key(path: Path) -> bool:
    """Stream ``path`` for a PEM private key header, chunks overlapping by a header's length."""
    overlap = 64
    tail = b""
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_KEY_FILE_SCAN_LIMIT), b""):
            if _PEM_PRIVATE_KEY.search(tail + chunk):
                return True
            tail = chunk[-overlap:]
    return False


def _is_der_private_key(data: bytes) -> bool:
    if not data.startswith(b"\x30"):  # every DER key is a SEQUENCE
        return False
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_der_private_key(data, None)
    except TypeError:  # "password was not given but private key is encrypted": a key all the same
        return True
    except Exception:  # not a key: cryptography raises ValueError, UnsupportedAlgorithm, ...
        return False
    return True


def _refuse_failed_scan(version_dir: Path, allowed: frozenset[str]) -> None:
    """Refuse to sign a version dir whose op scan fails: a signature is a promise that what the
    image serves was scanned. Only the signer decides what is allowed (``allowed``): the
    provenance inside the dir is the caller's file until it is signed, so one that allows more
    (which ``tfpack build`` would then honour) is refused too."""
    from packager.graph.op_scan import scan_saved_model
    from packager.provenance import recorded_allowed_ops

    unvouched = sorted(recorded_allowed_ops(version_dir) - allowed)
    if unvouched:
        raise UsageError(
            f"{version_dir}'s provenance allows {', '.join(unvouched)} on the serving path: sign it with "
            f"--allow-op {' --allow-op '.join(unvouched)} to vouch for that, or reconvert without --allow-op"
        )
    if not any((version_dir / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")):
        return  # a TFLite-only dir: nothing for the TensorFlow op scan to read
    result = scan_saved_model(version_dir, allowed)
    if result.blocking:
        raise UsageError(f"{result.summary()}: 'tfpack sign' refuses a model whose op scan fails "
                         f"(reconvert it, or vouch for each op with --allow-op {result.blocking[0].op_type})")


def _refuse_private_keys(version_dir: Path) -> None:
    """Refuse to sign a version dir holding a private key: it would be signed and shipped."""
    keys = private_key_files(version_dir)
    if keys:
        raise UsageError(
            f"{keys[0]} is a private key inside the version dir: move it out (it would be signed "
            "and shipped with the model)"
        )


def _key_signer(key: Any, key_path: Path, certificate: Any, certificate_path: Path | None,
                chain: list[Any]) -> Any:
    """model-signing's key or certificate signer around a key already loaded and decrypted.

    model-signing's signers read the key from a path in their constructor, and its certificate
    signer cannot decrypt one. Loading it here keeps the decrypted key in memory only and gives
    precise errors; everything else the signers do reads just these attributes (model-signing is
    pinned to 1.1.x, and the tests sign and verify with both).
    """
    from model_signing._signing import sign_certificate, sign_ec_key

    if certificate is None:
        signer = object.__new__(sign_ec_key.Signer)
    else:
        if certificate.public_key() != key.public_key():
            raise UsageError(
                f"certificate {certificate_path} does not belong to private key {key_path}: their "
                "public keys differ"
            )
        signer = object.__new__(sign_certificate.Signer)
        signer._signing_certificate = certificate
        signer._trust_chain = chain
    signer._private_key = key
    return signer


def _pkcs11_signer(uri: str, pin: bytes | None, certificate: Any, chain: list[Any]) -> Any:
    """model-signing's PKCS#11 signer for ``uri``, logged in with ``pin``, with a certificate or not."""
    if not uri.startswith("pkcs11:"):
        raise UsageError(f"--pkcs11-uri must be an RFC 7512 'pkcs11:' URI, not {uri!r}")
    if "pin-value=" in uri:
        raise UsageError(
            "the PKCS#11 URI carries pin-value, which would show the PIN in process lists and logs: "
            f"remove it and {_PASSWORD_HINT}, or use pin-source=file:/path"
        )
    try:
        from model_signing._signing import sign_pkcs11
        import PyKCS11
    except ImportError:
        raise UsageError("PKCS#11 signing needs the PyKCS11 package: pip install 'PyKCS11>=1.5,<2'") from None

    login_uri = uri
    if pin is not None:
        login_uri += ("&" if "?" in uri else "?") + "pin-value=" + quote(pin.decode(), safe="")
    try:
        signer = sign_pkcs11.Signer(login_uri, PKCS11_MODULE_DIRS)
    except PyKCS11.PyKCS11Error as exc:
        reason = str(exc).split(" (")[0]
        if reason == "CKR_PIN_INCORRECT":
            raise UsageError(f"wrong PIN for the PKCS#11 token of {uri}") from None
        raise UsageError(f"PKCS#11 token of {uri} refused: {reason}") from None
    except ValueError as exc:
        # model-signing's messages name the URI part it could not resolve; none contains the PIN.
        hint = f" (if the token needs a PIN, {_PASSWORD_HINT})" if pin is None else ""
        raise UsageError(f"cannot use PKCS#11 key {uri}: {first_line(exc) or 'module not found'}{hint}") from None
    if certificate is not None:
        _attach_certificate(signer, uri, certificate, chain)
    return signer


def _attach_certificate(signer: Any, uri: str, certificate: Any, chain: list[Any]) -> None:
    """Make a PKCS#11 signer emit a certificate-chain bundle, as model-signing's certificate signer does.

    model-signing 1.1.1's own PKCS#11 certificate signer writes the DER certificates unencoded
    where its bundle model wants base64, and fails; its certificate signer's verification
    material is right and reads only these two attributes.
    """
    from model_signing._signing import sign_certificate

    if certificate.public_key() != signer.public_key():
        raise UsageError(f"the certificate does not belong to PKCS#11 key {uri}: their public keys differ")
    signer._signing_certificate = certificate
    signer._trust_chain = chain
    signer._get_verification_material = MethodType(sign_certificate.Signer._get_verification_material, signer)


def _sign_with(signer: Any, version_dir: Path, signature_path: Path) -> None:
    """Hash the version dir and write the signer's bundle (what model-signing's Config.sign does)."""
    from model_signing._signing import signing as signing_payload

    manifest = hashing_config().hash(version_dir)
    signer.sign(signing_payload.Payload(manifest)).write(signature_path)


# --- verification -----------------------------------------------------------------------------


def _verifying_config() -> Any:
    from model_signing import verifying

    return verifying.Config().set_hashing_config(hashing_config())


def _describe_failure(exc: Exception, signature_path: Path, trust: str) -> str:
    """One line for a failure of the signature itself (not of the files it covers)."""
    name = type(exc).__name__
    if name == "InvalidSignature":
        return f"{signature_path} was not signed by {trust}: the signature does not verify with it"
    if name == "X509StoreContextError":
        return f"{signature_path} was signed by a certificate that does not chain to {trust}: {first_line(exc)}"
    return f"{signature_path} could not be verified with {trust}: {name}: {first_line(exc)}"


def _refuse_unsigned_files(version_dir: Path, statement: dict[str, Any]) -> None:
    """Fail when files sit under paths the bundle leaves out (other than model.sig itself).

    Bundles made by the reference CLI leave out git files (.git/, .gitignore, ...); a version dir
    that is served must not carry anything unsigned.
    """
    ignored = set(statement.get("predicate", {}).get("serialization", {}).get("ignore_paths", []))
    unsigned = sorted(
        name for name in ignored - {SIGNATURE_FILE} if (version_dir / name.rstrip("/")).exists()
    )
    if unsigned:
        raise VerificationError(
            f"{version_dir} holds files its signature leaves out: {', '.join(unsigned)}; remove them"
        )


def _describe_changes(version_dir: Path, statement: dict[str, Any]) -> str:
    """Name the modified, added and missing files relative to the signed manifest.

    Only called after model-signing verified the envelope's signature and found a mismatch, so the
    manifest read here is authentic; model-signing's own message prints raw digests instead.
    """
    signed = {r["name"]: r["digest"] for r in _resources(statement)}
    ignored = set(statement.get("predicate", {}).get("serialization", {}).get("ignore_paths", []))
    actual: dict[str, str] = {}
    for path in sorted(version_dir.rglob("*")):
        relative = path.relative_to(version_dir).as_posix()
        if path.is_dir() or relative.split("/")[0] in ignored or relative in ignored:
            continue
        actual[relative] = _file_sha256(path)
    modified = sorted(n for n in signed.keys() & actual.keys() if signed[n] != actual[n])
    added = sorted(actual.keys() - signed.keys())
    missing = sorted(signed.keys() - actual.keys())
    parts = [
        f"{label}: {', '.join(names)}"
        for label, names in (("modified", modified), ("added", added), ("missing", missing))
        if names
    ]
    return "; ".join(parts) or "the file set differs from the signed manifest"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- shared -----------------------------------------------------------------------------------


def _check_version_dir(version_dir: Path) -> Path:
    if not version_dir.is_dir():
        raise UsageError(f"{version_dir} is not a directory: give a version dir such as models/NAME/1")
    if not is_version_dir(version_dir):
        raise UsageError(
            f"{version_dir} holds no saved_model.pb: give a version dir written by 'tfpack convert'"
        )
    return version_dir.resolve()


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist or is not a file")
    return path.resolve()


def _resources(statement: dict[str, Any]) -> list[dict[str, Any]]:
    return list(statement.get("predicate", {}).get("resources", []))


def _subject_digest(statement: dict[str, Any]) -> str:
    try:
        return str(statement["subject"][0]["digest"]["sha256"])
    except (KeyError, IndexError, TypeError):
        raise VerificationError("the signature bundle has no sha256 subject digest") from None
