"""convert on TF1 training leftovers: checkpoints in every form, freeze_graph pairs, --builder,
BERT-like graphs with a label input, keep_prob / is_training controls, old BatchNorm."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from factories.tf1_graphs import (
    dropout_reference,
    write_bert_like_frozen,
    write_dropout_frozen,
    write_old_batchnorm_frozen,
    write_trained_regressor,
)

from packager.convert import ConvertOptions, convert
from packager.errors import SourceError, UsageError
from packager.layout import PROVENANCE_FILE
from packager.sources import SourceOptions
from packager.tf_runtime import tensorflow

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast


@pytest.fixture(scope="module")
def regressor(tmp_path_factory: pytest.TempPathFactory):
    return write_trained_regressor(tmp_path_factory.mktemp("regressor"))


def serve(version_dir: Path, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    tf = tensorflow()
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in feeds.items()}).items()}


FEATURES = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)


@pytest.mark.parametrize("form", ["prefix", "directory", "meta"])
def test_checkpoint_with_saver_converts_with_discovered_names(form: str, regressor, tmp_path: Path) -> None:
    source = {"prefix": regressor.prefix, "directory": regressor.directory, "meta": Path(f"{regressor.prefix}.meta")}[
        form
    ]
    result = convert(source, ConvertOptions(name="regressor", output_dir=tmp_path))
    # The target placeholder only feeds the loss; the loss, optimizer and saver are no outputs.
    assert [r.key for r in result.inputs] == ["features"]
    assert [r.key for r in result.outputs] == ["prediction"]
    np.testing.assert_allclose(
        serve(result.version_dir, features=FEATURES)["prediction"], regressor.predict(FEATURES), rtol=1e-5, atol=1e-6
    )
    provenance = json.loads((result.version_dir / PROVENANCE_FILE).read_text())
    assert provenance["source"]["format"] == "checkpoint"
    assert any(name.endswith(".index") for name in provenance["source"]["files"])


def test_directory_uses_the_latest_checkpoint(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    older = write_trained_regressor(directory, steps=1)
    newer = write_trained_regressor(directory, steps=4)  # also rewrites the state file
    assert older.prefix != newer.prefix
    result = convert(directory, ConvertOptions(name="regressor", output_dir=tmp_path / "out"))
    np.testing.assert_allclose(
        serve(result.version_dir, features=FEATURES)["prediction"], newer.predict(FEATURES), rtol=1e-5, atol=1e-6
    )


def test_graph_text_plus_checkpoint_without_meta_graph(regressor, tmp_path: Path) -> None:
    result = convert(
        regressor.graph_pbtxt,
        ConvertOptions(name="regressor", output_dir=tmp_path, source=SourceOptions(checkpoint=regressor.prefix)),
    )
    assert [r.key for r in result.outputs] == ["prediction"]
    np.testing.assert_allclose(
        serve(result.version_dir, features=FEATURES)["prediction"], regressor.predict(FEATURES), rtol=1e-5, atol=1e-6
    )


def test_builder_rebuilds_the_graph_for_a_bare_checkpoint(regressor, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in regressor.prefix.parent.glob(f"{regressor.prefix.name}.*"):
        if path.suffix != ".meta":
            shutil.copy(path, bare / path.name)
    prefix = bare / regressor.prefix.name
    with pytest.raises(SourceError, match=r"no .meta graph"):
        convert(prefix, ConvertOptions(name="r", output_dir=tmp_path / "out"))
    result = convert(
        prefix,
        ConvertOptions(
            name="r",
            output_dir=tmp_path / "out",
            source=SourceOptions(builder="factories.tf1_graphs:build_regressor_graph"),
        ),
    )
    np.testing.assert_allclose(
        serve(result.version_dir, features=FEATURES)["prediction"], regressor.predict(FEATURES), rtol=1e-5, atol=1e-6
    )


def test_bert_like_graph_takes_the_three_int_inputs_but_not_the_label(tmp_path: Path) -> None:
    source = write_bert_like_frozen(tmp_path / "bert.pb")
    result = convert(source, ConvertOptions(name="bert", output_dir=tmp_path / "out"))
    assert [(r.key, r.dtype, r.shape) for r in result.inputs] == [
        ("input_ids", "int32", (None, 8)),
        ("input_mask", "int32", (None, 8)),
        ("segment_ids", "int32", (None, 8)),
    ]
    assert [r.key for r in result.outputs] == ["probabilities"]
    ids = np.arange(16, dtype=np.int32).reshape(2, 8) % 30
    probabilities = serve(
        result.version_dir, input_ids=ids, input_mask=np.ones_like(ids), segment_ids=np.zeros_like(ids)
    )["probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_keep_prob_without_constant_is_refused_naming_it(tmp_path: Path) -> None:
    source = write_dropout_frozen(tmp_path / "dropout.pb")
    with pytest.raises(UsageError, match=r"keep_prob.*--constant keep_prob=VALUE"):
        convert(source, ConvertOptions(name="d", output_dir=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_keep_prob_constant_and_is_training_default_are_folded(tmp_path: Path) -> None:
    source = write_dropout_frozen(tmp_path / "dropout.pb")
    result = convert(source, ConvertOptions(name="d", output_dir=tmp_path / "out", constants=["keep_prob=1.0"]))
    assert [r.key for r in result.inputs] == ["x"]  # keep_prob and is_training are no inputs
    x = np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(serve(result.version_dir, x=x)["y"], dropout_reference(x), rtol=1e-6)
    provenance = json.loads((result.version_dir / PROVENANCE_FILE).read_text())
    controls = {c["name"]: c["has_default"] for c in provenance["source"]["control_placeholders"]}
    assert controls == {"keep_prob": False, "is_training": True}


@pytest.mark.parametrize(
    "constant, message",
    [
        ("keep_prob", "must be NAME=VALUE"),
        ("keep_prob=abc", "not a valid float32"),
        ("nope=1", "no placeholder"),
    ],
)
def test_bad_constants_are_usage_errors(constant: str, message: str, tmp_path: Path) -> None:
    source = write_dropout_frozen(tmp_path / "dropout.pb")
    with pytest.raises(UsageError, match=message):
        convert(source, ConvertOptions(name="d", output_dir=tmp_path / "out", constants=[constant]))


def test_old_batchnorm_ref_ops_import_after_repair(tmp_path: Path) -> None:
    tf = tensorflow()
    from tensorflow.core.framework import graph_pb2

    source = write_old_batchnorm_frozen(tmp_path / "bn.pb")
    graph_def = graph_pb2.GraphDef.FromString(source.read_bytes())
    assert {"RefSwitch", "AssignSub"} <= {n.op for n in graph_def.node}
    with pytest.raises(ValueError), tf.Graph().as_default():  # what a user hits with plain TensorFlow 2
        tf.graph_util.import_graph_def(graph_def, name="")
    result = convert(source, ConvertOptions(name="bn", output_dir=tmp_path / "out"))
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(serve(result.version_dir, x=x)["normalized"], x - np.array([0.5, -0.5, 1.0]), rtol=1e-6)


def test_device_strings_are_cleared(regressor, tmp_path: Path) -> None:
    tf = tensorflow()
    result = convert(regressor.prefix, ConvertOptions(name="r", output_dir=tmp_path))
    meta_graph = tf.compat.v1.saved_model.loader.load(
        tf.compat.v1.Session(graph=tf.Graph()), ["serve"], str(result.version_dir)
    )
    assert not [n.device for n in meta_graph.graph_def.node if n.device]


@pytest.mark.parametrize("damage", ["missing_data", "corrupt_index", "missing_index"])
def test_broken_checkpoints_are_source_errors(damage: str, regressor, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(regressor.directory, broken)
    prefix = broken / regressor.prefix.name
    if damage == "missing_data":
        for shard in broken.glob(f"{prefix.name}.data-*"):
            shard.unlink()
    elif damage == "corrupt_index":
        Path(f"{prefix}.index").write_bytes(b"\x00garbage" * 10)
    else:
        Path(f"{prefix}.index").unlink()
    with pytest.raises(SourceError):
        convert(prefix, ConvertOptions(name="r", output_dir=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_ambiguous_outputs_list_the_candidates(tmp_path: Path) -> None:
    """Two heads over different inputs: discovery refuses to guess and names --outputs."""
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        a = v1.placeholder(tf.float32, [None, 2], name="a")
        b = v1.placeholder(tf.float32, [None, 2], name="b")
        tf.identity(a * 2.0, name="head_a")
        tf.identity(b + 1.0, name="head_b")
    path = tmp_path / "two_heads.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(SourceError, match=r"ambiguous.*head_a.*head_b.*--outputs"):
        convert(path, ConvertOptions(name="m", output_dir=tmp_path / "out"))
    result = convert(path, ConvertOptions(name="m", output_dir=tmp_path / "out", outputs=["head_b"]))
    assert [r.key for r in result.inputs] == ["b"]


@pytest.fixture(scope="module")
def dataset_fed(tmp_path_factory: pytest.TempPathFactory):
    from factories.tf1_graphs import write_dataset_fed_ema

    return write_dataset_fed_ema(tmp_path_factory.mktemp("dataset_fed"))


IMAGES = np.random.default_rng(9).normal(size=(5, 2, 3)).astype(np.float32)


@pytest.mark.parametrize("ema, weights", [("auto", "averaged"), ("on", "averaged"), ("off", "raw")])
def test_iterator_fed_graph_with_ema_serves_the_chosen_weights(
    ema: str, weights: str, dataset_fed, tmp_path: Path
) -> None:
    result = convert(dataset_fed.prefix, ConvertOptions(name="m", output_dir=tmp_path, source=SourceOptions(ema=ema)))
    # IteratorGetNext's two outputs became input_0 (images) and input_1 (labels, loss only).
    assert [(r.key, r.dtype, r.shape) for r in result.inputs] == [("input_0", "float32", (None, 2, 3))]
    assert [r.key for r in result.outputs] == ["probs"]
    served = serve(result.version_dir, input_0=IMAGES)["probs"]
    np.testing.assert_allclose(served, dataset_fed.predict(getattr(dataset_fed, weights), IMAGES), rtol=1e-5, atol=1e-6)
    other = "raw" if weights == "averaged" else "averaged"
    assert not np.allclose(served, dataset_fed.predict(getattr(dataset_fed, other), IMAGES), atol=1e-4)
    details = json.loads((result.version_dir / PROVENANCE_FILE).read_text())["source"]["details"]
    assert details["ema"] == {"mode": ema, "averaged": 0 if ema == "off" else 2, "raw": 2 if ema == "off" else 0}
    assert [r["replaces"] for r in details["replaced_inputs"]] == ["IteratorGetNext:0", "IteratorGetNext:1"]


def test_ema_on_without_shadows_is_refused(regressor, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no ExponentialMovingAverage"):
        convert(regressor.prefix, ConvertOptions(name="m", output_dir=tmp_path, source=SourceOptions(ema="on")))


def test_partitioned_variables_restore_with_ema(tmp_path: Path) -> None:
    """A variable split into partitions, averaged with EMA: each partition gets its shadow's slice."""
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 6], name="x")
        w = v1.get_variable(
            "w",
            shape=[6, 2],
            initializer=v1.random_normal_initializer(seed=1),
            partitioner=v1.fixed_size_partitioner(3),
        )
        tf.identity(tf.matmul(x, w), name="y")
        ema = v1.train.ExponentialMovingAverage(decay=0.5)
        update = ema.apply(list(w))
        with tf.control_dependencies([update]):
            bump = [v1.assign_add(part, tf.ones_like(part)) for part in w]
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            session.run(bump)
            raw = np.concatenate(session.run(list(w)))
            averaged = np.concatenate(session.run([ema.average(p) for p in w]))
            prefix = saver.save(session, str(tmp_path / "ckpt" / "model.ckpt"))
    x_value = np.linspace(0, 1, 12, dtype=np.float32).reshape(2, 6)
    for mode, weights in (("auto", averaged), ("off", raw)):
        result = convert(
            Path(prefix), ConvertOptions(name=mode, output_dir=tmp_path / "out", source=SourceOptions(ema=mode))
        )
        np.testing.assert_allclose(serve(result.version_dir, x=x_value)["y"], x_value @ weights, rtol=1e-5)


def test_inspect_reports_training_leftovers(regressor, dataset_fed, tmp_path: Path, tfpack_cli) -> None:
    report = json.loads(tfpack_cli("inspect", regressor.prefix, "--json").stdout)
    assert report["format"] == "checkpoint"
    assert {"saver", "gradients", "optimizer"} <= set(report["training_subgraphs"])
    assert report["ops"]["variables"] >= 3
    assert [o["key"] for o in report["outputs"]] == ["prediction"]

    report = json.loads(tfpack_cli("inspect", dataset_fed.prefix, "--json").stdout)
    assert report["details"]["ema"]["averaged"] == 2
    assert [r["replaces"] for r in report["details"]["replaced_inputs"]] == ["IteratorGetNext:0", "IteratorGetNext:1"]

    dropout = write_dropout_frozen(tmp_path / "dropout.pb")
    result = tfpack_cli("inspect", dropout, "--json")
    assert result.exit_code == 0, result.stderr  # inspect reports keep_prob instead of refusing
    controls = {c["name"]: c["has_default"] for c in json.loads(result.stdout)["control_placeholders"]}
    assert controls == {"keep_prob": False, "is_training": True}


def test_queue_fed_graph_gets_a_placeholder(tmp_path: Path) -> None:
    """A FIFOQueue dequeue_many feeding the model becomes placeholder `input` with a free batch."""
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        queue = v1.FIFOQueue(capacity=8, dtypes=[tf.float32], shapes=[[3]])
        batch = queue.dequeue_many(4)
        weights = tf.constant(np.arange(6, dtype=np.float32).reshape(3, 2))
        tf.matmul(batch, weights, name="scores")
    path = tmp_path / "queue.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    result = convert(path, ConvertOptions(name="q", output_dir=tmp_path / "out"))
    assert [(r.key, r.shape) for r in result.inputs] == [("input", (None, 3))]
    x = np.ones((5, 3), np.float32)
    np.testing.assert_allclose(serve(result.version_dir, input=x)["scores"], x @ np.arange(6).reshape(3, 2))


def test_relative_checkpoint_directory(regressor, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(regressor.directory.parent)
    result = convert(Path(regressor.directory.name), ConvertOptions(name="r", output_dir=tmp_path / "out"))
    files = json.loads((result.version_dir / PROVENANCE_FILE).read_text())["source"]["files"]
    assert f"{regressor.prefix.name}.index" in files


def test_graph_and_checkpoint_of_different_shapes(regressor, tmp_path: Path) -> None:
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.variable_scope("dense"):
        v1.get_variable("kernel", [4, 7])  # the regressor's kernel is [3, 5]
        v1.get_variable("bias", [5])
        v1.get_variable("head", [5, 1])
    other = tmp_path / "other.pbtxt"
    tf.io.write_graph(graph.as_graph_def(), str(tmp_path), other.name, as_text=True)
    with pytest.raises(SourceError, match=r"variable dense/kernel is float32\[4, 7\].*\[3, 5\]"):
        convert(
            other,
            ConvertOptions(name="r", output_dir=tmp_path / "out", source=SourceOptions(checkpoint=regressor.prefix)),
        )
