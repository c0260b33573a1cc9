# The serving base of a tfpack serving image: what the image needs below tfpack's own files.
#
# `tfpack build` builds this once per base (cached as tfpack-serving-base:KEY, KEY a hash of the
# base image's ID, this file, the verifier requirements and the build arguments) and assembles
# the serving image on top of it itself, without a builder (packager/image.py): `docker build`
# stamps every step with the time it ran, so the same models never gave the same image twice.
# The layers tfpack writes are sorted, root-owned, fixed-mode and fixed-time tars, one per job:
#   /opt/tfpack/lib/                  tfpack's packages (packager, serving), taken from the
#                                     tfpack that runs the build, and the tfpack-model-server
#                                     script in /opt/tfpack/venv/bin (embedded base)
#   /etc/tfpack/                      what is served and trusted: serving.json, models.config,
#                                     trust/ (the public key or certificate chain, never a
#                                     private key), the session config, monitoring and batching
#   /models/NAME/                     one layer per model, its signed version dirs N/ (with
#                                     --models-from-volume: an empty /models instead, where one
#                                     read-only volume of models is mounted and verified at start)
# and the image config: the entrypoint `python -I -m serving.entrypoint` (it verifies every
# signature before it execs the server, and refuses run-time arguments, TFPACK_* variables or
# mounts that would change what is served or trusted), user 10001:10001, ports 8500 and 8501,
# MODEL_NAME and MODEL_BASE_PATH=/models, the OCI and dev.tfpack.* labels, and a HEALTHCHECK
# that passes once every model is AVAILABLE. A change of one model rewrites its layer and /etc/tfpack.
#
# BASE is either tfpack's embedded runtime (Debian bookworm with /opt/tfpack/venv holding
# TensorFlow and tfpack-model-server's dependencies, built offline by `tfpack build`; once it
# holds the tfpack user and tfpack.pth itself it is used as it is) or the real tensorflow/serving
# image, whose server is /usr/bin/tensorflow_model_server.
ARG BASE=tensorflow/serving:2.21.0
FROM ${BASE}

# Empty for the embedded server: the code layer brings its script.
ARG MODEL_SERVER_PATH=/usr/bin/tensorflow_model_server

USER root

# tensorflow/serving has no Python: give it one for the verifier (this step needs the network).
# Its Ubuntu's python3 may predate 3.11, which tfpack needs; then python3.11 is installed too.
# tfpack.pth puts /opt/tfpack/lib, where the code layer puts tfpack, on the venv's sys.path.
COPY verifier-requirements.txt /tmp/tfpack/
RUN set -eu; \
    if [ -n "$MODEL_SERVER_PATH" ] && [ ! -x "$MODEL_SERVER_PATH" ]; then \
        echo "the base has no model server at $MODEL_SERVER_PATH" >&2; exit 1; \
    fi; \
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
    fi; \
    rm -rf /tmp/tfpack; \
    getent group 10001 >/dev/null || groupadd --gid 10001 tfpack; \
    getent passwd 10001 >/dev/null || useradd --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tfpack; \
    site_packages="$(/opt/tfpack/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"; \
    echo /opt/tfpack/lib > "$site_packages/tfpack.pth"
