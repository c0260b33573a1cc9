"""What a serving image tells the Kubernetes manifests about itself, and the digest that pins it.

``tfpack k8s`` is handed an image reference, not a model dir: everything it sizes and wires from
(the models and versions served, their bytes, merged tower counts, monitoring, the uid, whether
the models come from a volume) is read from the labels and config ``tfpack build`` gave the image.

A tag is resolved to the digest the manifests pin (a tag can be moved after review; a digest
cannot), in this order::

    NAME@sha256:...             pinned already; read from the engine, pulled if it is not there
    NAME:TAG held by the engine the engine's repository digest for NAME (set by a push or pull);
                                an image built here and never pushed has none: refused
    NAME:TAG not held           the registry's digest for the tag, then that digest pulled
    --allow-tag                 the reference as given (the engine's image, pulled if absent)

Nothing here writes anything: a failure is a UsageError naming the image and what to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import docker.utils
import requests

from packager.docker_engine import ImageNotFound, docker_client, docker_reason, inspect_image
from packager.errors import TfpackError, UsageError, first_line
from packager.layout import check_image_reference
from packager.progress import SILENT, Progress

LABEL_PREFIX = "dev.tfpack"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# Versions are int64s and every other number is far smaller: longer digit runs are refused
# before int() sees them (Python refuses over 4,300 digits with a ValueError of its own).
_NUMBER = re.compile(r"[0-9]{1,19}")
# A version dir of a petabyte, or more towers than any host has GPUs, is a broken or hostile label.
MAX_VERSION_BYTES = 2**50
MAX_TOWERS = 64
MAX_ID = 2**31 - 1  # uids and gids Kubernetes accepts


@dataclass(frozen=True)
class ImageFacts:
    """A tfpack serving image as its labels and config describe it.

    Attributes:
        reference: The reference the manifests use: ``NAME@sha256:...`` unless a tag was allowed.
        pinned: Whether ``reference`` names a digest.
        models: Every model the image serves, with every version it serves (all are loaded).
        version_labels: ``{model: {label: version}}``.
        version_bytes: ``{model: {version: bytes of its version dir}}``.
        version_towers: ``{model: {version: merged tower count}}``, only for merged tower models.
        model_server: ``tfpack-model-server`` or ``tensorflow_model_server``.
        monitoring_path: The Prometheus metrics path on the REST port, None when monitoring is off.
        uid: The numeric user the image runs as.
        gid: Its numeric group.
        models_from_volume: The image holds no model: it serves them from a volume at /models.
    """

    reference: str
    pinned: bool
    models: dict[str, list[int]]
    version_labels: dict[str, dict[str, int]]
    version_bytes: dict[str, dict[int, int]]
    version_towers: dict[str, dict[int, int]]
    model_server: str
    monitoring_path: str | None
    uid: int
    gid: int
    models_from_volume: bool = False
    base: str = "embedded"

    @property
    def gpu_capable(self) -> bool:
        """Whether the runtime can use GPUs: only a GPU build of TF Serving (tensorflow/serving:*-gpu);
        tfpack's embedded runtime runs tensorflow-cpu."""
        name = self.base.partition("@")[0]  # a base pinned by digest keeps its tag before the @
        return name.rpartition("/")[2].partition(":")[2].endswith("-gpu")

    @property
    def model_bytes(self) -> int:
        """The bytes of every version the image serves: the server holds them all at once."""
        return sum(sum(versions.values()) for versions in self.version_bytes.values())

    def towers(self, model: str) -> int:
        """The largest merged tower count among ``model``'s served versions, 0 when none is merged."""
        return max(self.version_towers.get(model, {}).values(), default=0)

    def check_serves(self, model: str, flag: str = "--image") -> None:
        """UsageError unless the image serves ``model``."""
        if model not in self.models:
            raise UsageError(
                f"{flag} {self.reference} does not serve model {model!r} (it serves {', '.join(sorted(self.models))})"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "pinned": self.pinned,
            "models": self.models,
            "model_bytes": self.model_bytes,
            "model_server": self.model_server,
            "monitoring_path": self.monitoring_path,
            "user": f"{self.uid}:{self.gid}",
            "models_from_volume": self.models_from_volume,
            "base": self.base,
        }


def facts_from_config(reference: str, config: dict[str, Any], *, pinned: bool) -> ImageFacts:
    """Read an image's facts from its config (``docker image inspect``'s ``Config``).

    Args:
        reference: The reference the manifests will use.
        config: The image config: its ``Labels`` and ``User``.
        pinned: Whether ``reference`` names a digest.

    Raises:
        UsageError: The image was not built by ``tfpack build``, or by one too old to carry
            the labels the manifests are sized from, or it runs as a non-numeric user.
    """
    labels: dict[str, str] = dict(config.get("Labels") or {})

    def label(key: str) -> str | None:
        return labels.get(f"{LABEL_PREFIX}.{key}")

    if label("version") is None or not label("models"):
        raise UsageError(f"{reference} was not built by 'tfpack build' (it has no {LABEL_PREFIX}.* labels)")
    models: dict[str, list[int]] = {}
    version_bytes: dict[str, dict[int, int]] = {}
    version_towers: dict[str, dict[int, int]] = {}
    version_labels: dict[str, dict[str, int]] = {}
    for name in (label("models") or "").split(","):
        listed = (label(f"model.{name}.versions") or "").split(",")
        if any(not _NUMBER.fullmatch(v) for v in listed if v):
            raise UsageError(f"{reference}'s label {LABEL_PREFIX}.model.{name}.versions is not a list of versions")
        versions = [int(v) for v in listed if v]
        if not versions:
            raise UsageError(f"{reference}'s labels name model {name!r} but no versions of it: rebuild the image")
        models[name] = versions
        sizes = {v: label(f"model.{name}.{v}.bytes") for v in versions}
        missing = [str(v) for v, size in sizes.items() if size is None]
        if missing:
            raise UsageError(
                f"{reference} does not say how large model {name} version {', '.join(missing)} is "
                f"(no {LABEL_PREFIX}.model.{name}.N.bytes label: built by an older tfpack): rebuild it with this one"
            )
        version_bytes[name] = {
            v: _bounded(reference, f"model.{name}.{v}.bytes", size, MAX_VERSION_BYTES)
            for v, size in sizes.items()
            if size is not None
        }
        towers = {v: label(f"model.{name}.{v}.towers") for v in versions}
        version_towers[name] = {
            v: _bounded(reference, f"model.{name}.{v}.towers", t, MAX_TOWERS)
            for v, t in towers.items()
            if t is not None
        }
        prefix = f"{LABEL_PREFIX}.model.{name}.label."
        version_labels[name] = {
            key[len(prefix) :]: int(value)
            for key, value in sorted(labels.items())
            if key.startswith(prefix) and _NUMBER.fullmatch(value)
        }
    uid, gid = _numeric_user(reference, str(config.get("User") or ""))
    return ImageFacts(
        reference=reference,
        pinned=pinned,
        models=models,
        version_labels={name: found for name, found in version_labels.items() if found},
        version_bytes=version_bytes,
        version_towers={name: found for name, found in version_towers.items() if found},
        model_server=label("model-server") or "",
        monitoring_path=label("monitoring"),
        uid=uid,
        gid=gid,
        models_from_volume=label("models-from-volume") == "true",
        base=label("base") or "",
    )


def _bounded(reference: str, key: str, value: str, limit: int) -> int:
    """A numeric label's value, UsageError when it is no number or past ``limit`` (a broken or hostile image)."""
    number = int(value) if _NUMBER.fullmatch(value) else limit + 1
    if number > limit:
        raise UsageError(f"{reference}'s label {LABEL_PREFIX}.{key}={value[:24]} is out of range (at most {limit})")
    return number


def _numeric_user(reference: str, user: str) -> tuple[int, int]:
    """(uid, gid) of the image's USER; Kubernetes' runAsNonRoot can check only a numeric uid."""
    uid, _, gid = user.partition(":")
    valid = _NUMBER.fullmatch(uid) and (not gid or _NUMBER.fullmatch(gid))
    if not valid or not 0 < int(uid) <= MAX_ID or int(gid or uid) > MAX_ID:
        raise UsageError(
            f"{reference} runs as user {user or 'root'!r}: the pod runs as non-root and needs the image's numeric "
            "uid:gid (rebuild it with 'tfpack build')"
        )
    return int(uid), int(gid or uid)


def read_image_facts(
    reference: str,
    *,
    allow_tag: bool = False,
    flag: str = "--image",
    client: docker.DockerClient | None = None,
    progress: Progress = SILENT,
) -> ImageFacts:
    """Resolve ``reference`` (see the module docstring) and read the image's facts.

    Args:
        reference: The image the manifests deploy.
        allow_tag: Use a tag as it is instead of resolving it to a digest.
        flag: The option the reference came from, for messages.
        client: The Docker engine; by default the local one.
        progress: Receives a line per step that talks to a registry.

    Raises:
        UsageError: A bad reference, no engine, a tag that cannot be resolved (and was not
            allowed), an image that cannot be pulled, or one ``tfpack build`` did not make.
    """
    check_image_reference(reference, flag)
    engine = client if client is not None else docker_client()
    if "@" in reference:
        return facts_from_config(reference, _held_or_pulled(engine, reference, flag, progress)["Config"], pinned=True)
    if allow_tag:
        return facts_from_config(reference, _held_or_pulled(engine, reference, flag, progress)["Config"], pinned=False)
    pinned = _digest_reference(engine, reference, flag, progress)
    return facts_from_config(pinned, _held_or_pulled(engine, pinned, flag, progress)["Config"], pinned=True)


def _digest_reference(engine: docker.DockerClient, reference: str, flag: str, progress: Progress) -> str:
    """``NAME@sha256:...`` for the tag ``reference`` (see the module docstring)."""
    repository, _ = docker.utils.parse_repository_tag(reference)
    try:
        held = inspect_image(engine, reference)
    except ImageNotFound:
        held = None
    except TfpackError as exc:
        raise UsageError(f"cannot inspect {flag} {reference}: {exc}") from None
    if held is not None:
        for repo_digest in held.get("RepoDigests") or []:
            name, _, digest = repo_digest.partition("@")
            if _same_repository(name, repository) and _DIGEST.fullmatch(digest):
                return f"{repository}@{digest}"
        raise UsageError(
            f"{flag} {reference} was never pushed from this Docker engine (it has no registry digest), so a "
            "cluster cannot pull exactly this image: push it ('tfpack build --push') or pass --allow-tag"
        )
    progress.step(f"resolving {reference} to a digest through its registry")
    try:
        digest = engine.images.get_registry_data(reference).id
    except (docker.errors.DockerException, requests.RequestException) as exc:
        reason = docker_reason(exc) if isinstance(exc, docker.errors.APIError) else first_line(exc)
        raise UsageError(
            f"cannot resolve {flag} {reference} to a digest: this Docker engine does not hold it and its registry "
            f"says: {reason} (push it, check the name and 'docker login', or pass --allow-tag)"
        ) from None
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise UsageError(f"the registry of {flag} {reference} answered no digest for it: pass --allow-tag")
    return f"{repository}@{digest}"


def _same_repository(name: str, repository: str) -> bool:
    """Docker writes Docker Hub repositories without their docker.io/library/ prefix."""

    def normal(value: str) -> str:
        for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/", "index.docker.io/"):
            if value.startswith(prefix):
                value = value[len(prefix) :]
        return value if "/" in value else f"library/{value}"

    return normal(name) == normal(repository)


def _held_or_pulled(engine: docker.DockerClient, reference: str, flag: str, progress: Progress) -> dict[str, Any]:
    """``docker image inspect`` of ``reference``, pulling it first when the engine does not hold it."""
    try:
        return inspect_image(engine, reference)
    except ImageNotFound:
        pass
    except TfpackError as exc:
        raise UsageError(f"cannot inspect {flag} {reference}: {exc}") from None
    progress.step(f"pulling {reference} to read its labels")
    try:
        engine.images.pull(reference)
        return inspect_image(engine, reference)
    except (docker.errors.DockerException, requests.RequestException, TfpackError) as exc:
        reason = docker_reason(exc) if isinstance(exc, docker.errors.APIError) else first_line(exc)
        raise UsageError(
            f"cannot read {flag} {reference}: this Docker engine does not hold it and pulling it failed: {reason} "
            "(check the name and 'docker login')"
        ) from None
