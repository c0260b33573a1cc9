"""Make the demo's inputs: a small Keras 3 model (like a freshly trained one) and a signing key pair.

Usage: python scripts/make_demo_inputs.py OUT_DIR
Writes OUT_DIR/source/fraud_scorer.keras, OUT_DIR/keys/signing.pem and OUT_DIR/keys/signing.pub.pem.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def write_model(path: Path) -> None:
    """A two-input, two-output tabular model with fixed random weights."""
    from packager.tf_runtime import tensorflow

    tensorflow()  # imported quietly
    import keras

    keras.utils.set_random_seed(42)
    amounts = keras.Input((8,), name="transaction")
    history = keras.Input((4,), name="history")
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(
        keras.layers.Concatenate(name="features")([amounts, history])
    )
    fraud = keras.layers.Dense(1, activation="sigmoid", name="fraud_probability")(hidden)
    segment = keras.layers.Dense(3, activation="softmax", name="segment")(hidden)
    path.parent.mkdir(parents=True, exist_ok=True)
    keras.Model([amounts, history], [fraud, segment], name="fraud_scorer").save(path)


def write_keys(directory: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private = directory / "signing.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private.chmod(0o600)
    (directory / "signing.pub.pem").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


if __name__ == "__main__":
    out = Path(sys.argv[1])
    write_model(out / "source" / "fraud_scorer.keras")
    write_keys(out / "keys")
