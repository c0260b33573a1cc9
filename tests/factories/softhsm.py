"""A SoftHSM 2 token holding an EC P-256 key pair, for PKCS#11 signing tests.

Each token lives in its own directory (SOFTHSM2_CONF points at it), so the tests that use one
never touch a token of the machine's.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from factories.pki import public_key_pem

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
TOKEN = "tfpack-release"
KEY_LABEL = "model-signing"
PIN = "4711-secret-pin"
URI = f"pkcs11:token={TOKEN};object={KEY_LABEL}?module-name=libsofthsm2"


def _run(*command: str | Path, env: dict[str, str]) -> str:
    completed = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=60, env=env)
    assert completed.returncode == 0, f"{command}: {completed.stdout}{completed.stderr}"
    return completed.stdout


def make_token(directory: Path) -> dict[str, object]:
    """Initialise a token in ``directory``; return {'env', 'public_key' (PEM path), 'public_key_object'}.

    Fails the test (saying to run `make setup`) when SoftHSM or its tools are missing.
    """
    missing = [tool for tool in ("softhsm2-util", "pkcs11-tool") if shutil.which(tool) is None]
    if missing or not SOFTHSM_MODULE.exists():
        pytest.fail(f"PKCS#11 test tools missing ({', '.join(missing) or SOFTHSM_MODULE}): run `make setup`")
    # A declared dependency of tfpack (sign --pkcs11-uri): missing means a broken install, which
    # must fail the PKCS#11 tests rather than skip them.
    if importlib.util.find_spec("PyKCS11") is None:
        pytest.fail("PyKCS11 (a tfpack dependency) is not installed: run `make setup`")
    (directory / "tokens").mkdir()
    config = directory / "softhsm2.conf"
    config.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(config)}
    _run("softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--so-pin", "12345678", "--pin", PIN, env=env)
    pkcs11 = ("pkcs11-tool", "--module", SOFTHSM_MODULE, "--token-label", TOKEN)
    _run(
        *pkcs11,
        "--login",
        "--pin",
        PIN,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "01",
        "--label",
        KEY_LABEL,
        env=env,
    )
    _run(*pkcs11, "--read-object", "--type", "pubkey", "--label", KEY_LABEL, "-o", directory / "public.der", env=env)
    public_key = serialization.load_der_public_key((directory / "public.der").read_bytes())
    (directory / "public.pem").write_bytes(public_key_pem(public_key))  # type: ignore[arg-type]
    return {"env": env, "public_key": directory / "public.pem", "public_key_object": public_key}
