"""tfpack k8s: the rendered kustomize tree builds with kubectl and every object is schema-valid."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from packager.errors import UsageError
from packager.k8s import MARKER_FILE, kubernetes_name, render_manifests

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

IMAGE = "registry.example.com/ml/half_plus_two@sha256:" + "ab" * 32
# The oldest Kubernetes minor still commonly run, and the newest the schema package knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


@pytest.fixture(autouse=True, scope="module")
def _kubectl() -> None:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is missing: 'make setup' installs it")


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """Build a kustomization with `kubectl kustomize` and return its objects."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [obj["kind"] for obj in objects]
    assert len(kinds) == len(set(kinds)), kinds
    return {obj["kind"]: obj for obj in objects}


def model_server_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


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


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu", "."])
@pytest.mark.parametrize("tree", ["cpu_tree", "gpu_tree"])
def test_every_rendered_object_is_schema_valid(tree: str, overlay: str, request: pytest.FixtureRequest) -> None:
    objects = kustomize(request.getfixturevalue(tree) / overlay)
    assert sorted(obj["kind"] for obj in objects) == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    for version in KUBERNETES_VERSIONS:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)


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
    assert resources["limits"]["memory"] == "2Gi"
    assert resources["requests"]["cpu"] == "1"
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
    check = ["/opt/tfpack/venv/bin/python", "-I", "-m", "serving.healthcheck"]
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
    assert objects["Service"]["spec"]["selector"] == selector
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
        ({"image": "Registry/UPPER:1"}, "not an image reference"),
        ({"image": "ok:tag\nkind: Secret"}, "not an image reference"),
        ({"image": "ok@sha256:short"}, "not an image reference"),
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
