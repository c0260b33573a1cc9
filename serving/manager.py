"""The servable manager: which model versions are loaded, and the request -> servable lookup.

It plays the part of TF Serving's ServerCore with a file-system source and the
availability-preserving policy: each sync pass lists the numeric version dirs under every
model's base path, picks the versions the model's version policy asks for, loads new ones
(retrying as --max_num_load_retries says) and only then unloads versions no longer wanted, so a
model never goes unavailable during a swap. Requests look servables up without waiting on loads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tensorflow_serving.apis import get_model_status_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from packager.layout import find_version_dirs
from serving.batching import BatchScheduler
from serving.metrics import REGISTRY
from serving.servables import LoadError, Servable, SessionOptions, load_servable
from serving.status import ServingError, failed_precondition, invalid_argument, not_found
from serving.tflite import TFLITE_MODEL_FILE, load_tflite_servable

_LOG = logging.getLogger(__name__)
_LOAD_ATTEMPTS = ":tensorflow:cc:saved_model:load_attempt_count"

State = get_model_status_pb2.ModelVersionStatus.State


@dataclass
class VersionStatus:
    """The manager state of one model version and, if it failed, why."""

    state: int
    error: str = ""
    refused: bool = False  # the version dir failed verification: it was never loaded


@dataclass
class _Model:
    config: model_server_config_pb2.ModelConfig
    servables: dict[int, Servable] = field(default_factory=dict)
    statuses: dict[int, VersionStatus] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadPolicy:
    """How loads are attempted (tensorflow_model_server's load flags)."""

    session: SessionOptions = SessionOptions()
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    batch_scheduler: BatchScheduler | None = None  # --enable_batching: shared by all servables
    # Called with each version dir right before it loads (--tfpack_trust_dir); raising refuses
    # the load for good, whatever asked for it: start-up, a file-system poll or a reload.
    verify_version_dir: Callable[[Path], None] | None = None


def reload_config_denied() -> ServingError:
    """The answer to a config reload in a server started with --tfpack_allow_reload_config=false."""
    return ServingError(
        grpc.StatusCode.PERMISSION_DENIED,
        "HandleReloadConfigRequest is refused: this server serves only the models it verified at "
        "start-up (built without allow-reload-config)",
    )


def version_dirs(base_path: Path) -> dict[int, Path]:
    """Return version -> dir for the version dirs of a model base path ("00000123" is 123).

    The same rule the image entrypoint verifies with (packager.layout), so the server never loads
    a directory the entrypoint did not check. A version two dirs name ("1" and "01") is not
    served; the other versions are.
    """
    unique, problems = find_version_dirs(base_path)
    for problem in problems:
        _LOG.error("%s", problem)
    return unique


def aspired_versions(
    policy: model_server_config_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy,
    on_disk: list[int],
) -> list[int]:
    """Return the versions a version policy selects from the versions on disk."""
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return list(on_disk)
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [version for version in on_disk if version in wanted]
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return on_disk[-count:]


class ModelManager:
    """Loads, swaps and unloads model versions; resolves ModelSpecs to loaded servables."""

    def __init__(
        self,
        load_policy: LoadPolicy,
        on_loaded: Callable[[Servable], None] | None = None,
        *,
        allow_labels_for_unavailable_versions: bool = False,
        allow_reload_config: bool = True,
        stop: threading.Event | None = None,
    ) -> None:
        """Create a manager serving nothing yet.

        Args:
            load_policy: Session options and load retry behaviour.
            on_loaded: Called with each newly loaded servable before it becomes available
                (model warmup); a LoadError or ServingError from it fails that load.
            allow_labels_for_unavailable_versions: Let a version label point at a version that
                is not loaded (--allow_version_labels_for_unavailable_models).
            allow_reload_config: Let :meth:`reload_config` replace the config at run time
                (--tfpack_allow_reload_config); images built without it refuse.
            stop: Set when the server is stopping (SIGTERM): no load is retried after it is
                set, and a wait between retries ends at once.
        """
        self._load_policy = load_policy
        self.on_loaded = on_loaded  # may be set after construction, before the first sync
        self._allow_unavailable_labels = allow_labels_for_unavailable_versions
        self.allows_reload_config = allow_reload_config
        self._models: dict[str, _Model] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()  # guards _models and each model's dicts
        self._sync_lock = threading.Lock()  # one sync pass at a time
        self._stop = stop if stop is not None else threading.Event()

    # ----------------------------------------------------------------------------------------
    # Configuration and loading

    def set_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Serve exactly the models in ``config``; removed models are unloaded at the next sync."""
        with self._lock:
            wanted = {model.name: model for model in config.model_config_list.config}
            for name in list(self._models):
                if name not in wanted:
                    self._unload_all(self._models.pop(name))
            for name, model_config in wanted.items():
                if name in self._models:
                    model = self._models[name]
                    model.config = model_config
                    # A new config gets a fresh attempt at versions that failed to load.
                    for version, status in list(model.statuses.items()):
                        if status.error:
                            del model.statuses[version]
                else:
                    self._models[name] = _Model(config=model_config)

    def apply_labels(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Take the version labels of ``config`` into use, as TF Serving does after loading.

        Raises:
            ServingError: FAILED_PRECONDITION if a label names a version that is not available
                (unless labels for unavailable versions are allowed); no label changes then.
        """
        labels = {model.name: dict(model.version_labels) for model in config.model_config_list.config}
        with self._lock:
            if not self._allow_unavailable_labels:
                for name, model_labels in labels.items():
                    servables = self._models[name].servables if name in self._models else {}
                    for version in model_labels.values():
                        if version not in servables:
                            raise failed_precondition(
                                f"Request to assign label to version {version} of model {name}"
                                ", which is not currently available for inference"
                            )
            self._labels = labels

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Switch to ``config``: load what it adds, unload what it drops, then apply labels.

        Raises:
            ServingError: PERMISSION_DENIED if reloading is not allowed or a newly wanted
                version fails verification; UNKNOWN if one fails to load; a label error.
        """
        if not self.allows_reload_config:
            raise reload_config_denied()
        self.set_config(config)
        self.sync()
        wanted = {model.name for model in config.model_config_list.config}
        refusals = self.load_failures(wanted, refused_only=True)
        if refusals:
            raise ServingError(grpc.StatusCode.PERMISSION_DENIED, "; ".join(refusals))
        failures = self.load_failures(wanted)
        if failures:
            raise ServingError(grpc.StatusCode.UNKNOWN, "; ".join(failures))
        self.apply_labels(config)

    def model_names(self) -> list[str]:
        """Return the names of the configured models."""
        with self._lock:
            return list(self._models)

    def sync(self) -> None:
        """Run one pass: load aspired versions found on disk, then unload unwanted versions."""
        with self._sync_lock:
            with self._lock:
                models = list(self._models.values())
            for model in models:
                self._sync_model(model)

    def _sync_model(self, model: _Model) -> None:
        name, base_path = model.config.name, Path(model.config.base_path)
        dirs = version_dirs(base_path)
        if not dirs:
            _LOG.warning(
                "No versions of servable %s found under base path %s. Did you forget to name "
                "your leaf directory as a number (eg. '/1/')?",
                name,
                base_path,
            )
            return
        aspired = aspired_versions(model.config.model_version_policy, sorted(dirs))
        for version in sorted(aspired, reverse=True):
            with self._lock:
                status = model.statuses.get(version)
                # A version that failed for good stays failed until the config is reloaded.
                settled = version in model.servables or bool(status and status.error)
            if not settled:
                self._load(model, version, dirs[version])
        with self._lock:
            if not any(version in model.servables for version in aspired):
                return  # availability preserving: keep serving what we have
            for version in [v for v in model.servables if v not in aspired]:
                _LOG.info("Unloading servable version {name: %s version: %d}", name, version)
                model.statuses[version] = VersionStatus(State.UNLOADING)
                del model.servables[version]
                model.statuses[version] = VersionStatus(State.END)

    def _load(self, model: _Model, version: int, version_dir: Path) -> None:
        if self._stop.is_set():
            return  # stopping: start no load
        name = model.config.name
        with self._lock:
            model.statuses[version] = VersionStatus(State.LOADING)
        verify = self._load_policy.verify_version_dir
        if verify is not None:
            try:
                verify(version_dir)
            except Exception as failure:
                error = f"{version_dir} failed verification, not loaded: {failure}"
                _LOG.error("Loading servable: {name: %s version: %d} refused: %s", name, version, error)
                with self._lock:
                    model.statuses[version] = VersionStatus(State.END, error=error, refused=True)
                return
        attempts = 1 + max(self._load_policy.max_num_load_retries, 0)
        error = ""
        for attempt in range(attempts):
            if attempt:
                _LOG.info(
                    "Retrying load of servable version {name: %s version: %d} (retry %d of %d)",
                    name,
                    version,
                    attempt,
                    attempts - 1,
                )
                if self._stop.wait(self._load_policy.load_retry_interval_seconds):
                    error = f"{error} (not retried: the server is stopping)"
                    break
            try:
                servable = self._load_version(name, version, version_dir)
                if self.on_loaded is not None:
                    self.on_loaded(servable)
            except (LoadError, ServingError) as failure:
                REGISTRY.increment(_LOAD_ATTEMPTS, str(version_dir), "fail")
                error = str(failure)
                _LOG.error("Loading servable: {name: %s version: %d} failed: %s", name, version, error)
                continue
            REGISTRY.increment(_LOAD_ATTEMPTS, str(version_dir), "success")
            with self._lock:
                model.servables[version] = servable
                model.statuses[version] = VersionStatus(State.AVAILABLE)
            _LOG.info("Successfully loaded servable version {name: %s version: %d}", name, version)
            return
        with self._lock:
            model.statuses[version] = VersionStatus(State.END, error=error)

    def _load_version(self, name: str, version: int, version_dir: Path) -> Servable:
        policy = self._load_policy
        if policy.session.prefer_tflite_model and (version_dir / TFLITE_MODEL_FILE).is_file():
            return load_tflite_servable(name, version, version_dir, policy.batch_scheduler)
        return load_servable(name, version, version_dir, policy.session, policy.batch_scheduler)

    @staticmethod
    def _unload_all(model: _Model) -> None:
        for version in list(model.servables):
            _LOG.info("Unloading servable version {name: %s version: %d}", model.config.name, version)
            del model.servables[version]
            model.statuses[version] = VersionStatus(State.END)

    def load_failures(self, names: set[str] | None = None, *, refused_only: bool = False) -> list[str]:
        """Return "name version N: error" for each version whose load failed for good.

        Args:
            names: Only these models (default: all).
            refused_only: Only versions refused by verification.
        """
        with self._lock:
            return [
                f"{name} version {version}: {status.error}"
                for name, model in self._models.items()
                if names is None or name in names
                for version, status in sorted(model.statuses.items())
                if status.state == State.END and status.error and (status.refused or not refused_only)
            ]

    def models_without_versions(self) -> list[str]:
        """Return the configured models with no available version."""
        with self._lock:
            return [name for name, model in self._models.items() if not model.servables]

    # ----------------------------------------------------------------------------------------
    # Request-time lookups

    def servable(self, model_spec: model_pb2.ModelSpec) -> Servable:
        """Return the loaded servable a ModelSpec asks for (version, label, or the latest).

        Raises:
            ServingError: NOT_FOUND with TF Serving's message if no such servable is loaded;
                INVALID_ARGUMENT for an unknown version label.
        """
        name = model_spec.name
        with self._lock:
            model = self._models.get(name)
            servables = dict(model.servables) if model else {}
            labels = self._labels.get(name, {})
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            label = model_spec.version_label
            if label not in labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = labels[label]
        elif choice == "version":
            version = model_spec.version.value
        else:
            if not servables:
                raise not_found(f"Servable not found for request: Latest({name})")
            return servables[max(servables)]
        if version not in servables:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return servables[version]

    def version_statuses(self, name: str) -> dict[int, VersionStatus]:
        """Return the state of every version of model ``name`` seen so far (empty if unknown)."""
        with self._lock:
            model = self._models.get(name)
            return dict(model.statuses) if model else {}
