"""The whole pipeline through the installed CLI, as a release engineer runs it:

convert (no names given) → sign → verify → build (embedded base) → smoke → k8s, for a frozen
GraphDef and a Keras file built here, then the same numbers through the running container, and a
byte flipped inside the image making it refuse to start and `tfpack smoke` exit 4.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import run_tfpack_process
from factories.sources import build_keras3_multi_io, frozen_classifier_reference, write_frozen_classifier, write_keras3

pytestmark = pytest.mark.docker


def tfpack_ok(*args: object, timeout: float = 1500) -> dict:
    result = run_tfpack_process(*[str(a) for a in args], "--json", timeout=timeout)
    assert result.exit_code == 0, f"tfpack {args[0]} failed ({result.exit_code}): {result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, signing_keys, docker_client):
    """Two models converted, signed and built into one image (a dir of models)."""
    root = tmp_path_factory.mktemp("pipeline")
    frozen = write_frozen_classifier(root / "src" / "classifier.pb")
    keras_file = write_keras3(root / "src" / "multi.keras")
    models = root / "models"
    converted = {
        "classifier": tfpack_ok("convert", frozen, "--name", "classifier", "--output-dir", models),
        "multi": tfpack_ok("convert", keras_file, "--name", "multi", "--output-dir", models),
    }
    for result in converted.values():
        tfpack_ok("sign", result["version_dir"], "--key", signing_keys["private"])
        tfpack_ok("verify", result["version_dir"], "--public-key", signing_keys["public"])
    tag = f"tfpack-test/pipeline:{uuid.uuid4().hex[:8]}"
    built = tfpack_ok("build", models, "--tag", tag, "--base", "embedded", "--public-key", signing_keys["public"])
    yield {"root": root, "tag": tag, "converted": converted, "built": built}
    docker_client.images.remove(tag, force=True)


def test_convert_found_the_names_itself(pipeline) -> None:
    classifier, multi = pipeline["converted"]["classifier"], pipeline["converted"]["multi"]
    assert [i["key"] for i in classifier["inputs"]] == ["features"]
    assert [o["key"] for o in classifier["outputs"]] == ["probs"]
    assert [i["key"] for i in multi["inputs"]] == ["features", "extra"]
    assert sorted(o["key"] for o in multi["outputs"]) == ["probs", "score"]


def test_image_records_both_models_and_their_signed_digests(pipeline) -> None:
    labels = pipeline["built"]["labels"]
    assert pipeline["built"]["models"] == {"classifier": [1], "multi": [1]}
    assert labels["dev.tfpack.model.classifier.1.digest"].startswith("sha256:")
    assert labels["dev.tfpack.model.multi.1.digest"].startswith("sha256:")


@pytest.mark.parametrize("model", ["classifier", "multi"])
def test_smoke_passes_for_each_model(model: str, pipeline) -> None:
    report_path = pipeline["root"] / f"smoke-{model}.json"
    junit_path = pipeline["root"] / f"smoke-{model}.xml"
    report = tfpack_ok("smoke", pipeline["tag"], "--model", model, "--report", report_path, "--junit", junit_path)
    assert report["passed"] is True
    assert json.loads(report_path.read_text())["passed"] is True
    assert junit_path.read_text().startswith("<?xml")


@pytest.fixture(scope="module")
def running_container(pipeline, docker_client):
    container = docker_client.containers.run(pipeline["tag"], detach=True, ports={"8500/tcp": ("127.0.0.1", None)})
    try:
        deadline = time.monotonic() + 180
        port = None
        while time.monotonic() < deadline:
            container.reload()
            assert container.status != "exited", container.logs().decode()[-2000:]
            bindings = container.attrs["NetworkSettings"]["Ports"].get("8500/tcp")
            if bindings:
                port = int(bindings[0]["HostPort"])
                try:
                    grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=2)
                    break
                except grpc.FutureTimeoutError:
                    pass
            time.sleep(1)
        assert port is not None, "the container published no gRPC port"
        yield f"127.0.0.1:{port}"
    finally:
        container.remove(force=True)


def _predict(target: str, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from packager.tf_runtime import tensorflow

    tf = tensorflow()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in feeds.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        deadline = time.monotonic() + 120
        while True:  # the port opens after the first load attempt; retry until AVAILABLE
            try:
                response = stub.Predict(request, timeout=30)
                break
            except grpc.RpcError as exc:
                if time.monotonic() > deadline or exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.NOT_FOUND,
                ):
                    raise
                time.sleep(1)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def test_container_serves_the_frozen_graphs_numbers(running_container: str) -> None:
    features = np.linspace(-2, 2, 20, dtype=np.float32).reshape(5, 4)
    outputs = _predict(running_container, "classifier", {"features": features})
    np.testing.assert_allclose(outputs["probs"], frozen_classifier_reference(features), rtol=1e-5, atol=1e-6)


def test_container_serves_the_keras_models_numbers(running_container: str) -> None:
    feeds = {
        "features": np.full((3, 4), 0.25, np.float32),
        "extra": np.linspace(0, 1, 6, dtype=np.float32).reshape(3, 2),
    }
    score, probs = build_keras3_multi_io()([feeds["features"], feeds["extra"]])
    outputs = _predict(running_container, "multi", feeds)
    np.testing.assert_allclose(outputs["score"], np.asarray(score), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["probs"], np.asarray(probs), rtol=1e-5, atol=1e-6)


def test_k8s_manifests_for_the_image(pipeline, tmp_path: Path) -> None:
    result = tfpack_ok(
        "k8s", "--image", pipeline["tag"], "--model", "classifier", "--output-dir", tmp_path / "k8s", "--allow-tag"
    )
    assert result["files"]
    assert (tmp_path / "k8s" / "overlays" / "cpu").is_dir()


def test_flipped_byte_inside_the_image_stops_the_container_and_fails_smoke(pipeline, docker_client) -> None:
    """Tamper with a model file *inside* the image: the entrypoint must refuse to serve it."""
    target = "/models/classifier/1/saved_model.pb"
    container = docker_client.containers.create(pipeline["tag"], entrypoint=["true"])
    tampered_tag = f"{pipeline['tag']}-tampered"
    try:
        archive = b"".join(container.get_archive(target)[0])
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            member = tar.getmember("saved_model.pb")
            data = bytearray(tar.extractfile(member).read())
        data[len(data) // 2] ^= 0x01
        patched = io.BytesIO()
        with tarfile.open(fileobj=patched, mode="w") as tar:
            member.size = len(data)
            tar.addfile(member, io.BytesIO(bytes(data)))
        container.put_archive("/models/classifier/1", patched.getvalue())
        # Keep the image's own entrypoint (the container was created with `true`).
        entrypoint = docker_client.images.get(pipeline["tag"]).attrs["Config"]["Entrypoint"]
        container.commit(*tampered_tag.rsplit(":", 1), changes=[f"ENTRYPOINT {json.dumps(entrypoint)}"])
    finally:
        container.remove(force=True)
    try:
        refused = docker_client.containers.run(tampered_tag, detach=True)
        try:
            exit_code = refused.wait(timeout=180)["StatusCode"]
            logs = refused.logs().decode()
        finally:
            refused.remove(force=True)
        assert exit_code != 0
        assert "saved_model.pb" in logs and "classifier/1" in logs, logs

        smoke = run_tfpack_process("smoke", tampered_tag, "--model", "classifier", "--timeout", "120")
        assert smoke.exit_code == 4, smoke.stderr
        assert "saved_model.pb" in smoke.stdout + smoke.stderr
    finally:
        docker_client.images.remove(tampered_tag, force=True)


def test_certificate_signed_tower_model_builds_and_serves(
    tmp_path_factory: pytest.TempPathFactory, docker_client
) -> None:
    """A merged multi-GPU tower model, signed with a certificate and built with --cert-chain:
    the entrypoint verifies it against the baked chain, and the embedded runtime places the
    towers softly on this CPU-only host (the image's session config)."""
    from factories.pki import make_pki
    from factories.tf1_graphs import write_two_tower

    root = tmp_path_factory.mktemp("towers-pipeline")
    towers = write_two_tower(root / "src")
    pki = make_pki(root / "pki")
    converted = tfpack_ok("convert", towers.prefix, "--name", "towers", "--output-dir", root / "models")
    assert converted["towers"] == "merge"
    tfpack_ok(
        "sign",
        converted["version_dir"],
        "--key",
        pki.leaf_key,
        "--cert",
        pki.leaf,
        "--chain",
        pki.intermediate,
        "--chain",
        pki.root,
    )
    tag = f"tfpack-test/towers:{uuid.uuid4().hex[:8]}"
    try:
        built = tfpack_ok("build", root / "models" / "towers", "--tag", tag, "--cert-chain", pki.root)
        assert "dev.tfpack.cert-chain.sha256" in built["labels"]
        report = tfpack_ok("smoke", tag, "--model", "towers")
        assert report["passed"] is True
        # A public key cannot stand in for the chain: the build refuses the certificate signature.
        other = run_tfpack_process(
            "build", root / "models" / "towers", "--tag", f"{tag}-key", "--public-key", pki.leaf_public_key
        )
        assert other.exit_code == 3, other.stderr
    finally:
        docker_client.images.remove(tag, force=True)
