"""Model server configuration: the ModelServerConfig to serve, from flags or a text-format file."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

TENSORFLOW_PLATFORM = "tensorflow"


class ConfigError(ValueError):
    """The model configuration cannot be used; the message says why."""


def single_model_config(model_name: str, model_base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """Return the config for one model given by --model_name/--model_base_path."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = model_base_path
    model.model_platform = TENSORFLOW_PLATFORM
    return config


def read_model_server_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    """Parse a text-format ModelServerConfig file (--model_config_file) and check it.

    Raises:
        ConfigError: If the file is unreadable, not a text-format ModelServerConfig, or names a
            model twice, has an empty name or base path, or a platform other than "tensorflow".
    """
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read --model_config_file {path}: {error.strerror}") from None
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ConfigError(
            f"Error parsing text-format tensorflow.serving.ModelServerConfig: {error} (in {path})"
        ) from None
    check_model_server_config(config)
    return config


def check_model_server_config(config: model_server_config_pb2.ModelServerConfig) -> None:
    """Raise ConfigError unless ``config`` is a model list tfpack-model-server can serve."""
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError("ModelServer does not yet support custom model config.")
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ConfigError("ModelConfig has an empty name")
        if model.name in seen:
            raise ConfigError(f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
        if not model.base_path:
            raise ConfigError(f"Model {model.name} has an empty base_path")
        platform = model.model_platform or TENSORFLOW_PLATFORM
        if platform != TENSORFLOW_PLATFORM:
            raise ConfigError(f"Model {model.name} asks for model_platform {platform!r}; only 'tensorflow' is served")
