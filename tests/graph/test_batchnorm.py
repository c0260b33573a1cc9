"""Batch norms built with training=True (issue 9): found in the frozen graph, and rewritten under
--batchnorm inference into what the same model built with training=False computes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from packager.errors import SourceError, UsageError
from packager.graph.batchnorm import apply_batchnorm_mode, find_batch_statistics_norms, rewrite_to_inference
from packager.graph.io_discovery import GraphIndex
from packager.sources import load_source
from packager.sources.keras_file import load_keras_file
from packager.tf_runtime import tensorflow
from tests.factories.batchnorm import (
    INPUT,
    OUTPUT,
    BatchNormCheckpoint,
    layers_builder,
    moments_builder,
    sample_batch,
    slim_style_builder,
    write_checkpoint,
    write_frozen_without_moving_statistics,
    write_keras_training_call,
)

# tf.compat.v1.layers and HDF5 saving warn that they are deprecated: these tests build with them on purpose.
pytestmark = [
    pytest.mark.fast,
    pytest.mark.filterwarnings("ignore:`tf.layers.*is deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file:UserWarning"),
]


def run_graph(graph_def, features: np.ndarray, inputs: str = f"{INPUT}:0", outputs: str = f"{OUTPUT}:0") -> np.ndarray:  # type: ignore[no-untyped-def]
    tf = tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(outputs, {inputs: features})


def batch_dependent(run: Callable[[np.ndarray], np.ndarray], features: np.ndarray) -> bool:
    """True when the first sample's outputs alone differ from its outputs inside the batch."""
    return not np.allclose(run(features[:1]), run(features)[:1], atol=1e-5)


def sinks(graph_def) -> set[str]:  # type: ignore[no-untyped-def]
    index = GraphIndex.build(graph_def)
    return {name for name, node in index.nodes.items() if not index.consumers[name] and node.op != "Const"}


LAYER_CASES = {
    # name: (rank, fused, use_resource, expected kind)
    "4d-fused-ref-variables": (4, None, False, "fused"),
    "4d-fused-resource-variables": (4, None, True, "fused"),
    "4d-unfused": (4, False, False, "moments"),
    "2d-resource-variables": (2, None, True, "moments"),
}


@pytest.fixture(scope="module", params=sorted(LAYER_CASES))
def layers_checkpoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, BatchNormCheckpoint]:
    rank, fused, use_resource, _ = LAYER_CASES[request.param]
    shape = (4, 4, 3) if rank == 4 else (3,)
    build = layers_builder(rank, fused=fused, use_resource=use_resource)
    return request.param, write_checkpoint(tmp_path_factory.mktemp(request.param), build, shape)


def test_layers_batch_norms_are_found_with_their_moving_statistics(
    layers_checkpoint: tuple[str, BatchNormCheckpoint],
) -> None:
    case, checkpoint = layers_checkpoint
    source = load_source(checkpoint.prefix)
    sites = find_batch_statistics_norms(source.graph_def)
    assert [(s.kind, s.scope) for s in sites] == [(LAYER_CASES[case][3], "net/bn"), (LAYER_CASES[case][3], "net/bn2")]
    for site in sites:
        assert (site.moving_mean, site.moving_variance) == (
            f"{site.scope}/moving_mean",
            f"{site.scope}/moving_variance",
        )
        assert source.graph_def.node[[n.name for n in source.graph_def.node].index(site.moving_mean)].op == "Const"
    # The frozen graph normalises with the batch's statistics: it is the trained graph, batch-dependent.
    features = sample_batch(checkpoint.input_shape)
    np.testing.assert_allclose(run_graph(source.graph_def, features), checkpoint.training_outputs(features), atol=1e-5)
    assert batch_dependent(lambda x: run_graph(source.graph_def, x), features)


def test_rewrite_gives_the_training_false_model(layers_checkpoint: tuple[str, BatchNormCheckpoint]) -> None:
    _, checkpoint = layers_checkpoint
    source = load_source(checkpoint.prefix)
    original = source.graph_def.SerializeToString()
    sites = find_batch_statistics_norms(source.graph_def)
    rewritten, description = rewrite_to_inference(source.graph_def, sites)

    assert source.graph_def.SerializeToString() == original  # the argument is never modified
    assert len(description) == 2 and "net/bn/moving_mean" in description[0]
    features = sample_batch(checkpoint.input_shape)
    np.testing.assert_allclose(run_graph(rewritten, features), checkpoint.inference_outputs(features), atol=1e-5)
    assert not batch_dependent(lambda x: run_graph(rewritten, x), features)
    assert find_batch_statistics_norms(rewritten) == []
    assert sinks(rewritten) <= sinks(source.graph_def)  # the dead batch moments leave no new sink


@pytest.mark.parametrize("keepdims", [False, True], ids=["squeezed", "keepdims"])
def test_hand_written_moments_are_rewritten(tmp_path: Path, keepdims: bool) -> None:
    checkpoint = write_checkpoint(tmp_path, moments_builder(keepdims=keepdims), (3,))
    source = load_source(checkpoint.prefix)
    sites = find_batch_statistics_norms(source.graph_def)
    assert [(s.kind, s.scope, s.moving_mean) for s in sites] == [("moments", "net/norm", "net/norm/moving_mean")]
    features = sample_batch((3,))
    assert batch_dependent(lambda x: run_graph(source.graph_def, x), features)
    rewritten, _ = rewrite_to_inference(source.graph_def, sites)
    np.testing.assert_allclose(run_graph(rewritten, features), checkpoint.inference_outputs(features), atol=1e-5)
    assert not batch_dependent(lambda x: run_graph(rewritten, x), features)
    # The squeezed batch mean is dead and removed; a kept-dims one still gives the moving mean its shape.
    assert ("net/norm/moments/mean" in {n.name for n in rewritten.node}) == keepdims
    kept, _ = rewrite_to_inference(source.graph_def, sites, keep=["net/norm/moments/mean"])
    assert "net/norm/moments/mean" in {n.name for n in kept.node}


def test_moving_statistics_only_the_update_reads_survive_freezing(tmp_path: Path) -> None:
    # slim's training-mode FusedBatchNorm gets empty mean/variance; here only the moving-average
    # update, in a train/ scope that freezing drops, reads the moving statistics.
    checkpoint = write_checkpoint(tmp_path, slim_style_builder(), (4, 4, 3))
    source = load_source(checkpoint.prefix)
    constants = {n.name for n in source.graph_def.node if n.op == "Const"}
    assert {"net/BatchNorm/moving_mean", "net/BatchNorm/moving_variance"} <= constants
    [site] = find_batch_statistics_norms(source.graph_def)
    assert (site.op, site.moving_mean) == ("net/BatchNorm/FusedBatchNorm", "net/BatchNorm/moving_mean")
    rewritten, _ = rewrite_to_inference(source.graph_def, [site])
    features = sample_batch((4, 4, 3))
    np.testing.assert_allclose(run_graph(rewritten, features), checkpoint.inference_outputs(features), atol=1e-5)
    assert not batch_dependent(lambda x: run_graph(rewritten, x), features)


def test_frozen_graph_without_moving_statistics_is_refused(tmp_path: Path) -> None:
    source = load_source(write_frozen_without_moving_statistics(tmp_path / "frozen.pb"))
    [site] = find_batch_statistics_norms(source.graph_def)
    assert not site.paired
    with pytest.raises(SourceError) as raised:
        rewrite_to_inference(source.graph_def, [site])
    message = str(raised.value)
    assert "net/BatchNorm/FusedBatchNorm" in message and "checkpoint" in message and "--batchnorm batch" in message
    assert "\n" not in message


def test_modes(tmp_path: Path) -> None:
    source = load_source(write_frozen_without_moving_statistics(tmp_path / "frozen.pb"))
    with pytest.raises(UsageError) as raised:
        apply_batchnorm_mode(source.graph_def, "auto", source="frozen.pb")
    message = str(raised.value)
    assert (
        "net/BatchNorm/FusedBatchNorm" in message
        and "--batchnorm inference" in message
        and "--batchnorm batch" in message
    )
    graph_def, sites, description = apply_batchnorm_mode(source.graph_def, "batch")
    assert graph_def is source.graph_def and len(sites) == 1 and description == []
    with pytest.raises(SourceError):
        apply_batchnorm_mode(source.graph_def, "inference")
    with pytest.raises(UsageError):
        apply_batchnorm_mode(source.graph_def, "fused")
    # Only the serving path counts.
    assert apply_batchnorm_mode(source.graph_def, "auto", within=set())[1] == []


def test_within_limits_the_scan(layers_checkpoint: tuple[str, BatchNormCheckpoint]) -> None:
    _, checkpoint = layers_checkpoint
    graph_def = load_source(checkpoint.prefix).graph_def
    index = GraphIndex.build(graph_def)
    assert len(find_batch_statistics_norms(graph_def, within=index.ancestors([OUTPUT]))) == 2
    first_only = index.ancestors(
        ["net/bn/FusedBatchNormV3" if "net/bn/FusedBatchNormV3" in index.nodes else "net/bn/batchnorm/add_1"]
    )
    assert [s.scope for s in find_batch_statistics_norms(graph_def, within=first_only)] == ["net/bn"]


def test_inference_mode_and_other_normalizations_are_not_reported(tmp_path: Path) -> None:
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        layers_builder(4, fused=None, use_resource=False)(False)
        x2 = v1.placeholder(tf.float32, [None, 6], name="rows")
        mean, variance = tf.nn.moments(x2, [1], keepdims=True)  # a layer norm: per sample
        tf.identity((x2 - mean) * tf.math.rsqrt(variance + 1e-3), name="layer_norm")
    assert find_batch_statistics_norms(graph.as_graph_def()) == []


def test_tf_keras_training_call_is_refused_then_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    inference = write_keras_training_call(path, "tf_keras")
    with pytest.raises(UsageError) as raised:
        load_source(path)  # auto
    assert (
        "bn" in str(raised.value)
        and "--batchnorm inference" in str(raised.value)
        and "--batchnorm batch" in str(raised.value)
    )
    with pytest.raises(SourceError, match="--batchnorm inference"):
        load_keras_file(path, batchnorm="batch")

    source = load_keras_file(path, batchnorm="inference")
    assert "batchnorm_training_call" in source.details["legacy_fixes"]
    assert source.details["batchnorm_training_calls"] == ["bn"]
    assert find_batch_statistics_norms(source.graph_def) == []
    names = (source.inputs[0].tensor_name, source.outputs[0].tensor_name)  # type: ignore[index]
    features = sample_batch((3,))
    np.testing.assert_allclose(run_graph(source.graph_def, features, *names), inference(features), atol=1e-4)
    assert not batch_dependent(lambda x: run_graph(source.graph_def, x, *names), features)


def test_keras3_training_call_already_serves_moving_statistics(tmp_path: Path) -> None:
    # Keras 3 lets the model's training=False (tfpack's trace, like predict()) win over the call's.
    path = tmp_path / "model.keras"
    inference = write_keras_training_call(path, "keras")
    source = load_source(path)
    assert source.details["batchnorm_training_calls"] == ["bn"]
    assert find_batch_statistics_norms(source.graph_def) == []
    names = (source.inputs[0].tensor_name, source.outputs[0].tensor_name)  # type: ignore[index]
    features = sample_batch((3,))
    np.testing.assert_allclose(run_graph(source.graph_def, features, *names), inference(features), atol=1e-4)
