"""Render the k8s/ kustomize templates for one model and the image(s) serving it.

The output is a kustomize tree a release engineer can review, commit and apply as it is::

    OUTPUT_DIR/kustomization.yaml      deploys overlays/canary with --canary, else overlays/gpu
                                       when --gpus > 0, else overlays/cpu
    OUTPUT_DIR/base/                   ServiceAccount, ConfigMap (the model server config),
                                       Deployment, Service, HPA, PodDisruptionBudget
    OUTPUT_DIR/components/gpu/         a kustomize Component: nvidia.com/gpu and the GPU toleration
                                       for every Deployment of the model
    OUTPUT_DIR/overlays/cpu/           the base as it is
    OUTPUT_DIR/overlays/gpu/           the base with the gpu component
    OUTPUT_DIR/overlays/canary/        (--canary) the base, the gpu component when --gpus > 0, and
                                       a canary Deployment and ConfigMap for the canary image
    OUTPUT_DIR/.tfpack-k8s.json        what was rendered; marks the directory as tfpack's

Everything is sized and wired from the image itself (packager.image_facts reads its labels): the
memory from the bytes of the versions it serves, the GPUs from a merged tower model's tower
count, the uid, Prometheus scraping when it was built with --monitoring, and the models volume
with its verifying initContainer when it was built with --models-from-volume. A tag is pinned to
its digest unless --allow-tag.

Names: the model name stays as TF Serving knows it (MODEL_NAME, /v1/models/NAME); the Kubernetes
objects are named after it lowercased, with '_' and '.' turned into '-'. That name must be a
DNS-1035 label (a Service name must be): start with a letter, end with a letter or digit, at most
63 characters; otherwise rendering refuses with a UsageError rather than invent a name.

The templates are ``string.Template`` files; every string value is substituted as a JSON string
(structures as JSON objects and lists), which is also valid YAML flow style, so no model name,
image reference or claim name can change the YAML's structure.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager import __version__, layout
from packager.errors import ToolError, UsageError
from packager.image_facts import ImageFacts, read_image_facts
from packager.layout import CLAIM_DIR, DEPLOYMENT_CONFIG_DIR, MODELS_ROOT, REST_PORT
from packager.progress import SILENT, Progress
from serving.entrypoint import EMBEDDED_SERVER, deployment_model_config_text

# Package data: in a checkout packager/_assets/k8s links to the top-level k8s/; a wheel carries a
# copy (see pyproject.toml's package-data).
TEMPLATES_DIR = Path(__file__).resolve().parent / "_assets" / "k8s"
MARKER_FILE = ".tfpack-k8s.json"
# How far, in percentage points, the canary's share of the pods may be from --canary-weight.
CANARY_TOLERANCE = 5
# The HorizontalPodAutoscaler scales from --replicas up to this many times as many.
MAX_REPLICAS_FACTOR = 3
# What each server holds before any model: measured on the served image with a tiny model
# (bench/ has no part in it: a rendered request only needs to be generous and stable).
RUNTIME_BASELINE_MIB = {EMBEDDED_SERVER: 768, "tensorflow_model_server": 384}
# The verifier (initContainer) streams every file through a copy and SHA-256: its memory does not
# grow with the model.
VERIFIER_MEMORY_MIB = 512
# CPU request = limit (with memory request = limit: Guaranteed QoS, the last evicted).
SERVER_CPU = "2"
# /tmp is a tmpfs (TensorFlow writes little there); it counts against the memory limit, hence
# added to it.
TMP_MIB = 64
# The volume variant's emptyDir holds a copy of every served version.
STAGING_HEADROOM = 1.1
STARTUP_PERIOD_S = 10
STARTUP_BASE_S = 900
STARTUP_BYTES_PER_S = 20 * 2**20

HEALTH_CHECK = ["/opt/tfpack/venv/bin/python", "-I", "-m", "serving.healthcheck"]
VERIFIER = ["/opt/tfpack/venv/bin/python", "-I", "-m", "serving.verify"]

_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_1123_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_DNS_1123_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?")
_CANARY_FILES = ("overlays/canary/",)


@dataclass(frozen=True)
class CanaryPlan:
    """The canary Deployment: its image, replicas and the share of ready pods they make."""

    image: ImageFacts
    weight: int  # the --canary-weight asked for, in percent
    replicas: int

    def share_percent(self, stable_replicas: int) -> float:
        """The canary's share of the pods while the stable Deployment runs ``stable_replicas``."""
        return round(100 * self.replicas / (self.replicas + stable_replicas), 1)


@dataclass(frozen=True)
class K8sResult:
    """What ``render_manifests`` wrote.

    Attributes:
        output_dir: The kustomize tree's root.
        files: The files written, relative to ``output_dir``, sorted.
        name: The Kubernetes name of every object (the canary's add "-canary").
        variant: The overlay the root kustomization deploys ("cpu", "gpu" or "canary").
        image: What the stable Deployment runs (pinned to a digest unless a tag was allowed).
        model: The model name.
        gpus: GPUs per replica in overlays/gpu (and the canary when > 0).
        replicas: The HorizontalPodAutoscaler's minimum replica count.
        namespace: The namespace of every object, None for kubectl's context.
        memory: The memory each model-server container requests (= its limit).
        monitoring_path: The path Prometheus is told to scrape, None without monitoring.
        models_from_volume: The PersistentVolumeClaim the models come from, None when baked.
        canary: The canary, None without one.
    """

    output_dir: Path
    files: list[Path]
    name: str
    variant: str
    image: str
    model: str
    gpus: int
    replicas: int
    namespace: str | None = None
    memory: str = ""
    monitoring_path: str | None = None
    models_from_volume: str | None = None
    canary: CanaryPlan | None = None
    pinned: bool = True
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir),
            "files": [str(path) for path in self.files],
            "name": self.name,
            "variant": self.variant,
            "image": self.image,
            "pinned": self.pinned,
            "model": self.model,
            "gpus": self.gpus,
            "replicas": self.replicas,
            "namespace": self.namespace,
            "memory": self.memory,
            "monitoring_path": self.monitoring_path,
            "models_from_volume": self.models_from_volume,
            "notes": self.notes,
            "canary": None
            if self.canary is None
            else {
                "image": self.canary.image.reference,
                "pinned": self.canary.image.pinned,
                "weight": self.canary.weight,
                "replicas": self.canary.replicas,
                "share_percent": self.canary.share_percent(self.replicas),
            },
        }

    def summary(self) -> str:
        """One line for humans."""
        line = f"wrote {len(self.files)} files under {self.output_dir} ({self.variant}: {self.image}"
        if self.canary is not None:
            share = self.canary.share_percent(self.replicas)
            line += f"; canary {self.canary.image.reference}, {self.canary.replicas} replica(s), ~{share}% of pods"
        return line + ")"


def kubernetes_name(model: str) -> str:
    """Return the Kubernetes object name for a model, or raise UsageError if there is none.

    Args:
        model: A TF Serving model name (see packager.layout.check_model_name).

    Returns:
        The name lowercased with '_' and '.' replaced by '-', when that is a DNS-1035 label.
    """
    layout.check_model_name(model, "--model")
    name = model.lower().replace("_", "-").replace(".", "-")
    if not _DNS_1035_LABEL.match(name):
        raise UsageError(
            f"--model {model!r} gives the Kubernetes name {name!r}, which is not a DNS-1035 label: "
            "the model name must start with a letter and end with a letter or digit"
        )
    return name


def render_manifests(
    image: str,
    model: str,
    output_dir: Path,
    *,
    gpus: int | None = None,
    replicas: int = 2,
    namespace: str | None = None,
    canary: str | None = None,
    canary_weight: int | None = None,
    models_from_volume: str | None = None,
    allow_tag: bool = False,
    progress: Progress = SILENT,
) -> K8sResult:
    """Read IMAGE (and the canary image) through the Docker engine, then render the tree.

    Args:
        image: The image reference; a tag is pinned to its digest (see packager.image_facts).
        canary: A second image for a canary Deployment (needs ``canary_weight``).
        canary_weight: The canary's share of the pods, in percent (1..99).
        allow_tag: Deploy tags as given instead of pinning them.
        Others: as :func:`render_from_facts`.

    Raises:
        UsageError: as :func:`render_from_facts`, and an image that cannot be read or resolved.
    """
    # Everything that needs no engine is checked first: a typo costs no registry round trip.
    kubernetes_name(model)
    _check_options(replicas, gpus, namespace, canary is not None, canary_weight, models_from_volume)
    _check_replaceable(output_dir)
    progress.step(f"reading {image}")
    facts = read_image_facts(image, allow_tag=allow_tag, progress=progress)
    canary_facts = None
    if canary is not None:
        progress.step(f"reading the canary {canary}")
        canary_facts = read_image_facts(canary, allow_tag=allow_tag, flag="--canary", progress=progress)
    return render_from_facts(
        facts,
        model,
        output_dir,
        gpus=gpus,
        replicas=replicas,
        namespace=namespace,
        canary=canary_facts,
        canary_weight=canary_weight,
        models_from_volume=models_from_volume,
        progress=progress,
    )


def render_from_facts(
    image: ImageFacts,
    model: str,
    output_dir: Path,
    *,
    gpus: int | None = None,
    replicas: int = 2,
    namespace: str | None = None,
    canary: ImageFacts | None = None,
    canary_weight: int | None = None,
    models_from_volume: str | None = None,
    progress: Progress = SILENT,
) -> K8sResult:
    """Render the kustomize tree for serving MODEL from IMAGE into OUTPUT_DIR.

    OUTPUT_DIR is replaced as a whole: the tree is rendered into a temporary directory beside it
    and renamed into place, so a reader never sees a half-written tree. An existing OUTPUT_DIR is
    replaced only if it is empty or was itself written by this function.

    Args:
        image: The image, as its labels describe it.
        model: The model name the image serves.
        output_dir: Where the tree goes.
        gpus: GPUs per replica; None: the tower count of a merged tower model, else 0. With 0
            the root kustomization deploys overlays/cpu and overlays/gpu asks for one GPU.
        replicas: The minimum replica count of the stable Deployment (the autoscaler may add more).
        namespace: The namespace every object goes to; None leaves it to kubectl's context.
        canary: The canary image; its Deployment runs ``canary_weight`` percent of the pods.
        canary_weight: The canary's share in percent, 1..99.
        models_from_volume: The PersistentVolumeClaim holding the version dirs, for an image
            built with ``--models-from-volume``.
        progress: Receives a line per step.

    Returns:
        What was written.

    Raises:
        UsageError: A bad model name, count, namespace or claim name, an image that does not
            serve the model or does not match --models-from-volume, or an OUTPUT_DIR that holds
            something tfpack did not write.
    """
    name = kubernetes_name(model)
    _check_options(replicas, gpus, namespace, canary is not None, canary_weight, models_from_volume)
    if canary is not None and len(f"{name}-canary") > 63:
        raise UsageError(
            f"--canary: the canary's name {name}-canary is longer than the 63 characters a Kubernetes label "
            "value may have: serve the model under a name of at most 56 characters"
        )
    _check_replaceable(output_dir)
    for facts, flag in ((image, "--image"), *(((canary, "--canary"),) if canary else ())):
        facts.check_serves(model, flag)
        _check_volume_mode(facts, flag, models_from_volume)
    notes: list[str] = []
    if gpus is None:
        towers = image.towers(model)
        gpus = towers if image.gpu_capable else 0
        if towers and not image.gpu_capable:
            notes.append(
                f"model {model} merges {towers} towers, but {image.reference} runs a CPU-only runtime "
                f"(base {image.base}): no GPUs requested; build it on a GPU base to use them"
            )
    plan = None
    if canary is not None and canary_weight is not None:
        plan = CanaryPlan(canary, canary_weight, canary_replicas(replicas, canary_weight))
        _check_canary_share(plan, replicas)
    variant = "canary" if plan else "gpu" if gpus > 0 else "cpu"
    stable_variant = "gpu" if gpus > 0 else "cpu"

    common = {
        "name": json.dumps(name),
        "name_label": name,
        "model": json.dumps(model),
        "min_replicas": str(replicas),
        "max_replicas": str(replicas * MAX_REPLICAS_FACTOR),
        "gpus": str(max(gpus, 1)),
        "variant": variant,
        "stable_variant": stable_variant,
        "canary_name_plain": f"{name}-canary",
        "canary_components": json.dumps(["../../components/gpu"] if gpus > 0 else []),
        # kustomize's namespace transformer sets it on every object of the base, overlays included.
        "namespace_field": f"namespace: {json.dumps(namespace)}" if namespace else "",
    }
    progress.step(f"rendering the {variant} kustomize tree for {model}")
    stable = _deployment_values(image, model, name, replicas=None, claim=models_from_volume)
    rendered = _render_templates({**common, **stable}, skip=() if plan else _CANARY_FILES)
    if plan is not None:
        canary_values = _deployment_values(
            plan.image, model, f"{name}-canary", replicas=plan.replicas, claim=models_from_volume
        )
        for template, target in (
            ("base/deployment.yaml", "deployment.yaml"),
            ("base/configmap.yaml", "configmap.yaml"),
        ):
            rendered[Path("overlays/canary") / target] = _render_template(template, {**common, **canary_values})
    result = K8sResult(
        output_dir=output_dir,
        files=sorted([*rendered, Path(MARKER_FILE)]),
        name=name,
        variant=variant,
        image=image.reference,
        pinned=image.pinned,
        model=model,
        gpus=gpus,
        replicas=replicas,
        namespace=namespace,
        memory=stable["memory_plain"],
        monitoring_path=image.monitoring_path,
        models_from_volume=models_from_volume,
        canary=plan,
        notes=notes,
    )
    for note in notes:
        progress.step(f"note: {note}")
    rendered[Path(MARKER_FILE)] = json.dumps({"tfpack_version": __version__, **result.to_json()}, indent=2) + "\n"
    progress.step(f"writing {output_dir}")
    try:
        _write_tree_atomically(output_dir, rendered)
    except OSError as exc:
        raise UsageError(
            f"cannot write --output-dir {output_dir}: {exc.strerror or exc} (give a directory you can write, "
            "whose parents are directories)"
        ) from None
    return result


def _check_canary_share(plan: CanaryPlan, stable_replicas: int) -> None:
    """UsageError when whole pods cannot come within CANARY_TOLERANCE points of the weight asked for."""
    share = plan.share_percent(stable_replicas)
    if abs(share - plan.weight) <= CANARY_TOLERANCE:
        return
    needed = next(
        (
            r
            for r in range(stable_replicas, 10_000)
            if abs(CanaryPlan(plan.image, plan.weight, canary_replicas(r, plan.weight)).share_percent(r) - plan.weight)
            <= CANARY_TOLERANCE
        ),
        None,
    )
    hint = f"--replicas {needed} gets within {CANARY_TOLERANCE} points" if needed else "no replica count does"
    raise UsageError(
        f"--canary-weight {plan.weight} with --replicas {stable_replicas} gives the canary {plan.replicas} of "
        f"{plan.replicas + stable_replicas} pods ({share}%): {hint}; for exact weights route with a service mesh "
        "(README, tfpack k8s, Canary)"
    )


def canary_replicas(stable_replicas: int, weight: int) -> int:
    """Canary replicas making ``weight`` percent of all pods beside ``stable_replicas`` (at least 1)."""
    return max(1, round(stable_replicas * weight / (100 - weight)))


def memory_mib(image: ImageFacts) -> int:
    """The model server's memory: its runtime's baseline plus twice the bytes it serves, in MiB."""
    baseline = RUNTIME_BASELINE_MIB.get(image.model_server, max(RUNTIME_BASELINE_MIB.values()))
    return baseline + TMP_MIB + math.ceil(2 * image.model_bytes / 2**20)


def _check_options(
    replicas: int,
    gpus: int | None,
    namespace: str | None,
    has_canary: bool,
    canary_weight: int | None,
    models_from_volume: str | None,
) -> None:
    if gpus is not None and gpus < 0:
        raise UsageError(f"--gpus {gpus} is negative: give 0 for CPU serving or the GPUs per replica")
    if replicas < 1:
        raise UsageError(f"--replicas {replicas} must be at least 1")
    if namespace is not None and not _DNS_1123_LABEL.fullmatch(namespace):
        raise UsageError(
            f"--namespace {namespace!r} is not a Kubernetes namespace name: lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )
    if has_canary != (canary_weight is not None):
        raise UsageError("--canary IMAGE and --canary-weight P go together: give both or neither")
    if canary_weight is not None and not 1 <= canary_weight <= 99:
        raise UsageError(f"--canary-weight {canary_weight} must be a percentage from 1 to 99")
    if models_from_volume is not None and not _DNS_1123_SUBDOMAIN.fullmatch(models_from_volume):
        raise UsageError(
            f"--models-from-volume {models_from_volume!r} is not a PersistentVolumeClaim name: lower-case letters, "
            "digits, '-' and '.', starting and ending with a letter or digit"
        )


def _check_volume_mode(facts: ImageFacts, flag: str, claim: str | None) -> None:
    if facts.models_from_volume and claim is None:
        raise UsageError(
            f"{flag} {facts.reference} holds no model (built with --models-from-volume): "
            "give --models-from-volume PVC, the claim holding its version dirs"
        )
    if claim is not None and not facts.models_from_volume:
        raise UsageError(
            f"{flag} {facts.reference} serves the models baked into it: --models-from-volume needs an image "
            "built with 'tfpack build --models-from-volume'"
        )


def startup_failure_threshold(image: ImageFacts) -> int:
    """Startup probes (10 s apart) a first load may take: 15 minutes, plus a minute per 1.2 GB served.

    The server reads every version (and, for a volume, the verifier copied and hashed it first)
    before the port opens; a large model on slow storage must not be killed mid-load.
    """
    seconds = STARTUP_BASE_S + image.model_bytes / STARTUP_BYTES_PER_S
    return math.ceil(seconds / STARTUP_PERIOD_S)


def _deployment_values(
    image: ImageFacts, model: str, instance: str, *, replicas: int | None, claim: str | None
) -> dict[str, str]:
    """The placeholders of base/deployment.yaml and base/configmap.yaml for one Deployment."""
    memory = f"{memory_mib(image)}Mi"
    model_config = deployment_model_config_text(image.models, image.version_labels)
    # The name changes with the content: a pod of the previous image that restarts mid-rollout
    # (or after a rollback) still finds the config its own image serves.
    config_name = f"{instance}-model-config-{hashlib.sha256(model_config.encode()).hexdigest()[:10]}"
    security = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    tmp = {"name": "tmp", "mountPath": "/tmp"}
    config = {"name": "model-config", "mountPath": DEPLOYMENT_CONFIG_DIR, "readOnly": True}
    mounts: list[dict[str, Any]] = [tmp, config]
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": f"{TMP_MIB}Mi"}},
        {"name": "model-config", "configMap": {"name": config_name}},
    ]
    init_containers: list[dict[str, Any]] = []
    staging_mib = math.ceil(image.model_bytes * STAGING_HEADROOM / 2**20) + 1
    if claim is not None:
        # The server never reads the claim: the verifier copies the served version dirs from it
        # into an emptyDir only this pod can write and verifies the copy, which the server then
        # mounts read-only and verifies again. A claim changed after the check changes nothing.
        mounts.append({"name": "models", "mountPath": MODELS_ROOT, "readOnly": True})
        volumes += [
            {"name": "models-claim", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
            {"name": "models", "emptyDir": {"sizeLimit": f"{staging_mib}Mi"}},
        ]
        verifier_memory = f"{VERIFIER_MEMORY_MIB}Mi"
        init_containers.append(
            {
                "name": "verify-models",
                "image": image.reference,
                "imagePullPolicy": _pull_policy(image),
                "command": [*VERIFIER, "--stage-from", CLAIM_DIR],
                "env": [{"name": "MODEL_NAME", "value": model}],
                "resources": {
                    "requests": {"cpu": "1", "memory": verifier_memory},
                    "limits": {"cpu": "1", "memory": verifier_memory},
                },
                "securityContext": security,
                "volumeMounts": [
                    tmp,
                    config,
                    {"name": "models-claim", "mountPath": CLAIM_DIR, "readOnly": True},
                    {"name": "models", "mountPath": MODELS_ROOT},
                ],
            }
        )
    annotations: dict[str, str] = {}
    if image.monitoring_path is not None:
        annotations = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(REST_PORT),
            "prometheus.io/path": image.monitoring_path,
        }
    return {
        "deployment_name": json.dumps(instance),
        "instance": json.dumps(instance),
        "image": json.dumps(image.reference),
        "image_pull_policy": _pull_policy(image),
        "replicas_field": "" if replicas is None else f"replicas: {replicas}",
        "pod_annotations": json.dumps(annotations),
        "uid": str(image.uid),
        "gid": str(image.gid),
        "init_containers": json.dumps(init_containers),
        "resources": json.dumps(
            {
                # The verified copy of the models lives in the pod's emptyDir: node disk the
                # scheduler must count.
                "requests": {
                    "cpu": SERVER_CPU,
                    "memory": memory,
                    **({"ephemeral-storage": f"{staging_mib}Mi"} if claim is not None else {}),
                },
                "limits": {"cpu": SERVER_CPU, "memory": memory},
            }
        ),
        "startup_failure_threshold": str(startup_failure_threshold(image)),
        "container_security_context": json.dumps(security),
        "volume_mounts": json.dumps(mounts),
        "volumes": json.dumps(volumes),
        "config_name": json.dumps(config_name),
        "model_config": json.dumps(model_config),
        "memory_plain": memory,
    }


def _pull_policy(image: ImageFacts) -> str:
    """A digest never changes, a tag can: nodes must not run a stale cached copy of a tag."""
    return "IfNotPresent" if image.pinned else "Always"


def _check_replaceable(output_dir: Path) -> None:
    """UsageError unless OUTPUT_DIR is absent, empty, or a tree this module wrote."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output-dir {output_dir} is a file: give a directory path")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / MARKER_FILE).is_file():
        raise UsageError(
            f"--output-dir {output_dir} is not empty and was not written by 'tfpack k8s': give a new or empty directory"
        )


def _render_templates(values: dict[str, str], *, skip: tuple[str, ...]) -> dict[Path, str]:
    """Every template file under TEMPLATES_DIR but those under ``skip``, substituted, by relative path."""
    if not (TEMPLATES_DIR / "kustomization.yaml").is_file():
        raise ToolError(f"tfpack's k8s templates are missing from {TEMPLATES_DIR}: reinstall tfpack")
    rendered: dict[Path, str] = {}
    for template_path in sorted(TEMPLATES_DIR.rglob("*.yaml")):
        relative = template_path.relative_to(TEMPLATES_DIR)
        if not str(relative).startswith(skip):
            rendered[relative] = _render_template(str(relative), values)
    return rendered


def _render_template(relative: str, values: dict[str, str]) -> str:
    template_path = TEMPLATES_DIR / relative
    try:
        return string.Template(template_path.read_text()).substitute(values)
    except OSError as exc:
        raise ToolError(
            f"cannot read tfpack's k8s template {template_path}: {exc.strerror}: reinstall tfpack"
        ) from None
    except (KeyError, ValueError) as exc:
        raise ToolError(f"tfpack's k8s template {relative} has a bad placeholder {exc}: reinstall tfpack") from None


def _write_tree_atomically(output_dir: Path, files: dict[Path, str]) -> None:
    """Write FILES into a temporary directory beside OUTPUT_DIR, then rename it into place.

    A previous tree is moved aside before the new one is renamed in and deleted after; there is
    no portable atomic exchange of two directories, so for that instant OUTPUT_DIR is absent
    (never half-written).
    """
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    suffix = secrets.token_hex(4)
    staging = output_dir.parent / f".{output_dir.name}.tfpack-new-{suffix}"
    previous = output_dir.parent / f".{output_dir.name}.tfpack-old-{suffix}"
    staging.mkdir()
    try:
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        if output_dir.is_dir() and any(output_dir.iterdir()):
            os.rename(output_dir, previous)
        # rename(2) replaces an empty directory and creates a missing one.
        os.rename(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if previous.exists() and not output_dir.exists():
            os.rename(previous, output_dir)
        raise
    shutil.rmtree(previous, ignore_errors=True)
