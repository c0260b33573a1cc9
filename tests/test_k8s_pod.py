"""Issue 14: the pod `tfpack k8s` renders, run exactly as written and probed as a kubelet would.

No cluster runs here: tests/kubelet.py runs the rendered Deployment's pod spec with the Docker
engine (image, command, args, env, ports, user, read-only root, /tmp as tmpfs, volumes, the
initContainer first) and runs its startup, readiness and liveness probes with the kubelet's
semantics, on a clock 5x fast (TIME_SCALE). Proven here:

* a model whose first load is slow keeps the pod not ready (its gating probes fail) for as long
  as the version loads, liveness never kills it although the load outlasts liveness's whole
  failure window, and the pod is ready only once ModelService.GetModelStatus (asked independently
  through the published gRPC port) says AVAILABLE; then Predict answers through the Service's
  grpc target port, and REST predict through its http target port;
* with the models on a volume (the claim), the verifier initContainer runs first and copies the
  served versions into an emptyDir, verified; the model server mounts that copy read-only and never
  the claim: a claim tampered while the pod runs changes nothing, even across a restart of the
  server; a tampered claim, or one whose version dir is a symlink, stops the pod (exit 3) before
  the model server container is ever created.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import new_image_tag
from factories.slow_model import expected_output, write_slow_model
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from packager.image import build_image
from packager.k8s import kubernetes_name, render_manifests
from packager.layout import MODELS_ROOT
from tests.kubelet import InitContainerFailed, Pod, containers_created, find_object, kustomize, run_pod

pytestmark = pytest.mark.docker

MODEL = "slow"
NAME = kubernetes_name(MODEL)
CONTAINER = "model-server"
# The kubelet's clock runs 5x fast: probe periods and initial delays are scaled, timeouts are not.
TIME_SCALE = 0.2
# How long the slow model's version takes to load (its warmup busy-waits this long). It must
# outlast liveness's whole failure window at TIME_SCALE (periodSeconds * failureThreshold * 0.2)
# with a margin: test_slow_load... checks that against the rendered probe.
LOAD_SECONDS = 30.0
LIVENESS_MARGIN = 2.0
READY_DEADLINE_S = LOAD_SECONDS + 300  # the server's start in a 2-CPU container, then the load
INPUTS = np.array([1.0, 2.0, 5.0], dtype=np.float32)


def render(image: str, output_dir: Path, **options: Any) -> list[dict[str, Any]]:
    """Render the manifests for IMAGE and build the tree (the one place this test renders).

    The images here are built locally and never pushed, so they have no registry digest to pin.
    """
    render_manifests(image, MODEL, output_dir, allow_tag=True, **options)
    return kustomize(output_dir)


# --- models and images ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_models(tmp_path_factory: pytest.TempPathFactory, signing_keys: dict[str, Path]) -> Path:
    """A models root holding slow/1, signed, loading for LOAD_SECONDS."""
    root = tmp_path_factory.mktemp("slow-models")
    root.chmod(0o755)
    write_slow_model(root / MODEL / "1", LOAD_SECONDS, signing_keys["private"])
    (root / MODEL).chmod(0o755)
    return root


@pytest.fixture(scope="module")
def quick_models(tmp_path_factory: pytest.TempPathFactory, signing_keys: dict[str, Path]) -> Path:
    """The same model, signed, loading at once (for the volume variant)."""
    root = tmp_path_factory.mktemp("quick-models")
    root.chmod(0o755)
    write_slow_model(root / MODEL / "1", 0.0, signing_keys["private"])
    (root / MODEL).chmod(0o755)
    return root


@pytest.fixture(scope="module")
def slow_image(slow_models: Path, signing_keys: dict[str, Path], image_tags: list[str]) -> str:
    tag = new_image_tag(image_tags, MODEL)
    build_image(slow_models / MODEL, tag, public_key=signing_keys["public"])
    return tag


# --- clients --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusPoll:
    """One GetModelStatus call: when it was sent and answered, and whether every version was AVAILABLE."""

    sent: float
    answered: float
    available: bool
    detail: str


@pytest.fixture
def status_polls(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Start polling GetModelStatus on a pod's published gRPC port: ``start(pod) -> list[StatusPoll]``."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(pod: Pod) -> list[StatusPoll]:
        polls: list[StatusPoll] = []
        target = f"127.0.0.1:{pod.host_port(CONTAINER, 8500)}"

        def poll() -> None:
            while not stop.wait(0.25):
                sent = time.monotonic()
                # A channel per call: one channel would sit in gRPC's reconnect back-off (up to
                # 2 minutes) after the first refused connection and report UNAVAILABLE meanwhile.
                with grpc.insecure_channel(target) as channel:
                    try:
                        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                            get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=MODEL)),
                            timeout=2,
                        )
                        states = [s.state for s in response.model_version_status]
                        available = bool(states) and all(
                            s == get_model_status_pb2.ModelVersionStatus.State.AVAILABLE for s in states
                        )
                        detail = str(states)
                    except grpc.RpcError as error:
                        available, detail = False, error.code().name
                polls.append(StatusPoll(sent, time.monotonic(), available, detail))

        thread = threading.Thread(target=poll, daemon=True)
        threads.append(thread)
        thread.start()
        return polls

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=10)


def grpc_predict(host: str, port: int, x: np.ndarray) -> np.ndarray:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=MODEL, signature_name="serving_default"))
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    return np.asarray(tf.make_ndarray(response.outputs["y"]))


def rest_predict(host: str, port: int, x: np.ndarray) -> np.ndarray:
    body = json.dumps({"instances": x.tolist()}).encode()
    request = urllib.request.Request(
        f"http://{host}:{port}/v1/models/{MODEL}:predict", data=body, headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)


def first_event(pod: Pod, what: str) -> float:
    times = [event.time for event in pod.events if event.what == what]
    assert times, f"no {what!r} event\n{pod.describe()}"
    return times[0]


def tampered_copy(version_dir: Path, destination: Path) -> Path:
    """A copy of ``version_dir`` with one bit of its variables flipped: its signature no longer holds."""
    shutil.copytree(version_dir, destination)
    variables = next((destination / "variables").glob("variables.data-*"))
    data = bytearray(variables.read_bytes())
    data[-1] ^= 1
    variables.write_bytes(bytes(data))
    return destination


def model_server(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = find_object(objects, "Deployment", NAME)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == CONTAINER)


# --- the tests ------------------------------------------------------------------------------------


def test_slow_load_keeps_the_pod_unready_and_alive_then_it_serves_through_the_service(
    docker_client: Any, slow_image: str, tmp_path: Path, status_polls: Any
) -> None:
    objects = render(slow_image, tmp_path / "k8s")
    cpu = kustomize(tmp_path / "k8s" / "overlays" / "cpu")
    assert [(o["kind"], o["metadata"]["name"]) for o in cpu] == [(o["kind"], o["metadata"]["name"]) for o in objects]
    liveness = model_server(objects)["livenessProbe"]
    liveness_window_s = liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3) * TIME_SCALE
    assert LIVENESS_MARGIN * liveness_window_s < LOAD_SECONDS, "the load must outlast liveness's failure window"
    service = find_object(objects, "Service", NAME)
    template = find_object(cpu, "Deployment", NAME)["spec"]["template"]
    spread = template["spec"].get("topologySpreadConstraints")
    assert spread, "replicas are spread over nodes"

    with run_pod(docker_client, cpu, NAME, time_scale=TIME_SCALE) as pod:
        # The runner checked each constraint (tests/kubelet.py check_spread_constraints): each one
        # selects this pod's own labels, so the scheduler would count and spread these replicas.
        assert all(c["labelSelector"]["matchLabels"].items() <= pod.plan.labels.items() for c in spread), spread
        polls = status_polls(pod)
        pod.wait_ready(timeout=READY_DEADLINE_S)
        ready_at = first_event(pod, "ready")
        started_at = first_event(pod, "container started")

        # Not ready while the version loaded: the probes that gate readiness failed meanwhile,
        # and no GetModelStatus that found the model not AVAILABLE was sent after the pod was ready.
        gating_failures = [
            e for e in pod.events if e.what in ("startupProbe failure", "readinessProbe failure") and e.time < ready_at
        ]
        assert gating_failures, pod.describe()
        not_available = [p for p in polls if not p.available]
        available = [p for p in polls if p.available]
        assert not_available and available, (polls, pod.describe())
        assert max(p.sent for p in not_available) < ready_at, (not_available[-1], pod.describe())
        assert ready_at - started_at >= LOAD_SECONDS, pod.describe()

        grpc_host, grpc_port = pod.service_endpoint(service, "grpc")
        began = time.monotonic()
        np.testing.assert_allclose(grpc_predict(grpc_host, grpc_port, INPUTS), expected_output(INPUTS))
        assert time.monotonic() - began < 5, "served fast once loaded"
        rest_host, rest_port = pod.service_endpoint(service, "http")
        np.testing.assert_allclose(rest_predict(rest_host, rest_port, INPUTS), expected_output(INPUTS))

        # Liveness runs once the pod started (and passes); it never killed the slow load.
        deadline = time.monotonic() + 60
        while not any(e.what == "livenessProbe success" for e in pod.events) and time.monotonic() < deadline:
            time.sleep(0.5)
        whats = [e.what for e in pod.events]
        assert "livenessProbe success" in whats, pod.describe()
        assert "livenessProbe failure" not in whats and "restart" not in whats and "exited" not in whats
        assert pod.restarts == {CONTAINER: 0}, pod.describe()

        # Terminating: the preStop pause runs, then the server stops on SIGTERM within the grace period.
        pod.stop()
        stops = [e for e in pod.events if e.what in ("preStop", "stopped")]
        assert [e.what for e in stops] == ["preStop", "stopped"], pod.describe()
        assert not stops[0].detail.startswith("failed"), stops
        assert stops[1].detail == "exit 0", pod.describe()


def test_volume_variant_serves_a_verified_copy_and_never_reads_the_claim(
    docker_client: Any, quick_models: Path, signing_keys: dict[str, Path], image_tags: list[str], tmp_path: Path
) -> None:
    tag = new_image_tag(image_tags, f"{MODEL}-volume")
    build_image(quick_models / MODEL, tag, public_key=signing_keys["public"], models_from_volume=True)
    claim = tmp_path / "claim"
    shutil.copytree(quick_models, claim)
    claim.chmod(0o755)
    objects = render(tag, tmp_path / "k8s", models_from_volume="models")
    pod_spec = find_object(objects, "Deployment", NAME)["spec"]["template"]["spec"]
    (verifier,) = [c["name"] for c in pod_spec["initContainers"]]
    service = find_object(objects, "Service", NAME)

    since = time.time()
    with run_pod(docker_client, objects, NAME, claims={"models": claim}, time_scale=TIME_SCALE) as pod:
        pod.wait_ready(timeout=READY_DEADLINE_S)
        # The verifier ran first, to completion, and only then the model server started.
        timeline = [(e.container, e.what, e.detail) for e in pod.events if e.what in ("container started", "exited")]
        assert timeline[:3] == [
            (verifier, "container started", "init"),
            (verifier, "exited", "exit 0"),
            (CONTAINER, "container started", "generation 1"),
        ], pod.describe()
        host, port = pod.service_endpoint(service, "grpc")
        np.testing.assert_allclose(grpc_predict(host, port, INPUTS), expected_output(INPUTS))
        assert containers_created(docker_client, pod.pod_id, since) == [verifier, CONTAINER]

        # What the engine mounted into the model server: the verified copy, read-only; never the claim.
        mounts = pod.inspect(CONTAINER)["Mounts"]
        assert not any(Path(m["Source"]) == claim or claim in Path(m["Source"]).parents for m in mounts), mounts
        (models,) = [m for m in mounts if m["Destination"] == MODELS_ROOT]
        assert models["RW"] is False, models

        # The claim is tampered under the running pod, and the server restarts (as after a failed
        # liveness probe): it reads and verifies the pod's copy again, not the claim, and serves.
        shutil.rmtree(claim / MODEL / "1")
        tampered_copy(quick_models / MODEL / "1", claim / MODEL / "1")
        pod.restart(CONTAINER, "the claim was tampered")
        pod.wait_ready(timeout=READY_DEADLINE_S)
        host, port = pod.service_endpoint(service, "grpc")  # Docker may publish another port after a restart
        np.testing.assert_allclose(grpc_predict(host, port, INPUTS), expected_output(INPUTS))
        assert pod.restarts == {CONTAINER: 1}, pod.describe()

    # A new pod finds the tampered claim: the verifier refuses it and the server is never created.
    since = time.time()
    with (
        pytest.raises(InitContainerFailed) as excinfo,
        run_pod(docker_client, objects, NAME, claims={"models": claim}, time_scale=TIME_SCALE),
    ):
        pytest.fail("the pod started with a tampered model on its volume")
    assert (excinfo.value.name, excinfo.value.exit_code) == (verifier, 3), excinfo.value.logs
    # The engine's own record: only the verifier was ever created, never the model server.
    assert containers_created(docker_client, excinfo.value.pod_id, since) == [verifier]

    # A version dir that is a symlink (here to an intact signed copy elsewhere on the claim) is
    # refused too: what is verified must be what the path names, now and later.
    shutil.rmtree(claim / MODEL / "1")
    shutil.copytree(quick_models / MODEL / "1", claim / "elsewhere" / "1")
    (claim / "elsewhere").chmod(0o755)
    (claim / MODEL / "1").symlink_to(Path("..") / "elsewhere" / "1")
    since = time.time()
    with (
        pytest.raises(InitContainerFailed) as excinfo,
        run_pod(docker_client, objects, NAME, claims={"models": claim}, time_scale=TIME_SCALE),
    ):
        pytest.fail("the pod started with a symlinked version dir on its volume")
    assert (excinfo.value.name, excinfo.value.exit_code) == (verifier, 3), excinfo.value.logs
    assert containers_created(docker_client, excinfo.value.pod_id, since) == [verifier]
