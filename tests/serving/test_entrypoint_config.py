"""Issue 13: the image's serving configuration as the entrypoint bakes and reads it back.

Every baked version of every model is served, with its version labels; monitoring and batching
are baked into the server's flags and cannot be overridden at run time; serving.json format 2
is checked field by field. No Docker and no model server: the files are laid out in a temp dir.
"""

from __future__ import annotations

import json
import subprocess
import sys
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
    load_baked,
    main,
    model_config_text,
    prepare,
    server_command,
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
