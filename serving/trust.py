"""The trust an image bakes in, and the one check every version dir passes before it is served.

A trust directory (``/etc/tfpack/trust`` in an image) holds either ``public_key.pem`` or
``chain/NN.pem`` (a certificate chain certificate signatures must chain to). The entrypoint checks
every version dir against it before the server starts; tfpack-model-server, given
``--tfpack_trust_dir``, checks each version dir again right before it loads, so a dir that appears
later (a file-system poll, a reload) is never loaded unverified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from packager.errors import VerificationError
from packager.layout import SIGNATURE_FILE

PUBLIC_KEY_FILE = "public_key.pem"
CHAIN_DIR = "chain"


@dataclass(frozen=True)
class Trust:
    """What a version dir's signature must verify against, and whether unsigned dirs may load."""

    public_key: Path | None
    cert_chain: list[Path] = field(default_factory=list)
    allow_unsigned: bool = False

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
                f"{trust_dir} holds neither {PUBLIC_KEY_FILE} nor {CHAIN_DIR}/*.pem: "
                "nothing can be verified"
            )
        return cls(public_key=public_key, cert_chain=chain, allow_unsigned=allow_unsigned)

    @property
    def has_material(self) -> bool:
        return self.public_key is not None or bool(self.cert_chain)

    def check(self, version_dir: Path) -> bool:
        """Verify ``version_dir``; True when verified, False when unsigned and that is allowed.

        A dir that carries a signature is always verified: allow-unsigned never lets a tampered
        model load.

        Raises:
            VerificationError: the signature does not verify, or the dir is unsigned and
                unsigned dirs are not allowed.
            UsageError: the dir's layout is unusable (e.g. a symlink).
        """
        from packager.signing import verify

        if not (version_dir / SIGNATURE_FILE).is_file():
            if self.allow_unsigned:
                return False
            raise VerificationError(
                f"{version_dir} is unsigned ({SIGNATURE_FILE} is missing) and this image "
                "serves signed models only"
            )
        if not self.has_material:
            raise VerificationError(
                f"{version_dir} is signed, but the image holds no key or chain to verify it with"
            )
        verify(version_dir, None if self.cert_chain else self.public_key,
               certificate_chain=self.cert_chain or None)
        return True
