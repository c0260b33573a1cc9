"""What a smoke test runs against: a server tfpack starts from an image, or one already running.

Every target has the same lifecycle, which run_smoke drives through ``running()``:

    start ──▶ endpoints, plan ──▶ expectations ──▶ logs ──▶ stop
    (create,   (gRPC and REST     (per version     (under     (remove the container: on every path,
     start)     HOST:PORT; which   AVAILABLE:       failed     a failed check, an error, Ctrl-C; a
                models, versions   contract and     checks)    start that fails part-way cleans up
                and labels)        goldens)                    after itself)

    StartedImage    runs IMAGE in a container on free loopback ports (packager.docker_engine);
                    the plan is the image's own /etc/tfpack (serving.json, models.config) and the
                    expectations are read from inside it
    RunningServer   a HOST:PORT the caller started, checked against a local version dir
                    (DIR/NAME/N) or a local models dir (DIR/NAME/N for every NAME and N)
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tarfile
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from packager import docker_engine, layout
from packager.docker_engine import DockerEngineError, ImageNotFound, PathNotFound
from packager.errors import TfpackError, UsageError
from packager.progress import Progress
from packager.smoke.expectation import MODEL_FILES, Expectation
from packager.tf_runtime import tensorflow

tensorflow()  # imported quietly, before tensorflow_serving imports it noisily
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

LOG_TAIL_LINES = 40
# Lets a test (or an operator) find every container a smoke test started.
CONTAINER_LABEL = "org.tfpack.smoke"
# One smoke run's containers: the handle on a container whose create was interrupted.
RUN_LABEL = "org.tfpack.smoke.run"
# What tfpack build bakes into an image (serving.entrypoint reads the same files).
SERVING_FILE = f"{layout.IMAGE_ETC_DIR}/serving.json"
MODEL_CONFIG_FILE = f"{layout.IMAGE_ETC_DIR}/models.config"


@dataclass(frozen=True)
class Endpoints:
    """Where a started target answers.

    Attributes:
        grpc: The gRPC HOST:PORT.
        rest: The REST HOST:PORT; None when only gRPC is to be checked.
    """

    grpc: str
    rest: str | None


@dataclass(frozen=True)
class ServingPlan:
    """What a target serves, so what to check.

    Attributes:
        models: Each model to check, and the versions that must all become AVAILABLE; None: the
            highest version the server makes AVAILABLE (what the server serves is not known).
        labels: Per model, each version label and the version it must resolve to.
    """

    models: dict[str, tuple[int, ...] | None]
    labels: dict[str, dict[str, int]] = field(default_factory=dict)


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
    def plan(self) -> ServingPlan:
        """The models, versions and labels to check (after start)."""

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

    The plan is the image's own: the models and versions its /etc/tfpack/models.config serves
    (the server's config, so exactly what it loads), the labels of /etc/tfpack/serving.json
    (``labels``: model -> label -> version; else the config's version_labels). An image without
    them (not built by tfpack) is checked for --model's highest AVAILABLE version. Each version's
    contract and goldens are copied out of /models/MODEL/N (the model it serves, model.tflite or
    saved_model.pb, and assets.extra).
    """

    def __init__(self, image: str, model: str | None, models_dir: Path | None = None) -> None:
        """Describe the target; nothing starts before ``start``.

        Args:
            image: An image reference the local Docker engine has (tfpack build's tag).
            model: The model to check (/models/MODEL must exist in the image); None: every
                model the image serves.
            models_dir: For an image built with --models-from-volume (and only for one): the
                models root mounted read-only at /models, where its version dirs and goldens are.
        """
        self.image = image
        self._image = image
        self._model = model
        self._models_dir = models_dir.resolve() if models_dir is not None else None
        self._container: docker_engine.Container | None = None
        self._plan: ServingPlan | None = None

    def start(self, progress: Progress) -> Endpoints:
        if self._model is not None:
            layout.check_model_name(self._model, "--model")
        client = docker_engine.docker_client()
        progress.step(f"creating a container from {self._image}")
        run = uuid.uuid4().hex
        try:
            self._container = docker_engine.create_container(
                client,
                self._image,
                loopback_ports=(layout.GRPC_PORT, layout.REST_PORT),
                labels={CONTAINER_LABEL: self._model or "*", RUN_LABEL: run},
                read_only_binds={self._models_dir: layout.MODELS_ROOT} if self._models_dir else None,
            )
        except BaseException as interrupted:
            # Interrupted after the engine made the container but before its id came back: it
            # is found by this run's label and removed, Ctrl-C and SIGTERM included.
            with contextlib.suppress(DockerEngineError):
                docker_engine.remove_labelled_containers(client, RUN_LABEL, run)
            if isinstance(interrupted, ImageNotFound):
                raise UsageError(
                    f"image {self._image} is not in the local Docker engine: build it with 'tfpack build' or pull it first"
                ) from None
            if isinstance(interrupted, DockerEngineError):
                raise UsageError(f"cannot create a container from {self._image}: {interrupted}") from None
            raise
        try:
            return self._start(self._container, progress)
        except BaseException:  # Ctrl-C included: the container must not outlive the run
            self.stop(progress)
            raise

    def _start(self, container: docker_engine.Container, progress: Progress) -> Endpoints:
        try:
            # Asked before starting, to fail fast and without server logs to read.
            self._plan = self._read_plan(container)
            progress.step(f"starting {self._image}")
            docker_engine.start_container(container)
        except DockerEngineError as exc:
            raise UsageError(f"cannot start {self._image}: {exc}") from None
        return Endpoints(
            grpc=f"127.0.0.1:{docker_engine.published_port(container, layout.GRPC_PORT)}",
            rest=f"127.0.0.1:{docker_engine.published_port(container, layout.REST_PORT)}",
        )

    def _read_plan(self, container: docker_engine.Container) -> ServingPlan:
        baked = _read_json(_file_in_container(container, SERVING_FILE), SERVING_FILE)
        from_volume = baked.get("models_from_volume") is True
        if from_volume and self._models_dir is None:
            raise UsageError(
                f"image {self._image} holds no model: it serves them from a read-only volume at "
                f"{layout.MODELS_ROOT} (built with --models-from-volume): give --models-dir DIR, the models root "
                "to mount there"
            )
        if self._models_dir is not None and not from_volume:
            raise UsageError(
                f"image {self._image} serves the models baked into it: --models-dir goes with --target, or with "
                "an image built with --models-from-volume"
            )
        if self._model is not None:
            model_dir = f"{layout.MODELS_ROOT}/{self._model}"
            if self._models_dir is not None and not (self._models_dir / self._model).is_dir():
                raise UsageError(f"--models-dir {self._models_dir} has no {self._model}/: check --model and the dir")
            if self._models_dir is None and not docker_engine.path_exists(container, model_dir):
                raise UsageError(
                    f"image {self._image} has no {model_dir}: check --model, or build the image from "
                    f"the model's base path with 'tfpack build'"
                )
        config_text = _file_in_container(container, MODEL_CONFIG_FILE)
        config = model_server_config_pb2.ModelServerConfig()
        if config_text is not None:
            try:
                text_format.Parse(config_text.decode(), config)
            except (text_format.ParseError, UnicodeDecodeError) as exc:
                raise UsageError(f"image {self._image} has an unreadable {MODEL_CONFIG_FILE}: {exc}") from None
        served = served_versions(config, _baked_versions(baked))
        labels = _baked_labels(baked, config)
        if self._model is not None:
            return ServingPlan({self._model: served.get(self._model)}, {self._model: labels.get(self._model, {})})
        if not served:
            raise UsageError(
                f"image {self._image} has no {SERVING_FILE} or {MODEL_CONFIG_FILE} naming its models: give --model NAME"
            )
        return ServingPlan(dict(served), {name: labels.get(name, {}) for name in served})

    def plan(self) -> ServingPlan:
        if self._plan is None:
            raise RuntimeError(f"{self._image} is not started")
        return self._plan

    def expectation(self, model: str, version: int) -> Expectation:
        """Copy the served model file and assets.extra of /models/MODEL/VERSION out of the container and read them.

        The model file is model.tflite when the version holds one (the image's server then runs
        with --prefer_tflite_model and serves it), else saved_model.pb.

        With a models dir mounted, they are read from it: the same files, verified by the entrypoint.
        """
        container = self._started()
        if self._models_dir is not None:
            return Expectation.from_version_dir(self._models_dir / model / str(version))
        version_path = f"{layout.MODELS_ROOT}/{model}/{version}"
        source = f"{version_path}/{layout.ASSETS_EXTRA}"
        try:
            archive = docker_engine.get_archive(container, source)
        except PathNotFound:
            raise UsageError(
                f"image {self._image} has no {source}: build it from a version dir written by 'tfpack convert'"
            ) from None
        model_file = _served_model_file(container, version_path)
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
                where = ", ".join(f"{version_path}/{name}" for name in missing)
                raise UsageError(
                    f"image {self._image} lacks {where}: build it from a version dir written by 'tfpack convert'"
                )
            if model_file is not None:
                name, content = model_file
                (version_dir / name).write_bytes(content)
            return Expectation.from_version_dir(version_dir)

    def exit_status(self) -> str | None:
        """None while the container runs; else its exit code and the entrypoint's last line."""
        code = docker_engine.exit_code(self._started())
        if code is None:
            return None
        # The entrypoint's (or the server's) last line says why: which file failed
        # verification, or the load error that stopped the server.
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


def _file_in_container(container: docker_engine.Container, path: str) -> bytes | None:
    """The regular file at ``path`` in the container; None when nothing is there.

    Raises:
        DockerEngineError: The engine refused, or ``path`` is no regular file.
    """
    try:
        archive = docker_engine.get_archive(container, path)
    except PathNotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
        extracted = tar.extractfile(members[0]) if len(members) == 1 and members[0].isfile() else None
        if extracted is None:
            raise DockerEngineError(f"{path} in the container is not a regular file")
        return extracted.read()


def _served_model_file(container: docker_engine.Container, version_path: str) -> tuple[str, bytes] | None:
    """(name, content) of the model file the version at ``version_path`` is served from: its
    model.tflite when it holds one, else its saved_model.pb; None when it holds neither."""
    for name in MODEL_FILES:
        content = _file_in_container(container, f"{version_path}/{name}")
        if content is not None:
            return name, content
    return None


def _read_json(data: bytes | None, where: str) -> dict[str, Any]:
    if data is None:
        return {}
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise UsageError(f"{where} in the image is not JSON: {exc}") from None
    return parsed if isinstance(parsed, dict) else {}


def _baked_versions(baked: Mapping[str, Any]) -> dict[str, list[int]]:
    """serving.json's models: name -> the versions baked into the image."""
    models = baked.get("models")
    if not isinstance(models, dict):
        return {}
    return {
        str(name): sorted(v for v in versions if type(v) is int)
        for name, versions in models.items()
        if isinstance(versions, list)
    }


def _baked_labels(baked: Mapping[str, Any], config: Any) -> dict[str, dict[str, int]]:
    """serving.json's labels (model -> label -> version); else the server config's version_labels."""
    labels = baked.get("labels")
    if isinstance(labels, dict):
        return {
            str(model): {str(label): version for label, version in per_model.items() if type(version) is int}
            for model, per_model in labels.items()
            if isinstance(per_model, dict)
        }
    return {entry.name: dict(entry.version_labels) for entry in config.model_config_list.config if entry.version_labels}


def served_versions(config: Any, baked: Mapping[str, list[int]]) -> dict[str, tuple[int, ...] | None]:
    """The versions a ModelServerConfig makes the server load, per model, as TF Serving reads it.

    ``specific``: those versions; ``all``: every baked version; ``latest`` (TF Serving's default,
    one version unless num_versions says more): the highest baked ones. None where the versions
    cannot be told (no config, or no baked versions to pick from).

    Args:
        config: A ModelServerConfig (tensorflow_serving.config) with a model_config_list.
        baked: serving.json's versions per model.
    """
    served: dict[str, tuple[int, ...] | None] = {}
    for entry in config.model_config_list.config:
        policy = entry.model_version_policy
        versions = baked.get(entry.name, [])
        choice = policy.WhichOneof("policy_choice")
        if choice == "specific":
            served[entry.name] = tuple(sorted(policy.specific.versions))
        elif choice == "all":
            served[entry.name] = tuple(versions) or None
        else:
            count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
            served[entry.name] = tuple(versions[-count:]) or None
    for name in baked:
        served.setdefault(name, tuple(baked[name][-1:]) or None)  # no config entry: TF Serving's "latest"
    return served


# --- a server already running ------------------------------------------------------------------


class RunningServer(SmokeTarget):
    """A model server the caller runs, checked against local version dirs.

    Either one version dir DIR/NAME/N (served as version N of ``model``), or a models dir DIR
    holding NAME/N for every model and version the server must serve (all of them are checked;
    with ``model``, only DIR/MODEL).
    """

    def __init__(
        self,
        target: str,
        model: str | None,
        *,
        version_dir: Path | None = None,
        models_dir: Path | None = None,
        rest_target: str | None = None,
        labels: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        """Describe the target; the arguments are checked by ``start``.

        Args:
            target: The server's gRPC address, HOST:PORT.
            model: The model name (required with ``version_dir``; with ``models_dir``, the one
                model to check, or None for every one).
            version_dir: The version dir the server should be serving as version N; its
                contract, goldens and provenance are what the server's answers are checked
                against.
            models_dir: Instead of ``version_dir``: DIR/NAME/N for every model and version.
            rest_target: The server's REST address, HOST:PORT; the REST checks run only with it.
            labels: Per model, version labels the server must resolve, and their versions.
        """
        if (version_dir is None) == (models_dir is None):
            raise ValueError("give version_dir or models_dir")
        if version_dir is not None and model is None:
            raise ValueError("a version dir needs the model name")
        self._target = target
        self._rest_target = rest_target
        self._model = model
        self._version_dir = version_dir
        self._models_dir = models_dir
        self._labels = {name: dict(per_model) for name, per_model in (labels or {}).items()}
        self._expectations: dict[str, dict[int, Expectation]] = {}

    def start(self, progress: Progress) -> Endpoints:
        if self._model is not None:
            layout.check_model_name(self._model, "--model")
        _check_address(self._target, "--target")
        if self._rest_target is not None:
            _check_address(self._rest_target, "--rest-target")
        version_dirs = self._version_dirs()
        # Read before any request, so a version dir without goldens is a usage error up front.
        progress.step(f"reading {sum(len(v) for v in version_dirs.values())} version dirs")
        self._expectations = {
            model: {version: Expectation.from_version_dir(path) for version, path in versions.items()}
            for model, versions in version_dirs.items()
        }
        return Endpoints(grpc=self._target, rest=self._rest_target)

    def _version_dirs(self) -> dict[str, dict[int, Path]]:
        if self._version_dir is not None:
            assert self._model is not None  # checked in __init__
            if not layout.is_version_name(self._version_dir.name):
                raise UsageError(
                    f"{self._version_dir} is not a version dir: its name must be the version number (DIR/NAME/N)"
                )
            return {self._model: {int(self._version_dir.name): self._version_dir}}
        assert self._models_dir is not None  # one of the two, checked in __init__
        if not self._models_dir.is_dir():
            raise UsageError(f"--models-dir {self._models_dir} is not a directory (DIR/NAME/N)")
        names = [self._model] if self._model is not None else sorted(p.name for p in self._models_dir.iterdir())
        found: dict[str, dict[int, Path]] = {}
        for name in names:
            base_path = self._models_dir / name
            if not base_path.is_dir():
                if self._model is not None:
                    raise UsageError(f"--models-dir {self._models_dir} has no {name}/")
                continue
            versions, problems = layout.find_version_dirs(base_path)
            if problems:
                raise UsageError(f"{base_path}: {problems[0]}")
            if versions:
                layout.check_model_name(name, "model dir")
                found[name] = dict(sorted(versions.items()))
        if not found:
            raise UsageError(f"--models-dir {self._models_dir} holds no version dirs (DIR/NAME/N)")
        return found

    def plan(self) -> ServingPlan:
        if not self._expectations:
            raise RuntimeError(f"{self._target} is not started")
        return ServingPlan(
            {model: tuple(sorted(versions)) for model, versions in self._expectations.items()},
            {model: self._labels.get(model, {}) for model in self._expectations},
        )

    def expectation(self, model: str, version: int) -> Expectation:
        try:
            return self._expectations[model][version]
        except KeyError:
            raise RuntimeError(f"no version dir for {model} version {version} (is {self._target} started?)") from None


def _check_address(address: str, flag: str) -> None:
    host, sep, port = address.rpartition(":")
    # ASCII digits only: "²" passes str.isdigit() and then fails int().
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} {address!r} is not HOST:PORT (for example localhost:{layout.GRPC_PORT})")
