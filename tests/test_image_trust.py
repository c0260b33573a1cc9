"""Issue 10: an image serves exactly what its entrypoint verified, and nothing at run time changes that.

An attacker with `docker run` arguments (extra CMD flags, -e, -v) or with network access to the
gRPC port tried to make a tfpack image serve an unsigned or attacker-signed model while its log
said "signatures verified". Each attempt is reproduced here against a real image on the real
Docker engine and must be refused: the container exits non-zero before any server starts, and
its log names the argument, variable or mount. Over real gRPC against a started image,
HandleReloadConfigRequest is PERMISSION_DENIED, and a version dir written into a writable mount
after start is never loaded. An image built to allow reloads verifies every version dir a reload
asks for against the baked trust before loading it. The embedded server's own switches for that
(--tfpack_allow_reload_config, --tfpack_trust_dir) are tested on a plain tfpack-model-server too,
and `tfpack build` refuses a version dir whose op scan fails.

One image per kind for the module (the embedded base is built once per machine and cached); every
container and image is removed again.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import new_image_tag
from factories.image_layout import baked_layout
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from packager.errors import UsageError, VerificationError
from packager.image import BuildResult, build_image
from packager.signing import sign
from serving.entrypoint import (
    TUNING_FLAGS,
    BakedServing,
    ImageLayout,
    check_arguments,
    check_environment,
    check_mounts,
    load_baked,
    main,
    prepare,
)
from tests.servers import running_model_server

MODEL = "half"
AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
START_DEADLINE_S = 180
EXIT_DEADLINE_S = 120
# Longer than both servers' default poll interval (1 s), several times over.
POLL_WAIT_S = 6
# What the image serves: every version it baked (and nothing that appears later).
BAKED_STATUSES = [(1, AVAILABLE), (2, AVAILABLE)]


# --- models and keys ---------------------------------------------------------------------------


class _HalfPlus(tf.Module):
    """y = 0.5 * x + offset: the offset tells which version (or whose model) answered."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.slope = tf.Variable(0.5)
        self.offset = tf.Variable(offset)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")], autograph=False)
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self.slope * x + self.offset}


def write_model(version_dir: Path, offset: float, key: Path | None = None) -> Path:
    """A SavedModel version dir, signed with ``key`` when given; readable by the image's uid."""
    module = _HalfPlus(offset)
    staging = version_dir.parent / f".staging-{version_dir.name}-{uuid.uuid4().hex[:6]}"
    tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
    if key is not None:
        sign(staging, key)
    _world_readable(staging)
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(version_dir)  # a poll never sees half a version dir
    return version_dir


def _world_readable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture(scope="module")
def keys(signing_keys: dict[str, Path]) -> dict[str, Path]:
    """'private'/'public': the release key the image trusts; 'other_*': the attacker's."""
    return signing_keys


@pytest.fixture(scope="module")
def signed_model(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> Path:
    """models/half/{1,2} signed with the trusted key; version 2 answers 0.5x + 3."""
    model = tmp_path_factory.mktemp("trusted") / "models" / MODEL
    write_model(model / "1", offset=2.0, key=keys["private"])
    write_model(model / "2", offset=3.0, key=keys["private"])
    return model


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> dict[str, Path]:
    """What an attacker brings to `docker run`: models, a key, a config (all 0755/0644)."""
    root = tmp_path_factory.mktemp("evil")
    root.chmod(0o755)
    paths = {
        "unsigned": write_model(root / "unsigned" / "simple" / "1", offset=100.0).parent,
        "attacker_signed": write_model(
            root / "attacker" / "simple" / "1", offset=200.0, key=keys["other_private"]
        ).parent,
        "trusted_signed": write_model(root / "trusted" / "simple" / "1", offset=7.0, key=keys["private"]).parent,
    }
    trust = root / "trust"
    trust.mkdir()
    shutil.copyfile(keys["other_public"], trust / "public_key.pem")
    paths["attacker_trust"] = trust
    paths["attacker_key"] = trust / "public_key.pem"
    config = root / "evil.config"
    config.write_text(
        'model_config_list { config { name: "half" base_path: "/evil/simple" model_platform: "tensorflow" } }\n'
    )
    paths["config"] = config
    _world_readable(root)
    return paths


# --- without Docker: what run time may pass, checked one by one -------------------------------


def _layout(root: Path, models: Path, public_key: Path | None, **serving) -> ImageLayout:
    """An image's /etc/tfpack and /models under ``root``, as `tfpack build` bakes them."""
    shutil.copytree(models, root / "models" / models.name)
    return baked_layout(root, public_key, serving.pop("model_server", "tfpack-model-server"), **serving)


def test_only_tuning_flags_pass_and_every_other_argument_is_named() -> None:
    passed, problems = check_arguments(
        [
            "--rest_api_timeout_in_ms=5000",
            "--enable_batching",
            "-tensorflow_intra_op_parallelism=2",
            "--model_base_path=/evil/simple",
            "--model_name=evil",
            "--model_config_file=/evil.config",
            "--file_system_poll_wait_seconds=1",
            "--model_config_file_poll_wait_seconds=1",
            "--tensorflow_session_config_file=/evil.pbtxt",
            "--saved_model_tags=train",
            "--tfpack_allow_reload_config=true",
            "--tfpack_trust_dir=/attacker",
            "--port=9000",
            "evil",
            "--no_such_flag=1",
            "--rest_api_timeout_in_ms=soon",
            "--grpc_max_threads",
            "--tfpack_max_request_tensor_bytes=1048576",
        ]
    )
    assert passed == [
        "--rest_api_timeout_in_ms=5000",
        "--enable_batching",
        "--tensorflow_intra_op_parallelism=2",
        "--tfpack_max_request_tensor_bytes=1048576",
    ]
    refused = [problem.split(": ")[0] for problem in problems]
    assert refused == [
        "--model_base_path=/evil/simple",
        "--model_name=evil",
        "--model_config_file=/evil.config",
        "--file_system_poll_wait_seconds=1",
        "--model_config_file_poll_wait_seconds=1",
        "--tensorflow_session_config_file=/evil.pbtxt",
        "--saved_model_tags=train",
        "--tfpack_allow_reload_config=true",
        "--tfpack_trust_dir=/attacker",
        "--port=9000",
        "'evil'",
        "--no_such_flag=1",
        "--rest_api_timeout_in_ms=soon",
        "--grpc_max_threads",
    ]
    # tensorflow_model_server has no --tfpack_* flag at all.
    passed, problems = check_arguments(
        ["--enable_batching", "--tfpack_max_request_tensor_bytes=1048576"], "tensorflow_model_server"
    )
    assert passed == ["--enable_batching"]
    assert problems == ["--tfpack_max_request_tensor_bytes=1048576: tensorflow_model_server has no such flag"]
    # The allowlist holds no flag that names a file, a model, a port or polling.
    assert not {
        flag
        for flag in TUNING_FLAGS
        if {"file", "path", "port", "poll", "tags", "tfpack"} & set(flag.split("_")) or "model_name" in flag
    }


def test_environment_that_would_change_trust_or_models_is_named(tmp_path: Path) -> None:
    baked = BakedServing(
        model_server="tfpack-model-server", models={MODEL: [1, 2], "twin": [1]}, allow_unsigned=True, trust="none"
    )
    environ = {
        "MODEL_NAME": "../evil/simple",
        "MODEL_BASE_PATH": "/evil",
        "TFPACK_ALLOW_UNSIGNED": "1",
        "TFPACK_PUBLIC_KEY": "/attacker/key.pem",
        "TFPACK_CERT_CHAIN": "/attacker/chain",
        "PYTHONPATH": "/evil",
        "PYTHONWARNINGS": "ignore::evil.Warning",
        "TF_PLUGGABLE_DEVICE_LIBRARY_PATH": "/evil.so",
        # harmless: the image's own, TF Serving's tuning, a python image's metadata
        "PYTHONUNBUFFERED": "1",
        "PYTHON_VERSION": "3.11.2",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PATH": "/usr/bin",
        "HOME": "/nonexistent",
    }
    named = [problem.split(" ")[0].split("=")[0] for problem in check_environment(environ, baked)]
    assert named == sorted(
        [
            "MODEL_BASE_PATH",
            "MODEL_NAME",
            "PYTHONPATH",
            "PYTHONWARNINGS",
            "TFPACK_ALLOW_UNSIGNED",
            "TFPACK_CERT_CHAIN",
            "TFPACK_PUBLIC_KEY",
            "TF_PLUGGABLE_DEVICE_LIBRARY_PATH",
        ]
    )
    model_name = next(p for p in check_environment(environ, baked) if p.startswith("MODEL_NAME"))
    assert "not a plain model name" in model_name
    assert check_environment({"MODEL_NAME": "twin", "MODEL_BASE_PATH": "/models"}, baked) == []
    assert "serves half, twin" in check_environment({"MODEL_NAME": "other"}, baked)[0]


def test_mounts_over_baked_files_the_entrypoint_or_the_server_are_named(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    lines = [
        "1 0 0:1 / / rw - overlay overlay rw",
        "2 1 0:2 / /etc/hosts rw - ext4 /dev/sda rw",
        "3 1 0:3 / /models/half rw - ext4 /dev/sda rw",
        "4 1 0:4 / /etc/tfpack/trust ro - ext4 /dev/sda rw",
        "5 1 0:5 / /opt/tfpack/venv/lib/python3.11/site-packages/serving ro - ext4 /dev/sda rw",
        "6 1 0:6 / /usr/bin/tensorflow_model_server ro - ext4 /dev/sda rw",
        "7 1 0:7 / /etc ro - ext4 /dev/sda rw",
        r"8 1 0:8 / /etc/tfpack/models\040copy ro - ext4 /dev/sda rw",
    ]
    lines += [
        "9 1 0:9 / /tmp rw - tmpfs tmpfs rw",
        "10 1 0:10 / /etc/python3.11/sitecustomize.py ro - ext4 /dev/sda rw",
        "11 1 0:11 / /mnt/models ro - ext4 /dev/sda rw",
    ]
    mountinfo.write_text("\n".join(lines) + "\n")
    layout = ImageLayout(etc_dir=Path("/etc/tfpack"), models_root=Path("/models"), mountinfo=mountinfo)
    baked_files = [
        "/etc/tfpack/trust",
        "/opt/tfpack/venv/lib/python3.11/site-packages/serving",
        "/usr/bin/tensorflow_model_server",
        "/etc",
        "/etc/tfpack/models copy",
    ]

    def named(scope: str) -> list[str]:
        return [problem.split(" is mounted")[0] for problem in check_mounts(layout, scope=scope)]

    assert named("baked") == baked_files
    # /models is baked too: a mounted version dir could be swapped after verification.
    assert named("models") == ["/models/half", *baked_files]
    # Anything else but the engine's own mounts and /tmp (a sitecustomize.py runs in the verifier).
    assert named("all") == ["/models/half", *baked_files, "/etc/python3.11/sitecustomize.py", "/mnt/models"]


def test_baked_files_are_checked_before_anything_is_trusted(
    tmp_path: Path, signed_model: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    layout = _layout(tmp_path, signed_model, keys["public"])
    good_config = layout.model_config.read_text()
    assert prepare([], {"MODEL_NAME": MODEL, "MODEL_BASE_PATH": "/models"}, layout)[:7] == [
        "/opt/tfpack/venv/bin/tfpack-model-server",
        "--port=8500",
        "--rest_api_port=8501",
        f"--model_config_file={layout.model_config}",
        "--file_system_poll_wait_seconds=0",
        "--max_num_load_retries=0",
        "--tfpack_allow_reload_config=false",
    ]

    # models.config edited after the build (serving every version, from anywhere).
    layout.model_config.write_text(good_config.replace(f"{layout.models_root}/half", "/evil/simple"))
    with pytest.raises(VerificationError, match=r"models.config is not the model config"):
        load_baked(layout)
    assert main([], {}, layout) == 3
    layout.model_config.write_text(good_config)

    # A models.config dropped into /models is named, not ignored.
    (layout.models_root / "models.config").write_text(good_config)
    assert main([], {}, layout) == 2
    assert f"{layout.models_root / 'models.config'} is not a model dir" in capsys.readouterr().err
    (layout.models_root / "models.config").unlink()

    # serving.json says a key is baked: an emptied trust dir cannot turn into "trust nothing".
    (layout.trust_dir / "public_key.pem").rename(tmp_path / "moved.pem")
    with pytest.raises(VerificationError, match=r"holds neither public_key.pem"):
        prepare([], {}, layout)
    (tmp_path / "moved.pem").rename(layout.trust_dir / "public_key.pem")

    for broken in (
        '{"format": 1}',
        "[]",
        "not json",
        '{"format": 1, "model_server": "tfpack-model-server", "models": {"../x": [1]}, "trust": "public_key"}',
        '{"format": 1, "model_server": "tfpack-model-server", "models": {"half": [2, 1]}, "trust": "public_key"}',
        '{"format": 1, "model_server": "tensorflow_model_server", "models": {"half": [1]}, '
        '"trust": "public_key", "allow_reload_config": true}',
        '{"format": 1, "model_server": "tfpack-model-server", "models": {"half": [1]}, "trust": "none"}',
    ):
        with pytest.raises(UsageError):
            BakedServing.loads(broken)

    if os.geteuid() == 0:  # the check is on root ownership: only meaningful when run as root
        layout.serving_file.chmod(0o666)
        with pytest.raises(UsageError, match=r"serving.json must be a root-owned file"):
            load_baked(layout)


# --- without Docker: tfpack-model-server's own switches, over real gRPC ---------------------------


def _reload(channel: grpc.Channel, text: str) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=120)


def _statuses(channel: grpc.Channel, model: str) -> list[tuple[int, int]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    reply = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    return sorted((s.version, s.state) for s in reply.model_version_status)


def _predict(channel: grpc.Channel, model: str, x: float = 2.0, version: int | None = None) -> tuple[float, int]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([x], np.float32)))
    reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return float(tf.make_ndarray(reply.outputs["y"])[0]), reply.model_spec.version.value


def _config(**base_paths: str) -> str:
    return (
        "model_config_list {"
        + "".join(
            f' config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}'
            for name, path in base_paths.items()
        )
        + " }"
    )


def _denied(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as refused:
        call()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value.details()
    return refused.value


def test_model_server_refuses_reload_config_when_started_read_only(
    tmp_path: Path, signed_model: Path, evil: dict[str, Path]
) -> None:
    base = tmp_path / MODEL
    shutil.copytree(signed_model, base)
    with (
        running_model_server(
            [f"--model_name={MODEL}", f"--model_base_path={base}", "--tfpack_allow_reload_config=false"]
        ) as server,
        server.channel() as channel,
    ):
        denied = _denied(lambda: _reload(channel, _config(half=str(evil["unsigned"]))))
        assert "HandleReloadConfigRequest is refused" in denied.details()
        _denied(lambda: _reload(channel, "model_config_list {}"))  # would unload every model
        assert _statuses(channel, MODEL) == [(2, AVAILABLE)]
        assert _predict(channel, MODEL) == (4.0, 2)


def test_model_server_verifies_every_version_dir_before_it_loads(
    tmp_path: Path, signed_model: Path, evil: dict[str, Path], keys: dict[str, Path]
) -> None:
    base = tmp_path / MODEL
    shutil.copytree(signed_model / "1", base / "1")
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copyfile(keys["public"], trust / "public_key.pem")
    with (
        running_model_server(
            [
                f"--model_name={MODEL}",
                f"--model_base_path={base}",
                "--file_system_poll_wait_seconds=1",
                f"--tfpack_trust_dir={trust}",
            ]
        ) as server,
        server.channel() as channel,
    ):
        # A new latest version appears under the polled base path: unsigned, then attacker-signed.
        for version, offset, key in ((5, 100.0, None), (6, 200.0, keys["other_private"])):
            write_model(base / str(version), offset=offset, key=key)
            time.sleep(POLL_WAIT_S)
            assert _predict(channel, MODEL) == (3.0, 1)
            assert (version, AVAILABLE) not in _statuses(channel, MODEL)
            assert f"{base / str(version)} failed verification, not loaded" in server.stderr()
        assert (
            "half/5 is unsigned" in server.stderr() and "half/6/model.sig was signed by another key" in server.stderr()
        )
        # A release-signed version is picked up as usual.
        write_model(base / "7", offset=9.0, key=keys["private"])
        deadline = time.monotonic() + 60
        while _predict(channel, MODEL)[1] != 7 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _predict(channel, MODEL) == (10.0, 7)

        # Reloads are allowed (the default) but verified: unsigned and attacker-signed refused.
        for path in (evil["unsigned"], evil["attacker_signed"]):
            denied = _denied(lambda path=path: _reload(channel, _config(half=str(base), extra=str(path))))
            assert f"{path / '1'} failed verification" in denied.details()
        _reload(channel, _config(half=str(base), extra=str(evil["trusted_signed"])))
        assert _predict(channel, "extra") == (8.0, 1)


# --- with Docker: the image ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(docker_client: docker.DockerClient) -> docker.DockerClient:
    return docker_client


@pytest.fixture(scope="module")
def image(signed_model: Path, keys: dict[str, Path], image_tags: list[str]) -> BuildResult:
    """The embedded image serving half (versions 1 and 2, both served), trusting the release key."""
    return build_image(signed_model, new_image_tag(image_tags, "trust"), public_key=keys["public"])


def _run_to_exit(client: docker.DockerClient, tag: str, **options) -> tuple[int, str]:
    container = client.containers.run(tag, detach=True, **options)
    try:
        status = container.wait(timeout=EXIT_DEADLINE_S)
        return status["StatusCode"], container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def _ro(path: Path) -> dict[str, str]:
    return {"bind": str(path), "mode": "ro"}


# (id, command, environment, volumes {host key in `evil` or path: container path}, exit code, named)
OVERRIDES = [
    (
        "extra CMD --model_base_path",
        ["--model_base_path=/evil/simple"],
        {},
        {},
        2,
        "--model_base_path=/evil/simple: the image serves the models baked into it",
    ),
    (
        "MODEL_NAME path",
        None,
        {"MODEL_NAME": "../evil/simple"},
        {"unsigned": "/evil/simple"},
        2,
        "MODEL_NAME='../evil/simple'",
    ),
    (
        "models.config mounted into /models",
        None,
        {},
        {"config": "/models/models.config"},
        2,
        "/models/models.config is not a model dir",
    ),
    (
        "models.config mounted over the baked one",
        None,
        {},
        {"config": "/etc/tfpack/models.config"},
        2,
        "/etc/tfpack/models.config is mounted at run time",
    ),
    (
        "--model_config_file",
        ["--model_config_file=/evil/evil.config"],
        {},
        {},
        2,
        "--model_config_file=/evil/evil.config: the image serves its baked /etc/tfpack/models.config",
    ),
    (
        "TFPACK_ALLOW_UNSIGNED",
        None,
        {"TFPACK_ALLOW_UNSIGNED": "1"},
        {"unsigned": "/models/evil"},
        2,
        "TFPACK_ALLOW_UNSIGNED is set",
    ),
    (
        "TFPACK_PUBLIC_KEY",
        None,
        {"TFPACK_PUBLIC_KEY": "/attacker/key.pem"},
        {"attacker_key": "/attacker/key.pem", "attacker_signed": "/models/x"},
        2,
        "TFPACK_PUBLIC_KEY is set",
    ),
    (
        "attacker trust mounted over /etc/tfpack/trust",
        None,
        {},
        {"attacker_trust": "/etc/tfpack/trust", "attacker_signed": "/models/x"},
        2,
        "/etc/tfpack/trust is mounted at run time",
    ),
    (
        "polling turned on",
        ["--file_system_poll_wait_seconds=1"],
        {},
        {},
        2,
        "--file_system_poll_wait_seconds=1: the image loads only the version dirs it verified",
    ),
    (
        "reloads turned on",
        ["--tfpack_allow_reload_config=true"],
        {},
        {},
        2,
        "--tfpack_allow_reload_config=true: tfpack-model-server's own flags are set by the entrypoint",
    ),
    ("PYTHONPATH", None, {"PYTHONPATH": "/evil"}, {"unsigned": "/evil/simple"}, 2, "PYTHONPATH is set"),
    # No override at all, just an attacker-signed or unsigned model where the server looks.
    (
        "attacker-signed model mounted under /models",
        None,
        {},
        {"attacker_signed": "/models/x"},
        2,
        "/models/x is mounted at run time",
    ),
    (
        "unsigned version dir mounted into the baked model",
        None,
        {},
        {"unsigned_version": "/models/half/3"},
        2,
        "/models/half/3 is mounted at run time",
    ),
    (
        "code mounted where Python looks",
        None,
        {},
        {"unsigned": "/usr/lib/python3/dist-packages/evil"},
        2,
        "/usr/lib/python3/dist-packages/evil is mounted at run time",
    ),
    ("LD_PRELOAD", None, {"LD_PRELOAD": "/tmp/pre.so"}, {}, 2, "LD_PRELOAD is set"),
]


@pytest.mark.docker
@pytest.mark.parametrize(
    ("command", "environment", "volumes", "exit_code", "named"),
    [case[1:] for case in OVERRIDES],
    ids=[case[0] for case in OVERRIDES],
)
def test_run_time_override_refuses_to_start(
    client: docker.DockerClient,
    image: BuildResult,
    evil: dict[str, Path],
    command: list[str] | None,
    environment: dict[str, str],
    volumes: dict[str, str],
    exit_code: int,
    named: str,
) -> None:
    hosts = {**evil, "unsigned_version": evil["unsigned"] / "1"}
    code, logs = _run_to_exit(
        client,
        image.tag,
        command=command,
        environment=environment,
        volumes={str(hosts[key]): _ro(Path(target)) for key, target in volumes.items()},
    )
    assert code == exit_code, logs
    refusal = [line for line in logs.splitlines() if "tfpack-entrypoint: refusing to serve" in line]
    assert len(refusal) == 1 and named in refusal[0], logs
    assert "exec " not in logs and "signatures verified" not in logs, logs


def _wait_available(container, channel: grpc.Channel, model: str = MODEL) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        container.reload()
        if container.status == "exited":
            pytest.fail(f"the server exited: {container.logs().decode(errors='replace')}")
        try:
            if any(state == AVAILABLE for _, state in _statuses(channel, model)):
                return
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{model} not AVAILABLE in {START_DEADLINE_S}s: {container.logs()!r}")
        time.sleep(0.5)


TUNING = ["--rest_api_timeout_in_ms=5000", "--enable_batching", "--tensorflow_intra_op_parallelism=1"]


@pytest.fixture(scope="module")
def served(client: docker.DockerClient, image: BuildResult) -> Iterator[tuple]:
    """The image running with tuning flags (mounts under /models are refused: see OVERRIDES)."""
    container = client.containers.run(
        image.tag,
        command=TUNING,
        detach=True,
        ports={"8500/tcp": ("127.0.0.1", None)},
    )
    try:
        container.reload()
        channel = grpc.insecure_channel(f"127.0.0.1:{container.ports['8500/tcp'][0]['HostPort']}")
        _wait_available(container, channel)
        yield container, channel
        channel.close()
    finally:
        container.remove(force=True)


@pytest.mark.docker
def test_tuning_flags_pass_and_the_entrypoint_builds_the_rest_of_the_command_line(served) -> None:
    container, channel = served
    logs = container.logs().decode(errors="replace")
    assert (
        "tfpack-entrypoint: exec /opt/tfpack/venv/bin/tfpack-model-server --port=8500 --rest_api_port=8501 "
        "--model_config_file=/etc/tfpack/models.config --file_system_poll_wait_seconds=0 "
        "--max_num_load_retries=0 --tensorflow_session_config_file=/etc/tfpack/session_config.pbtxt "
        "--tfpack_allow_reload_config=false " + " ".join(TUNING)
    ) in logs, logs
    assert "signatures verified: /models/half/1, /models/half/2" in logs
    assert _predict(channel, MODEL) == (4.0, 2)


@pytest.mark.docker
def test_reload_config_over_grpc_is_permission_denied(served, image: BuildResult) -> None:
    _, channel = served
    assert image.labels["dev.tfpack.reload-config"] == "refused"
    denied = _denied(lambda: _reload(channel, _config(half="/models/half", evil="/evil/simple")))
    assert "HandleReloadConfigRequest is refused" in denied.details()
    _denied(lambda: _reload(channel, "model_config_list {}"))  # used to unload every model
    assert _statuses(channel, MODEL) == BAKED_STATUSES
    assert _predict(channel, MODEL) == (4.0, 2)


@pytest.mark.docker
def test_version_dir_added_after_start_is_never_loaded(served) -> None:
    container, channel = served
    # As root inside the container (what no mount may do): a signed copy and an unsigned copy of
    # version 2 appear as versions 4 and 3 after verification.
    for command in (
        "cp -r /models/half/2 /models/half/4",
        "cp -r /models/half/2 /models/half/3 && rm /models/half/3/model.sig",
    ):
        code, output = container.exec_run(["sh", "-c", command], user="0")
        assert code == 0, output
    time.sleep(POLL_WAIT_S)
    assert _statuses(channel, MODEL) == BAKED_STATUSES
    assert _predict(channel, MODEL) == (4.0, 2)
    for version in (3, 4):
        with pytest.raises(grpc.RpcError) as missing:
            _predict(channel, MODEL, version=version)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.docker
def test_image_built_to_allow_reloads_verifies_every_reloaded_model(
    client: docker.DockerClient,
    signed_model: Path,
    keys: dict[str, Path],
    evil: dict[str, Path],
    image_tags: list[str],
) -> None:
    result = build_image(
        signed_model, new_image_tag(image_tags, "reloadable"), public_key=keys["public"], allow_reload_config=True
    )
    assert result.labels["dev.tfpack.reload-config"] == "verified"
    assert result.serving is not None and result.serving.allow_reload_config
    extra = {
        str(evil[key].parent): _ro(Path(f"/mnt/{key}")) for key in ("unsigned", "attacker_signed", "trusted_signed")
    }
    container = client.containers.run(result.tag, detach=True, ports={"8500/tcp": ("127.0.0.1", None)}, volumes=extra)
    try:
        container.reload()
        with grpc.insecure_channel(f"127.0.0.1:{container.ports['8500/tcp'][0]['HostPort']}") as channel:
            _wait_available(container, channel)
            assert "--tfpack_allow_reload_config=true --tfpack_trust_dir=/etc/tfpack/trust" in container.logs().decode()
            for key in ("unsigned", "attacker_signed"):
                path = f"/mnt/{key}/simple"
                denied = _denied(lambda path=path: _reload(channel, _config(half="/models/half", extra=path)))
                assert f"{path}/1 failed verification" in denied.details()
                assert (1, AVAILABLE) not in _statuses(channel, "extra")
            _reload(channel, _config(half="/models/half", extra="/mnt/trusted_signed/simple"))
            assert _predict(channel, "extra") == (8.0, 1)
            assert _predict(channel, MODEL) == (4.0, 2)
    finally:
        container.remove(force=True)


def test_allow_reload_config_needs_the_embedded_server(signed_model: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match="--allow-reload-config needs --base embedded"):
        build_image(
            signed_model,
            "tfpack-test/never:1",
            base="tensorflow/serving:2.21.0",
            public_key=keys["public"],
            allow_reload_config=True,
        )


# --- the build gate: the op scan ------------------------------------------------------------------


class _Writer(tf.Module):
    """Serves y = x + 1 and writes a file on every request (WriteFile)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")], autograph=False)
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        tf.io.write_file("/tmp/tfpack-pwned", tf.strings.as_string(tf.reduce_sum(x)))
        return {"y": x + 1.0}


def _hostile_model(kind: str, version_dir: Path) -> str:
    """Write a hostile version dir; return the op the build must name."""
    if kind == "write_file":
        module = _Writer()
        tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
        return "WriteFile"
    from tests.factories.hostile_models import write_dataset_saved_model  # issue 10's dataset reader

    write_dataset_saved_model(version_dir, "fixed_length", Path("/etc/passwd"))
    return "FixedLengthRecordDataset"


@pytest.mark.docker
@pytest.mark.parametrize("kind", ["write_file", "fixed_length_dataset"])
def test_build_refuses_a_signed_model_whose_op_scan_fails(
    client: docker.DockerClient, tmp_path: Path, keys: dict[str, Path], kind: str
) -> None:
    version_dir = tmp_path / "hostile" / "1"
    op = _hostile_model(kind, version_dir)
    # Signed with the reference model_signing CLI ('tfpack sign' itself refuses such a model):
    # the signature is valid, and it is not what stops the build.
    import subprocess
    import sys

    signed = subprocess.run(
        [
            str(Path(sys.executable).with_name("model_signing")),
            "sign",
            "key",
            str(version_dir),
            "--signature",
            str(version_dir / "model.sig"),
            "--private_key",
            str(keys["private"]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert signed.returncode == 0, signed.stderr
    tag = f"tfpack-test/hostile:{uuid.uuid4().hex[:10]}"
    with pytest.raises(UsageError) as refused:
        build_image(version_dir.parent, tag, public_key=keys["public"])
    assert refused.value.exit_code == 2
    assert op in str(refused.value) and str(version_dir) in str(refused.value)
    assert "refuses a model whose op scan fails" in str(refused.value)
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(tag)
