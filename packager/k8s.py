"""Render the k8s/ kustomize templates for one model and one image.

The output is a kustomize tree a release engineer can review, commit and apply as it is::

    OUTPUT_DIR/kustomization.yaml      deploys overlays/gpu when --gpus > 0, else overlays/cpu
    OUTPUT_DIR/base/                   ServiceAccount, Deployment, Service, HPA, PodDisruptionBudget
    OUTPUT_DIR/overlays/cpu/           the base as it is
    OUTPUT_DIR/overlays/gpu/           adds nvidia.com/gpu requests/limits and the GPU toleration
    OUTPUT_DIR/.tfpack-k8s.json        what was rendered; marks the directory as tfpack's

Names: the model name stays as TF Serving knows it (MODEL_NAME, /v1/models/NAME); the Kubernetes
objects are named after it lowercased, with '_' and '.' turned into '-'. That name must be a
DNS-1035 label (a Service name must be): start with a letter, end with a letter or digit, at most
63 characters; otherwise rendering refuses with a UsageError rather than invent a name.

The templates are ``string.Template`` files; every string value is substituted as a JSON string,
which is also a valid YAML double-quoted scalar, so no model name or image reference can change
the YAML's structure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packager import __version__, layout
from packager.errors import ToolError, UsageError
from packager.progress import SILENT, Progress

# Package data: in a checkout packager/_assets/k8s links to the top-level k8s/; a wheel carries a
# copy (see pyproject.toml's package-data).
TEMPLATES_DIR = Path(__file__).resolve().parent / "_assets" / "k8s"
MARKER_FILE = ".tfpack-k8s.json"
# The HorizontalPodAutoscaler scales from --replicas up to this many times as many.
MAX_REPLICAS_FACTOR = 3

_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_1123_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class K8sResult:
    """What ``render_manifests`` wrote.

    Attributes:
        output_dir: The kustomize tree's root.
        files: The files written, relative to ``output_dir``, sorted.
        name: The Kubernetes name of every object.
        variant: The overlay the root kustomization deploys ("cpu" or "gpu").
        image: The image reference, exactly as given.
        model: The model name.
        gpus: GPUs per replica in overlays/gpu.
        replicas: The HorizontalPodAutoscaler's minimum replica count.
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

    def to_json(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir),
            "files": [str(path) for path in self.files],
            "name": self.name,
            "variant": self.variant,
            "image": self.image,
            "model": self.model,
            "gpus": self.gpus,
            "replicas": self.replicas,
            "namespace": self.namespace,
        }


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
    gpus: int = 0,
    replicas: int = 2,
    namespace: str | None = None,
    progress: Progress = SILENT,
) -> K8sResult:
    """Render the kustomize tree for serving MODEL from IMAGE into OUTPUT_DIR.

    OUTPUT_DIR is replaced as a whole: the tree is rendered into a temporary directory beside it
    and renamed into place, so a reader never sees a half-written tree. An existing OUTPUT_DIR is
    replaced only if it is empty or was itself written by this function.

    Args:
        image: The image reference, used verbatim (pin it by digest for reproducible deploys).
        model: The model name the image serves.
        output_dir: Where the tree goes.
        gpus: GPUs per replica. With 0 the root kustomization deploys overlays/cpu and
            overlays/gpu asks for one GPU; otherwise it deploys overlays/gpu with this many.
        replicas: The minimum replica count (the autoscaler may add more).
        namespace: The namespace every object goes to; None leaves it to kubectl's context.
        progress: Receives a line per step.

    Returns:
        What was written.

    Raises:
        UsageError: A bad image reference, model name or count, or an OUTPUT_DIR that holds
            something tfpack did not write.
    """
    name = kubernetes_name(model)
    _check_image(image)
    if gpus < 0:
        raise UsageError(f"--gpus {gpus} is negative: give 0 for CPU serving or the GPUs per replica")
    if replicas < 1:
        raise UsageError(f"--replicas {replicas} must be at least 1")
    if namespace is not None and not _DNS_1123_LABEL.fullmatch(namespace):
        raise UsageError(
            f"--namespace {namespace!r} is not a Kubernetes namespace name: lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )
    _check_replaceable(output_dir)

    variant = "gpu" if gpus > 0 else "cpu"
    values = {
        "name": json.dumps(name),
        "image": json.dumps(image),
        "model": json.dumps(model),
        "min_replicas": str(replicas),
        "max_replicas": str(replicas * MAX_REPLICAS_FACTOR),
        "gpus": str(max(gpus, 1)),
        "variant": variant,
        # kustomize's namespace transformer sets it on every object of the base, overlays included.
        "namespace_field": f"namespace: {json.dumps(namespace)}" if namespace else "",
    }
    progress.step(f"rendering the {variant} kustomize tree for {model}")
    rendered = _render_templates(values)
    rendered[Path(MARKER_FILE)] = (
        json.dumps(
            {
                "tfpack_version": __version__,
                "image": image,
                "model": model,
                "gpus": gpus,
                "replicas": replicas,
                "namespace": namespace,
            },
            indent=2,
        )
        + "\n"
    )
    progress.step(f"writing {output_dir}")
    try:
        _write_tree_atomically(output_dir, rendered)
    except OSError as exc:
        raise UsageError(f"cannot write --output-dir {output_dir}: {exc.strerror or exc}") from None
    return K8sResult(
        output_dir=output_dir,
        files=sorted(rendered),
        name=name,
        variant=variant,
        image=image,
        model=model,
        gpus=gpus,
        replicas=replicas,
        namespace=namespace,
    )


def _check_image(image: str) -> None:
    layout.check_image_reference(image, "--image")


def _check_replaceable(output_dir: Path) -> None:
    """UsageError unless OUTPUT_DIR is absent, empty, or a tree this module wrote."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output-dir {output_dir} is a file: give a directory path")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / MARKER_FILE).is_file():
        raise UsageError(
            f"--output-dir {output_dir} is not empty and was not written by 'tfpack k8s': give a new or empty directory"
        )


def _render_templates(values: dict[str, str]) -> dict[Path, str]:
    """Every template file under TEMPLATES_DIR, substituted, keyed by its relative path."""
    if not (TEMPLATES_DIR / "kustomization.yaml").is_file():
        raise ToolError(f"tfpack's k8s templates are missing from {TEMPLATES_DIR}: reinstall tfpack")
    rendered: dict[Path, str] = {}
    for template_path in sorted(TEMPLATES_DIR.rglob("*.yaml")):
        relative = template_path.relative_to(TEMPLATES_DIR)
        try:
            rendered[relative] = string.Template(template_path.read_text()).substitute(values)
        except OSError as exc:
            raise ToolError(
                f"cannot read tfpack's k8s template {template_path}: {exc.strerror}: reinstall tfpack"
            ) from None
        except (KeyError, ValueError) as exc:
            raise ToolError(f"tfpack's k8s template {relative} has a bad placeholder {exc}: reinstall tfpack") from None
    return rendered


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
