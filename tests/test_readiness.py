"""Serving readiness: each way a training script leaves a graph that converts but is no inference
model is refused (exit 2, one line naming the ops or placeholder and the flag, nothing written), and
the flag converts it into a model that matches a reference built as inference, on finite goldens.

The models are built the way the seed posts' training code builds them (tf.compat.v1 graphs with
inline augmentation, dropout behind a training flag, BatchNorm with training=True, an autoencoder's
label-free loss, Keras with a free time axis, multi-GPU towers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories import batchnorm as bn
from factories import unready_models as unready
from factories.unready_models import (
    SQRT_WEIGHTS,
    training_default_true_reference,
    write_labelfree_loss_checkpoint,
    write_random_augmentation_frozen,
    write_sqrt_frozen,
    write_training_default_true_frozen,
)

from packager.layout import GOLDENS_FILE, PROVENANCE_FILE, Goldens
from packager.tf_runtime import tensorflow


def convert(tfpack_cli, source: Path, out: Path, *flags: str):  # type: ignore[no-untyped-def]
    return tfpack_cli("convert", source, "--name", "m", "--output-dir", out, "--json", *flags)


def assert_refused(result, out: Path, *needles: str) -> str:  # type: ignore[no-untyped-def]
    """Exit 2, one line naming every needle, and no version written."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    for needle in needles:
        assert needle in message, (needle, message)
    assert not (out / "m").exists() or not any((out / "m").iterdir())
    return message


def serve(version_dir: Path, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    """Run the written SavedModel the way TF Serving in a tfpack image does (soft placement)."""
    from packager.export import run_saved_model

    return run_saved_model(version_dir, feeds, soft_placement=True)


def provenance(version_dir: Path) -> dict:
    return json.loads((version_dir / PROVENANCE_FILE).read_text())


def assert_finite_goldens(version_dir: Path) -> Goldens:
    goldens = Goldens.load(version_dir / GOLDENS_FILE)
    for value in goldens.outputs.values():
        assert np.all(np.isfinite(value))
    return goldens


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("unready")


# --- determinism --------------------------------------------------------------------------------


def test_random_augmentation_is_refused_naming_the_random_ops(tfpack_cli, models: Path, tmp_path: Path) -> None:
    source = write_random_augmentation_frozen(models / "augment.pb")
    message = assert_refused(
        convert(tfpack_cli, source, tmp_path),
        tmp_path,
        "determinism",
        "RandomUniform",
        "random_flip_left_right",
        "--allow-random",
    )
    assert "--constant" not in message  # no control placeholder could switch it off

    # `tfpack scan` names them too (not denied: a deliberate stochastic model is legitimate).
    scanned = tfpack_cli("scan", source)
    assert scanned.exit_code == 0 and "random op(s)" in scanned.stdout and "RandomUniform" in scanned.stdout


def test_allow_random_serves_a_stochastic_model_proven_with_seeded_ops(
    tfpack_cli, models: Path, tmp_path: Path
) -> None:
    source = write_random_augmentation_frozen(models / "augment_allowed.pb")
    result = convert(tfpack_cli, source, tmp_path, "--allow-random")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["readiness"]["determinism"]["status"] == "allowed"
    assert report["equivalence"]["max_abs_error"] == 0.0
    record = provenance(Path(report["version_dir"]))
    assert record["options"]["allow_random"] is True
    assert len(record["rewrites"]["random_ops"]) == 2
    assert_finite_goldens(Path(report["version_dir"]))


def test_a_training_flag_defaulting_to_true_names_the_constant_that_fixes_it(
    tfpack_cli, models: Path, tmp_path: Path
) -> None:
    source = write_training_default_true_frozen(models / "training_true.pb")
    assert_refused(
        convert(tfpack_cli, source, tmp_path),
        tmp_path,
        "determinism",
        "dropout",
        "--constant training=false",
        "--allow-random",
    )

    result = convert(tfpack_cli, source, tmp_path, "--constant", "training=false")
    assert result.exit_code == 0, result.stderr
    version_dir = Path(json.loads(result.stdout)["version_dir"])
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(serve(version_dir, x=x)["y"], training_default_true_reference(x), rtol=1e-6)


# --- inference outputs ---------------------------------------------------------------------------


def test_a_label_free_loss_and_the_optimizer_are_never_served(tfpack_cli, models: Path, tmp_path: Path) -> None:
    prefix = write_labelfree_loss_checkpoint(models / "autoencoder")
    message = assert_refused(
        convert(tfpack_cli, prefix, tmp_path),
        tmp_path,
        "every sink is training machinery",
        "Mean_1 (a loss",
        "no batch dimension",
        "MatMul_1",
        "--outputs",
    )
    assert "gradients/" not in message.split("candidates left")[-1]

    # inspect shows the same refusal before anything is written.
    inspected = tfpack_cli("inspect", prefix)
    assert inspected.exit_code == 2 and "Mean_1" in inspected.stderr

    # Named explicitly, the reconstruction converts: predictions, not the loss.
    result = convert(tfpack_cli, prefix, tmp_path, "--outputs", "MatMul_1")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [o["key"] for o in report["outputs"]] == ["MatMul_1"]
    assert report["readiness"]["inference_outputs"]["status"] == "passed"


def test_a_loss_named_with_outputs_is_served_and_recorded_as_allowed(tfpack_cli, models: Path, tmp_path: Path) -> None:
    prefix = write_labelfree_loss_checkpoint(models / "autoencoder_loss")
    result = convert(tfpack_cli, prefix, tmp_path, "--outputs", "Mean_1", "--batch-dependent")
    assert result.exit_code == 0, result.stderr
    readiness = json.loads(result.stdout)["readiness"]
    assert readiness["inference_outputs"]["status"] == "allowed"
    assert "Mean_1" in readiness["inference_outputs"]["detail"]


# --- finite goldens ------------------------------------------------------------------------------


def test_a_sqrt_model_gets_positive_inputs_and_finite_goldens(tfpack_cli, models: Path, tmp_path: Path) -> None:
    source = write_sqrt_frozen(models / "sqrt.pb")
    result = convert(tfpack_cli, source, tmp_path)
    assert result.exit_code == 0, result.stderr
    version_dir = Path(json.loads(result.stdout)["version_dir"])
    goldens = assert_finite_goldens(version_dir)
    assert np.all(goldens.inputs["x"] > 0)
    np.testing.assert_allclose(goldens.outputs["y"], np.sqrt(goldens.inputs["x"]) @ SQRT_WEIGHTS, rtol=1e-5)


def test_non_finite_outputs_on_sample_inputs_are_never_an_equivalence(tfpack_cli, models: Path, tmp_path: Path) -> None:
    source = write_sqrt_frozen(models / "sqrt_negative.pb")
    negative = tmp_path / "negative.npz"
    np.savez(negative, x=-np.ones((2, 3), np.float32))
    assert_refused(
        convert(tfpack_cli, source, tmp_path / "out", "--sample-inputs", negative),
        tmp_path / "out",
        "non-finite",
        "sample inputs",
    )


def test_a_small_vocabulary_embedding_gets_ids_across_its_table(tfpack_cli, models: Path, tmp_path: Path) -> None:
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    table = np.arange(15, dtype=np.float32).reshape(5, 3)
    with graph.as_default():
        ids = v1.placeholder(tf.int32, [None, 4], name="ids")
        weights = v1.get_variable("table", initializer=table)
        tf.reduce_sum(tf.nn.embedding_lookup(weights, ids), axis=1, name="pooled")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), ["pooled"])
    source = models / "embedding.pb"
    source.write_bytes(frozen.SerializeToString())
    result = convert(tfpack_cli, source, tmp_path)
    assert result.exit_code == 0, result.stderr
    goldens = assert_finite_goldens(Path(json.loads(result.stdout)["version_dir"]))
    ids_used = set(goldens.inputs["ids"].ravel().tolist())
    assert ids_used <= set(range(5)) and len(ids_used) > 2  # the whole table, not only {0, 1}
    np.testing.assert_allclose(goldens.outputs["pooled"], table[goldens.inputs["ids"]].sum(axis=1))


def test_a_keras_model_with_a_free_time_axis_converts_at_a_length_its_pooling_allows(
    tmp_path: Path, tfpack_cli
) -> None:
    import keras

    inputs = keras.Input(shape=(None, 3), name="frames")
    hidden = keras.layers.Conv1D(4, 3, strides=2, activation="relu")(inputs)
    hidden = keras.layers.MaxPooling1D(8)(hidden)
    outputs = keras.layers.Dense(2, name="scores")(keras.layers.GlobalAveragePooling1D()(hidden))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "sequence.keras"
    model.save(path)
    result = convert(tfpack_cli, path, tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    goldens = assert_finite_goldens(Path(json.loads(result.stdout)["version_dir"]))
    frames = goldens.inputs["frames"]
    assert frames.shape[1] >= 17  # 4 (the first size tried) is too short for stride 2 then pool 8
    np.testing.assert_allclose(goldens.outputs["scores"], model.predict(frames, verbose=0), rtol=1e-5, atol=1e-6)


# --- batch independence --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slim_batchnorm(models: Path) -> bn.BatchNormCheckpoint:
    """slim.batch_norm(is_training=True) as the DenseNet seed post builds it: fused, 4-D."""
    return bn.write_checkpoint(models / "slim_bn", bn.slim_style_builder(), (4, 4, 3))


@pytest.fixture(scope="module")
def dense_batchnorm(models: Path) -> bn.BatchNormCheckpoint:
    """tf.compat.v1.layers.batch_normalization(training=True) after a dense layer: 2-D moments."""
    return bn.write_checkpoint(models / "dense_bn", bn.layers_builder(2, fused=None, use_resource=True), (3,))


@pytest.mark.parametrize("which", ["slim_batchnorm", "dense_batchnorm"])
def test_batch_statistics_are_refused_then_rewritten_to_the_moving_statistics(
    which: str,
    request: pytest.FixtureRequest,
    tfpack_cli,
    tmp_path: Path,
) -> None:
    model: bn.BatchNormCheckpoint = request.getfixturevalue(which)
    assert_refused(
        convert(tfpack_cli, model.prefix, tmp_path),
        tmp_path,
        "batch norm",
        "training=True",
        "--batchnorm inference",
        "--batchnorm batch",
    )

    result = convert(tfpack_cli, model.prefix, tmp_path, "--batchnorm", "inference")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["readiness"]["batch_independence"]["status"] == "passed"
    version_dir = Path(report["version_dir"])
    batch = bn.sample_batch(model.input_shape)
    served = serve(version_dir, **{bn.INPUT: batch})
    (key,) = served
    np.testing.assert_allclose(served[key], model.inference_outputs(batch), rtol=1e-4, atol=1e-5)
    # One sample alone equals itself inside the batch: no batch statistics left.
    np.testing.assert_allclose(
        serve(version_dir, **{bn.INPUT: batch[2:3]})[key], served[key][2:3], rtol=1e-5, atol=1e-6
    )
    assert provenance(version_dir)["rewrites"]["batchnorm_rewritten"]
    assert_finite_goldens(version_dir)


def test_batchnorm_batch_keeps_batch_statistics_only_with_batch_dependent(
    slim_batchnorm, tfpack_cli, tmp_path: Path
) -> None:
    assert_refused(
        convert(tfpack_cli, slim_batchnorm.prefix, tmp_path, "--batchnorm", "batch"),
        tmp_path,
        "batch_independence",
        "FusedBatchNormV3",
        "--batch-dependent",
    )

    result = convert(tfpack_cli, slim_batchnorm.prefix, tmp_path, "--batchnorm", "batch", "--batch-dependent")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["readiness"]["batch_independence"]["status"] == "allowed"
    assert provenance(Path(report["version_dir"]))["options"]["batch_dependent"] is True


def test_merged_towers_serve_a_batch_of_one(tfpack_cli, tmp_path: Path) -> None:
    """A tower whose map_fn has an element shape it cannot know cannot run on zero rows; merged
    towers used to hand tower 1 an empty slice for a batch of 1."""
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        with v1.variable_scope(v1.get_variable_scope()):
            for index in range(2):
                with tf.device(f"/gpu:{index}"), tf.name_scope(f"tower_{index}"):
                    x = v1.placeholder(tf.float32, [None, None], name="x")
                    scale = v1.get_variable("scale", initializer=np.float32(1.5))
                    halves = tf.map_fn(lambda row, scale=scale: row[: tf.shape(row)[0] // 2] * scale, x)
                    tf.identity(tf.reduce_sum(halves, axis=1, keepdims=True), name="out")
                    v1.get_variable_scope().reuse_variables()
        with v1.Session(graph=graph, config=v1.ConfigProto(allow_soft_placement=True)) as session:
            session.run(v1.global_variables_initializer())
            frozen = v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), ["tower_0/out", "tower_1/out"]
            )
    source = tmp_path / "towers.pb"
    source.write_bytes(frozen.SerializeToString())
    result = convert(tfpack_cli, source, tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["towers"] == "merge" and report["readiness"]["batch_independence"]["status"] == "passed"
    row = np.arange(6, dtype=np.float32).reshape(1, 6)
    served = serve(Path(report["version_dir"]), x=row)
    np.testing.assert_allclose(served["out"], [[1.5 * (0 + 1 + 2)]])


# --- SavedModel inputs, inspect, progress ---------------------------------------------------------


def test_a_saved_model_input_the_outputs_do_not_need_stays_accepted(tfpack_cli, tmp_path: Path) -> None:
    tf = tensorflow()

    class Classifier(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 3], tf.float32, name="features"),
                tf.TensorSpec([None], tf.int32, name="label_ids"),
            ]
        )
        def serve(self, features, label_ids):
            del label_ids  # a BERT-style export declares it; inference ignores it
            return {"probabilities": tf.nn.softmax(features * 2.0)}

    module = Classifier()
    source = tmp_path / "saved"
    tf.saved_model.save(module, str(source), signatures={"serving_default": module.serve})
    result = convert(tfpack_cli, source, tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(i["key"] for i in report["inputs"]) == ["features", "label_ids"]
    features = np.array([[0.0, 1.0, 2.0]], np.float32)
    served = serve(Path(report["version_dir"]), features=features, label_ids=np.array([1], np.int32))
    np.testing.assert_allclose(served["probabilities"], tf.nn.softmax(features * 2.0).numpy(), rtol=1e-6)


def test_inspect_takes_the_signature_flags_and_prints_every_verdict(tfpack_cli, models: Path, tmp_path: Path) -> None:
    source = write_training_default_true_frozen(models / "inspect_training.pb")
    report = tfpack_cli("inspect", source, "--json")
    assert report.exit_code == 0, report.stderr
    readiness = json.loads(report.stdout)["readiness"]
    assert set(readiness) == {"inference_outputs", "finite_goldens", "determinism", "batch_independence"}
    assert readiness["determinism"]["status"] == "failed"
    assert "--constant training=false" in readiness["determinism"]["detail"]

    fixed = tfpack_cli("inspect", source, "--constant", "training=false", "--outputs", "y")
    assert fixed.exit_code == 0, fixed.stderr
    assert "determinism: passed" in fixed.stdout and "batch independence: passed" in fixed.stdout
    assert list(tmp_path.iterdir()) == []  # inspect writes nothing


def test_sample_inputs_become_the_goldens_and_their_digest_is_recorded(
    tfpack_cli, models: Path, tmp_path: Path
) -> None:
    source = write_training_default_true_frozen(models / "sampled.pb")
    body = tmp_path / "request.json"
    body.write_text(json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5], [-1.0, 0.0, 1.0, 2.0]]}))
    result = convert(tfpack_cli, source, tmp_path / "out", "--constant", "training=false", "--sample-inputs", body)
    assert result.exit_code == 0, result.stderr
    version_dir = Path(json.loads(result.stdout)["version_dir"])
    goldens = Goldens.load(version_dir / GOLDENS_FILE)
    np.testing.assert_array_equal(goldens.inputs["x"][0], [1.0, 2.0, 3.0, 4.0])
    import hashlib

    sample = provenance(version_dir)["source"]["sample_inputs"]
    assert sample["format"] == "json" and sample["sha256"] == hashlib.sha256(body.read_bytes()).hexdigest()

    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, features=np.ones((2, 4), np.float32))
    assert_refused(
        convert(tfpack_cli, source, tmp_path / "out2", "--constant", "training=false", "--sample-inputs", wrong),
        tmp_path / "out2",
        "--sample-inputs",
        "x",
    )


def test_progress_is_one_line_per_step_with_its_duration_when_not_a_terminal(models: Path, tmp_path: Path) -> None:
    from conftest import run_tfpack_process

    source = write_sqrt_frozen(models / "progress.pb")
    result = run_tfpack_process("convert", source, "--name", "m", "--output-dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith("tfpack: loading") for line in lines)
    assert all(line.startswith("tfpack: ") and line.endswith("s)") for line in lines), lines
    assert "serving readiness:" in result.stdout
    quiet = run_tfpack_process("convert", source, "--name", "m", "--output-dir", tmp_path, "--json")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    json.loads(quiet.stdout)


# --- what a hostile review found: models the first version of the checks accepted ----------------


@pytest.mark.parametrize("build", [unready.flattened_batch_mix, unready.first_sample_only])
def test_outputs_that_are_not_one_row_per_sample_are_refused(build, tfpack_cli, tmp_path: Path) -> None:
    source = unready.write_frozen(tmp_path / "model.pb", build)
    assert_refused(
        convert(tfpack_cli, source, tmp_path / "out"),
        tmp_path / "out",
        "batch_independence",
        "not one per sample",
        "--batch-dependent",
    )


@pytest.mark.parametrize(
    "build, needle",
    [
        (unready.tiny_noise, "RandomStandardNormal"),  # 1e-7: far below the tolerance, still random
        (unready.fixed_seed_dropout, "StatelessRandomUniform"),  # the same mask on every request
    ],
)
def test_random_ops_are_refused_however_small_or_seeded(build, needle: str, tfpack_cli, tmp_path: Path) -> None:
    source = unready.write_frozen(tmp_path / "model.pb", build)
    assert_refused(
        convert(tfpack_cli, source, tmp_path / "out"), tmp_path / "out", "determinism", needle, "--allow-random"
    )


def test_allow_random_needs_random_ops_and_still_refuses_a_batch_mix(tfpack_cli, tmp_path: Path) -> None:
    deterministic = unready.write_frozen(tmp_path / "centred.pb", unready.centred_over_the_batch)
    assert_refused(
        convert(tfpack_cli, deterministic, tmp_path / "out", "--allow-random"),
        tmp_path / "out",
        "no random op",
        "drop --allow-random",
    )
    stochastic = unready.write_frozen(tmp_path / "dropout_mix.pb", unready.dropout_and_batch_mix)
    assert_refused(
        convert(tfpack_cli, stochastic, tmp_path / "out", "--allow-random"),
        tmp_path / "out",
        "batch_independence",
        "Mean over axis 0",
        "--batch-dependent",
    )


def test_identical_integer_samples_do_not_hide_a_batch_mix(tfpack_cli, tmp_path: Path) -> None:
    source = unready.write_frozen(tmp_path / "ids.pb", unready.embedding_centred_over_the_batch)
    one_sample = tmp_path / "one.npz"
    np.savez(one_sample, ids=np.array([2], np.int32))
    assert_refused(
        convert(tfpack_cli, source, tmp_path / "out", "--sample-inputs", one_sample),
        tmp_path / "out",
        "batch_independence",
        "Mean over axis 0",
    )
    all_zero = tmp_path / "zeros.npz"  # rows that cannot be varied within the ids the file shows
    np.savez(all_zero, ids=np.zeros(3, np.int32))
    assert_refused(
        convert(tfpack_cli, source, tmp_path / "out", "--sample-inputs", all_zero),
        tmp_path / "out",
        "samples are identical",
        "Mean over axis 0",
    )


def test_batchnorm_inference_never_borrows_another_layers_statistics(tfpack_cli, models: Path, tmp_path: Path) -> None:
    prefix = unready.batchnorm_borrowing_another_layers_statistics(models / "borrowing")
    result = convert(tfpack_cli, prefix, tmp_path, "--batchnorm", "inference")
    assert_refused(result, tmp_path, "head/bn")


def test_a_scalar_input_beside_a_batched_one_keeps_both_checks(tfpack_cli, tmp_path: Path) -> None:
    tf = tensorflow()

    class Scaled(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(unready.MIX_WEIGHTS)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 4], tf.float32, name="x"),
                tf.TensorSpec([], tf.float32, name="temperature"),
            ]
        )
        def serve(self, x, temperature):
            hidden = tf.matmul(x, self.w) / temperature
            return {"y": hidden - tf.reduce_mean(hidden, axis=0), "mean": tf.reduce_mean(hidden)}

    module = Scaled()
    source = tmp_path / "saved"
    tf.saved_model.save(module, str(source), signatures={"serving_default": module.serve})
    assert_refused(
        convert(tfpack_cli, source, tmp_path / "out"), tmp_path / "out", "inference_outputs", "mean (no batch dimension"
    )
    assert_refused(
        convert(tfpack_cli, source, tmp_path / "out", "--outputs", "y"),
        tmp_path / "out",
        "batch_independence",
        "Mean over axis 0",
    )


def test_split_towers_take_one_sample_file_for_every_tower(tfpack_cli, tmp_path: Path) -> None:
    from factories.tf1_graphs import write_two_tower

    model = write_two_tower(tmp_path / "towers")
    body = tmp_path / "request.json"
    body.write_text(json.dumps({"instances": [[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0], [3.0, 2.0, 1.0, 0.0]]}))
    result = convert(tfpack_cli, model.prefix, tmp_path / "out", "--towers", "split", "--sample-inputs", body)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["signatures"] == ["serving_default", "tower_0", "tower_1"]


# --- a second review: what still slipped through or was refused wrongly ----------------------------


def test_batch_statistics_behind_a_training_flag_name_the_constant_that_fixes_them(tfpack_cli, tmp_path: Path) -> None:
    source = unready.write_frozen(tmp_path / "bn_flag.pb", unready.batchnorm_behind_a_training_flag)
    assert_refused(
        convert(tfpack_cli, source, tmp_path / "out"),
        tmp_path / "out",
        "batch_independence",
        "is_training",
        "--constant is_training=false",
    )
    same = tmp_path / "same.npz"  # one request repeated: the samples are varied, the mix still shows
    np.savez(same, x=np.tile(np.array([[0.5, 1.0, -1.0, 2.0]], np.float32), (3, 1)))
    assert_refused(
        convert(tfpack_cli, source, tmp_path / "out", "--sample-inputs", same), tmp_path / "out", "batch_independence"
    )
    fixed = convert(tfpack_cli, source, tmp_path / "out", "--constant", "is_training=false")
    assert fixed.exit_code == 0, fixed.stderr


def test_random_ops_behind_a_condition_on_the_request_are_refused(tfpack_cli, tmp_path: Path) -> None:
    source = unready.write_frozen(tmp_path / "data_cond.pb", unready.random_behind_a_data_condition)
    assert_refused(
        convert(tfpack_cli, source, tmp_path / "out"),
        tmp_path / "out",
        "determinism",
        "behind a condition",
        "RandomUniform",
        "--allow-random",
    )


@pytest.mark.parametrize(
    "build, flags",
    [
        (unready.mean_over_runtime_axes, ()),
        (unready.dropout_and_runtime_axes_mix, ("--allow-random",)),
    ],
)
def test_a_batch_mix_with_runtime_axes_is_found_by_its_numbers(build, flags, tfpack_cli, tmp_path: Path) -> None:
    source = unready.write_frozen(tmp_path / "mix.pb", build)
    same = tmp_path / "same.npz"
    np.savez(same, x=np.tile(np.array([[0.5, 1.0, -1.0, 2.0]], np.float32), (3, 1)))
    assert_refused(
        convert(tfpack_cli, source, tmp_path / "out", "--sample-inputs", same, *flags),
        tmp_path / "out",
        "batch_independence",
        "axes known only at run time",
    )


def test_a_fixed_seed_random_crop_is_random(tfpack_cli, tmp_path: Path) -> None:
    source = unready.write_frozen(tmp_path / "crop.pb", unready.stateless_random_crop)
    assert_refused(
        convert(tfpack_cli, source, tmp_path / "out"),
        tmp_path / "out",
        "determinism",
        "StatelessSampleDistortedBoundingBox",
    )


def test_a_function_call_is_no_random_op(tfpack_cli, tmp_path: Path) -> None:
    source = unready.write_frozen(tmp_path / "call.pb", unready.deterministic_function_call)
    assert convert(tfpack_cli, source, tmp_path / "out").exit_code == 0
    assert_refused(
        convert(tfpack_cli, source, tmp_path / "out2", "--allow-random"),
        tmp_path / "out2",
        "no random op",
        "drop --allow-random",
    )


def test_allow_random_proves_map_fn_draws_and_merged_towers(tfpack_cli, tmp_path: Path) -> None:
    tf = tensorflow()

    class Noisy(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {
                "y": tf.map_fn(
                    lambda row: (
                        row * tf.random.truncated_normal([4])
                        + tf.cast(tf.random.uniform([], 0, 4, tf.int32), tf.float32)
                    ),
                    x,
                )
            }

    module = Noisy()
    tf.saved_model.save(module, str(tmp_path / "noisy"), signatures={"serving_default": module.serve})
    result = convert(tfpack_cli, tmp_path / "noisy", tmp_path / "out", "--allow-random")
    assert result.exit_code == 0, result.stderr

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        with v1.variable_scope(v1.get_variable_scope()):
            for index in range(2):
                with tf.name_scope(f"tower_{index}"):
                    x = v1.placeholder(tf.float32, [None, 4], name="x")
                    weights = v1.get_variable("w", initializer=unready.MIX_WEIGHTS)
                    tf.identity(tf.nn.dropout(tf.matmul(x, weights), rate=0.5), name="y")
                    v1.get_variable_scope().reuse_variables()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            frozen = v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), ["tower_0/y", "tower_1/y"]
            )
    towers = tmp_path / "towers.pb"
    towers.write_bytes(frozen.SerializeToString())
    merged = convert(tfpack_cli, towers, tmp_path / "out2", "--allow-random")
    assert merged.exit_code == 0, merged.stderr
    assert json.loads(merged.stdout)["towers"] == "merge"


def test_a_keras_lstm_with_dropout_converts(tfpack_cli, tmp_path: Path) -> None:
    import keras

    steps = keras.Input(shape=(6, 3), name="steps")
    model = keras.Model(
        steps, keras.layers.Dense(2, name="scores")(keras.layers.LSTM(5, dropout=0.3, recurrent_dropout=0.2)(steps))
    )
    model.save(tmp_path / "lstm.keras")
    result = convert(tfpack_cli, tmp_path / "lstm.keras", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    goldens = Goldens.load(Path(json.loads(result.stdout)["version_dir"]) / GOLDENS_FILE)
    np.testing.assert_allclose(
        goldens.outputs["scores"], model.predict(goldens.inputs["steps"], verbose=0), rtol=1e-5, atol=1e-6
    )


def test_a_constant_table_output_is_served_when_named_and_the_rest_still_checked(tfpack_cli, tmp_path: Path) -> None:
    tf = tensorflow()

    class WithClasses(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(unready.MIX_WEIGHTS)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.matmul(x, self.w), "classes": tf.constant([["a", "b"]])}

    module = WithClasses()
    tf.saved_model.save(module, str(tmp_path / "saved"), signatures={"serving_default": module.serve})
    assert_refused(
        convert(tfpack_cli, tmp_path / "saved", tmp_path / "out"),
        tmp_path / "out",
        "inference_outputs",
        "classes (a constant with no batch dimension",
    )
    named = convert(tfpack_cli, tmp_path / "saved", tmp_path / "out", "--outputs", "y,classes")
    assert named.exit_code == 0, named.stderr
    readiness = json.loads(named.stdout)["readiness"]
    assert readiness["inference_outputs"]["status"] == "allowed"
    assert readiness["batch_independence"]["status"] == "passed"
