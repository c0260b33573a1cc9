"""The low-level Docker layer under the build (packager.image) and smoke (packager.smoke) stages.

What the stages ask of the engine, each as one typed function over docker-py's API:

    docker_client()            a connection that has answered a ping
    build_from_context()       stream a legacy-builder build, progress per step; the image id
    inspect_image() / image_history() / image_layer_lists()
                               what the engine says about images it holds
    load_image()               stream a ``docker load`` archive; the references it loaded
    push_tag()                 stream a push; the repository digest
    create_container() ─▶ path_exists() / start_container() ─▶ published_port()
        ─▶ exit_code() / log_tail() / get_archive() ─▶ remove_container()

As docker-py layers its models over its API client, the stages frame these in their own words:
a container function raises DockerEngineError (or a subclass naming what was missing) with the
engine's one-line reason, and the caller says what it was doing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.utils
import requests
from docker.models.containers import Container

from packager.errors import ToolError, UsageError, first_line, shorten
from packager.progress import Progress

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_NON_ZERO_EXIT = re.compile(r"returned a non-zero code: (\d+)")
# A container's status once its process has ended (docker inspect's State.Status).
_ENDED = ("exited", "dead")


class DockerEngineError(ToolError):
    """The engine refused or failed a container request; the message is its one-line reason."""


class ImageNotFound(DockerEngineError):
    """The image is not in the local engine."""


class PathNotFound(DockerEngineError):
    """The path does not exist inside the container."""


def docker_client() -> docker.DockerClient:
    """A client of the local Docker engine that has answered a ping; UsageError when none does."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise UsageError(
            f"cannot reach the Docker engine ({first_line(exc)}): start dockerd (make setup) or set DOCKER_HOST"
        ) from None
    return client


def docker_reason(exc: docker.errors.APIError) -> str:
    """The engine's own explanation, without the SDK's request URL around it."""
    return first_line(Exception(exc.explanation)) if exc.explanation else first_line(exc)


# --- images: build and push streams -----------------------------------------------------------


# What an engine request (build, push, containers) can raise besides the SDK's own errors: the engine's HTTP connection
# breaking mid-request surfaces as a requests error.
_ENGINE_ERRORS = (docker.errors.DockerException, requests.RequestException)


def build_from_context(
    client: docker.DockerClient,
    context: Path,
    *,
    tag: str,
    buildargs: dict[str, str],
    labels: dict[str, str],
    progress: Progress,
    building_for: str | None = None,
) -> str:
    """Build ``context`` with the legacy builder the SDK drives, one progress line per step.

    Args:
        client: The engine to build on.
        context: A directory holding the Dockerfile and everything it copies.
        tag: The reference to tag the image with.
        buildargs: The Dockerfile's ARG values; ``BASE`` names the base image in progress lines.
        labels: Labels to set on the image.
        progress: Receives the build's ``Step N/M`` lines.
        building_for: The image the user asked for, when ``tag`` is an intermediate one (a
            cached base): messages name it, since that is what the user knows.

    Returns:
        The built image's id.

    Raises:
        ToolError: A build step failed: the message names the step, its last output line and
            the exit code (the machine's setup, not tfpack, needs fixing).
        UsageError: The engine refused to start the build (a bad tag, an unreadable context).
    """
    subject = building_for or tag
    # Where the build is not the user's image itself, a failure says which image it was.
    building = [] if building_for is None else [f"while building its base {tag}"]
    building_note = "".join(f" ({note})" for note in building)
    progress.step(f"building {tag} on {buildargs['BASE']}")
    step, last_output = "the first step", ""
    try:
        for chunk in client.api.build(
            path=str(context),
            tag=tag,
            buildargs=buildargs,
            labels=labels,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        ):
            if "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message", chunk["error"])
                exit_status = _NON_ZERO_EXIT.search(detail)
                notes = [f"exit code {exit_status.group(1)}"] if exit_status else []
                notes += building
                raise ToolError(
                    f"docker build of {subject} failed at {shorten(step, 80)}: "
                    + shorten(last_output or first_line(Exception(detail)), 300)
                    + (f" ({'; '.join(notes)})" if notes else "")
                )
            for line in _ANSI_ESCAPE.sub("", chunk.get("stream", "")).splitlines():
                line = line.strip()
                if line.startswith("Step "):
                    step, last_output = line, ""
                    progress.step(line)
                elif line and not line.startswith(("--->", "Removing intermediate container")):
                    last_output = line
        image_id: str = client.images.get(tag).id
    except docker.errors.APIError as exc:
        raise UsageError(f"docker refused to build {subject!r}: {docker_reason(exc)}{building_note}") from None
    except _ENGINE_ERRORS as exc:  # the connection dropped or timed out mid-build
        raise DockerEngineError(
            f"the Docker engine failed while building {subject}: {first_line(exc)}{building_note}"
        ) from None
    return image_id


def inspect_image(client: docker.DockerClient, reference: str) -> dict[str, Any]:
    """``docker image inspect REFERENCE``: the engine's JSON description of an image it holds.

    Raises:
        ImageNotFound: The engine does not hold it.
        DockerEngineError: Any other refusal.
    """
    try:
        attrs: dict[str, Any] = client.api.inspect_image(reference)
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFound(first_line(exc)) from None
    except _ENGINE_ERRORS as exc:
        raise DockerEngineError(f"cannot inspect {reference}: {first_line(exc)}") from None
    return attrs


def image_history(client: docker.DockerClient, reference: str) -> list[dict[str, Any]]:
    """``docker history REFERENCE``: one entry per step that made the image, newest first.

    Raises:
        ImageNotFound: The engine does not hold it.
        DockerEngineError: Any other refusal.
    """
    try:
        history: list[dict[str, Any]] = client.api.history(reference)
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFound(first_line(exc)) from None
    except _ENGINE_ERRORS as exc:
        raise DockerEngineError(f"cannot read the history of {reference}: {first_line(exc)}") from None
    return history


def image_layer_lists(client: docker.DockerClient, *, label: str) -> list[list[str]]:
    """The layers (diff_ids, bottom first) of every image the engine holds with ``label``
    (``KEY`` or ``KEY=VALUE``).

    Raises:
        DockerEngineError: The engine could not list or inspect them.
    """
    try:
        ids = {image["Id"] for image in client.api.images(filters={"label": label})}
        found = []
        for image_id in sorted(ids):
            try:
                found.append(list(client.api.inspect_image(image_id)["RootFS"]["Layers"]))
            except docker.errors.ImageNotFound:
                continue  # removed since it was listed
    except _ENGINE_ERRORS as exc:
        raise DockerEngineError(f"cannot list the engine's images: {first_line(exc)}") from None
    return found


# `docker load` reads the whole archive before it answers; a model of gigabytes takes a while.
_LOAD_TIMEOUT_S = 1800


def load_image(client: docker.DockerClient, archive: Iterable[bytes]) -> list[str]:
    """``docker load`` from a stream of tar bytes, sent as it is produced.

    Args:
        client: The engine to load into.
        archive: The archive in pieces (manifest.json, config, layer tars).

    Returns:
        The references the engine reports loading (``NAME:TAG``, or ``sha256:...`` when untagged).

    Raises:
        DockerEngineError: The engine refused the archive (the message is its reason) or failed.
    """
    api = client.api
    try:
        response = api.post(
            f"{api.base_url}/v{api.api_version}/images/load",
            params={"quiet": "1"},
            data=iter(archive),
            headers={"Content-Type": "application/x-tar"},
            stream=True,
            timeout=_LOAD_TIMEOUT_S,
        )
        with response:
            if response.status_code != 200:
                raise DockerEngineError(_load_error(response.text))
            lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    except ValueError as exc:  # a reply that is not the engine's JSON lines
        raise DockerEngineError(f"docker load answered something unexpected: {first_line(exc)}") from None
    except _ENGINE_ERRORS as exc:
        raise DockerEngineError(f"docker load failed: {first_line(exc)}") from None
    errors = [line.get("errorDetail", {}).get("message") or line["error"] for line in lines if "error" in line]
    if errors:
        raise DockerEngineError(f"docker load failed: {first_line(Exception(errors[0]))}")
    loaded = []
    for line in lines:
        for text in str(line.get("stream", "")).splitlines():
            for prefix in ("Loaded image: ", "Loaded image ID: "):
                if text.startswith(prefix):
                    loaded.append(text.removeprefix(prefix).strip())
    return loaded


def _load_error(body: str) -> str:
    try:
        message = str(json.loads(body).get("message", body))
    except (ValueError, AttributeError):
        message = body
    return f"docker load failed: {first_line(Exception(message))}"


def push_tag(client: docker.DockerClient, tag: str, progress: Progress) -> str:
    """Push ``tag`` to its registry.

    Args:
        client: The engine holding the image.
        tag: The image reference to push (``latest`` when it names no tag).
        progress: Receives one line for the push.

    Returns:
        The pushed image's repository digest, ``NAME@sha256:...``.

    Raises:
        UsageError: The push failed or reported no digest (the message says to check the
            registry and ``docker login``).
    """
    repository, image_tag = docker.utils.parse_repository_tag(tag)
    progress.step(f"pushing {repository}:{image_tag or 'latest'}")
    digest = None
    try:
        for chunk in client.images.push(repository, tag=image_tag or "latest", stream=True, decode=True):
            if "error" in chunk:
                raise UsageError(
                    f"push of {tag} failed: {first_line(Exception(chunk['error']))} "
                    "(check that the registry is reachable and 'docker login' to it)"
                )
            digest = chunk.get("aux", {}).get("Digest", digest)
    except docker.errors.APIError as exc:
        raise UsageError(f"push of {tag} failed: {docker_reason(exc)}") from None
    except _ENGINE_ERRORS as exc:  # the connection dropped or timed out mid-push
        raise DockerEngineError(f"the Docker engine failed while pushing {tag}: {first_line(exc)}") from None
    if digest is None:
        raise UsageError(f"push of {tag} reported no digest: check the registry")
    return f"{repository}@{digest}"


# --- containers --------------------------------------------------------------------------------


def create_container(
    client: docker.DockerClient,
    image: str,
    *,
    loopback_ports: Sequence[int],
    labels: Mapping[str, str],
    read_only_binds: Mapping[Path, str] | None = None,
) -> Container:
    """Create (not start) a container of ``image``.

    Args:
        client: The engine to create it on.
        image: An image reference the engine has.
        loopback_ports: Container TCP ports to publish, each to a free port on 127.0.0.1 (see
            published_port once started).
        labels: Labels that find the container again (cleanup, tests).
        read_only_binds: Host directories to mount read-only, by the container path they appear at.

    Returns:
        The created container.

    Raises:
        ImageNotFound: The engine does not have the image.
        DockerEngineError: Any other refusal.
    """
    try:
        return client.containers.create(
            image,
            detach=True,
            ports={f"{port}/tcp": ("127.0.0.1", None) for port in loopback_ports},
            labels=dict(labels),
            volumes={str(host): {"bind": path, "mode": "ro"} for host, path in (read_only_binds or {}).items()},
        )
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFound(first_line(exc)) from None
    except _ENGINE_ERRORS as exc:
        raise DockerEngineError(first_line(exc)) from None


def path_exists(container: Container, path: str) -> bool:
    """Whether ``path`` exists inside the container, created or running, without copying it.

    Raises:
        DockerEngineError: The engine could not answer.
    """
    # HEAD /containers/{id}/archive stats a path; docker-py's get_archive would start streaming
    # the whole tree (a model, for /models/NAME).
    api = container.client.api
    try:
        response = api.head(
            f"{api.base_url}/v{api.api_version}/containers/{container.id}/archive",
            params={"path": path},
        )
        if response.status_code == 404:
            return False
        response.raise_for_status()
    except _ENGINE_ERRORS as exc:
        raise DockerEngineError(first_line(exc)) from None
    return True


def start_container(container: Container) -> None:
    """Start a created container and refresh what the engine reports about it (its ports).

    Raises:
        DockerEngineError: The engine could not start it.
    """
    try:
        container.start()
        container.reload()
    except _ENGINE_ERRORS as exc:
        raise DockerEngineError(first_line(exc)) from None


def published_port(container: Container, port: int) -> int:
    """The host port a started container's TCP ``port`` is published on.

    Raises:
        DockerEngineError: The engine published no host port for it.
    """
    bindings = container.attrs["NetworkSettings"]["Ports"].get(f"{port}/tcp") or []
    if not bindings:
        raise DockerEngineError(f"Docker published no host port for the container's port {port}")
    return int(bindings[0]["HostPort"])


def exit_code(container: Container) -> int | None:
    """None while the container runs (or has not started); its exit code once it has ended.

    Raises:
        DockerEngineError: The engine could not say (the container is gone, say).
    """
    try:
        container.reload()
    except _ENGINE_ERRORS as exc:
        raise DockerEngineError(first_line(exc)) from None
    if container.status not in _ENDED:
        return None
    code: int = container.attrs["State"]["ExitCode"]
    return code


def log_tail(container: Container, lines: int) -> str:
    """The container's last ``lines`` lines of output (stdout and stderr), as text.

    Raises:
        DockerEngineError: The engine could not return them.
    """
    try:
        logs: bytes = container.logs(tail=lines)
    except _ENGINE_ERRORS as exc:
        raise DockerEngineError(first_line(exc)) from None
    return logs.decode("utf-8", errors="replace")


def get_archive(container: Container, path: str) -> bytes:
    """``path`` inside the container as an uncompressed tar archive (docker cp's form).

    Raises:
        PathNotFound: Nothing exists at ``path``.
        DockerEngineError: Any other refusal.
    """
    try:
        stream, _ = container.get_archive(path)
        return b"".join(stream)
    except docker.errors.NotFound as exc:
        raise PathNotFound(first_line(exc)) from None
    except _ENGINE_ERRORS as exc:
        raise DockerEngineError(first_line(exc)) from None


def remove_container(container: Container) -> None:
    """Remove the container and its anonymous volumes, running or not; already gone is fine.

    Raises:
        DockerEngineError: The engine refused.
    """
    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    except _ENGINE_ERRORS as exc:
        raise DockerEngineError(first_line(exc)) from None


def remove_labelled_containers(client: docker.DockerClient, label: str, value: str) -> None:
    """Remove every container labelled ``label=value``, running or not.

    For a create that was interrupted (Ctrl-C, SIGTERM) after the engine made the container but
    before its id reached the caller: the label is the only handle left.

    Raises:
        DockerEngineError: The engine refused.
    """
    try:
        found = client.containers.list(all=True, filters={"label": f"{label}={value}"})
    except _ENGINE_ERRORS as exc:
        raise DockerEngineError(first_line(exc)) from None
    for container in found:
        remove_container(container)
