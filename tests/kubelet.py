"""What a kubelet would do with one rendered pod, done with the Docker engine.

No cluster can run here, so this is how the tests prove that what `tfpack k8s` renders runs: they
take the objects `kubectl kustomize` prints, and this module runs one Deployment's pod template
with Docker exactly as written and probes it as the kubelet would::

    objects = kustomize(tree)
    with run_pod(docker_client, objects, "half-plus-two", time_scale=0.2) as pod:
        pod.wait_ready(timeout=300)
        host, port = pod.service_endpoint(service, "grpc")

What it does, as the kubelet does it:

* Volumes, made on the host once per pod and bind-mounted into every container that mounts them
  (read-only when the volumeMount says readOnly), as the kubelet does under
  /var/lib/kubelet/pods/<uid>/volumes: an emptyDir is ONE directory shared by the pod's containers
  (the initContainers' writes are what the app container reads), mode 0777, or for medium Memory a
  tmpfs mounted there (sizeLimit is its size; tmpfs's own mode 1777), group fsGroup and setgid
  when the pod has one; a configMap is the named ConfigMap's data written as files (defaultMode
  0644, items honoured), always read-only; a persistentVolumeClaim is ``claims[claimName]``,
  read-only when the mount or the claim source says so. No service-account token is ever mounted,
  so a pod spec that would get one (automountServiceAccountToken not false, on the pod or its
  ServiceAccount) is refused.
* initContainers run first, one at a time, to completion (their start and exit are in the pod's
  timeline); a non-zero exit raises InitContainerFailed and no app container is created.
* Containers: image; ``command`` replaces the ENTRYPOINT and ``args`` the CMD (with a command and
  no args the image's CMD is dropped); ``$(VAR)`` references in env values, command and args are
  expanded; env holds what is declared plus the service links a kubelet injects (the ``*_SERVICE_HOST``
  family for every Service of the namespace, and the ``kubernetes`` master service's); ports are
  published on random 127.0.0.1 ports; the user is runAsUser:runAsGroup (the container's over the
  pod's) plus fsGroup as a supplementary group; runAsNonRoot refuses to start a container whose
  uid is 0 or cannot be known, as the kubelet does; readOnlyRootFilesystem, capabilities,
  allowPrivilegeEscalation (no-new-privileges), seccompProfile RuntimeDefault (Docker's default
  profile; Unconfined otherwise, the kubelet's default), memory and CPU limits. The image's Docker
  HEALTHCHECK is switched off: a kubelet never runs it.
* Probes, in threads, with the kubelet's semantics (pkg/kubelet/prober/worker.go): startupProbe
  first, liveness and readiness only once it succeeded; initialDelaySeconds counted from the
  container's start; consecutive results against successThreshold and failureThreshold (Kubernetes
  defaults when absent); liveness or startup failing kills the container (preStop first) and
  starts it again; readiness sets and clears Ready. A container that exits is restarted too.
  ``time_scale`` multiplies periodSeconds and initialDelaySeconds (never timeoutSeconds), so a test
  can run the kubelet's clock fast and still test orderings and ratios.
* ``Pod.stop()`` runs the preStop exec hook, then stops the containers within what is left of
  terminationGracePeriodSeconds.

Strict: every pod-spec, container, probe, volume and security field is either implemented here or
listed as mattering only to a scheduler; anything else raises UnsupportedPodField naming it, so
the renderer can never add something this proof silently skips.

Where it differs from a kubelet, and why that is acceptable for these tests: one app container per
pod (no shared network sandbox: the runner refuses more); a disk emptyDir's sizeLimit is not
enforced (the kubelet enforces it by evicting the pod, after the fact); a restart reuses the
Docker container (``docker restart``: a fresh process, the same read-only root); images are never
pulled. topologySpreadConstraints are a scheduler's: checked (known fields, a selector that
selects this pod, a satisfiable skew) but trivially met by one pod on one node.

A memory emptyDir is a tmpfs mounted on the host (so the runner needs root, as the kubelet does)
and not a Docker ``local`` volume of type tmpfs: Docker unmounts such a volume when its last
container stops, so what an initContainer wrote there would be gone before the app container
starts. Every container (labelled with the pod's id), every tmpfs and every temporary directory
is removed on every path out of ``run_pod``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import math
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import docker
import docker.errors
import docker.types
import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

Obj = dict[str, Any]  # one Kubernetes object (or part of one) as YAML parsed it

POD_LABEL = "dev.tfpack.test.kubelet.pod"
CONTAINER_LABEL = "dev.tfpack.test.kubelet.container"
LOOPBACK = "127.0.0.1"
# The cluster IP the `kubernetes` master Service has in a default cluster; Services rendered here
# get addresses after it, in the default service CIDR.
MASTER_SERVICE_IP = "10.96.0.1"
INIT_TIMEOUT_S = 600.0
_EXIT_POLL_S = 0.5
# The kubelet's crash-loop back-off: 10 s, doubling, at most 5 min (scaled by time_scale).
_BACKOFF_START_S = 10.0
_BACKOFF_MAX_S = 300.0
# After preStop the kubelet gives the container at least this long to stop (kuberuntime's minimum).
_MIN_GRACE_AFTER_PRESTOP_S = 2.0
_LOG_TAIL_LINES = 60


def kustomize(directory: Path) -> list[Obj]:
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


# --- errors ---------------------------------------------------------------------------------------


class UnsupportedPodField(ValueError):
    """The pod spec uses a field this runner does not implement (so it cannot run it as written)."""

    def __init__(self, path: str, why: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {why or 'not implemented by tests/kubelet.py'}")


class ContainerRefused(RuntimeError):
    """The kubelet would refuse to create this container (CreateContainerConfigError)."""


class InitContainerFailed(RuntimeError):
    """An init container exited non-zero; no app container was created."""

    def __init__(self, name: str, exit_code: int, logs: str, pod_id: str = "") -> None:
        self.name = name
        self.exit_code = exit_code
        self.logs = logs
        self.pod_id = pod_id
        super().__init__(f"init container {name} exited {exit_code}: {logs.strip()[-2000:]}")


# --- the plan: what the pod spec asks for, read without Docker -----------------------------------


# Fields the runner implements, and fields it may ignore because only a scheduler (or an image
# registry) reads them. Anything else in the pod spec is an UnsupportedPodField.
POD_FIELDS = frozenset(
    {
        "containers",
        "initContainers",
        "volumes",
        "securityContext",
        "automountServiceAccountToken",
        "enableServiceLinks",
        "restartPolicy",
        "terminationGracePeriodSeconds",
    }
)
POD_SCHEDULER_FIELDS = frozenset(
    {"tolerations", "topologySpreadConstraints", "serviceAccountName", "nodeSelector", "affinity"}
)
CONTAINER_FIELDS = frozenset(
    {"name", "image", "command", "args", "env", "ports", "resources", "securityContext", "volumeMounts"}
)
APP_CONTAINER_FIELDS = CONTAINER_FIELDS | {"startupProbe", "readinessProbe", "livenessProbe", "lifecycle"}
CONTAINER_SCHEDULER_FIELDS = frozenset({"imagePullPolicy"})
POD_SECURITY_FIELDS = frozenset({"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"})
CONTAINER_SECURITY_FIELDS = frozenset(
    {
        "runAsNonRoot",
        "runAsUser",
        "runAsGroup",
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "capabilities",
        "seccompProfile",
    }
)
PROBE_FIELDS = frozenset(
    {"initialDelaySeconds", "periodSeconds", "timeoutSeconds", "successThreshold", "failureThreshold"}
)
PROBE_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")
# Kubernetes' defaults for a probe's timing fields (core/v1 Probe).
PROBE_DEFAULTS: Mapping[str, int] = {
    "initialDelaySeconds": 0,
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "successThreshold": 1,
    "failureThreshold": 3,
}
PROBE_KINDS = ("startup", "readiness", "liveness")
SPREAD_FIELDS = frozenset(
    {
        "maxSkew",
        "topologyKey",
        "whenUnsatisfiable",
        "labelSelector",
        "minDomains",
        "nodeAffinityPolicy",
        "nodeTaintsPolicy",
        "matchLabelKeys",
    }
)
DEFAULT_TERMINATION_GRACE_S = 30


def _check_fields(obj: Obj, allowed: frozenset[str], where: str) -> None:
    """UnsupportedPodField naming the first field of ``obj`` not in ``allowed``."""
    if not isinstance(obj, dict):
        raise UnsupportedPodField(where, f"expected a mapping, got {obj!r}")
    for name in obj:
        if name not in allowed:
            raise UnsupportedPodField(f"{where}.{name}")


@dataclass(frozen=True)
class ExecAction:
    """Run ``command`` in the container; success is exit 0 within the timeout."""

    command: tuple[str, ...]


@dataclass(frozen=True)
class HttpGetAction:
    """GET ``scheme://127.0.0.1:<host port of port><path>``; success is a status 200..399."""

    port: int
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TcpSocketAction:
    """Open a TCP connection to the host port of ``port``."""

    port: int


@dataclass(frozen=True)
class GrpcAction:
    """grpc.health.v1.Health/Check(service) on the host port of ``port``; success is SERVING."""

    port: int
    service: str = ""


ProbeAction = ExecAction | HttpGetAction | TcpSocketAction | GrpcAction


@dataclass(frozen=True)
class Probe:
    """One probe of one container, timings in seconds with time_scale applied."""

    kind: str  # "startup", "readiness" or "liveness"
    action: ProbeAction
    initial_delay_s: float
    period_s: float
    timeout_s: float
    success_threshold: int
    failure_threshold: int


@dataclass(frozen=True)
class Mount:
    """A volumeMount: volume ``volume`` at ``path`` (``sub_path`` of it when given)."""

    volume: str
    path: str
    read_only: bool = False
    sub_path: str = ""


@dataclass(frozen=True)
class EmptyDirVolume:
    """An emptyDir: a host directory, or with medium "Memory" a tmpfs of ``size_bytes`` (None: tmpfs's default).

    ``size_bytes`` is the sizeLimit; only a tmpfs enforces it here.
    """

    size_bytes: int | None
    medium: str = ""  # "" (the node's disk) or "Memory"


@dataclass(frozen=True)
class ConfigMapVolume:
    """A configMap volume: (relative path, content, mode) per file; always mounted read-only."""

    files: tuple[tuple[str, bytes, int], ...]


@dataclass(frozen=True)
class ClaimVolume:
    """A persistentVolumeClaim volume: the host directory standing for the claim."""

    claim: str
    source: Path
    read_only: bool


Volume = EmptyDirVolume | ConfigMapVolume | ClaimVolume


@dataclass(frozen=True)
class ContainerPlan:
    """One container of the pod spec, as Docker will run it."""

    name: str
    image: str
    entrypoint: list[str] | None  # None: the image's ENTRYPOINT
    cmd: list[str] | None  # None: the image's CMD
    env: dict[str, str]
    ports: dict[str, int]  # port name (or str(number) when unnamed) -> containerPort
    run_as_user: int | None
    run_as_group: int | None
    run_as_non_root: bool
    fs_group: int | None
    read_only_root: bool
    cap_add: tuple[str, ...]
    cap_drop: tuple[str, ...]
    no_new_privileges: bool
    seccomp: str  # "RuntimeDefault" or "Unconfined"
    memory_limit: int | None
    nano_cpus: int | None
    mounts: tuple[Mount, ...]
    probes: tuple[Probe, ...] = ()
    pre_stop: tuple[str, ...] | None = None

    def probe(self, kind: str) -> Probe | None:
        """This container's ``kind`` probe, or None."""
        return next((p for p in self.probes if p.kind == kind), None)


@dataclass(frozen=True)
class PodPlan:
    """A Deployment's pod template, checked field by field and resolved for Docker."""

    deployment: str
    namespace: str | None
    labels: dict[str, str]
    init_containers: tuple[ContainerPlan, ...]
    containers: tuple[ContainerPlan, ...]
    volumes: dict[str, Volume]
    termination_grace_s: float
    time_scale: float
    fs_group: int | None = None


def find_object(objects: Sequence[Obj], kind: str, name: str) -> Obj:
    """The object of ``kind`` named ``name`` (KeyError naming what exists otherwise)."""
    for obj in objects:
        if obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name:
            return obj
    present = sorted(f"{o.get('kind')}/{o.get('metadata', {}).get('name')}" for o in objects)
    raise KeyError(f"no {kind} named {name!r} among {present}")


def kubernetes_command(container: Obj) -> tuple[list[str] | None, list[str] | None]:
    """(Docker entrypoint, Docker cmd) for a container's ``command`` and ``args``.

    Kubernetes: ``command`` replaces the image's ENTRYPOINT and, when ``args`` is absent, the image's
    CMD is not used either; ``args`` alone replaces only the CMD. None means "the image's".
    """
    command = container.get("command")
    args = container.get("args")
    if command is not None:
        return [str(c) for c in command], [str(a) for a in args] if args is not None else []
    return None, [str(a) for a in args] if args is not None else None


def expand_references(text: str, variables: Mapping[str, str]) -> str:
    """Expand ``$(NAME)`` as the kubelet does: defined names only, ``$$`` is a literal ``$``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            following = text[i + 1]
            if following == "$":
                out.append("$")
                i += 2
                continue
            if following == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    out.append(variables.get(text[i + 2 : end], text[i : end + 1]))
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_QUANTITY_FACTORS: Mapping[str, Decimal] = {
    "": Decimal(1),
    **{suffix: Decimal(1024) ** power for power, suffix in enumerate(["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"], 1)},
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    **{suffix: Decimal(1000) ** power for power, suffix in enumerate(["k", "M", "G", "T", "P", "E"], 1)},
}


def parse_quantity(value: str | int | float, where: str) -> Decimal:
    """A Kubernetes resource quantity ("2Gi", "500m", "1.5", 3) as a number."""
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        raise UnsupportedPodField(where, f"{value!r} is not a Kubernetes quantity")
    return Decimal(match.group(1)) * _QUANTITY_FACTORS[match.group(2) or ""]


def resolve_port(port: int | str, container_ports: Mapping[str, int], where: str) -> int:
    """A probe's or Service's port, by number or by the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    if port not in container_ports:
        raise UnsupportedPodField(where, f"names port {port!r}, which the container does not declare")
    return container_ports[port]


def parse_probe(kind: str, probe: Obj, container_ports: Mapping[str, int], time_scale: float, where: str) -> Probe:
    """A probe with Kubernetes' defaults filled in, named ports resolved and time_scale applied."""
    _check_fields(probe, PROBE_FIELDS | set(PROBE_HANDLERS), where)
    handlers = [name for name in PROBE_HANDLERS if name in probe]
    if len(handlers) != 1:
        raise UnsupportedPodField(where, f"needs exactly one handler of {', '.join(PROBE_HANDLERS)}, has {handlers}")
    timing = {name: probe.get(name, default) for name, default in PROBE_DEFAULTS.items()}
    if kind != "readiness" and timing["successThreshold"] != 1:
        raise UnsupportedPodField(f"{where}.successThreshold", "must be 1 for liveness and startup probes")
    handler = probe[handlers[0]]
    handler_where = f"{where}.{handlers[0]}"
    action: ProbeAction
    if handlers[0] == "exec":
        _check_fields(handler, frozenset({"command"}), handler_where)
        action = ExecAction(tuple(str(part) for part in handler["command"]))
    elif handlers[0] == "httpGet":
        _check_fields(handler, frozenset({"path", "port", "scheme", "httpHeaders"}), handler_where)
        for index, header in enumerate(handler.get("httpHeaders", [])):
            _check_fields(header, frozenset({"name", "value"}), f"{handler_where}.httpHeaders[{index}]")
        action = HttpGetAction(
            port=resolve_port(handler["port"], container_ports, f"{handler_where}.port"),
            path=handler.get("path", "/"),
            scheme=handler.get("scheme", "HTTP"),
            headers=tuple((h["name"], h["value"]) for h in handler.get("httpHeaders", [])),
        )
    elif handlers[0] == "tcpSocket":
        _check_fields(handler, frozenset({"port"}), handler_where)
        action = TcpSocketAction(resolve_port(handler["port"], container_ports, f"{handler_where}.port"))
    else:
        _check_fields(handler, frozenset({"port", "service"}), handler_where)
        if not isinstance(handler["port"], int):
            raise UnsupportedPodField(f"{handler_where}.port", "a grpc probe's port is a number in Kubernetes")
        action = GrpcAction(handler["port"], handler.get("service") or "")
    return Probe(
        kind=kind,
        action=action,
        initial_delay_s=timing["initialDelaySeconds"] * time_scale,
        period_s=timing["periodSeconds"] * time_scale,
        timeout_s=float(timing["timeoutSeconds"]),
        success_threshold=timing["successThreshold"],
        failure_threshold=timing["failureThreshold"],
    )


def service_env(services: Sequence[Obj]) -> dict[str, str]:
    """The service-link variables a kubelet injects for ``services`` (docker-links style)."""
    env: dict[str, str] = {}
    for index, service in enumerate(services):
        spec = service.get("spec", {})
        if spec.get("clusterIP") == "None" or not spec.get("ports"):
            continue  # headless Services get no variables
        if service["metadata"]["name"] == "kubernetes":
            address = MASTER_SERVICE_IP
        else:
            address = f"10.96.{1 + index // 250}.{10 + index % 250}"
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        first = spec["ports"][0]
        env[f"{prefix}_SERVICE_HOST"] = address
        env[f"{prefix}_SERVICE_PORT"] = str(first["port"])
        for port in spec["ports"]:
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
        env[f"{prefix}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{address}:{first['port']}"
        for port in spec["ports"]:
            protocol = port.get("protocol", "TCP")
            base = f"{prefix}_PORT_{port['port']}_{protocol}"
            env[base] = f"{protocol.lower()}://{address}:{port['port']}"
            env[f"{base}_PROTO"] = protocol.lower()
            env[f"{base}_PORT"] = str(port["port"])
            env[f"{base}_ADDR"] = address
    return env


MASTER_SERVICE: Obj = {
    "kind": "Service",
    "metadata": {"name": "kubernetes", "namespace": "default"},
    "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP"}]},
}


def _security(pod_security: Obj, container: Obj, where: str) -> Obj:
    """The container's effective security settings: its own over the pod's."""
    own = container.get("securityContext", {})
    _check_fields(own, CONTAINER_SECURITY_FIELDS, f"{where}.securityContext")
    capabilities = own.get("capabilities", {})
    _check_fields(capabilities, frozenset({"add", "drop"}), f"{where}.securityContext.capabilities")
    effective = {
        key: pod_security[key]
        for key in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")
        if key in pod_security
    }
    effective.update(own)
    seccomp = effective.get("seccompProfile", {"type": "Unconfined"})
    _check_fields(seccomp, frozenset({"type"}), f"{where}.securityContext.seccompProfile")
    if seccomp["type"] not in ("RuntimeDefault", "Unconfined"):
        raise UnsupportedPodField(f"{where}.securityContext.seccompProfile.type", f"{seccomp['type']} profiles")
    effective["seccompProfile"] = seccomp
    return effective


def _limits(container: Obj, where: str) -> tuple[int | None, int | None]:
    """(memory limit in bytes, CPU limit in nano-CPUs) of ``resources.limits``."""
    resources = container.get("resources", {})
    _check_fields(resources, frozenset({"limits", "requests"}), f"{where}.resources")
    limits = resources.get("limits", {})
    _check_fields(limits, frozenset({"memory", "cpu"}), f"{where}.resources.limits")
    memory = (
        math.ceil(parse_quantity(limits["memory"], f"{where}.resources.limits.memory")) if "memory" in limits else None
    )
    cpu = parse_quantity(limits["cpu"], f"{where}.resources.limits.cpu") if "cpu" in limits else None
    return memory, (int(cpu * 1_000_000_000) if cpu is not None else None)


def _ports(container: Obj, where: str) -> dict[str, int]:
    ports: dict[str, int] = {}
    for index, port in enumerate(container.get("ports", [])):
        _check_fields(port, frozenset({"name", "containerPort", "protocol"}), f"{where}.ports[{index}]")
        if port.get("protocol", "TCP") != "TCP":
            raise UnsupportedPodField(f"{where}.ports[{index}].protocol", f"{port['protocol']} ports")
        ports[port.get("name") or str(port["containerPort"])] = int(port["containerPort"])
    return ports


def _mounts(container: Obj, volumes: Mapping[str, Volume], where: str) -> tuple[Mount, ...]:
    mounts: list[Mount] = []
    for index, mount in enumerate(container.get("volumeMounts", [])):
        mount_where = f"{where}.volumeMounts[{index}]"
        _check_fields(mount, frozenset({"name", "mountPath", "readOnly", "subPath"}), mount_where)
        if mount["name"] not in volumes:
            raise UnsupportedPodField(f"{mount_where}.name", f"no volume named {mount['name']!r}")
        if mount.get("subPath") and isinstance(volumes[mount["name"]], EmptyDirVolume):
            raise UnsupportedPodField(f"{mount_where}.subPath", "a subPath of an emptyDir")
        mounts.append(Mount(mount["name"], mount["mountPath"], bool(mount.get("readOnly")), mount.get("subPath", "")))
    return tuple(mounts)


def _volumes(pod: Obj, objects: Sequence[Obj], namespace: str | None, claims: Mapping[str, Path]) -> dict[str, Volume]:
    volumes: dict[str, Volume] = {}
    for index, volume in enumerate(pod.get("volumes", [])):
        where = f"spec.template.spec.volumes[{index}]"
        _check_fields(volume, frozenset({"name", "emptyDir", "configMap", "persistentVolumeClaim"}), where)
        sources = [key for key in volume if key != "name"]
        if len(sources) != 1:
            raise UnsupportedPodField(where, f"needs exactly one volume source, has {sources}")
        source = volume[sources[0]] or {}
        source_where = f"{where}.{sources[0]}"
        if sources[0] == "emptyDir":
            _check_fields(source, frozenset({"medium", "sizeLimit"}), source_where)
            if source.get("medium", "") not in ("", "Memory"):
                raise UnsupportedPodField(f"{source_where}.medium", f"medium {source['medium']!r}")
            size = source.get("sizeLimit")
            volumes[volume["name"]] = EmptyDirVolume(
                math.ceil(parse_quantity(size, f"{source_where}.sizeLimit")) if size is not None else None,
                source.get("medium", ""),
            )
        elif sources[0] == "configMap":
            _check_fields(source, frozenset({"name", "items", "defaultMode", "optional"}), source_where)
            volumes[volume["name"]] = _config_map_volume(source, objects, namespace, source_where)
        else:
            _check_fields(source, frozenset({"claimName", "readOnly"}), source_where)
            if source["claimName"] not in claims:
                raise UnsupportedPodField(
                    f"{source_where}.claimName", f"claim {source['claimName']!r} has no host dir in claims="
                )
            volumes[volume["name"]] = ClaimVolume(
                source["claimName"], Path(claims[source["claimName"]]), bool(source.get("readOnly"))
            )
    return volumes


def _config_map_volume(source: Obj, objects: Sequence[Obj], namespace: str | None, where: str) -> ConfigMapVolume:
    try:
        config_map = find_object(objects, "ConfigMap", source["name"])
    except KeyError:
        if source.get("optional"):
            return ConfigMapVolume(())
        raise UnsupportedPodField(f"{where}.name", f"no ConfigMap {source['name']!r} among the objects") from None
    if config_map.get("metadata", {}).get("namespace") != namespace:
        raise UnsupportedPodField(f"{where}.name", f"ConfigMap {source['name']!r} is in another namespace")
    data: dict[str, bytes] = {key: str(value).encode() for key, value in config_map.get("data", {}).items()}
    if config_map.get("binaryData"):
        data.update({key: base64.b64decode(value) for key, value in config_map["binaryData"].items()})
    default_mode = int(source.get("defaultMode", 0o644))
    if "items" not in source:
        return ConfigMapVolume(tuple((key, content, default_mode) for key, content in sorted(data.items())))
    files: list[tuple[str, bytes, int]] = []
    for index, item in enumerate(source["items"]):
        _check_fields(item, frozenset({"key", "path", "mode"}), f"{where}.items[{index}]")
        if item["key"] not in data:
            raise UnsupportedPodField(f"{where}.items[{index}].key", f"ConfigMap has no key {item['key']!r}")
        files.append((item["path"], data[item["key"]], int(item.get("mode", default_mode))))
    return ConfigMapVolume(tuple(files))


def _container_plan(
    container: Obj,
    *,
    init: bool,
    index: int,
    pod_security: Obj,
    volumes: Mapping[str, Volume],
    links: Mapping[str, str],
    time_scale: float,
) -> ContainerPlan:
    kind = "initContainers" if init else "containers"
    where = f"spec.template.spec.{kind}[{index}]"
    _check_fields(container, (CONTAINER_FIELDS if init else APP_CONTAINER_FIELDS) | CONTAINER_SCHEDULER_FIELDS, where)
    where = f"spec.template.spec.{kind}[{container['name']}]"
    environment = dict(links)
    declared: dict[str, str] = {}
    for env_index, variable in enumerate(container.get("env", [])):
        _check_fields(variable, frozenset({"name", "value"}), f"{where}.env[{env_index}]")
        # Each value may refer to the variables before it (and to the service links).
        value = expand_references(str(variable.get("value", "")), {**environment, **declared})
        declared[variable["name"]] = value
    environment.update(declared)
    entrypoint, cmd = kubernetes_command(container)
    if entrypoint is not None:
        entrypoint = [expand_references(part, environment) for part in entrypoint]
    if cmd is not None:
        cmd = [expand_references(part, environment) for part in cmd]
    ports = _ports(container, where)
    security = _security(pod_security, container, where)
    capabilities = security.get("capabilities", {})
    memory, nano_cpus = _limits(container, where)
    probes = tuple(
        parse_probe(kind_, container[f"{kind_}Probe"], ports, time_scale, f"{where}.{kind_}Probe")
        for kind_ in PROBE_KINDS
        if f"{kind_}Probe" in container
    )
    pre_stop: tuple[str, ...] | None = None
    if "lifecycle" in container:
        _check_fields(container["lifecycle"], frozenset({"preStop"}), f"{where}.lifecycle")
        hook = container["lifecycle"]["preStop"]
        _check_fields(hook, frozenset({"exec"}), f"{where}.lifecycle.preStop")
        _check_fields(hook["exec"], frozenset({"command"}), f"{where}.lifecycle.preStop.exec")
        pre_stop = tuple(str(part) for part in hook["exec"]["command"])
    return ContainerPlan(
        name=container["name"],
        image=container["image"],
        entrypoint=entrypoint,
        cmd=cmd,
        env=environment,
        ports=ports,
        run_as_user=security.get("runAsUser"),
        run_as_group=security.get("runAsGroup"),
        run_as_non_root=bool(security.get("runAsNonRoot")),
        fs_group=pod_security.get("fsGroup"),
        read_only_root=bool(security.get("readOnlyRootFilesystem")),
        cap_add=tuple(capabilities.get("add", ())),
        cap_drop=tuple(capabilities.get("drop", ())),
        no_new_privileges=security.get("allowPrivilegeEscalation") is False,
        seccomp=security["seccompProfile"]["type"],
        memory_limit=memory,
        nano_cpus=nano_cpus,
        mounts=_mounts(container, volumes, where),
        probes=probes,
        pre_stop=pre_stop,
    )


def plan_pod(
    objects: Sequence[Obj],
    deployment_name: str,
    *,
    claims: Mapping[str, Path] | None = None,
    time_scale: float = 1.0,
) -> PodPlan:
    """Read Deployment ``deployment_name``'s pod template strictly and resolve it for Docker.

    Args:
        objects: What `kubectl kustomize` printed (see :func:`kustomize`).
        deployment_name: The Deployment whose ``spec.template`` is the pod.
        claims: PersistentVolumeClaim claimName -> the host directory standing for the volume.
        time_scale: Multiplies every probe's periodSeconds and initialDelaySeconds.

    Raises:
        UnsupportedPodField: A field the runner does not implement, or one it cannot honour.
    """
    deployment = find_object(objects, "Deployment", deployment_name)
    namespace = deployment["metadata"].get("namespace")
    template = deployment["spec"]["template"]
    pod = template["spec"]
    _check_fields(pod, POD_FIELDS | POD_SCHEDULER_FIELDS, "spec.template.spec")
    if pod.get("restartPolicy", "Always") != "Always":
        raise UnsupportedPodField("spec.template.spec.restartPolicy", "a Deployment's pods restart Always")
    automount = pod.get("automountServiceAccountToken")
    if automount is None:
        account_name = pod.get("serviceAccountName", "default")
        account = next(
            (
                o
                for o in objects
                if o.get("kind") == "ServiceAccount"
                and o["metadata"]["name"] == account_name
                and o["metadata"].get("namespace") == namespace
            ),
            {},
        )
        automount = account.get("automountServiceAccountToken", True)
    if automount is not False:
        raise UnsupportedPodField(
            "spec.template.spec.automountServiceAccountToken", "the runner mounts no service-account token"
        )
    pod_security = pod.get("securityContext", {})
    _check_fields(pod_security, POD_SECURITY_FIELDS, "spec.template.spec.securityContext")
    services = [o for o in objects if o.get("kind") == "Service" and o["metadata"].get("namespace") == namespace]
    # The master service's variables come even with enableServiceLinks false.
    links = {
        **service_env([MASTER_SERVICE]),
        **(service_env(services) if pod.get("enableServiceLinks", True) else {}),
    }
    volumes = _volumes(pod, objects, namespace, claims or {})
    common = {"pod_security": pod_security, "volumes": volumes, "links": links, "time_scale": time_scale}
    init_containers = tuple(
        _container_plan(c, init=True, index=i, **common) for i, c in enumerate(pod.get("initContainers", []))
    )
    containers = tuple(_container_plan(c, init=False, index=i, **common) for i, c in enumerate(pod["containers"]))
    labels = dict(template.get("metadata", {}).get("labels", {}))
    check_spread_constraints(pod, labels)
    if len(containers) != 1:
        raise UnsupportedPodField(
            "spec.template.spec.containers", "more than one app container (no shared network sandbox here)"
        )
    return PodPlan(
        deployment=deployment_name,
        namespace=namespace,
        labels=labels,
        init_containers=init_containers,
        containers=containers,
        volumes=volumes,
        termination_grace_s=float(pod.get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_S)),
        time_scale=time_scale,
        fs_group=pod_security.get("fsGroup"),
    )


def check_spread_constraints(pod: Obj, labels: Mapping[str, str]) -> None:
    """UnsupportedPodField unless each topologySpreadConstraint could spread this template's pods.

    The scheduler counts the pods its labelSelector matches: a selector that misses the template's
    own labels spreads nothing. One pod on one node meets any skew of at least 1.
    """
    for index, constraint in enumerate(pod.get("topologySpreadConstraints", [])):
        where = f"spec.template.spec.topologySpreadConstraints[{index}]"
        _check_fields(constraint, SPREAD_FIELDS, where)
        if not isinstance(constraint.get("maxSkew"), int) or constraint["maxSkew"] < 1:
            raise UnsupportedPodField(f"{where}.maxSkew", f"{constraint.get('maxSkew')!r} is not a skew of at least 1")
        if constraint.get("whenUnsatisfiable") not in ("DoNotSchedule", "ScheduleAnyway") or not constraint.get(
            "topologyKey"
        ):
            raise UnsupportedPodField(
                where, "needs a topologyKey and whenUnsatisfiable DoNotSchedule or ScheduleAnyway"
            )
        selector = constraint.get("labelSelector") or {}
        _check_fields(selector, frozenset({"matchLabels"}), f"{where}.labelSelector")
        match = selector.get("matchLabels") or {}
        if not match or not match.items() <= labels.items():
            raise UnsupportedPodField(f"{where}.labelSelector", f"{match} does not select the pod's labels {labels}")


def service_target(service: Obj, plan: PodPlan, port_name: str) -> tuple[str, int]:
    """(container name, containerPort) a Service port sends to in this pod.

    Asserts that the Service's selector selects the pod template's labels (in the same namespace),
    then resolves the port's targetPort, by name or number, through the containers' ports.
    """
    selector = service["spec"].get("selector", {})
    assert selector and selector.items() <= plan.labels.items(), (selector, plan.labels)
    assert service["metadata"].get("namespace") == plan.namespace, (service["metadata"], plan.namespace)
    ports = [p for p in service["spec"]["ports"] if p.get("name") == port_name]
    assert len(ports) == 1, f"the Service has no port named {port_name!r}: {service['spec']['ports']}"
    target = ports[0].get("targetPort", ports[0]["port"])
    for container in plan.containers:
        if isinstance(target, str) and not target.isdigit():
            if target in container.ports:
                return container.name, container.ports[target]
        elif int(target) in container.ports.values():
            return container.name, int(target)
    raise AssertionError(f"targetPort {target!r} of Service port {port_name!r} is no container's port")


def effective_uid(plan: ContainerPlan, image_user: str) -> int | None:
    """The uid the container runs as: runAsUser, else the image's USER (None when not numeric)."""
    if plan.run_as_user is not None:
        return plan.run_as_user
    user = image_user.split(":", 1)[0]
    if not user:
        return 0
    return int(user) if user.isdigit() else None


def check_run_as_non_root(plan: ContainerPlan, image_user: str) -> None:
    """ContainerRefused when runAsNonRoot is set and the uid is 0 or unknown (as the kubelet does)."""
    if not plan.run_as_non_root:
        return
    uid = effective_uid(plan, image_user)
    if uid is None:
        raise ContainerRefused(
            f"container {plan.name}: image has non-numeric user ({image_user}), cannot verify user is non-root"
        )
    if uid == 0:
        raise ContainerRefused(f"container {plan.name}: container has runAsNonRoot and image will run as root")


# --- running it -----------------------------------------------------------------------------------


class PodEvent(NamedTuple):
    """One entry of a pod's timeline."""

    time: float  # time.monotonic()
    container: str
    what: str  # e.g. "startupProbe failure", "started", "ready", "not ready", "restart", "exited"
    detail: str = ""


def _mount_tmpfs(directory: Path, size_bytes: int | None) -> None:
    options = "mode=1777" + (f",size={size_bytes}" if size_bytes is not None else "")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"cannot mount a tmpfs for a memory emptyDir at {directory} (the runner needs root, as the "
            f"kubelet does): {result.stderr.strip()}"
        )


def _unmount(directory: Path) -> None:
    if subprocess.run(["umount", str(directory)], capture_output=True, timeout=30, check=False).returncode != 0:
        # Still busy (a container the engine has not let go of yet): detach it now, freed when idle.
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=30, check=False)


def _make_empty_dir(
    directory: Path, volume: EmptyDirVolume, fs_group: int | None, cleanup: contextlib.ExitStack
) -> None:
    """One emptyDir as the kubelet makes it: 0777 (a tmpfs: 1777), group fsGroup and setgid when set."""
    directory.mkdir()
    if volume.medium == "Memory":
        _mount_tmpfs(directory, volume.size_bytes)
        cleanup.callback(_unmount, directory)
    else:
        directory.chmod(0o777)  # whatever the umask
    if fs_group is not None:
        # pkg/volume/volume_linux.go SetVolumeOwnership: group fsGroup, group rwx, setgid on dirs.
        os.chown(directory, -1, fs_group)
        directory.chmod(directory.stat().st_mode & 0o7777 | 0o2070)


def _materialize(plan: PodPlan, scratch: Path, cleanup: contextlib.ExitStack) -> dict[str, Path]:
    """Make each emptyDir and configMap volume under ``scratch``; volume name -> host directory.

    ``cleanup`` gets the unmount of each tmpfs; close it after the pod's containers are removed.
    """
    directories: dict[str, Path] = {}
    for name, volume in plan.volumes.items():
        if isinstance(volume, EmptyDirVolume):
            directories[name] = scratch / f"empty-dir-{name}"
            _make_empty_dir(directories[name], volume, plan.fs_group, cleanup)
            continue
        if not isinstance(volume, ConfigMapVolume):
            continue
        directory = scratch / f"configmap-{name}"
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)  # whatever the umask: the container's non-root user reads it
        for relative, content, mode in volume.files:
            path = directory / relative
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            path.write_bytes(content)
            path.chmod(mode)
        directories[name] = directory
    return directories


def docker_create_arguments(
    plan: ContainerPlan,
    pod: PodPlan,
    volume_dirs: Mapping[str, Path],
    *,
    pod_id: str,
    publish: bool,
    image_user: str = "",
) -> dict[str, Any]:
    """Keyword arguments of docker-py's ``containers.create`` for one container of the pod.

    ``volume_dirs`` maps each emptyDir and configMap volume to its host directory (what
    ``_materialize`` made): every container mounting a volume gets the same directory.
    """
    mounts: list[docker.types.Mount] = []
    for mount in plan.mounts:
        volume = pod.volumes[mount.volume]
        if isinstance(volume, EmptyDirVolume):
            source, read_only = volume_dirs[mount.volume], False
        elif isinstance(volume, ConfigMapVolume):
            source, read_only = volume_dirs[mount.volume], True
        else:
            source, read_only = volume.source, volume.read_only
        if mount.sub_path:
            source = source / PurePosixPath(mount.sub_path)
        read_only = read_only or mount.read_only
        mounts.append(docker.types.Mount(target=mount.path, source=str(source), type="bind", read_only=read_only))
    user = None
    if plan.run_as_user is not None or plan.run_as_group is not None:
        uid = plan.run_as_user if plan.run_as_user is not None else image_user.split(":", 1)[0] or "0"
        user = f"{uid}:{plan.run_as_group}" if plan.run_as_group is not None else str(uid)
    security_opt = ["no-new-privileges"] if plan.no_new_privileges else []
    if plan.seccomp == "Unconfined":
        security_opt.append("seccomp=unconfined")
    arguments: dict[str, Any] = {
        "image": plan.image,
        "name": f"{pod_id}-{plan.name}",
        "hostname": f"{pod.deployment}-{pod_id.rsplit('-', 1)[-1]}"[:63],
        "entrypoint": plan.entrypoint,
        "command": plan.cmd,
        "environment": [f"{key}={value}" for key, value in plan.env.items()],
        "user": user,
        "group_add": [str(plan.fs_group)] if plan.fs_group is not None else None,
        "read_only": plan.read_only_root,
        "cap_add": list(plan.cap_add) or None,
        "cap_drop": list(plan.cap_drop) or None,
        "security_opt": security_opt or None,
        "mounts": mounts or None,
        "labels": {POD_LABEL: pod_id, CONTAINER_LABEL: plan.name},
        # A kubelet never runs the image's HEALTHCHECK; the probes are the pod spec's.
        "healthcheck": {"test": ["NONE"]},
        "detach": True,
    }
    if plan.memory_limit is not None:
        # No swap beyond the limit, as under the kubelet.
        arguments["mem_limit"] = plan.memory_limit
        arguments["memswap_limit"] = plan.memory_limit
    if plan.nano_cpus is not None:
        arguments["nano_cpus"] = plan.nano_cpus
    if publish:
        arguments["ports"] = {f"{port}/tcp": (LOOPBACK, None) for port in plan.ports.values()}
    return {key: value for key, value in arguments.items() if value is not None}


def _exec(client: docker.DockerClient, container_id: str, command: Sequence[str], timeout: float) -> tuple[bool, str]:
    """(exit 0 within ``timeout``, output) of ``command`` run in the container, as its user."""
    try:
        exec_id = client.api.exec_create(container_id, list(command), stdout=True, stderr=True)["Id"]
    except docker.errors.APIError as error:
        return False, f"exec failed: {error.explanation or error}"
    output: list[bytes] = []
    runner = threading.Thread(target=lambda: output.append(client.api.exec_start(exec_id)), daemon=True)
    runner.start()
    runner.join(timeout)
    if runner.is_alive():
        # The kubelet counts a timed-out exec probe as a failure (and leaves the process running).
        return False, f"command timed out after {timeout:g}s"
    text = (output[0] if output else b"").decode(errors="replace").strip()
    code = client.api.exec_inspect(exec_id)["ExitCode"]
    return code == 0, f"exit {code}: {text}" if text else f"exit {code}"


def _http_get(action: HttpGetAction, port: int, timeout: float) -> tuple[bool, str]:
    url = f"{action.scheme.lower()}://{LOOPBACK}:{port}{action.path}"
    context = ssl._create_unverified_context() if action.scheme == "HTTPS" else None  # the kubelet does not verify
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, headers=dict(action.headers))
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, OSError) as error:
        return False, f"GET {url}: {getattr(error, 'reason', error)}"
    return 200 <= status < 400, f"GET {url}: HTTP {status}"


def _tcp_connect(port: int, timeout: float) -> tuple[bool, str]:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True, f"connected to {LOOPBACK}:{port}"
    except OSError as error:
        return False, f"connect {LOOPBACK}:{port}: {error}"


def _grpc_health(action: GrpcAction, port: int, timeout: float) -> tuple[bool, str]:
    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=action.service), timeout=timeout
            )
        except grpc.RpcError as error:
            return False, f"Health/Check({action.service!r}): {error.code().name} {error.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, f"Health/Check({action.service!r}): {status}"


@dataclass
class _AppContainer:
    """The kubelet's view of one running app container."""

    plan: ContainerPlan
    container: Any  # docker.models.containers.Container
    started_at: float = 0.0
    started: bool = False
    ready: bool = False
    restarts: int = 0
    generation: int = 0  # one per (re)start: probe results of an older one are dropped
    busy: bool = False  # being killed or restarted: no probing
    host_ports: dict[int, int] = field(default_factory=dict)
    exits: int = 0


class Pod:
    """A running pod: its containers, its probes' timeline and what the kubelet would report."""

    def __init__(self, client: docker.DockerClient, plan: PodPlan, pod_id: str) -> None:
        self.client = client
        self.plan = plan
        self.pod_id = pod_id
        self._lock = threading.Condition()
        self._events: list[PodEvent] = []
        self._containers: dict[str, _AppContainer] = {}
        self._terminating = threading.Event()
        self._threads: list[threading.Thread] = []
        self._logs: dict[str, str] = {}

    # --- what tests read ---

    @property
    def events(self) -> list[PodEvent]:
        """The timeline so far: every probe result, start, ready/not-ready change, restart, exit."""
        with self._lock:
            return list(self._events)

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts per app container (the pod status's restartCount)."""
        with self._lock:
            return {name: c.restarts for name, c in self._containers.items()}

    @property
    def ready(self) -> bool:
        """Whether every app container is Ready (the pod's Ready condition)."""
        with self._lock:
            return bool(self._containers) and all(c.ready for c in self._containers.values())

    def wait_ready(self, timeout: float) -> None:
        """Block until the pod is Ready; TimeoutError with the timeline and logs otherwise."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not (self._containers and all(c.ready for c in self._containers.values())):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._terminating.is_set():
                    break
                self._lock.wait(min(remaining, 1.0))
            else:
                return
        raise TimeoutError(f"pod {self.pod_id} not ready after {timeout:g}s\n{self.describe()}")

    def host_port(self, container: str, container_port: int) -> int:
        """The 127.0.0.1 port Docker published ``container_port`` of ``container`` on."""
        app = self._containers[container]
        with self._lock:
            if container_port in app.host_ports:
                return app.host_ports[container_port]
        app.container.reload()
        bindings = app.container.attrs["NetworkSettings"]["Ports"].get(f"{container_port}/tcp") or []
        if not bindings:
            raise KeyError(f"container {container} publishes no port {container_port} (is it running?)")
        port = int(bindings[0]["HostPort"])
        with self._lock:
            app.host_ports[container_port] = port
        return port

    def service_endpoint(self, service: Obj, port_name: str) -> tuple[str, int]:
        """(host, port) reaching what Service port ``port_name`` targets in this pod."""
        container, container_port = service_target(service, self.plan, port_name)
        return LOOPBACK, self.host_port(container, container_port)

    def inspect(self, container: str) -> Obj:
        """``docker inspect`` of the app container named ``container`` in the pod spec."""
        return dict(self.client.api.inspect_container(self._containers[container].container.id))

    def restart(self, container: str, why: str) -> None:
        """Kill and start the app container again, as the kubelet does when its liveness probe fails."""
        app = self._containers[container]
        with self._lock:
            generation = app.generation
        self._restart(app, why, generation)

    def logs(self, container: str) -> str:
        """The container's output (kept after stop())."""
        if container in self._logs:
            return self._logs[container]
        try:
            return self._containers[container].container.logs().decode(errors="replace")
        except docker.errors.APIError as error:
            return f"(no logs: {error})"

    def describe(self) -> str:
        """The timeline and the tail of every container's log, for assertion messages."""
        start = self._events[0].time if self._events else 0.0
        lines = [f"  {e.time - start:7.2f}s {e.container}: {e.what} {e.detail}".rstrip() for e in self.events]
        for name in self._containers:
            tail = "\n".join(self.logs(name).splitlines()[-_LOG_TAIL_LINES:])
            lines.append(f"--- {name} log (tail) ---\n{tail}")
        return "\n".join(lines)

    def stop(self) -> None:
        """Terminate the pod as the kubelet does: preStop, then SIGTERM, SIGKILL after the grace period."""
        if self._terminating.is_set():
            return
        self._terminating.set()
        for app in self._containers.values():
            self._record(app, "terminating")
            self._set_ready(app, False, "terminating")
            self._kill(app, self.plan.termination_grace_s)
            app.container.reload()
            self._record(app, "stopped", f"exit {app.container.attrs['State']['ExitCode']}")
            self._logs[app.plan.name] = self.logs(app.plan.name)
        self._join()

    # --- the kubelet ---

    def _record(self, app: _AppContainer, what: str, detail: str = "") -> None:
        self._note(app.plan.name, what, detail)

    def _note(self, container: str, what: str, detail: str = "") -> None:
        with self._lock:
            self._events.append(PodEvent(time.monotonic(), container, what, detail))
            self._lock.notify_all()

    def _set_ready(self, app: _AppContainer, ready: bool, detail: str = "") -> None:
        with self._lock:
            if app.ready == ready:
                return
            app.ready = ready
        self._record(app, "ready" if ready else "not ready", detail)

    def _start(self, created: Mapping[str, Any]) -> None:
        for plan in self.plan.containers:
            app = _AppContainer(plan, created[plan.name])
            self._containers[plan.name] = app
            self._run_container(app)
            self._spawn(self._watch_exit, app)
            for probe in plan.probes:
                self._spawn(self._probe_worker, app, probe)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"kubelet-{target.__name__}")
        self._threads.append(thread)
        thread.start()

    def _join(self) -> None:
        self._terminating.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run_container(self, app: _AppContainer) -> None:
        """Start (or start again) the container; probing starts over."""
        app.container.start()
        with self._lock:
            app.generation += 1
            app.started_at = time.monotonic()
            app.host_ports.clear()  # Docker may publish on other ports after a restart
            # Without a startup probe the container counts as started at once; without a
            # readiness probe it is ready once started.
            app.started = app.plan.probe("startup") is None
            app.busy = False
        self._record(app, "container started", f"generation {app.generation}")
        if app.started and app.plan.probe("readiness") is None:
            self._set_ready(app, True, "no readiness probe")

    def _kill(self, app: _AppContainer, grace_s: float) -> None:
        """The kubelet's killContainer: the preStop hook, then stop within the rest of the grace."""
        began = time.monotonic()
        if app.plan.pre_stop is not None and self._running(app):
            ok, output = _exec(self.client, app.container.id, app.plan.pre_stop, grace_s)
            self._record(app, "preStop", output if ok else f"failed: {output}")
        remaining = max(grace_s - (time.monotonic() - began), _MIN_GRACE_AFTER_PRESTOP_S)
        with contextlib.suppress(docker.errors.APIError):
            app.container.stop(timeout=math.ceil(remaining))

    def _running(self, app: _AppContainer) -> bool:
        try:
            return bool(self.client.api.inspect_container(app.container.id)["State"]["Running"])
        except docker.errors.APIError:
            return False

    def _restart(self, app: _AppContainer, why: str, generation: int) -> None:
        with self._lock:
            if self._terminating.is_set() or app.generation != generation or app.busy:
                return
            app.busy = True
            app.restarts += 1
        self._record(app, "restart", why)
        self._set_ready(app, False, why)
        self._kill(app, self.plan.termination_grace_s)
        if not self._terminating.is_set():
            self._run_container(app)

    def _watch_exit(self, app: _AppContainer) -> None:
        """Restart a container that exits (restartPolicy Always), with the kubelet's back-off."""
        while not self._terminating.wait(_EXIT_POLL_S):
            with self._lock:
                if app.busy:
                    continue
                generation = app.generation
            try:
                state = self.client.api.inspect_container(app.container.id)["State"]
            except docker.errors.APIError:
                continue
            if state["Running"] or self._terminating.is_set():
                continue
            self._record(app, "exited", f"exit {state['ExitCode']}")
            app.exits += 1
            backoff = min(_BACKOFF_START_S * 2 ** (app.exits - 1), _BACKOFF_MAX_S) * self.plan.time_scale
            if self._terminating.wait(backoff):
                return
            self._restart(app, f"exited {state['ExitCode']}", generation)

    def _probe_once(self, app: _AppContainer, action: ProbeAction, timeout: float) -> tuple[bool, str]:
        if isinstance(action, ExecAction):
            return _exec(self.client, app.container.id, action.command, timeout)
        try:
            port = self.host_port(app.plan.name, action.port)
        except (KeyError, docker.errors.APIError) as error:
            return False, str(error)
        if isinstance(action, HttpGetAction):
            return _http_get(action, port, timeout)
        if isinstance(action, TcpSocketAction):
            return _tcp_connect(port, timeout)
        return _grpc_health(action, port, timeout)

    def _probe_worker(self, app: _AppContainer, probe: Probe) -> None:
        """One probe's worker, as pkg/kubelet/prober/worker.go runs it."""
        generation = -1
        last: bool | None = None
        run = 0
        next_at = time.monotonic()
        while not self._terminating.wait(max(next_at - time.monotonic(), 0.0)):
            now = time.monotonic()
            while next_at <= now:  # a ticker: ticks missed during a slow probe are dropped
                next_at += probe.period_s
            with self._lock:
                if app.busy:
                    continue
                if app.generation != generation:  # a new container: results start over
                    generation, last, run = app.generation, None, 0
                if now - app.started_at < probe.initial_delay_s:
                    continue
                # Startup probes run until they succeed; the others only after that.
                if (probe.kind == "startup") == app.started:
                    continue
            ok, output = self._probe_once(app, probe.action, probe.timeout_s)
            with self._lock:
                if app.generation != generation or app.busy or self._terminating.is_set():
                    continue
            self._record(app, f"{probe.kind}Probe {'success' if ok else 'failure'}", output)
            run = run + 1 if ok == last else 1
            last = ok
            if (not ok and run < probe.failure_threshold) or (ok and run < probe.success_threshold):
                continue
            if probe.kind == "readiness":
                self._set_ready(app, ok, output)
            elif ok and probe.kind == "startup":
                with self._lock:
                    app.started = True
                self._record(app, "started")
                if app.plan.probe("readiness") is None:
                    self._set_ready(app, True, "no readiness probe")
            elif not ok:
                # Liveness or startup failed failureThreshold times in a row: kill and restart.
                run = 0
                self._spawn(
                    self._restart, app, f"{probe.kind} probe failed {probe.failure_threshold} times", generation
                )


def _remove_pod_containers(client: docker.DockerClient, pod_id: str) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{POD_LABEL}={pod_id}"}):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)


def containers_created(client: docker.DockerClient, pod_id: str, since: float) -> list[str]:
    """Names (the pod-spec names) of the pod's containers Docker created since ``since`` (time.time()).

    Read from the engine's own event log, so it holds even after the containers were removed.
    """
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    events = client.events(
        since=datetime.datetime.fromtimestamp(since, datetime.UTC),
        until=until,
        filters={"type": "container", "event": "create", "label": f"{POD_LABEL}={pod_id}"},
        decode=True,
    )
    return [event["Actor"]["Attributes"][CONTAINER_LABEL] for event in events]


def _image_user(client: docker.DockerClient, image: str) -> str:
    return str(client.images.get(image).attrs["Config"].get("User") or "")


def _run_init_container(client: docker.DockerClient, plan: ContainerPlan, pod: Pod, dirs: Mapping[str, Path]) -> None:
    image_user = _image_user(client, plan.image)
    check_run_as_non_root(plan, image_user)
    container = client.containers.create(
        **docker_create_arguments(plan, pod.plan, dirs, pod_id=pod.pod_id, publish=False, image_user=image_user)
    )
    container.start()
    pod._note(plan.name, "container started", "init")
    try:
        result = container.wait(timeout=INIT_TIMEOUT_S)
    except Exception as error:  # requests' ReadTimeout: the init container hangs
        raise InitContainerFailed(
            plan.name, -1, f"did not finish in {INIT_TIMEOUT_S:g}s: {error}", pod.pod_id
        ) from None
    code = int(result["StatusCode"])
    pod._note(plan.name, "exited", f"exit {code}")
    if code != 0:
        raise InitContainerFailed(plan.name, code, container.logs().decode(errors="replace"), pod.pod_id)


@contextlib.contextmanager
def run_pod(
    client: docker.DockerClient,
    objects: Sequence[Obj],
    deployment_name: str,
    *,
    claims: Mapping[str, Path] | None = None,
    time_scale: float = 1.0,
) -> Iterator[Pod]:
    """Run Deployment ``deployment_name``'s pod with Docker as a kubelet would; remove it all after.

    Args:
        client: A Docker client (the docker_client fixture).
        objects: What `kubectl kustomize` printed.
        deployment_name: The Deployment whose pod template runs.
        claims: PersistentVolumeClaim claimName -> the host directory standing for the volume.
        time_scale: Multiplies probe periods and initial delays (0.2: the kubelet's clock 5x fast).

    Yields:
        The running pod, its probes already running (not yet necessarily Ready).

    Raises:
        UnsupportedPodField: The pod spec uses a field the runner does not implement.
        ContainerRefused: runAsNonRoot with a root or non-numeric user.
        InitContainerFailed: An init container exited non-zero (no app container was created).
    """
    plan = plan_pod(objects, deployment_name, claims=claims, time_scale=time_scale)
    pod_id = f"tfpack-kubelet-{uuid.uuid4().hex[:10]}"
    scratch = Path(tempfile.mkdtemp(prefix=f"{pod_id}-"))
    pod = Pod(client, plan, pod_id)
    unmounts = contextlib.ExitStack()
    try:
        dirs = _materialize(plan, scratch, unmounts)
        for init in plan.init_containers:
            _run_init_container(client, init, pod, dirs)
        created: dict[str, Any] = {}
        for app in plan.containers:
            image_user = _image_user(client, app.image)
            check_run_as_non_root(app, image_user)
            created[app.name] = client.containers.create(
                **docker_create_arguments(app, plan, dirs, pod_id=pod_id, publish=True, image_user=image_user)
            )
        pod._start(created)
        yield pod
    finally:
        pod._join()
        _remove_pod_containers(client, pod_id)
        unmounts.close()
        shutil.rmtree(scratch, ignore_errors=True)
