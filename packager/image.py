"""``tfpack build``: a serving image holding signed version dirs and a verify-then-serve entrypoint.

The image is assembled here, not built: a serving base (:mod:`packager._serving_base`: the
runtime with a Python venv, the server's user and the path to tfpack's code) plus layers tfpack
writes itself with :mod:`packager.image_assembly`, loaded into the engine with ``docker load``:

1. tfpack's code: the running tfpack's files (:func:`packager._runtime_wheel.runtime_files`)
   under /opt/tfpack/lib, and on the embedded base the tfpack-model-server script;
2. /etc/tfpack: what is served and whom to trust (below);
3. one layer per model: /models/NAME with its version dirs; or, for an image built with
   ``models_from_volume``, only an empty /models: the mount point of a read-only volume holding
   the models, which the entrypoint verifies at every start as it would baked ones.

``docker build`` cannot make these reproducible (it stamps every step with the time it ran), so
the same models gave a new image ID every time. Here every layer is a sorted tar of root-owned,
fixed-mode files stamped with one time (SOURCE_DATE_EPOCH when set), and the config's times are
that time too: the same inputs give the same image ID. A change of one model's files rewrites only
that model's layer and /etc/tfpack's (serving.json records every served version's signed digest),
and the engine keeps every layer below the first changed one without reading it.

Private keys never enter the image: the key given is parsed and only its public half written.
Signatures are verified here too, so a model that would refuse to start fails the build instead.

Two kinds of base: ``embedded`` (tfpack's own runtime, built offline by :mod:`_runtime_base` and
served by ``tfpack-model-server``) or any image with TensorFlow Serving's layout, such as
``tensorflow/serving:2.21.0`` (served by ``tensorflow_model_server``).

What the image serves and trusts is decided here and baked into root-owned files under
/etc/tfpack (:func:`serving.entrypoint.baked_etc_files`: serving.json, models.config serving
every baked version with its labels, the session config, monitoring and batching; and trust/);
the entrypoint reads only those and refuses run-time arguments or environment that would change
them (see :mod:`serving.entrypoint`). Every version dir must also pass the op scan.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import stat
import subprocess
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.utils

import packager
from packager import _runtime_base, _runtime_wheel, _serving_base
from packager.docker_engine import (
    DockerEngineError,
    docker_client,
    docker_reason,
    image_history,
    image_layer_lists,
    inspect_image,
    load_image,
    push_tag,
)
from packager.errors import ToolError, UsageError, VerificationError
from packager.image_assembly import (
    EXECUTABLE_MODE,
    BaseImage,
    Healthcheck,
    Layer,
    LayerDigest,
    LayerFile,
    RunConfig,
    base_history,
    image_config,
    image_id,
    layers_present,
    load_archive,
    measure,
    rfc3339,
)
from packager.layout import (
    CHAIN_DIR,
    GRPC_PORT,
    IMAGE_ETC_DIR,
    MODELS_ROOT,
    PROVENANCE_FILE,
    PUBLIC_KEY_FILE,
    REST_PORT,
    SERVED_TFLITE,
    TFLITE_MODEL_FILE,
    TRUST_DIR,
    Provenance,
    Trust,
    check_image_reference,
    check_model_name,
    is_version_dir,
    load_certificates,
    load_ec_public_key,
    numeric_versions,
    served_format,
    version_dirs,
)
from packager.progress import SILENT, Progress
from serving.entrypoint import (
    EMBEDDED_SERVER,
    PROMETHEUS_PATH,
    SERVER_PATHS,
    TF_SERVING_SERVER,
    BakedServing,
    baked_etc_files,
)
from serving.entrypoint import SESSION_CONFIG as SESSION_CONFIG  # the build has always exported it

EMBEDDED_BASE = "embedded"
# The entrypoint's names for the two servers, under the names the build has always exported.
EMBEDDED_MODEL_SERVER = EMBEDDED_SERVER
TF_SERVING_MODEL_SERVER = TF_SERVING_SERVER
LABEL_PREFIX = "dev.tfpack"
VERIFIER_REQUIREMENTS = _serving_base.VERIFIER_REQUIREMENTS
ENTRYPOINT = ("/opt/tfpack/venv/bin/python", "-I", "-m", "serving.entrypoint")
# True only once every model the image serves is AVAILABLE (serving.healthcheck asks the server).
# The start period covers a slow first load (a large model, warmup): failures in it do not count.
HEALTHCHECK = Healthcheck(
    test=("CMD", "/opt/tfpack/venv/bin/python", "-I", "-m", "serving.healthcheck"),
    interval_s=10,
    timeout_s=5,
    start_period_s=600,
    retries=3,
)
# The time of the layers that do not come from model files (tfpack's code, /etc/tfpack) when
# SOURCE_DATE_EPOCH is unset: fixed, so that a model's newer files do not rewrite them too
# (1980-01-01, the wheel's own fixed time).
CODE_EPOCH = 315532800
# --label NAME:LABEL=N; the names' own rules are checked where they are used (find_models,
# BakedServing), so one message names what is wrong with each.
# Why `tfpack build --models-from-volume --allow-unsigned` is refused (the CLI says it too).
MODELS_FROM_VOLUME_UNSIGNED = (
    "--models-from-volume cannot be combined with --allow-unsigned: each version on the volume must verify "
    "at every start to the signed digest the build recorded for it, and an unsigned one has none; sign the "
    "models with 'tfpack sign'"
)
_VERSION_LABEL = re.compile(r"^(?P<model>[^:=]+):(?P<label>[^:=]+)=(?P<version>[0-9]+)$")
_MODEL_SERVER_SCRIPT = (
    "#!/opt/tfpack/venv/bin/python -I\n"
    "# tfpack-model-server, the embedded runtime (written by tfpack build).\n"
    "import sys\n\n"
    "from serving.model_server import main\n\n"
    "sys.exit(main())\n"
)

# A checkout's root when tfpack runs from one (where its git labels come from); for a pip-installed
# tfpack, the site-packages dir holding it.
_SOURCE_TREE = Path(packager.__file__).resolve().parent.parent
_DOCKERFILE = _serving_base.DOCKERFILE  # where tests look for the package data


@dataclass(frozen=True)
class BuildResult:
    """The image ``build_image`` made (and pushed, when asked)."""

    tag: str
    image_id: str
    base: str
    model_server: str
    models: dict[str, list[int]]
    labels: dict[str, str]
    repo_digest: str | None = None  # set when pushed: REGISTRY/NAME@sha256:...
    serving: BakedServing | None = None  # what /etc/tfpack/serving.json holds
    serving_base: str = ""  # the image the layers were assembled on
    created: str = ""  # the image's fixed time (RFC 3339)
    layers: tuple[str, ...] = ()  # the diff_ids of the layers tfpack wrote, bottom first
    loaded_layers: int = 0  # how many of them the engine did not hold yet
    models_from_volume: bool = False  # the image holds no model: a read-only volume at /models does

    def to_json(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "image_id": self.image_id,
            "base": self.base,
            "serving_base": self.serving_base,
            "model_server": self.model_server,
            "models": self.models,
            "labels": self.labels,
            "created": self.created,
            "layers": list(self.layers),
            "loaded_layers": self.loaded_layers,
            "pushed": self.repo_digest is not None,
            "repo_digest": self.repo_digest,
            "models_from_volume": self.models_from_volume,
        }


def ensure_embedded_base(progress: Progress = SILENT) -> str:
    """Return the tag of tfpack's embedded runtime base, building it once per machine.

    The tag is keyed by a hash of the Debian suite and packages, the Python version and the
    requirement pins, so changing any of them builds a new base; otherwise it is reused.

    Raises:
        UsageError: no Docker engine, no debootstrap, or not root for the first build.
        ToolError: a bootstrap step failed (the message names its log).
    """
    return _runtime_base.ensure_runtime_base(docker_client(), progress)


def find_models(model_dir: Path) -> dict[str, list[Path]]:
    """Return {model name: version dirs, ascending} for a model base path or a dir of them.

    ``model_dir`` is either one model base path ``DIR/NAME`` holding numeric version dirs (its
    name is the model name) or a directory whose subdirectories are such model base paths.

    Raises:
        UsageError: the dir is missing, holds no model, or a model/version dir is malformed.
    """
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir} is not a directory: give DIR/NAME holding version dirs")
    if is_version_dir(model_dir):
        raise UsageError(f"{model_dir} is a version dir: give the model dir holding it, {model_dir.parent}")
    if numeric_versions(model_dir):
        return {_model_name(model_dir.resolve()): _version_dirs(model_dir)}
    models: dict[str, list[Path]] = {}
    for child in sorted(model_dir.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if not numeric_versions(child):
            raise UsageError(
                f"{child} holds no numeric version dir: {model_dir} must be DIR/NAME with "
                "version dirs, or a directory of such model dirs only"
            )
        models[_model_name(child)] = _version_dirs(child)
    if not models:
        raise UsageError(
            f"{model_dir} holds no model: expected {model_dir}/1/saved_model.pb (or model.tflite) "
            f"or {model_dir}/NAME/1/saved_model.pb (as written by 'tfpack convert')"
        )
    return models


def _model_name(model_base_path: Path) -> str:
    """The directory's name, which TF Serving serves the model as; it must be a plain name."""
    try:
        return check_model_name(model_base_path.name)
    except UsageError:
        raise UsageError(
            f"{model_base_path}: {model_base_path.name!r} cannot be a model name (use letters, "
            "digits, '.', '_' or '-'): rename the model dir"
        ) from None


def _version_dirs(model_base_path: Path) -> list[Path]:
    """The version dirs of a model base path (layout's rule), each holding a SavedModel or a model.tflite."""
    dirs = list(version_dirs(model_base_path).values())
    for version_dir in dirs:
        if not is_version_dir(version_dir):
            raise UsageError(
                f"{version_dir} holds no saved_model.pb (nor {TFLITE_MODEL_FILE}): not a version dir 'tfpack convert' "
                "wrote"
            )
    return dirs


def prefers_tflite(models: dict[str, list[Path]]) -> bool:
    """Whether the server must run with --prefer_tflite_model: a version dir holds a model.tflite.

    TF Serving's flag is global, so every version holding one is then served from it (the
    SavedModel beside it, if any, is not): what :func:`packager.layout.served_format` says, and
    what the contract and the smoke test read.
    """
    return any(served_format(version_dir) == SERVED_TFLITE for dirs in models.values() for version_dir in dirs)


def verify_signatures(
    models: dict[str, list[Path]],
    public_key: Path | None,
    *,
    cert_chain: list[Path] | None = None,
    allow_unsigned: bool = False,
    progress: Progress = SILENT,
) -> dict[Path, str]:
    """Verify every version dir as the image's entrypoint will; return {dir: signed digest}.

    Unsigned dirs are only accepted (and left out of the result) with ``allow_unsigned``; a dir
    that is signed is always verified, which needs ``public_key`` or ``cert_chain``.

    Raises:
        UsageError: a signed dir but no key or chain, or neither without ``allow_unsigned``.
        VerificationError: unsigned dirs (without allow_unsigned) or failing signatures, all
            named on one line.
    """
    if public_key is not None and cert_chain:
        raise UsageError("give --public-key or --cert-chain, not both")
    if cert_chain:
        public_key = None
    trusted = public_key is not None or bool(cert_chain)
    if not trusted and not allow_unsigned:
        raise UsageError(
            "--public-key PUB.pem or --cert-chain CHAIN.pem is required: the image verifies "
            "every model signature against it at startup"
        )
    # The entrypoint's own check (packager.layout.Trust), telling a build's reader which flags fix it.
    trust = Trust(
        public_key=public_key,
        cert_chain=list(cert_chain or []),
        allow_unsigned=allow_unsigned,
        unsigned_remedy="sign it with 'tfpack sign' or build with --allow-unsigned",
    )
    digests: dict[Path, str] = {}
    failures: list[str] = []
    for version_dir in (d for dirs in models.values() for d in dirs):
        progress.step(f"verifying {version_dir}")
        try:
            verified = trust.check(version_dir)
        except VerificationError as exc:
            failures.append(str(exc))
            continue
        if verified is not None:
            digests[version_dir] = f"sha256:{verified.digest}"
    if failures:
        raise VerificationError(" | ".join(failures))
    return digests


def scan_models(models: dict[str, list[Path]], verified: dict[Path, str], progress: Progress = SILENT) -> None:
    """Refuse any version dir whose op scan finds a denied or unknown op.

    Every model file of a dir is scanned: its SavedModel and its model.tflite (Select TF ops and
    custom ops), whichever it holds. Ops a verified dir's signed provenance allowed at convert
    (``--allow-op``) stay allowed; an unsigned dir's own record is not trusted to allow anything.

    Raises:
        UsageError: the first dir that fails, with the scan's summary.
    """
    from packager.provenance import recorded_allowed_ops
    from packager.version_scan import scan_version_dir

    for version_dir in (d for dirs in models.values() for d in dirs):
        progress.step(f"scanning the ops of {version_dir}")
        allowed = recorded_allowed_ops(version_dir) if version_dir in verified else frozenset()
        result = scan_version_dir(version_dir, allowed)
        if result.blocking:
            raise UsageError(
                f"{result.summary()}: 'tfpack build' refuses a model whose op scan fails "
                "(reconvert it, or allow each op with 'tfpack convert --allow-op' and sign again)"
            )


def parse_version_labels(specs: Sequence[str]) -> dict[str, dict[str, int]]:
    """``{model: {label: version}}`` from ``--label NAME:LABEL=N`` flags.

    Raises:
        UsageError: a flag not of that form, or one label of a model given twice.
    """
    labels: dict[str, dict[str, int]] = {}
    for spec in specs:
        match = _VERSION_LABEL.match(spec)
        if match is None:
            raise UsageError(f"--label {spec!r} is not NAME:LABEL=VERSION (e.g. --label half:stable=2)")
        model, label = match["model"], match["label"]
        if label in labels.setdefault(model, {}):
            raise UsageError(f"--label {model}:{label} is given twice: a label names one version")
        labels[model][label] = int(match["version"])
    return labels


def source_date_epoch(environ: Mapping[str, str] = os.environ) -> int | None:
    """SOURCE_DATE_EPOCH (reproducible-builds.org) as seconds, or None when it is unset or empty.

    Raises:
        UsageError: it is set to something other than a number of seconds.
    """
    value = environ.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return None
    if not re.fullmatch(r"[0-9]{1,12}", value):
        raise UsageError(
            f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds since 1970 (e.g. $(git log -1 --format=%ct))"
        )
    return int(value)


def build_image(
    model_dir: Path,
    tag: str,
    *,
    base: str = EMBEDDED_BASE,
    public_key: Path | None = None,
    cert_chain: list[Path] | None = None,
    allow_unsigned: bool = False,
    allow_reload_config: bool = False,
    version_labels: dict[str, dict[str, int]] | None = None,
    monitoring: bool = False,
    batching: Path | None = None,
    models_from_volume: bool = False,
    push: bool = False,
    progress: Progress = SILENT,
) -> BuildResult:
    """Assemble (and optionally push) the serving image for the model(s) in ``model_dir``.

    Args:
        model_dir: a model base path DIR/NAME, or a directory of several (then the image serves
            them all through /etc/tfpack/models.config).
        tag: the image reference to tag, e.g. ``registry.example/models/half:1``.
        base: ``embedded`` or an image with TF Serving's layout (``tensorflow/serving:2.21.0``).
        public_key: the PEM public key the signatures are checked against; baked into the image.
        cert_chain: instead of a key, the PEM certificate chain (root last or first, any order)
            certificate-signed models are checked against; baked into the image.
        allow_unsigned: accept version dirs without model.sig (recorded in a label and in
            /etc/tfpack/serving.json).
        allow_reload_config: let ModelService.HandleReloadConfigRequest change the served models
            at run time; every version dir it loads is verified against the baked trust first.
            Only the embedded server can do that; without it reloads are PERMISSION_DENIED.
        version_labels: ``{model: {label: version}}`` (see :func:`parse_version_labels`), written
            into models.config; each version must be one baked for the model.
        monitoring: bake a Prometheus monitoring config (metrics at PROMETHEUS_PATH on the REST port).
        batching: a text-format BatchingParameters file; baked, and batching turned on.
        models_from_volume: bake no model: the image serves the versions verified here from
            exactly one read-only volume mounted at /models, which its entrypoint (and
            ``serving.verify``, a Kubernetes initContainer) verifies at every start; /models is
            an empty root-owned dir. Recorded in serving.json and the label
            ``dev.tfpack.models-from-volume``. Not with ``allow_unsigned``: every version on the
            volume must verify to the digest recorded here.
        push: push ``tag`` after loading it.
        progress: receives every long step.

    Raises:
        UsageError: bad model dir, key, tag, label, batching file or base; a version dir failing
            the op scan; no Docker engine; a failed push; models from a volume with allow_unsigned.
        VerificationError: an unsigned or tampered version dir.
        ToolError: the serving base's build, or loading the image, failed (exit 2).
    """
    check_image_reference(tag, "--tag")
    if models_from_volume and allow_unsigned:
        raise UsageError(MODELS_FROM_VOLUME_UNSIGNED)
    if "@" in tag:
        raise UsageError(f"--tag {tag!r} names a digest: give NAME:TAG (the digest is the build's to report)")
    embedded = base == EMBEDDED_BASE
    if not embedded:
        check_image_reference(base, "--base")
        if allow_reload_config:
            raise UsageError(
                "--allow-reload-config needs --base embedded: tensorflow_model_server cannot "
                "verify the models a reload loads"
            )
    epoch = source_date_epoch()
    models = find_models(model_dir)
    version_labels = version_labels or {}
    _check_version_labels(version_labels, models)
    batching_parameters = _read_batching_parameters(batching) if batching is not None else None
    key_pem = _public_key_pem(public_key) if public_key is not None else None
    chain_pems = [_certificate_pem(path) for path in cert_chain or []]
    digests = verify_signatures(
        models, public_key, cert_chain=cert_chain, allow_unsigned=allow_unsigned, progress=progress
    )
    scan_models(models, digests, progress)
    model_server = EMBEDDED_MODEL_SERVER if embedded else TF_SERVING_MODEL_SERVER
    serving = BakedServing(
        model_server=model_server,
        models={name: [int(d.name) for d in dirs] for name, dirs in models.items()},
        allow_unsigned=allow_unsigned,
        allow_reload_config=allow_reload_config,
        trust="cert_chain" if chain_pems else "public_key" if key_pem is not None else "none",
        labels=version_labels,
        monitoring=monitoring,
        batching=batching_parameters is not None,
        models_from_volume=models_from_volume,
        digests=served_digests(models, digests),
        prefer_tflite_model=prefers_tflite(models),
    )
    layers = image_layers(
        models,
        serving,
        public_key_pem=key_pem,
        chain_pems=chain_pems,
        batching_parameters=batching_parameters,
        epoch=epoch,
    )
    # The image's time: SOURCE_DATE_EPOCH, else its newest model file (the newest model layer's
    # time; image_layers gives the code, /etc/tfpack, then the models), baked or not.
    if epoch is not None:
        created = epoch
    elif models_from_volume:
        created = max(_newest_file_time(dirs) or CODE_EPOCH for dirs in models.values())
    else:
        created = max(layer.mtime for layer in layers[2:])

    client = docker_client()
    base_image = ensure_embedded_base(progress) if embedded else _require_base(client, base, progress)
    serving_base = _serving_base.ensure_serving_base(
        client,
        base_image,
        model_server_path=None if embedded else SERVER_PATHS[model_server],
        building_for=tag,
        progress=progress,
    )
    assembly_base = _assembly_base(client, serving_base)
    measured: list[tuple[Layer, LayerDigest]] = []
    for layer in layers:
        progress.step(f"writing the layer of {layer.description}")
        measured.append((layer, measure(layer)))
    labels = image_labels(
        models,
        digests,
        tag=tag,
        base=base_image,
        model_server=model_server,
        allow_unsigned=allow_unsigned,
        public_key_pem=key_pem,
        chain_pems=chain_pems,
        serving=serving,
        created=rfc3339(created),
        base_digest=_image_digest(client, base_image),
    )
    labels[f"{LABEL_PREFIX}.serving-base"] = assembly_base.image_id
    run = RunConfig(
        entrypoint=ENTRYPOINT,
        user=_serving_base.SERVER_USER,
        exposed_ports=(GRPC_PORT, REST_PORT),
        # TF Serving's variables, set to what is baked (overriding a base's MODEL_NAME=model); the
        # entrypoint refuses other values at run time rather than serve something else.
        env={"MODEL_NAME": next(iter(models)), "MODEL_BASE_PATH": MODELS_ROOT},
        labels=labels,
        healthcheck=HEALTHCHECK,
    )
    config = image_config(assembly_base, run, measured, created=created)
    loaded = _load(client, tag, config, assembly_base, measured, progress)
    repo_digest = push_tag(client, tag, progress) if push else None
    return BuildResult(
        tag=tag,
        image_id=image_id(config),
        base=base_image,
        model_server=model_server,
        models=serving.models,
        labels=labels,
        repo_digest=repo_digest,
        serving=serving,
        serving_base=serving_base,
        created=rfc3339(created),
        layers=tuple(digest.diff_id for _, digest in measured),
        loaded_layers=loaded,
        models_from_volume=models_from_volume,
    )


def served_digests(models: dict[str, list[Path]], digests: dict[Path, str]) -> dict[str, dict[str, str]]:
    """serving.json's ``digests``: ``{name: {"N": "sha256:..."}}`` for every signed version dir
    (the values of the ``dev.tfpack.model.NAME.N.digest`` labels), keyed by version number."""
    return {
        name: {str(int(d.name)): digests[d] for d in dirs if d in digests}
        for name, dirs in models.items()
        if any(d in digests for d in dirs)
    }


def _check_version_labels(version_labels: dict[str, dict[str, int]], models: dict[str, list[Path]]) -> None:
    """Every --label names a model of the image and one of its version dirs."""
    for model, labels in version_labels.items():
        if model not in models:
            raise UsageError(
                f"--label {model}:{next(iter(labels), '')}: the image has no model {model!r} "
                f"(it has {', '.join(models)})"
            )
        versions = [int(d.name) for d in models[model]]
        for label, version in labels.items():
            if version not in versions:
                raise UsageError(
                    f"--label {model}:{label}={version}: {model} has no version {version} "
                    f"(it has {', '.join(map(str, versions))})"
                )


def _read_batching_parameters(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"--batching {path}: cannot read it ({reason})") from None


# --- the layers ----------------------------------------------------------------------------------


def image_layers(
    models: dict[str, list[Path]],
    serving: BakedServing,
    *,
    public_key_pem: bytes | None,
    chain_pems: Sequence[bytes] = (),
    batching_parameters: str | None = None,
    epoch: int | None = None,
) -> list[Layer]:
    """The layers tfpack writes over the serving base, bottom first: tfpack's code, /etc/tfpack,
    then one per model (in ``models``' order), so that a model's change rewrites its layer only;
    or, when ``serving.models_from_volume``, an empty /models instead of the model layers (the
    version dirs are still checked as a model layer would: real files only).

    Args:
        models: ``{name: version dirs}`` (see :func:`find_models`).
        serving: what /etc/tfpack/serving.json says (it decides the server, hence the script).
        public_key_pem: the key baked into /etc/tfpack/trust, if any.
        chain_pems: the certificate chain baked there instead, if any.
        batching_parameters: batching.config's text, when ``serving.batching``.
        epoch: SOURCE_DATE_EPOCH: every entry's time when given. Otherwise a model's layer has the
            time of its newest file, and the other layers a fixed one.

    Raises:
        UsageError: the batching parameters are invalid.
        ToolError: tfpack's own files cannot be read.
    """
    fixed = CODE_EPOCH if epoch is None else epoch
    if serving.models_from_volume:
        for dirs in models.values():
            _check_servable(dirs)
        model_layers = [models_mount_point_layer(mtime=fixed)]
    else:
        model_layers = [model_layer(name, dirs, epoch=epoch) for name, dirs in models.items()]
    return [
        code_layer(serving.model_server, mtime=fixed),
        etc_layer(
            serving,
            public_key_pem=public_key_pem,
            chain_pems=chain_pems,
            batching_parameters=batching_parameters,
            mtime=fixed,
        ),
        *model_layers,
    ]


def code_layer(model_server: str, *, mtime: int) -> Layer:
    """The running tfpack under /opt/tfpack/lib (the serving base's tfpack.pth puts it on the
    venv's sys.path), and for the embedded server its script at the path the entrypoint execs."""
    lib = _serving_base.CODE_DIR.lstrip("/")
    files = [
        LayerFile.from_bytes(f"{lib}/{file.name}", file.data, file.mode) for file in _runtime_wheel.runtime_files()
    ]
    if model_server == EMBEDDED_MODEL_SERVER:
        script = SERVER_PATHS[EMBEDDED_MODEL_SERVER].lstrip("/")
        files.append(LayerFile.from_bytes(script, _MODEL_SERVER_SCRIPT.encode(), EXECUTABLE_MODE))
    return Layer(
        description=f"tfpack {packager.__version__} in {_serving_base.CODE_DIR}", files=tuple(files), mtime=mtime
    )


def etc_layer(
    serving: BakedServing,
    *,
    public_key_pem: bytes | None,
    chain_pems: Sequence[bytes] = (),
    batching_parameters: str | None = None,
    mtime: int,
) -> Layer:
    """/etc/tfpack: the entrypoint's baked files (root-owned, 0644; dirs 0755) and the trust.

    Raises:
        UsageError: the batching parameters are invalid.
    """
    etc = IMAGE_ETC_DIR.lstrip("/")
    trust = f"{etc}/{TRUST_DIR}"
    files = [
        LayerFile.from_bytes(f"{etc}/{name}", text.encode())
        for name, text in baked_etc_files(serving, batching_parameters=batching_parameters).items()
    ]
    if public_key_pem is not None:
        files.append(LayerFile.from_bytes(f"{trust}/{PUBLIC_KEY_FILE}", public_key_pem))
    files += [
        LayerFile.from_bytes(f"{trust}/{CHAIN_DIR}/{position:02d}.pem", pem) for position, pem in enumerate(chain_pems)
    ]
    return Layer(description=IMAGE_ETC_DIR, files=tuple(files), mtime=mtime, directories=(trust,))


def model_layer(name: str, dirs: Sequence[Path], *, epoch: int | None = None) -> Layer:
    """/models/NAME with every one of ``dirs`` (its version dirs) and everything in them.

    Its time is ``epoch``, or else its newest file's: only a change of this model changes it.

    Raises:
        UsageError: a file cannot be read.
    """
    root = f"{MODELS_ROOT.lstrip('/')}/{name}"
    files: list[LayerFile] = []
    directories = [root]
    newest = 0
    for version_dir in dirs:
        for directory, subdirs, names in os.walk(version_dir):
            subdirs.sort()
            relative = Path(directory).relative_to(version_dir.parent).as_posix()
            directories.append(f"{root}/{relative}")
            for entry in sorted([*subdirs, *names]):
                _refuse_unservable_entry(Path(directory) / entry)
            for file_name in sorted(names):
                source = Path(directory) / file_name
                try:
                    files.append(LayerFile.from_disk(f"{root}/{relative}/{file_name}", source))
                    newest = max(newest, int(source.stat().st_mtime))
                except OSError as exc:  # a file gone meanwhile
                    raise UsageError(f"{source}: cannot read it for the image ({exc.strerror or exc})") from None
    versions = ",".join(d.name for d in dirs)
    return Layer(
        description=f"model {name} (versions {versions}) in {MODELS_ROOT}/{name}",
        files=tuple(files),
        mtime=epoch if epoch is not None else newest or CODE_EPOCH,
        directories=tuple(directories),
    )


def models_mount_point_layer(*, mtime: int) -> Layer:
    """/models as an empty root-owned 0755 dir: where an image built with --models-from-volume
    takes its read-only volume of models (a base such as tensorflow/serving may have none)."""
    return Layer(
        description=f"{MODELS_ROOT}: the mount point of the read-only models volume",
        files=(),
        mtime=mtime,
        directories=(MODELS_ROOT.lstrip("/"),),
    )


def _check_servable(dirs: Sequence[Path]) -> None:
    """Refuse what :func:`model_layer` would refuse in ``dirs``, without reading any file.

    Raises:
        UsageError: as :func:`_refuse_unservable_entry`.
    """
    for version_dir in dirs:
        for directory, subdirs, names in os.walk(version_dir):
            subdirs.sort()
            for entry in sorted([*subdirs, *names]):
                _refuse_unservable_entry(Path(directory) / entry)


def _newest_file_time(dirs: Sequence[Path]) -> int:
    """The newest modification time (whole seconds) of the regular files in ``dirs``, 0 for none."""
    return max(
        (int(path.stat().st_mtime) for version_dir in dirs for path in version_dir.rglob("*") if path.is_file()),
        default=0,
    )


def version_dir_bytes(version_dir: Path) -> int:
    """The size of the regular files of ``version_dir`` (model.sig included): what a pod holds of it.

    Raises:
        UsageError: a file cannot be read.
    """
    total = 0
    for directory, _, names in os.walk(version_dir):
        for name in names:
            path = Path(directory) / name
            try:
                info = path.lstat()
            except OSError as exc:  # a file gone meanwhile
                raise UsageError(f"{path}: cannot read it for the image ({exc.strerror or exc})") from None
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


def merged_towers(version_dir: Path) -> int | None:
    """The tower count ``tfpack convert`` recorded for a merged-towers version dir (2 or more), else None.

    Read from its provenance record (``"towers": {"mode": "merge", "count": N}``); a dir without
    one, or with one that cannot be read, has none: it only sizes GPUs, never decides trust.
    """
    try:
        towers = Provenance.load(version_dir / PROVENANCE_FILE).extra.get("towers")
    except UsageError:
        return None
    if not isinstance(towers, dict) or towers.get("mode") != "merge":
        return None
    count = towers.get("count")
    return count if type(count) is int and count >= 2 else None


def _refuse_unservable_entry(path: Path) -> None:
    """Refuse what a version dir must never carry into an image, signed or not.

    A signed dir is checked by its signature already; an --allow-unsigned one is not, and a
    symlink in it would copy whatever host file it points at into the image (a key, a password
    file), a FIFO would hang the build, and an entry named ``.wh.*`` is an overlay whiteout that
    deletes files of the layers below when the image is unpacked.

    Raises:
        UsageError: ``path`` is a symlink, not a regular file or directory, or a whiteout name.
    """
    if path.name.startswith(".wh."):
        raise UsageError(f"{path}: a name starting with '.wh.' is an image-layer whiteout; rename it")
    if path.is_symlink():
        raise UsageError(f"{path} is a symlink: a version dir holds only real files; replace the link with the file")
    mode = path.lstat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UsageError(f"{path} is not a regular file or directory: a version dir holds only files")


# --- assembling on the serving base --------------------------------------------------------------


def _assembly_base(client: docker.DockerClient, reference: str) -> BaseImage:
    """What the image takes from its serving base: layers, platform, Env, WorkingDir, labels, history."""
    attrs = inspect_image(client, reference)
    config = attrs.get("Config") or {}
    diff_ids = tuple(attrs["RootFS"]["Layers"])
    return BaseImage(
        reference=reference,
        image_id=attrs["Id"],
        diff_ids=diff_ids,
        architecture=attrs.get("Architecture") or "amd64",
        os=attrs.get("Os") or "linux",
        variant=attrs.get("Variant") or None,
        env=tuple(config.get("Env") or ()),
        working_dir=config.get("WorkingDir") or "",
        stop_signal=config.get("StopSignal") or "",
        labels=dict(config.get("Labels") or {}),
        history=base_history(image_history(client, reference), len(diff_ids)),
    )


def _image_digest(client: docker.DockerClient, reference: str) -> str:
    """The base's registry digest when it came from one, else its image ID (a local base)."""
    attrs = inspect_image(client, reference)
    repo_digests = attrs.get("RepoDigests") or []
    return str(repo_digests[0]).split("@", 1)[1] if repo_digests else str(attrs["Id"])


def _load(
    client: docker.DockerClient,
    tag: str,
    config: bytes,
    base: BaseImage,
    measured: list[tuple[Layer, LayerDigest]],
    progress: Progress,
) -> int:
    """``docker load`` the image as ``tag``; return how many of its own layers were sent.

    Layers the engine already holds as a chain on the base (from an earlier build: the tag's
    image, or any image assembled on this base) are named but not sent.

    Raises:
        ToolError: the engine refused the archive, or loaded something else.
    """
    repository, version = docker.utils.parse_repository_tag(tag)
    repo_tag = f"{repository}:{version or 'latest'}"
    diff_ids = [*base.diff_ids, *(digest.diff_id for _, digest in measured)]
    candidates = [list(base.diff_ids)]
    candidates += image_layer_lists(client, label=f"{LABEL_PREFIX}.serving-base={base.image_id}")
    skip = max(0, layers_present(candidates, diff_ids) - len(base.diff_ids))
    expected = image_id(config)
    progress.step(f"loading {tag}: {len(measured) - skip} of its {len(measured)} layers are new")
    try:
        load_image(client, load_archive(config, repo_tag, diff_ids, measured, skip=skip))
    except DockerEngineError as exc:
        if skip == 0:
            raise ToolError(f"loading {tag} into the Docker engine failed: {exc}") from None
        # An image holding those layers may have been removed since: send them all.
        skip = 0
        try:
            load_image(client, load_archive(config, repo_tag, diff_ids, measured, skip=0))
        except DockerEngineError as again:
            raise ToolError(f"loading {tag} into the Docker engine failed: {again}") from None
    loaded = inspect_image(client, repo_tag)["Id"]
    if loaded != expected:
        raise ToolError(f"the Docker engine loaded {tag} as {loaded}, not the assembled {expected}: build again")
    return len(measured) - skip


# --- labels --------------------------------------------------------------------------------------


def image_labels(
    models: dict[str, list[Path]],
    digests: dict[Path, str],
    *,
    tag: str,
    base: str,
    model_server: str,
    allow_unsigned: bool,
    public_key_pem: bytes | None,
    chain_pems: list[bytes] | None = None,
    serving: BakedServing | None = None,
    created: str | None = None,
    base_digest: str | None = None,
) -> dict[str, str]:
    """OCI annotations plus dev.tfpack.* labels naming every model, version, label and signed digest.

    What Kubernetes sizes pods and picks GPUs from is here too: each version dir's bytes
    (``dev.tfpack.model.NAME.N.bytes``), the tower count of a merged-towers version
    (``dev.tfpack.model.NAME.N.towers``, from its provenance record) and
    ``dev.tfpack.models-from-volume`` for an image that holds no model.
    ``dev.tfpack.prefer-tflite-model`` says the server runs with --prefer_tflite_model (a version
    holds a model.tflite). The same dirs and options give the same labels (so the same image ID).

    Args:
        created: the image's fixed time (RFC 3339) for org.opencontainers.image.created.
        base_digest: the base's digest for org.opencontainers.image.base.digest.
    """
    _, image_version = docker.utils.parse_repository_tag(tag)
    labels = {
        "org.opencontainers.image.title": ",".join(models),
        "org.opencontainers.image.description": "TensorFlow Serving image built by tfpack: "
        + ", ".join(f"{name} v{','.join(d.name for d in dirs)}" for name, dirs in models.items()),
        "org.opencontainers.image.version": image_version or "latest",
        "org.opencontainers.image.base.name": base,
        f"{LABEL_PREFIX}.version": packager.__version__,
        f"{LABEL_PREFIX}.models": ",".join(models),
        f"{LABEL_PREFIX}.base": base,
        f"{LABEL_PREFIX}.model-server": model_server,
    }
    if created is not None:
        labels["org.opencontainers.image.created"] = created
    if base_digest is not None:
        labels["org.opencontainers.image.base.digest"] = base_digest
    labels.update(_source_labels())
    for name, dirs in models.items():
        labels[f"{LABEL_PREFIX}.model.{name}.versions"] = ",".join(d.name for d in dirs)
        for version_dir in dirs:
            if version_dir in digests:
                key = f"{LABEL_PREFIX}.model.{name}.{version_dir.name}.digest"
                labels[key] = digests[version_dir]
            labels[f"{LABEL_PREFIX}.model.{name}.{version_dir.name}.bytes"] = str(version_dir_bytes(version_dir))
            towers = merged_towers(version_dir)
            if towers is not None:
                labels[f"{LABEL_PREFIX}.model.{name}.{version_dir.name}.towers"] = str(towers)
    if public_key_pem is not None:
        labels[f"{LABEL_PREFIX}.public-key.sha256"] = hashlib.sha256(public_key_pem).hexdigest()
    if chain_pems:
        labels[f"{LABEL_PREFIX}.cert-chain.sha256"] = hashlib.sha256(b"".join(chain_pems)).hexdigest()
    if allow_unsigned:
        labels[f"{LABEL_PREFIX}.allow-unsigned"] = "true"
    if serving is not None:
        for name, version_labels in serving.labels.items():
            for label, version in version_labels.items():
                labels[f"{LABEL_PREFIX}.model.{name}.label.{label}"] = str(version)
        if serving.monitoring:
            labels[f"{LABEL_PREFIX}.monitoring"] = PROMETHEUS_PATH
        if serving.batching:
            labels[f"{LABEL_PREFIX}.batching"] = "true"
        if serving.models_from_volume:
            labels[f"{LABEL_PREFIX}.models-from-volume"] = "true"
        if serving.prefer_tflite_model:
            labels[f"{LABEL_PREFIX}.prefer-tflite-model"] = "true"
        labels[f"{LABEL_PREFIX}.serving.sha256"] = hashlib.sha256(serving.dumps().encode()).hexdigest()
        labels[f"{LABEL_PREFIX}.reload-config"] = (
            "verified"
            if serving.allow_reload_config
            else "refused"
            if serving.model_server == EMBEDDED_MODEL_SERVER
            # tensorflow_model_server always serves HandleReloadConfigRequest: say so.
            else "unguarded"
        )
    return labels


def _public_key_pem(public_key: Path) -> bytes:
    """Parse ``public_key`` (refusing private and unsupported keys) and return it re-encoded."""
    from cryptography.hazmat.primitives import serialization

    return load_ec_public_key(public_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _certificate_pem(path: Path) -> bytes:
    """Parse a PEM certificate (chain) file and return its certificates re-encoded."""
    from cryptography.hazmat.primitives import serialization

    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in load_certificates([path]))


def _source_labels() -> dict[str, str]:
    """org.opencontainers.image.source/revision: tfpack's checkout (its origin and commit) when it
    runs from one, else the source URL its installed metadata names, if any."""
    labels: dict[str, str] = {}
    if not _is_tfpack_checkout(_SOURCE_TREE):
        # A pip-installed tfpack lives in site-packages: the git repository around it (a project
        # with its venv inside) is the user's, and its commit is not tfpack's revision.
        url = _metadata_source_url()
        return {"org.opencontainers.image.source": url} if url else labels
    for key, command in (
        ("org.opencontainers.image.revision", ["git", "rev-parse", "HEAD"]),
        ("org.opencontainers.image.source", ["git", "config", "--get", "remote.origin.url"]),
    ):
        try:
            result = subprocess.run(command, cwd=_SOURCE_TREE, capture_output=True, text=True, check=False, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0 and result.stdout.strip():
            labels[key] = result.stdout.strip()
    if "org.opencontainers.image.source" in labels:
        public = public_source_url(labels.pop("org.opencontainers.image.source"))
        if public:
            labels["org.opencontainers.image.source"] = public
    if "org.opencontainers.image.revision" in labels and _tree_is_dirty():
        # The image's code layer is the working tree: say so rather than claim the commit.
        labels["org.opencontainers.image.revision"] += "-dirty"
    if "org.opencontainers.image.source" not in labels:
        url = _metadata_source_url()
        if url:
            labels["org.opencontainers.image.source"] = url
    return labels


def public_source_url(remote: str) -> str | None:
    """The part of a git remote URL an image may carry, or None.

    A CI job's remote holds its credentials (``https://gitlab-ci-token:TOKEN@host/...``) and a
    clone from a local path names a host directory: neither may be baked into an image that is
    pushed, and a per-job token would also change the image ID every job.
    """
    scp_like = re.fullmatch(r"(?:[^@/\s]+@)?([A-Za-z0-9.-]+):([^\s/][^\s]*)", remote)
    if scp_like and "/" in scp_like.group(2):  # git@host:owner/repo.git
        return f"https://{scp_like.group(1)}/{scp_like.group(2)}"
    parsed = urllib.parse.urlsplit(remote)
    if parsed.scheme not in ("https", "http", "ssh", "git") or not parsed.hostname:
        return None
    host = parsed.hostname + (f":{parsed.port}" if parsed.port and parsed.scheme in ("https", "http") else "")
    scheme = parsed.scheme if parsed.scheme in ("https", "http") else "https"
    return urllib.parse.urlunsplit((scheme, host, parsed.path, "", ""))


def _metadata_source_url() -> str | None:
    """The source repository (or else home page) URL tfpack's installed metadata names."""
    try:
        metadata = importlib.metadata.metadata(_runtime_wheel.DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    urls = {}
    for entry in metadata.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        urls[label.strip().lower()] = url.strip()
    for label in ("source", "source code", "repository", "homepage"):
        if urls.get(label):
            return urls[label]
    home_pages = metadata.get_all("Home-page") or []
    return str(home_pages[0]) if home_pages else None


def _is_tfpack_checkout(root: Path) -> bool:
    """True when ``root`` is the top of a tfpack source checkout (its own git work tree)."""
    try:
        is_tfpack = 'name = "tfpack"' in (root / "pyproject.toml").read_text()
    except OSError:
        return False
    return is_tfpack and (root / ".git").exists()


def _tree_is_dirty() -> bool:
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "packager", "serving", "Dockerfile", "pyproject.toml"],
            cwd=_SOURCE_TREE,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return status.returncode == 0 and bool(status.stdout.strip())


def _require_base(client: docker.DockerClient, base: str, progress: Progress) -> str:
    """Return ``base`` once it is present locally, pulling it if needed."""
    try:
        client.images.get(base)
        return base
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise UsageError(f"--base {base!r} is not a usable image reference: {docker_reason(exc)}") from None
    progress.step(f"pulling {base}")
    try:
        client.images.pull(base)
    except docker.errors.APIError as exc:
        raise UsageError(
            f"base image {base} is neither local nor pullable ({docker_reason(exc)}): "
            f"use --base {EMBEDDED_BASE}, or load {base} with 'docker load' first"
        ) from None
    return base
