"""``tfpack build``: a serving image holding signed version dirs and a verify-then-serve entrypoint.

The image is built with the Docker SDK from the repo-root Dockerfile and a context rendered here:
the version dirs (with their model.sig), the public key, and a wheel of tfpack's current source.
Private keys never enter the context: the key given is parsed and only its public half written.
Signatures are verified here too, so a model that would refuse to start fails the build instead.

Two kinds of base: ``embedded`` (tfpack's own runtime, built offline by :mod:`_runtime_base` and
served by ``tfpack-model-server``) or any image with TensorFlow Serving's layout, such as
``tensorflow/serving:2.21.0`` (served by ``tensorflow_model_server``).

What the image serves and trusts is decided here and baked into root-owned files under
/etc/tfpack (serving.json, models.config pinning each model's version, trust/, the session
config); the entrypoint reads only those and refuses run-time arguments or environment that would
change them (see :mod:`serving.entrypoint`). Every version dir must also pass the op scan.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.utils

import packager
from packager import _runtime_base, _runtime_wheel
from packager.docker_engine import build_from_context, docker_client, docker_reason, push_tag
from packager.errors import ToolError, UsageError, VerificationError
from packager.layout import (
    CHAIN_DIR,
    PUBLIC_KEY_FILE,
    TRUST_DIR,
    Trust,
    check_image_reference,
    check_model_name,
    is_version_dir,
    load_certificates,
    load_ec_public_key,
    numeric_versions,
    version_dirs,
)
from packager.progress import SILENT, Progress
from packager.signing import MODEL_SIGNING_VERSION
from serving.entrypoint import (
    EMBEDDED_SERVER,
    MODEL_CONFIG_FILE,
    SERVER_PATHS,
    SERVING_FILE,
    SESSION_CONFIG_FILE,
    TF_SERVING_SERVER,
    BakedServing,
    model_config_text,
)

EMBEDDED_BASE = "embedded"
# The entrypoint's names for the two servers, under the names the build has always exported.
EMBEDDED_MODEL_SERVER = EMBEDDED_SERVER
TF_SERVING_MODEL_SERVER = TF_SERVING_SERVER
LABEL_PREFIX = "dev.tfpack"
# Passed to either server as --tensorflow_session_config_file. Soft placement lets a model whose
# ops are pinned to GPUs (merged towers: /device:*:N) run on whatever devices the host has;
# tensorflow_model_server places strictly by default and would refuse to load it on a CPU host.
SESSION_CONFIG = (
    "# tensorflow.ConfigProto for the model server's sessions (written by tfpack build)\nallow_soft_placement: true\n"
)

# What the entrypoint needs where the base has no Python of its own (tensorflow/serving):
# packager.layout's trust check, nothing of TensorFlow.
VERIFIER_REQUIREMENTS = (
    f"model-signing=={MODEL_SIGNING_VERSION}",
    "pyopenssl>=24,<27",
    "certifi>=2024.2.2",
    "cryptography>=43",
    "numpy>=1.26,<3",
)

# A checkout's root when tfpack runs from one (where its git labels come from); for a pip-installed
# tfpack, the site-packages dir holding it.
_SOURCE_TREE = Path(packager.__file__).resolve().parent.parent
# Package data: in a checkout packager/_assets/Dockerfile links to the top-level Dockerfile; a wheel
# carries a copy (see pyproject.toml's package-data).
_DOCKERFILE = Path(packager.__file__).resolve().parent / "_assets" / "Dockerfile"


@dataclass(frozen=True)
class BuildResult:
    """The image ``build_image`` made (and pushed, when asked)."""

    tag: str
    image_id: str
    base: str
    model_server: str
    models: dict[str, list[int]]
    labels: dict[str, str]
    repo_digest: str | None = None  # set when pushed: NAME@sha256:...
    serving: BakedServing | None = None  # what /etc/tfpack/serving.json holds

    def to_json(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "image_id": self.image_id,
            "base": self.base,
            "model_server": self.model_server,
            "models": self.models,
            "labels": self.labels,
            "pushed": self.repo_digest is not None,
            "repo_digest": self.repo_digest,
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
            f"{model_dir} holds no model: expected {model_dir}/1/saved_model.pb "
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
    """The version dirs of a model base path (layout's rule), each of which must be a SavedModel."""
    dirs = list(version_dirs(model_base_path).values())
    for version_dir in dirs:
        if not is_version_dir(version_dir):
            raise UsageError(f"{version_dir} holds no saved_model.pb: not a SavedModel version dir")
    return dirs


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

    Ops a verified dir's signed provenance allowed at convert (``--allow-op``) stay allowed; an
    unsigned dir's own record is not trusted to allow anything.

    Raises:
        UsageError: the first dir that fails, with the scan's summary.
    """
    from packager.graph.op_scan import scan_saved_model
    from packager.provenance import recorded_allowed_ops

    for version_dir in (d for dirs in models.values() for d in dirs):
        progress.step(f"scanning the ops of {version_dir}")
        allowed = recorded_allowed_ops(version_dir) if version_dir in verified else frozenset()
        result = scan_saved_model(version_dir, allowed)
        if result.blocking:
            raise UsageError(
                f"{result.summary()}: 'tfpack build' refuses a model whose op scan fails "
                "(reconvert it, or allow each op with 'tfpack convert --allow-op' and sign again)"
            )


def build_image(
    model_dir: Path,
    tag: str,
    *,
    base: str = EMBEDDED_BASE,
    public_key: Path | None = None,
    cert_chain: list[Path] | None = None,
    allow_unsigned: bool = False,
    allow_reload_config: bool = False,
    push: bool = False,
    progress: Progress = SILENT,
) -> BuildResult:
    """Build (and optionally push) the serving image for the model(s) in ``model_dir``.

    Args:
        model_dir: a model base path DIR/NAME, or a directory of several (then the image serves
            them all through /models/models.config).
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
        push: push ``tag`` after building it.
        progress: receives every long step.

    Raises:
        UsageError: bad model dir, key, tag or base; a version dir failing the op scan; no
            Docker engine; a failed push.
        VerificationError: an unsigned or tampered version dir.
        ToolError: the image build itself failed (exit 2).
    """
    check_image_reference(tag, "--tag")
    if base != EMBEDDED_BASE:
        check_image_reference(base, "--base")
        if allow_reload_config:
            raise UsageError(
                "--allow-reload-config needs --base embedded: tensorflow_model_server cannot "
                "verify the models a reload loads"
            )
    models = find_models(model_dir)
    key_pem = _public_key_pem(public_key) if public_key is not None else None
    chain_pems = [_certificate_pem(path) for path in cert_chain or []]
    digests = verify_signatures(
        models, public_key, cert_chain=cert_chain, allow_unsigned=allow_unsigned, progress=progress
    )
    scan_models(models, digests, progress)
    serving = BakedServing(
        model_server=EMBEDDED_MODEL_SERVER if base == EMBEDDED_BASE else TF_SERVING_MODEL_SERVER,
        models={name: [int(d.name) for d in dirs] for name, dirs in models.items()},
        allow_unsigned=allow_unsigned,
        allow_reload_config=allow_reload_config,
        trust="cert_chain" if chain_pems else "public_key" if key_pem is not None else "none",
    )
    client = docker_client()
    if base == EMBEDDED_BASE:
        base_image, model_server = ensure_embedded_base(progress), EMBEDDED_MODEL_SERVER
    else:
        base_image, model_server = _require_base(client, base, progress), TF_SERVING_MODEL_SERVER
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
    )
    with tempfile.TemporaryDirectory(prefix="tfpack-build-") as work:
        context = Path(work) / "context"
        render_context(
            context, models, public_key_pem=key_pem, chain_pems=chain_pems, serving=serving, progress=progress
        )
        image_id = build_from_context(
            client,
            context,
            tag=tag,
            buildargs={
                "BASE": base_image,
                "MODEL_SERVER_PATH": SERVER_PATHS[model_server],
                "MODEL_NAME": next(iter(models)),
            },
            labels=labels,
            progress=progress,
        )
    repo_digest = push_tag(client, tag, progress) if push else None
    return BuildResult(
        tag=tag,
        image_id=image_id,
        base=base_image,
        model_server=model_server,
        models={name: [int(d.name) for d in dirs] for name, dirs in models.items()},
        labels=labels,
        repo_digest=repo_digest,
        serving=serving,
    )


def render_context(
    context: Path,
    models: dict[str, list[Path]],
    *,
    public_key_pem: bytes | None,
    chain_pems: list[bytes] | None = None,
    serving: BakedServing | None = None,
    progress: Progress = SILENT,
) -> None:
    """Write the build context tfpack's Dockerfile expects into the new dir ``context``.

    The Dockerfile is tfpack's package data (the top-level one in a checkout); the wheel of tfpack
    the image installs is packed from the running tfpack (:mod:`packager._runtime_wheel`).

    ``serving`` defaults to what :func:`build_image` would bake for ``models`` on the embedded
    base with the trust given.
    """
    if serving is None:
        serving = BakedServing(
            model_server=EMBEDDED_MODEL_SERVER,
            models={name: [int(d.name) for d in dirs] for name, dirs in models.items()},
            trust="cert_chain" if chain_pems else "public_key" if public_key_pem is not None else "none",
            allow_unsigned=public_key_pem is None and not chain_pems,
        )
    if not _DOCKERFILE.is_file():
        raise ToolError(f"tfpack's Dockerfile is missing from {_DOCKERFILE.parent}: reinstall tfpack")
    context.mkdir(parents=True)
    shutil.copyfile(_DOCKERFILE, context / "Dockerfile")
    progress.step("copying the model version dirs into the build context")
    for name, dirs in models.items():
        for version_dir in dirs:
            shutil.copytree(version_dir, context / "models" / name / version_dir.name)
    (context / "models").mkdir(exist_ok=True)
    _make_world_readable(context / "models")
    etc = context / "etc"
    trust = etc / TRUST_DIR
    trust.mkdir(parents=True)
    if public_key_pem is not None:
        (trust / PUBLIC_KEY_FILE).write_bytes(public_key_pem)
    if chain_pems:
        (trust / CHAIN_DIR).mkdir()
        for position, pem in enumerate(chain_pems):
            (trust / CHAIN_DIR / f"{position:02d}.pem").write_bytes(pem)
    (etc / SERVING_FILE).write_text(serving.dumps())
    (etc / MODEL_CONFIG_FILE).write_text(model_config_text(serving.served_versions))
    (etc / SESSION_CONFIG_FILE).write_text(SESSION_CONFIG)
    _make_world_readable(etc)
    (context / "verifier-requirements.txt").write_text("\n".join(VERIFIER_REQUIREMENTS) + "\n")
    progress.step("packing the running tfpack into a wheel for the image")
    _runtime_wheel.build_runtime_wheel(context / "wheels")


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
) -> dict[str, str]:
    """OCI annotations plus dev.tfpack.* labels naming every model version and its signed digest."""
    _, image_version = docker.utils.parse_repository_tag(tag)
    labels = {
        "org.opencontainers.image.title": ",".join(models),
        "org.opencontainers.image.description": "TensorFlow Serving image built by tfpack: "
        + ", ".join(f"{name} v{','.join(d.name for d in dirs)}" for name, dirs in models.items()),
        "org.opencontainers.image.version": image_version or "latest",
        "org.opencontainers.image.created": datetime.now(UTC).isoformat(timespec="seconds"),
        "org.opencontainers.image.base.name": base,
        f"{LABEL_PREFIX}.version": packager.__version__,
        f"{LABEL_PREFIX}.models": ",".join(models),
        f"{LABEL_PREFIX}.base": base,
        f"{LABEL_PREFIX}.model-server": model_server,
    }
    labels.update(_git_labels())
    for name, dirs in models.items():
        labels[f"{LABEL_PREFIX}.model.{name}.versions"] = ",".join(d.name for d in dirs)
        for version_dir in dirs:
            if version_dir in digests:
                key = f"{LABEL_PREFIX}.model.{name}.{version_dir.name}.digest"
                labels[key] = digests[version_dir]
    if public_key_pem is not None:
        labels[f"{LABEL_PREFIX}.public-key.sha256"] = hashlib.sha256(public_key_pem).hexdigest()
    if chain_pems:
        labels[f"{LABEL_PREFIX}.cert-chain.sha256"] = hashlib.sha256(b"".join(chain_pems)).hexdigest()
    if allow_unsigned:
        labels[f"{LABEL_PREFIX}.allow-unsigned"] = "true"
    if serving is not None:
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


def _make_world_readable(root: Path) -> None:
    """The server runs as uid 10001 over root-owned files: let it read, not write, them.

    COPY keeps these modes and makes root the owner: files 0644 (or 0755), dirs 0755.
    """
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        extra = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | stat.S_IWUSR
        if path.is_dir():
            extra |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
        path.chmod((mode | extra) & ~(stat.S_IWGRP | stat.S_IWOTH))


def _git_labels() -> dict[str, str]:
    """org.opencontainers.image.source/revision of tfpack's checkout, when it is one."""
    labels: dict[str, str] = {}
    if not _is_tfpack_checkout(_SOURCE_TREE):
        # A pip-installed tfpack lives in site-packages: the git repository around it (a project
        # with its venv inside) is the user's, and its commit is not tfpack's revision.
        return labels
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
    if "org.opencontainers.image.revision" in labels and _tree_is_dirty():
        # The wheel is built from the working tree: say so rather than claim the commit.
        labels["org.opencontainers.image.revision"] += "-dirty"
    return labels


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
