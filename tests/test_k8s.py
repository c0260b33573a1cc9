"""tfpack k8s: every rendered variant builds with kubectl and is schema-valid, and what the pod
runs (probes, security, resources, spread, ports, canary, models volume) is what it should."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from packager.errors import UsageError
from packager.image_facts import ImageFacts, facts_from_config
from packager.k8s import (
    CANARY_TOLERANCE,
    HEALTH_CHECK,
    MARKER_FILE,
    RUNTIME_BASELINE_MIB,
    STARTUP_BASE_S,
    TMP_MIB,
    VERIFIER,
    canary_replicas,
    kubernetes_name,
    render_from_facts,
)
from packager.layout import CLAIM_DIR, DEPLOYMENT_CONFIG_DIR
from serving.entrypoint import EMBEDDED_SERVER, deployment_model_config_text
from tests.kubelet import kustomize, plan_pod

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

IMAGE = "registry.example.com/ml/half_plus_two@sha256:" + "ab" * 32
CANARY = "registry.example.com/ml/half_plus_two@sha256:" + "cd" * 32
MODEL_BYTES = 300 * 2**20
# The oldest Kubernetes minor still commonly run, and the newest the schema package knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def image_facts(reference: str = IMAGE, **changes: Any) -> ImageFacts:
    """An embedded-base image serving half_plus_two version 1 (300 MiB), as its labels say."""
    facts = ImageFacts(
        reference=reference,
        pinned=True,
        models={"half_plus_two": [1]},
        version_labels={},
        version_bytes={"half_plus_two": {1: MODEL_BYTES}},
        version_towers={},
        model_server=EMBEDDED_SERVER,
        monitoring_path=None,
        uid=10001,
        gid=10001,
    )
    return dataclasses.replace(facts, **changes)


def render_manifests(image: str | ImageFacts, model: str, output_dir: Path, **options: Any) -> Any:
    """render_from_facts with the facts of ``image`` (a reference: the default facts for it)."""
    facts = (
        image
        if isinstance(image, ImageFacts)
        else image_facts(image, models={model: [1]}, version_bytes={model: {1: MODEL_BYTES}})
    )
    return render_from_facts(facts, model, output_dir, **options)


@pytest.fixture(autouse=True, scope="module")
def _kubectl() -> None:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is missing: 'make setup' installs it")


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [obj["kind"] for obj in objects]
    assert len(kinds) == len(set(kinds)), kinds
    return {obj["kind"]: obj for obj in objects}


def deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "Deployment"}


def model_server_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def validate_strictly(objects: list[dict[str, Any]]) -> None:
    for version in KUBERNETES_VERSIONS:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.fixture(scope="module")
def cpu_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("k8s") / "half_plus_two"
    render_manifests(IMAGE, "half_plus_two", output, replicas=3)
    return output


@pytest.fixture(scope="module")
def gpu_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("k8s") / "half_plus_two"
    render_manifests(IMAGE, "half_plus_two", output, gpus=2)
    return output


@pytest.fixture(scope="module")
def canary_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("k8s") / "half_plus_two"
    render_from_facts(
        image_facts(), "half_plus_two", output, replicas=3, canary=image_facts(CANARY), canary_weight=25, gpus=1
    )
    return output


@pytest.fixture(scope="module")
def volume_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("k8s") / "half_plus_two"
    volume_image = image_facts(models_from_volume=True)
    render_from_facts(
        volume_image,
        "half_plus_two",
        output,
        models_from_volume="models-pvc",
        canary=dataclasses.replace(volume_image, reference=CANARY),
        canary_weight=50,
    )
    return output


STABLE_KINDS = [
    "ConfigMap",
    "Deployment",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "Service",
    "ServiceAccount",
]


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu", "."])
@pytest.mark.parametrize("tree", ["cpu_tree", "gpu_tree"])
def test_every_rendered_object_is_schema_valid(tree: str, overlay: str, request: pytest.FixtureRequest) -> None:
    objects = kustomize(request.getfixturevalue(tree) / overlay)
    assert sorted(obj["kind"] for obj in objects) == STABLE_KINDS
    validate_strictly(objects)


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu", "overlays/canary", "."])
@pytest.mark.parametrize("tree", ["canary_tree", "volume_tree"])
def test_canary_and_volume_variants_are_schema_valid(tree: str, overlay: str, request: pytest.FixtureRequest) -> None:
    objects = kustomize(request.getfixturevalue(tree) / overlay)
    canary = overlay in ("overlays/canary", ".")
    assert sorted(obj["kind"] for obj in objects) == sorted(
        STABLE_KINDS + (["ConfigMap", "Deployment"] if canary else [])
    )
    validate_strictly(objects)


def test_root_kustomization_deploys_the_variant_asked_for(cpu_tree: Path, gpu_tree: Path) -> None:
    cpu_limits = model_server_container(kustomize(cpu_tree))["resources"]["limits"]
    gpu_limits = model_server_container(kustomize(gpu_tree))["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu_limits
    assert gpu_limits["nvidia.com/gpu"] == 2


def test_gpu_overlay_requests_gpus_and_tolerates_gpu_nodes(gpu_tree: Path) -> None:
    objects = kustomize(gpu_tree / "overlays/gpu")
    pod = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    resources = model_server_container(objects)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 2
    assert resources["requests"]["nvidia.com/gpu"] == 2
    # The base's CPU and memory bounds survive the patch.
    assert resources["limits"]["memory"] == f"{RUNTIME_BASELINE_MIB[EMBEDDED_SERVER] + TMP_MIB + 600}Mi"
    assert resources["requests"]["cpu"] == "2"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_cpu_overlay_has_no_gpu_and_gpu_overlay_defaults_to_one(cpu_tree: Path) -> None:
    cpu = kustomize(cpu_tree / "overlays/cpu")
    assert "nvidia.com/gpu" not in model_server_container(cpu)["resources"]["limits"]
    assert "tolerations" not in by_kind(cpu)["Deployment"]["spec"]["template"]["spec"]
    gpu = kustomize(cpu_tree / "overlays/gpu")
    assert model_server_container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_pod_runs_non_root_read_only_without_privileges(cpu_tree: Path) -> None:
    objects = kustomize(cpu_tree)
    pod = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "half-plus-two"
    assert by_kind(objects)["ServiceAccount"]["automountServiceAccountToken"] is False
    container = model_server_container(objects)
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}


def test_container_serves_the_model_from_the_pinned_image(cpu_tree: Path) -> None:
    objects = kustomize(cpu_tree)
    container = model_server_container(objects)
    assert container["image"] == IMAGE
    assert {"name": "MODEL_NAME", "value": "half_plus_two"} in container["env"]
    assert container["ports"] == [
        {"name": "grpc", "containerPort": 8500, "protocol": "TCP"},
        {"name": "http", "containerPort": 8501, "protocol": "TCP"},
    ]
    # Ready and started only when every baked version is AVAILABLE (the image's own health
    # check), alive when the server answers; never a bare port or TF Serving's status URL.
    check = HEALTH_CHECK
    assert check == ["/opt/tfpack/venv/bin/python", "-I", "-m", "serving.healthcheck"]
    assert container["startupProbe"]["exec"]["command"] == check
    assert container["readinessProbe"]["exec"]["command"] == check
    assert container["livenessProbe"]["exec"]["command"] == [*check, "--live"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(container[probe]) & {"httpGet", "tcpSocket", "grpc"} == set()
    startup = container["startupProbe"]
    # A slow first load never gets the pod killed: liveness only starts once startup passed.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    service = by_kind(objects)["Service"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("grpc", 8500, "grpc"),
        ("http", 8501, "http"),
    ]


def test_labels_and_selectors(cpu_tree: Path) -> None:
    objects = by_kind(kustomize(cpu_tree))
    selector = {"app.kubernetes.io/name": "half-plus-two", "app.kubernetes.io/instance": "half-plus-two"}
    for obj in objects.values():
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "tfpack"
        assert labels["app.kubernetes.io/component"] == "model-server"
        assert selector.items() <= labels.items()
    deployment = objects["Deployment"]
    # Selectors hold only the stable labels: they are immutable once applied.
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # The Service selects every pod of the model: a canary's pods too.
    assert objects["Service"]["spec"]["selector"] == {"app.kubernetes.io/name": "half-plus-two"}
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector


def test_autoscaler_owns_the_replica_count(cpu_tree: Path) -> None:
    objects = by_kind(kustomize(cpu_tree))
    assert "replicas" not in objects["Deployment"]["spec"]
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "half-plus-two"}
    assert hpa["minReplicas"] == 3
    assert hpa["maxReplicas"] > hpa["minReplicas"]


def test_result_lists_the_files_written(tmp_path: Path) -> None:
    result = render_manifests(IMAGE, "half_plus_two", tmp_path / "out", gpus=1, replicas=2)
    on_disk = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert result.files == on_disk
    assert result.to_json()["variant"] == "gpu"
    assert result.to_json()["name"] == "half-plus-two"
    assert json.loads((tmp_path / "out" / MARKER_FILE).read_text())["image"] == IMAGE


def test_rerender_replaces_its_own_tree_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    output = tmp_path / "out"
    render_manifests(IMAGE, "half_plus_two", output, gpus=1)
    (output / "overlays" / "gpu" / "stale.yaml").write_text("kind: Stale\n")
    render_manifests("localhost:5000/half_plus_two:2", "half_plus_two", output)
    assert model_server_container(kustomize(output))["image"] == "localhost:5000/half_plus_two:2"
    assert not (output / "overlays" / "gpu" / "stale.yaml").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_renders_into_an_existing_empty_directory(tmp_path: Path) -> None:
    render_manifests(IMAGE, "half_plus_two", tmp_path)
    assert (tmp_path / "kustomization.yaml").is_file()


def test_refuses_a_directory_tfpack_did_not_write(tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine\n")
    with pytest.raises(UsageError, match="not written by 'tfpack k8s'") as excinfo:
        render_manifests(IMAGE, "half_plus_two", output)
    assert excinfo.value.exit_code == 2
    assert sorted(p.name for p in output.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    ("model", "name"),
    [("half_plus_two", "half-plus-two"), ("ResNet.50", "resnet-50"), ("true", "true")],
)
def test_kubernetes_name_is_derived_from_the_model_name(model: str, name: str) -> None:
    assert kubernetes_name(model) == name


def test_model_names_that_look_like_yaml_scalars_stay_strings(tmp_path: Path) -> None:
    render_manifests(IMAGE, "true", tmp_path / "out")
    objects = kustomize(tmp_path / "out")
    assert {"name": "MODEL_NAME", "value": "true"} in model_server_container(objects)["env"]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "3d_unet"}, "not a DNS-1035 label"),
        ({"model": "model_"}, "not a DNS-1035 label"),
        ({"model": "a" * 64}, "not a plain model name"),
        ({"model": "../etc"}, "not a plain model name"),
        ({"replicas": 0}, "at least 1"),
        ({"gpus": -1}, "negative"),
    ],
)
def test_bad_arguments_are_usage_errors_and_write_nothing(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"image": IMAGE, "model": "half_plus_two", **kwargs}
    with pytest.raises(UsageError, match=message):
        render_manifests(output_dir=tmp_path / "out", **arguments)
    assert list(tmp_path.iterdir()) == []


def test_namespace_goes_to_every_object_of_every_variant(tmp_path: Path) -> None:
    tree = render_manifests(IMAGE, "half_plus_two", tmp_path / "k8s", namespace="ml-serving").output_dir
    for overlay in ("", "overlays/cpu", "overlays/gpu"):
        objects = kustomize(tree / overlay)
        assert objects and {o["metadata"].get("namespace") for o in objects} == {"ml-serving"}, overlay
        for document in objects:
            kubernetes_validate.validate(document, "1.30", strict=True)
    assert json.loads((tree / MARKER_FILE).read_text())["namespace"] == "ml-serving"
    # Without --namespace no object names one: kubectl's context decides.
    assert all(
        "namespace" not in o["metadata"] for o in kustomize(render_manifests(IMAGE, "m", tmp_path / "plain").output_dir)
    )


@pytest.mark.parametrize("namespace", ["ML", "-ml", "ml_serving", "a" * 64, ""])
def test_a_namespace_kubernetes_would_refuse_is_a_usage_error(tmp_path: Path, namespace: str) -> None:
    with pytest.raises(UsageError, match="is not a Kubernetes namespace name"):
        render_manifests(IMAGE, "half_plus_two", tmp_path / "k8s", namespace=namespace)
    assert not (tmp_path / "k8s").exists()


def test_a_terminating_pod_keeps_answering_then_drains(cpu_tree: Path) -> None:
    objects = kustomize(cpu_tree)
    pod = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    container = model_server_container(objects)
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "/bin/sleep" and int(pause[1]) >= 5
    assert pod["terminationGracePeriodSeconds"] > int(pause[1]) + 15


# --- sized and wired from the image -------------------------------------------------------------


def test_memory_is_the_runtime_baseline_plus_twice_every_served_version(tmp_path: Path) -> None:
    # Two versions of 300 MiB and 100 MiB, both loaded at once: 2 x 400 MiB on top of the baseline.
    facts = image_facts(
        models={"half_plus_two": [1, 2]}, version_bytes={"half_plus_two": {1: MODEL_BYTES, 2: 100 * 2**20}}
    )
    result = render_from_facts(facts, "half_plus_two", tmp_path / "k8s")
    resources = model_server_container(kustomize(tmp_path / "k8s"))["resources"]
    expected = f"{RUNTIME_BASELINE_MIB[EMBEDDED_SERVER] + TMP_MIB + 800}Mi"
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == expected == result.memory
    # The other base's own baseline.
    serving = dataclasses.replace(facts, model_server="tensorflow_model_server")
    render_from_facts(serving, "half_plus_two", tmp_path / "tfs")
    limits = model_server_container(kustomize(tmp_path / "tfs"))["resources"]["limits"]
    assert limits["memory"] == f"{RUNTIME_BASELINE_MIB['tensorflow_model_server'] + TMP_MIB + 800}Mi"
    # CPU too: requests = limits, Guaranteed QoS.
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == "2"


def test_gpus_default_to_the_tower_count_of_a_merged_tower_model_on_a_gpu_runtime(tmp_path: Path) -> None:
    towers = image_facts(version_towers={"half_plus_two": {1: 4}}, base="tensorflow/serving:2.21.0-gpu")
    result = render_from_facts(towers, "half_plus_two", tmp_path / "towers")
    assert (result.gpus, result.variant, result.notes) == (4, "gpu", [])
    assert model_server_container(kustomize(tmp_path / "towers"))["resources"]["limits"]["nvidia.com/gpu"] == 4
    # No towers: CPU; an explicit --gpus 0 wins over the tower count.
    assert render_from_facts(image_facts(), "half_plus_two", tmp_path / "plain").gpus == 0
    assert render_from_facts(towers, "half_plus_two", tmp_path / "forced", gpus=0).variant == "cpu"
    # A CPU-only runtime (the embedded one, tensorflow/serving without -gpu) books no GPU it
    # cannot use, and says why.
    for base in ("embedded", "tensorflow/serving:2.21.0"):
        cpu_only = dataclasses.replace(towers, base=base)
        result = render_from_facts(cpu_only, "half_plus_two", tmp_path / base.replace("/", "-"))
        assert (result.gpus, result.variant) == (0, "cpu")
        assert "merges 4 towers" in result.notes[0] and "CPU-only" in result.notes[0]


def test_prometheus_scrapes_the_monitoring_path_only_when_monitoring_is_on(tmp_path: Path, cpu_tree: Path) -> None:
    render_from_facts(image_facts(monitoring_path="/monitoring/prometheus/metrics"), "half_plus_two", tmp_path / "m")
    template = by_kind(kustomize(tmp_path / "m"))["Deployment"]["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8501",
        "prometheus.io/path": "/monitoring/prometheus/metrics",
    }
    plain = by_kind(kustomize(cpu_tree))["Deployment"]["spec"]["template"]["metadata"]
    assert not plain.get("annotations")


def test_the_model_server_config_is_a_config_map_mounted_read_only(tmp_path: Path) -> None:
    facts = image_facts(models={"half_plus_two": [1, 2]}, version_labels={"half_plus_two": {"stable": 1}})
    facts = dataclasses.replace(facts, version_bytes={"half_plus_two": {1: 1, 2: 1}})
    render_from_facts(facts, "half_plus_two", tmp_path / "k8s")
    objects = by_kind(kustomize(tmp_path / "k8s"))
    config_map = objects["ConfigMap"]
    assert config_map["data"] == {
        "models.config": deployment_model_config_text({"half_plus_two": [1, 2]}, {"half_plus_two": {"stable": 1}})
    }
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert {"name": "model-config", "configMap": {"name": config_map["metadata"]["name"]}} in pod["volumes"]
    # Named after its content: the previous image's pods, restarting mid-rollout or after a
    # rollback, still find their own config.
    other = dataclasses.replace(
        facts, models={"half_plus_two": [2]}, version_labels={}, version_bytes={"half_plus_two": {2: 1}}
    )
    render_from_facts(other, "half_plus_two", tmp_path / "next")
    next_name = by_kind(kustomize(tmp_path / "next"))["ConfigMap"]["metadata"]["name"]
    assert next_name != config_map["metadata"]["name"]
    assert next_name.startswith("half-plus-two-model-config-")
    (container,) = pod["containers"]
    assert {"name": "model-config", "mountPath": DEPLOYMENT_CONFIG_DIR, "readOnly": True} in container["volumeMounts"]


def test_canary_runs_its_share_of_the_pods_behind_the_same_service(canary_tree: Path) -> None:
    objects = kustomize(canary_tree)
    by_name = deployments(objects)
    assert set(by_name) == {"half-plus-two", "half-plus-two-canary"}
    stable, canary = by_name["half-plus-two"], by_name["half-plus-two-canary"]
    assert "replicas" not in stable["spec"]  # the autoscaler's
    assert canary["spec"]["replicas"] == canary_replicas(3, 25) == 1  # 1 of 4 pods: 25 %
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == CANARY
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
    # The gpu component reaches both Deployments.
    for deployment in (stable, canary):
        assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    (service,) = (o for o in objects if o["kind"] == "Service")
    for deployment in (stable, canary):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
    # Each Deployment selects only its own pods; the autoscaler and the budget only the stable ones.
    assert stable["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "half-plus-two"
    assert canary["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "half-plus-two-canary"
    (budget,) = (o for o in objects if o["kind"] == "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "half-plus-two"
    config_maps = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap")
    assert [name.rsplit("-", 1)[0] for name in config_maps] == [
        "half-plus-two-canary-model-config",
        "half-plus-two-model-config",
    ]
    # Without the canary overlay, the stable Deployment alone.
    assert set(deployments(kustomize(canary_tree / "overlays/gpu"))) == {"half-plus-two"}
    marker = json.loads((canary_tree / MARKER_FILE).read_text())
    assert marker["canary"] == {"image": CANARY, "pinned": True, "weight": 25, "replicas": 1, "share_percent": 25.0}


@pytest.mark.parametrize(
    ("replicas", "weight", "expected"), [(3, 25, 1), (2, 50, 2), (10, 10, 1), (2, 1, 1), (1, 99, 99)]
)
def test_canary_replicas(replicas: int, weight: int, expected: int) -> None:
    assert canary_replicas(replicas, weight) == expected


def test_a_canary_weight_whole_pods_cannot_come_near_is_refused_with_the_replicas_that_can(tmp_path: Path) -> None:
    # 1 % beside 2 stable replicas would be 1 canary pod of 3: 33 %, not 1 %.
    with pytest.raises(UsageError, match=r"gives the canary 1 of 3 pods \(33.3%\): --replicas 16 gets within 5"):
        render_from_facts(image_facts(), "half_plus_two", tmp_path / "k8s", canary=image_facts(CANARY), canary_weight=1)
    assert not (tmp_path / "k8s").exists()
    result = render_from_facts(
        image_facts(), "half_plus_two", tmp_path / "k8s", replicas=16, canary=image_facts(CANARY), canary_weight=1
    )
    assert result.canary is not None
    assert abs(result.canary.share_percent(16) - 1) <= CANARY_TOLERANCE


def test_volume_variant_serves_a_verified_copy_and_never_mounts_the_claim_in_the_server(volume_tree: Path) -> None:
    for deployment in deployments(kustomize(volume_tree)).values():
        pod = deployment["spec"]["template"]["spec"]
        (server,) = pod["containers"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert volumes["models-claim"]["persistentVolumeClaim"] == {"claimName": "models-pvc", "readOnly": True}
        assert set(volumes["models"]) == {"name", "emptyDir"}  # only this pod writes it
        # The staging copy holds every served version, with headroom.
        assert volumes["models"]["emptyDir"]["sizeLimit"] == f"{int(MODEL_BYTES * 1.1 / 2**20) + 1}Mi"
        (verifier,) = pod["initContainers"]
        assert verifier["name"] == "verify-models"
        assert verifier["command"] == [*VERIFIER, "--stage-from", CLAIM_DIR]
        assert verifier["image"] == server["image"]  # the trust it checks against is the served image's
        assert verifier["securityContext"] == server["securityContext"]
        assert {"name": "models-claim", "mountPath": CLAIM_DIR, "readOnly": True} in verifier["volumeMounts"]
        assert {"name": "models", "mountPath": "/models"} in verifier["volumeMounts"]
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]
        assert all(mount["name"] != "models-claim" for mount in server["volumeMounts"])


def test_an_image_and_the_models_volume_option_must_agree(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"holds no model .* give --models-from-volume PVC"):
        render_from_facts(image_facts(models_from_volume=True), "half_plus_two", tmp_path / "a")
    with pytest.raises(UsageError, match="serves the models baked into it"):
        render_from_facts(image_facts(), "half_plus_two", tmp_path / "b", models_from_volume="models")
    with pytest.raises(UsageError, match=r"--canary .* serves the models baked into it"):
        render_from_facts(
            image_facts(models_from_volume=True),
            "half_plus_two",
            tmp_path / "c",
            models_from_volume="models",
            canary=image_facts(CANARY),
            canary_weight=10,
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"canary": image_facts(CANARY)}, "go together"),
        ({"canary_weight": 10}, "go together"),
        ({"canary": image_facts(CANARY), "canary_weight": 100}, "from 1 to 99"),
        ({"canary": image_facts(CANARY), "canary_weight": 0}, "from 1 to 99"),
        ({"canary": image_facts(CANARY, models={"other": [1]}), "canary_weight": 5}, "--canary .* does not serve"),
        ({"models_from_volume": "Models_PVC"}, "not a PersistentVolumeClaim name"),
    ],
)
def test_bad_canary_and_volume_options_are_usage_errors(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        render_from_facts(image_facts(), "half_plus_two", tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_an_image_that_does_not_serve_the_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"does not serve model 'resnet' \(it serves half_plus_two\)"):
        render_from_facts(image_facts(), "resnet", tmp_path / "out")


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("Registry/UPPER:1", "not an image reference"),
        ("ok:tag\nkind: Secret", "not an image reference"),
        ("ok@sha256:short", "not an image reference"),
    ],
)
def test_a_bad_image_reference_is_refused_before_any_engine_is_asked(tmp_path: Path, image: str, message: str) -> None:
    from packager.k8s import render_manifests as render_from_the_engine

    with pytest.raises(UsageError, match=message):
        render_from_the_engine(image, "half_plus_two", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# --- image facts from labels --------------------------------------------------------------------


def _config(**labels: str) -> dict[str, Any]:
    base = {
        "dev.tfpack.version": "0.1.0",
        "dev.tfpack.models": "half,full",
        "dev.tfpack.model-server": EMBEDDED_SERVER,
        "dev.tfpack.model.half.versions": "1,2",
        "dev.tfpack.model.half.1.bytes": "100",
        "dev.tfpack.model.half.2.bytes": "200",
        "dev.tfpack.model.half.2.towers": "4",
        "dev.tfpack.model.half.label.stable": "1",
        "dev.tfpack.model.full.versions": "7",
        "dev.tfpack.model.full.7.bytes": "50",
    }
    return {"Labels": {**base, **labels}, "User": "10001:10001"}


def test_facts_are_read_from_the_labels_tfpack_build_writes() -> None:
    facts = facts_from_config(IMAGE, _config(**{"dev.tfpack.monitoring": "/metrics"}), pinned=True)
    assert facts.models == {"half": [1, 2], "full": [7]}
    assert facts.model_bytes == 350
    assert facts.towers("half") == 4 and facts.towers("full") == 0
    assert facts.version_labels == {"half": {"stable": 1}}
    assert (facts.uid, facts.gid, facts.monitoring_path, facts.models_from_volume) == (10001, 10001, "/metrics", False)
    volume = facts_from_config(IMAGE, _config(**{"dev.tfpack.models-from-volume": "true"}), pinned=True)
    assert volume.models_from_volume


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"Labels": {}, "User": "10001"}, "was not built by 'tfpack build'"),
        ({"Labels": None, "User": ""}, "was not built by 'tfpack build'"),
        ({**_config(), "User": ""}, "runs as user 'root'"),
        ({**_config(), "User": "0:0"}, "runs as user"),
        ({**_config(), "User": "tfpack"}, "numeric uid"),
        (_config(**{"dev.tfpack.model.full.versions": ""}), "no versions"),
    ],
)
def test_images_the_manifests_cannot_be_sized_or_run_from_are_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        facts_from_config(IMAGE, config, pinned=True)


def test_an_image_without_size_labels_must_be_rebuilt() -> None:
    config = _config()
    del config["Labels"]["dev.tfpack.model.half.2.bytes"]
    with pytest.raises(UsageError, match=r"how large model half version 2 is .* rebuild it"):
        facts_from_config(IMAGE, config, pinned=True)


@pytest.mark.parametrize(("tree", "overlay"), [("cpu_tree", "overlays/cpu"), ("volume_tree", "overlays/canary")])
def test_every_pod_field_rendered_is_one_the_docker_pod_runner_honours(
    tree: str, overlay: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """tests/test_k8s_pod.py proves the pod by running it; its runner refuses any field it does not
    implement, so a field added here that the proof would skip fails here first, without Docker.
    (The GPU request is the one field it cannot honour: no GPU here.)"""
    objects = kustomize(request.getfixturevalue(tree) / overlay)
    assert len(deployments(objects)) == (2 if "canary" in overlay else 1)
    for deployment in deployments(objects):
        plan_pod(objects, deployment, claims={"models-pvc": tmp_path})


def test_no_service_links_reach_the_entrypoint(cpu_tree: Path) -> None:
    # Kubernetes would inject FOO_SERVICE_HOST for every Service of the namespace; one named
    # tfpack-... or ld-... would give variables the entrypoint refuses to start with.
    pod = by_kind(kustomize(cpu_tree))["Deployment"]["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False


def test_replicas_spread_across_nodes(cpu_tree: Path) -> None:
    pod = by_kind(kustomize(cpu_tree))["Deployment"]["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "half-plus-two",
                    "app.kubernetes.io/instance": "half-plus-two",
                }
            },
        }
    ]


def test_tmp_is_a_small_tmpfs_counted_in_the_memory_limit(cpu_tree: Path) -> None:
    pod = by_kind(kustomize(cpu_tree))["Deployment"]["spec"]["template"]["spec"]
    assert {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": f"{TMP_MIB}Mi"}} in pod["volumes"]


def test_a_tag_allowed_as_it_is_is_always_pulled(tmp_path: Path, cpu_tree: Path) -> None:
    tagged = image_facts("registry.example.com/ml/half_plus_two:7", pinned=False)
    render_from_facts(tagged, "half_plus_two", tmp_path / "k8s")
    assert model_server_container(kustomize(tmp_path / "k8s"))["imagePullPolicy"] == "Always"
    assert model_server_container(kustomize(cpu_tree))["imagePullPolicy"] == "IfNotPresent"


def test_the_startup_window_grows_with_the_model(tmp_path: Path) -> None:
    def window(facts: ImageFacts, name: str) -> int:
        render_from_facts(facts, "half_plus_two", tmp_path / name)
        probe = model_server_container(kustomize(tmp_path / name))["startupProbe"]
        return int(probe["periodSeconds"] * probe["failureThreshold"])

    small = window(image_facts(), "small")
    large = window(image_facts(version_bytes={"half_plus_two": {1: 24 * 2**30}}), "large")
    assert STARTUP_BASE_S <= small < STARTUP_BASE_S + 60
    assert large >= STARTUP_BASE_S + 1200  # 24 GiB at 20 MiB/s


@pytest.mark.parametrize(
    ("label", "value"),
    [("dev.tfpack.model.half.1.bytes", "9" * 400), ("dev.tfpack.model.half.2.towers", "100000")],
)
def test_out_of_range_labels_are_usage_errors(label: str, value: str) -> None:
    with pytest.raises(UsageError, match=f"label {re.escape(label)}=.* is out of range"):
        facts_from_config(IMAGE, _config(**{label: value}), pinned=True)


def test_labels_with_more_digits_than_any_number_are_usage_errors_not_crashes() -> None:
    for label in ("dev.tfpack.model.half.versions", "dev.tfpack.model.half.1.bytes"):
        with pytest.raises(UsageError):
            facts_from_config(IMAGE, _config(**{label: "9" * 5000}), pinned=True)
    with pytest.raises(UsageError, match="runs as user"):
        facts_from_config(IMAGE, {**_config(), "User": "9" * 5000}, pinned=True)
    with pytest.raises(UsageError, match="not a list of versions"):
        facts_from_config(IMAGE, _config(**{"dev.tfpack.model.half.versions": "1,x,2"}), pinned=True)
    with pytest.raises(UsageError, match="out of range"):
        facts_from_config(IMAGE, _config(**{"dev.tfpack.model.half.2.towers": "4x"}), pinned=True)


@pytest.mark.parametrize(
    ("base", "capable"),
    [
        ("tensorflow/serving:2.21.0-gpu", True),
        ("tensorflow/serving:2.21.0-gpu@sha256:" + "ab" * 32, True),
        ("registry:5000/tensorflow/serving:2.21.0-gpu", True),
        ("tensorflow/serving@sha256:" + "ab" * 32, False),
        ("registry:5000/serving-gpu", False),
        ("tensorflow/serving:2.21.0", False),
        ("embedded", False),
    ],
)
def test_a_gpu_runtime_is_read_from_the_base_tag(base: str, capable: bool) -> None:
    assert image_facts(base=base).gpu_capable is capable


def test_a_canary_name_longer_than_a_label_value_is_refused(tmp_path: Path) -> None:
    model = "m" * 57
    facts = image_facts(models={model: [1]}, version_bytes={model: {1: 1}})
    with pytest.raises(UsageError, match="longer than the 63 characters"):
        render_from_facts(
            facts, model, tmp_path / "k8s", canary=dataclasses.replace(facts, reference=CANARY), canary_weight=50
        )
    ok = "m" * 56
    facts = image_facts(models={ok: [1]}, version_bytes={ok: {1: 1}})
    render_from_facts(facts, ok, tmp_path / "ok", canary=dataclasses.replace(facts, reference=CANARY), canary_weight=50)
    validate_strictly(kustomize(tmp_path / "ok"))


def test_the_volume_variant_asks_for_the_node_disk_its_copy_takes(volume_tree: Path, cpu_tree: Path) -> None:
    requests = model_server_container(kustomize(volume_tree / "overlays/cpu"))["resources"]["requests"]
    assert requests["ephemeral-storage"] == f"{int(MODEL_BYTES * 1.1 / 2**20) + 1}Mi"
    assert "ephemeral-storage" not in model_server_container(kustomize(cpu_tree))["resources"]["requests"]
