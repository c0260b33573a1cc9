"""`tfpack build` and the verify-then-serve entrypoint, against real TensorFlow, Docker and gRPC.

The docker tests build the embedded base on first use (cached afterwards under ~/.cache/tfpack
and as the image tfpack-runtime:KEY), one serving image per module, and a few images derived from
it; every image and container they create is removed again.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from conftest import new_image_tag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from factories.image_layout import baked_layout
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from packager import _runtime_base
from packager.errors import UsageError, VerificationError
from packager.image import (
    EMBEDDED_MODEL_SERVER,
    TF_SERVING_MODEL_SERVER,
    BuildResult,
    build_image,
    find_models,
    render_context,
    verify_signatures,
)
from packager.layout import SIGNATURE_FILE
from packager.progress import SILENT
from packager.signing import sign, signed_digest
from serving.entrypoint import BakedServing, ImageLayout, main, model_config_text, prepare, verify_models

MODEL = "half"
VARIABLES_FILE = "variables/variables.data-00000-of-00001"
SERVER_START_DEADLINE_S = 180
EXIT_DEADLINE_S = 120


# --- models and keys ------------------------------------------------------------------------


class _HalfPlusTwo(tf.Module):
    """y = 0.5 * x + 2, TF Serving's classic test model, in TF2 form."""

    def __init__(self) -> None:
        super().__init__()
        self.slope = tf.Variable(0.5)
        self.offset = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self.slope * x + self.offset}


def _write_model(version_dir: Path) -> Path:
    module = _HalfPlusTwo()
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
    return version_dir


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An EC P-256 key pair as PEM files: (private, public)."""
    directory = tmp_path_factory.mktemp("keys")
    private_key = ec.generate_private_key(ec.SECP256R1())
    private_pem = directory / "private.pem"
    public_pem = directory / "public.pem"
    private_pem.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_pem.write_bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_pem, public_pem


@pytest.fixture(scope="module")
def unsigned_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/half/1, a SavedModel without model.sig."""
    root = tmp_path_factory.mktemp("unsigned") / "models"
    _write_model(root / MODEL / "1")
    return root / MODEL


@pytest.fixture(scope="module")
def signed_model(tmp_path_factory: pytest.TempPathFactory, unsigned_model: Path, keys) -> Path:
    """models/half/{1,2}, both signed with ``keys``."""
    model = tmp_path_factory.mktemp("signed") / "models" / MODEL
    shutil.copytree(unsigned_model / "1", model / "1")
    shutil.copytree(unsigned_model / "1", model / "2")
    for version_dir in (model / "1", model / "2"):
        sign(version_dir, keys[0])
    return model


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory, signed_model: Path) -> Path:
    """A directory of two signed model dirs: half and twin."""
    root = tmp_path_factory.mktemp("two") / "models"
    shutil.copytree(signed_model, root / MODEL)
    shutil.copytree(signed_model, root / "twin")
    return root


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


# --- without Docker: model discovery, signatures, context, entrypoint logic -------------------


def test_find_models_single_and_several(signed_model: Path, two_models: Path) -> None:
    assert find_models(signed_model) == {MODEL: [signed_model / "1", signed_model / "2"]}
    assert {name: [d.name for d in dirs] for name, dirs in find_models(two_models).items()} == {
        MODEL: ["1", "2"],
        "twin": ["1", "2"],
    }


def test_find_models_rejects_missing_empty_and_foreign_dirs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a directory"):
        find_models(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no model"):
        find_models(tmp_path / "empty")
    (tmp_path / "mixed" / "notes").mkdir(parents=True)
    with pytest.raises(UsageError, match="holds no numeric version dir"):
        find_models(tmp_path / "mixed")
    (tmp_path / "hollow" / "1").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"holds no saved_model.pb"):
        find_models(tmp_path / "hollow")


def test_verify_signatures_names_unsigned_and_tampered_dirs(
    tmp_path: Path, signed_model: Path, unsigned_model: Path, keys
) -> None:
    digests = verify_signatures(find_models(signed_model), keys[1])
    assert digests == {d: signed_digest(d) for d in (signed_model / "1", signed_model / "2")}

    with pytest.raises(VerificationError, match="unsigned") as unsigned:
        verify_signatures(find_models(unsigned_model), keys[1])
    assert unsigned.value.exit_code == 3
    assert verify_signatures(find_models(unsigned_model), None, allow_unsigned=True) == {}

    with pytest.raises(UsageError, match="--public-key"):
        verify_signatures(find_models(signed_model), None)

    tampered = tmp_path / MODEL
    shutil.copytree(signed_model, tampered)
    _flip_last_byte(tampered / "2" / VARIABLES_FILE)
    with pytest.raises(VerificationError, match=VARIABLES_FILE):
        verify_signatures(find_models(tampered), keys[1], allow_unsigned=True)


def test_model_config_pins_each_model_to_the_version_it_serves() -> None:
    config = text_format.Parse(model_config_text({MODEL: 2, "twin": 7}), model_server_config_pb2.ModelServerConfig())
    assert [
        (c.name, c.base_path, c.model_platform, list(c.model_version_policy.specific.versions))
        for c in config.model_config_list.config
    ] == [(MODEL, "/models/half", "tensorflow", [2]), ("twin", "/models/twin", "tensorflow", [7])]


def test_build_context_holds_models_public_key_and_wheel_but_no_private_key(
    tmp_path: Path, two_models: Path, keys
) -> None:
    public_pem = keys[1].read_bytes()
    context = tmp_path / "context"
    render_context(context, find_models(two_models), public_key_pem=public_pem)

    dockerfile = (context / "Dockerfile").read_text()
    assert "ARG BASE=tensorflow/serving:2.21.0\nFROM ${BASE}" in dockerfile
    assert "USER 10001:10001" in dockerfile and "EXPOSE 8500 8501" in dockerfile
    assert '"-I", "-m", "serving.entrypoint"' in dockerfile
    assert not [line for line in dockerfile.splitlines() if "TFPACK_" in line and not line.startswith("#")]
    for name in (MODEL, "twin"):
        for version in ("1", "2"):
            assert (context / "models" / name / version / SIGNATURE_FILE).is_file()
    assert not (context / "models" / "models.config").exists()
    assert (context / "etc" / "models.config").read_text() == model_config_text({MODEL: 2, "twin": 2})
    baked = BakedServing.loads((context / "etc" / "serving.json").read_text())
    assert baked.models == {MODEL: [1, 2], "twin": [1, 2]}
    assert (baked.trust, baked.allow_unsigned, baked.allow_reload_config) == ("public_key", False, False)
    assert (context / "etc" / "trust" / "public_key.pem").read_bytes() == public_pem
    for path in (context / "etc").rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path
    assert [w.name for w in (context / "wheels").iterdir()] == ["tfpack-0.1.0-py3-none-any.whl"]
    assert "model-signing" in (context / "verifier-requirements.txt").read_text()
    for path in context.rglob("*"):
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path


def test_build_refuses_a_private_key_as_public_key(signed_model: Path, keys) -> None:
    with pytest.raises(UsageError, match="is a private key"):
        build_image(signed_model, "tfpack-test/never:1", public_key=keys[0])


def _baked_layout(root: Path, models: Path, public_key: Path | None, **serving) -> ImageLayout:
    """An image's /etc/tfpack and /models under ``root``, as tfpack build bakes them."""
    shutil.copytree(models, root / "models")
    return baked_layout(root, public_key, serving.pop("model_server", TF_SERVING_MODEL_SERVER), **serving)


def test_entrypoint_verifies_every_version_before_building_the_command_line(
    tmp_path: Path, two_models: Path, keys
) -> None:
    layout = _baked_layout(tmp_path, two_models, keys[1])
    models = layout.models_root
    baked = BakedServing.loads(layout.serving_file.read_text())
    assert verify_models(layout, baked) == (
        [models / name / version for name in (MODEL, "twin") for version in ("1", "2")],
        [],
    )
    env = {"MODEL_NAME": MODEL, "MODEL_BASE_PATH": "/models"}
    assert prepare(["--enable_batching"], env, layout) == [
        "/usr/bin/tensorflow_model_server",
        "--port=8500",
        "--rest_api_port=8501",
        f"--model_config_file={layout.model_config}",
        "--file_system_poll_wait_seconds=0",
        "--enable_batching",
    ]

    (models / "twin" / "1" / SIGNATURE_FILE).unlink()
    with pytest.raises(VerificationError, match="twin/1 is unsigned"):
        verify_models(layout, baked)
    allowing = BakedServing.loads(json.dumps({**baked.to_json(), "allow_unsigned": True}))
    assert verify_models(layout, allowing)[1] == [models / "twin" / "1"]

    # allow-unsigned tolerates a missing signature, never a signature that does not match.
    _flip_last_byte(models / MODEL / "2" / "saved_model.pb")
    with pytest.raises(VerificationError, match=r"modified: saved_model.pb"):
        verify_models(layout, allowing)


def test_entrypoint_verifies_the_directories_the_server_loads(tmp_path: Path, two_models: Path, keys) -> None:
    """A version dir spelled with other digits ("١", "²") or a second spelling of a version
    ("01" beside "1") must not slip past verification into the server."""
    from serving.manager import version_dirs as server_version_dirs

    layout = _baked_layout(tmp_path, two_models, keys[1])
    models = layout.models_root
    baked = BakedServing.loads(layout.serving_file.read_text())
    for name in ("\u0661", "\u00b2"):  # Arabic-Indic one, superscript two: str.isdigit() is true
        shutil.copytree(models / MODEL / "1", models / MODEL / name)
        (models / MODEL / name / "saved_model.pb").write_bytes(b"unsigned, different")
    assert sorted(server_version_dirs(models / MODEL)) == [1, 2]
    assert verify_models(layout, baked)[0] == [
        models / name / version for name in (MODEL, "twin") for version in ("1", "2")
    ]

    shutil.copytree(models / MODEL / "1", models / MODEL / "01")
    with pytest.raises(UsageError, match="name version 1"):
        verify_models(layout, baked)
    assert sorted(server_version_dirs(models / MODEL)) == [2]  # the server serves neither spelling
    assert main([], {}, layout) == 2


# --- with Docker -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(docker_client: docker.DockerClient) -> docker.DockerClient:
    return docker_client


@pytest.fixture(scope="module")
def embedded_image(signed_model: Path, keys, image_tags: list[str]) -> BuildResult:
    return build_image(signed_model, new_image_tag(image_tags, MODEL), public_key=keys[1])


def _run(client: docker.DockerClient, image: str, command: list[str] | None = None):
    return client.containers.run(
        image,
        command=command,
        detach=True,
        ports={"8500/tcp": ("127.0.0.1", None), "8501/tcp": ("127.0.0.1", None)},
    )


def _wait_for_exit(container) -> tuple[int, str]:
    status = container.wait(timeout=EXIT_DEADLINE_S)
    return status["StatusCode"], container.logs().decode(errors="replace")


@pytest.fixture(scope="module")
def served(client: docker.DockerClient, embedded_image: BuildResult) -> Iterator[tuple]:
    """The embedded image running, its model AVAILABLE: (container, gRPC channel)."""
    container = _run(client, embedded_image.tag)
    try:
        container.reload()
        grpc_port = container.ports["8500/tcp"][0]["HostPort"]
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = MODEL
        deadline = time.monotonic() + SERVER_START_DEADLINE_S
        while True:
            container.reload()
            if container.status == "exited":
                pytest.fail(f"the server exited: {container.logs().decode(errors='replace')}")
            try:
                reply = stub.GetModelStatus(request, timeout=5)
                states = [s.state for s in reply.model_version_status]
                if get_model_status_pb2.ModelVersionStatus.AVAILABLE in states:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"model not AVAILABLE in {SERVER_START_DEADLINE_S}s: {container.logs()!r}")
            time.sleep(0.5)
        yield container, channel
        channel.close()
    finally:
        container.remove(force=True)


@pytest.mark.docker
def test_embedded_base_is_reused(client: docker.DockerClient, embedded_image: BuildResult) -> None:
    started = time.monotonic()
    assert _runtime_base.ensure_runtime_base(client) == embedded_image.base
    assert time.monotonic() - started < 5
    labels = client.images.get(embedded_image.base).labels
    assert labels[_runtime_base.BASE_KEY_LABEL] == _runtime_base.base_key()


@pytest.mark.docker
def test_image_labels_name_models_versions_and_signed_digests(
    client: docker.DockerClient, embedded_image: BuildResult, signed_model: Path
) -> None:
    labels = client.images.get(embedded_image.tag).labels
    assert labels.items() >= embedded_image.labels.items()  # plus the base's own
    assert embedded_image.models == {MODEL: [1, 2]}
    assert embedded_image.model_server == EMBEDDED_MODEL_SERVER
    for key in ("title", "version", "created", "base.name", "revision"):
        assert labels[f"org.opencontainers.image.{key}"]
    assert labels["dev.tfpack.models"] == MODEL
    assert labels["dev.tfpack.model.half.versions"] == "1,2"
    for version in ("1", "2"):
        assert labels[f"dev.tfpack.model.half.{version}.digest"] == signed_digest(signed_model / version)
    assert labels["dev.tfpack.base"] == embedded_image.base
    assert labels["dev.tfpack.model-server"] == EMBEDDED_MODEL_SERVER
    assert "dev.tfpack.allow-unsigned" not in labels


@pytest.mark.docker
def test_image_config_matches_tf_serving_conventions(
    client: docker.DockerClient, embedded_image: BuildResult, keys
) -> None:
    config = client.images.get(embedded_image.tag).attrs["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["MODEL_NAME"] == MODEL and env["MODEL_BASE_PATH"] == "/models"
    assert not [name for name in env if name.startswith("TFPACK_")]  # trust is in files, not env
    assert set(config["ExposedPorts"]) == {"8500/tcp", "8501/tcp"}
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/opt/tfpack/venv/bin/python", "-I", "-m", "serving.entrypoint"]
    baked_key = client.containers.run(
        embedded_image.tag, entrypoint=["cat", "/etc/tfpack/trust/public_key.pem"], remove=True
    )
    assert baked_key == keys[1].read_bytes()
    listing = (
        client.containers.run(
            embedded_image.tag,
            remove=True,
            entrypoint=["find", "/etc/tfpack", "-printf", "%p %u:%g %m\\n"],
        )
        .decode()
        .split("\n")
    )
    owners_modes = {line.split(" ")[0]: line.split(" ", 1)[1] for line in listing if line}
    assert set(owners_modes) == {
        "/etc/tfpack",
        "/etc/tfpack/trust",
        "/etc/tfpack/trust/public_key.pem",
        "/etc/tfpack/serving.json",
        "/etc/tfpack/models.config",
        "/etc/tfpack/session_config.pbtxt",
    }
    for path, owner_mode in owners_modes.items():
        is_dir = path in ("/etc/tfpack", "/etc/tfpack/trust")
        assert owner_mode == ("root:root 755" if is_dir else "root:root 644"), path
    assert (
        BakedServing.loads(
            client.containers.run(
                embedded_image.tag, entrypoint=["cat", "/etc/tfpack/serving.json"], remove=True
            ).decode()
        )
        == embedded_image.serving
    )


@pytest.mark.docker
def test_serves_grpc_and_rest_as_uid_10001(served) -> None:
    container, channel = served
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0, 2.0, 5.0], np.float32)))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), [2.5, 3.0, 4.5])
    assert response.model_spec.version.value == 2

    rest_port = container.ports["8501/tcp"][0]["HostPort"]
    rest_status = requests.get(f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}", timeout=30)
    assert rest_status.status_code == 200
    assert {v["state"] for v in rest_status.json()["model_version_status"]} == {"AVAILABLE"}

    status = container.exec_run(["cat", "/proc/1/status"]).output.decode()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == ["10001"] * 4
    assert f"signatures verified: /models/{MODEL}/1, /models/{MODEL}/2" in container.logs().decode()


@pytest.mark.docker
def test_tampered_model_inside_the_image_refuses_to_start(
    client: docker.DockerClient, embedded_image: BuildResult, image_tags: list[str]
) -> None:
    tampered_tag = new_image_tag(image_tags, "tampered")
    target = f"/models/{MODEL}/1/{VARIABLES_FILE}"
    flip = f"p = {target!r}; b = bytearray(open(p, 'rb').read()); b[-1] ^= 1; open(p, 'wb').write(bytes(b))"
    dockerfile = (
        f'FROM {embedded_image.tag}\nUSER root\nRUN ["/opt/tfpack/venv/bin/python", "-c", "{flip}"]\nUSER 10001:10001\n'
    )
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tampered_tag, rm=True)
    container = _run(client, tampered_tag)
    try:
        exit_code, logs = _wait_for_exit(container)
    finally:
        container.remove(force=True)
    assert exit_code == 3, logs
    refusal = [line for line in logs.splitlines() if "refusing to serve" in line]
    assert len(refusal) == 1, logs
    assert f"/models/{MODEL}/1 does not match its signature" in refusal[0]
    assert VARIABLES_FILE in refusal[0]


@pytest.mark.docker
def test_unsigned_model_is_refused_at_build_time(client: docker.DockerClient, unsigned_model: Path, keys) -> None:
    tag = f"tfpack-test/unsigned:{uuid.uuid4().hex[:10]}"
    with pytest.raises(VerificationError, match=f"{MODEL}/1 is unsigned") as refused:
        build_image(unsigned_model, tag, public_key=keys[1])
    assert refused.value.exit_code == 3
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(tag)


@pytest.mark.docker
def test_unpullable_base_names_the_embedded_alternative(signed_model: Path, keys) -> None:
    with pytest.raises(UsageError, match="--base embedded") as refused:
        build_image(
            signed_model,
            "tfpack-test/never:1",
            base="tfpack-test/absent-base:0",
            public_key=keys[1],
        )
    assert "neither local nor pullable" in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.fixture(scope="module")
def stand_in_tf_serving(client: docker.DockerClient, image_tags: list[str]) -> str:
    """A base like tensorflow/serving: no Python at all, and a server at its path.

    tensorflow/serving cannot be pulled here. This stand-in is the bootstrapped bookworm rootfs
    with Python purged and a tensorflow_model_server that prints its argv and exits, so the
    Dockerfile's path for such bases runs for real: apt-get python3, a venv, the verifier from
    PyPI. PIP_CERT hands pip in the container the CA of the proxy this machine reaches PyPI
    through, which a fresh rootfs does not trust; a machine that can pull the real base needs none.
    """
    tag = new_image_tag(image_tags, "stand-in-tf-serving")
    dockerfile = (
        f"FROM {_runtime_base.ensure_rootfs_image(client, SILENT)}\n"
        "RUN apt-get purge -y --auto-remove python3 python3-venv python3.11 python3.11-minimal "
        "libpython3.11-minimal && ! command -v python3\n"
        "COPY host-ca.crt /etc/ssl/certs/host-ca.crt\n"
        "ENV PIP_CERT=/etc/ssl/certs/host-ca.crt\n"
        "RUN printf '#!/bin/sh\\necho \"tensorflow_model_server $*\"\\n' "
        "> /usr/bin/tensorflow_model_server && chmod 755 /usr/bin/tensorflow_model_server\n"
    )
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        for name, data in (
            ("Dockerfile", dockerfile.encode()),
            ("host-ca.crt", Path("/etc/ssl/certs/ca-certificates.crt").read_bytes()),
        ):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True)
    return tag


@pytest.mark.docker
def test_non_embedded_base_execs_tensorflow_model_server_with_a_model_config(
    client: docker.DockerClient,
    two_models: Path,
    keys,
    stand_in_tf_serving: str,
    image_tags: list[str],
) -> None:
    result = build_image(two_models, new_image_tag(image_tags, "two"), base=stand_in_tf_serving, public_key=keys[1])
    assert result.model_server == TF_SERVING_MODEL_SERVER
    assert result.models == {MODEL: [1, 2], "twin": [1, 2]}
    assert result.labels["dev.tfpack.models"] == "half,twin"
    container = _run(client, result.tag, ["--enable_batching"])
    try:
        exit_code, logs = _wait_for_exit(container)
    finally:
        container.remove(force=True)
    assert exit_code == 0, logs
    assert "tfpack-entrypoint: signatures verified" in logs
    assert (
        "tensorflow_model_server --port=8500 --rest_api_port=8501 "
        "--model_config_file=/etc/tfpack/models.config --file_system_poll_wait_seconds=0 "
        "--tensorflow_session_config_file=/etc/tfpack/session_config.pbtxt --enable_batching"
    ) in logs
    assert "--tfpack_" not in logs  # tensorflow_model_server has no such flags
    assert "always answers ModelService.HandleReloadConfigRequest" in logs
    assert result.labels["dev.tfpack.reload-config"] == "unguarded"
    served_config = client.containers.run(
        result.tag, entrypoint=["cat", "/etc/tfpack/models.config"], remove=True
    ).decode()
    assert served_config == model_config_text({MODEL: 2, "twin": 2})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry serving on a free loopback port (Docker needs no TLS there)."""
    registry = shutil.which("docker-registry")
    if registry is None:
        pytest.fail("no local registry: 'make setup' installs Debian's docker-registry")
    directory = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{_free_port()}"
    config = directory / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {directory / 'data'}\nhttp:\n  addr: {address}\n"
    )
    log = (directory / "registry.log").open("wb")
    process = subprocess.Popen([registry, "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"http://{address}/v2/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log_text = (directory / "registry.log").read_text()
                pytest.fail(f"docker-registry did not start: {log_text}")
            time.sleep(0.2)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.mark.docker
def test_push_to_a_registry_returns_the_digest_it_serves(
    signed_model: Path, keys, local_registry: str, image_tags: list[str]
) -> None:
    tag = new_image_tag(image_tags, "pushed").replace("tfpack-test/", f"{local_registry}/tfpack-test/")
    image_tags[-1] = tag
    result = build_image(signed_model, tag, public_key=keys[1], push=True)
    repository, _, version = tag.rpartition(":")
    assert result.repo_digest is not None and result.repo_digest.startswith(f"{repository}@sha256:")
    manifest = requests.head(
        f"http://{local_registry}/v2/{repository.split('/', 1)[1]}/manifests/{version}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        timeout=30,
    )
    assert manifest.status_code == 200
    assert manifest.headers["Docker-Content-Digest"] == result.repo_digest.split("@")[1]
    assert result.to_json()["pushed"] is True


@pytest.mark.docker
def test_push_to_an_unreachable_registry_is_a_usage_error(signed_model: Path, keys, image_tags: list[str]) -> None:
    tag = f"127.0.0.1:{_free_port()}/tfpack-test/unreachable:{uuid.uuid4().hex[:10]}"
    image_tags.append(tag)
    with pytest.raises(UsageError, match=r"push of .* failed"):
        build_image(signed_model, tag, public_key=keys[1], push=True)


@pytest.mark.docker
def test_allow_unsigned_is_recorded_and_lets_an_unsigned_model_start(
    client: docker.DockerClient,
    unsigned_model: Path,
    stand_in_tf_serving: str,
    image_tags: list[str],
) -> None:
    result = build_image(
        unsigned_model,
        new_image_tag(image_tags, "unsigned"),
        base=stand_in_tf_serving,
        allow_unsigned=True,
    )
    assert result.labels["dev.tfpack.allow-unsigned"] == "true"
    assert not any(key.endswith(".digest") for key in result.labels)
    assert result.serving is not None and result.serving.allow_unsigned
    assert result.serving.trust == "none"
    env = client.images.get(result.tag).attrs["Config"]["Env"]
    assert not [item for item in env if item.startswith("TFPACK_")]
    container = _run(client, result.tag)
    try:
        exit_code, logs = _wait_for_exit(container)
    finally:
        container.remove(force=True)
    assert exit_code == 0, logs
    assert f"warning: /models/{MODEL}/1 is unsigned" in logs
    assert "--model_config_file=/etc/tfpack/models.config" in logs


@pytest.mark.docker
def test_a_failing_docker_build_is_exit_2_in_one_line(
    client: docker.DockerClient,
    signed_model: Path,
    keys,
    image_tags: list[str],
    tfpack_cli,
) -> None:
    """A base without a model server (the bare bootstrapped rootfs) fails the build: the machine's
    setup, not tfpack, needs fixing, so exit 2 with the step that failed, not exit 1."""
    base = _runtime_base.ensure_rootfs_image(client, SILENT)
    tag = new_image_tag(image_tags, "never-built")
    result = tfpack_cli("build", signed_model, "--tag", tag, "--base", base, "--public-key", keys[1])
    assert result.exit_code == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("tfpack: error:")]
    assert len(error) == 1 and f"docker build of {tag} failed at Step" in error[0], result.stderr
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(tag)
