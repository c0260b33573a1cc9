"""tests/kubelet.py, the pod runner the k8s proof rests on, tested on its own (no Docker).

It must read a pod spec the way a kubelet does (field by field, refusing what it does not
implement, Kubernetes' defaults and semantics), or the proof in test_k8s_pod.py proves nothing.
"""

from __future__ import annotations

import contextlib
import copy
import os
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.kubelet import (
    ConfigMapVolume,
    ContainerRefused,
    EmptyDirVolume,
    ExecAction,
    GrpcAction,
    HttpGetAction,
    Pod,
    ProbeAction,
    TcpSocketAction,
    UnsupportedPodField,
    _materialize,
    check_run_as_non_root,
    check_spread_constraints,
    docker_create_arguments,
    expand_references,
    kubernetes_command,
    parse_quantity,
    plan_pod,
    service_target,
)

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

LABELS = {"app.kubernetes.io/name": "m", "app.kubernetes.io/instance": "m"}


def objects(**pod_overrides: Any) -> list[dict[str, Any]]:
    """A Deployment 'm' with one container, a Service, a ServiceAccount and a ConfigMap."""
    container = {
        "name": "server",
        "image": "example/m:1",
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "MODEL_NAME", "value": "m"}],
        "ports": [
            {"name": "grpc", "containerPort": 8500, "protocol": "TCP"},
            {"name": "http", "containerPort": 8501, "protocol": "TCP"},
        ],
        "securityContext": {"readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "2Gi"}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "config", "mountPath": "/etc/m"}],
    }
    pod: dict[str, Any] = {
        "serviceAccountName": "m",
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
        "containers": [container],
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            {"name": "config", "configMap": {"name": "m-config"}},
        ],
        **pod_overrides,
    }
    return [
        {"kind": "ServiceAccount", "metadata": {"name": "m"}, "automountServiceAccountToken": False},
        {"kind": "ConfigMap", "metadata": {"name": "m-config"}, "data": {"a.conf": "a\n", "b.conf": "b\n"}},
        {
            "kind": "Service",
            "metadata": {"name": "m"},
            "spec": {
                "selector": {"app.kubernetes.io/name": "m"},
                "ports": [
                    {"name": "grpc", "port": 8500, "targetPort": "grpc", "protocol": "TCP"},
                    {"name": "http", "port": 80, "targetPort": 8501, "protocol": "TCP"},
                ],
            },
        },
        {
            "kind": "Deployment",
            "metadata": {"name": "m"},
            "spec": {"template": {"metadata": {"labels": dict(LABELS)}, "spec": pod}},
        },
    ]


def with_container(**fields: Any) -> list[dict[str, Any]]:
    """objects() with the container's fields updated (a None value removes the field)."""
    result = objects()
    container = result[-1]["spec"]["template"]["spec"]["containers"][0]
    for key, value in fields.items():
        if value is None:
            container.pop(key, None)
        else:
            container[key] = value
    return result


# --- strictness ------------------------------------------------------------------------------------


def test_the_reference_pod_plans() -> None:
    plan = plan_pod(objects(), "m", time_scale=0.5)
    (container,) = plan.containers
    assert container.ports == {"grpc": 8500, "http": 8501}
    assert (container.run_as_user, container.run_as_group, container.fs_group) == (10001, 10001, 10001)
    assert container.memory_limit == 2 * 1024**3 and container.nano_cpus == 500_000_000
    assert container.read_only_root and container.cap_drop == ("ALL",)
    # A pod without seccompProfile runs Unconfined under the kubelet (no SeccompDefault).
    assert container.seccomp == "Unconfined"
    assert plan.termination_grace_s == 30


@pytest.mark.parametrize(
    ("where", "edit", "named"),
    [
        ("pod", lambda pod, c: pod.update(hostNetwork=True), "spec.template.spec.hostNetwork"),
        ("pod", lambda pod, c: pod.update(dnsPolicy="None"), "spec.template.spec.dnsPolicy"),
        ("container", lambda pod, c: c.update(workingDir="/w"), "containers[0].workingDir"),
        ("container", lambda pod, c: c.update(stdin=True), "containers[0].stdin"),
        ("security", lambda pod, c: c["securityContext"].update(privileged=True), "securityContext.privileged"),
        ("pod security", lambda pod, c: pod["securityContext"].update(sysctls=[]), "securityContext.sysctls"),
        (
            "probe",
            lambda pod, c: c.update(livenessProbe={"exec": {"command": ["true"]}, "terminationGracePeriodSeconds": 5}),
            "livenessProbe.terminationGracePeriodSeconds",
        ),
        (
            "probe handler",
            lambda pod, c: c.update(readinessProbe={"httpGet": {"port": 8501, "host": "10.0.0.1"}}),
            "readinessProbe.httpGet.host",
        ),
        ("env", lambda pod, c: c["env"].append({"name": "X", "valueFrom": {}}), "env[1].valueFrom"),
        ("port", lambda pod, c: c["ports"][0].update(hostPort=8500), "ports[0].hostPort"),
        ("mount", lambda pod, c: c["volumeMounts"][0].update(mountPropagation="None"), "mountPropagation"),
        ("limits", lambda pod, c: c["resources"]["limits"].update({"nvidia.com/gpu": 1}), "limits.nvidia.com/gpu"),
        ("lifecycle", lambda pod, c: c.update(lifecycle={"postStart": {}}), "lifecycle.postStart"),
        (
            "preStop",
            lambda pod, c: c.update(lifecycle={"preStop": {"httpGet": {"port": 1}}}),
            "lifecycle.preStop.httpGet",
        ),
        ("volume", lambda pod, c: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
        (
            "init container probe",
            lambda pod, c: pod.update(initContainers=[{"name": "i", "image": "x", "startupProbe": {}}]),
            "initContainers[0].startupProbe",
        ),
        ("seccomp", lambda pod, c: pod["securityContext"].update(seccompProfile={"type": "Localhost"}), "seccomp"),
    ],
)
def test_a_field_the_runner_does_not_implement_fails_naming_it(where: str, edit: Any, named: str) -> None:
    spec = objects()
    pod = spec[-1]["spec"]["template"]["spec"]
    edit(pod, pod["containers"][0])
    with pytest.raises(UnsupportedPodField) as excinfo:
        plan_pod(spec, "m")
    assert named in excinfo.value.path, (where, str(excinfo.value))


def test_fields_only_a_scheduler_reads_are_accepted() -> None:
    plan_pod(
        objects(
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
            topologySpreadConstraints=[
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "m"}},
                }
            ],
            nodeSelector={"a": "b"},
            affinity={},
            terminationGracePeriodSeconds=45,
        ),
        "m",
    )


def test_a_pod_that_would_get_a_service_account_token_is_refused() -> None:
    spec = objects()
    del spec[-1]["spec"]["template"]["spec"]["automountServiceAccountToken"]
    plan_pod(spec, "m")  # the ServiceAccount says false: no token
    spec[0]["automountServiceAccountToken"] = True
    with pytest.raises(UnsupportedPodField, match="automountServiceAccountToken"):
        plan_pod(spec, "m")


def test_more_than_one_app_container_is_refused() -> None:
    spec = objects()
    containers = spec[-1]["spec"]["template"]["spec"]["containers"]
    containers.append({**copy.deepcopy(containers[0]), "name": "sidecar"})
    with pytest.raises(UnsupportedPodField, match="more than one app container"):
        plan_pod(spec, "m")


# --- command and args -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "entrypoint", "cmd"),
    [
        ({}, None, None),  # the image's ENTRYPOINT and CMD
        ({"args": ["--a=1"]}, None, ["--a=1"]),  # the image's ENTRYPOINT, CMD replaced
        ({"command": ["/bin/x"]}, ["/bin/x"], []),  # the image's CMD dropped too
        ({"command": ["/bin/x"], "args": ["-v"]}, ["/bin/x"], ["-v"]),
    ],
)
def test_command_and_args_map_to_entrypoint_and_cmd(
    fields: dict[str, list[str]], entrypoint: list[str] | None, cmd: list[str] | None
) -> None:
    assert kubernetes_command(fields) == (entrypoint, cmd)
    plan = plan_pod(with_container(**fields), "m")
    dirs = {"config": Path("/c"), "tmp": Path("/t")}
    arguments = docker_create_arguments(plan.containers[0], plan, dirs, pod_id="p-1", publish=True)
    assert arguments.get("entrypoint") == entrypoint
    assert arguments.get("command") == cmd


def test_variable_references_expand_as_the_kubelet_expands_them() -> None:
    variables = {"A": "1", "B": "two"}
    assert expand_references("$(A)-$(B)", variables) == "1-two"
    assert expand_references("$(UNSET) $$(A) $A $(A", variables) == "$(UNSET) $(A) $A $(A"
    plan = plan_pod(
        with_container(
            env=[{"name": "X", "value": "x"}, {"name": "Y", "value": "$(X)y"}],
            args=["--x=$(Y)", "--host=$(M_SERVICE_HOST)"],
        ),
        "m",
    )
    assert plan.containers[0].env["Y"] == "xy"
    assert plan.containers[0].cmd == ["--x=xy", "--host=" + plan.containers[0].env["M_SERVICE_HOST"]]


def test_service_links_are_injected_and_declared_env_wins() -> None:
    env = plan_pod(with_container(env=[{"name": "M_SERVICE_PORT", "value": "mine"}]), "m").containers[0].env
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1" and env["KUBERNETES_SERVICE_PORT"] == "443"
    assert env["M_SERVICE_PORT_GRPC"] == "8500" and env["M_PORT_80_TCP_PORT"] == "80"
    assert env["M_SERVICE_PORT"] == "mine"
    without = plan_pod(objects(enableServiceLinks=False, automountServiceAccountToken=False), "m").containers[0].env
    assert "M_SERVICE_HOST" not in without and "KUBERNETES_SERVICE_HOST" in without


# --- probes ---------------------------------------------------------------------------------------


def test_probe_defaults_and_time_scale() -> None:
    plan = plan_pod(with_container(livenessProbe={"exec": {"command": ["true"]}}), "m", time_scale=0.2)
    probe = plan.containers[0].probe("liveness")
    assert probe is not None
    assert probe.period_s == pytest.approx(2.0)
    assert (probe.initial_delay_s, probe.timeout_s) == (0, 1.0)
    assert (probe.success_threshold, probe.failure_threshold) == (1, 3)
    timed = {"initialDelaySeconds": 5, "periodSeconds": 20, "timeoutSeconds": 4, "failureThreshold": 7}
    plan = plan_pod(with_container(readinessProbe={"tcpSocket": {"port": 8500}, **timed}), "m", time_scale=0.5)
    probe = plan.containers[0].probe("readiness")
    assert probe is not None
    # The clock runs fast; a probe's own timeout does not.
    assert (probe.initial_delay_s, probe.period_s, probe.timeout_s, probe.failure_threshold) == (2.5, 10.0, 4.0, 7)


def test_liveness_and_startup_need_a_success_threshold_of_one() -> None:
    with pytest.raises(UnsupportedPodField, match="successThreshold"):
        plan_pod(with_container(startupProbe={"exec": {"command": ["true"]}, "successThreshold": 2}), "m")


@pytest.mark.parametrize(
    ("probe", "action"),
    [
        ({"httpGet": {"path": "/v1/models/m", "port": "http"}}, HttpGetAction(8501, "/v1/models/m")),
        ({"httpGet": {"port": 8501}}, HttpGetAction(8501, "/")),
        ({"tcpSocket": {"port": "grpc"}}, TcpSocketAction(8500)),
        ({"grpc": {"port": 8500}}, GrpcAction(8500, "")),
        ({"grpc": {"port": 8500, "service": "m"}}, GrpcAction(8500, "m")),
        ({"exec": {"command": ["a", "b"]}}, ExecAction(("a", "b"))),
    ],
)
def test_probe_handlers_and_named_ports(probe: dict[str, Any], action: ProbeAction) -> None:
    parsed = plan_pod(with_container(readinessProbe=probe), "m").containers[0].probe("readiness")
    assert parsed is not None and parsed.action == action


@pytest.mark.parametrize(
    "probe",
    [
        {"httpGet": {"port": "metrics"}},  # no such named port
        {"grpc": {"port": "grpc"}},  # Kubernetes' grpc probe takes a number only
        {"exec": {"command": ["a"]}, "tcpSocket": {"port": 1}},  # two handlers
    ],
)
def test_a_probe_kubernetes_would_not_run_is_refused(probe: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedPodField, match="readinessProbe"):
        plan_pod(with_container(readinessProbe=probe), "m")


def test_service_ports_resolve_to_container_ports_by_name_or_number() -> None:
    spec = objects()
    plan = plan_pod(spec, "m")
    service = spec[2]
    assert service_target(service, plan, "grpc") == ("server", 8500)
    assert service_target(service, plan, "http") == ("server", 8501)
    service["spec"]["selector"] = {"app.kubernetes.io/name": "other"}
    with pytest.raises(AssertionError):
        service_target(service, plan, "grpc")


# --- security and volumes -------------------------------------------------------------------------


def test_run_as_non_root_refuses_root_and_unknown_users() -> None:
    spec = objects()
    pod = spec[-1]["spec"]["template"]["spec"]
    del pod["securityContext"]["runAsUser"]
    (container,) = plan_pod(spec, "m").containers
    check_run_as_non_root(container, "10001:10001")
    for image_user in ("", "0", "root:root"):
        with pytest.raises(ContainerRefused):
            check_run_as_non_root(container, image_user)
    # runAsUser (the container's over the pod's) decides, not the image.
    pod["containers"][0]["securityContext"]["runAsUser"] = 20
    check_run_as_non_root(plan_pod(spec, "m").containers[0], "root")


def test_docker_arguments_carry_the_security_context_and_volumes(tmp_path: Path) -> None:
    spec = objects()
    pod = spec[-1]["spec"]["template"]["spec"]
    pod["securityContext"]["seccompProfile"] = {"type": "RuntimeDefault"}
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = False
    plan = plan_pod(spec, "m")
    dirs = {"config": tmp_path / "config", "tmp": tmp_path / "tmp"}
    arguments = docker_create_arguments(plan.containers[0], plan, dirs, pod_id="tfpack-kubelet-1", publish=True)
    assert arguments["user"] == "10001:10001" and arguments["group_add"] == ["10001"]
    assert arguments["read_only"] is True and arguments["cap_drop"] == ["ALL"]
    assert arguments["security_opt"] == ["no-new-privileges"]  # RuntimeDefault: Docker's default profile
    assert "tmpfs" not in arguments  # an emptyDir is the pod's one host directory, not a per-container tmpfs
    assert [(m["Target"], m["Source"], m["Type"], m["ReadOnly"]) for m in arguments["mounts"]] == [
        ("/tmp", str(tmp_path / "tmp"), "bind", False),
        ("/etc/m", str(tmp_path / "config"), "bind", True),
    ]
    assert arguments["ports"] == {"8500/tcp": ("127.0.0.1", None), "8501/tcp": ("127.0.0.1", None)}
    assert arguments["mem_limit"] == arguments["memswap_limit"] == 2 * 1024**3
    assert arguments["healthcheck"] == {"test": ["NONE"]}


def test_claims_mount_read_only_when_the_mount_or_the_source_says_so(tmp_path: Path) -> None:
    spec = objects()
    pod = spec[-1]["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "models", "persistentVolumeClaim": {"claimName": "models-pvc"}})
    pod["containers"][0]["volumeMounts"].append({"name": "models", "mountPath": "/models", "readOnly": True})
    with pytest.raises(UnsupportedPodField, match="models-pvc"):
        plan_pod(spec, "m")
    plan = plan_pod(spec, "m", claims={"models-pvc": tmp_path})
    dirs = {"config": tmp_path, "tmp": tmp_path}
    arguments = docker_create_arguments(plan.containers[0], plan, dirs, pod_id="p-1", publish=False)
    assert {"Target": "/models", "Source": str(tmp_path), "Type": "bind", "ReadOnly": True} in arguments["mounts"]
    assert "ports" not in arguments


def test_config_map_files_are_written_as_the_kubelet_writes_them(tmp_path: Path) -> None:
    spec = objects()
    volume = spec[-1]["spec"]["template"]["spec"]["volumes"][1]
    with contextlib.ExitStack() as cleanup:
        files = _materialize(plan_pod(spec, "m"), tmp_path, cleanup)["config"]
    assert sorted(p.name for p in files.iterdir()) == ["a.conf", "b.conf"]
    assert stat.S_IMODE((files / "a.conf").stat().st_mode) == 0o644
    assert (files / "b.conf").read_text() == "b\n"
    volume["configMap"].update(items=[{"key": "b.conf", "path": "sub/b", "mode": 0o600}], defaultMode=0o440)
    plan = plan_pod(spec, "m")
    assert plan.volumes["config"] == ConfigMapVolume((("sub/b", b"b\n", 0o600),))


def shared_volume_pod() -> list[dict[str, Any]]:
    """objects() with the staged-models shape: an initContainer writing a disk emptyDir the server reads."""
    spec = objects()
    pod = spec[-1]["spec"]["template"]["spec"]
    pod["volumes"] = [
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        {"name": "config", "configMap": {"name": "m-config"}},
        {"name": "models", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    pod["initContainers"] = [
        {
            "name": "stage",
            "image": "example/m:1",
            "command": ["/bin/stage"],
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "models", "mountPath": "/models"}],
        }
    ]
    pod["containers"][0]["volumeMounts"].append({"name": "models", "mountPath": "/models", "readOnly": True})
    return spec


def test_an_empty_dir_is_one_host_directory_every_container_mounts(tmp_path: Path) -> None:
    plan = plan_pod(shared_volume_pod(), "m")
    assert plan.volumes["tmp"] == EmptyDirVolume(64 * 1024**2, "Memory")
    assert plan.volumes["models"] == EmptyDirVolume(1024**3, "")
    assert plan.fs_group == 10001
    dirs = {"tmp": tmp_path / "tmp", "models": tmp_path / "models", "config": tmp_path / "config"}
    init, server = (
        {m["Target"]: (m["Source"], m["Type"], m["ReadOnly"]) for m in arguments["mounts"]}
        for arguments in (
            docker_create_arguments(c, plan, dirs, pod_id="p-1", publish=False)
            for c in (*plan.init_containers, *plan.containers)
        )
    )
    # The same directory in both: what the initContainer writes is what the server reads, and the
    # server's readOnly mount of it is read-only.
    assert init == {"/tmp": (str(dirs["tmp"]), "bind", False), "/models": (str(dirs["models"]), "bind", False)}
    assert server == {
        "/tmp": (str(dirs["tmp"]), "bind", False),
        "/etc/m": (str(dirs["config"]), "bind", True),
        "/models": (str(dirs["models"]), "bind", True),
    }


def test_a_disk_empty_dir_is_made_as_the_kubelet_makes_it(tmp_path: Path) -> None:
    spec = shared_volume_pod()
    spec[-1]["spec"]["template"]["spec"]["volumes"][0]["emptyDir"] = {}  # no tmpfs: no mount needed
    with contextlib.ExitStack() as cleanup:
        dirs = _materialize(plan_pod(spec, "m"), tmp_path, cleanup)
    for name in ("tmp", "models"):
        info = dirs[name].stat()
        # 0777 with fsGroup's group and setgid (pkg/volume SetVolumeOwnership).
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o2777, 10001), name
    assert dirs["config"].is_dir() and dirs["tmp"] != dirs["models"]


def test_a_memory_empty_dir_is_a_tmpfs_of_its_size_limit_unmounted_by_the_cleanup(tmp_path: Path) -> None:
    # Not a skip: without root the pod runner cannot mount a tmpfs, and tests/test_k8s_pod.py
    # could not run the rendered pod at all (make setup and CI run as root, as a kubelet does).
    if os.geteuid() != 0:
        pytest.fail("the pod runner mounts a memory emptyDir as a tmpfs, which needs root: run the tests as root")
    with contextlib.ExitStack() as cleanup:
        directory = _materialize(plan_pod(shared_volume_pod(), "m"), tmp_path, cleanup)["tmp"]
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        (line,) = [m for m in mounts if m.split()[1] == str(directory)]
        assert line.split()[2] == "tmpfs" and "size=65536k" in line, line
        assert (stat.S_IMODE(directory.stat().st_mode), directory.stat().st_gid) == (0o3777, 10001)
    assert not any(m.split()[1] == str(directory) for m in Path("/proc/self/mounts").read_text().splitlines())
    assert subprocess.run(["mountpoint", "-q", str(directory)], check=False).returncode != 0


def test_a_spread_constraint_must_select_the_pods_it_spreads() -> None:
    labels = dict(LABELS)
    constraint = {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": dict(LABELS)},
    }
    check_spread_constraints({"topologySpreadConstraints": [constraint]}, labels)
    plan_pod(objects(topologySpreadConstraints=[constraint]), "m")
    refused: list[tuple[dict[str, Any], str]] = [
        ({"labelSelector": {"matchLabels": {"app.kubernetes.io/name": "other"}}}, "labelSelector"),
        ({"labelSelector": {}}, "labelSelector"),
        ({"maxSkew": 0}, "maxSkew"),
        ({"whenUnsatisfiable": "Sometimes"}, "topologySpreadConstraints[0]"),
        ({"labelSelector": {"matchExpressions": []}}, "matchExpressions"),
        ({"nodeName": "x"}, "nodeName"),
    ]
    for edit, named in refused:
        with pytest.raises(UnsupportedPodField, match=named.replace("[", r"\[").replace("]", r"\]")):
            plan_pod(objects(topologySpreadConstraints=[{**constraint, **edit}]), "m")


@pytest.mark.parametrize(
    ("quantity", "value"),
    [("2Gi", 2 * 1024**3), ("512Mi", 512 * 1024**2), ("1G", 10**9), ("500m", 0.5), ("1.5", 1.5), (2, 2), ("1e3", 1000)],
)
def test_quantities(quantity: str | int, value: float) -> None:
    assert float(parse_quantity(quantity, "q")) == value


# --- probe semantics, with the probes scripted (no container runs) --------------------------------


class _FakeContainer:
    id = "fake"

    def __init__(self) -> None:
        self.starts = 0
        self.attrs: dict[str, Any] = {"State": {"ExitCode": 0}, "NetworkSettings": {"Ports": {}}}

    def start(self) -> None:
        self.starts += 1

    def stop(self, timeout: int) -> None:
        pass

    def reload(self) -> None:
        pass

    def logs(self) -> bytes:
        return b""


class _FakeApi:
    def inspect_container(self, container_id: str) -> dict[str, Any]:
        return {"State": {"Running": True, "ExitCode": 0}}


class _FakeClient:
    api = _FakeApi()


class _ScriptedPod(Pod):
    """A Pod whose probe results come from ``script[kind]`` (True/False per call; the last repeats)."""

    def __init__(self, spec: list[dict[str, Any]], script: dict[str, list[bool]]) -> None:
        super().__init__(_FakeClient(), plan_pod(spec, "m", time_scale=0.01), "tfpack-kubelet-test")
        self.script = script
        self.calls: dict[str, int] = {}
        self._script_lock = threading.Lock()

    def _probe_once(self, app: Any, action: ProbeAction, timeout: float) -> tuple[bool, str]:
        kinds: dict[ProbeAction, str] = {ExecAction(("startup",)): "startup", ExecAction(("ready",)): "readiness"}
        kind = kinds.get(action, "liveness")
        with self._script_lock:
            index = self.calls.get(kind, 0)
            self.calls[kind] = index + 1
        results = self.script[kind]
        return results[min(index, len(results) - 1)], ""


def _scripted(script: dict[str, list[bool]], **failure_thresholds: int) -> _ScriptedPod:
    probes = {}
    for kind, command in (("startup", "startup"), ("readiness", "ready"), ("liveness", "live")):
        if kind in script:
            probes[f"{kind}Probe"] = {
                "exec": {"command": [command]},
                "periodSeconds": 5,  # 50 ms at time_scale 0.01
                "failureThreshold": failure_thresholds.get(kind, 3),
            }
    return _ScriptedPod(with_container(**probes), script)


def _whats(pod: Pod) -> list[str]:
    return [event.what for event in pod.events]


def test_readiness_and_liveness_wait_for_the_startup_probe() -> None:
    pod = _scripted({"startup": [False] * 5 + [True], "readiness": [True], "liveness": [True]}, startup=10)
    pod._start({"server": _FakeContainer()})
    try:
        pod.wait_ready(timeout=10)
    finally:
        pod._join()
    whats = _whats(pod)
    started = whats.index("started")
    assert whats[:started].count("startupProbe failure") == 5
    assert not {"readinessProbe success", "livenessProbe success"} & set(whats[:started])
    assert whats.index("ready") > whats.index("readinessProbe success") > started
    assert pod.restarts == {"server": 0}


def test_liveness_failing_failure_threshold_times_restarts_the_container() -> None:
    pod = _scripted({"readiness": [True], "liveness": [True, False, False, True, False, False, False, True]})
    container = _FakeContainer()
    pod._start({"server": container})
    try:
        deadline = time.monotonic() + 10
        while pod.restarts["server"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
    finally:
        pod._join()
    whats = _whats(pod)
    assert pod.restarts == {"server": 1}, whats
    # Two failures in a row are under the threshold of 3; the third consecutive one restarts.
    restart = whats.index("restart")
    assert whats[:restart].count("livenessProbe failure") == 5
    assert container.starts == 2
    assert whats.index("not ready", restart) > restart


def test_a_startup_probe_that_never_passes_restarts_the_container() -> None:
    pod = _scripted({"startup": [False], "readiness": [True]}, startup=4)
    pod._start({"server": _FakeContainer()})
    try:
        deadline = time.monotonic() + 10
        while pod.restarts["server"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        pod._join()
    whats = _whats(pod)
    assert pod.restarts["server"] >= 1
    assert whats[: whats.index("restart")].count("startupProbe failure") == 4
    assert "ready" not in whats and "readinessProbe success" not in whats


def test_readiness_flips_only_after_failure_threshold_consecutive_failures() -> None:
    pod = _scripted({"readiness": [True, False, False, True, False, False, False, True]})
    pod._start({"server": _FakeContainer()})
    try:
        deadline = time.monotonic() + 10
        while _whats(pod).count("ready") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        pod._join()
    changes = [w for w in _whats(pod) if w in ("ready", "not ready")]
    assert changes[:3] == ["ready", "not ready", "ready"]
    assert pod.restarts == {"server": 0}
