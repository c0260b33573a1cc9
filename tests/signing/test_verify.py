"""tfpack verify with a key and with a certificate chain: standard model-signing bundles,
interoperable both ways with the reference CLI, exit 3 naming what failed on every tamper case,
a garbage bundle or a symlink (packager.signing.verify over packager.layout's trust check)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from factories.pki import Pki

from packager.layout import GOLDENS_FILE, PROVENANCE_FILE, SIGNATURE_FILE, WARMUP_FILE, Provenance
from packager.provenance import write_provenance_statement

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

MODEL_SIGNING_CLI = Path(sys.executable).with_name("model_signing")


@dataclass(frozen=True)
class Method:
    """How to sign and verify with one kind of key, through tfpack and through the reference CLI."""

    name: str
    sign: tuple[str | Path, ...]  # tfpack sign flags
    verify: tuple[str | Path, ...]  # tfpack verify flags that accept the signature
    other_verify: tuple[str | Path, ...]  # tfpack verify flags of another key / authority
    wrong_trust: str  # what the message says for other_verify
    reference_sign: tuple[str | Path, ...]  # model_signing sign ... flags
    reference_verify: tuple[str | Path, ...]  # model_signing verify ... flags


@pytest.fixture(scope="module", params=["key", "certificate"])
def method(request: pytest.FixtureRequest, signing_keys, pki: Pki, other_pki: Pki) -> Method:
    if request.param == "key":
        return Method(
            name="key",
            sign=("--key", signing_keys["private"]),
            verify=("--public-key", signing_keys["public"]),
            other_verify=("--public-key", signing_keys["other_public"]),
            wrong_trust="was signed by another key, not public key",
            reference_sign=("key", "--private_key", signing_keys["private"]),
            reference_verify=("key", "--public_key", signing_keys["public"]),
        )
    return Method(
        name="certificate",
        sign=("--key", pki.leaf_key, "--cert", pki.leaf, "--chain", pki.intermediate, "--chain", pki.root),
        verify=("--cert-chain", pki.root),
        other_verify=("--cert-chain", other_pki.root),
        wrong_trust="was signed by a certificate that does not chain to the certificate chain",
        reference_sign=(
            "certificate",
            "--private_key",
            pki.leaf_key,
            "--signing_certificate",
            pki.leaf,
            "--certificate_chain",
            pki.intermediate,
            "--certificate_chain",
            pki.root,
        ),
        reference_verify=("certificate", "--certificate_chain", pki.root),
    )


@pytest.fixture
def signed_copy(version_dir: Path, method: Method, tfpack_cli, tmp_path: Path) -> Path:
    copy = shutil.copytree(version_dir, tmp_path / "1")
    result = tfpack_cli("sign", copy, *method.sign)
    assert result.exit_code == 0, result.stderr
    return copy


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _reference_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MODEL_SIGNING_CLI), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_sign_then_verify(signed_copy: Path, method: Method, tfpack_cli) -> None:
    assert (signed_copy / SIGNATURE_FILE).is_file()
    result = tfpack_cli("verify", signed_copy, *method.verify, "--json")
    assert result.exit_code == 0, result.stderr
    assert '"verified": true' in result.stdout


@pytest.mark.parametrize(
    "tamper, expected",
    [
        (lambda d: _flip_byte(d / "saved_model.pb"), "does not match its signature: modified: saved_model.pb"),
        (lambda d: _flip_byte(d / GOLDENS_FILE), f"modified: {GOLDENS_FILE}"),
        (lambda d: _flip_byte(d / WARMUP_FILE), f"modified: {WARMUP_FILE}"),
        (lambda d: (d / "assets.extra" / "extra.txt").write_text("x"), "added: assets.extra/extra.txt"),
        (lambda d: (d / ".gitignore").write_text("*"), "added: .gitignore"),
        (lambda d: (d / GOLDENS_FILE).unlink(), f"missing: {GOLDENS_FILE}"),
        (lambda d: (d / SIGNATURE_FILE).unlink(), f"is unsigned: {SIGNATURE_FILE} is missing"),
        (lambda d: (d / SIGNATURE_FILE).write_text("{not json"), "not a model-signing bundle"),
    ],
    ids=[
        "flipped-byte",
        "flipped-golden",
        "flipped-warmup",
        "appended-file",
        "git-file",
        "deleted-file",
        "unsigned",
        "corrupt-signature",
    ],
)
def test_tampering_exits_3_naming_what_changed(
    tamper, expected: str, signed_copy: Path, method: Method, tfpack_cli
) -> None:
    tamper(signed_copy)
    result = tfpack_cli("verify", signed_copy, *method.verify)
    assert result.exit_code == 3, result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_several_changes_are_all_named(signed_copy: Path, method: Method, tfpack_cli) -> None:
    _flip_byte(signed_copy / "saved_model.pb")
    (signed_copy / "notes.txt").write_text("x")
    (signed_copy / GOLDENS_FILE).unlink()
    result = tfpack_cli("verify", signed_copy, *method.verify)
    assert result.exit_code == 3
    assert f"modified: saved_model.pb; added: notes.txt; missing: {GOLDENS_FILE}" in result.stderr


def test_wrong_key_or_authority_exits_3(signed_copy: Path, method: Method, tfpack_cli) -> None:
    result = tfpack_cli("verify", signed_copy, *method.other_verify)
    assert result.exit_code == 3, result.stderr
    assert method.wrong_trust in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_signature_from_another_model_exits_3(signed_copy: Path, method: Method, tfpack_cli, tmp_path: Path) -> None:
    other = shutil.copytree(signed_copy, tmp_path / "other")
    _flip_byte(other / GOLDENS_FILE)  # a different model, validly signed by the same key
    # Its provenance statement written again, as a converter does: sign refuses it otherwise.
    write_provenance_statement(other, Provenance.load(other / PROVENANCE_FILE))
    assert tfpack_cli("sign", other, *method.sign).exit_code == 0
    shutil.copy(other / SIGNATURE_FILE, signed_copy / SIGNATURE_FILE)
    result = tfpack_cli("verify", signed_copy, *method.verify)
    assert result.exit_code == 3
    assert f"does not match its signature: modified: {GOLDENS_FILE}" in result.stderr


def test_re_signing_replaces_the_signature(signed_copy: Path, method: Method, tfpack_cli) -> None:
    before = (signed_copy / SIGNATURE_FILE).read_bytes()
    assert tfpack_cli("sign", signed_copy, *method.sign).exit_code == 0
    assert (signed_copy / SIGNATURE_FILE).read_bytes() != before
    assert tfpack_cli("verify", signed_copy, *method.verify).exit_code == 0
    assert not list(signed_copy.parent.glob(f".*{SIGNATURE_FILE}.tmp"))


def test_a_file_added_after_conversion_is_caught_even_when_re_signed(
    signed_copy: Path, method: Method, tfpack_cli
) -> None:
    """The provenance statement pins the converted files: re-signing cannot launder a change.
    tfpack sign refuses it (issue 15's review, finding 10); a signature by another tool is caught
    by verify (tests/signing/test_provenance.py), and the earlier signature does not cover it."""
    (signed_copy / "assets.extra" / "notes.txt").write_text("added after conversion")
    before = (signed_copy / SIGNATURE_FILE).read_bytes()
    refused = tfpack_cli("sign", signed_copy, *method.sign)
    assert refused.exit_code == 3 and "changed after its provenance was written" in refused.stderr
    assert (signed_copy / SIGNATURE_FILE).read_bytes() == before
    result = tfpack_cli("verify", signed_copy, *method.verify)
    assert result.exit_code == 3 and "notes.txt" in result.stderr


def test_reference_cli_verifies_tfpack_signature(signed_copy: Path, method: Method) -> None:
    completed = _reference_cli(
        "verify",
        *method.reference_verify[:1],
        signed_copy,
        "--signature",
        signed_copy / SIGNATURE_FILE,
        *method.reference_verify[1:],
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_tfpack_verifies_reference_cli_signature(version_dir: Path, method: Method, tfpack_cli, tmp_path: Path) -> None:
    copy = shutil.copytree(version_dir, tmp_path / "1")
    completed = _reference_cli(
        "sign",
        *method.reference_sign[:1],
        copy,
        "--signature",
        copy / SIGNATURE_FILE,
        *method.reference_sign[1:],
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert tfpack_cli("verify", copy, *method.verify).exit_code == 0
    _flip_byte(copy / "saved_model.pb")
    result = tfpack_cli("verify", copy, *method.verify)
    assert result.exit_code == 3 and "modified: saved_model.pb" in result.stderr


def test_reference_cli_signature_leaves_git_files_out_so_tfpack_refuses_them(
    version_dir: Path, signing_keys, tfpack_cli, tmp_path: Path
) -> None:
    copy = shutil.copytree(version_dir, tmp_path / "1")
    completed = _reference_cli(
        "sign", "key", copy, "--signature", copy / SIGNATURE_FILE, "--private_key", signing_keys["private"]
    )
    assert completed.returncode == 0, completed.stderr
    (copy / ".gitattributes").write_text("* binary")
    result = tfpack_cli("verify", copy, "--public-key", signing_keys["public"])
    assert result.exit_code == 3
    assert "holds files its signature leaves out: .gitattributes" in result.stderr


# --- mixing key and certificate signatures ----------------------------------------------------


def test_certificate_signature_needs_the_chain_not_a_public_key(
    version_dir: Path, pki: Pki, tfpack_cli, tmp_path: Path
) -> None:
    copy = shutil.copytree(version_dir, tmp_path / "1")
    signed = tfpack_cli("sign", copy, "--key", pki.leaf_key, "--cert", pki.leaf, "--chain", pki.intermediate)
    assert signed.exit_code == 0
    result = tfpack_cli("verify", copy, "--public-key", pki.leaf_public_key)
    assert result.exit_code == 3 and "was signed with a certificate: verify it with --cert-chain" in result.stderr


def test_key_signature_is_not_accepted_by_a_chain(version_dir: Path, pki: Pki, tfpack_cli, tmp_path: Path) -> None:
    copy = shutil.copytree(version_dir, tmp_path / "1")
    assert tfpack_cli("sign", copy, "--key", pki.leaf_key).exit_code == 0
    result = tfpack_cli("verify", copy, "--cert-chain", pki.root)
    assert result.exit_code == 3 and "was signed with a bare key, not a certificate" in result.stderr


def test_chain_without_the_intermediate_does_not_verify(
    version_dir: Path, pki: Pki, tfpack_cli, tmp_path: Path
) -> None:
    copy = shutil.copytree(version_dir, tmp_path / "1")
    assert tfpack_cli("sign", copy, "--key", pki.leaf_key, "--cert", pki.leaf).exit_code == 0
    result = tfpack_cli("verify", copy, "--cert-chain", pki.root)
    assert result.exit_code == 3
    assert "does not chain to the certificate chain" in result.stderr
    assert "unable to get local issuer certificate" in result.stderr
    # trusting the intermediate as well completes the chain
    assert tfpack_cli("verify", copy, "--cert-chain", pki.root, "--cert-chain", pki.intermediate).exit_code == 0


@pytest.mark.parametrize("kind", ["rsa", "ed25519", "secp256k1"])
def test_unsupported_public_keys_are_usage_errors(
    kind: str, version_dir: Path, signing_keys, tfpack_cli, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    private = {
        "rsa": lambda: rsa.generate_private_key(65537, 2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
        "secp256k1": lambda: ec.generate_private_key(ec.SECP256K1()),
    }[kind]()
    public = tmp_path / f"{kind}.pub.pem"
    public.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    copy = shutil.copytree(version_dir, tmp_path / "1")
    assert tfpack_cli("sign", copy, "--key", signing_keys["private"]).exit_code == 0
    result = tfpack_cli("verify", copy, "--public-key", public)
    assert result.exit_code == 2 and "model-signing verifies EC keys" in result.stderr, result.stderr


# --- garbage bundles and symlinks (exit 3 in words that say so) ------------------------------


@pytest.fixture
def model(version_dir: Path, tmp_path: Path) -> Path:
    """A copy of the converted model to sign and break."""
    copy = tmp_path / "classifier" / "1"
    shutil.copytree(version_dir, copy)
    return copy


@pytest.mark.parametrize("material", [5, "x", [1, 2]])
def test_a_malformed_bundle_is_a_failed_verification_not_a_crash(
    material, model: Path, signing_keys, tfpack_cli
) -> None:
    assert tfpack_cli("sign", model, "--key", signing_keys["private"]).exit_code == 0
    bundle = json.loads((model / SIGNATURE_FILE).read_text())
    bundle["verificationMaterial"] = material
    (model / SIGNATURE_FILE).write_text(json.dumps(bundle))
    result = tfpack_cli("verify", model, "--public-key", signing_keys["public"])
    assert result.exit_code == 3, result.stderr
    assert "not a model-signing bundle" in result.stderr


def test_a_symlink_is_named_as_a_symlink_not_as_a_wrong_key(
    model: Path, signing_keys, tfpack_cli, tmp_path: Path
) -> None:
    assert tfpack_cli("sign", model, "--key", signing_keys["private"]).exit_code == 0
    target = model / "saved_model.pb"
    outside = tmp_path / "elsewhere.pb"
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)
    result = tfpack_cli("verify", model, "--public-key", signing_keys["public"])
    assert result.exit_code == 3, result.stderr
    assert "symlink" in result.stderr and "not signed by" not in result.stderr


def test_a_file_that_cannot_be_read_is_a_failed_verification_not_a_crash(
    signed_copy: Path, method: Method, tfpack_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root reads every file whatever its mode, so the unreadable file is simulated where
    # model-signing would meet it: while it hashes the version dir.
    from model_signing import verifying

    def unreadable(self: verifying.Config, model_path: Path, signature_path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(model_path / "saved_model.pb"))

    monkeypatch.setattr(verifying.Config, "verify", unreadable)
    result = tfpack_cli("verify", signed_copy, *method.verify)
    assert result.exit_code == 3, result.stderr
    assert "could not be read to verify it: Permission denied" in result.stderr
    assert "saved_model.pb" in result.stderr
