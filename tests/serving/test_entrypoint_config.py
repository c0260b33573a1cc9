"""Issue 13: the image's serving configuration as the entrypoint bakes and reads it back.

Every baked version of every model is served, with its version labels; monitoring and batching
are baked into the server's flags and cannot be overridden at run time; serving.json format 2
is checked field by field. No Docker and no model server: the files are laid out in a temp dir.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import CliResult
from factories.image_layout import baked_layout
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from packager.errors import UsageError, VerificationError
from serving.batching import read_batching_parameters
from serving.entrypoint import (
    BATCHING_CONFIG_FILE,
    EMBEDDED_SERVER,
    MODEL_CONFIG_FILE,
    MONITORING_CONFIG_FILE,
    SERVING_FILE,
    SERVING_FORMAT,
    SESSION_CONFIG,
    SESSION_CONFIG_FILE,
    TF_SERVING_SERVER,
    BakedServing,
    ImageLayout,
    baked_etc_files,
    check_arguments,
    check_mounts,
    deployment_model_config_text,
    load_baked,
    main,
    model_config_text,
    prepare,
    server_command,
    verify_image,
    verify_models,
)
from serving.metrics import read_prometheus_path

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

BATCHING = "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 1000 }\n"


# The signed digests a build of half v1, v2 and twin v3 records (any sha256 will do here).
DIGESTS = {"half": {"1": "sha256:" + "1" * 64, "2": "sha256:" + "2" * 64}, "twin": {"3": "sha256:" + "3" * 64}}


def _baked(**fields: object) -> BakedServing:
    if not fields.get("allow_unsigned"):
        fields.setdefault("digests", DIGESTS)
    return BakedServing(
        model_server=EMBEDDED_SERVER,
        models={"half": [1, 2], "twin": [3]},
        **fields,  # type: ignore[arg-type]
    )


def _unsigned_image(tmp_path: Path, model_server: str = EMBEDDED_SERVER, **serving: object) -> ImageLayout:
    """An unsigned image's /etc/tfpack and /models: half v1, v2 and twin v3."""
    for name, version in (("half", 1), ("half", 2), ("twin", 3)):
        (tmp_path / "models" / name / str(version)).mkdir(parents=True)
        (tmp_path / "models" / name / str(version) / "saved_model.pb").write_bytes(b"graph")
    return baked_layout(tmp_path, None, model_server, allow_unsigned=True, **serving)


# --- models.config --------------------------------------------------------------------------------


def test_model_config_serves_every_version_with_its_labels_as_tf_serving_prints_it() -> None:
    baked = _baked(labels={"half": {"stable": 1, "canary": 2}})
    text = model_config_text(baked, '/srv/odd "root"')
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    # The mirror of ModelServerConfig the entrypoint carries prints exactly what the real one does.
    assert text == text_format.MessageToString(config)
    half, twin = config.model_config_list.config
    assert (half.name, half.base_path, half.model_platform) == ("half", '/srv/odd "root"/half', "tensorflow")
    assert list(half.model_version_policy.specific.versions) == [1, 2]
    assert dict(half.version_labels) == {"stable": 1, "canary": 2}
    assert (twin.name, list(twin.model_version_policy.specific.versions), dict(twin.version_labels)) == (
        "twin",
        [3],
        {},
    )
    assert model_config_text(_baked()).count('base_path: "/models/') == 2


# --- serving.json -----------------------------------------------------------------------------------


def test_serving_json_round_trips_labels_monitoring_and_batching() -> None:
    baked = _baked(labels={"half": {"stable": 1}}, monitoring=True, batching=True)
    data = json.loads(baked.dumps())
    assert data["format"] == SERVING_FORMAT == 2
    assert (data["labels"], data["monitoring"], data["batching"]) == ({"half": {"stable": 1}}, True, True)
    assert BakedServing.loads(baked.dumps()) == baked
    plain = BakedServing.loads(_baked().dumps())
    assert (plain.labels, plain.monitoring, plain.batching) == ({}, False, False)


@pytest.mark.parametrize(
    ("labels", "why"),
    [
        ({"half": {"stable": 3}}, r"label half:stable=3: model half has no version 3 \(it has 1, 2\)"),
        ({"ghost": {"stable": 1}}, r"labels for model 'ghost', which is not baked"),
        ({"half": {"st able": 1}}, r"label 'st able' of model half: label names are letters, digits, _ and -"),
        ({"half": {"x/../y": 1}}, r"label 'x/../y' of model half"),
        ({"half": {"stable": "1"}}, r"label half:stable: its version must be a number, not '1'"),
        ({"half": {"stable": True}}, r"label half:stable: its version must be a number, not True"),
        ({"half": ["stable"]}, r"labels of model half must map each label to a version"),
    ],
)
def test_labels_must_name_a_baked_version_with_a_plain_name(labels: object, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        _baked(labels=labels)
    # Read back, the same rule names serving.json.
    text = json.dumps({**_baked().to_json(), "labels": labels})
    with pytest.raises(UsageError, match=rf"^serving.json is not a tfpack serving config \({why}"):
        BakedServing.loads(text)


def test_older_and_newer_formats_are_refused_in_one_line() -> None:
    format_1 = {k: v for k, v in _baked().to_json().items() if k not in ("labels", "monitoring", "batching")}
    with pytest.raises(UsageError, match=r"format 1, written by an older tfpack .* highest version\): rebuild"):
        BakedServing.loads(json.dumps({**format_1, "format": 1}))
    with pytest.raises(UsageError, match=r"format must be 2"):
        BakedServing.loads(json.dumps({**format_1, "format": 3}))
    for flag in ("monitoring", "batching"):
        with pytest.raises(UsageError, match=r"monitoring and batching must be true or false"):
            BakedServing.loads(json.dumps({**_baked().to_json(), flag: "yes"}))


# --- baked_etc_files --------------------------------------------------------------------------------


def test_baked_etc_files_hold_every_file_but_the_trust(tmp_path: Path) -> None:
    baked = _baked(labels={"half": {"stable": 2}})
    files = baked_etc_files(baked, batching_parameters=None)
    assert sorted(files) == sorted([SERVING_FILE, MODEL_CONFIG_FILE, SESSION_CONFIG_FILE])
    assert BakedServing.loads(files[SERVING_FILE]) == baked
    assert files[MODEL_CONFIG_FILE] == model_config_text(baked)
    assert files[SESSION_CONFIG_FILE] == SESSION_CONFIG
    assert "allow_soft_placement: true" in SESSION_CONFIG

    both = _baked(monitoring=True, batching=True)
    files = baked_etc_files(both, batching_parameters=BATCHING)
    assert sorted(files) == sorted(
        [SERVING_FILE, MODEL_CONFIG_FILE, SESSION_CONFIG_FILE, MONITORING_CONFIG_FILE, BATCHING_CONFIG_FILE]
    )
    assert files[BATCHING_CONFIG_FILE] == BATCHING  # the build's file as given
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    # What the embedded server reads from them.
    assert read_prometheus_path(tmp_path / MONITORING_CONFIG_FILE) == "/monitoring/prometheus/metrics"
    assert read_batching_parameters(tmp_path / BATCHING_CONFIG_FILE).max_batch_size == 8


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("max_batch { value: 8 }", r'no field named "max_batch"'),
        ("max_batch_size: 8", r"max_batch_size"),
        ("max_batch_size { value: 0 }", r"BatchingParameters.max_batch_size must be positive"),
        (
            "max_batch_size { value: 8 } allowed_batch_sizes: 4",
            r"final entry in allowed_batch_sizes must equal max_batch_size",
        ),
    ],
)
def test_bad_batching_parameters_are_a_one_line_usage_error(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why) as refused:
        baked_etc_files(_baked(batching=True), batching_parameters=text)
    assert "\n" not in str(refused.value)
    assert refused.value.exit_code == 2


def test_batching_flag_and_parameters_must_agree() -> None:
    with pytest.raises(ValueError, match="batching"):
        baked_etc_files(_baked(batching=True), batching_parameters=None)
    with pytest.raises(ValueError, match="batching"):
        baked_etc_files(_baked(), batching_parameters=BATCHING)


# --- the entrypoint ----------------------------------------------------------------------------------


def test_every_baked_version_must_be_there_and_verified(tmp_path: Path) -> None:
    layout = _unsigned_image(tmp_path)
    baked = load_baked(layout)
    models = layout.models_root
    assert verify_models(layout, baked)[1] == [models / "half" / "1", models / "half" / "2", models / "twin" / "3"]
    # The lower version is served too: without its dir the image refuses to start.
    (models / "half" / "1" / "saved_model.pb").unlink()
    (models / "half" / "1").rmdir()
    with pytest.raises(VerificationError, match=r"half/1 \(a version this image serves\) is missing"):
        verify_models(layout, baked)


def test_the_command_line_adds_monitoring_and_batching_from_the_baked_files(tmp_path: Path) -> None:
    layout = _unsigned_image(
        tmp_path, monitoring=True, batching=True, batching_parameters=BATCHING, labels={"half": {"stable": 1}}
    )
    command = prepare(["--rest_api_num_threads=4"], {}, layout)
    assert command == [
        "/opt/tfpack/venv/bin/tfpack-model-server",
        "--port=8500",
        "--rest_api_port=8501",
        f"--model_config_file={layout.model_config}",
        "--file_system_poll_wait_seconds=0",
        "--max_num_load_retries=0",
        f"--monitoring_config_file={layout.monitoring_config}",
        "--enable_batching",
        f"--batching_parameters_file={layout.batching_config}",
        "--tfpack_allow_reload_config=false",
        "--rest_api_num_threads=4",
    ]
    # Nothing baked, nothing added.
    plain = server_command(layout, BakedServing.loads(_baked(allow_unsigned=True, trust="none").dumps()), [])
    assert not [arg for arg in plain if "monitoring" in arg or "batching" in arg or "label" in arg]


def test_tensorflow_model_server_gets_its_labels_before_the_versions_load(tmp_path: Path) -> None:
    layout = _unsigned_image(tmp_path, TF_SERVING_SERVER, labels={"half": {"stable": 1}})
    assert "--allow_version_labels_for_unavailable_models=true" in prepare([], {}, layout)
    # tfpack-model-server assigns labels once every version has loaded: it needs no such flag.
    embedded = BakedServing.loads(json.dumps({**load_baked(layout).to_json(), "model_server": EMBEDDED_SERVER}))
    assert not [arg for arg in server_command(layout, embedded, []) if "allow_version_labels" in arg]


def test_run_time_arguments_cannot_override_what_the_build_baked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baked = _baked(monitoring=True, batching=True)
    passed, problems = check_arguments(
        [
            "--enable_batching=false",
            "--batching_parameters_file=/tmp/mine",
            "--monitoring_config_file=/tmp/mine",
            "--rest_api_num_threads=4",
        ],
        EMBEDDED_SERVER,
        baked=baked,
    )
    assert passed == ["--rest_api_num_threads=4"]
    assert problems == [
        "--enable_batching=false: the image sets --enable_batching itself (built with tfpack build --batching)",
        "--batching_parameters_file=/tmp/mine: the image sets "
        "--batching_parameters_file=/etc/tfpack/batching.config itself (built with tfpack build --batching)",
        "--monitoring_config_file=/tmp/mine: the image sets "
        "--monitoring_config_file=/etc/tfpack/monitoring.config itself (built with tfpack build --monitoring)",
    ]
    # Without baked batching, turning it on at run time stays a tuning choice.
    assert check_arguments(["--enable_batching"], EMBEDDED_SERVER, baked=_baked()) == (["--enable_batching"], [])
    labelled = BakedServing(
        model_server=TF_SERVING_SERVER,
        models={"half": [1]},
        labels={"half": {"stable": 1}},
        digests={"half": {"1": DIGESTS["half"]["1"]}},
    )
    assert check_arguments(["--allow_version_labels_for_unavailable_models=false"], TF_SERVING_SERVER, baked=labelled)[
        1
    ] == [
        "--allow_version_labels_for_unavailable_models=false: the image sets "
        "--allow_version_labels_for_unavailable_models=true itself (built with tfpack build --label)"
    ]

    layout = _unsigned_image(tmp_path, batching=True, batching_parameters=BATCHING)
    assert main(["--enable_batching=false"], {}, layout) == 2
    assert "--enable_batching=false: the image sets --enable_batching itself" in capsys.readouterr().err


def test_baked_config_files_changed_after_the_build_are_refused(tmp_path: Path) -> None:
    layout = _unsigned_image(tmp_path, monitoring=True, batching=True, batching_parameters=BATCHING)
    load_baked(layout)
    # Formatting is not content: the build's protobuf and the image's may print differently.
    config = text_format.Parse(layout.model_config.read_text(), model_server_config_pb2.ModelServerConfig())
    layout.model_config.write_text(text_format.MessageToString(config, as_one_line=True))
    load_baked(layout)

    # A field the build never writes (here: request logging to a file) is a change.
    logged = layout.model_config.read_text().replace(
        'model_platform: "tensorflow"', 'model_platform: "tensorflow" logging_config { }', 1
    )
    layout.model_config.write_text(logged)
    with pytest.raises(VerificationError, match=r"models.config is not the model config .* changed after the build"):
        load_baked(layout)
    layout.model_config.write_text(text_format.MessageToString(config))
    load_baked(layout)

    good = layout.monitoring_config.read_text()
    layout.monitoring_config.write_text(good.replace("/monitoring/prometheus/metrics", "/metrics"))
    with pytest.raises(VerificationError, match=r"monitoring.config is not the monitoring config"):
        load_baked(layout)
    layout.monitoring_config.unlink()
    with pytest.raises(VerificationError, match=r"cannot read .*monitoring.config"):
        load_baked(layout)
    layout.monitoring_config.write_text(good)

    layout.batching_config.unlink()
    with pytest.raises(VerificationError, match=r"batching.config is missing: .*serving.json says batching is baked"):
        load_baked(layout)


_WITHOUT_TENSORFLOW = """
import importlib.abc, sys
from pathlib import Path


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in ("tensorflow", "tensorflow_serving", "grpc"):
            raise ImportError(f"{name} is not installed here")


sys.meta_path.insert(0, Absent())
from serving.entrypoint import ImageLayout, prepare

root = Path(sys.argv[1])
layout = ImageLayout(root / "etc", root / "models", root / "mountinfo", require_root_owned=False)
print(" ".join(prepare([], {}, layout)))
"""


def test_the_entrypoint_needs_no_tensorflow_serving_api(tmp_path: Path) -> None:
    """A tensorflow/serving base's verifier has protobuf (model-signing needs it) but neither
    TensorFlow, tensorflow-serving-api nor gRPC: the baked files are checked without them."""
    _unsigned_image(tmp_path, TF_SERVING_SERVER, labels={"half": {"stable": 1}}, monitoring=True)
    started = subprocess.run(
        [sys.executable, "-I", "-c", _WITHOUT_TENSORFLOW, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    assert "--allow_version_labels_for_unavailable_models=true" in started.stdout
    assert f"--monitoring_config_file={tmp_path / 'etc' / MONITORING_CONFIG_FILE}" in started.stdout


# --- issue 14: images that take their models from a read-only volume, the deployment's ConfigMap -----


def test_serving_json_round_trips_models_from_volume() -> None:
    volume = _baked(models_from_volume=True)
    assert json.loads(volume.dumps())["models_from_volume"] is True
    assert BakedServing.loads(volume.dumps()) == volume
    assert json.loads(_baked().dumps())["models_from_volume"] is False
    # Optional like the other booleans: a serving.json without it is an image with baked models.
    without = {k: v for k, v in _baked().to_json().items() if k != "models_from_volume"}
    assert BakedServing.loads(json.dumps(without)).models_from_volume is False
    with pytest.raises(UsageError, match=r"models_from_volume must be true or false"):
        BakedServing.loads(json.dumps({**_baked().to_json(), "models_from_volume": "yes"}))


def _mountinfo(path: Path, *mounts: str) -> Path:
    """A mountinfo file with the root, the engine's /tmp and each "POINT OPTIONS" mount."""
    lines = ["1 0 0:1 / / ro,relatime - overlay overlay rw", "2 1 0:2 / /tmp rw,nosuid - tmpfs tmpfs rw"]
    lines += [
        f"{n} 1 0:{n} / {mount.split()[0]} {mount.split()[1]} - ext4 /dev/sda rw" for n, mount in enumerate(mounts, 3)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("mounts", "volume", "named"),
    [
        (["/models ro,relatime"], True, []),
        (
            ["/models rw,relatime"],
            True,
            ["/models is mounted writable: mount it read-only (readOnly: true in Kubernetes, :ro with docker run)"],
        ),
        (["/models ro", "/models ro"], True, ["/models is mounted more than once"]),
        (["/models ro", "/models/half ro"], True, ["/models/half is mounted at run time below /models"]),
        (["/models/half ro"], True, ["/models/half is mounted at run time below /models"]),
        (["/models ro"], False, ["/models is mounted at run time: the image serves the version dirs it baked"]),
        (["/etc/tfpack-deployment ro,nosuid"], False, []),
        (["/etc/tfpack-deployment ro"], True, []),
        (
            ["/etc/tfpack-deployment rw"],
            False,
            ["/etc/tfpack-deployment is mounted writable: mount the deployment's ConfigMap read-only"],
        ),
        (
            ["/etc/tfpack-deployment/models.config ro"],
            False,
            ["/etc/tfpack-deployment/models.config is mounted at run time: only the engine's own mounts"],
        ),
        # A volume never replaces what the image baked: still refused first.
        (["/models ro", "/etc/tfpack ro"], True, ["/etc/tfpack is mounted at run time: it would replace /etc/tfpack"]),
    ],
)
def test_a_volume_image_takes_one_read_only_mount_at_models_and_any_image_a_read_only_config_map(
    tmp_path: Path, mounts: list[str], volume: bool, named: list[str]
) -> None:
    layout = ImageLayout(
        etc_dir=Path("/etc/tfpack"), models_root=Path("/models"), mountinfo=_mountinfo(tmp_path / "mountinfo", *mounts)
    )
    problems = check_mounts(layout, models_from_volume=volume)
    assert len(problems) == len(named), problems
    for problem, start in zip(problems, named):
        assert problem.startswith(start), problem
    # Before the baked files are read, only mounts over them count.
    baked_only = check_mounts(layout, scope="baked", models_from_volume=volume)
    assert baked_only == [p for p in problems if "it would replace" in p]


@pytest.fixture
def image_root() -> Iterator[Path]:
    """A dir for an image's files outside /tmp: the entrypoint takes /tmp for the engine's scratch
    mount and ignores any mount under it, so the mounts these tests fake must be elsewhere."""
    root = Path(tempfile.mkdtemp(prefix="tfpack-test-image-", dir="/var/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _sign(version_dir: Path, private_key: Path) -> str:
    """Sign ``version_dir`` as tfpack sign does, without its op scan (no TensorFlow here); its digest."""
    from packager.layout import _model_signing_compat as compat
    from packager.signing.bundle import write_signature
    from packager.signing.keys import load_private_key

    bundle = write_signature(compat.key_signer(load_private_key(private_key, None)), version_dir)
    return f"sha256:{bundle.subject_digest}"


def _signed_version(version_dir: Path, private_key: Path, graph: bytes = b"graph") -> str:
    """A small version dir (saved_model.pb and a variables dir), signed; its digest."""
    (version_dir / "variables").mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(graph)
    (version_dir / "variables" / "variables.index").write_bytes(b"index " + graph)
    return _sign(version_dir, private_key)


def _signed_image(image_root: Path, keys: dict[str, Path], **serving: object) -> ImageLayout:
    """A signed image (half v1, v2 and twin v3) with the digests its build records."""
    digests: dict[str, dict[str, str]] = {}
    for name, version in (("half", 1), ("half", 2), ("twin", 3)):
        version_dir = image_root / "models" / name / str(version)
        digests.setdefault(name, {})[str(version)] = _signed_version(
            version_dir, keys["private"], f"{name}{version}".encode()
        )
    return baked_layout(image_root, keys["public"], EMBEDDED_SERVER, digests=digests, **serving)


def _volume_image(image_root: Path, keys: dict[str, Path], **serving: object) -> ImageLayout:
    """A signed volume image whose models volume is image_root/models, mounted read-only."""
    layout = _signed_image(image_root, keys, models_from_volume=True, **serving)
    _mountinfo(layout.mountinfo, f"{layout.models_root} ro,relatime")
    return layout


def test_a_volume_image_serves_only_from_a_read_only_volume_at_models(
    image_root: Path, capsys: pytest.CaptureFixture[str], signing_keys: dict[str, Path]
) -> None:
    layout = _volume_image(image_root, signing_keys)
    assert prepare([], {}, layout)[0] == "/opt/tfpack/venv/bin/tfpack-model-server"
    assert verify_image([], {}, layout).verified == [
        layout.models_root / "half" / "1",
        layout.models_root / "half" / "2",
        layout.models_root / "twin" / "3",
    ]

    capsys.readouterr()

    layout.mountinfo.unlink()  # nothing mounted
    assert main([], {}, layout) == 2
    refusal = capsys.readouterr().err.strip().splitlines()
    assert refusal == [
        "tfpack-entrypoint: refusing to serve: this image serves its models from a volume mounted read-only at "
        f"{layout.models_root} (built with --models-from-volume); none is mounted"
    ]

    _mountinfo(layout.mountinfo, f"{layout.models_root} rw,relatime")
    assert main([], {}, layout) == 2
    assert f"{layout.models_root} is mounted writable: mount it read-only" in capsys.readouterr().err

    # Mounted read-only, the volume is verified as baked dirs are: every served version must be there.
    _mountinfo(layout.mountinfo, f"{layout.models_root} ro")
    shutil.rmtree(layout.models_root / "twin" / "3")
    assert main([], {}, layout) == 3
    assert "twin/3 (a version this image serves) is missing" in capsys.readouterr().err


def test_an_image_with_baked_models_refuses_any_mount_at_models(
    image_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = _unsigned_image(image_root)
    _mountinfo(layout.mountinfo, f"{layout.models_root} ro")
    assert main([], {}, layout) == 2
    assert (
        f"{layout.models_root} is mounted at run time: the image serves the version dirs it baked"
        in capsys.readouterr().err
    )


def _config_map(directory: Path, files: dict[str, str]) -> Path:
    """A dir laid out as Kubernetes mounts a ConfigMap: each file a symlink into ..data."""
    timestamped = directory / "..2024_06_01_12_00_00.123456789"
    timestamped.mkdir(parents=True)
    for name, text in files.items():
        (timestamped / name).write_text(text)
    (directory / "..data").symlink_to(timestamped.name)
    for name in files:
        (directory / name).symlink_to(f"..data/{name}")
    return directory


def test_deployment_model_config_text_is_the_config_the_image_serves() -> None:
    baked = _baked(labels={"half": {"stable": 1, "canary": 2}})
    rendered = deployment_model_config_text({"twin": [3], "half": [1, 2]}, {"half": {"canary": 2, "stable": 1}})
    assert rendered == model_config_text(BakedServing.loads(baked.dumps()))
    config = text_format.Parse(rendered, model_server_config_pb2.ModelServerConfig())
    assert [(m.name, m.base_path) for m in config.model_config_list.config] == [
        ("half", "/models/half"),
        ("twin", "/models/twin"),
    ]
    with pytest.raises(UsageError, match=r"label half:stable=3: model half has no version 3"):
        deployment_model_config_text({"half": [1, 2]}, {"half": {"stable": 3}})


@pytest.mark.parametrize("volume", [False, True], ids=["baked models", "models from a volume"])
def test_the_deployment_config_map_must_hold_the_model_config_the_image_serves(
    image_root: Path, capsys: pytest.CaptureFixture[str], signing_keys: dict[str, Path], volume: bool
) -> None:
    labels = {"half": {"stable": 1}}
    layout = _signed_image(image_root, signing_keys, labels=labels, models_from_volume=volume)
    deployment = image_root / "deployment"
    layout = ImageLayout(
        etc_dir=layout.etc_dir,
        models_root=layout.models_root,
        mountinfo=layout.mountinfo,
        require_root_owned=layout.require_root_owned,
        deployment_dir=deployment,
    )
    volume_mount = [f"{layout.models_root} ro"] if volume else []
    baked = load_baked(layout)
    # The formatting is not the content (as for the baked models.config).
    config = text_format.Parse(
        model_config_text(baked, str(layout.models_root)), model_server_config_pb2.ModelServerConfig()
    )
    _config_map(deployment, {"models.config": text_format.MessageToString(config, as_one_line=True)})
    _mountinfo(layout.mountinfo, *volume_mount, f"{deployment} ro,relatime")
    assert prepare([], {}, layout)[0] == "/opt/tfpack/venv/bin/tfpack-model-server"

    # Rendered for another image: another label.
    (deployment / "..data" / "models.config").write_text(
        model_config_text(
            BakedServing.loads(json.dumps({**baked.to_json(), "labels": {"half": {"stable": 2}}})),
            str(layout.models_root),
        )
    )
    with pytest.raises(VerificationError) as refused:
        verify_image([], {}, layout)
    assert str(refused.value) == (
        f"{deployment}/models.config (the deployment's ConfigMap) is not the model server config this image "
        "serves: render the manifests again with 'tfpack k8s' for this image"
    )
    assert main([], {}, layout) == 3
    capsys.readouterr()

    # Mounted writable: refused before it is read.
    _mountinfo(layout.mountinfo, *volume_mount, f"{deployment} rw")
    assert main([], {}, layout) == 2
    assert f"{deployment} is mounted writable" in capsys.readouterr().err

    # Mounted without models.config.
    (deployment / "models.config").unlink()
    _mountinfo(layout.mountinfo, *volume_mount, f"{deployment} ro")
    assert main([], {}, layout) == 2
    assert f"{deployment}/models.config cannot be read (No such file or directory)" in capsys.readouterr().err

    # Not mounted: whatever the image holds at that path is not a deployment's.
    _mountinfo(layout.mountinfo, *volume_mount)
    assert prepare([], {}, layout)[0] == "/opt/tfpack/venv/bin/tfpack-model-server"


def test_serving_verify_checks_what_the_entrypoint_checks_and_does_not_serve(
    image_root: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    signing_keys: dict[str, Path],
) -> None:
    from serving import verify

    layout = _volume_image(image_root, signing_keys)
    models = layout.models_root
    assert verify.main([], {}, layout) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"tfpack-verify: verified 3 version dirs: {models}/half/1, {models}/half/2, {models}/twin/3; not serving"
    ]
    for arguments in (["--port=9000"], ["--stage-from"], ["--stage-from", "/tfpack-claim", "--port=9000"]):
        assert verify.main(arguments, {}, layout) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"tfpack-verify: refusing to verify: {' '.join(arguments)}: serving.verify takes no arguments but "
            "--stage-from /tfpack-claim (what it checks is baked into the image)"
        ]
    assert verify.main([], {"TFPACK_ALLOW_UNSIGNED": "1"}, layout) == 2
    assert "TFPACK_ALLOW_UNSIGNED is set" in capsys.readouterr().err
    layout.mountinfo.unlink()
    assert verify.main([], {}, layout) == 2
    assert "none is mounted" in capsys.readouterr().err
    _mountinfo(layout.mountinfo, f"{models} ro")
    shutil.rmtree(models / "half" / "2")
    assert verify.main([], {}, layout) == 3
    assert "half/2 (a version this image serves) is missing" in capsys.readouterr().err

    def broken(*_: object) -> None:
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(verify, "verify_image", broken)
    assert verify.main([], {}, layout) == 1
    assert capsys.readouterr().err.splitlines() == [
        "tfpack-verify: refusing to serve: verification failed unexpectedly: RuntimeError: a bug"
    ]


_VERIFY_WITHOUT_TENSORFLOW = _WITHOUT_TENSORFLOW.replace(
    "from serving.entrypoint import ImageLayout, prepare",
    "from serving.entrypoint import ImageLayout\nfrom serving.verify import main",
).replace('print(" ".join(prepare([], {}, layout)))', "sys.exit(main([], {}, layout))")


def test_serving_verify_needs_no_tensorflow_serving_api(image_root: Path, signing_keys: dict[str, Path]) -> None:
    """The initContainer runs serving.verify in either base: the verifier venv suffices."""
    layout = _volume_image(image_root, signing_keys, labels={"half": {"stable": 1}})
    assert layout.mountinfo == image_root / "mountinfo"  # where the script's layout looks
    started = subprocess.run(
        [sys.executable, "-I", "-c", _VERIFY_WITHOUT_TENSORFLOW, str(image_root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    assert started.stderr.startswith("tfpack-verify: verified 3 version dirs:"), started.stderr


# --- issue 14: exactly the bytes the image was built for, copied out of the claim's reach first ------


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"digests": {"half": DIGESTS["half"]}}, r"no signed digest for twin/3: every served version needs one"),
        ({"digests": {}}, r"no signed digest for half/1, half/2, twin/3"),
        ({"digests": {**DIGESTS, "twin": {"3": "sha256:" + "A" * 64}}}, r"digest of twin/3 must be sha256:<64 hex"),
        ({"digests": {**DIGESTS, "twin": {"3": "3" * 64}}}, r"digest of twin/3 must be sha256:<64 hex"),
        ({"digests": {**DIGESTS, "twin": {"03": "sha256:" + "3" * 64}}}, r"digest of twin/03: model twin has no"),
        ({"digests": {**DIGESTS, "twin": {"4": "sha256:" + "3" * 64}}}, r"digest of twin/4: model twin has no"),
        ({"digests": {**DIGESTS, "ghost": {"1": "sha256:" + "3" * 64}}}, r"digests for model 'ghost', which is not"),
        ({"digests": {**DIGESTS, "twin": ["sha256:" + "3" * 64]}}, r"digests of model twin must map each version"),
        ({"digests": ["half"]}, r"digests must map each model to \{version: digest\}"),
        (
            {"allow_unsigned": True, "trust": "none", "digests": DIGESTS},
            r"digests without trust material: nothing could verify a signed version",
        ),
        (
            {"allow_unsigned": True, "models_from_volume": True},
            r"models_from_volume with allow_unsigned: a volume's models must each be the signed one the build verified",
        ),
        (
            {"allow_unsigned": True, "trust": "none", "models_from_volume": True},
            r"models_from_volume with allow_unsigned",
        ),
    ],
)
def test_serving_json_records_the_signed_digest_of_every_served_version(fields: dict[str, object], why: str) -> None:
    with pytest.raises(UsageError, match=why):
        _baked(**fields)
    text = json.dumps({**_baked().to_json(), **fields})
    with pytest.raises(
        UsageError, match=rf"^serving.json is not a tfpack serving config \({why}.*\): rebuild the image"
    ):
        BakedServing.loads(text)


def test_serving_json_round_trips_the_digests_and_only_allow_unsigned_may_leave_one_out() -> None:
    baked = _baked()
    assert json.loads(baked.dumps())["digests"] == DIGESTS
    assert BakedServing.loads(baked.dumps()) == baked
    assert (baked.digest("half", 2), baked.digest("twin", 3), baked.digest("twin", 4)) == (
        DIGESTS["half"]["2"],
        DIGESTS["twin"]["3"],
        None,
    )
    # An image of an older tfpack recorded none: refused, not served unbound.
    without = {k: v for k, v in baked.to_json().items() if k != "digests"}
    with pytest.raises(UsageError, match=r"no signed digest for half/1, half/2, twin/3.*rebuild the image"):
        BakedServing.loads(json.dumps(without))
    # With allow-unsigned a version may have none (it was unsigned at build), others keep theirs.
    partly = _baked(allow_unsigned=True, digests={"half": DIGESTS["half"]})
    assert (partly.digest("half", 1), partly.digest("twin", 3)) == (DIGESTS["half"]["1"], None)
    assert BakedServing.loads(partly.dumps()) == partly


def test_build_refuses_models_from_a_volume_with_allow_unsigned(
    tmp_path: Path, tfpack_cli: Callable[..., CliResult]
) -> None:
    (tmp_path / "half" / "1").mkdir(parents=True)
    refused = tfpack_cli(
        "build", tmp_path / "half", "--tag", "tfpack-test/never:1", "--models-from-volume", "--allow-unsigned"
    )
    assert refused.exit_code == 2
    assert (
        "--models-from-volume cannot be combined with --allow-unsigned: each version on the volume must verify at "
        "every start to the signed digest the build recorded for it, and an unsigned one has none; sign the models "
        "with 'tfpack sign'"
    ) in " ".join(refused.stderr.split())
    from packager.image import MODELS_FROM_VOLUME_UNSIGNED, build_image

    with pytest.raises(UsageError) as raised:  # before any model is read or Docker reached
        build_image(tmp_path / "missing", "tfpack-test/never:1", allow_unsigned=True, models_from_volume=True)
    assert str(raised.value) == MODELS_FROM_VOLUME_UNSIGNED


@pytest.mark.parametrize("volume", [False, True], ids=["baked models", "models from a volume"])
def test_a_version_signed_by_the_trusted_key_but_not_the_one_built_for_is_refused(
    image_root: Path, capsys: pytest.CaptureFixture[str], signing_keys: dict[str, Path], volume: bool
) -> None:
    layout = _signed_image(image_root, signing_keys, models_from_volume=volume)
    if volume:
        _mountinfo(layout.mountinfo, f"{layout.models_root} ro")
    built = load_baked(layout).digest("half", 1)
    # Another model (an older, vulnerable one, say) signed by the very key the image trusts.
    shutil.rmtree(layout.models_root / "half" / "1")
    other = _signed_version(layout.models_root / "half" / "1", signing_keys["private"], b"another model")
    assert other != built
    with pytest.raises(VerificationError) as refused:
        verify_image([], {}, layout)
    assert str(refused.value) == (
        f"{layout.models_root}/half/1 verifies against the baked trust but is not the version this image was built "
        f"for: its signed digest is {other}, the build recorded {built}"
    )
    assert main([], {}, layout) == 3
    assert capsys.readouterr().err.count("\n") == 1

    # An unsigned dir where a signed one was built: refused even by an image allowing unsigned models.
    (layout.models_root / "half" / "1" / "model.sig").unlink()
    with pytest.raises(VerificationError, match=r"half/1 is unsigned"):
        verify_image([], {}, layout)
    if not volume:
        allowing = BakedServing.loads(json.dumps({**load_baked(layout).to_json(), "allow_unsigned": True}))
        with pytest.raises(
            VerificationError, match=rf"half/1 is unsigned, but this image was built for a signed one \({built}\)"
        ):
            verify_models(layout, allowing)


def _symlinked_version(models: Path) -> str:
    shutil.move(models / "half" / "2", models.parent / "elsewhere")
    (models / "half" / "2").symlink_to(models.parent / "elsewhere")
    return f"{models}/half/2 is a symlink: model and version dirs hold only directories and regular files"


def _symlinked_model(models: Path) -> str:
    shutil.move(models / "twin", models.parent / "twin")
    (models / "twin").symlink_to(models.parent / "twin")
    return f"{models}/twin is a symlink"


def _fifo_in_a_version(models: Path) -> str:
    os.mkfifo(models / "half" / "1" / "variables" / "pipe")
    return f"{models}/half/1/variables/pipe is a FIFO"


@pytest.mark.parametrize("volume", [False, True], ids=["baked models", "models from a volume"])
@pytest.mark.parametrize("plant", [_symlinked_version, _symlinked_model, _fifo_in_a_version])
def test_the_entrypoint_refuses_links_and_special_files_under_models(
    image_root: Path,
    capsys: pytest.CaptureFixture[str],
    signing_keys: dict[str, Path],
    volume: bool,
    plant: Callable[[Path], str],
) -> None:
    layout = _signed_image(image_root, signing_keys, models_from_volume=volume)
    if volume:
        _mountinfo(layout.mountinfo, f"{layout.models_root} ro")
    named = plant(layout.models_root)
    assert main([], {}, layout) == 3
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and named in lines[0], lines


def _stage_layout(image_root: Path, keys: dict[str, Path], **serving: object) -> ImageLayout:
    """A volume image about to stage: the claim at image_root/claim (mounted read-only) holding the
    served half v1, v2 and twin v3, and /models an empty dir mounted writable."""
    layout = dataclasses.replace(
        _signed_image(image_root, keys, models_from_volume=True, **serving), claim_dir=image_root / "claim"
    )
    layout.models_root.rename(layout.claim_dir)
    layout.models_root.mkdir()
    _mountinfo(layout.mountinfo, f"{layout.claim_dir} ro,relatime", f"{layout.models_root} rw,relatime")
    return layout


def _tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """{relative path: (mode bits, bytes or None for a dir)} of everything under root."""
    return {
        str(path.relative_to(root)): (path.lstat().st_mode & 0o7777, None if path.is_dir() else path.read_bytes())
        for path in sorted(root.rglob("*"))
    }


def test_serving_verify_stages_the_served_versions_from_the_claim_and_verifies_the_copy(
    image_root: Path, capsys: pytest.CaptureFixture[str], signing_keys: dict[str, Path]
) -> None:
    from serving import verify

    layout = _stage_layout(image_root, signing_keys)
    claim, models = layout.claim_dir, layout.models_root
    (claim / "half" / "1" / "saved_model.pb").chmod(0o600)  # the copy's modes are the copy's own
    served = _tree(claim)
    # What the claim holds besides is never copied, nor even looked into: an unserved version with
    # a link in it, a model the image does not serve with a FIFO in it.
    (claim / "half" / "7").mkdir()
    (claim / "half" / "7" / "passwd").symlink_to("/etc/passwd")
    (claim / "ghost" / "1").mkdir(parents=True)
    os.mkfifo(claim / "ghost" / "1" / "pipe")

    assert verify.main(["--stage-from", str(claim)], {"MODEL_NAME": "half"}, layout) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"tfpack-verify: staged and verified 3 version dirs from {claim}: "
        f"{models}/half/1, {models}/half/2, {models}/twin/3; not serving"
    ]
    copied = _tree(models)
    # Besides the copy, only the marker that lets a retry empty the dir again.
    assert copied.pop(".tfpack-staging")[1] is None
    assert {path: data for path, (_, data) in copied.items()} == {path: data for path, (_, data) in served.items()}
    assert {mode for _, (mode, data) in copied.items() if data is None} == {0o755}
    assert {mode for _, (mode, data) in copied.items() if data is not None} == {0o644}

    # The server's container: that copy mounted read-only at /models, no claim; verified again.
    _mountinfo(layout.mountinfo, f"{models} ro")
    assert prepare([], {}, layout)[0] == "/opt/tfpack/venv/bin/tfpack-model-server"
    # ... and it never takes the claim itself.
    _mountinfo(layout.mountinfo, f"{models} ro", f"{claim} ro")
    assert main([], {}, layout) == 2
    assert f"{claim} is mounted at run time: the model server never reads the models claim" in capsys.readouterr().err


def _claim_link(claim: Path) -> str:
    (claim / "half" / "1" / "variables" / "key").symlink_to("/etc/passwd")
    return f"{claim}/half/1/variables/key is a symlink: model and version dirs hold only directories and regular files"


def _claim_fifo(claim: Path) -> str:
    os.mkfifo(claim / "twin" / "3" / "pipe")
    return f"{claim}/twin/3/pipe is a FIFO"


def _claim_socket(claim: Path) -> str:
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(claim / "half" / "2" / "sock"))
    return f"{claim}/half/2/sock is a socket"


def _claim_linked_version(claim: Path) -> str:
    shutil.move(claim / "half" / "2", claim / "half" / "9")
    (claim / "half" / "2").symlink_to("9")
    return f"{claim}/half/2 is a symlink"


def _claim_linked_model(claim: Path) -> str:
    shutil.move(claim / "twin", claim / "twin-real")
    (claim / "twin").symlink_to("twin-real")
    return f"{claim}/twin is a symlink"


def _claim_missing_version(claim: Path) -> str:
    shutil.rmtree(claim / "twin" / "3")
    return f"{claim}/twin/3 (a version this image serves) is missing from the claim"


def _claim_two_spellings(claim: Path) -> str:
    shutil.copytree(claim / "half" / "1", claim / "half" / "01")
    return f"{claim}/half/01 and {claim}/half/1 all name version 1 of {claim}/half: remove all but one"


def _claim_tampered(claim: Path) -> str:
    with (claim / "twin" / "3" / "saved_model.pb").open("ab") as graph:
        graph.write(b"\0")
    # Copied as it is, then refused by the verification of the copy.
    return f"{claim.parent / 'models'}/twin/3 does not match its signature: modified: saved_model.pb"


def _claim_other_model(claim: Path) -> str:
    """Another model in half/1, signed by the very key the image trusts."""
    shutil.rmtree(claim / "half" / "1")
    other = _signed_version(claim / "half" / "1", KEYS["private"], b"another model")
    return f"half/1 verifies against the baked trust but is not the version this image was built for: its signed digest is {other}"


KEYS: dict[str, Path] = {}


@pytest.mark.parametrize(
    "plant",
    [
        _claim_link,
        _claim_fifo,
        _claim_socket,
        _claim_linked_version,
        _claim_linked_model,
        _claim_missing_version,
        _claim_two_spellings,
        _claim_tampered,
        _claim_other_model,
    ],
)
def test_staging_refuses_what_is_not_the_signed_version_built_for_and_leaves_models_empty(
    image_root: Path,
    capsys: pytest.CaptureFixture[str],
    signing_keys: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    plant: Callable[[Path], str],
) -> None:
    from serving import verify

    monkeypatch.setitem(KEYS, "private", signing_keys["private"])
    layout = _stage_layout(image_root, signing_keys)
    named = plant(layout.claim_dir)
    assert verify.main(["--stage-from", str(layout.claim_dir)], {}, layout) == 3
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfpack-verify: refusing to serve: ") and named in lines[0], lines
    assert list(layout.models_root.iterdir()) == []  # a retry starts from an empty dir


def test_staging_replaces_a_previous_copy_left_in_the_empty_dir(
    image_root: Path, capsys: pytest.CaptureFixture[str], signing_keys: dict[str, Path]
) -> None:
    """An emptyDir outlives its initContainer: a retry finds the killed attempt's partial copy (or
    a planted file) and must stage afresh, neither refuse forever nor serve what it found."""
    from serving import verify
    from serving.entrypoint import STAGING_MARKER

    layout = _stage_layout(image_root, signing_keys)
    models = layout.models_root
    # Files staging did not write (a store mounted there by mistake) are refused, never deleted.
    (models / "precious").mkdir()
    assert verify.main(["--stage-from", str(layout.claim_dir)], {}, layout) == 2
    assert "is not empty and holds no earlier staging's" in capsys.readouterr().err
    assert sorted(p.name for p in models.iterdir()) == ["precious"]
    (models / "precious").rmdir()
    # A staging killed mid-copy left its marker and a partial copy: the next one starts afresh.
    (models / STAGING_MARKER).mkdir()
    (models / "half" / "1").mkdir(parents=True)
    (models / "half" / "1" / "saved_model.pb").write_bytes(b"half a copy")
    (models / "stray.txt").write_text("planted\n")
    (models / "link").symlink_to(layout.claim_dir)
    assert verify.main(["--stage-from", str(layout.claim_dir)], {}, layout) == 0, capsys.readouterr().err
    assert sorted(p.name for p in models.iterdir()) == [STAGING_MARKER, "half", "twin"]
    staged = models / "half" / "1" / "saved_model.pb"
    assert staged.read_bytes() == (layout.claim_dir / "half" / "1" / "saved_model.pb").read_bytes()
    assert (layout.claim_dir / "half").is_dir()  # the symlink was removed, not what it pointed at


def test_staging_takes_only_its_mounts_an_empty_models_dir_and_the_claim_dir(
    image_root: Path, capsys: pytest.CaptureFixture[str], signing_keys: dict[str, Path]
) -> None:
    from serving import verify

    layout = _stage_layout(image_root, signing_keys)
    claim, models = layout.claim_dir, layout.models_root

    def refusal(*arguments: str) -> str:
        assert verify.main(list(arguments or ["--stage-from", str(claim)]), {}, layout) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert refusal("--stage-from", "/srv/models") == (
        f"tfpack-verify: refusing to serve: --stage-from /srv/models: stage from {claim}, where the models claim "
        "is mounted read-only"
    )
    _mountinfo(layout.mountinfo, f"{claim} ro")
    assert f"nothing is mounted at {models}: mount an empty writable dir there" in refusal()
    _mountinfo(layout.mountinfo, f"{models} rw")
    assert f"nothing is mounted at {claim}: mount the models claim, read-only there" in refusal()
    _mountinfo(layout.mountinfo, f"{claim} rw", f"{models} rw")
    assert f"{claim} is mounted writable: mount the models claim read-only" in refusal()
    assert verify.main(["--stage-from", str(claim)], {"PYTHONPATH": "/claim"}, layout) == 2
    assert "PYTHONPATH is set" in capsys.readouterr().err
    assert list(models.iterdir()) == []

    # An image with baked models has nothing to stage.
    baked = image_root / "baked"
    baked.mkdir()
    plain = dataclasses.replace(_signed_image(baked, signing_keys), claim_dir=claim)
    assert verify.main(["--stage-from", str(claim)], {}, plain) == 2
    assert "--stage-from is for an image built with --models-from-volume" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("mounts", "named"),
    [
        (["/tfpack-claim ro,relatime", "/models rw,relatime"], []),
        (["/tfpack-claim ro", "/models rw", "/etc/tfpack-deployment ro"], []),
        (["/tfpack-claim rw", "/models rw"], ["/tfpack-claim is mounted writable: mount the models claim read-only"]),
        (["/tfpack-claim ro", "/models ro"], ["/models is mounted read-only: serving.verify --stage-from copies"]),
        (["/tfpack-claim ro", "/tfpack-claim ro", "/models rw"], ["/tfpack-claim is mounted more than once"]),
        (["/tfpack-claim ro", "/models rw", "/models rw"], ["/models is mounted more than once"]),
        (["/tfpack-claim ro", "/models rw", "/models/half rw"], ["/models/half is mounted at run time below /models"]),
        (
            ["/tfpack-claim ro", "/tfpack-claim/half ro", "/models rw"],
            ["/tfpack-claim/half is mounted at run time below /tfpack-claim"],
        ),
        (["/tfpack-claim ro", "/models rw", "/srv ro"], ["/srv is mounted at run time: only the engine's own mounts"]),
        (
            ["/tfpack-claim ro", "/models rw", "/etc/tfpack-deployment rw"],
            ["/etc/tfpack-deployment is mounted writable"],
        ),
        (
            ["/tfpack-claim ro", "/models rw", "/opt/tfpack ro"],
            ["/opt/tfpack is mounted at run time: it would replace"],
        ),
    ],
)
def test_staging_mounts_the_claim_read_only_and_an_empty_dir_writable_and_nothing_else(
    tmp_path: Path, mounts: list[str], named: list[str]
) -> None:
    layout = ImageLayout(
        etc_dir=Path("/etc/tfpack"), models_root=Path("/models"), mountinfo=_mountinfo(tmp_path / "mountinfo", *mounts)
    )
    assert layout.claim_dir == Path("/tfpack-claim")
    problems = check_mounts(layout, scope="stage", models_from_volume=True)
    assert len(problems) == len(named), problems
    for problem, start in zip(problems, named):
        assert problem.startswith(start), problem


@pytest.mark.parametrize(
    ("plant", "named"),
    [
        (_claim_link, "half/1/variables/key is a symlink"),
        (_claim_fifo, "twin/3/pipe is a FIFO"),
        (_claim_linked_version, "half/2 cannot be opened as a directory"),
    ],
)
def test_the_copy_itself_never_follows_a_link_that_appears_after_the_check(
    image_root: Path,
    capsys: pytest.CaptureFixture[str],
    signing_keys: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    plant: Callable[[Path], str],
    named: str,
) -> None:
    """The claim may change between the walk and the copy (another pod writes it): the copy opens
    every entry relative to its parent without following links, whatever the walk saw."""
    from serving import staging, verify

    layout = _stage_layout(image_root, signing_keys)
    plant(layout.claim_dir)
    monkeypatch.setattr(staging, "unservable_entries", lambda root: [])  # the walk saw nothing wrong
    assert verify.main(["--stage-from", str(layout.claim_dir)], {}, layout) == 3
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"{layout.claim_dir}/{named}" in lines[0], lines
    assert list(layout.models_root.iterdir()) == []


def test_a_volume_image_serves_from_an_empty_dir_never_from_another_kubernetes_volume(tmp_path: Path) -> None:
    """In a pod, what is mounted at /models says where it comes from: the kubelet's emptyDir (the
    verified copy) is served; a claim mounted there directly, which others may write while the
    server loads, is refused. (docker run binds stay the operator's own directory.)"""
    layout = ImageLayout(mountinfo=tmp_path / "mountinfo")
    pods = "/var/lib/kubelet/pods/0b1c/volumes"
    base = ["1 0 0:1 / / ro,relatime - overlay overlay rw"]
    for root, refused in (
        (f"{pods}/kubernetes.io~empty-dir/models", False),
        (f"{pods}/kubernetes.io~csi/pvc-12/mount", True),
        (f"{pods}/kubernetes.io~nfs/models", True),
        ("/srv/models", False),
    ):
        layout.mountinfo.write_text("\n".join([*base, f"3 1 8:1 {root} /models ro,relatime - ext4 /dev/sda rw"]) + "\n")
        problems = check_mounts(layout, models_from_volume=True)
        assert bool(problems) == refused, (root, problems)
        if refused:
            assert "is a Kubernetes volume other than an emptyDir" in problems[0]


def test_staging_refuses_a_models_dir_that_is_the_claims_own_store(tmp_path: Path) -> None:
    layout = ImageLayout(mountinfo=tmp_path / "mountinfo", claim_dir=Path("/tfpack-claim"))
    base = "1 0 0:1 / / ro,relatime - overlay overlay rw"
    for models_root, claim_root, refused in (
        ("/pvc", "/pvc", True),
        ("/pvc/staging", "/pvc", True),
        ("/pvc", "/pvc/models", True),
        ("/pods/empty-dir/models", "/pvc", False),
    ):
        layout.mountinfo.write_text(
            f"{base}\n3 1 8:1 {claim_root} /tfpack-claim ro - ext4 /dev/sda rw\n"
            f"4 1 8:1 {models_root} /models rw - ext4 /dev/sda rw\n"
        )
        problems = check_mounts(layout, scope="stage", models_from_volume=True)
        assert any("are the same store" in p for p in problems) == refused, (models_root, claim_root, problems)
