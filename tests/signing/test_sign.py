"""tfpack sign refuses, exit 2 with nothing written: a certificate of another key or one that cannot
sign, a private key inside the version dir, a dir that is no model, not exactly one key, and a
version dir whose op scan fails or whose provenance allows ops the signer did not vouch for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from factories.pki import Pki, issue_leaf, private_key_pem

from packager.layout import SIGNATURE_FILE

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast


def test_certificate_of_another_key_is_refused(
    version_dir: Path, pki: Pki, signing_keys, tfpack_cli, tmp_path: Path
) -> None:
    copy = shutil.copytree(version_dir, tmp_path / "1")
    result = tfpack_cli("sign", copy, "--key", signing_keys["private"], "--cert", pki.leaf)
    assert result.exit_code == 2 and "does not belong to private key" in result.stderr
    assert not (copy / SIGNATURE_FILE).exists()


def test_certificate_without_signing_usage_is_refused(version_dir: Path, pki: Pki, tfpack_cli, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "key.pem").write_bytes(private_key_pem(key))
    certificate = issue_leaf(pki, key.public_key(), tmp_path / "tls.pem", code_signing=False)
    copy = shutil.copytree(version_dir, tmp_path / "1")
    result = tfpack_cli("sign", copy, "--key", tmp_path / "key.pem", "--cert", certificate)
    assert result.exit_code == 2
    assert "cannot sign: it needs the digitalSignature key usage" in result.stderr
    assert not (copy / SIGNATURE_FILE).exists()


def test_private_key_inside_the_version_dir_is_refused(
    version_dir: Path, signing_keys, tfpack_cli, tmp_path: Path
) -> None:
    copy = shutil.copytree(version_dir, tmp_path / "1")
    shutil.copy(signing_keys["private"], copy / "assets.extra" / "release.pem")
    result = tfpack_cli("sign", copy, "--key", signing_keys["private"])
    assert result.exit_code == 2 and "is a private key inside the version dir" in result.stderr
    assert not (copy / SIGNATURE_FILE).exists()


def test_sign_refuses_a_non_model_dir(tmp_path: Path, signing_keys, tfpack_cli) -> None:
    result = tfpack_cli("sign", tmp_path, "--key", signing_keys["private"])
    assert result.exit_code == 2 and "saved_model.pb" in result.stderr
    assert not (tmp_path / SIGNATURE_FILE).exists()


def test_sign_needs_exactly_one_key(version_dir: Path, signing_keys, tfpack_cli) -> None:
    assert tfpack_cli("sign", version_dir).exit_code == 2
    both = tfpack_cli("sign", version_dir, "--key", signing_keys["private"], "--pkcs11-uri", "pkcs11:token=x")
    assert both.exit_code == 2 and "exactly one of --key" in both.stderr


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


def test_a_version_dir_changed_after_its_provenance_is_not_signed(
    version_dir: Path, signing_keys, tfpack_cli, tmp_path: Path
) -> None:
    """Review finding 10: a model file replaced after convert (or after --into-version) is
    refused by sign, not only by verify."""
    from packager.layout import STATEMENT_FILE

    copy = shutil.copytree(version_dir, tmp_path / "1")
    (copy / "assets.extra" / "extra.txt").write_text("not written by tfpack")
    result = tfpack_cli("sign", copy, "--key", signing_keys["private"])
    assert result.exit_code == 3, result.stderr
    assert f"{STATEMENT_FILE} describes other model files" in result.stderr
    assert not (copy / SIGNATURE_FILE).exists()
