"""Where things are: the files of a version dir, and a serving image's paths, trust dir and ports.

A version dir written by tfpack holds the model, a SavedModel (saved_model.pb and variables/) or
a TFLite flatbuffer (model.tflite, TF Serving's TFLite layout) or both, and besides it::

    assets.extra/tf_serving_warmup_requests    PredictionLog TFRecords TF Serving replays at load
    assets.extra/tfpack_goldens.npz            inputs the converter fed and the outputs it verified
    assets.extra/tfpack_provenance.json        source digests, versions, options, signature summary
    assets.extra/tfpack_provenance.intoto.json the same as an in-toto Statement v1 (subject: the
                                               model's root digest), written last before signing
    model.sig                                  OpenSSF model-signing bundle over every other file
"""

from __future__ import annotations

SAVED_MODEL_FILE = "saved_model.pb"
SAVED_MODEL_TEXT_FILE = "saved_model.pbtxt"
# TF Serving serves it instead of the SavedModel beside it (if any) with --prefer_tflite_model.
TFLITE_MODEL_FILE = "model.tflite"
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = f"{ASSETS_EXTRA}/tf_serving_warmup_requests"
GOLDENS_FILE = f"{ASSETS_EXTRA}/tfpack_goldens.npz"
PROVENANCE_FILE = f"{ASSETS_EXTRA}/tfpack_provenance.json"
STATEMENT_FILE = f"{ASSETS_EXTRA}/tfpack_provenance.intoto.json"
SIGNATURE_FILE = "model.sig"
SERVING_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"

# Where a serving image keeps things and listens: TF Serving's own defaults, shared by the image
# build, its entrypoint, the smoke test and the Kubernetes manifests.
MODELS_ROOT = "/models"
IMAGE_ETC_DIR = "/etc/tfpack"
# Where `tfpack k8s` mounts the deployment's ConfigMap (read-only) holding the models.config it
# rendered; the entrypoint refuses to serve when that config is not the one the image bakes.
DEPLOYMENT_CONFIG_DIR = "/etc/tfpack-deployment"
# Where `tfpack k8s` mounts the models claim (read-only) in the verifier initContainer of an
# image built with --models-from-volume: `serving.verify --stage-from` copies the served version
# dirs from it into /models. The model server's container never mounts it.
CLAIM_DIR = "/tfpack-claim"
GRPC_PORT = 8500
REST_PORT = 8501

# A trust dir (IMAGE_ETC_DIR/TRUST_DIR in an image) holds PUBLIC_KEY_FILE, or CHAIN_DIR/NN.pem.
TRUST_DIR = "trust"
PUBLIC_KEY_FILE = "public_key.pem"
CHAIN_DIR = "chain"
