"""A small X.509 PKI for signing tests: root CA -> intermediate CA -> leaf code-signing certificate.

The extensions are those model-signing's certificate verifier (and OpenSSL's chain validation
under it) require: CA certificates with basicConstraints CA:TRUE and keyCertSign, a leaf with
digitalSignature and the codeSigning extended key usage, subject/authority key identifiers.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Pki:
    """PEM files of one certificate hierarchy."""

    root: Path  # root CA certificate: what a verifier trusts (--cert-chain)
    intermediate: Path  # intermediate CA certificate: carried in the bundle (--chain)
    leaf: Path  # signing certificate (--cert)
    leaf_key: Path  # its private key (--key)
    leaf_public_key: Path
    intermediate_key: Path  # to issue more leaves (e.g. for a key inside a PKCS#11 token)


def private_key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def public_key_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def issue_certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    *,
    ca: bool,
    code_signing: bool = True,
) -> x509.Certificate:
    """A certificate for ``public_key`` signed by ``issuer_key`` (self-signed when ``issuer`` is None)."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=code_signing,
                content_commitment=False,
                key_encipherment=not code_signing,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        if code_signing:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_certificate(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def make_pki(directory: Path, name: str = "tfpack") -> Pki:
    """Write a root CA, an intermediate CA and a code-signing leaf with its key into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = issue_certificate(f"{name} root CA", root_key.public_key(), root_key, None, ca=True)
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate = issue_certificate(f"{name} intermediate CA", intermediate_key.public_key(), root_key, root, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue_certificate(f"{name} model signing", leaf_key.public_key(), intermediate_key, intermediate, ca=False)
    (directory / "leaf_key.pem").write_bytes(private_key_pem(leaf_key))
    (directory / "leaf_public.pem").write_bytes(public_key_pem(leaf_key.public_key()))
    (directory / "intermediate_key.pem").write_bytes(private_key_pem(intermediate_key))
    return Pki(
        root=write_certificate(directory / "root.pem", root),
        intermediate=write_certificate(directory / "intermediate.pem", intermediate),
        leaf=write_certificate(directory / "leaf.pem", leaf),
        leaf_key=directory / "leaf_key.pem",
        leaf_public_key=directory / "leaf_public.pem",
        intermediate_key=directory / "intermediate_key.pem",
    )


def issue_leaf(pki: Pki, public_key: ec.EllipticCurvePublicKey, path: Path, *, code_signing: bool = True) -> Path:
    """Issue another leaf certificate from ``pki``'s intermediate CA for ``public_key``."""
    intermediate_key = serialization.load_pem_private_key(pki.intermediate_key.read_bytes(), None)
    intermediate = x509.load_pem_x509_certificate(pki.intermediate.read_bytes())
    assert isinstance(intermediate_key, ec.EllipticCurvePrivateKey)
    certificate = issue_certificate(
        "tfpack extra leaf", public_key, intermediate_key, intermediate, ca=False, code_signing=code_signing
    )
    return write_certificate(path, certificate)
