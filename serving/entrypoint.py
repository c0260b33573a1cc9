"""The serving image's entrypoint: verify every version dir, then exec the model server on exactly those.

Run as ``python -I -m serving.entrypoint [TUNING FLAGS...]``. Everything that decides *what* is
served and *whom* to trust was baked into root-owned files by ``tfpack build``; the entrypoint
reads only those, never the environment:

    /etc/tfpack/serving.json          the models and versions, their labels and signed digests,
                                      the server, allow-unsigned, allow-reload-config,
                                      monitoring, batching, models-from-volume,
                                      prefer-tflite-model (BakedServing)
    /etc/tfpack/models.config         the ModelServerConfig: each model pinned to every version
                                      baked for it, with its version labels; must equal the one
                                      serving.json implies
    /etc/tfpack/trust/                public_key.pem, or chain/NN.pem
    /etc/tfpack/session_config.pbtxt  the servers' session ConfigProto
    /etc/tfpack/monitoring.config     (--monitoring) Prometheus metrics on the REST port
    /etc/tfpack/batching.config       (--batching) the BatchingParameters the build was given

:func:`baked_etc_files` renders all of them but the trust material, for ``tfpack build``.

It refuses to start (exit 2, naming each offender) when run-time arguments or environment try to
change any of that: a server flag outside the tuning allowlist (model paths, config files, poll
settings, ports, trust) or one the baked config sets, TFPACK_* variables, a MODEL_NAME that is not
a baked model, a MODEL_BASE_PATH other than /models, Python variables that would load code into
the server, a mount over /etc/tfpack, /opt/tfpack or the server binary, or a file such as
models.config dropped into /models. Then every numeric version dir of every model dir under
/models is verified (exit 3 on any failure): the served ones and any others, so nothing
unverified sits where a server looks.

Each served version must verify to the signed digest serving.json records for it (the build's):
a dir the trusted key signed for another model or an older version is refused (exit 3), and so
is any symlink, FIFO, socket or device under /models.

An image built with ``--models-from-volume`` bakes no model: it takes exactly one read-only mount
at /models (a writable one, one below /models or none at all is refused) and verifies it as it
would baked dirs. In Kubernetes that mount is an emptyDir into which ``serving.verify
--stage-from /tfpack-claim`` (the initContainer, :func:`stage_image`) copied the served versions
from the read-only claim, so the server never reads the claim. In either kind of image a
Kubernetes deployment may mount its ConfigMap, read-only, at /etc/tfpack-deployment: its
models.config must be the one this image serves (:func:`deployment_model_config_text` renders
it), else the image refuses to serve (exit 3).

:func:`verify_image` is all of that; ``serving.verify`` (a Kubernetes initContainer) runs it
(or :func:`stage_image`) and exits, this module runs it and then execs the server.

The server's command line is built here: the baked config file (versions pinned, so a version
dir that appears later is never loaded), file-system polling off, the baked monitoring and
batching files, --prefer_tflite_model=true when a baked version holds a model.tflite, and for
tfpack-model-server config reloads refused (or, in an image built to allow
them, each newly loaded dir verified against the baked trust first).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.errors import TfpackError, UsageError, VerificationError
from packager.layout import (
    CHAIN_DIR,
    CLAIM_DIR,
    DEPLOYMENT_CONFIG_DIR,
    GRPC_PORT,
    IMAGE_ETC_DIR,
    MAX_VERSION,
    PUBLIC_KEY_FILE,
    REST_PORT,
    TRUST_DIR,
    Trust,
    VerifiedModel,
    check_model_name,
    version_dirs,
)
from packager.layout import MODELS_ROOT as MODELS_ROOT_PATH
from serving.staging import remove_staged, stage_versions, unservable_entries

if TYPE_CHECKING:
    from google.protobuf.message import Message

ETC_DIR = Path(IMAGE_ETC_DIR)
MODELS_ROOT = Path(MODELS_ROOT_PATH)
DEPLOYMENT_DIR = Path(DEPLOYMENT_CONFIG_DIR)
CLAIM_PATH = Path(CLAIM_DIR)
SERVING_FILE = "serving.json"
MODEL_CONFIG_FILE = "models.config"
SESSION_CONFIG_FILE = "session_config.pbtxt"
MONITORING_CONFIG_FILE = "monitoring.config"
BATCHING_CONFIG_FILE = "batching.config"
MOUNTINFO = Path("/proc/self/mountinfo")
EMBEDDED_SERVER = "tfpack-model-server"
TF_SERVING_SERVER = "tensorflow_model_server"
SERVER_PATHS = {
    EMBEDDED_SERVER: "/opt/tfpack/venv/bin/tfpack-model-server",
    TF_SERVING_SERVER: "/usr/bin/tensorflow_model_server",
}
# 2: every baked version is served (format 1 served each model's highest), with labels,
# monitoring and batching.
SERVING_FORMAT = 2
_PREFIX = "tfpack-entrypoint:"
# Passed to either server as --tensorflow_session_config_file. Soft placement lets a model whose
# ops are pinned to GPUs (merged towers: /device:*:N) run on whatever devices the host has;
# tensorflow_model_server places strictly by default and would refuse to load it on a CPU host.
SESSION_CONFIG = (
    "# tensorflow.ConfigProto for the model server's sessions (written by tfpack build)\nallow_soft_placement: true\n"
)
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's default path, on the REST port
# Label names end up in REST paths (/v1/models/NAME/labels/LABEL) and image labels: keep them plain.
_LABEL_NAME = re.compile(r"[A-Za-z0-9_-]+")
# A signed version dir's model digest as serving.json and the image labels record it.
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

# Server flags an operator may pass at run time (`docker run IMAGE --flag=value`, k8s args):
# performance and behaviour tuning that cannot change which files are served or whom to trust.
# Everything else is refused; the reasons below name the common ones.
TUNING_FLAGS = frozenset(
    {
        "rest_api_num_threads",
        "rest_api_timeout_in_ms",
        "rest_api_enable_cors_support",
        "enable_batching",
        "enable_per_model_batching_parameters",
        "allow_version_labels_for_unavailable_models",
        "num_load_threads",
        "num_unload_threads",
        "max_num_load_retries",
        "load_retry_interval_micros",
        "flush_filesystem_caches",
        "tensorflow_session_parallelism",
        "tensorflow_intra_op_parallelism",
        "tensorflow_inter_op_parallelism",
        "per_process_gpu_memory_fraction",
        "grpc_channel_arguments",
        "grpc_max_threads",
        "enable_model_warmup",
        "num_request_iterations_for_warmup",
        "remove_unused_fields_from_bundle_metagraph",
        "prefer_tflite_model",
        "num_tflite_pools",
        "num_tflite_interpreters_per_pool",
        "enable_signature_method_name_check",
        "xla_cpu_compilation_enabled",
        "xla_gpu_compilation_enabled",
        "enable_profiler",
        "mixed_precision",
        "skip_initialize_tpu",
        "enable_grpc_healthcheck_service",
        "enable_serialization_as_tensor_content",
        "use_alts_credentials",
        "version",
    }
)
# tfpack-model-server's own tuning flags an operator may pass (embedded base only); its other
# --tfpack_* flags are the entrypoint's to set.
EMBEDDED_TUNING_FLAGS = frozenset({"tfpack_max_request_tensor_bytes"})
_REFUSED_FLAG_REASONS = {
    "model_name": "the image serves the models baked into it",
    "model_base_path": "the image serves the models baked into it",
    "model_config_file": f"the image serves its baked {IMAGE_ETC_DIR}/{MODEL_CONFIG_FILE}",
    "model_config_file_poll_wait_seconds": "the image's model config is fixed",
    "file_system_poll_wait_seconds": "the image loads only the version dirs it verified at start-up",
    "saved_model_tags": "the image serves the meta graph it was built and verified for",
    "tensorflow_session_config_file": "the image passes its baked session config",
    "platform_config_file": "config files are baked at build time, not taken at run time",
    "batching_parameters_file": "config files are baked at build time, not taken at run time",
    "monitoring_config_file": "config files are baked at build time, not taken at run time",
    "ssl_config_file": "config files are baked at build time, not taken at run time "
    "(terminate TLS in front of the container)",
    "thread_pool_factory_config_file": "config files are baked at build time, not taken at run time",
    "port": f"the image listens on {GRPC_PORT} (gRPC); map ports with docker run -p",
    "rest_api_port": f"the image listens on {REST_PORT} (REST); map ports with docker run -p",
    "grpc_socket_path": "the image listens on TCP ports only",
}
# Environment read by Python itself that could make the server import other code; the image's
# own harmless ones (PYTHONUNBUFFERED, ...) pass.
_HARMLESS_PYTHON_ENV = frozenset(
    {
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "PYTHONHASHSEED",
        "PYTHONFAULTHANDLER",
        "PYTHONNOUSERSITE",
    }
)
_CODE_LOADING_ENV = frozenset(
    {
        "TF_PLUGGABLE_DEVICE_LIBRARY_PATH",
        "GCONV_PATH",
        "XLA_FLAGS",
        "TF_XLA_FLAGS",
        "TF_DUMP_GRAPH_PREFIX",
        "OPENSSL_CONF",
        "OPENSSL_MODULES",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    }
)
# The dynamic loader's variables (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, ...) all load or redirect code.
_CODE_LOADING_PREFIXES = ("LD_",)
# Mount points a container engine or Kubernetes sets up by itself; anything else mounted at run
# time (over /models, a Python site dir, a shared library) is refused: what the image verified is
# what it runs. /tmp is a scratch tmpfs (a read-only root filesystem needs one).
_ENGINE_MOUNTS = ("/proc", "/sys", "/dev", "/tmp", "/run/secrets", "/var/run/secrets")
# Where the kubelet keeps a pod's volumes: .../volumes/kubernetes.io~<plugin>/<name> (the mount's root).
_KUBERNETES_VOLUME = "/kubernetes.io~"
_KUBERNETES_EMPTY_DIR = "/kubernetes.io~empty-dir/"
# A dir ``serving.verify --stage-from`` makes in /models before it copies: what holds it is a
# staging's, and may be emptied by the next one.
STAGING_MARKER = ".tfpack-staging"
_ENGINE_FILES = frozenset({"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/termination-log"})


class RefusedOverride(UsageError):
    """Run-time arguments, environment or mounts that would change what is served or trusted."""


@dataclass(frozen=True)
class BakedServing:
    """/etc/tfpack/serving.json: what ``tfpack build`` decided, checked when made and when read back.

    Raises:
        UsageError: a field out of its rules (the message names it): an unknown server, a bad
            model name, versions that are not ascending int64s, a label that is not
            ``[A-Za-z0-9_-]+`` or names a version its model was not baked with, no trust without
            allow-unsigned, config reloads on a server that cannot verify them, a digest that is
            not ``sha256:<hex>`` or names no served version, a served version without one
            (allowed only with allow-unsigned), models from a volume with allow-unsigned.
    """

    model_server: str  # EMBEDDED_SERVER or TF_SERVING_SERVER
    models: dict[str, list[int]]  # name -> the baked versions, ascending; every one is served
    allow_unsigned: bool = False
    allow_reload_config: bool = False
    trust: str = "public_key"  # "public_key", "cert_chain" or "none" (allow-unsigned only)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> label -> version
    monitoring: bool = False  # Prometheus metrics at PROMETHEUS_PATH on the REST port
    batching: bool = False  # server-side batching with the baked batching.config
    # No model baked: exactly one read-only volume at /models holds them (checked at start-up).
    models_from_volume: bool = False
    # model -> version ("N", as JSON keys are) -> "sha256:<hex>", the signed digest the build
    # verified: a served version must verify to exactly that, not to any dir the trust signed.
    digests: dict[str, dict[str, str]] = field(default_factory=dict)
    # A served version holds a model.tflite: the server runs with --prefer_tflite_model=true, so
    # every version holding one is served from it (TF Serving's flag is global).
    prefer_tflite_model: bool = False

    def __post_init__(self) -> None:
        if self.model_server not in SERVER_PATHS:
            raise UsageError(f"model_server must be one of {sorted(SERVER_PATHS)}")
        if not isinstance(self.models, dict) or not self.models:
            raise UsageError("no models")
        for name, versions in self.models.items():
            check_model_name(name, "model")
            if (
                not isinstance(versions, list)
                or not versions
                or not all(type(v) is int and 0 <= v <= MAX_VERSION for v in versions)
                or versions != sorted(set(versions))
            ):
                raise UsageError(f"model {name}: versions must be ascending int64s")
        flags = (self.allow_unsigned, self.allow_reload_config, self.monitoring, self.batching)
        if not all(isinstance(value, bool) for value in flags):
            raise UsageError("allow_unsigned, allow_reload_config, monitoring and batching must be true or false")
        if not isinstance(self.models_from_volume, bool):
            raise UsageError("models_from_volume must be true or false")
        if not isinstance(self.prefer_tflite_model, bool):
            raise UsageError("prefer_tflite_model must be true or false")
        if self.trust not in ("public_key", "cert_chain", "none"):
            raise UsageError("trust must be public_key, cert_chain or none")
        if self.trust == "none" and not self.allow_unsigned:
            raise UsageError("no trust material and allow_unsigned false")
        if self.models_from_volume and self.allow_unsigned:
            raise UsageError(
                "models_from_volume with allow_unsigned: a volume's models must each be the signed one the build "
                "verified, and an unsigned dir could be anything"
            )
        if self.allow_reload_config and self.model_server != EMBEDDED_SERVER:
            raise UsageError("only tfpack-model-server can verify reloaded models")
        if not isinstance(self.labels, dict):
            raise UsageError("labels must map each model to {label: version}")
        for name, labels in self.labels.items():
            if name not in self.models:
                raise UsageError(f"labels for model {name!r}, which is not baked")
            if not isinstance(labels, dict):
                raise UsageError(f"labels of model {name} must map each label to a version")
            for label, version in labels.items():
                if not isinstance(label, str) or not _LABEL_NAME.fullmatch(label):
                    raise UsageError(f"label {label!r} of model {name}: label names are letters, digits, _ and -")
                if type(version) is not int:
                    raise UsageError(f"label {name}:{label}: its version must be a number, not {version!r}")
                if version not in self.models[name]:
                    baked = ", ".join(map(str, self.models[name]))
                    raise UsageError(
                        f"label {name}:{label}={version}: model {name} has no version {version} (it has {baked})"
                    )
        self._check_digests()

    def _check_digests(self) -> None:
        if not isinstance(self.digests, dict):
            raise UsageError("digests must map each model to {version: digest}")
        for name, digests in self.digests.items():
            if name not in self.models:
                raise UsageError(f"digests for model {name!r}, which is not baked")
            if not isinstance(digests, dict):
                raise UsageError(f"digests of model {name} must map each version to its digest")
            versions = {str(version) for version in self.models[name]}
            for version, digest in digests.items():
                if version not in versions:
                    raise UsageError(f"digest of {name}/{version}: model {name} has no version {version!r}")
                if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
                    raise UsageError(f"digest of {name}/{version} must be sha256:<64 hex digits>, not {digest!r}")
        if self.trust == "none" and any(self.digests.values()):
            raise UsageError("digests without trust material: nothing could verify a signed version")
        # Only an image that allows unsigned models (never one whose models come from a volume)
        # may serve a version without the digest it was built for: an unsigned one.
        if not self.allow_unsigned:
            missing = [
                f"{name}/{version}"
                for name, versions in self.models.items()
                for version in versions
                if self.digest(name, version) is None
            ]
            if missing:
                raise UsageError(f"no signed digest for {', '.join(missing)}: every served version needs one")

    def digest(self, name: str, version: int) -> str | None:
        """The signed digest the build recorded for version ``version`` of ``name``; None: unsigned."""
        return self.digests.get(name, {}).get(str(version))

    @property
    def server_path(self) -> str:
        return SERVER_PATHS[self.model_server]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SERVING_FORMAT,
            "model_server": self.model_server,
            "models": self.models,
            "labels": self.labels,
            "allow_unsigned": self.allow_unsigned,
            "allow_reload_config": self.allow_reload_config,
            "trust": self.trust,
            "monitoring": self.monitoring,
            "batching": self.batching,
            "models_from_volume": self.models_from_volume,
            "digests": self.digests,
            "prefer_tflite_model": self.prefer_tflite_model,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def loads(cls, text: str, where: str = SERVING_FILE) -> BakedServing:
        """Parse and check serving.json.

        Raises:
            UsageError: not a serving.json this entrypoint understands.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{where} is not JSON: {exc}") from None

        def bad(why: str) -> UsageError:
            return UsageError(f"{where} is not a tfpack serving config ({why}): rebuild the image")

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        if data.get("format") == 1:
            # Not read as format 2: it meant "serve each model's highest version", and its
            # models.config says so; serving every baked version instead would serve what the
            # build never meant to. An entrypoint only ever reads its own image's file anyway.
            raise bad("format 1, written by an older tfpack that served only each model's highest version")
        if data.get("format") != SERVING_FORMAT:
            raise bad(f"format must be {SERVING_FORMAT}")
        optional = (
            "labels",
            "allow_unsigned",
            "allow_reload_config",
            "monitoring",
            "batching",
            "models_from_volume",
            "digests",
            "prefer_tflite_model",
        )
        try:
            return cls(
                model_server=data.get("model_server", ""),
                models=data.get("models", {}),
                trust=data.get("trust", ""),
                **{key: data[key] for key in optional if key in data},
            )
        except UsageError as exc:
            raise bad(str(exc)) from None


@functools.cache
def _model_server_config_class() -> type[Message]:
    """The part of TF Serving's ModelServerConfig that models.config uses, as a protobuf class.

    The verifier in a tensorflow/serving base has protobuf (model-signing needs it) but not
    tensorflow-serving-api, which would pull in TensorFlow: the messages are described here with
    tensorflow_serving/config/model_server_config.proto's names and field numbers, so text_format
    prints what it prints for the real ones (tests compare the two).
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    kind = descriptor_pb2.FieldDescriptorProto
    one, many = kind.LABEL_OPTIONAL, kind.LABEL_REPEATED
    package = "tensorflow.serving"
    file = descriptor_pb2.FileDescriptorProto(name="tfpack/model_server_config.proto", package=package, syntax="proto3")
    specific = file.message_type.add(name="Specific")  # ServableVersionPolicy.Specific
    specific.field.add(name="versions", number=1, type=kind.TYPE_INT64, label=many)
    policy = file.message_type.add(name="ServableVersionPolicy")
    policy.field.add(name="specific", number=102, type=kind.TYPE_MESSAGE, label=one, type_name=f".{package}.Specific")
    model = file.message_type.add(name="ModelConfig")
    entry = model.nested_type.add(name="VersionLabelsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=kind.TYPE_STRING, label=one)
    entry.field.add(name="value", number=2, type=kind.TYPE_INT64, label=one)
    model.field.add(name="name", number=1, type=kind.TYPE_STRING, label=one)
    model.field.add(name="base_path", number=2, type=kind.TYPE_STRING, label=one)
    model.field.add(name="model_platform", number=4, type=kind.TYPE_STRING, label=one)
    model.field.add(
        name="model_version_policy",
        number=7,
        type=kind.TYPE_MESSAGE,
        label=one,
        type_name=f".{package}.ServableVersionPolicy",
    )
    model.field.add(
        name="version_labels",
        number=8,
        type=kind.TYPE_MESSAGE,
        label=many,
        type_name=f".{package}.ModelConfig.VersionLabelsEntry",
    )
    config_list = file.message_type.add(name="ModelConfigList")
    config_list.field.add(
        name="config", number=1, type=kind.TYPE_MESSAGE, label=many, type_name=f".{package}.ModelConfig"
    )
    server = file.message_type.add(name="ModelServerConfig")
    server.field.add(
        name="model_config_list", number=1, type=kind.TYPE_MESSAGE, label=one, type_name=f".{package}.ModelConfigList"
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.ModelServerConfig"))


def _model_server_config(baked: BakedServing, models_root: str) -> Message:
    config = _model_server_config_class()()
    for name, versions in baked.models.items():
        model = config.model_config_list.config.add(
            name=name, base_path=f"{models_root}/{name}", model_platform="tensorflow"
        )
        model.model_version_policy.specific.versions.extend(versions)
        model.version_labels.update(baked.labels.get(name, {}))
    return config


def model_config_text(baked: BakedServing, models_root: str = str(MODELS_ROOT)) -> str:
    """The text-format ModelServerConfig serving every baked version of every model, with its labels.

    ``specific`` rather than TF Serving's default ``latest``: every baked version is served, and
    a version dir that appears under a base path later is never aspired to, whatever the
    server's polling does.
    """
    from google.protobuf import text_format

    return text_format.MessageToString(_model_server_config(baked, models_root))


def deployment_model_config_text(models: dict[str, list[int]], labels: dict[str, dict[str, int]]) -> str:
    """The models.config a deployment's ConfigMap at /etc/tfpack-deployment must hold for an image.

    ``tfpack k8s`` renders it from the image's labels (``dev.tfpack.model.NAME.versions`` and
    ``dev.tfpack.model.NAME.label.LABEL``); the image's entrypoint refuses to serve when the
    mounted file does not parse to the config it bakes, so a ConfigMap rendered for another image
    (other models, versions or labels) cannot go unnoticed.

    Args:
        models: every model the image serves, with every version it serves.
        labels: ``{model: {label: version}}``; models without labels may be left out.

    Raises:
        UsageError: a model name, version or label out of :class:`BakedServing`'s rules.
    """
    # BakedServing checks names, versions and labels; its server and trust do not enter
    # models.config. Sorted by name: serving.json (sort_keys) gives the image its models in
    # that order, and the config's model list is compared in order.
    served = BakedServing(
        model_server=EMBEDDED_SERVER,
        models=dict(sorted(models.items())),
        labels=labels,
        allow_unsigned=True,
        trust="none",
    )
    return model_config_text(served)


def _monitoring_config() -> Message:
    from serving.metrics import MonitoringConfig

    config = MonitoringConfig()
    config.prometheus_config.enable = True
    config.prometheus_config.path = PROMETHEUS_PATH
    return config


def monitoring_config_text() -> str:
    """The text-format MonitoringConfig turning on Prometheus metrics at PROMETHEUS_PATH."""
    from google.protobuf import text_format

    return text_format.MessageToString(_monitoring_config())


def _same_text_proto(text: str, expected: Message) -> bool:
    """Whether ``text`` parses into a message equal to ``expected`` (whatever its formatting:
    the build's protobuf and the image's may print differently)."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, type(expected)()) == expected
    except text_format.ParseError:
        return False


def check_batching_parameters(text: str) -> None:
    """Check a text-format BatchingParameters the way tfpack-model-server reads its file.

    Raises:
        UsageError: it does not parse, or a value is out of range (the message names the field).
    """
    from google.protobuf import text_format

    from serving.batching import BatchingParameters, batching_options

    try:
        batching_options(text_format.Parse(text, BatchingParameters()))
    except text_format.ParseError as exc:
        raise UsageError(f"the batching parameters are not a text-format BatchingParameters: {exc}") from None
    except ValueError as exc:
        raise UsageError(f"the batching parameters are out of range: {exc}") from None


def baked_etc_files(baked: BakedServing, *, batching_parameters: str | None) -> dict[str, str]:
    """Every file of /etc/tfpack but the trust material, by file name, as ``tfpack build`` bakes them.

    Args:
        baked: what the image serves; ``baked.batching`` must say whether
            ``batching_parameters`` is given.
        batching_parameters: the text-format BatchingParameters for batching.config (the
            build's --batching file), checked as tfpack-model-server would.

    Raises:
        UsageError: the batching parameters do not parse or are out of range.
        ValueError: ``baked.batching`` and ``batching_parameters`` disagree (a bug).
    """
    if baked.batching != (batching_parameters is not None):
        raise ValueError("baked.batching must be true exactly when batching_parameters are given")
    files = {
        SERVING_FILE: baked.dumps(),
        MODEL_CONFIG_FILE: model_config_text(baked),
        SESSION_CONFIG_FILE: SESSION_CONFIG,
    }
    if baked.monitoring:
        files[MONITORING_CONFIG_FILE] = monitoring_config_text()
    if batching_parameters is not None:
        check_batching_parameters(batching_parameters)
        files[BATCHING_CONFIG_FILE] = batching_parameters
    return files


@dataclass(frozen=True)
class ImageLayout:
    """Where the baked files and the models are; tests point it at a temp dir."""

    etc_dir: Path = ETC_DIR
    models_root: Path = MODELS_ROOT
    mountinfo: Path = MOUNTINFO
    require_root_owned: bool = True
    deployment_dir: Path = DEPLOYMENT_DIR
    claim_dir: Path = CLAIM_PATH  # where serving.verify --stage-from finds the models claim

    @property
    def serving_file(self) -> Path:
        return self.etc_dir / SERVING_FILE

    @property
    def model_config(self) -> Path:
        return self.etc_dir / MODEL_CONFIG_FILE

    @property
    def session_config(self) -> Path:
        return self.etc_dir / SESSION_CONFIG_FILE

    @property
    def monitoring_config(self) -> Path:
        return self.etc_dir / MONITORING_CONFIG_FILE

    @property
    def batching_config(self) -> Path:
        return self.etc_dir / BATCHING_CONFIG_FILE

    @property
    def trust_dir(self) -> Path:
        return self.etc_dir / TRUST_DIR

    @property
    def deployment_model_config(self) -> Path:
        return self.deployment_dir / MODEL_CONFIG_FILE


# --- what run time may and may not change ------------------------------------------------------


def check_environment(environ: Mapping[str, str], baked: BakedServing) -> list[str]:
    """One line per environment variable that would change what is served or trusted."""
    problems: list[str] = []
    for name in sorted(environ):
        value = environ[name]
        if name.startswith("TFPACK_"):
            problems.append(
                f"{name} is set: trust and serving settings are baked into {ETC_DIR} at build "
                "time and never taken from the environment"
            )
        elif name == "MODEL_NAME" and value not in baked.models:
            try:
                check_model_name(value, "MODEL_NAME")
                why = f"this image serves {', '.join(baked.models)}"
            except UsageError as exc:
                why = str(exc)
            problems.append(f"MODEL_NAME={value!r}: {why}")
        elif name == "MODEL_BASE_PATH" and value != str(MODELS_ROOT):
            problems.append(f"MODEL_BASE_PATH={value!r}: this image serves its models from {MODELS_ROOT}")
        elif (
            (name.startswith("PYTHON") and not name.startswith("PYTHON_") and name not in _HARMLESS_PYTHON_ENV)
            or name in _CODE_LOADING_ENV
            or name.startswith(_CODE_LOADING_PREFIXES)
        ):
            problems.append(f"{name} is set: it could load other code into the model server")
    return problems


def check_arguments(
    argv: Sequence[str], model_server: str = EMBEDDED_SERVER, *, baked: BakedServing | None = None
) -> tuple[list[str], list[str]]:
    """(the tuning flags to pass on, one line per refused argument).

    Args:
        baked: the image's serving.json: the flags its options set (:func:`baked_flags`) are
            refused too, even tuning ones such as --enable_batching.
    """
    from serving.flags import TF_SERVING_FLAGS, TFPACK_FLAGS, FlagError, _convert

    allowed = TUNING_FLAGS | (EMBEDDED_TUNING_FLAGS if model_server == EMBEDDED_SERVER else frozenset())
    fixed = {
        name: f"the image sets {argument} itself (built with tfpack build {option})"
        for name, (argument, option) in (baked_flags(ImageLayout(), baked) if baked else {}).items()
    }
    kinds = {**TF_SERVING_FLAGS, **TFPACK_FLAGS}
    passed: list[str] = []
    problems: list[str] = []
    for argument in argv:
        name, has_value, value = argument.lstrip("-").partition("=")
        if not argument.startswith("-") or not name:
            problems.append(f"{argument!r}: only --flag=value server flags are taken at run time")
            continue
        if name in fixed:
            problems.append(f"{argument}: {fixed[name]}")
            continue
        if name not in allowed:
            reason = _REFUSED_FLAG_REASONS.get(name) or (
                "tensorflow_model_server has no such flag"
                if name not in kinds or (name in TFPACK_FLAGS and model_server != EMBEDDED_SERVER)
                else "tfpack-model-server's own flags are set by the entrypoint"
                if name in TFPACK_FLAGS
                else "not a tuning flag this image accepts at run time (see TUNING_FLAGS)"
            )
            problems.append(f"{argument}: {reason}")
            continue
        kind = kinds[name][0]
        if not has_value and kind is not bool:
            problems.append(f"{argument}: give a value, --{name}=VALUE")
            continue
        try:
            _convert(name, kind, value if has_value else "true")
        except FlagError as exc:
            problems.append(f"{argument}: {exc}")
            continue
        passed.append(f"--{name}={value}" if has_value else f"--{name}")
    return passed, problems


def _unescape_mount_point(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, index = [], 0
    while index < len(field):
        if field[index] == "\\" and field[index + 1 : index + 4].isdigit():
            out.append(chr(int(field[index + 1 : index + 4], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


@dataclass(frozen=True)
class Mount:
    """One mount of the container (a line of /proc/self/mountinfo)."""

    point: str  # where it is mounted, unescaped
    read_only: bool  # its per-mount options (field 6) hold "ro"
    device: str = ""  # major:minor of the file system it comes from (field 3)
    root: str = ""  # the dir of that file system mounted here (field 4), unescaped


def read_mounts(layout: ImageLayout) -> list[Mount]:
    """Every mount /proc/self/mountinfo lists, in its order; none when it cannot be read."""
    try:
        lines = layout.mountinfo.read_text().splitlines()
    except OSError:
        return []  # no /proc: nothing mounted over anything either
    mounts = []
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 6:
            continue
        mounts.append(
            Mount(
                point=_unescape_mount_point(fields[4]),
                read_only="ro" in fields[5].split(","),
                device=fields[2],
                root=_unescape_mount_point(fields[3]),
            )
        )
    return mounts


def _is_mounted(layout: ImageLayout, path: Path) -> bool:
    return any(mount.point == str(path) for mount in read_mounts(layout))


def check_mounts(layout: ImageLayout, *, scope: str = "all", models_from_volume: bool = False) -> list[str]:
    """One line per run-time mount other than the container engine's own and /tmp: over (or
    above) the baked files, the entrypoint or a server, under /models, or anywhere else.

    Two mounts are accepted, each only read-only: exactly one at /models itself when
    ``models_from_volume`` (the image's models), and the deployment's ConfigMap at
    /etc/tfpack-deployment (its models.config is checked by :func:`check_deployment_config`).
    The models claim (/tfpack-claim) is never accepted there: the server serves a copy of it.

    Args:
        scope: "baked" names only mounts over the baked files, the entrypoint and the servers
            (checked before the baked files are read); "models" adds /models and the
            deployment dir (an image built to allow config reloads takes models from other
            mounts, each verified by the server right before it loads); "all" adds every other
            mount; "stage" is "all" for ``serving.verify --stage-from``: the claim exactly once,
            read-only, at /tfpack-claim and /models exactly once, writable (the copy goes there).
        models_from_volume: the image was built with --models-from-volume (serving.json says so).
    """
    protected = [str(layout.etc_dir), "/opt/tfpack", *SERVER_PATHS.values()]
    models_root = str(layout.models_root)
    claim = str(layout.claim_dir)
    staging = scope == "stage"
    problems: list[str] = []
    seen: dict[str, int] = {}
    for mount in read_mounts(layout):
        point = mount.point
        if (
            point == "/"
            or point in _ENGINE_FILES
            or any(point == root or point.startswith(root + "/") for root in _ENGINE_MOUNTS)
        ):
            continue
        replaced = next(
            (
                path
                for path in protected
                if point == path or point.startswith(path + "/") or path.startswith(point + "/")
            ),
            None,
        )
        if point in (models_root, claim):
            seen[point] = seen.get(point, 0) + 1
        if replaced is not None:
            problems.append(
                f"{point} is mounted at run time: it would replace {replaced}, which the "
                "image baked (trust, serving config, entrypoint or server)"
            )
        elif scope == "baked":
            continue
        elif staging and point == models_root:
            if mount.read_only:
                problems.append(
                    f"{point} is mounted read-only: serving.verify --stage-from copies the served versions into "
                    "it; mount an empty writable dir there (an emptyDir in Kubernetes)"
                )
            elif seen[point] > 1:
                problems.append(f"{point} is mounted more than once: mount exactly one empty writable dir there")
        elif staging and point == claim:
            if not mount.read_only:
                problems.append(
                    f"{point} is mounted writable: mount the models claim read-only (readOnly: true in Kubernetes, "
                    ":ro with docker run)"
                )
            elif seen[point] > 1:
                problems.append(f"{point} is mounted more than once: mount exactly one models claim there")
        elif staging and (point.startswith(models_root + "/") or point.startswith(claim + "/")):
            below = models_root if point.startswith(models_root + "/") else claim
            problems.append(
                f"{point} is mounted at run time below {below}: mount one volume at {below} itself "
                "(a mount below it could be swapped while it is copied)"
            )
        elif point == models_root and models_from_volume:
            if _KUBERNETES_VOLUME in mount.root and _KUBERNETES_EMPTY_DIR not in mount.root:
                problems.append(
                    f"{point} is a Kubernetes volume other than an emptyDir ({mount.root}): the server reads only "
                    f"the copy 'serving.verify --stage-from {claim}' makes in the pod's emptyDir, never a claim "
                    "others can write while it loads"
                )
            elif not mount.read_only:
                problems.append(
                    f"{point} is mounted writable: mount it read-only (readOnly: true in Kubernetes, :ro with "
                    "docker run); the image verifies the models on it once, before the server loads them"
                )
            elif seen[point] > 1:
                problems.append(f"{point} is mounted more than once: mount exactly one volume of models there")
        elif models_from_volume and point.startswith(models_root + "/"):
            problems.append(
                f"{point} is mounted at run time below {models_root}: mount one read-only volume holding "
                f"NAME/N at {models_root} itself (a mount below it could be swapped between verification and loading)"
            )
        elif point == models_root or point.startswith(models_root + "/"):
            problems.append(
                f"{point} is mounted at run time: the image serves the version dirs it baked; "
                "a mounted one could be swapped between verification and loading"
            )
        elif point == str(layout.deployment_dir):
            if not mount.read_only:
                problems.append(
                    f"{point} is mounted writable: mount the deployment's ConfigMap read-only there "
                    "(Kubernetes mounts ConfigMaps read-only)"
                )
        elif scope == "all" and (point == claim or point.startswith(claim + "/")):
            problems.append(
                f"{point} is mounted at run time: the model server never reads the models claim; "
                f"'serving.verify --stage-from {claim}' copies it into an emptyDir mounted read-only at {models_root}"
            )
        elif scope in ("all", "stage"):
            problems.append(
                f"{point} is mounted at run time: only the engine's own mounts and /tmp are "
                "accepted (a mount could replace code the entrypoint or the server loads)"
            )
    if staging:
        problems += _same_store(read_mounts(layout), models_root, claim)
    return problems


def _same_store(mounts: list[Mount], models_root: str, claim: str) -> list[str]:
    """A /models that shows the claim's own files (one file system, nested roots): staging would
    empty and overwrite the store it copies from."""
    by_point = {mount.point: mount for mount in mounts}
    target, source = by_point.get(models_root), by_point.get(claim)
    if target is None or source is None or target.device != source.device:
        return []
    a, b = target.root.rstrip("/") + "/", source.root.rstrip("/") + "/"
    if a.startswith(b) or b.startswith(a):
        return [
            f"{models_root} and {claim} are the same store ({source.device} {source.root}): mount an empty "
            f"writable dir at {models_root} (an emptyDir in Kubernetes), never the claim itself"
        ]
    return []


def check_models_root(layout: ImageLayout) -> list[str]:
    """One line per entry directly under /models that is not a model dir (e.g. a models.config)."""
    root = layout.models_root
    if not root.is_dir():
        return [f"{root} is missing or not a directory"]
    return [
        f"{entry} is not a model dir: the image serves its baked {layout.model_config}; "
        "files under /models are not taken at run time"
        for entry in sorted(root.iterdir())
        if not entry.is_dir()
    ]


def _check_root_owned(paths: list[Path]) -> list[str]:
    problems = []
    for path in paths:
        info = path.lstat()
        if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or stat.S_ISLNK(info.st_mode):
            problems.append(f"{path} must be a root-owned file or dir writable by root only")
    return problems


# --- the baked files ---------------------------------------------------------------------------


def load_baked(layout: ImageLayout) -> BakedServing:
    """Read serving.json and check the baked files around it.

    Raises:
        UsageError: serving.json missing or malformed, or baked files not root-owned.
        VerificationError: models.config or monitoring.config differs from what serving.json
            implies, or batching.config is missing when serving.json says it is baked.
    """
    try:
        text = layout.serving_file.read_text()
    except OSError as exc:
        raise UsageError(
            f"cannot read {layout.serving_file} ({exc.strerror}): this image was not built by "
            "this tfpack's 'tfpack build'"
        ) from None
    baked = BakedServing.loads(text, str(layout.serving_file))
    if layout.require_root_owned:
        owned = [layout.etc_dir, layout.serving_file, layout.model_config, layout.session_config]
        owned += [layout.monitoring_config, layout.batching_config, layout.trust_dir]
        owned += sorted(layout.trust_dir.rglob("*")) if layout.trust_dir.is_dir() else []
        problems = _check_root_owned([p for p in owned if p.exists() or p.is_symlink()])
        if problems:
            raise UsageError("; ".join(problems))
    expected = [("model config", layout.model_config, _model_server_config(baked, str(layout.models_root)))]
    if baked.monitoring:
        expected.append(("monitoring config", layout.monitoring_config, _monitoring_config()))
    for what, path, message in expected:
        try:
            actual = path.read_text()
        except OSError as exc:
            raise VerificationError(f"cannot read {path}: {exc.strerror}") from None
        if not _same_text_proto(actual, message):
            raise VerificationError(
                f"{path} is not the {what} {layout.serving_file} implies: it was changed after the build"
            )
    # Its text is the build's --batching file: the server parses it and refuses what is wrong.
    if baked.batching and not layout.batching_config.is_file():
        raise VerificationError(f"{layout.batching_config} is missing: {layout.serving_file} says batching is baked")
    return baked


def _trust(layout: ImageLayout, baked: BakedServing) -> Trust:
    trust = Trust.from_dir(layout.trust_dir, allow_unsigned=baked.allow_unsigned)
    found = "cert_chain" if trust.cert_chain else "public_key" if trust.public_key else "none"
    if found != baked.trust:
        expected = {"public_key": PUBLIC_KEY_FILE, "cert_chain": f"{CHAIN_DIR}/*.pem", "none": "nothing"}
        raise VerificationError(
            f"{layout.trust_dir} should hold {expected[baked.trust]} (as built) but holds {expected[found]}"
        )
    return trust


# --- verification ------------------------------------------------------------------------------


def every_version_dir(models_root: Path) -> list[Path]:
    """Every version dir (layout's rule) of every model dir directly under ``models_root``.

    Raises:
        UsageError: two dirs name one version of a model, or a dir cannot be read (a volume's
            root-only lost+found, say): what is in it could not be verified.
    """
    if not models_root.is_dir():
        return []
    found: list[Path] = []
    for model_dir in sorted(p for p in models_root.iterdir() if p.is_dir()):
        try:
            found += version_dirs(model_dir).values()
        except OSError as exc:
            raise UsageError(
                f"{model_dir} cannot be read ({exc.strerror or exc}): every dir under {models_root} must be "
                "readable by the image's user, so that what is in it can be verified"
            ) from None
    return found


def verify_models(layout: ImageLayout, baked: BakedServing) -> tuple[list[Path], list[Path]]:
    """Verify every version dir under /models; return (verified dirs, unsigned dirs allowed).

    /models must hold only directories and regular files (a link could point elsewhere than
    what was verified), and each served version must verify to the very digest the build
    recorded for it: a dir signed by the trusted key for another model or an older version is
    not the one this image was built for.

    Raises:
        VerificationError: any dir failing, a served version dir missing or not the one built
            for, or a symlink, FIFO, socket or device under /models; the message names every
            failing dir and file, on one line.
        UsageError: two dirs name one version.
    """
    unservable = unservable_entries(layout.models_root)
    if unservable:
        raise VerificationError(" | ".join(unservable))
    trust = _trust(layout, baked)
    checked: dict[Path, VerifiedModel | None] = {}
    failures: list[str] = []
    for version_dir in every_version_dir(layout.models_root):
        try:
            checked[version_dir] = trust.check(version_dir)
        except TfpackError as exc:
            failures.append(str(exc))
    for name, versions in baked.models.items():
        on_disk = version_dirs(layout.models_root / name)
        for version in versions:
            served = on_disk.get(version)
            if served is None:
                failures.append(f"{layout.models_root / name}/{version} (a version this image serves) is missing")
                continue
            if served not in checked:
                continue  # it failed verification: named above
            mismatch = _digest_mismatch(served, checked[served], baked.digest(name, version))
            if mismatch:
                failures.append(mismatch)
    if failures:
        raise VerificationError(" | ".join(failures))
    verified = [d for d, model in checked.items() if model is not None]
    return verified, [d for d, model in checked.items() if model is None]


def _digest_mismatch(version_dir: Path, verified: VerifiedModel | None, recorded: str | None) -> str | None:
    """Why a served, verified (or allowed unsigned) dir is not the one the build recorded, if it is not."""
    found = None if verified is None else f"sha256:{verified.digest}"
    if found == recorded:
        return None
    if found is None:
        return f"{version_dir} is unsigned, but this image was built for a signed one ({recorded})"
    if recorded is None:
        return f"{version_dir} is signed ({found}), but this image was built for an unsigned one: rebuild the image"
    return (
        f"{version_dir} verifies against the baked trust but is not the version this image was built for: "
        f"its signed digest is {found}, the build recorded {recorded}"
    )


def baked_flags(layout: ImageLayout, baked: BakedServing) -> dict[str, tuple[str, str]]:
    """The server flags serving.json's options add: flag name -> (argument, the build option).

    Run-time arguments may not override them (:func:`check_arguments`).
    """
    flags: dict[str, tuple[str, str]] = {}
    if baked.monitoring:
        flags["monitoring_config_file"] = (f"--monitoring_config_file={layout.monitoring_config}", "--monitoring")
    if baked.batching:
        flags["enable_batching"] = ("--enable_batching", "--batching")
        flags["batching_parameters_file"] = (f"--batching_parameters_file={layout.batching_config}", "--batching")
    if baked.prefer_tflite_model:
        # Both servers take it; a run-time --prefer_tflite_model=false would serve another model
        # (the SavedModel beside a model.tflite, or none) than the one the smoke test checked.
        flags["prefer_tflite_model"] = ("--prefer_tflite_model=true", "from a version dir holding model.tflite")
    if baked.labels and baked.model_server == TF_SERVING_SERVER:
        # tensorflow_model_server assigns its first config's labels before it loads any version
        # (ServerCore::ReloadConfig runs UpdateModelVersionLabelMap first) and without this flag
        # refuses to start: FAILED_PRECONDITION, version not available. tfpack-model-server
        # assigns them once every version has loaded and needs no flag.
        flags["allow_version_labels_for_unavailable_models"] = (
            "--allow_version_labels_for_unavailable_models=true",
            "--label",
        )
    return flags


def server_command(layout: ImageLayout, baked: BakedServing, tuning: Sequence[str]) -> list[str]:
    """The server's argv: everything that decides what is served comes from the baked files."""
    command = [
        baked.server_path,
        f"--port={GRPC_PORT}",
        f"--rest_api_port={REST_PORT}",
        f"--model_config_file={layout.model_config}",
        # TF Serving: 0 polls the base paths once, at start-up; the pinned versions are loaded
        # from what the entrypoint just verified.
        "--file_system_poll_wait_seconds=0",
        # The baked version dirs are read-only and were just verified: a load that fails fails
        # the same way every time, so the server exits at once with the load error in its log
        # instead of retrying for five minutes (TF Serving's default: 5 retries, 60 s apart).
        "--max_num_load_retries=0",
    ]
    if layout.session_config.is_file():
        command.append(f"--tensorflow_session_config_file={layout.session_config}")
    command += [argument for argument, _ in baked_flags(layout, baked).values()]
    if baked.model_server == EMBEDDED_SERVER:
        if baked.allow_reload_config:
            command += ["--tfpack_allow_reload_config=true", f"--tfpack_trust_dir={layout.trust_dir}"]
            if baked.allow_unsigned:
                command.append("--tfpack_allow_unsigned=true")
        else:
            command.append("--tfpack_allow_reload_config=false")
    return command + list(tuning)


def check_deployment_config(layout: ImageLayout, baked: BakedServing) -> None:
    """When the deployment's ConfigMap is mounted, its models.config must be the one baked.

    Kubernetes mounts a ConfigMap as a dir whose files are symlinks into a ``..data`` dir: they
    are followed, and the files need not be root-owned (the mount is read-only, checked by
    :func:`check_mounts`, and only compared here, never used).

    Raises:
        RefusedOverride: the dir is mounted without a readable models.config.
        VerificationError: its models.config is not the model server config this image serves.
    """
    if not _is_mounted(layout, layout.deployment_dir):
        return
    path = layout.deployment_model_config
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RefusedOverride(
            f"{layout.deployment_dir} is mounted (the deployment's ConfigMap) but {path} cannot be read "
            f"({reason}): render the manifests again with 'tfpack k8s' for this image"
        ) from None
    if not _same_text_proto(text, _model_server_config(baked, str(layout.models_root))):
        raise VerificationError(
            f"{path} (the deployment's ConfigMap) is not the model server config this image serves: "
            "render the manifests again with 'tfpack k8s' for this image"
        )


@dataclass(frozen=True)
class VerifiedImage:
    """What :func:`verify_image` checked: the baked config, the run-time flags to pass on, and
    the version dirs verified (and those unsigned but allowed)."""

    baked: BakedServing
    tuning: list[str]
    verified: list[Path]
    unsigned: list[Path]


def verify_image(argv: Sequence[str], environ: Mapping[str, str], layout: ImageLayout = ImageLayout()) -> VerifiedImage:
    """Every check the image makes before it serves: the entrypoint's, and serving.verify's.

    Raises:
        RefusedOverride: run-time arguments, environment, mounts or files that would change
            what is served or trusted (all named, one line); no models volume in an image
            built to take one; a deployment ConfigMap without models.config.
        UsageError: the baked files are unusable.
        VerificationError: a model, a baked file or the deployment's models.config fails
            verification.
    """
    # First: what is mounted over the baked files decides whether they can be read at all.
    mounted = check_mounts(layout, scope="baked")
    if mounted:
        raise RefusedOverride(" | ".join(mounted))
    baked = load_baked(layout)
    tuning, problems = check_arguments(argv, baked.model_server, baked=baked)
    problems += check_mounts(
        layout, scope="models" if baked.allow_reload_config else "all", models_from_volume=baked.models_from_volume
    )
    if baked.models_from_volume and not _is_mounted(layout, layout.models_root):
        problems.append(
            f"this image serves its models from a volume mounted read-only at {layout.models_root} "
            "(built with --models-from-volume); none is mounted"
        )
    problems = check_environment(environ, baked) + problems + check_models_root(layout)
    if problems:
        raise RefusedOverride(" | ".join(problems))
    check_deployment_config(layout, baked)
    verified, unsigned = verify_models(layout, baked)
    return VerifiedImage(baked=baked, tuning=tuning, verified=verified, unsigned=unsigned)


def stage_image(source: Path, environ: Mapping[str, str], layout: ImageLayout = ImageLayout()) -> VerifiedImage:
    """``serving.verify --stage-from``: copy the served version dirs from the models claim into
    /models and verify the copy as the entrypoint verifies /models.

    Only an image built with --models-from-volume stages, only from ``layout.claim_dir`` (the
    claim, mounted read-only), only into a writable /models, emptied first (an emptyDir the server
    then mounts read-only), and only with the engine's own mounts, /tmp and the deployment's
    ConfigMap besides. Nothing but the served versions is read from the claim; a failure
    removes what was copied.

    Raises:
        RefusedOverride: not a volume image, another source dir, an environment variable or a
            mount out of those rules, or a previous copy in /models that cannot be removed.
        UsageError: the baked files are unusable, or the copy cannot be written.
        VerificationError: a served version missing from the claim or holding a symlink, FIFO,
            socket or device; a copy failing verification or not the version the build recorded.
    """
    mounted = check_mounts(layout, scope="baked")
    if mounted:
        raise RefusedOverride(" | ".join(mounted))
    baked = load_baked(layout)
    if not baked.models_from_volume:
        raise RefusedOverride(
            "--stage-from is for an image built with --models-from-volume: this one serves the models baked into it"
        )
    if str(source) != str(layout.claim_dir):
        raise RefusedOverride(
            f"--stage-from {source}: stage from {layout.claim_dir}, where the models claim is mounted read-only"
        )
    problems = check_environment(environ, baked) + check_mounts(layout, scope="stage", models_from_volume=True)
    for path, what in (
        (layout.claim_dir, "the models claim, read-only"),
        (layout.models_root, "an empty writable dir"),
    ):
        if not _is_mounted(layout, path):
            problems.append(f"nothing is mounted at {path}: mount {what} there")
    if problems:
        raise RefusedOverride(" | ".join(problems))
    check_deployment_config(layout, baked)
    _empty_previous_copy(layout.models_root)
    try:
        stage_versions(layout.claim_dir, layout.models_root, baked.models)
        verified, unsigned = verify_models(layout, baked)
    except BaseException:
        # Refused or failed: nothing is left for a server to find, the marker included.
        remove_staged(layout.models_root, baked.models)
        with contextlib.suppress(OSError):
            (layout.models_root / STAGING_MARKER).rmdir()
        raise
    return VerifiedImage(baked=baked, tuning=[], verified=verified, unsigned=unsigned)


def _empty_previous_copy(models_root: Path) -> None:
    """Empty ``models_root`` when what is in it is an earlier staging's; then mark it as staging's.

    An emptyDir outlives its initContainer: a retry after a killed copy, or a pod sandbox
    recreated after a finished one, finds the previous copy, and must stage afresh rather than be
    refused forever (or trust it unverified). Only a dir holding STAGING_MARKER, which staging
    writes before it copies anything, is emptied: anything else that is not empty is refused, so
    a store mounted there by mistake is never deleted.

    Raises:
        RefusedOverride: ``models_root`` holds files staging did not write, or cannot be emptied.
    """
    marker = models_root / STAGING_MARKER
    try:
        entries = sorted(models_root.iterdir())
        if entries and not (stat.S_ISDIR(marker.lstat().st_mode) if marker in entries else False):
            raise RefusedOverride(
                f"{models_root} is not empty and holds no earlier staging's {STAGING_MARKER}: mount an empty "
                "writable dir there (an emptyDir in Kubernetes)"
            )
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        marker.mkdir()
    except OSError as exc:
        raise RefusedOverride(f"{models_root} cannot be emptied for staging ({exc.strerror or exc})") from None


def prepare(argv: Sequence[str], environ: Mapping[str, str], layout: ImageLayout = ImageLayout()) -> list[str]:
    """Check everything and verify every model (:func:`verify_image`); return the server's argv.

    Raises:
        RefusedOverride: run-time arguments, environment, mounts or files that would change
            what is served or trusted (all named, one line).
        UsageError: the baked files are unusable.
        VerificationError: a model or a baked file fails verification.
    """
    image = verify_image(argv, environ, layout)
    for version_dir in image.unsigned:
        _say(f"warning: {version_dir} is unsigned; serving it because the image was built with allow-unsigned")
    if image.verified:
        _say(f"signatures verified: {', '.join(str(d) for d in image.verified)}")
    if image.baked.model_server == TF_SERVING_SERVER:
        _say(
            "note: tensorflow_model_server always answers ModelService.HandleReloadConfigRequest "
            f"on port {GRPC_PORT}; expose that port to trusted clients only"
        )
    return server_command(layout, image.baked, image.tuning)


def main(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, layout: ImageLayout = ImageLayout()
) -> int:
    """Verify, then replace this process with the model server; return an exit code on failure."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    environment = dict(os.environ if environ is None else environ)
    try:
        command = prepare(arguments, environment, layout)
    except TfpackError as exc:
        _say(f"refusing to serve: {exc}")
        return exc.exit_code
    except Exception as exc:  # a bug must still refuse, in one line, not serve or dump a traceback
        _say(f"refusing to serve: verification failed unexpectedly: {type(exc).__name__}: {exc}")
        return 1
    _say(f"exec {' '.join(command)}")
    try:
        os.execve(command[0], command, environment)
    except OSError as exc:
        _say(f"cannot start {command[0]}: {exc.strerror}")
        return 127


def _say(line: str) -> None:
    print(f"{_PREFIX} {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
