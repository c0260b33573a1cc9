"""tfpack sign --pkcs11-uri against a real PKCS#11 token (SoftHSM 2), verified by tfpack and the
reference CLI. Each signing runs as its own process: a PKCS#11 module keeps its login state per
process, and SOFTHSM2_CONF points each run at this test's token directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_tfpack_process
from factories.pki import Pki, issue_leaf, make_pki
from factories.softhsm import KEY_LABEL, PIN, URI, make_token

from packager.layout import SIGNATURE_FILE

MODEL_SIGNING_CLI = Path(sys.executable).with_name("model_signing")


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A SoftHSM token holding an EC P-256 key pair; {'env', 'public_key'}."""
    return make_token(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture
def model(version_dir: Path, tmp_path: Path) -> Path:
    return shutil.copytree(version_dir, tmp_path / "1")


def _sign(model: Path, token: dict[str, object], *args: str | Path, pin: str = PIN):
    env = {**token["env"], "TFPACK_KEY_PASSWORD": pin}  # type: ignore[dict-item]
    return run_tfpack_process("sign", model, *args, env=env)


def test_sign_with_a_token_key_verifies_with_its_public_key(model: Path, token, tfpack_cli) -> None:
    result = _sign(model, token, "--pkcs11-uri", URI, "--json")
    assert result.exit_code == 0, result.stderr
    assert '"signer": "pkcs11"' in result.stdout
    assert PIN not in result.stdout + result.stderr
    assert tfpack_cli("verify", model, "--public-key", token["public_key"]).exit_code == 0
    reference = subprocess.run(
        [
            str(MODEL_SIGNING_CLI),
            "verify",
            "key",
            str(model),
            "--signature",
            str(model / SIGNATURE_FILE),
            "--public_key",
            str(token["public_key"]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reference.returncode == 0, reference.stdout + reference.stderr


def test_token_key_with_a_certificate_verifies_with_the_chain(model: Path, token, tfpack_cli, tmp_path: Path) -> None:
    pki: Pki = make_pki(tmp_path / "pki")
    certificate = issue_leaf(pki, token["public_key_object"], tmp_path / "token_leaf.pem")
    result = _sign(model, token, "--pkcs11-uri", URI, "--cert", certificate, "--chain", pki.intermediate)
    assert result.exit_code == 0, result.stderr
    assert tfpack_cli("verify", model, "--cert-chain", pki.root).exit_code == 0
    reference = subprocess.run(
        [
            str(MODEL_SIGNING_CLI),
            "verify",
            "certificate",
            str(model),
            "--signature",
            str(model / SIGNATURE_FILE),
            "--certificate_chain",
            str(pki.root),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reference.returncode == 0, reference.stdout + reference.stderr


def test_wrong_pin_exits_2_without_echoing_it(model: Path, token) -> None:
    result = _sign(model, token, "--pkcs11-uri", URI, pin="0000-wrong-pin")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"tfpack: error: wrong PIN for the PKCS#11 token of {URI}"
    assert "0000-wrong-pin" not in result.stdout + result.stderr
    assert not (model / SIGNATURE_FILE).exists()


def test_missing_key_and_pin_in_the_uri_are_refused(model: Path, token) -> None:
    absent = _sign(model, token, "--pkcs11-uri", URI.replace(KEY_LABEL, "no-such-key"))
    assert absent.exit_code == 2 and "Could not find any object with label no-such-key" in absent.stderr
    inline = _sign(model, token, "--pkcs11-uri", f"{URI}&pin-value={PIN}")
    assert inline.exit_code == 2 and "carries pin-value" in inline.stderr
    assert not (model / SIGNATURE_FILE).exists()
