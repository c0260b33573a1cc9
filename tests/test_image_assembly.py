"""packager.image_assembly and the layers packager.image writes: the same inputs, the same bytes.

No engine here: the tar streams, the config JSON and the ``docker load`` archive are checked as
bytes (tests/test_image.py loads them into a real engine and checks the image IDs it gives).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from packager import _runtime_wheel
from packager.errors import ToolError, UsageError
from packager.image import (
    CODE_EPOCH,
    HEALTHCHECK,
    code_layer,
    etc_layer,
    find_models,
    image_layers,
    model_layer,
    parse_version_labels,
    public_source_url,
    source_date_epoch,
)
from packager.image_assembly import (
    BaseImage,
    Healthcheck,
    Layer,
    LayerFile,
    RunConfig,
    base_history,
    image_config,
    image_id,
    layers_present,
    load_archive,
    measure,
    rfc3339,
)
from serving.entrypoint import BakedServing, model_config_text

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

EPOCH = 1_700_000_000


def _tar(layer: Layer) -> bytes:
    return b"".join(layer.chunks())


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return archive.getmembers()


def _read(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        handle = archive.extractfile(name)
        assert handle is not None, name
        return handle.read()


def _write_model(base_path: Path, versions: tuple[int, ...] = (1, 2)) -> Path:
    """A model base path whose version dirs look like SavedModels (image_layers reads bytes only)."""
    for version in versions:
        version_dir = base_path / str(version)
        (version_dir / "variables").mkdir(parents=True)
        (version_dir / "assets").mkdir()  # empty, as tf.saved_model.save leaves it
        (version_dir / "saved_model.pb").write_bytes(f"graph of {base_path.name} v{version}".encode())
        (version_dir / "variables" / "variables.index").write_bytes(b"index")
        (version_dir / "model.sig").write_text("{}")
    return base_path


# --- layers ----------------------------------------------------------------------------------------


def test_a_layer_is_sorted_root_owned_fixed_mode_and_fixed_time(tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(b"w" * 1000)
    source.chmod(0o600)  # the host's mode and owner do not reach the layer
    os.utime(source, (5, 5))
    layer = Layer(
        description="test",
        files=(
            LayerFile.from_bytes("opt/app/run", b"#!/bin/sh\n", 0o755),
            LayerFile.from_disk("models/m/1/weights.bin", source),
            LayerFile.from_bytes("models/m/1/a.txt", b"a"),
            LayerFile.from_bytes("opt/app/lib/x.py", b"x = 1\n"),
        ),
        mtime=EPOCH,
        directories=("etc/empty",),
    )
    data = _tar(layer)
    members = _members(data)
    assert [m.name for m in members] == [
        "etc",
        "etc/empty",
        "models",
        "models/m",
        "models/m/1",
        "models/m/1/a.txt",
        "models/m/1/weights.bin",
        "opt",
        "opt/app",
        "opt/app/lib",
        "opt/app/lib/x.py",
        "opt/app/run",
    ]
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname, member.mtime) == (0, 0, "", "", EPOCH)
        expected = 0o755 if member.isdir() or member.name == "opt/app/run" else 0o644
        assert member.mode == expected, member.name
    assert _read(data, "models/m/1/weights.bin") == b"w" * 1000
    digest = measure(layer)
    assert digest.diff_id == f"sha256:{hashlib.sha256(data).hexdigest()}" and digest.size == len(data)
    assert len(data) % 512 == 0


def test_the_same_files_give_the_same_bytes_whatever_their_times_and_modes(tmp_path: Path) -> None:
    def layer_of(directory: Path, mode: int, mtime: int) -> Layer:
        directory.mkdir()
        (directory / "f").write_bytes(b"same")
        (directory / "f").chmod(mode)
        os.utime(directory / "f", (mtime, mtime))
        return Layer(description="d", files=(LayerFile.from_disk("x/f", directory / "f"),), mtime=EPOCH)

    first, second = layer_of(tmp_path / "a", 0o600, 1), layer_of(tmp_path / "b", 0o664, 2_000_000_000)
    assert _tar(first) == _tar(second) and measure(first) == measure(second)


def test_a_long_or_non_ascii_path_is_kept_and_still_deterministic() -> None:
    name = "models/m/1/assets/" + "x" * 150 + "/\u00e9t\u00e9.txt"
    layer = Layer(description="d", files=(LayerFile.from_bytes(name, b"1"),), mtime=EPOCH)
    assert _tar(layer) == _tar(layer)
    assert name in [m.name for m in _members(_tar(layer))]


def test_a_file_that_changes_between_the_two_passes_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"1234")
    layer = Layer(description="d", files=(LayerFile.from_disk("f", source),), mtime=EPOCH)
    source.write_bytes(b"12345")
    with pytest.raises(ToolError, match="changed while the image was being assembled"):
        measure(layer)
    source.write_bytes(b"12")
    with pytest.raises(ToolError, match="changed while the image was being assembled"):
        measure(layer)


def test_two_files_with_one_path_are_refused() -> None:
    layer = Layer(description="d", files=(LayerFile.from_bytes("a", b"1"), LayerFile.from_bytes("a", b"2")), mtime=0)
    with pytest.raises(ToolError, match="names a twice"):
        layer.entries()


# --- the config and the archive -----------------------------------------------------------------------

BASE = BaseImage(
    reference="base:1",
    image_id="sha256:" + "b" * 64,
    diff_ids=("sha256:" + "1" * 64, "sha256:" + "2" * 64),
    architecture="amd64",
    os="linux",
    env=("PATH=/usr/bin", "MODEL_NAME=model", "LANG=C.UTF-8"),
    working_dir="/srv",
    labels={"base.label": "kept", "shared": "base"},
    history=({"created": "2020-01-01T00:00:00Z", "created_by": "import"},),
)
RUN = RunConfig(
    entrypoint=("/bin/serve", "-x"),
    user="10001:10001",
    exposed_ports=(8500, 8501),
    env={"MODEL_NAME": "half", "MODEL_BASE_PATH": "/models"},
    labels={"shared": "mine", "org.opencontainers.image.title": "half"},
    healthcheck=Healthcheck(test=("CMD", "/bin/check"), interval_s=10, timeout_s=5, start_period_s=600, retries=3),
)


def test_the_config_is_canonical_json_with_the_fixed_time() -> None:
    layer = Layer(description="model half", files=(LayerFile.from_bytes("models/half/1/x", b"x"),), mtime=EPOCH)
    measured = [(layer, measure(layer))]
    config = image_config(BASE, RUN, measured, created=EPOCH)
    assert config == image_config(BASE, RUN, measured, created=EPOCH)
    assert image_id(config) == f"sha256:{hashlib.sha256(config).hexdigest()}"
    parsed = json.loads(config)
    assert config == json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()
    assert parsed["created"] == rfc3339(EPOCH) == "2023-11-14T22:13:20Z"
    assert parsed["rootfs"] == {"type": "layers", "diff_ids": [*BASE.diff_ids, measured[0][1].diff_id]}
    assert parsed["history"] == [
        {"created": "2020-01-01T00:00:00Z", "created_by": "import"},
        {"created": rfc3339(EPOCH), "created_by": "model half", "comment": "tfpack build"},
    ]
    run = parsed["config"]
    # The base's Env in order, MODEL_NAME replaced where the base sets it, new names appended.
    assert run["Env"] == ["PATH=/usr/bin", "MODEL_NAME=half", "LANG=C.UTF-8", "MODEL_BASE_PATH=/models"]
    assert run["Labels"] == {"base.label": "kept", "shared": "mine", "org.opencontainers.image.title": "half"}
    assert (run["Entrypoint"], run["Cmd"], run["User"], run["WorkingDir"]) == (
        ["/bin/serve", "-x"],
        [],
        "10001:10001",
        "/srv",
    )
    assert run["ExposedPorts"] == {"8500/tcp": {}, "8501/tcp": {}}
    assert run["Healthcheck"] == {
        "Test": ["CMD", "/bin/check"],
        "Interval": 10_000_000_000,
        "Timeout": 5_000_000_000,
        "StartPeriod": 600_000_000_000,
        "Retries": 3,
    }
    assert image_config(BASE, RUN, measured, created=EPOCH + 1) != config


def test_the_base_history_pairs_each_layer_with_its_step() -> None:
    engine_history = [  # docker history: newest first
        {"Created": 30, "CreatedBy": '/bin/sh -c #(nop)  CMD ["python3"]', "Size": 0},
        {"Created": 20, "CreatedBy": "/bin/sh -c #(nop) COPY file:abc in /tmp ", "Size": 0},
        {"Created": 15, "CreatedBy": "|1 X=1 /bin/sh -c set -eu; true", "Size": 0},
        {"Created": 10, "CreatedBy": "", "Size": 100, "Comment": "Imported from -"},
    ]
    assert base_history(engine_history, 3) == (
        {"created": rfc3339(10), "created_by": "", "comment": "Imported from -"},
        {"created": rfc3339(15), "created_by": "|1 X=1 /bin/sh -c set -eu; true"},
        {"created": rfc3339(20), "created_by": "/bin/sh -c #(nop) COPY file:abc in /tmp "},
        {"created": rfc3339(30), "created_by": '/bin/sh -c #(nop)  CMD ["python3"]', "empty_layer": True},
    )
    # Counts that disagree with the layers: one plain entry per layer instead.
    assert base_history(engine_history, 2) == (
        {"created": rfc3339(0), "created_by": "base layer 1"},
        {"created": rfc3339(0), "created_by": "base layer 2"},
    )


def test_layers_present_is_the_longest_chain_an_image_holds() -> None:
    mine = ["a", "b", "c", "d"]
    assert layers_present([], mine) == 0
    assert layers_present([["a", "b"], ["a", "b", "c", "x"], ["x", "b", "c", "d"]], mine) == 3
    assert layers_present([["a", "b", "c", "d", "e"]], mine) == 4


def test_the_load_archive_names_every_layer_and_holds_only_the_new_ones() -> None:
    layers = [
        Layer(description=name, files=(LayerFile.from_bytes(f"{name}/f", name.encode()),), mtime=EPOCH)
        for name in ("code", "etc", "model")
    ]
    measured = [(layer, measure(layer)) for layer in layers]
    config = image_config(BASE, RUN, measured, created=EPOCH)
    diff_ids = [*BASE.diff_ids, *(digest.diff_id for _, digest in measured)]
    archive = b"".join(load_archive(config, "tfpack-test/half:1", diff_ids, measured, skip=2))
    assert archive == b"".join(load_archive(config, "tfpack-test/half:1", diff_ids, measured, skip=2))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config_name = f"{image_id(config).removeprefix('sha256:')}.json"
        assert tar.extractfile(config_name).read() == config  # type: ignore[union-attr]
        model_tar = tar.extractfile(f"{measured[2][1].diff_id.removeprefix('sha256:')}/layer.tar")
        assert model_tar is not None and model_tar.read() == _tar(layers[2])
    assert manifest == [
        {
            "Config": config_name,
            "RepoTags": ["tfpack-test/half:1"],
            "Layers": [f"{d.removeprefix('sha256:')}/layer.tar" for d in diff_ids],
        }
    ]
    # Only the model layer's data: the base and the two unchanged layers are the engine's already.
    assert names == ["manifest.json", config_name, f"{measured[2][1].diff_id.removeprefix('sha256:')}/layer.tar"]


# --- what tfpack build writes ------------------------------------------------------------------------


def _serving(**fields: object) -> BakedServing:
    digest = "sha256:" + "0" * 64  # the signed digest each version's build recorded (any will do here)
    return BakedServing(
        model_server="tfpack-model-server",
        models={"half": [1, 2], "twin": [1, 2]},
        digests={name: {"1": digest, "2": digest} for name in ("half", "twin")},
        **fields,  # type: ignore[arg-type]
    )


def test_the_layers_tfpack_writes_hold_code_etc_and_one_model_each(tmp_path: Path) -> None:
    _write_model(tmp_path / "models" / "half")
    _write_model(tmp_path / "models" / "twin")
    models = find_models(tmp_path / "models")
    serving = _serving(labels={"half": {"stable": 1}}, monitoring=True)
    public_pem = b"-----BEGIN PUBLIC KEY-----\nMFk=\n-----END PUBLIC KEY-----\n"
    layers = image_layers(models, serving, public_key_pem=public_pem, epoch=EPOCH)
    assert [layer.description for layer in layers] == [
        "tfpack 0.1.0 in /opt/tfpack/lib",
        "/etc/tfpack",
        "model half (versions 1,2) in /models/half",
        "model twin (versions 1,2) in /models/twin",
    ]
    code, etc, half, twin = (_tar(layer) for layer in layers)

    code_files = {m.name: m for m in _members(code) if m.isfile()}
    assert set(code_files) == {"opt/tfpack/lib/" + f.name for f in _runtime_wheel.runtime_files()} | {
        "opt/tfpack/venv/bin/tfpack-model-server"
    }
    assert (
        "opt/tfpack/lib/serving/entrypoint.py" in code_files and "opt/tfpack/lib/packager/layout/trust.py" in code_files
    )
    assert not [name for name in code_files if "__pycache__" in name or "/tests/" in name]
    script = _read(code, "opt/tfpack/venv/bin/tfpack-model-server").decode()
    assert script.startswith("#!/opt/tfpack/venv/bin/python -I\n") and "from serving.model_server import main" in script
    assert code_files["opt/tfpack/venv/bin/tfpack-model-server"].mode == 0o755

    assert {m.name for m in _members(etc)} == {
        "etc",
        "etc/tfpack",
        "etc/tfpack/serving.json",
        "etc/tfpack/models.config",
        "etc/tfpack/session_config.pbtxt",
        "etc/tfpack/monitoring.config",
        "etc/tfpack/trust",
        "etc/tfpack/trust/public_key.pem",
    }
    assert _read(etc, "etc/tfpack/models.config").decode() == model_config_text(serving)
    assert BakedServing.loads(_read(etc, "etc/tfpack/serving.json").decode()) == serving
    assert _read(etc, "etc/tfpack/trust/public_key.pem") == public_pem

    assert [m.name for m in _members(half)] == [
        "models",
        "models/half",
        "models/half/1",
        "models/half/1/assets",
        "models/half/1/model.sig",
        "models/half/1/saved_model.pb",
        "models/half/1/variables",
        "models/half/1/variables/variables.index",
        "models/half/2",
        "models/half/2/assets",
        "models/half/2/model.sig",
        "models/half/2/saved_model.pb",
        "models/half/2/variables",
        "models/half/2/variables/variables.index",
    ]
    assert _read(twin, "models/twin/2/saved_model.pb") == b"graph of twin v2"
    for data in (code, etc, half, twin):
        assert {m.mtime for m in _members(data)} == {EPOCH}
    for data in (etc, half, twin):  # (tfpack's code names PEM headers in its key checks)
        assert b"PRIVATE KEY" not in data


def test_without_source_date_epoch_a_model_layer_has_its_newest_file_time(tmp_path: Path) -> None:
    half = _write_model(tmp_path / "models" / "half")
    for path in half.rglob("*"):
        os.utime(path, (1000, 1000))
    os.utime(half / "2" / "saved_model.pb", (2000, 2000))
    models = find_models(half)
    layer = model_layer("half", models["half"])
    assert layer.mtime == 2000 and {m.mtime for m in _members(_tar(layer))} == {2000}
    # tfpack's own layers keep their fixed time whatever the models' times are.
    assert code_layer("tfpack-model-server", mtime=CODE_EPOCH).mtime == CODE_EPOCH
    unchanged = _tar(etc_layer(_serving(), public_key_pem=None, mtime=CODE_EPOCH))
    os.utime(half / "2" / "saved_model.pb", (3000, 3000))
    assert model_layer("half", models["half"]).mtime == 3000
    assert _tar(etc_layer(_serving(), public_key_pem=None, mtime=CODE_EPOCH)) == unchanged


def test_the_tf_serving_base_gets_no_tfpack_model_server_script() -> None:
    names = [m.name for m in _members(_tar(code_layer("tensorflow_model_server", mtime=EPOCH)))]
    assert "opt/tfpack/lib/serving/entrypoint.py" in names
    assert not [name for name in names if name.startswith("opt/tfpack/venv")]


def test_a_certificate_chain_is_baked_in_order(tmp_path: Path) -> None:
    serving = _serving(trust="cert_chain")
    data = _tar(etc_layer(serving, public_key_pem=None, chain_pems=[b"leaf", b"root"], mtime=EPOCH))
    assert _read(data, "etc/tfpack/trust/chain/00.pem") == b"leaf"
    assert _read(data, "etc/tfpack/trust/chain/01.pem") == b"root"
    assert "etc/tfpack/trust/public_key.pem" not in [m.name for m in _members(data)]


def test_batching_parameters_are_baked_as_given() -> None:
    text = "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 1000 }\n"
    data = _tar(etc_layer(_serving(batching=True), public_key_pem=None, batching_parameters=text, mtime=EPOCH))
    assert _read(data, "etc/tfpack/batching.config").decode() == text


def test_the_healthcheck_asks_the_server_with_a_long_start_period() -> None:
    assert HEALTHCHECK.test == ("CMD", "/opt/tfpack/venv/bin/python", "-I", "-m", "serving.healthcheck")
    assert (HEALTHCHECK.interval_s, HEALTHCHECK.timeout_s, HEALTHCHECK.retries) == (10, 5, 3)
    assert HEALTHCHECK.start_period_s >= 300


# --- flags -----------------------------------------------------------------------------------------------


def test_version_labels_parse_and_refuse_what_is_not_name_label_version() -> None:
    assert parse_version_labels(["half:stable=2", "half:canary=3", "twin:stable=1"]) == {
        "half": {"stable": 2, "canary": 3},
        "twin": {"stable": 1},
    }
    for bad in ("half=2", "half:stable", "half:stable=two", "half:stable=-1", ":stable=1", "half:=1"):
        with pytest.raises(UsageError, match="is not NAME:LABEL=VERSION"):
            parse_version_labels([bad])
    with pytest.raises(UsageError, match="given twice"):
        parse_version_labels(["half:stable=1", "half:stable=2"])


def test_source_date_epoch_is_seconds_or_a_usage_error() -> None:
    assert source_date_epoch({}) is None
    assert source_date_epoch({"SOURCE_DATE_EPOCH": ""}) is None
    assert source_date_epoch({"SOURCE_DATE_EPOCH": "1700000000"}) == EPOCH
    for bad in ("soon", "1.5", "-1", "\u0661"):
        with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
            source_date_epoch({"SOURCE_DATE_EPOCH": bad})


@pytest.mark.parametrize("kind", ["file_link", "dir_link", "fifo", "whiteout"])
def test_a_version_dir_entry_that_is_no_plain_file_is_refused(tmp_path: Path, kind: str) -> None:
    """An --allow-unsigned dir is not checked by a signature: a link in it must not copy the host
    file it points at into the image, a FIFO must not hang the build, a whiteout must not delete."""
    secret = tmp_path / "host-secret"
    secret.write_text("secret")
    half = _write_model(tmp_path / "models" / "half")
    version = half / "2"
    if kind == "file_link":
        (version / "variables" / "leak").symlink_to(secret)
    elif kind == "dir_link":
        (version / "linked").symlink_to(tmp_path)
    elif kind == "fifo":
        os.mkfifo(version / "pipe")
    else:
        (version / ".wh.saved_model.pb").write_bytes(b"")
    with pytest.raises(UsageError, match=r"symlink|not a regular file|whiteout"):
        model_layer("half", find_models(half)["half"])


@pytest.mark.parametrize(
    ("remote", "label"),
    [
        (
            "https://gitlab-ci-token:SECRET@gitlab.example.com/team/tfpack.git",
            "https://gitlab.example.com/team/tfpack.git",
        ),
        ("git@github.com:org/tfpack.git", "https://github.com/org/tfpack.git"),
        ("ssh://git@host:2222/org/r.git", "https://host/org/r.git"),
        ("https://github.com/org/tfpack", "https://github.com/org/tfpack"),
        ("/work/main", None),
        ("file:///work/main", None),
        ("C:/x", None),
    ],
)
def test_the_source_label_never_carries_credentials_or_host_paths(remote: str, label: str | None) -> None:
    assert public_source_url(remote) == label
