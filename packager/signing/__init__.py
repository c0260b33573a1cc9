"""Sign and verify version dirs with OpenSSF model-signing.

The signature is a standard model-signing bundle at ``VERSION_DIR/model.sig`` covering every other
file of the version dir, so the reference CLI (``model_signing verify key|certificate ...``)
accepts it and tfpack accepts the reference CLI's. The bundle records ``model.sig`` among its
ignored paths, which is how the verifier knows to leave the signature itself out again.

:mod:`.keys` loads signing keys and certificates, :mod:`.bundle` writes the bundle, :mod:`.sign`
and :mod:`.verify` are the two commands. The verification itself is the trust check the serving
image runs too, in :mod:`packager.layout.trust`; every use of model-signing's internals is in
:mod:`packager.layout._model_signing_compat`.
"""

from packager.layout import (
    SUPPORTED_CURVES,
    hashing_config,
    load_certificates,
    load_ec_public_key,
    read_signed_statement,
    signed_digest,
)
from packager.layout._model_signing_compat import MODEL_SIGNING_VERSION
from packager.signing.keys import PKCS11_MODULE_DIRS, private_key_files
from packager.signing.sign import SignerKind, SignResult, sign
from packager.signing.verify import VerifyResult, verify

__all__ = [
    "MODEL_SIGNING_VERSION",
    "PKCS11_MODULE_DIRS",
    "SUPPORTED_CURVES",
    "SignResult",
    "SignerKind",
    "VerifyResult",
    "hashing_config",
    "load_certificates",
    "load_ec_public_key",
    "private_key_files",
    "read_signed_statement",
    "sign",
    "signed_digest",
    "verify",
]
