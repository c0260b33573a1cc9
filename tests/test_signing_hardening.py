"""Findings of the attacker review around signing and convert's flags: a private key in any
encoding or size is never signed into a version dir, a garbage bundle or a symlink is a failed
verification (exit 3) in words that say so, and out-of-range flags are usage errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from factories.sources import write_frozen_classifier
from packager.layout import SIGNATURE_FILE


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from packager.convert import ConvertOptions, convert

    root = tmp_path_factory.mktemp("hardening")
    source = write_frozen_classifier(root / "classifier.pb")
    return convert(source, ConvertOptions(name="classifier", output_dir=root / "models")).version_dir


@pytest.fixture
def version_dir(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "classifier" / "1"
    shutil.copytree(pristine, copy)
    return copy


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


DER_KEYS = {
    "pkcs8_der": lambda: _ec_key().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    "pkcs8_der_encrypted": lambda: _ec_key().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")),
    "traditional_ec_der": lambda: _ec_key().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()),
    "rsa_der": lambda: rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    "pem_padded_past_a_mebibyte": lambda: b"\0" * (3 << 20) + _ec_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
}


@pytest.mark.parametrize("encoding", sorted(DER_KEYS))
def test_a_private_key_in_any_encoding_or_size_is_never_signed(encoding: str, version_dir: Path, signing_keys,
                                                               tfpack_cli) -> None:
    (version_dir / "assets.extra" / "deploy.key").write_bytes(DER_KEYS[encoding]())
    result = tfpack_cli("sign", version_dir, "--key", signing_keys["private"])
    assert result.exit_code == 2, result.stderr
    assert "deploy.key is a private key inside the version dir" in result.stderr
    assert not (version_dir / SIGNATURE_FILE).exists()


def test_ordinary_model_files_are_not_mistaken_for_keys(version_dir: Path, signing_keys, tfpack_cli) -> None:
    # A DER-looking blob (starts with a SEQUENCE tag) that is no key, and a public key.
    (version_dir / "assets.extra" / "blob.bin").write_bytes(b"\x30\x82\x01\x00" + os.urandom(256))
    (version_dir / "assets.extra" / "public.pem").write_bytes(_ec_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    result = tfpack_cli("sign", version_dir, "--key", signing_keys["private"])
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("material", [5, "x", [1, 2]])
def test_a_malformed_bundle_is_a_failed_verification_not_a_crash(material, version_dir: Path, signing_keys,
                                                                 tfpack_cli) -> None:
    assert tfpack_cli("sign", version_dir, "--key", signing_keys["private"]).exit_code == 0
    bundle = json.loads((version_dir / SIGNATURE_FILE).read_text())
    bundle["verificationMaterial"] = material
    (version_dir / SIGNATURE_FILE).write_text(json.dumps(bundle))
    result = tfpack_cli("verify", version_dir, "--public-key", signing_keys["public"])
    assert result.exit_code == 3, result.stderr
    assert "not a model-signing bundle" in result.stderr


def test_a_symlink_is_named_as_a_symlink_not_as_a_wrong_key(version_dir: Path, signing_keys, tfpack_cli,
                                                            tmp_path: Path) -> None:
    assert tfpack_cli("sign", version_dir, "--key", signing_keys["private"]).exit_code == 0
    target = version_dir / "saved_model.pb"
    outside = tmp_path / "elsewhere.pb"
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)
    result = tfpack_cli("verify", version_dir, "--public-key", signing_keys["public"])
    assert result.exit_code == 3, result.stderr
    assert "symlink" in result.stderr and "not signed by" not in result.stderr


def test_custom_objects_and_unsafe_go_with_keras_sources_only(tfpack_cli, tmp_path: Path) -> None:
    source = write_frozen_classifier(tmp_path / "classifier.pb")
    result = tfpack_cli("convert", source, "--name", "m", "--output-dir", tmp_path / "out",
                        "--custom-objects", "nosuchmodule")
    assert result.exit_code == 2 and "--custom-objects goes with a Keras source" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, needle", [
    (("--tolerance", "inf"), "--tolerance"),
    (("--tolerance", "nan"), "--tolerance"),
    (("--version", "99999999999999999999999"), "--version"),
])
def test_out_of_range_flags_are_usage_errors(flags, needle: str, tfpack_cli, tmp_path: Path) -> None:
    source = write_frozen_classifier(tmp_path / "classifier.pb")
    result = tfpack_cli("convert", source, "--name", "m", "--output-dir", tmp_path / "out", *flags)
    assert result.exit_code == 2, result.stderr
    assert needle in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_version_dir_whose_op_scan_fails_is_never_signed(signing_keys, tfpack_cli, tmp_path: Path) -> None:
    """A dataset reader smuggled into a version dir after convert (issue 10's /etc/passwd model)."""
    from factories.hostile_models import write_dataset_saved_model

    version_dir = tmp_path / "m" / "1"
    write_dataset_saved_model(version_dir, "fixed_length", Path("/etc/passwd"))
    result = tfpack_cli("sign", version_dir, "--key", signing_keys["private"])
    assert result.exit_code == 2, result.stderr
    assert "FixedLengthRecordDataset" in result.stderr and "refuses a model whose op scan fails" in result.stderr
    assert not (version_dir / SIGNATURE_FILE).exists()


def test_only_the_signer_decides_which_denied_ops_are_allowed(signing_keys, tfpack_cli, tmp_path: Path) -> None:
    """A provenance inside the dir claiming 'convert --allow-op ReadFile' is the caller's file
    until signed: 'tfpack sign' takes the allowance only from its own --allow-op."""
    import tensorflow as tf

    from packager.layout import PROVENANCE_FILE

    class Reader(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):  # type: ignore[no-untyped-def]
            return {"y": x + 1.0, "leak": tf.reshape(tf.io.read_file("/etc/hostname"), [1])}

    version_dir = tmp_path / "m" / "1"
    module = Reader()
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
    (version_dir / PROVENANCE_FILE).parent.mkdir(exist_ok=True)
    (version_dir / PROVENANCE_FILE).write_text(json.dumps({"options": {"allowed_ops": ["ReadFile"]}}))
    forged = tfpack_cli("sign", version_dir, "--key", signing_keys["private"])
    assert forged.exit_code == 2, forged.stderr
    assert "provenance allows ReadFile" in forged.stderr and "--allow-op ReadFile" in forged.stderr
    assert not (version_dir / SIGNATURE_FILE).exists()
    vouched = tfpack_cli("sign", version_dir, "--key", signing_keys["private"], "--allow-op", "ReadFile")
    assert vouched.exit_code == 0, vouched.stderr
