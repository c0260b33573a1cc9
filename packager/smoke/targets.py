"""What a smoke test runs against: a server tfpack starts from an image, or one already running.

Every target has the same lifecycle, which run_smoke drives through ``running()``:

    start ──▶ endpoints ──▶ expectations ──▶ logs ──▶ stop
    (create,   (gRPC and     (per version     (under     (remove the container: on every path,
     start)     REST          AVAILABLE:       failed     a failed check, an error, Ctrl-C; a
                HOST:PORT)    goldens and      checks)    start that fails part-way cleans up
                              signature)                  after itself)

    StartedImage    runs IMAGE in a container on free loopback ports (packager.docker_engine)
                    and reads the goldens from inside it
    RunningServer   a HOST:PORT the caller started, checked against a local version dir
"""

from __future__ import annotations

import io
import re
import tarfile
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from packager import docker_engine, layout
from packager.docker_engine import DockerEngineError, ImageNotFound, PathNotFound
from packager.errors import TfpackError, UsageError
from packager.progress import Progress
from packager.smoke.checks import Expectation

LOG_TAIL_LINES = 40
# Lets a test (or an operator) find every container a smoke test started.
CONTAINER_LABEL = "org.tfpack.smoke"


@dataclass(frozen=True)
class Endpoints:
    """Where a started target answers.

    Attributes:
        grpc: The gRPC HOST:PORT.
        rest: The REST HOST:PORT; None when only gRPC is to be checked.
    """

    grpc: str
    rest: str | None


class SmokeTarget(ABC):
    """A model server to smoke-test, and what its answers must match (lifecycle: module doc).

    Attributes:
        image: The image the target runs, for the report; None when tfpack did not start it.
    """

    image: str | None = None

    @contextmanager
    def running(self, progress: Progress) -> Iterator[Endpoints]:
        """Start the target, yield its endpoints, and stop it however the block ends."""
        endpoints = self.start(progress)
        try:
            yield endpoints
        except BaseException:
            # The block's own failure (a failed check, Ctrl-C) is what the caller must see: a
            # clean-up that fails as well is reported beside it, never instead of it.
            try:
                self.stop(progress)
            except TfpackError as cleanup_error:
                progress.step(f"clean-up failed as well: {cleanup_error}")
            raise
        self.stop(progress)

    @abstractmethod
    def start(self, progress: Progress) -> Endpoints:
        """Make the server answer (or check that the given one can be asked); its endpoints.

        A start that fails part-way undoes what it did before raising.

        Raises:
            UsageError: The target cannot be started or its expectations cannot be read.
        """

    @abstractmethod
    def pinned_version(self) -> int | None:
        """The version to check, or None for the highest one AVAILABLE (after start)."""

    @abstractmethod
    def expectation(self, model: str, version: int) -> Expectation:
        """What ``version`` of ``model`` must answer.

        Raises:
            UsageError: The target holds no tfpack goldens for that version.
        """

    def exit_status(self) -> str | None:
        """None while the server runs (or when it cannot be told); else how it ended."""
        return None

    def failure_context(self) -> str | None:
        """What to put under failed checks (the server's last log lines), if anything."""
        return None

    def stop(self, progress: Progress) -> None:
        """Undo start; safe to call more than once."""
        del progress


# --- a server tfpack starts from an image ------------------------------------------------------


class StartedImage(SmokeTarget):
    """IMAGE run in a container, its gRPC and REST ports published to free ports on 127.0.0.1.

    The goldens and provenance come from the image itself, from /models/MODEL/N/assets.extra
    where N is the highest version the server reports AVAILABLE (with TF Serving's default
    "latest" policy, the highest version in the image). Reading N from the server rather than
    listing the image's model dir avoids copying the whole model out of the container.
    """

    def __init__(self, image: str, model: str) -> None:
        """Describe the target; nothing starts before ``start``.

        Args:
            image: An image reference the local Docker engine has (tfpack build's tag).
            model: The model the image must serve: /models/MODEL must exist in it.
        """
        self.image = image
        self._image = image
        self._model = model
        self._container: docker_engine.Container | None = None

    def start(self, progress: Progress) -> Endpoints:
        client = docker_engine.docker_client()
        progress.step(f"creating a container from {self._image}")
        try:
            self._container = docker_engine.create_container(
                client,
                self._image,
                loopback_ports=(layout.GRPC_PORT, layout.REST_PORT),
                labels={CONTAINER_LABEL: self._model},
            )
        except ImageNotFound:
            raise UsageError(
                f"image {self._image} is not in the local Docker engine: build it with 'tfpack build' or pull it first"
            ) from None
        except DockerEngineError as exc:
            raise UsageError(f"cannot create a container from {self._image}: {exc}") from None
        try:
            return self._start(self._container, progress)
        except BaseException:  # Ctrl-C included: the container must not outlive the run
            self.stop(progress)
            raise

    def _start(self, container: docker_engine.Container, progress: Progress) -> Endpoints:
        model_dir = f"{layout.MODELS_ROOT}/{self._model}"
        try:
            # Asked before starting, to fail fast and without server logs to read.
            has_model = docker_engine.path_exists(container, model_dir)
            if has_model:
                progress.step(f"starting {self._image}")
                docker_engine.start_container(container)
        except DockerEngineError as exc:
            raise UsageError(f"cannot start {self._image}: {exc}") from None
        if not has_model:
            raise UsageError(
                f"image {self._image} has no {model_dir}: check --model, or build the image from "
                f"the model's base path with 'tfpack build'"
            )
        return Endpoints(
            grpc=f"127.0.0.1:{docker_engine.published_port(container, layout.GRPC_PORT)}",
            rest=f"127.0.0.1:{docker_engine.published_port(container, layout.REST_PORT)}",
        )

    def pinned_version(self) -> int | None:
        return None

    def expectation(self, model: str, version: int) -> Expectation:
        """Copy assets.extra of /models/MODEL/VERSION out of the container and read it."""
        container = self._started()
        source = f"{layout.MODELS_ROOT}/{model}/{version}/{layout.ASSETS_EXTRA}"
        try:
            archive = docker_engine.get_archive(container, source)
        except PathNotFound:
            raise UsageError(
                f"image {self._image} has no {source}: build it from a version dir written by 'tfpack convert'"
            ) from None
        wanted = {layout.GOLDENS_FILE, layout.PROVENANCE_FILE}
        with tempfile.TemporaryDirectory(prefix="tfpack-smoke-") as scratch:
            version_dir = Path(scratch) / str(version)
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                for member in tar.getmembers():
                    # Extract only the two known regular files, by name: never trust archive paths.
                    extracted = tar.extractfile(member) if member.isfile() and member.name in wanted else None
                    if extracted is not None:
                        target = version_dir / member.name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(extracted.read())
            missing = [name for name in sorted(wanted) if not (version_dir / name).is_file()]
            if missing:
                where = ", ".join(f"{layout.MODELS_ROOT}/{model}/{version}/{name}" for name in missing)
                raise UsageError(
                    f"image {self._image} lacks {where}: build it from a version dir written by 'tfpack convert'"
                )
            return Expectation.from_version_dir(version_dir)

    def exit_status(self) -> str | None:
        """None while the container runs; else its exit code and the entrypoint's last line."""
        code = docker_engine.exit_code(self._started())
        if code is None:
            return None
        # The entrypoint's last line says why (e.g. which file failed verification).
        last_line = self._log_tail().splitlines()[-1:]
        return f"the container exited with code {code}" + (f": {last_line[0]}" if last_line else "")

    def failure_context(self) -> str | None:
        return f"--- last {LOG_TAIL_LINES} container log lines ---\n{self._log_tail()}"

    def stop(self, progress: Progress) -> None:
        if self._container is None:
            return
        progress.step("removing the container")
        container, self._container = self._container, None
        docker_engine.remove_container(container)

    def _started(self) -> docker_engine.Container:
        if self._container is None:
            raise RuntimeError(f"{self._image} is not started")
        return self._container

    def _log_tail(self) -> str:
        try:
            logs = docker_engine.log_tail(self._started(), LOG_TAIL_LINES).rstrip()
        except DockerEngineError as exc:
            return f"(container logs unavailable: {exc})"
        return logs or "(the container logged nothing)"


# --- a server already running ------------------------------------------------------------------


class RunningServer(SmokeTarget):
    """A model server the caller runs, checked against a local version dir DIR/NAME/N."""

    def __init__(self, target: str, version_dir: Path, *, rest_target: str | None = None) -> None:
        """Describe the target; the arguments are checked by ``start``.

        Args:
            target: The server's gRPC address, HOST:PORT.
            version_dir: The version dir the server should be serving as version N; its goldens
                and provenance are what the server's answers are checked against.
            rest_target: The server's REST address, HOST:PORT; the REST checks run only with it.
        """
        self._target = target
        self._rest_target = rest_target
        self._version_dir = version_dir
        self._expectation: Expectation | None = None

    def start(self, progress: Progress) -> Endpoints:
        _check_address(self._target, "--target")
        if self._rest_target is not None:
            _check_address(self._rest_target, "--rest-target")
        if not layout.is_version_name(self._version_dir.name):
            raise UsageError(
                f"{self._version_dir} is not a version dir: its name must be the version number (DIR/NAME/N)"
            )
        # Read before any request, so a version dir without goldens is a usage error up front.
        self._expectation = Expectation.from_version_dir(self._version_dir)
        return Endpoints(grpc=self._target, rest=self._rest_target)

    def pinned_version(self) -> int | None:
        return int(self._version_dir.name)

    def expectation(self, model: str, version: int) -> Expectation:
        if self._expectation is None:
            raise RuntimeError(f"{self._target} is not started")
        return self._expectation


def _check_address(address: str, flag: str) -> None:
    host, sep, port = address.rpartition(":")
    # ASCII digits only: "²" passes str.isdigit() and then fails int().
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} {address!r} is not HOST:PORT (for example localhost:{layout.GRPC_PORT})")
