"""tfpack-model-server: an embedded, TF Serving-compatible model server.

Takes tensorflow_model_server's flags, loads the configured models (the highest version under
each base path, or what a version policy asks for), and only then opens the gRPC port
(PredictionService, ModelService) and, when --rest_api_port is non-zero, the REST port. New
versions appearing under a base path are loaded and swapped in while serving. SIGTERM or SIGINT
stops it gracefully. Logs go to stderr.

Exit codes: 0 after a clean stop (or --help/--version), 2 for a malformed command line or model
config, 1 when the server cannot start (a model fails to load, a port cannot be bound).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from serving.flags import FlagError, ServerOptions, grpc_channel_arguments, parse_flags, usage

if TYPE_CHECKING:  # imported lazily at run time: TensorFlow loads only once flags are valid
    from serving.manager import ModelManager

_LOG = logging.getLogger("serving")

EXIT_OK, EXIT_START_FAILED, EXIT_USAGE = 0, 1, 2
SERVER_VERSION = "2.21.0-tfpack"
_GRPC_GRACE_SECONDS = 5.0


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s: %(levelname).1s %(module)s.py] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


class _StopSignal:
    """Records SIGTERM/SIGINT so every wait in the server can end early."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        _LOG.info("Received %s, shutting down", signal.Signals(signum).name)
        self.event.set()


def _serve(options: ServerOptions, stop: _StopSignal) -> int:
    # TensorFlow is imported only once the command line is known to be good.
    import tensorflow as tf

    from serving.batching import BatchingOptions, BatchScheduler, read_batching_parameters
    from serving.config import ConfigError, read_model_server_config, single_model_config
    from serving.examples import ExampleInference
    from serving.grpc_services import start_grpc_server
    from serving.inference import Inference
    from serving.manager import LoadPolicy, ModelManager
    from serving.metrics import read_prometheus_path
    from serving.rest import RestApi, start_rest_server
    from serving.servables import SessionOptions, read_session_config
    from serving.status import ServingError
    from serving.warmup import Warmup

    tf.get_logger().setLevel(logging.ERROR)  # the v1 loader's deprecation notices are noise here
    try:
        if options.model_config_file:
            config = read_model_server_config(Path(options.model_config_file))
        else:
            _LOG.info(
                "Building single TensorFlow model file config: model_name: %s model_base_path: %s",
                options.model_name,
                options.model_base_path,
            )
            config = single_model_config(options.model_name, options.model_base_path)
        metrics_path = (
            read_prometheus_path(Path(options.monitoring_config_file)) if options.monitoring_config_file else None
        )
        if options.batching_parameters_file and not options.enable_batching:
            raise ConfigError(
                "server_options.batching_parameters_file is set without setting server_options.enable_batching to true."
            )
        batching = (
            read_batching_parameters(Path(options.batching_parameters_file))
            if options.batching_parameters_file
            else BatchingOptions()
        )
        session_config = (
            read_session_config(Path(options.tensorflow_session_config_file))
            if options.tensorflow_session_config_file
            else b""
        )
        verify_version_dir = _version_dir_verifier(options)
    except (ConfigError, ValueError) as error:
        print(f"tfpack-model-server: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if metrics_path and not options.rest_api_port:
        _LOG.warning("Prometheus metrics are served on the REST port; --rest_api_port is 0")

    manager = ModelManager(
        LoadPolicy(
            session=SessionOptions(
                tags=frozenset(t.strip() for t in options.saved_model_tags.split(",") if t.strip()),
                intra_op_parallelism=options.tensorflow_intra_op_parallelism,
                inter_op_parallelism=options.tensorflow_inter_op_parallelism,
                prefer_tflite_model=options.prefer_tflite_model,
                base_config=session_config,
            ),
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval_seconds=max(options.load_retry_interval_micros, 0) / 1e6,
            batch_scheduler=BatchScheduler(batching) if options.enable_batching else None,
            verify_version_dir=verify_version_dir,
        ),
        allow_labels_for_unavailable_versions=options.allow_version_labels_for_unavailable_models,
        allow_reload_config=options.tfpack_allow_reload_config,
        stop=stop.event,  # SIGTERM ends a wait between load retries
    )
    if verify_version_dir is not None:
        _LOG.info("Every version dir is verified against %s before it loads", options.tfpack_trust_dir)
    if not options.tfpack_allow_reload_config:
        _LOG.info("HandleReloadConfigRequest is refused (--tfpack_allow_reload_config=false)")
    inference = Inference(
        manager,
        tensor_content=options.enable_serialization_as_tensor_content,
        max_request_tensor_bytes=options.tfpack_max_request_tensor_bytes,
        check_method_names=options.enable_signature_method_name_check,
    )
    examples = ExampleInference(manager, check_method_names=options.enable_signature_method_name_check)
    if options.enable_model_warmup:
        manager.on_loaded = Warmup(inference, examples, options.num_request_iterations_for_warmup)
    manager.set_config(config)
    poll_seconds = options.file_system_poll_wait_seconds
    # Ports open only after every model's first load attempt, as in TF Serving.
    while True:
        manager.sync()
        if stop.event.is_set():
            return EXIT_OK
        failures = manager.load_failures()
        if failures:
            print(f"Failed to start server. Error: {'; '.join(failures)}", file=sys.stderr)
            return EXIT_START_FAILED
        if not manager.models_without_versions():
            break
        if stop.event.wait(max(poll_seconds, 1)):
            return EXIT_OK
    try:
        manager.apply_labels(config)
    except ServingError as error:
        print(f"Failed to start server. Error: {error.message}", file=sys.stderr)
        return EXIT_START_FAILED

    grpc_server = rest_server = None
    workers = options.grpc_max_threads or max(4 * (os.cpu_count() or 1), 8)
    try:
        addresses = [f"0.0.0.0:{options.port}"] if options.port else []
        if options.grpc_socket_path:
            addresses.append(f"unix:{options.grpc_socket_path}")
        if addresses:
            grpc_server = start_grpc_server(
                inference,
                examples,
                manager,
                addresses,
                max_workers=workers,
                health_check=options.enable_grpc_healthcheck_service,
                channel_arguments=grpc_channel_arguments(options.grpc_channel_arguments),
            )
            for address in addresses:
                _LOG.info("Running gRPC ModelServer at %s ...", address)
        if options.rest_api_port and options.rest_api_port == options.port:
            _LOG.error(
                "--rest_api_port cannot be same as --port. Please use a different port for "
                "HTTP/REST API. Skipped exporting HTTP/REST API."
            )
        elif options.rest_api_port:
            api = RestApi(inference, examples, manager, options.rest_api_timeout_in_ms, metrics_path)
            rest_server = start_rest_server(api, options.rest_api_port, num_threads=options.rest_api_num_threads)
            _LOG.info("Exporting HTTP/REST API at:localhost:%d ...", options.rest_api_port)
    except (RuntimeError, OSError) as error:
        print(f"Failed to start server. Error: {error}", file=sys.stderr)
        if grpc_server is not None:
            grpc_server.stop(None)
        return EXIT_START_FAILED

    poller = None
    if poll_seconds > 0:
        poller = threading.Thread(target=_poll, args=(manager, poll_seconds, stop.event), name="fs-poll", daemon=True)
        poller.start()
    config_seconds = options.model_config_file_poll_wait_seconds
    if options.model_config_file and config_seconds > 0:
        threading.Thread(
            target=_poll_config,
            args=(manager, Path(options.model_config_file), config_seconds, stop.event),
            name="config-poll",
            daemon=True,
        ).start()

    stop.event.wait()
    if rest_server is not None:
        rest_server.shutdown()
        rest_server.server_close()
    if grpc_server is not None:
        grpc_server.stop(_GRPC_GRACE_SECONDS)
    _LOG.info("Server stopped")
    return EXIT_OK


def _version_dir_verifier(options: ServerOptions) -> Callable[[Path], None] | None:
    """The check each version dir passes before it loads (--tfpack_trust_dir), or None.

    Raises:
        ValueError: the trust dir holds nothing to verify with.
    """
    if not options.tfpack_trust_dir:
        if options.tfpack_allow_unsigned:
            raise ValueError("--tfpack_allow_unsigned needs --tfpack_trust_dir")
        return None
    from packager.errors import TfpackError
    from packager.layout import Trust

    try:
        trust = Trust.from_dir(Path(options.tfpack_trust_dir), allow_unsigned=options.tfpack_allow_unsigned)
    except TfpackError as error:
        raise ValueError(f"--tfpack_trust_dir: {error}") from None

    def verify_version_dir(version_dir: Path) -> None:
        if trust.check(version_dir) is None:
            _LOG.warning("%s is unsigned; loading it because --tfpack_allow_unsigned is set", version_dir)

    return verify_version_dir


def _poll(manager: ModelManager, poll_seconds: int, stop: threading.Event) -> None:
    """Re-scan the base paths every ``poll_seconds`` until ``stop`` is set."""
    while not stop.wait(poll_seconds):
        try:
            manager.sync()
        except Exception:  # a poll must never kill the server; the next one retries
            _LOG.exception("File system poll failed")


def _poll_config(manager: ModelManager, path: Path, poll_seconds: int, stop: threading.Event) -> None:
    """Re-read the model config file every ``poll_seconds`` and apply it when it changed, as
    TF Serving's PollFilesystemAndReloadConfig does (server.cc): a bad file or a failed reload is
    logged and the models served stay as they are; the next change is tried again."""
    from serving.config import ConfigError, read_model_server_config
    from serving.status import ServingError

    try:
        applied = path.read_bytes()
    except OSError:
        applied = b""
    while not stop.wait(poll_seconds):
        try:
            current = path.read_bytes()
            if current == applied:
                continue
            applied = current
            config = read_model_server_config(path)
            _LOG.info("Reloading model config from %s", path)
            manager.reload_config(config)
        except (OSError, ConfigError, ServingError) as error:
            _LOG.error("Failed to reload the model config from %s: %s", path, getattr(error, "message", error))
        except Exception:  # a poll must never kill the server
            _LOG.exception("Model config poll failed")


def main(argv: list[str] | None = None) -> int:
    """Run the model server with tensorflow_model_server's command line; return the exit code."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("--help", "-help", "-h", "--helpfull") for a in arguments):
        print(usage())
        return EXIT_OK
    try:
        parsed = parse_flags(arguments)
    except FlagError as error:
        print(f"tfpack-model-server: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    options = parsed.options
    if options.version:
        import tensorflow as tf

        print(f"TensorFlow ModelServer: {SERVER_VERSION}\nTensorFlow Library: {tf.__version__}")
        return EXIT_OK
    if not options.model_config_file and not options.model_base_path:
        print(
            "tfpack-model-server: error: --model_base_path is required unless "
            "--model_config_file is given (e.g. --model_name=NAME --model_base_path=/models/NAME)",
            file=sys.stderr,
        )
        return EXIT_USAGE

    _configure_logging()
    for flag in parsed.ignored:
        _LOG.info("Flag %s is accepted for compatibility and has no effect here", flag)
    stop = _StopSignal()
    stop.install()
    return _serve(options, stop)


if __name__ == "__main__":
    sys.exit(main())
