"""Legacy TF1 sources as they really arrive (issue 9): checkpoint dirs whose state file names
another machine's paths (and empty-basename checkpoints), meta graphs with attrs TensorFlow no
longer defines and stale _output_shapes, train + eval copies sharing variables, sparse optimizer
updates of resource variables, and the --builder contract."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from factories.legacy_checkpoints import (
    FEATURES,
    STALE_ATTR,
    VOCABULARY,
    age_meta_graph,
    two_copies_inference_reference,
    write_aged_frozen_graph,
    write_small_model,
    write_sparse_embedding,
    write_state_file,
    write_two_copies,
)

from packager.convert import ConvertOptions, convert
from packager.errors import SourceError, UsageError
from packager.layout import PROVENANCE_FILE
from packager.sources import SourceOptions, load_source
from packager.tf_runtime import tensorflow

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

X = np.linspace(-1, 1, 4 * FEATURES, dtype=np.float32).reshape(4, FEATURES)
FOREIGN = "/home/someone/train"  # a training machine's directory, absent here


def serve(version_dir: Path, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    tf = tensorflow()
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in feeds.items()}).items()}


def details(version_dir: Path) -> dict:
    return json.loads((version_dir / PROVENANCE_FILE).read_text())["source"]["details"]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    return write_small_model(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def empty_basename(tmp_path_factory: pytest.TempPathFactory):
    """Saver.save(sess, "DIR/"): DIR/.index, DIR/.data-00000-of-00001, DIR/.meta."""
    return write_small_model(tmp_path_factory.mktemp("empty") / "run", basename="")


def copy_dir(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# ---- 1. state files from another machine ---------------------------------------------------


def test_foreign_absolute_state_file_uses_the_same_basename_here(small, tmp_path: Path) -> None:
    moved = copy_dir(small.directory, tmp_path / "moved")
    write_state_file(moved, f"{FOREIGN}/model.ckpt")
    source = load_source(moved)
    # Every file read, resolved: the state file, index, the one shard, the meta graph.
    assert sorted(source.files) == sorted(
        (moved / name).resolve()
        for name in ("checkpoint", "model.ckpt.index", "model.ckpt.data-00000-of-00001", "model.ckpt.meta")
    )
    assert all(p.is_absolute() for p in source.files)
    assert source.details["state_file_named"] == f"{FOREIGN}/model.ckpt"
    result = convert(moved, ConvertOptions(name="m", output_dir=tmp_path / "out"))
    np.testing.assert_allclose(serve(result.version_dir, x=X)["y"], small.predict(X), rtol=1e-5, atol=1e-6)


def test_foreign_windows_state_file_uses_the_same_basename_here(small, tmp_path: Path) -> None:
    moved = copy_dir(small.directory, tmp_path / "moved")
    write_state_file(moved, "C:\\\\Users\\\\someone\\\\train\\\\model.ckpt")
    assert load_source(moved).details["checkpoint"] == str(moved / "model.ckpt")


def test_empty_basename_checkpoint_from_another_machine(empty_basename, tmp_path: Path) -> None:
    assert empty_basename.prefix.endswith("/")  # what Saver.save(sess, "DIR/") returns
    moved = copy_dir(empty_basename.directory, tmp_path / "moved")
    write_state_file(moved, f"{FOREIGN}/")
    source = load_source(moved)
    assert sorted(p.name for p in source.files) == [".data-00000-of-00001", ".index", ".meta", "checkpoint"]
    result = convert(moved, ConvertOptions(name="m", output_dir=tmp_path / "out"))
    np.testing.assert_allclose(serve(result.version_dir, x=X)["y"], empty_basename.predict(X), rtol=1e-5, atol=1e-6)
    # Its meta graph named directly: ".meta" has no suffix as far as pathlib is concerned.
    result = convert(moved / ".meta", ConvertOptions(name="meta", output_dir=tmp_path / "out"))
    np.testing.assert_allclose(serve(result.version_dir, x=X)["y"], empty_basename.predict(X), rtol=1e-5, atol=1e-6)


def test_state_file_naming_another_existing_checkpoint_is_refused(small, tmp_path: Path, tfpack_cli) -> None:
    """Weights are read only from the source the user named: a state file pointing elsewhere, at
    a checkpoint that exists, stops with both paths — until the user names that prefix."""
    here = copy_dir(small.directory, tmp_path / "here")
    elsewhere = copy_dir(small.directory, tmp_path / "elsewhere")
    write_state_file(here, f"{elsewhere}/model.ckpt")
    result = tfpack_cli("convert", here, "--name", "m", "--output-dir", tmp_path / "out")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert f"{elsewhere}/model.ckpt" in message and str(here) in message
    assert not (tmp_path / "out").exists()
    result = tfpack_cli("convert", elsewhere / "model.ckpt", "--name", "m", "--output-dir", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(
    "state, message",
    [
        (f'model_checkpoint_path: "{FOREIGN}/model.ckpt-99"', r"not on this machine.*model\.ckpt-99\.index"),
        ('model_checkpoint_path: ""', "names no checkpoint"),
        ("this is { not a state file", "not a checkpoint state file"),
    ],
)
def test_bad_state_files_are_source_errors(state: str, message: str, small, tmp_path: Path) -> None:
    moved = copy_dir(small.directory, tmp_path / "moved")
    (moved / "checkpoint").write_text(state + "\n")
    with pytest.raises(SourceError, match=message):
        convert(moved, ConvertOptions(name="m", output_dir=tmp_path / "out"))


def test_missing_shard_of_several_is_a_source_error(small, tmp_path: Path) -> None:
    moved = copy_dir(small.directory, tmp_path / "moved")
    (moved / "model.ckpt.data-00000-of-00001").rename(moved / "model.ckpt.data-00000-of-00002")
    with pytest.raises(SourceError, match=r"lacks 1 of its 2 \.data shards.*data-00001-of-00002"):
        convert(moved / "model.ckpt", ConvertOptions(name="m", output_dir=tmp_path / "out"))


# ---- 2. meta graphs and GraphDefs aged by old TensorFlow -----------------------------------


def test_aged_meta_graph_is_repaired_on_a_copy(small, tmp_path: Path) -> None:
    tf = tensorflow()
    aged = copy_dir(small.directory, tmp_path / "aged")
    write_state_file(aged, "model.ckpt")  # relative: the copy is its own source
    meta = aged / "model.ckpt.meta"
    damage = age_meta_graph(meta)
    before = meta.read_bytes()
    # What a user hits with plain TensorFlow 2.21: the stale shapes stop the import.
    with (
        pytest.raises(ValueError, match=r"Node 'MatMul' has an _output_shapes attribute inconsistent"),
        tf.Graph().as_default(),
    ):
        tf.compat.v1.train.import_meta_graph(str(meta))
    # The unknown attr alone is only logged ("Unknown attributes will be ignored") by 2.21, but it
    # travels on into every graph built from the meta graph, and so into the served one.
    from packager.sources.checkpoint import read_meta_graph

    shapes_fixed = read_meta_graph(meta)
    for node in shapes_fixed.graph_def.node:
        node.attr.pop("_output_shapes", None)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.train.import_meta_graph(shapes_fixed)
    assert STALE_ATTR in graph.get_operation_by_name(damage["unknown_attrs"][0]).node_def.attr

    result = convert(aged, ConvertOptions(name="m", output_dir=tmp_path / "out"))
    assert meta.read_bytes() == before  # the source is never modified
    repairs = details(result.version_dir)["repairs"]
    assert any(STALE_ATTR in r and f"on {len(damage['unknown_attrs'])} op(s)" in r for r in repairs), repairs
    assert any(f"stale _output_shapes on {len(damage['stale_shapes'])} op(s)" in r for r in repairs), repairs
    assert STALE_ATTR.encode() not in (result.version_dir / "saved_model.pb").read_bytes()
    np.testing.assert_allclose(serve(result.version_dir, x=X)["y"], small.predict(X), rtol=1e-5, atol=1e-6)


def test_aged_frozen_graph_is_repaired_and_keeps_correct_shapes(small, tmp_path: Path) -> None:
    tf = tensorflow()
    path = tmp_path / "aged.pb"
    damage = write_aged_frozen_graph(small, path)
    result = convert(path, ConvertOptions(name="m", output_dir=tmp_path / "out"))
    repairs = details(result.version_dir)["repairs"]
    assert len(repairs) == 2 and f"stale _output_shapes on {len(damage['stale_shapes'])} op(s)" in repairs[1]
    graph_def = tf.compat.v1.saved_model.loader.load(
        tf.compat.v1.Session(graph=tf.Graph()), ["serve"], str(result.version_dir)
    ).graph_def
    nodes = {n.name: n for n in graph_def.node}
    assert not any(STALE_ATTR in n.attr for n in graph_def.node)
    assert not any("_output_shapes" in nodes[name].attr for name in damage["stale_shapes"] if name in nodes)
    np.testing.assert_allclose(serve(result.version_dir, x=X)["y"], small.predict(X), rtol=1e-5, atol=1e-6)


def test_a_clean_graph_needs_no_repair(small, tmp_path: Path) -> None:
    assert load_source(small.directory).details["repairs"] == []


# ---- 3. a train copy and an eval copy sharing variables ------------------------------------


@pytest.fixture(scope="module")
def two_copies(tmp_path_factory: pytest.TempPathFactory):
    return write_two_copies(tmp_path_factory.mktemp("copies"))


def test_two_copies_are_ambiguous_without_outputs(two_copies, tmp_path: Path, tfpack_cli) -> None:
    """Discovery never picks the training copy on its own, nor crashes: it names both and --outputs."""
    result = tfpack_cli("convert", two_copies.prefix, "--name", "m", "--output-dir", tmp_path / "out")
    assert result.exit_code == 2, result.stderr
    assert "ambiguous" in result.stderr and "model/probs" in result.stderr and "model_1/probs" in result.stderr
    assert "--outputs" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("copy, placeholder", [("model/probs", "train_x"), ("model_1/probs", "eval_x")])
def test_either_copy_converts_with_outputs(copy: str, placeholder: str, two_copies, tmp_path: Path) -> None:
    result = convert(two_copies.prefix, ConvertOptions(name="m", output_dir=tmp_path, outputs=[copy]))
    assert [r.key for r in result.inputs] == [placeholder]
    served = serve(result.version_dir, **{placeholder: X})["probs"]
    np.testing.assert_allclose(served, two_copies_inference_reference(two_copies, X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served, two_copies.predict(X), rtol=1e-5, atol=1e-6)


# ---- 4. sparse updates of resource variables -----------------------------------------------


# TF 2.21's AdamOptimizer applies IndexedSlices with ResourceScatterAdd on its slots too.
@pytest.mark.parametrize("optimizer, update_op", [("adam", "ResourceScatterAdd"), ("sgd", "ResourceScatterAdd")])
def test_sparse_resource_updates_convert(optimizer: str, update_op: str, tmp_path: Path) -> None:
    from packager.sources.checkpoint import read_meta_graph

    model = write_sparse_embedding(tmp_path / "ckpt", optimizer)
    assert update_op in {n.op for n in read_meta_graph(Path(f"{model.prefix}.meta")).graph_def.node}
    result = convert(model.prefix, ConvertOptions(name="m", output_dir=tmp_path / "out"))
    assert [(r.key, r.dtype, r.shape) for r in result.inputs] == [("ids", "int32", (None, 2))]
    assert [r.key for r in result.outputs] == ["score"]
    ids = np.arange(10, dtype=np.int32).reshape(5, 2) % VOCABULARY
    np.testing.assert_allclose(serve(result.version_dir, ids=ids)["score"], model.predict(ids), rtol=1e-5, atol=1e-6)


# ---- 5. the --builder contract -------------------------------------------------------------


@pytest.fixture(scope="module")
def bare(small, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small model's checkpoint without its .meta graph: only a builder can rebuild it."""
    directory = tmp_path_factory.mktemp("bare")
    for path in small.directory.glob("model.ckpt.*"):
        if path.suffix != ".meta":
            shutil.copy(path, directory / path.name)
    return directory / "model.ckpt"


@pytest.mark.parametrize(
    "function, inputs, outputs",
    [
        ("build_small_model", ["x"], ["y"]),  # {output_key: tensor}: inputs are the placeholders needed
        ("build_inputs_and_outputs", ["features"], ["score"]),  # (inputs, outputs): the builder's keys
        ("build_returning_none", ["x"], ["y"]),  # None: discovery, as before the contract
    ],
)
def test_builder_return_forms(
    function: str, inputs: list[str], outputs: list[str], small, bare: Path, tmp_path: Path
) -> None:
    result = convert(
        bare,
        ConvertOptions(
            name="m", output_dir=tmp_path, source=SourceOptions(builder=f"factories.legacy_checkpoints:{function}")
        ),
    )
    assert [r.key for r in result.inputs] == inputs
    assert [r.key for r in result.outputs] == outputs
    np.testing.assert_allclose(
        serve(result.version_dir, **{inputs[0]: X})[outputs[0]], small.predict(X), rtol=1e-5, atol=1e-6
    )
    assert details(result.version_dir)["builder_signature"] == (
        "discovered" if function == "build_returning_none" else "declared"
    )


@pytest.mark.parametrize(
    "builder, message",
    [
        ("factories.legacy_checkpoints:build_returning_a_list", r"returned a list: FUNC\(\) must .* return a dict"),
        ("factories.legacy_checkpoints:build_returning_names", r"output 'y' is a str, not a tensor"),
        ("factories.legacy_checkpoints:write_small_model", r"takes arguments \(directory\)"),
        ("no_such_package.model:build", r"cannot import no_such_package\.model.*PYTHONPATH"),
    ],
)
def test_builder_breaking_the_contract_exits_2(
    builder: str, message: str, bare: Path, tmp_path: Path, tfpack_cli
) -> None:
    result = tfpack_cli("convert", bare, "--name", "m", "--output-dir", tmp_path / "out", "--builder", builder)
    assert result.exit_code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "out").exists()


def test_builder_raising_is_a_source_error(bare: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--builder .* failed: KeyError"):
        convert(
            bare,
            ConvertOptions(
                name="m",
                output_dir=tmp_path,
                source=SourceOptions(builder="factories.legacy_checkpoints:build_raising"),
            ),
        )
