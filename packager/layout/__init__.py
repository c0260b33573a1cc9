"""What ``packager/`` and ``serving/`` share: the on-disk contract between stages and the trust check.

A model base path ``DIR/NAME`` holds numeric version dirs ``DIR/NAME/N`` (TF Serving's layout);
:mod:`.paths` names the files a version dir holds and where a serving image keeps things,
:mod:`.versions` is the one rule for which directories are versions (a SavedModel, a
model.tflite or both) and which model of one is served, :mod:`.names` checks model
names and image references, :mod:`.artifacts` reads the goldens and provenance records,
:mod:`.bundle` reads a signature bundle, and :mod:`.trust` is the check every version dir passes
before ``tfpack build`` bakes it or a server loads it.

This package imports nothing else of tfpack but :mod:`packager.errors`, and neither TensorFlow
nor Docker (model-signing and cryptography only inside the trust check), so the image entrypoint
and the smoke test can use it cheaply. ``serving/`` imports nothing else from ``packager/``.
"""

from packager.layout.artifacts import (
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    Goldens,
    Provenance,
    TensorSummary,
    read_provenance_statement,
)
from packager.layout.bundle import Bundle, read_bundle, read_signed_statement, signed_digest
from packager.layout.digests import file_sha256
from packager.layout.names import check_image_reference, check_model_name
from packager.layout.paths import (
    ASSETS_EXTRA,
    CHAIN_DIR,
    CLAIM_DIR,
    DEFAULT_SIGNATURE,
    DEPLOYMENT_CONFIG_DIR,
    GOLDENS_FILE,
    GRPC_PORT,
    IMAGE_ETC_DIR,
    MODELS_ROOT,
    PROVENANCE_FILE,
    PUBLIC_KEY_FILE,
    REST_PORT,
    SAVED_MODEL_FILE,
    SAVED_MODEL_TEXT_FILE,
    SERVING_TAG,
    SIGNATURE_FILE,
    STATEMENT_FILE,
    TFLITE_MODEL_FILE,
    TRUST_DIR,
    WARMUP_FILE,
)
from packager.layout.trust import Trust, VerifiedModel, check_statement_subject, hashing_config, verify_version_dir
from packager.layout.trust_material import SUPPORTED_CURVES, load_certificates, load_ec_public_key, require_file
from packager.layout.versions import (
    MAX_VERSION,
    SERVED_SAVED_MODEL,
    SERVED_TFLITE,
    ServedFormat,
    find_version_dirs,
    holds_saved_model,
    is_version_dir,
    is_version_name,
    latest_version_dir,
    next_version,
    numeric_versions,
    require_version_dir,
    served_format,
    version_dirs,
)

__all__ = [
    "ASSETS_EXTRA",
    "CHAIN_DIR",
    "CLAIM_DIR",
    "DEFAULT_SIGNATURE",
    "DEPLOYMENT_CONFIG_DIR",
    "GOLDENS_FILE",
    "GRPC_PORT",
    "IMAGE_ETC_DIR",
    "MAX_VERSION",
    "MODELS_ROOT",
    "PREDICATE_TYPE",
    "PROVENANCE_FILE",
    "PUBLIC_KEY_FILE",
    "REST_PORT",
    "SAVED_MODEL_FILE",
    "SAVED_MODEL_TEXT_FILE",
    "SERVED_SAVED_MODEL",
    "SERVED_TFLITE",
    "SERVING_TAG",
    "SIGNATURE_FILE",
    "STATEMENT_FILE",
    "STATEMENT_TYPE",
    "SUPPORTED_CURVES",
    "TFLITE_MODEL_FILE",
    "TRUST_DIR",
    "WARMUP_FILE",
    "Bundle",
    "Goldens",
    "Provenance",
    "ServedFormat",
    "TensorSummary",
    "Trust",
    "VerifiedModel",
    "check_image_reference",
    "check_model_name",
    "check_statement_subject",
    "file_sha256",
    "find_version_dirs",
    "hashing_config",
    "holds_saved_model",
    "is_version_dir",
    "is_version_name",
    "latest_version_dir",
    "load_certificates",
    "load_ec_public_key",
    "next_version",
    "numeric_versions",
    "read_bundle",
    "read_provenance_statement",
    "read_signed_statement",
    "require_file",
    "require_version_dir",
    "served_format",
    "signed_digest",
    "verify_version_dir",
    "version_dirs",
]
