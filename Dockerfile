# The tfpack serving image: signed SavedModel version dirs under /models/NAME/N, a public key,
# and an entrypoint that verifies every signature before it execs the model server.
#
# `tfpack build` renders the build context (it never holds a private key):
#   models/NAME/N/...             the version dirs, each with its model.sig
#   etc/serving.json              what is served and trusted: models and versions, the server,
#                                 allow-unsigned, allow-reload-config
#   etc/models.config             the ModelServerConfig, each model pinned to the version it serves
#   etc/trust/public_key.pem      the key the entrypoint verifies against, or
#   etc/trust/chain/NN.pem        the certificate chain it verifies certificate signatures against
#   etc/session_config.pbtxt      the servers' session ConfigProto (soft placement)
#   wheels/tfpack-*.whl           tfpack itself, packed from the tfpack that runs the build
#   verifier-requirements.txt     what the verifier needs where the base has no Python
#
# etc/ becomes /etc/tfpack, root-owned (files 0644, dirs 0755). The entrypoint reads only those
# files: no environment variable changes what is served or trusted, and it refuses to start when
# run-time arguments, TFPACK_* variables or mounts try to.
#
# BASE is either tfpack's embedded runtime (Debian bookworm with /opt/tfpack/venv holding
# TensorFlow and tfpack-model-server's dependencies, built offline by `tfpack build`) or the
# real tensorflow/serving image, whose server is /usr/bin/tensorflow_model_server.
ARG BASE=tensorflow/serving:2.21.0
FROM ${BASE}

ARG MODEL_SERVER_PATH=/usr/bin/tensorflow_model_server
ARG MODEL_NAME=model

USER root

# tensorflow/serving has no Python: give it one for the verifier (this step needs the network).
# Its Ubuntu's python3 may predate 3.11, which tfpack needs; then python3.11 is installed too.
COPY verifier-requirements.txt /tmp/tfpack/
RUN set -eu; \
    if [ ! -x /opt/tfpack/venv/bin/python ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            ca-certificates python3 python3-venv; \
        python=python3; \
        if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
                python3.11 python3.11-venv; \
            python=python3.11; \
        fi; \
        rm -rf /var/lib/apt/lists/*; \
        "$python" -m venv /opt/tfpack/venv; \
        /opt/tfpack/venv/bin/pip install --no-cache-dir -r /tmp/tfpack/verifier-requirements.txt; \
    fi

# --no-deps: the base already holds the runtime; tfpack's own dependency list is the host's.
COPY wheels/ /tmp/tfpack/wheels/
RUN set -eu; \
    /opt/tfpack/venv/bin/pip install --no-index --no-deps --no-cache-dir /tmp/tfpack/wheels/*.whl; \
    rm -rf /tmp/tfpack; \
    getent group 10001 >/dev/null || groupadd --gid 10001 tfpack; \
    getent passwd 10001 >/dev/null || useradd --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tfpack; \
    if [ ! -x "$MODEL_SERVER_PATH" ]; then \
        echo "the base has no model server at $MODEL_SERVER_PATH" >&2; exit 1; \
    fi

# Root-owned and read-only for the server's user: a compromised server cannot swap a model.
COPY etc/ /etc/tfpack/
COPY models/ /models/

# TF Serving's variables, set to what is baked (overriding the base's MODEL_NAME=model); the
# entrypoint refuses other values at run time rather than serve something else.
ENV MODEL_NAME=${MODEL_NAME} \
    MODEL_BASE_PATH=/models

EXPOSE 8500 8501
USER 10001:10001
# -I: isolated mode; no PYTHON* variable, user site or working directory reaches the verifier.
ENTRYPOINT ["/opt/tfpack/venv/bin/python", "-I", "-m", "serving.entrypoint"]
CMD []
