"""Issue 14: images whose models come from a read-only volume, and the facts Kubernetes sizes pods from.

``tfpack build --models-from-volume`` verifies the models at build as always but bakes none of
them: /models is an empty mount point, and the entrypoint (or ``serving.verify``, the
Kubernetes initContainer) verifies the one read-only volume mounted there at every start. The
labels every image carries say how many bytes each version dir holds and how many towers a
merged-towers model has. Without Docker: the labels and layers. With Docker, one volume image
(embedded base) run as Kubernetes would run it (user 10001:10001, read-only root, /tmp a tmpfs,
no capabilities): it serves from the read-only volume, refuses no volume, a writable one, a
tampered one and a deployment ConfigMap rendered for another image. As tfpack k8s runs it:
``serving.verify --stage-from`` copies the served versions from the read-only claim into an
emptyDir (only those: nothing else on the claim), the server serves that copy mounted read-only;
a tampered claim, or one holding another model signed by the same trusted key, is refused.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import grpc
import pytest
from conftest import CliResult, new_image_tag

from packager.errors import UsageError
from packager.image import (
    BuildResult,
    build_image,
    find_models,
    image_labels,
    image_layers,
    served_digests,
    version_dir_bytes,
)
from packager.layout import PROVENANCE_FILE, Provenance, TensorSummary
from packager.signing import sign
from packager.smoke import smoke_image
from serving.entrypoint import EMBEDDED_SERVER, BakedServing, deployment_model_config_text
from tests.factories.half_plus_two import write_half_plus_two_tf2
from tests.smoke.support import MODEL as SMOKE_MODEL
from tests.smoke.support import golden_y, write_assets
from tests.test_image_trust import AVAILABLE, _predict, _statuses, _wait_available, write_model

MODEL = "half"
EXIT_DEADLINE_S = 120
ENTRYPOINT_PYTHON = "/opt/tfpack/venv/bin/python"
VERIFY = [ENTRYPOINT_PYTHON, "-I", "-m", "serving.verify"]
# How a Kubernetes pod with tfpack k8s's security context runs the container.
AS_KUBERNETES: dict[str, Any] = {
    "user": "10001:10001",
    "read_only": True,
    "tmpfs": {"/tmp": ""},
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
}


# --- without Docker: the labels and the layers -------------------------------------------------------


def _provenance(version_dir: Path, towers: object) -> None:
    Provenance(
        model_name=MODEL,
        version=int(version_dir.name),
        source={"path": "half.pb", "format": "graphdef", "files": {}},
        tfpack_version="0.1.0",
        tensorflow_version="2.21.0",
        options={},
        inputs={"x": TensorSummary("float32", [None])},
        outputs={"y": TensorSummary("float32", [None])},
        tolerance=1e-5,
        max_abs_error=0.0,
        extra={"towers": towers},
    ).save(version_dir / PROVENANCE_FILE)


def _version_dir(version_dir: Path, towers: object = None) -> Path:
    version_dir.mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(b"g" * 100)
    (version_dir / "variables").mkdir()
    (version_dir / "variables" / "variables.index").write_bytes(b"i" * 20)
    (version_dir / "model.sig").write_bytes(b"s" * 7)
    if towers is not None:
        _provenance(version_dir, towers)
    return version_dir


def _digests(models: dict[str, list[int]]) -> dict[str, dict[str, str]]:
    """Signed digests a build would record for these versions (any sha256 will do here)."""
    return {name: {str(v): f"sha256:{v:064x}" for v in versions} for name, versions in models.items()}


def _labels(models: dict[str, list[Path]], serving: BakedServing) -> dict[str, str]:
    return image_labels(
        models,
        {},
        tag="tfpack-test/labels:1",
        base="embedded",
        model_server=EMBEDDED_SERVER,
        allow_unsigned=True,
        public_key_pem=None,
        serving=serving,
    )


@pytest.mark.fast
def test_labels_say_each_version_dirs_bytes_and_a_merged_models_towers(tmp_path: Path) -> None:
    base = tmp_path / MODEL
    _version_dir(base / "1", towers={"mode": "merge", "count": 2, "towers": [{"device": "/device:GPU:0"}]})
    _version_dir(base / "2", towers={"mode": "split", "count": 2})  # served per tower: no GPUs needed
    _version_dir(base / "3", towers={"mode": "merge", "count": 1})
    _version_dir(base / "4", towers={"mode": "merge", "count": True})
    _version_dir(base / "5")  # no provenance at all
    (_version_dir(base / "6") / PROVENANCE_FILE).parent.mkdir()
    (base / "6" / PROVENANCE_FILE).write_text("{not json")  # unreadable: no label, never an error
    _version_dir(base / "7", towers={"mode": "merge", "count": 4})
    models = find_models(base)
    serving = BakedServing(
        model_server=EMBEDDED_SERVER, models={MODEL: list(range(1, 8))}, trust="none", allow_unsigned=True
    )
    labels = _labels(models, serving)

    towers = {key: value for key, value in labels.items() if key.endswith(".towers")}
    assert towers == {f"dev.tfpack.model.{MODEL}.1.towers": "2", f"dev.tfpack.model.{MODEL}.7.towers": "4"}
    for version in range(1, 8):
        expected = 127 + ((base / str(version) / PROVENANCE_FILE).stat().st_size if version != 5 else 0)
        assert labels[f"dev.tfpack.model.{MODEL}.{version}.bytes"] == str(expected)
        assert version_dir_bytes(base / str(version)) == expected
    assert "dev.tfpack.models-from-volume" not in labels
    # The same dirs, the same labels (so the same image ID).
    assert _labels(models, serving) == labels

    volume = BakedServing(
        model_server=EMBEDDED_SERVER, models=serving.models, models_from_volume=True, digests=_digests(serving.models)
    )
    volume_labels = _labels(models, volume)
    assert volume_labels["dev.tfpack.models-from-volume"] == "true"
    # Sized from the version dirs the volume must hold, exactly as if they were baked.
    assert {k: v for k, v in volume_labels.items() if k.endswith((".bytes", ".towers"))} == {
        k: v for k, v in labels.items() if k.endswith((".bytes", ".towers"))
    }


@pytest.mark.fast
def test_a_volume_image_has_an_empty_models_dir_instead_of_model_layers(tmp_path: Path) -> None:
    base = tmp_path / MODEL
    _version_dir(base / "1")
    models = find_models(base)
    volume = BakedServing(
        model_server=EMBEDDED_SERVER, models={MODEL: [1]}, models_from_volume=True, digests=_digests({MODEL: [1]})
    )
    layers = image_layers(models, volume, public_key_pem=None, epoch=1_700_000_000)
    assert [layer.description for layer in layers][1:] == [
        "/etc/tfpack",
        "/models: the mount point of the read-only models volume",
    ]
    with tarfile.open(fileobj=io.BytesIO(b"".join(layers[2].chunks()))) as archive:
        members = archive.getmembers()
    assert [(m.name, m.isdir(), m.uid, m.gid, m.mode) for m in members] == [("models", True, 0, 0, 0o755)]
    etc = b"".join(layers[1].chunks())
    assert b'"models_from_volume": true' in etc
    assert f'"1": "{_digests({MODEL: [1]})[MODEL]["1"]}"'.encode() in etc  # what the volume must hold

    # What could never be baked is refused for a volume too: a volume image must hold what a
    # baked one would.
    (base / "1" / "leak").symlink_to("/etc/passwd")
    with pytest.raises(UsageError, match=r"leak is a symlink"):
        image_layers(models, volume, public_key_pem=None, epoch=1_700_000_000)


@pytest.mark.fast
def test_serving_json_records_the_digest_of_every_signed_version_as_its_label_does(tmp_path: Path) -> None:
    half = [_version_dir(tmp_path / "models" / MODEL / v) for v in ("1", "02")]
    twin = [_version_dir(tmp_path / "models" / "twin" / "3")]
    signed = {half[0]: "sha256:" + "a" * 64, half[1]: "sha256:" + "b" * 64}
    models = {MODEL: half, "twin": twin}
    # Keyed by version number (02 is version 2), and an unsigned dir (allow-unsigned) has none.
    assert served_digests(models, signed) == {MODEL: {"1": "sha256:" + "a" * 64, "2": "sha256:" + "b" * 64}}
    labels = image_labels(
        models,
        signed,
        tag="t:1",
        base="embedded",
        model_server=EMBEDDED_SERVER,
        allow_unsigned=True,
        public_key_pem=None,
    )
    assert {k: v for k, v in labels.items() if k.endswith(".digest")} == {
        f"dev.tfpack.model.{MODEL}.1.digest": "sha256:" + "a" * 64,
        f"dev.tfpack.model.{MODEL}.02.digest": "sha256:" + "b" * 64,
    }


# --- with Docker: one volume image, run as Kubernetes runs it ---------------------------------------


@pytest.fixture(scope="module")
def client(docker_client: docker.DockerClient) -> docker.DockerClient:
    return docker_client


def _readable_dirs(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory, signing_keys: dict[str, Path]) -> Path:
    """The models volume: half/1 (0.5x + 2), signed with the key the image trusts."""
    root = tmp_path_factory.mktemp("volume") / "models"
    write_model(root / MODEL / "1", offset=2.0, key=signing_keys["private"])
    _readable_dirs(root)
    return root


@pytest.fixture(scope="module")
def tampered(tmp_path_factory: pytest.TempPathFactory, volume: Path) -> Path:
    """The same volume with one byte appended to half/1's graph after signing."""
    root = tmp_path_factory.mktemp("tampered") / "models"
    shutil.copytree(volume, root)
    with (root / MODEL / "1" / "saved_model.pb").open("ab") as graph:
        graph.write(b"\0")
    _readable_dirs(root)
    return root


@pytest.fixture(scope="module")
def claim(tmp_path_factory: pytest.TempPathFactory, volume: Path) -> Path:
    """The models claim: the volume plus what the image does not serve, which staging never
    copies or opens: an unsigned half/2 with a link to /etc/passwd, a model it does not serve."""
    root = tmp_path_factory.mktemp("claim") / "models"
    shutil.copytree(volume, root)
    (root / MODEL / "2").mkdir()
    (root / MODEL / "2" / "passwd").symlink_to("/etc/passwd")
    (root / "ghost" / "1").mkdir(parents=True)
    (root / "ghost" / "1" / "saved_model.pb").write_bytes(b"not verified, not copied")
    _readable_dirs(root)
    return root


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory, volume: Path, signing_keys: dict[str, Path]) -> Path:
    """The volume with half/1 another model (0.5x + 7) signed by the very key the image trusts."""
    root = tmp_path_factory.mktemp("foreign") / "models"
    write_model(root / MODEL / "1", offset=7.0, key=signing_keys["private"])
    _readable_dirs(root)
    return root


def _staging_dir(tmp_path: Path) -> Path:
    """An empty dir the image's user may write, as Kubernetes makes an emptyDir (0777)."""
    staging = tmp_path / "staging"
    staging.mkdir()
    staging.chmod(0o777)
    return staging


def _config_map(directory: Path, models_config: str) -> Path:
    """A dir as Kubernetes mounts a ConfigMap: models.config a symlink into ..data/."""
    data = directory / "..2024_06_01_12_00_00.000000001"
    data.mkdir(parents=True)
    (data / "models.config").write_text(models_config)
    (directory / "..data").symlink_to(data.name)
    (directory / "models.config").symlink_to("..data/models.config")
    _readable_dirs(directory)
    (data / "models.config").chmod(0o644)
    return directory


@pytest.fixture(scope="module")
def config_maps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """'right': the models.config tfpack k8s renders for the image; 'wrong': one for another image."""
    root = tmp_path_factory.mktemp("config-maps")
    root.chmod(0o755)
    return {
        "right": _config_map(root / "right", deployment_model_config_text({MODEL: [1]}, {})),
        "wrong": _config_map(root / "wrong", deployment_model_config_text({MODEL: [1]}, {MODEL: {"stable": 1}})),
    }


@pytest.fixture(scope="module")
def image(volume: Path, signing_keys: dict[str, Path], image_tags: list[str]) -> BuildResult:
    return build_image(
        volume / MODEL, new_image_tag(image_tags, "volume"), public_key=signing_keys["public"], models_from_volume=True
    )


def _ro(path: Path) -> dict[str, str]:
    return {"bind": str(path), "mode": "ro"}


@pytest.mark.docker
def test_the_image_holds_no_model_and_says_so(client: docker.DockerClient, image: BuildResult, volume: Path) -> None:
    assert image.models_from_volume and image.to_json()["models_from_volume"] is True
    assert image.serving is not None and image.serving.models_from_volume
    assert image.models == {MODEL: [1]}
    labels = client.images.get(image.tag).labels
    assert labels["dev.tfpack.models-from-volume"] == "true"
    assert labels[f"dev.tfpack.model.{MODEL}.versions"] == "1"
    assert labels[f"dev.tfpack.model.{MODEL}.1.bytes"] == str(version_dir_bytes(volume / MODEL / "1"))
    assert labels[f"dev.tfpack.model.{MODEL}.1.digest"].startswith("sha256:")
    # The one digest each served version must verify to, at every start.
    assert image.serving.digests == {MODEL: {"1": labels[f"dev.tfpack.model.{MODEL}.1.digest"]}}
    container = client.containers.create(image.tag)  # never started: only its files are read
    try:
        stream, _ = container.get_archive("/models")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            members = archive.getmembers()
    finally:
        container.remove(force=True)
    assert [(m.name, m.isdir(), m.uid, m.mode & 0o7777) for m in members] == [("models", True, 0, 0o755)]


def _memory_mib(container: Any) -> dict[str, float]:
    """A running container's memory as docker stats reads its cgroup (v1 or v2), in MiB.

    ``usage`` counts the page cache too (the model files read); ``working_set`` leaves out the
    inactive file cache (what ``docker stats`` and the kubelet show); ``anonymous`` is the
    process memory alone (rss).
    """
    memory = container.stats(stream=False)["memory_stats"]
    stats = memory.get("stats") or {}
    usage = int(memory["usage"])
    inactive = int(stats.get("total_inactive_file", stats.get("inactive_file", 0)))
    anonymous = int(stats.get("total_rss", stats.get("anon", 0)))
    mib = 2**20
    return {"usage": usage / mib, "working_set": (usage - inactive) / mib, "anonymous": anonymous / mib}


def _one_line(logs: str) -> str:
    lines = [line for line in logs.splitlines() if line.startswith(("tfpack-entrypoint:", "tfpack-verify:"))]
    assert len(lines) == 1, logs
    return lines[0]


@pytest.mark.docker
def test_the_verifier_stages_the_claim_and_the_server_serves_the_read_only_copy(
    client: docker.DockerClient,
    image: BuildResult,
    volume: Path,
    claim: Path,
    config_maps: dict[str, Path],
    tmp_path: Path,
) -> None:
    """As tfpack k8s runs a volume image: the initContainer copies the served versions from the
    read-only claim into an emptyDir and verifies them; the server mounts that copy read-only."""
    staging = _staging_dir(tmp_path)
    config_map = _ro(Path("/etc/tfpack-deployment"))
    verifier = client.containers.run(
        image.tag,
        detach=True,
        entrypoint=[*VERIFY, "--stage-from", "/tfpack-claim"],
        environment={"MODEL_NAME": MODEL},
        volumes={
            str(claim): _ro(Path("/tfpack-claim")),
            str(staging): {"bind": "/models", "mode": "rw"},
            str(config_maps["right"]): config_map,
        },
        **AS_KUBERNETES,
    )
    try:
        code = verifier.wait(timeout=EXIT_DEADLINE_S)["StatusCode"]
        logs = verifier.logs().decode(errors="replace")
    finally:
        verifier.remove(force=True)
    assert code == 0, logs
    assert _one_line(logs) == (
        "tfpack-verify: staged and verified 1 version dir from /tfpack-claim: /models/half/1; not serving"
    )
    # The served version, byte for byte, and nothing else of the claim.
    source, copy = volume / MODEL / "1", staging / MODEL / "1"
    assert sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()) == sorted(
        f"{MODEL}/1/{p.relative_to(source).as_posix()}" for p in source.rglob("*") if p.is_file()
    )
    assert all((copy / p.relative_to(source)).read_bytes() == p.read_bytes() for p in source.rglob("*") if p.is_file())
    assert {p.stat().st_uid for p in staging.rglob("*")} == {10001}

    container = client.containers.run(
        image.tag,
        detach=True,
        ports={"8500/tcp": ("127.0.0.1", None)},
        volumes={str(staging): _ro(Path("/models")), str(config_maps["right"]): config_map},
        **AS_KUBERNETES,
    )
    try:
        container.reload()
        with grpc.insecure_channel(f"127.0.0.1:{container.ports['8500/tcp'][0]['HostPort']}") as channel:
            _wait_available(container, channel, MODEL)
            assert _statuses(channel, MODEL) == [(1, AVAILABLE)]
            assert _predict(channel, MODEL, 2.0) == (3.0, 1)
            # What pods are sized from (printed; run with -s to see it).
            memory = ", ".join(f"{name} {value:.0f} MiB" for name, value in _memory_mib(container).items())
            print(f"\nthe volume image with {MODEL} AVAILABLE (embedded base): {memory}")
        logs = container.logs().decode(errors="replace")
        assert "tfpack-entrypoint: signatures verified: /models/half/1" in logs, logs
    finally:
        container.remove(force=True)


@pytest.mark.docker
def test_smoke_image_of_a_volume_image_says_how_to_smoke_test_it(
    client: docker.DockerClient, image: BuildResult
) -> None:
    with pytest.raises(
        UsageError, match=r"holds no model: it serves them from a read-only volume at /models"
    ) as refused:
        smoke_image(image.tag, None)
    assert "give --models-dir DIR" in str(refused.value)
    assert refused.value.exit_code == 2
    assert not client.containers.list(all=True, filters={"ancestor": image.tag})


@pytest.mark.docker
def test_smoke_mounts_the_models_dir_read_only_into_a_volume_image(
    tmp_path_factory: pytest.TempPathFactory,
    signing_keys: dict[str, Path],
    image_tags: list[str],
    tfpack_cli: Callable[..., CliResult],
) -> None:
    root = tmp_path_factory.mktemp("smoke-volume") / "models"
    version_dir = write_assets(write_half_plus_two_tf2(root / SMOKE_MODEL, 1), {"y": golden_y()})
    sign(version_dir, signing_keys["private"])
    _readable_dirs(root)
    tag = new_image_tag(image_tags, "volume-smoke")
    build_image(root / SMOKE_MODEL, tag, public_key=signing_keys["public"], models_from_volume=True)

    refused = tfpack_cli("smoke", tag, "--model", SMOKE_MODEL)
    assert refused.exit_code == 2 and "give --models-dir DIR" in refused.stderr, refused.stderr
    passed = tfpack_cli("smoke", tag, "--models-dir", root, "--json")
    assert passed.exit_code == 0, passed.stdout + passed.stderr
    report = json.loads(passed.stdout)
    assert report["passed"] is True
    # The checks sent the mounted version dir's golden inputs and compared its golden outputs.
    assert {"grpc_predict", "rest_predict"} <= {check["name"] for check in report["checks"]}, report["checks"]


# (id, volumes {fixture key[:rw]: container path}, serve (False), verify (True) or "stage" from the claim,
# exit code, what the one line names)
REFUSALS = [
    (
        "no volume",
        {},
        False,
        2,
        "serves its models from a volume mounted read-only at /models (built with --models-from-volume); none is mounted",
    ),
    (
        "writable volume",
        {"volume:rw": "/models"},
        False,
        2,
        "/models is mounted writable: mount it read-only (readOnly: true in Kubernetes, :ro with docker run)",
    ),
    ("tampered volume", {"tampered": "/models"}, False, 3, "/models/half/1"),
    (
        "ConfigMap of another image",
        {"volume": "/models", "wrong": "/etc/tfpack-deployment"},
        False,
        3,
        "/etc/tfpack-deployment/models.config (the deployment's ConfigMap) is not the model server config this "
        "image serves: render the manifests again with 'tfpack k8s' for this image",
    ),
    (
        "serving.verify, good volume",
        {"volume": "/models", "right": "/etc/tfpack-deployment"},
        True,
        0,
        "tfpack-verify: verified 1 version dir: /models/half/1; not serving",
    ),
    ("serving.verify, tampered volume", {"tampered": "/models"}, True, 3, "/models/half/1"),
    (
        "serving.verify --stage-from, tampered claim",
        {"tampered": "/tfpack-claim", "staging:rw": "/models"},
        "stage",
        3,
        "/models/half/1",
    ),
    (
        "serving.verify --stage-from, another model signed by the trusted key",
        {"foreign": "/tfpack-claim", "staging:rw": "/models"},
        "stage",
        3,
        "/models/half/1 verifies against the baked trust but is not the version this image was built for: its "
        "signed digest is sha256:",
    ),
]


@pytest.mark.docker
@pytest.mark.parametrize(
    ("volumes", "verify", "exit_code", "named"), [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS]
)
def test_the_entrypoint_and_serving_verify_refuse_what_is_not_the_verified_volume(
    client: docker.DockerClient,
    image: BuildResult,
    volume: Path,
    tampered: Path,
    foreign: Path,
    config_maps: dict[str, Path],
    tmp_path: Path,
    volumes: dict[str, str],
    verify: bool | str,
    exit_code: int,
    named: str,
) -> None:
    hosts = {"volume": volume, "tampered": tampered, "foreign": foreign, **config_maps}
    binds = {}
    for key, target in volumes.items():
        name, _, mode = key.partition(":")
        host = _staging_dir(tmp_path) if name == "staging" else hosts[name]
        binds[str(host)] = {"bind": target, "mode": mode or "ro"}
    entrypoint = [*VERIFY, "--stage-from", "/tfpack-claim"] if verify == "stage" else VERIFY if verify else None
    container = client.containers.run(image.tag, detach=True, volumes=binds, entrypoint=entrypoint, **AS_KUBERNETES)
    try:
        code = container.wait(timeout=EXIT_DEADLINE_S)["StatusCode"]
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert code == exit_code, logs
    lines = [line for line in logs.splitlines() if line.startswith(("tfpack-entrypoint:", "tfpack-verify:"))]
    assert len(lines) == 1 and named in lines[0], logs
    if exit_code:
        assert "refusing to serve: " in lines[0]
        if named == "/models/half/1":
            assert "saved_model.pb" in lines[0], lines[0]
    assert "exec " not in logs, logs
    if verify == "stage":  # a failed stage leaves nothing behind for the server (or a retry)
        assert list((tmp_path / "staging").iterdir()) == [], logs
