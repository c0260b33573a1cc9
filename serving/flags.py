"""tensorflow_model_server's command line, parsed the way TensorFlow's flag parser does.

Every flag of tensorflow_model_server 2.21 (tensorflow_serving/model_servers/main.cc) is known
here with its type and default. Flags tfpack-model-server implements set fields of ServerOptions;
the others are accepted, so that a command line written for the real server keeps working, and
reported back so the server can log one line each. A flag the real server does not have, a value
of the wrong type or a stray positional argument is a usage error.

Accepted spellings, as in TensorFlow's parser: ``--name=value``, ``-name=value``, and for booleans
``--name`` / ``--name=true|false|1|0``. ``--name value`` is accepted as well, for convenience.

A few flags are tfpack's own (TFPACK_FLAGS, all named ``--tfpack_*`` so they can never collide
with one of tensorflow_model_server's): the image entrypoint uses them to lock the embedded server
down to what it verified. Their defaults keep tensorflow_model_server's behaviour.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from packager.layout.paths import GRPC_PORT

_BOOL_WORDS = {"true": True, "1": True, "false": False, "0": False}

# name -> (type, default) for every flag of tensorflow_model_server 2.21.
TF_SERVING_FLAGS: dict[str, tuple[type, Any]] = {
    "port": (int, GRPC_PORT),
    "grpc_socket_path": (str, ""),
    "rest_api_port": (int, 0),
    "rest_api_num_threads": (int, 0),
    "rest_api_timeout_in_ms": (int, 30000),
    "rest_api_enable_cors_support": (bool, False),
    "enable_batching": (bool, False),
    "allow_version_labels_for_unavailable_models": (bool, False),
    "batching_parameters_file": (str, ""),
    "enable_per_model_batching_parameters": (bool, False),
    "model_config_file": (str, ""),
    "model_config_file_poll_wait_seconds": (int, 0),
    "model_name": (str, "default"),
    "model_base_path": (str, ""),
    "num_load_threads": (int, 0),
    "num_unload_threads": (int, 0),
    "max_num_load_retries": (int, 5),
    "load_retry_interval_micros": (int, 60 * 1000 * 1000),
    "file_system_poll_wait_seconds": (int, 1),
    "flush_filesystem_caches": (bool, True),
    "tensorflow_session_parallelism": (int, 0),
    "tensorflow_session_config_file": (str, ""),
    "tensorflow_intra_op_parallelism": (int, 0),
    "tensorflow_inter_op_parallelism": (int, 0),
    "use_alts_credentials": (bool, False),
    "ssl_config_file": (str, ""),
    "platform_config_file": (str, ""),
    "per_process_gpu_memory_fraction": (float, 0.0),
    "saved_model_tags": (str, "serve"),
    "grpc_channel_arguments": (str, ""),
    "grpc_max_threads": (int, 0),
    "enable_model_warmup": (bool, True),
    "num_request_iterations_for_warmup": (int, 0),
    "version": (bool, False),
    "monitoring_config_file": (str, ""),
    "remove_unused_fields_from_bundle_metagraph": (bool, True),
    "prefer_tflite_model": (bool, False),
    "num_tflite_pools": (int, 0),
    "num_tflite_interpreters_per_pool": (int, 1),
    "enable_signature_method_name_check": (bool, False),
    "xla_cpu_compilation_enabled": (bool, False),
    "xla_gpu_compilation_enabled": (bool, False),
    "enable_profiler": (bool, True),
    "thread_pool_factory_config_file": (str, ""),
    "mixed_precision": (str, ""),
    "skip_initialize_tpu": (bool, False),
    "enable_grpc_healthcheck_service": (bool, False),
    "enable_serialization_as_tensor_content": (bool, False),
}


# tfpack-model-server's own flags; tensorflow_model_server has none of them.
TFPACK_FLAGS: dict[str, tuple[type, Any]] = {
    # false: ModelService.HandleReloadConfigRequest answers PERMISSION_DENIED (images built
    # without allow-reload-config); true (the default) keeps TF Serving's behaviour.
    "tfpack_allow_reload_config": (bool, True),
    # A directory of trust material (public_key.pem, or chain/*.pem): every version dir is
    # verified against it right before it loads, whatever asked for the load (start-up, a poll,
    # a reload). Empty: no verification, as in TF Serving.
    "tfpack_trust_dir": (str, ""),
    # With --tfpack_trust_dir: a version dir without model.sig loads (one that has a signature
    # is still verified).
    "tfpack_allow_unsigned": (bool, False),
    # The most bytes a request's input tensors may take decoded (and a REST body may hold);
    # 0: sized for the server's memory (serving.inference.default_max_request_tensor_bytes).
    "tfpack_max_request_tensor_bytes": (int, 0),
}

_ALL_FLAGS = {**TF_SERVING_FLAGS, **TFPACK_FLAGS}


class FlagError(ValueError):
    """The command line cannot be parsed; the message says which argument and why."""


@dataclass(frozen=True)
class ServerOptions:
    """The flags tfpack-model-server acts on (names and defaults as tensorflow_model_server)."""

    port: int = GRPC_PORT
    rest_api_port: int = 0
    rest_api_timeout_in_ms: int = 30000
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60 * 1000 * 1000
    file_system_poll_wait_seconds: int = 1
    saved_model_tags: str = "serve"
    grpc_max_threads: int = 0
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    enable_serialization_as_tensor_content: bool = False
    enable_signature_method_name_check: bool = False
    allow_version_labels_for_unavailable_models: bool = False
    enable_model_warmup: bool = True
    enable_grpc_healthcheck_service: bool = False
    grpc_socket_path: str = ""
    monitoring_config_file: str = ""
    num_request_iterations_for_warmup: int = 0
    grpc_channel_arguments: str = ""
    enable_batching: bool = False
    batching_parameters_file: str = ""
    prefer_tflite_model: bool = False
    tensorflow_session_config_file: str = ""
    version: bool = False
    tfpack_allow_reload_config: bool = True
    tfpack_trust_dir: str = ""
    tfpack_allow_unsigned: bool = False
    tfpack_max_request_tensor_bytes: int = 0
    rest_api_num_threads: int = 0


_IMPLEMENTED = frozenset(field.name for field in dataclasses.fields(ServerOptions))


@dataclass(frozen=True)
class ParsedFlags:
    """The outcome of parsing: the options acted on and the accepted flags that are not."""

    options: ServerOptions
    ignored: tuple[str, ...]  # "--name=value" as given, for one log line each


def _convert(name: str, kind: type, text: str) -> Any:
    if kind is bool:
        if text.lower() not in _BOOL_WORDS:
            raise FlagError(f"--{name} expects true or false, got {text!r}")
        return _BOOL_WORDS[text.lower()]
    try:
        return kind(text)
    except ValueError:
        raise FlagError(f"--{name} expects {kind.__name__}, got {text!r}") from None


def parse_flags(argv: list[str]) -> ParsedFlags:
    """Parse tensorflow_model_server's command line (without the program name).

    Args:
        argv: The arguments, e.g. ``["--port=8500", "--model_name=m", "--model_base_path=/m"]``.

    Returns:
        The options tfpack-model-server implements and the accepted-but-ignored flags.

    Raises:
        FlagError: On an unknown flag, a bad value or a positional argument.
    """
    values: dict[str, Any] = {}
    ignored: list[str] = []
    remaining = list(argv)
    while remaining:
        argument = remaining.pop(0)
        if not argument.startswith("-") or argument in {"-", "--"}:
            raise FlagError(f"unexpected argument {argument!r}: flags look like --name=value")
        name, has_value, text = argument.lstrip("-").partition("=")
        if name not in _ALL_FLAGS:
            raise FlagError(
                f"unknown flag --{name}: tensorflow_model_server 2.21 has no such flag (run with --help for the list)"
            )
        kind, _default = _ALL_FLAGS[name]
        if not has_value:
            if kind is bool:
                text = "true"
            elif remaining and not remaining[0].startswith("--"):
                text = remaining.pop(0)
            else:
                raise FlagError(f"--{name} needs a value: --{name}=VALUE")
        values[name] = _convert(name, kind, text)
        if name not in _IMPLEMENTED:
            ignored.append(f"--{name}={text}")
    for name, value in values.items():
        if name in _PORT_FLAGS and not 0 <= value <= 65535:
            raise FlagError(f"--{name}={value} is not a TCP port (0-65535)")
        if name in _REFUSED_FLAGS and value:
            raise FlagError(f"--{name}: {_REFUSED_FLAGS[name]}")
    options = ServerOptions(**{k: v for k, v in values.items() if k in _IMPLEMENTED})
    grpc_channel_arguments(options.grpc_channel_arguments)  # refuse a malformed list up front
    return ParsedFlags(options=options, ignored=tuple(ignored))


_PORT_FLAGS = frozenset({"port", "rest_api_port"})
# Real flags whose silent acceptance would mislead: asking for TLS and getting plaintext.
_REFUSED_FLAGS = {
    "ssl_config_file": "TLS is not implemented by tfpack-model-server; terminate TLS in front of it "
    "(a sidecar or the ingress) or use tensorflow_model_server",
    "use_alts_credentials": "ALTS is not implemented by tfpack-model-server; use tensorflow_model_server",
}


def grpc_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """Parse --grpc_channel_arguments ("key=value,key=value") as tensorflow_model_server does.

    A value that parses as a 32-bit integer is passed to gRPC as an integer, any other as a
    string (gRPC ignores, with a log line, arguments it does not know).

    Raises:
        FlagError: If an entry is not ``key=value``.
    """
    arguments: list[tuple[str, int | str]] = []
    for entry in filter(None, text.split(",")):
        key, has_value, value = entry.partition("=")
        if not key or not has_value:
            raise FlagError(
                f"--grpc_channel_arguments entry {entry!r} is not key=value "
                "(e.g. --grpc_channel_arguments=grpc.max_receive_message_length=4194304)"
            )
        try:
            number = int(value)
        except ValueError:
            arguments.append((key, value))
            continue
        arguments.append((key, number) if -(2**31) <= number < 2**31 else (key, value))
    return arguments


def usage() -> str:
    """Return the --help text: every accepted flag with its type and default."""
    lines = ["usage: tfpack-model-server --model_base_path=DIR [--model_name=NAME] [flags]", ""]
    for name, (kind, default) in TF_SERVING_FLAGS.items():
        note = "" if name in _IMPLEMENTED else "  (accepted, no effect)"
        lines.append(f"  --{name}={kind.__name__} (default {default!r}){note}")
    lines += ["", "tfpack-model-server's own flags (tensorflow_model_server has none of them):"]
    for name, (kind, default) in TFPACK_FLAGS.items():
        lines.append(f"  --{name}={kind.__name__} (default {default!r})")
    return "\n".join(lines)
