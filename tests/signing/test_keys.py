"""Signing keys: the password of an encrypted key comes from TFPACK_KEY_PASSWORD or a prompt, a
wrong or missing one exits 2 with one line, the password never appears in any output; unusable
keys exit 2; a private key in any encoding or size inside a version dir is never signed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import run_tfpack_process
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from factories.pki import Pki, make_pki, private_key_pem, public_key_pem

from packager.cli import cli
from packager.layout import PROVENANCE_FILE, SIGNATURE_FILE, Provenance
from packager.provenance import write_provenance_statement

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

PASSWORD = "correct horse battery staple 7f3a"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One P-384 key as encrypted PKCS#8, encrypted traditional OpenSSL PEM, plain; its public key."""
    directory = tmp_path_factory.mktemp("encrypted-keys")
    key = ec.generate_private_key(ec.SECP384R1())
    paths = {
        "pkcs8": directory / "pkcs8.pem",
        "traditional": directory / "traditional.pem",
        "plain": directory / "plain.pem",
        "public": directory / "public.pem",
    }
    paths["pkcs8"].write_bytes(private_key_pem(key, PASSWORD.encode()))
    paths["traditional"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(PASSWORD.encode()),
        )
    )
    paths["plain"].write_bytes(private_key_pem(key))
    paths["public"].write_bytes(public_key_pem(key.public_key()))
    return paths


@pytest.fixture
def model(version_dir: Path, tmp_path: Path) -> Path:
    return shutil.copytree(version_dir, tmp_path / "1")


def _invoke(*args: str | Path, env: dict[str, str] | None = None, input: str | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, input=input, prog_name="tfpack")


@pytest.mark.parametrize("form", ["pkcs8", "traditional"])
def test_encrypted_key_with_password_from_the_environment(form: str, model: Path, keys, tfpack_cli) -> None:
    result = _invoke("sign", model, "--key", keys[form], env={"TFPACK_KEY_PASSWORD": PASSWORD})
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert tfpack_cli("verify", model, "--public-key", keys["public"]).exit_code == 0


def test_encrypted_key_with_prompted_password(model: Path, keys, tfpack_cli) -> None:
    """--prompt-password reads the password at a real terminal (a pseudo-terminal here)."""
    import os
    import pty
    import select
    import time

    from conftest import TFPACK

    env = {k: v for k, v in os.environ.items() if k != "TFPACK_KEY_PASSWORD"}
    pid, terminal = pty.fork()
    if pid == 0:  # the child: tfpack with the pty as its controlling terminal
        os.execve(str(TFPACK), [str(TFPACK), "sign", str(model), "--key", str(keys["pkcs8"]), "--prompt-password"], env)
    transcript = b""
    deadline = time.monotonic() + 120
    answered = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([terminal], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(terminal, 1024)
        except OSError:  # the child exited and closed the terminal
            break
        if not chunk:
            break
        transcript += chunk
        if not answered and b"key password" in transcript:
            os.write(terminal, (PASSWORD + "\n").encode())
            answered = True
    _, status = os.waitpid(pid, 0)
    assert answered, transcript.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, transcript.decode(errors="replace")
    assert PASSWORD.encode() not in transcript  # the terminal did not echo it
    assert tfpack_cli("verify", model, "--public-key", keys["public"]).exit_code == 0


def test_prompt_password_without_a_terminal_is_a_usage_error(model: Path, keys) -> None:
    result = _invoke(
        "sign",
        model,
        "--key",
        keys["pkcs8"],
        "--prompt-password",
        input=PASSWORD + "\n",
        env={"TFPACK_KEY_PASSWORD": ""},
    )
    assert result.exit_code == 2 and "needs a terminal" in result.output


def test_encrypted_key_signs_with_a_certificate(model: Path, tmp_path: Path, tfpack_cli) -> None:
    # model-signing's own certificate signer cannot open an encrypted key; tfpack can.
    pki: Pki = make_pki(tmp_path / "pki")
    key = serialization.load_pem_private_key(pki.leaf_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    encrypted = tmp_path / "leaf_key.encrypted.pem"
    encrypted.write_bytes(private_key_pem(key, PASSWORD.encode()))
    result = _invoke(
        "sign",
        model,
        "--key",
        encrypted,
        "--cert",
        pki.leaf,
        "--chain",
        pki.intermediate,
        env={"TFPACK_KEY_PASSWORD": PASSWORD},
    )
    assert result.exit_code == 0, result.output
    assert tfpack_cli("verify", model, "--cert-chain", pki.root).exit_code == 0


def test_wrong_password_exits_2_without_echoing_it(model: Path, keys) -> None:
    result = run_tfpack_process("sign", model, "--key", keys["pkcs8"], env={"TFPACK_KEY_PASSWORD": "not " + PASSWORD})
    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip() == f"tfpack: error: wrong password for private key {keys['pkcs8']}"
    assert PASSWORD not in result.stdout + result.stderr
    assert not (model / SIGNATURE_FILE).exists()


def test_missing_password_says_how_to_give_one(model: Path, keys) -> None:
    result = run_tfpack_process("sign", model, "--key", keys["traditional"], env={"TFPACK_KEY_PASSWORD": ""})
    assert result.exit_code == 2, result.stderr
    assert "is encrypted: set TFPACK_KEY_PASSWORD or pass --prompt-password" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (model / SIGNATURE_FILE).exists()


def test_password_for_a_plain_key_is_refused(model: Path, keys) -> None:
    result = _invoke("sign", model, "--key", keys["plain"], env={"TFPACK_KEY_PASSWORD": PASSWORD})
    assert result.exit_code == 2
    assert "is not encrypted but a password was given" in result.output
    assert PASSWORD not in result.output


def test_unusable_keys_exit_2(model: Path, tmp_path: Path, tfpack_cli) -> None:
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(private_key_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))  # type: ignore[arg-type]
    secp256k1 = tmp_path / "k1.pem"
    secp256k1.write_bytes(private_key_pem(ec.generate_private_key(ec.SECP256K1())))
    not_pem = tmp_path / "junk.pem"
    not_pem.write_text("not a key")
    for key, message in [
        (rsa_key, "is not an elliptic-curve key"),
        (secp256k1, "is on curve secp256k1: use one of secp256r1, secp384r1, secp521r1"),
        (not_pem, "is not a PEM private key"),
        (tmp_path / "absent.pem", "does not exist"),
    ]:
        result = tfpack_cli("sign", model, "--key", key)
        assert result.exit_code == 2 and message in result.stderr, (key, result.stderr)
    assert not (model / SIGNATURE_FILE).exists()


# --- private keys inside the version dir -------------------------------------------------------


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


DER_KEYS = {
    "pkcs8_der": lambda: _ec_key().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ),
    "pkcs8_der_encrypted": lambda: _ec_key().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"secret")
    ),
    "traditional_ec_der": lambda: _ec_key().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ),
    "rsa_der": lambda: rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ),
    "pem_padded_past_a_mebibyte": lambda: (
        b"\0" * (3 << 20)
        + _ec_key().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    ),
}


@pytest.mark.parametrize("encoding", sorted(DER_KEYS))
def test_a_private_key_in_any_encoding_or_size_is_never_signed(
    encoding: str, model: Path, signing_keys, tfpack_cli
) -> None:
    (model / "assets.extra" / "deploy.key").write_bytes(DER_KEYS[encoding]())
    result = tfpack_cli("sign", model, "--key", signing_keys["private"])
    assert result.exit_code == 2, result.stderr
    assert "deploy.key is a private key inside the version dir" in result.stderr
    assert not (model / SIGNATURE_FILE).exists()


def test_ordinary_model_files_are_not_mistaken_for_keys(model: Path, signing_keys, tfpack_cli) -> None:
    # A DER-looking blob (starts with a SEQUENCE tag) that is no key, and a public key.
    (model / "assets.extra" / "blob.bin").write_bytes(b"\x30\x82\x01\x00" + os.urandom(256))
    (model / "assets.extra" / "public.pem").write_bytes(
        _ec_key().public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # Added as a converter would add them: the provenance statement written again (sign refuses
    # a version dir its statement does not describe).
    write_provenance_statement(model, Provenance.load(model / PROVENANCE_FILE))
    result = tfpack_cli("sign", model, "--key", signing_keys["private"])
    assert result.exit_code == 0, result.stderr
