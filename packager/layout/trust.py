"""The trust check: whether a version dir is exactly what its signature covers, signed by whom it
should be. ``tfpack verify`` and ``tfpack build`` run it, and so do the serving image's
entrypoint (every version dir, before the server starts) and tfpack-model-server given
``--tfpack_trust_dir`` (each version dir again right before it loads, so a dir that appears later,
by a file-system poll or a reload, is never loaded unverified).

A trust directory (``/etc/tfpack/trust`` in an image) holds either ``public_key.pem`` or
``chain/NN.pem`` (a certificate chain certificate signatures must chain to).

Verification fails (VerificationError, exit 3) with a message that names what failed: the
modified, added or missing files, a signature by another key or certificate authority, an
unsigned model, files the signature leaves out, or a signed provenance statement whose subject is
not the signed files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.errors import UsageError, VerificationError, first_line
from packager.layout._model_signing_compat import VerificationFailure, verification_failure
from packager.layout.artifacts import read_provenance_statement
from packager.layout.bundle import Bundle, read_bundle
from packager.layout.digests import file_sha256
from packager.layout.paths import CHAIN_DIR, PUBLIC_KEY_FILE, SIGNATURE_FILE, STATEMENT_FILE
from packager.layout.trust_material import load_certificates, load_ec_public_key, require_file
from packager.layout.versions import require_version_dir

if TYPE_CHECKING:
    from model_signing import hashing, verifying


@dataclass(frozen=True)
class VerifiedModel:
    """A version dir whose signature verified, and what the signature covers."""

    version_dir: Path  # resolved
    digest: str  # hex sha256 model digest, the bundle's subject
    files: int  # how many files the signature covers


def hashing_config() -> hashing.Config:
    """Return the model-signing hashing configuration of every tfpack signature.

    model.sig lives inside the dir it signs; model-signing's CLI leaves it out by itself, the API
    does not, so it is named here (and recorded in the bundle for the verifier). Unlike the
    reference CLI, git files are not left out: nothing in a version dir goes unsigned.
    """
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[Path(SIGNATURE_FILE)], ignore_git_paths=False)


def verify_version_dir(
    version_dir: Path,
    public_key: Path | None = None,
    *,
    certificate_chain: Sequence[Path] | None = None,
    on_verify: Callable[[Path], None] | None = None,
) -> VerifiedModel:
    """Verify ``version_dir`` against its ``model.sig`` with a public key or a certificate chain.

    Args:
        version_dir: the signed version dir.
        public_key: PEM public key of the signing key.
        certificate_chain: PEM certificates to trust (the root, and intermediates if the bundle
            does not carry them), instead of ``public_key``.
        on_verify: called with the resolved dir when the cryptographic check starts (it hashes
            every file, which takes a while for a large model).

    Raises:
        UsageError: the dir, key or chain do not exist or are not PEM; neither key nor chain.
        VerificationError: no signature, a signature by another key or by a certificate that
            does not chain to ``certificate_chain``, any modified, added or missing file, or files
            the signature leaves out; the message names them.
    """
    version_dir = require_version_dir(version_dir)
    signature_path = version_dir / SIGNATURE_FILE
    if not signature_path.is_file():
        raise VerificationError(f"{version_dir} is unsigned: {SIGNATURE_FILE} is missing")
    config, trust = _verifying_config(public_key, certificate_chain)
    links = sorted(str(p) for p in version_dir.rglob("*") if p.is_symlink())
    if links:
        # model-signing refuses them too, but in words that read like a wrong key.
        raise VerificationError(
            f"{version_dir} holds symlinks ({', '.join(links[:3])}): a signed version dir holds only real "
            "files; replace each link with the file it points to and sign again"
        )
    bundle = read_bundle(signature_path)
    if bundle.signed_with_certificate and not certificate_chain:
        raise VerificationError(
            f"{signature_path} was signed with a certificate: verify it with --cert-chain CHAIN.pem"
        )
    if certificate_chain and not bundle.signed_with_certificate:
        raise VerificationError(
            f"{signature_path} was signed with a bare key, not a certificate: verify it with --public-key PUB.pem"
        )
    if on_verify is not None:
        on_verify(version_dir)
    _verify_signature(config, version_dir, bundle, trust)
    _refuse_unsigned_files(version_dir, bundle)
    check_statement_subject(version_dir, bundle.resources)
    return VerifiedModel(version_dir=version_dir, digest=bundle.subject_digest, files=len(bundle.resources))


def _verifying_config(
    public_key: Path | None, certificate_chain: Sequence[Path] | None
) -> tuple[verifying.Config, str]:
    """model-signing's verifying configuration for the trust given, and the trust in words."""
    from model_signing import verifying

    config = verifying.Config().set_hashing_config(hashing_config())
    if certificate_chain:
        chain = [require_file(c, "certificate chain") for c in certificate_chain]
        load_certificates(chain)  # a readable error for a non-PEM chain, before model-signing
        trust = "the certificate chain " + ", ".join(str(c) for c in chain)
        return config.use_certificate_verifier(certificate_chain=chain), trust
    if public_key is not None:
        key_path = require_file(public_key, "public key")
        load_ec_public_key(key_path)
        return config.use_elliptic_key_verifier(public_key=key_path), f"public key {key_path}"
    raise UsageError("verification needs --public-key PUB.pem or --cert-chain CHAIN.pem")


def _verify_signature(config: verifying.Config, version_dir: Path, bundle: Bundle, trust: str) -> None:
    """Run model-signing's verification; a VerificationError naming what failed if it fails."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from OpenSSL.crypto import Error as OpenSSLError
    from OpenSSL.crypto import X509StoreContextError

    signature_path = bundle.path
    try:
        config.verify(version_dir, signature_path)
    except InvalidSignature:
        raise VerificationError(
            f"{signature_path} was not signed by {trust}: the signature does not verify with it"
        ) from None
    except X509StoreContextError as exc:
        raise VerificationError(
            f"{signature_path} was signed by a certificate that does not chain to {trust}: {first_line(exc)}"
        ) from None
    except ValueError as exc:
        raise VerificationError(_describe_value_error(exc, version_dir, bundle, trust)) from None
    except OSError as exc:
        # A file that cannot be read while it is hashed (permissions, removed mid-check): nothing
        # unreadable is ever served, and the entrypoint goes on to list every other failure.
        raise VerificationError(
            f"{version_dir} could not be read to verify it: {exc.strerror or type(exc).__name__}"
            f"{f' ({exc.filename})' if exc.filename else ''}"
        ) from None
    except (KeyError, IndexError, TypeError, AttributeError, UnsupportedAlgorithm, OpenSSLError) as exc:
        # A bundle model-signing cannot take apart: a failed verification, not a crash.
        raise VerificationError(
            f"{signature_path} could not be verified with {trust}: {type(exc).__name__}: {first_line(exc)}"
        ) from None


def _describe_value_error(error: ValueError, version_dir: Path, bundle: Bundle, trust: str) -> str:
    failure = verification_failure(error)
    if failure is VerificationFailure.MANIFEST_MISMATCH:
        return f"{version_dir} does not match its signature: {_describe_changes(version_dir, bundle)}"
    if failure is VerificationFailure.CERTIFICATE_CANNOT_SIGN:
        return (
            f"{bundle.path} was signed with a certificate whose key usage does not allow signing (needs "
            "digitalSignature or the codeSigning extended key usage)"
        )
    if failure is VerificationFailure.KEY_MISMATCH:
        return f"{bundle.path} was signed by another key, not {trust}"
    return f"{bundle.path} was not signed by {trust}: {first_line(error)}"


def _refuse_unsigned_files(version_dir: Path, bundle: Bundle) -> None:
    """Fail when files sit under paths the bundle leaves out (other than model.sig itself).

    Bundles made by the reference CLI leave out git files (.git/, .gitignore, ...); a version dir
    that is served must not carry anything unsigned.
    """
    unsigned = sorted(
        name for name in bundle.ignored_paths - {SIGNATURE_FILE} if (version_dir / name.rstrip("/")).exists()
    )
    if unsigned:
        raise VerificationError(
            f"{version_dir} holds files its signature leaves out: {', '.join(unsigned)}; remove them"
        )


def _describe_changes(version_dir: Path, bundle: Bundle) -> str:
    """Name the modified, added and missing files relative to the signed manifest.

    Only called after model-signing verified the envelope's signature and found a mismatch, so the
    manifest read here is authentic; model-signing's own message prints raw digests instead.
    """
    signed = {r["name"]: r["digest"] for r in bundle.resources}
    ignored = bundle.ignored_paths
    actual: dict[str, str] = {}
    for path in sorted(version_dir.rglob("*")):
        relative = path.relative_to(version_dir).as_posix()
        if path.is_dir() or relative.split("/")[0] in ignored or relative in ignored:
            continue
        actual[relative] = file_sha256(path)
    modified = sorted(n for n in signed.keys() & actual.keys() if signed[n] != actual[n])
    added = sorted(actual.keys() - signed.keys())
    missing = sorted(signed.keys() - actual.keys())
    parts = [
        f"{label}: {', '.join(names)}"
        for label, names in (("modified", modified), ("added", added), ("missing", missing))
        if names
    ]
    return "; ".join(parts) or "the file set differs from the signed manifest"


def check_statement_subject(version_dir: Path, signed_resources: list[dict[str, Any]]) -> None:
    """Check that the signed provenance statement's subject is the root digest of the signed files.

    Args:
        version_dir: a version dir whose signature was just verified.
        signed_resources: the verified manifest's resources (model-signing's canonical order,
            each {"name", "algorithm", "digest"}), i.e. exactly the files now in the dir.

    Raises:
        VerificationError: the statement is signed but describes other files.
    """
    if not any(r["name"] == STATEMENT_FILE for r in signed_resources):
        return  # a version dir without a statement (older tfpack, or a model signed by hand)
    root = hashlib.sha256()
    for resource in signed_resources:
        if resource["name"] != STATEMENT_FILE:
            root.update(bytes.fromhex(resource["digest"]))
    try:
        recorded = read_provenance_statement(version_dir)["subject"][0]["digest"]["sha256"]
    except (UsageError, KeyError, IndexError, TypeError) as exc:
        raise VerificationError(f"the signed provenance statement is unreadable: {exc}") from None
    if recorded != root.hexdigest():
        raise VerificationError(
            f"{version_dir / STATEMENT_FILE} describes other model files (subject sha256:{recorded}, "
            f"files sha256:{root.hexdigest()}): the model changed after its provenance was written"
        )


@dataclass(frozen=True)
class Trust:
    """What a version dir's signature must verify against, and whether unsigned dirs may load."""

    public_key: Path | None
    cert_chain: list[Path] = field(default_factory=list)
    allow_unsigned: bool = False
    # What an unsigned dir's refusal tells the reader to do: the image's entrypoint and
    # `tfpack build` (which names its own flags) run the same check.
    unsigned_remedy: str = "this image serves signed models only"

    @classmethod
    def from_dir(cls, trust_dir: Path, *, allow_unsigned: bool = False) -> Trust:
        """Read a trust directory.

        Raises:
            VerificationError: it holds neither a key nor a chain and unsigned dirs are not
                allowed: nothing could ever verify.
        """
        key = trust_dir / PUBLIC_KEY_FILE
        chain_dir = trust_dir / CHAIN_DIR
        chain = sorted(chain_dir.glob("*.pem")) if chain_dir.is_dir() else []
        public_key = None if chain else (key if key.is_file() else None)
        if public_key is None and not chain and not allow_unsigned:
            raise VerificationError(
                f"{trust_dir} holds neither {PUBLIC_KEY_FILE} nor {CHAIN_DIR}/*.pem: nothing can be verified"
            )
        return cls(public_key=public_key, cert_chain=chain, allow_unsigned=allow_unsigned)

    @property
    def has_material(self) -> bool:
        """Whether there is a key or a chain to verify signatures with."""
        return self.public_key is not None or bool(self.cert_chain)

    def check(self, version_dir: Path) -> VerifiedModel | None:
        """Verify ``version_dir``; what was verified, or None when unsigned and that is allowed.

        A dir that carries a signature is always verified: allow-unsigned never lets a tampered
        model load.

        Raises:
            VerificationError: the signature does not verify, the dir is unsigned and unsigned
                dirs are not allowed, or it is signed and there is nothing to verify it with.
            UsageError: the dir's layout is unusable (neither saved_model.pb nor model.tflite).
        """
        if not (version_dir / SIGNATURE_FILE).is_file():
            if self.allow_unsigned:
                return None
            raise VerificationError(f"{version_dir} is unsigned ({SIGNATURE_FILE} is missing): {self.unsigned_remedy}")
        if not self.has_material:
            raise VerificationError(
                f"{version_dir} is signed, but there is no public key or certificate chain to verify it with"
            )
        return verify_version_dir(
            version_dir,
            None if self.cert_chain else self.public_key,
            certificate_chain=self.cert_chain or None,
        )
