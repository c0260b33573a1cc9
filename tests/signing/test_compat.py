"""Guard of packager/layout/_model_signing_compat.py, the one module that uses model-signing's internals.

Each test exercises one thing that module relies on against the installed model-signing: the private
modules, classes and methods it reaches for, a signature made by each kind of signer it builds
(key, certificate, PKCS#11 token key with and without a certificate) verified by model-signing's
public verifier, the error messages it reads to tell verification failures apart, and the
exception types model-signing lets through from cryptography and OpenSSL. When a model-signing
upgrade breaks one, the failure names the module and both versions instead of surfacing later as
a confusing signing or verification error.
"""

from __future__ import annotations

import base64
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from factories.pki import Pki, issue_leaf, make_pki, public_key_pem
from factories.softhsm import PIN, URI, make_token
from packaging.requirements import Requirement

from packager.layout import SIGNATURE_FILE, hashing_config, verify_version_dir
from packager.layout import _model_signing_compat as compat

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

COMPAT = "packager/layout/_model_signing_compat.py"
INSTALLED = importlib.metadata.version("model-signing")
REPO = Path(__file__).resolve().parents[2]


def _broken(what: str, error: BaseException | None = None) -> NoReturn:
    detail = f": {type(error).__name__}: {error}" if error is not None else ""
    pytest.fail(
        f"{COMPAT} no longer works with the installed model-signing {INSTALLED} (it was written for "
        f"{compat.MODEL_SIGNING_VERSION}): {what}{detail}. Adapt that module to this release (nothing "
        "else uses model-signing's internals) and update its MODEL_SIGNING_VERSION, or pin model-signing back.",
        pytrace=False,
    )


@contextmanager
def _guard(what: str) -> Iterator[None]:
    try:
        yield
    except Exception as error:  # whatever an upgrade broke, the report names the module
        _broken(what, error)


def _model(directory: Path) -> Path:
    """A small version dir: model-signing hashes files, it does not care what they hold."""
    model = directory / "m" / "1"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph " + os.urandom(64))
    (model / "variables" / "variables.index").write_bytes(os.urandom(64))
    return model


def _key_pair(directory: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = directory / f"{name}.pub.pem"
    public.write_bytes(public_key_pem(key.public_key()))
    return key, public


def _leaf(pki: Pki) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, list[x509.Certificate]]:
    key = serialization.load_pem_private_key(pki.leaf_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    certificate = x509.load_pem_x509_certificate(pki.leaf.read_bytes())
    return key, certificate, [x509.load_pem_x509_certificate(pki.intermediate.read_bytes())]


def _sign(
    model: Path,
    key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate | None = None,
    chain: list[x509.Certificate] | None = None,
) -> None:
    kind = "key" if certificate is None else "certificate"
    with _guard(f"signing with the {kind} signer key_signer() makes"):
        compat.sign_files(
            compat.key_signer(key, certificate, chain or []), hashing_config(), model, model / SIGNATURE_FILE
        )


def _public_verify(model: Path, *, public_key: Path | None = None, chain: list[Path] | None = None) -> None:
    """model-signing's public verifier, as packager.layout.trust configures it."""
    from model_signing import verifying

    config = verifying.Config().set_hashing_config(hashing_config())
    if chain is not None:
        config.use_certificate_verifier(certificate_chain=chain)
    else:
        assert public_key is not None
        config.use_elliptic_key_verifier(public_key=public_key)
    config.verify(model, model / SIGNATURE_FILE)


def _error_of(verify: Callable[[], None], what: str) -> Exception:
    try:
        verify()
    except Exception as error:  # the type is what is being checked
        return error
    _broken(f"{what}: model-signing's verifier accepted it")


# --- the internals it reaches for ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name", "methods"),
    [
        ("model_signing._signing.sign_ec_key", "Signer", ("sign", "_get_verification_material")),
        ("model_signing._signing.sign_certificate", "Signer", ("sign", "_get_verification_material")),
        ("model_signing._signing.sign_pkcs11", "Signer", ("sign", "public_key", "_get_verification_material")),
        ("model_signing._signing.signing", "Payload", ()),
    ],
)
def test_the_private_classes_and_methods_it_uses_exist(module: str, name: str, methods: tuple[str, ...]) -> None:
    with _guard(f"importing {module}.{name}"):
        cls = getattr(importlib.import_module(module), name)
    missing = [method for method in methods if not callable(getattr(cls, method, None))]
    if missing:
        _broken(f"{module}.{name} has no {', '.join(missing)}")


def test_the_private_signatures_it_calls_still_take_its_arguments() -> None:
    import inspect

    from model_signing._signing import sign_certificate, sign_pkcs11, signing

    with _guard("signing.Payload(manifest)"):
        inspect.signature(signing.Payload).bind(object())
    with _guard("sign_pkcs11.Signer(uri, module_paths)"):
        inspect.signature(sign_pkcs11.Signer).bind("pkcs11:", ["/usr/lib/pkcs11/"])
    with _guard("sign_certificate.Signer._get_verification_material(self)"):
        inspect.signature(sign_certificate.Signer._get_verification_material).bind(object())


# --- a signature by each kind of signer ---------------------------------------------------------


def test_a_key_signer_signs_what_the_public_verifier_accepts(tmp_path: Path) -> None:
    model = _model(tmp_path)
    key, public = _key_pair(tmp_path, "signer")
    _sign(model, key)
    with _guard("verifying a key signer's bundle with model-signing's public verifier"):
        _public_verify(model, public_key=public)
    with _guard("verifying a key signer's bundle with tfpack's trust check"):
        verified = verify_version_dir(model, public)
    assert verified.files == 2
    bundle = json.loads((model / SIGNATURE_FILE).read_text())
    if "publicKey" not in bundle.get("verificationMaterial", {}):
        _broken("a key signer's bundle carries no publicKey hint")


def test_a_certificate_signer_signs_what_the_public_verifier_accepts(tmp_path: Path, pki: Pki) -> None:
    model = _model(tmp_path)
    _sign(model, *_leaf(pki))
    with _guard("verifying a certificate signer's bundle with model-signing's public verifier"):
        _public_verify(model, chain=[pki.root])
    with _guard("verifying a certificate signer's bundle with tfpack's trust check"):
        verify_version_dir(model, certificate_chain=[pki.root])
    chain = json.loads((model / SIGNATURE_FILE).read_text())["verificationMaterial"].get("x509CertificateChain")
    if not chain or len(chain.get("certificates", [])) != 2:
        _broken("a certificate signer's bundle does not carry the signing certificate and its chain")


_PKCS11_ROUND_TRIP = """
import sys
from pathlib import Path

from cryptography import x509

from packager.layout import SIGNATURE_FILE, hashing_config, verify_version_dir
from packager.layout import _model_signing_compat as compat
from packager.signing import PKCS11_MODULE_DIRS

uri, model, public_key, certificate, intermediate, root = sys.argv[1:]
model = Path(model)
signer = compat.pkcs11_signer(uri, PKCS11_MODULE_DIRS)
if certificate:
    leaf = x509.load_pem_x509_certificate(Path(certificate).read_bytes())
    assert leaf.public_key() == compat.pkcs11_public_key(signer), "pkcs11_public_key() is not the token key"
    compat.attach_certificate(signer, leaf, [x509.load_pem_x509_certificate(Path(intermediate).read_bytes())])
compat.sign_files(signer, hashing_config(), model, model / SIGNATURE_FILE)
if certificate:
    verify_version_dir(model, certificate_chain=[Path(root)])
else:
    verify_version_dir(model, Path(public_key))
"""


@pytest.mark.parametrize("with_certificate", [False, True], ids=["token-key", "token-key-with-certificate"])
def test_a_pkcs11_signer_signs_what_the_public_verifier_accepts(
    with_certificate: bool, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """In a process of its own: a PKCS#11 module keeps its login state per process (and must load
    before TensorFlow, which other tests load into this one)."""
    token = make_token(tmp_path_factory.mktemp("softhsm"))
    model = _model(tmp_path)
    certificate = intermediate = root = ""
    if with_certificate:
        pki = make_pki(tmp_path / "pki")
        token_key = token["public_key_object"]
        assert isinstance(token_key, ec.EllipticCurvePublicKey)
        certificate = str(issue_leaf(pki, token_key, tmp_path / "token_leaf.pem"))
        intermediate, root = str(pki.intermediate), str(pki.root)
    env = token["env"]
    assert isinstance(env, dict)
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            _PKCS11_ROUND_TRIP,
            f"{URI}&pin-value={PIN}",
            str(model),
            str(token["public_key"]),
            certificate,
            intermediate,
            root,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines() or ["(no output)"]
        signer = "a PKCS#11 token key and a certificate" if with_certificate else "a PKCS#11 token key"
        _broken(f"signing with {signer} failed: {lines[-1]}")


# --- the failures it tells apart ------------------------------------------------------------------


def _verification_failure(error: Exception, what: str) -> compat.VerificationFailure:
    if not isinstance(error, ValueError):
        _broken(f"{what} raised {type(error).__name__}, not the ValueError the module reads", error)
    return compat.verification_failure(error)


def test_files_changed_after_signing_are_a_manifest_mismatch(tmp_path: Path) -> None:
    model = _model(tmp_path)
    key, public = _key_pair(tmp_path, "signer")
    _sign(model, key)
    (model / "saved_model.pb").write_bytes(b"another graph")
    what = "verifying a changed file"
    error = _error_of(lambda: _public_verify(model, public_key=public), what)
    if _verification_failure(error, what) is not compat.VerificationFailure.MANIFEST_MISMATCH:
        _broken(f"{what}: its message is no longer read as a manifest mismatch", error)


def test_another_public_key_is_a_key_mismatch(tmp_path: Path) -> None:
    model = _model(tmp_path)
    key, _ = _key_pair(tmp_path, "signer")
    _, other = _key_pair(tmp_path, "other")
    _sign(model, key)
    what = "verifying with another public key"
    error = _error_of(lambda: _public_verify(model, public_key=other), what)
    if _verification_failure(error, what) is not compat.VerificationFailure.KEY_MISMATCH:
        _broken(f"{what}: its message is no longer read as a key mismatch", error)


def test_a_certificate_that_cannot_sign_is_recognised(tmp_path: Path, pki: Pki) -> None:
    model = _model(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    path = issue_leaf(pki, key.public_key(), tmp_path / "tls.pem", code_signing=False)
    _, _, chain = _leaf(pki)
    _sign(model, key, x509.load_pem_x509_certificate(path.read_bytes()), chain)
    what = "verifying a certificate without signing usage"
    error = _error_of(lambda: _public_verify(model, chain=[pki.root]), what)
    if _verification_failure(error, what) is not compat.VerificationFailure.CERTIFICATE_CANNOT_SIGN:
        _broken(f"{what}: its message is no longer read as a certificate that cannot sign", error)


def test_a_forged_signature_raises_cryptographys_invalid_signature(tmp_path: Path) -> None:
    from cryptography.exceptions import InvalidSignature

    model = _model(tmp_path)
    key, public = _key_pair(tmp_path, "signer")
    _sign(model, key)
    bundle = json.loads((model / SIGNATURE_FILE).read_text())
    forged = key.sign(b"something else", ec.ECDSA(hashes.SHA256()))
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(forged).decode()
    (model / SIGNATURE_FILE).write_text(json.dumps(bundle))
    error = _error_of(lambda: _public_verify(model, public_key=public), "verifying a forged signature")
    if not isinstance(error, InvalidSignature):
        _broken(f"a forged signature raised {type(error).__name__}, not cryptography's InvalidSignature", error)


def test_a_certificate_of_another_authority_raises_openssls_store_context_error(tmp_path: Path, pki: Pki) -> None:
    from OpenSSL.crypto import X509StoreContextError

    model = _model(tmp_path)
    _sign(model, *_leaf(pki))
    elsewhere = make_pki(tmp_path / "elsewhere", name="elsewhere")
    error = _error_of(lambda: _public_verify(model, chain=[elsewhere.root]), "verifying against another authority")
    if not isinstance(error, X509StoreContextError):
        _broken(f"a certificate of another authority raised {type(error).__name__}, not X509StoreContextError", error)


# --- one model-signing version ----------------------------------------------------------------------


def test_the_images_pin_the_model_signing_these_tests_run_against() -> None:
    from packager import _runtime_base, image

    pinned = f"model-signing=={compat.MODEL_SIGNING_VERSION}"
    declared = next(
        Requirement(r)
        for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        if Requirement(r).name == "model-signing"
    )
    assert compat.MODEL_SIGNING_VERSION in declared.specifier, f"{COMPAT} pins a model-signing outside {declared}"
    assert pinned in _runtime_base.REQUIREMENTS and pinned in image.VERIFIER_REQUIREMENTS
    if INSTALLED != compat.MODEL_SIGNING_VERSION:
        _broken(
            f"the images pin {compat.MODEL_SIGNING_VERSION} but these tests ran against {INSTALLED}; once they "
            "pass, set MODEL_SIGNING_VERSION to it"
        )
