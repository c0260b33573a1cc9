"""Issue 13: the image's serving configuration as the entrypoint bakes and reads it back.

Every baked version of every model is served, with its version labels; monitoring and batching
are baked into the server's flags and cannot be overridden at run time; serving.json format 2
is checked field by field. No Docker and no model server: the files are laid out in a temp dir.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
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


def _baked(**fields: object) -> BakedServing:
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
    labelled = BakedServing(model_server=TF_SERVING_SERVER, models={"half": [1]}, labels={"half": {"stable": 1}})
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


def _volume_image(image_root: Path, **serving: object) -> ImageLayout:
    """An unsigned volume image whose models volume is image_root/models, mounted read-only."""
    layout = _unsigned_image(image_root, models_from_volume=True, **serving)
    _mountinfo(layout.mountinfo, f"{layout.models_root} ro,relatime")
    return layout


def test_a_volume_image_serves_only_from_a_read_only_volume_at_models(
    image_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = _volume_image(image_root)
    assert prepare([], {}, layout)[0] == "/opt/tfpack/venv/bin/tfpack-model-server"
    assert verify_image([], {}, layout).unsigned == [
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
    (layout.models_root / "twin" / "3" / "saved_model.pb").unlink()
    (layout.models_root / "twin" / "3").rmdir()
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
    image_root: Path, capsys: pytest.CaptureFixture[str], volume: bool
) -> None:
    labels = {"half": {"stable": 1}}
    layout = _unsigned_image(image_root, labels=labels, models_from_volume=volume)
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
    image_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving import verify

    layout = _volume_image(image_root)
    models = layout.models_root
    assert verify.main([], {}, layout) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"tfpack-verify: verified 3 version dirs: {models}/half/1, {models}/half/2, {models}/twin/3 "
        f"({models}/half/1, {models}/half/2, {models}/twin/3 unsigned, allowed by the build's --allow-unsigned); "
        "not serving"
    ]
    assert verify.main(["--port=9000"], {}, layout) == 2
    assert capsys.readouterr().err.splitlines() == [
        "tfpack-verify: refusing to verify: --port=9000: serving.verify takes no arguments "
        "(what it checks is baked into the image)"
    ]
    assert verify.main([], {"TFPACK_ALLOW_UNSIGNED": "1"}, layout) == 2
    assert "TFPACK_ALLOW_UNSIGNED is set" in capsys.readouterr().err
    layout.mountinfo.unlink()
    assert verify.main([], {}, layout) == 2
    assert "none is mounted" in capsys.readouterr().err
    _mountinfo(layout.mountinfo, f"{models} ro")
    (models / "half" / "2" / "saved_model.pb").unlink()
    (models / "half" / "2").rmdir()
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


def test_serving_verify_needs_no_tensorflow_serving_api(image_root: Path) -> None:
    """The initContainer runs serving.verify in either base: the verifier venv suffices."""
    layout = _volume_image(image_root, labels={"half": {"stable": 1}})
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
