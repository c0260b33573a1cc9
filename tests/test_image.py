"""`tfpack build` and the verify-then-serve entrypoint, against real TensorFlow, Docker and gRPC.

The docker tests build the embedded base on first use (cached afterwards under ~/.cache/tfpack
and as the image tfpack-runtime:KEY), one serving image per module, and a few images derived from
it; every image and container they create is removed again. The images are assembled by tfpack
(packager.image_assembly): the tests at the end check what that buys on a real engine: the same
image ID after `docker rmi` and a pruned build cache, a model-only rebuild that sends one layer,
two models with two versions and labels each answering, and a HEALTHCHECK that waits for them.
(Pushing to a registry: tests/test_image_registry.py.)
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from packager import _runtime_base, _runtime_wheel, _serving_base
from packager.errors import UsageError, VerificationError
from packager.image import (
    EMBEDDED_MODEL_SERVER,
    ENTRYPOINT,
    HEALTHCHECK,
    TF_SERVING_MODEL_SERVER,
    BuildResult,
    build_image,
    find_models,
    image_layers,
    verify_signatures,
)
from packager.image_assembly import rfc3339
from packager.layout import SIGNATURE_FILE
from packager.progress import SILENT
from packager.signing import sign, signed_digest
from serving.entrypoint import BakedServing, ImageLayout, main, model_config_text, prepare, verify_models

MODEL = "half"
DIGEST = "sha256:" + "0" * 64  # a signed digest a build records (any will do where nothing is verified)
VARIABLES_FILE = "variables/variables.data-00000-of-00001"
SERVER_START_DEADLINE_S = 180
EXIT_DEADLINE_S = 120


# --- models and keys ------------------------------------------------------------------------


class _HalfPlusTwo(tf.Module):
    """y = 0.5 * x + 2, TF Serving's classic test model, in TF2 form (another offset tells
    versions apart)."""

    def __init__(self, offset: float = 2.0) -> None:
        super().__init__()
        self.slope = tf.Variable(0.5)
        self.offset = tf.Variable(offset)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self.slope * x + self.offset}


def _write_model(version_dir: Path, offset: float = 2.0) -> Path:
    module = _HalfPlusTwo(offset)
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


def test_model_config_pins_each_model_to_every_version_it_serves() -> None:
    baked = BakedServing(
        model_server=TF_SERVING_MODEL_SERVER,
        models={MODEL: [2], "twin": [3, 7]},
        trust="public_key",
        digests={MODEL: {"2": DIGEST}, "twin": {"3": DIGEST, "7": DIGEST}},
    )
    config = text_format.Parse(model_config_text(baked), model_server_config_pb2.ModelServerConfig())
    assert [
        (c.name, c.base_path, c.model_platform, list(c.model_version_policy.specific.versions))
        for c in config.model_config_list.config
    ] == [(MODEL, "/models/half", "tensorflow", [2]), ("twin", "/models/twin", "tensorflow", [3, 7])]


def _layer_archives(two_models: Path, public_pem: bytes, serving: BakedServing) -> dict[str, bytes]:
    models = find_models(two_models)
    return {
        layer.description: b"".join(layer.chunks())
        for layer in image_layers(models, serving, public_key_pem=public_pem)
    }


def _tar_members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {member.name: member for member in tar.getmembers()}


def _read_member(archive: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        handle = tar.extractfile(name)
        assert handle is not None, name
        return handle.read()


def test_image_layers_hold_models_public_key_and_code_but_no_private_key(two_models: Path, keys) -> None:
    """What tfpack build writes over the serving base (the Dockerfile only makes that base)."""
    public_pem = keys[1].read_bytes()
    digests = {
        name: {version: signed_digest(two_models / name / version) for version in ("1", "2")}
        for name in (MODEL, "twin")
    }
    serving = BakedServing(model_server=EMBEDDED_MODEL_SERVER, models={MODEL: [1, 2], "twin": [1, 2]}, digests=digests)
    layers = _layer_archives(two_models, public_pem, serving)
    members = {description: _tar_members(data) for description, data in layers.items()}

    dockerfile = _serving_base.DOCKERFILE.read_text()
    assert "ARG BASE=tensorflow/serving:2.21.0\nFROM ${BASE}" in dockerfile
    assert not [line for line in dockerfile.splitlines() if "TFPACK_" in line and not line.startswith("#")]
    assert "tfpack.pth" in dockerfile and "useradd --uid 10001" in dockerfile
    # What the Dockerfile used to say is now the assembled config's: user and entrypoint.
    assert _serving_base.SERVER_USER == "10001:10001"
    assert ENTRYPOINT == ("/opt/tfpack/venv/bin/python", "-I", "-m", "serving.entrypoint")

    for name in (MODEL, "twin"):
        model_layer = members[f"model {name} (versions 1,2) in /models/{name}"]
        for version in ("1", "2"):
            assert f"models/{name}/{version}/{SIGNATURE_FILE}" in model_layer
    assert "models/models.config" not in {name for layer in members.values() for name in layer}
    etc = layers["/etc/tfpack"]
    assert _read_member(etc, "etc/tfpack/models.config").decode() == model_config_text(serving)
    baked = BakedServing.loads(_read_member(etc, "etc/tfpack/serving.json").decode())
    assert baked.models == {MODEL: [1, 2], "twin": [1, 2]}
    assert (baked.trust, baked.allow_unsigned, baked.allow_reload_config) == ("public_key", False, False)
    assert _read_member(etc, "etc/tfpack/trust/public_key.pem") == public_pem
    for name, member in members["/etc/tfpack"].items():
        assert (member.uid, member.gid) == (0, 0), name
        assert member.mode == (0o755 if member.isdir() else 0o644), name
    code = members["tfpack 0.1.0 in /opt/tfpack/lib"]
    assert "opt/tfpack/lib/serving/entrypoint.py" in code and "opt/tfpack/venv/bin/tfpack-model-server" in code
    for description, data in layers.items():
        if not description.startswith("tfpack "):  # tfpack's code names PEM headers in its key checks
            assert b"PRIVATE KEY" not in data, description
    assert keys[0].read_bytes() not in b"".join(layers.values())


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
        "--max_num_load_retries=0",
        "--enable_batching",
    ]

    (models / "twin" / "1" / SIGNATURE_FILE).unlink()
    with pytest.raises(VerificationError, match="twin/1 is unsigned"):
        verify_models(layout, baked)
    # Built with allow-unsigned from twin/1 unsigned: its build recorded no digest for it.
    digests = {**baked.digests, "twin": {"2": baked.digests["twin"]["2"]}}
    allowing = BakedServing.loads(json.dumps({**baked.to_json(), "allow_unsigned": True, "digests": digests}))
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
    for key in ("title", "version", "created", "base.name", "base.digest", "revision"):
        assert labels[f"org.opencontainers.image.{key}"]
    # The image's one time (its newest model file's, SOURCE_DATE_EPOCH unset), not the build's.
    newest = max(int(path.stat().st_mtime) for path in signed_model.rglob("*") if path.is_file())
    assert labels["org.opencontainers.image.created"] == embedded_image.created == rfc3339(newest)
    assert client.images.get(embedded_image.tag).attrs["Created"].startswith(embedded_image.created[:-1])
    base = client.images.get(embedded_image.base).attrs
    assert labels["org.opencontainers.image.base.digest"] in [
        base["Id"],
        *(d.split("@")[1] for d in base["RepoDigests"]),
    ]
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
    assert not config["Cmd"]
    assert config["Healthcheck"] == {
        "Test": ["CMD", "/opt/tfpack/venv/bin/python", "-I", "-m", "serving.healthcheck"],
        "Interval": HEALTHCHECK.interval_s * 10**9,
        "Timeout": HEALTHCHECK.timeout_s * 10**9,
        "StartPeriod": HEALTHCHECK.start_period_s * 10**9,
        "Retries": HEALTHCHECK.retries,
    }
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
    image_tags.append(result.serving_base)  # built from the Dockerfile for this stand-in only
    assert result.serving_base.startswith(f"{_serving_base.REPOSITORY}:")
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
        "--max_num_load_retries=0 "
        "--tensorflow_session_config_file=/etc/tfpack/session_config.pbtxt --enable_batching"
    ) in logs
    assert "--tfpack_" not in logs  # tensorflow_model_server has no such flags
    assert "always answers ModelService.HandleReloadConfigRequest" in logs
    assert result.labels["dev.tfpack.reload-config"] == "unguarded"
    served_config = client.containers.run(
        result.tag, entrypoint=["cat", "/etc/tfpack/models.config"], remove=True
    ).decode()
    assert result.serving is not None and served_config == model_config_text(result.serving)


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
    image_tags.append(result.serving_base)  # built from the Dockerfile for this stand-in only
    assert result.labels["dev.tfpack.allow-unsigned"] == "true"
    # No model digest: nothing was signed (the base's digest is still named).
    assert not any(key.startswith("dev.tfpack.model.") and key.endswith(".digest") for key in result.labels)
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


# --- issue 13: assembled images: reproducible, rebuilt per model, labelled, healthy -------------------

# Each version answers y = 0.5 * x + OFFSET: the offset says which model and version answered.
OFFSETS = {(MODEL, 1): 1.0, (MODEL, 2): 2.0, ("twin", 1): 11.0, ("twin", 2): 12.0}
VERSION_LABELS = {MODEL: {"stable": 1}, "twin": {"stable": 2, "canary": 1}}
AVAILABLE_STATE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


@pytest.fixture(scope="module")
def frozen_tfpack() -> Iterator[None]:
    """tfpack's own files read once for the module: the code layer is an input like the models,
    and these tests build the same inputs twice (someone editing the checkout meanwhile must not
    make them differ)."""
    files = _runtime_wheel.runtime_files()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_runtime_wheel, "runtime_files", lambda: files)
        yield


@pytest.fixture(scope="module")
def versioned_models(tmp_path_factory: pytest.TempPathFactory, keys) -> Path:
    """Two models with two signed versions each, every version a different function (OFFSETS)."""
    root = tmp_path_factory.mktemp("versioned") / "models"
    for (name, version), offset in OFFSETS.items():
        sign(_write_model(root / name / str(version), offset), keys[0])
    return root


BATCHING_PARAMETERS = "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 1000 }\n"


@pytest.fixture(scope="module")
def labelled_image(
    tmp_path_factory: pytest.TempPathFactory, versioned_models: Path, keys, image_tags: list[str], frozen_tfpack: None
) -> BuildResult:
    """Both models with labels, Prometheus monitoring and server-side batching."""
    batching = tmp_path_factory.mktemp("batching") / "batching.pbtxt"
    batching.write_text(BATCHING_PARAMETERS)
    return build_image(
        versioned_models,
        new_image_tag(image_tags, "labelled"),
        public_key=keys[1],
        version_labels=VERSION_LABELS,
        monitoring=True,
        batching=batching,
    )


@dataclass
class HealthTimeline:
    """What `docker inspect` said about the container's health while its models loaded."""

    started: float
    available_at: float | None = None  # when every version of every model first answered AVAILABLE
    healthy_at: float | None = None
    samples: list[tuple[float, str, bool]] = field(default_factory=list)  # (time, health, all AVAILABLE)


def _all_available(channel: grpc.Channel) -> bool:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    for name in (MODEL, "twin"):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            reply = stub.GetModelStatus(request, timeout=5)
        except grpc.RpcError:
            return False
        states = {s.version: s.state for s in reply.model_version_status}
        if states != {1: AVAILABLE_STATE, 2: AVAILABLE_STATE}:
            return False
    return True


@pytest.fixture(scope="module")
def labelled_served(client: docker.DockerClient, labelled_image: BuildResult) -> Iterator[tuple]:
    """The labelled image running: (container, gRPC channel, REST port, its health timeline),
    once every model is AVAILABLE and the HEALTHCHECK has said healthy."""
    container = _run(client, labelled_image.tag)
    try:
        container.reload()
        channel = grpc.insecure_channel(f"127.0.0.1:{container.ports['8500/tcp'][0]['HostPort']}")
        timeline = HealthTimeline(started=time.monotonic())
        deadline = timeline.started + SERVER_START_DEADLINE_S + HEALTHCHECK.interval_s * 2
        while timeline.healthy_at is None:
            container.reload()
            if container.status == "exited":
                pytest.fail(f"the server exited: {container.logs().decode(errors='replace')}")
            health = container.attrs["State"]["Health"]["Status"]
            available = _all_available(channel)
            now = time.monotonic()
            timeline.samples.append((now, health, available))
            if available and timeline.available_at is None:
                timeline.available_at = now
            if health == "healthy":
                timeline.healthy_at = now
            if now > deadline:
                pytest.fail(f"not healthy in time: {timeline} {container.attrs['State']['Health']}")
            time.sleep(0.5)
        yield container, channel, int(container.ports["8501/tcp"][0]["HostPort"]), timeline
        channel.close()
    finally:
        container.remove(force=True)


def _predict_version(
    channel: grpc.Channel, name: str, *, version: int | None = None, label: str = ""
) -> tuple[float, int]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([4.0], np.float32)))
    reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return float(tf.make_ndarray(reply.outputs["y"])[0]), reply.model_spec.version.value


@pytest.mark.docker
def test_two_models_serve_every_version_and_every_label(labelled_served, labelled_image: BuildResult) -> None:
    _, channel, rest_port, _ = labelled_served
    rest = f"http://127.0.0.1:{rest_port}/v1/models"
    for (name, version), offset in OFFSETS.items():
        assert _predict_version(channel, name, version=version) == (2.0 + offset, version)
        reply = requests.post(f"{rest}/{name}/versions/{version}:predict", json={"instances": [4.0]}, timeout=30)
        assert reply.status_code == 200 and reply.json()["predictions"] == [2.0 + offset], reply.text
    for name, labels in VERSION_LABELS.items():
        for label, version in labels.items():
            assert _predict_version(channel, name, label=label) == (2.0 + OFFSETS[name, version], version)
            reply = requests.post(f"{rest}/{name}/labels/{label}:predict", json={"instances": [4.0]}, timeout=30)
            assert reply.json()["predictions"] == [2.0 + OFFSETS[name, version]], reply.text
    # No version given: the highest, as TF Serving answers.
    assert _predict_version(channel, MODEL) == (4.0, 2)
    assert labelled_image.serving is not None and labelled_image.serving.labels == VERSION_LABELS
    assert labelled_image.labels["dev.tfpack.model.twin.label.canary"] == "1"
    assert labelled_image.labels["dev.tfpack.model.twin.label.stable"] == "2"
    assert labelled_image.labels["dev.tfpack.model.half.label.stable"] == "1"


@pytest.mark.docker
def test_monitoring_and_batching_are_baked_into_the_servers_flags(
    client: docker.DockerClient, labelled_served, labelled_image: BuildResult
) -> None:
    container, _, rest_port, _ = labelled_served
    exec_line = next(line for line in container.logs().decode().splitlines() if "tfpack-entrypoint: exec " in line)
    for flag in (
        "--monitoring_config_file=/etc/tfpack/monitoring.config",
        "--enable_batching",
        "--batching_parameters_file=/etc/tfpack/batching.config",
    ):
        assert f" {flag}" in exec_line, exec_line
    metrics = requests.get(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=30)
    assert metrics.status_code == 200 and ":tensorflow:" in metrics.text, metrics.text[:500]
    baked = client.containers.run(labelled_image.tag, entrypoint=["cat", "/etc/tfpack/batching.config"], remove=True)
    assert baked.decode() == BATCHING_PARAMETERS
    assert labelled_image.labels["dev.tfpack.monitoring"] == "/monitoring/prometheus/metrics"
    assert labelled_image.labels["dev.tfpack.batching"] == "true"


@pytest.mark.docker
def test_the_healthcheck_turns_healthy_only_once_every_model_is_available(
    client: docker.DockerClient, labelled_served
) -> None:
    container, _, _, timeline = labelled_served
    assert timeline.available_at is not None and timeline.healthy_at is not None
    # Healthy never while a model was not AVAILABLE, and first seen starting, not healthy.
    assert [health for _, health, available in timeline.samples if not available and health == "healthy"] == []
    assert timeline.samples[0][1] == "starting"
    assert timeline.healthy_at >= timeline.available_at
    # Each probe says why: a failing one before the models loaded, a passing one naming them all.
    container.reload()
    probes = container.attrs["State"]["Health"]["Log"]
    passing = [probe for probe in probes if probe["ExitCode"] == 0]
    assert passing and all("half v1,2" in p["Output"] and "twin v1,2" in p["Output"] for p in passing), probes
    assert all(probe["ExitCode"] == 1 for probe in probes[: probes.index(passing[0])]), probes


@pytest.mark.docker
def test_the_same_inputs_give_the_same_image_id_after_rmi_and_a_pruned_build_cache(
    client: docker.DockerClient,
    versioned_models: Path,
    keys,
    image_tags: list[str],
    frozen_tfpack: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tag = new_image_tag(image_tags, "reproducible")
    first = build_image(versioned_models, tag, public_key=keys[1], version_labels=VERSION_LABELS)
    assert client.images.get(tag).id == first.image_id
    client.images.remove(tag)
    pruned = subprocess.run(["docker", "builder", "prune", "-af"], capture_output=True, text=True, timeout=300)
    assert pruned.returncode == 0, pruned.stderr
    second = build_image(versioned_models, tag, public_key=keys[1], version_labels=VERSION_LABELS)
    assert (second.image_id, second.layers, second.labels) == (first.image_id, first.layers, first.labels)
    assert client.images.get(tag).id == first.image_id

    # SOURCE_DATE_EPOCH fixes every time: touching the model files then changes nothing.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    pinned = build_image(versioned_models, tag, public_key=keys[1], version_labels=VERSION_LABELS)
    for path in versioned_models.rglob("*"):
        os.utime(path)
    assert build_image(versioned_models, tag, public_key=keys[1], version_labels=VERSION_LABELS).image_id == (
        pinned.image_id
    )
    attrs = client.images.get(tag).attrs
    assert attrs["Created"].startswith("2023-11-14T22:13:20")
    assert attrs["Config"]["Labels"]["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    image_tags.append(first.image_id)  # now untagged: removed with the module's images


@pytest.mark.docker
def test_a_change_of_one_model_rewrites_only_its_layer_in_seconds(
    client: docker.DockerClient,
    tmp_path: Path,
    versioned_models: Path,
    keys,
    image_tags: list[str],
    frozen_tfpack: None,
) -> None:
    models = tmp_path / "models"
    shutil.copytree(versioned_models, models)
    tag = new_image_tag(image_tags, "rebuilt")
    before = build_image(models, tag, public_key=keys[1])
    image_tags.append(before.image_id)  # untagged by the rebuild: removed with the module's images

    shutil.rmtree(models / "twin" / "2")
    sign(_write_model(models / "twin" / "2", offset=99.0), keys[0])
    started = time.monotonic()
    after = build_image(models, tag, public_key=keys[1])
    elapsed = time.monotonic() - started

    # The code and half are the same layers; /etc/tfpack (serving.json records twin/2's new signed
    # digest) and twin's are new, and only the layers from /etc/tfpack up were sent.
    assert after.layers[0] == before.layers[0] and after.layers[2] == before.layers[2]
    assert after.layers[1] != before.layers[1] and after.layers[3] != before.layers[3]
    assert after.loaded_layers == 3
    assert elapsed < 20, f"the model-only rebuild took {elapsed:.1f} s"
    base_layers = client.images.get(after.serving_base).attrs["RootFS"]["Layers"]
    assert client.images.get(tag).attrs["RootFS"]["Layers"] == [*base_layers, *after.layers]
    # docker history (newest first): one new step on top of the same ones.
    history_before = [(step["CreatedBy"], step["Size"]) for step in client.api.history(before.image_id)]
    history_after = [(step["CreatedBy"], step["Size"]) for step in client.api.history(after.image_id)]
    assert history_after[1:] == history_before[1:]
    assert history_after[0][0] == "model twin (versions 1,2) in /models/twin"
    assert [created_by for created_by, _ in history_after[1:4]] == [
        "model half (versions 1,2) in /models/half",
        "/etc/tfpack",
        "tfpack 0.1.0 in /opt/tfpack/lib",
    ]


@pytest.mark.docker
def test_the_healthcheck_fails_while_the_ports_answer_but_a_model_is_gone(
    client: docker.DockerClient, versioned_models: Path, keys, image_tags: list[str], frozen_tfpack: None
) -> None:
    """Not an open port: a server that answers but no longer serves a baked model is unhealthy.

    The image allows verified config reloads, which is how a model is unloaded here (such an
    image is healthy with one AVAILABLE version per model: reloads may change the versions).
    """
    result = build_image(
        versioned_models, new_image_tag(image_tags, "reloadable"), public_key=keys[1], allow_reload_config=True
    )
    assert result.serving is not None
    container = _run(client, result.tag)
    probe_command = list(HEALTHCHECK.test[1:])
    try:
        container.reload()
        with grpc.insecure_channel(f"127.0.0.1:{container.ports['8500/tcp'][0]['HostPort']}") as channel:
            deadline = time.monotonic() + SERVER_START_DEADLINE_S
            while not _all_available(channel):
                container.reload()
                assert container.status != "exited", container.logs().decode(errors="replace")
                assert time.monotonic() < deadline, container.logs().decode(errors="replace")
                time.sleep(0.5)
            ready = container.exec_run(probe_command)
            assert ready.exit_code == 0, ready.output

            config = model_server_config_pb2.ModelServerConfig()
            model = config.model_config_list.config.add(
                name=MODEL, base_path=f"/models/{MODEL}", model_platform="tensorflow"
            )
            model.model_version_policy.specific.versions.extend([1, 2])
            request = model_management_pb2.ReloadConfigRequest(config=config)
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=120)
            deadline = time.monotonic() + EXIT_DEADLINE_S
            while _all_available(channel):  # the unload may finish after the reply
                assert time.monotonic() < deadline, "twin was never unloaded"
                time.sleep(0.2)

            unready = container.exec_run(probe_command)
            assert unready.exit_code == 1, unready.output
            assert "twin" in unready.output.decode(), unready.output
            # The ports still answer, and the other model still serves.
            assert _predict_version(channel, MODEL, version=1) == (2.0 + OFFSETS[MODEL, 1], 1)
    finally:
        container.remove(force=True)


@pytest.mark.docker
def test_an_embedded_base_without_the_tfpack_user_and_path_gets_them_from_the_dockerfile(
    client: docker.DockerClient, embedded_image: BuildResult, image_tags: list[str]
) -> None:
    """A runtime base built before it held the user 10001 and tfpack.pth: the Dockerfile adds
    them, once (the serving base is cached), and nothing else (the code layer brings the server)."""
    assert embedded_image.serving_base == embedded_image.base  # today's base holds them itself
    older = new_image_tag(image_tags, "older-runtime")
    dockerfile = f"FROM {embedded_image.base}\nUSER root\nRUN rm {_serving_base.EMBEDDED_PTH} && userdel tfpack\n"
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=older, rm=True, forcerm=True)

    def ensure() -> str:
        return _serving_base.ensure_serving_base(
            client, older, model_server_path=None, building_for="tfpack-test/x:1", progress=SILENT
        )

    serving_base = ensure()
    image_tags.append(serving_base)
    assert serving_base.startswith(f"{_serving_base.REPOSITORY}:") and ensure() == serving_base
    probe = client.containers.run(
        serving_base,
        entrypoint=["sh", "-c", f"cat {_serving_base.EMBEDDED_PTH}; id -u tfpack; id -g tfpack"],
        remove=True,
    )
    assert probe.decode().split() == ["/opt/tfpack/lib", "10001", "10001"]
