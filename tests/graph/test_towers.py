"""Multi-GPU tower graphs (the classic Card_N recipe): detection, merge, split and single, from a
checkpoint with its meta graph and from a frozen .pb, on this CPU-only host."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from factories.tf1_graphs import write_two_tower

from packager.convert import ConvertOptions, convert
from packager.errors import UsageError
from packager.graph.signature import tower_slices
from packager.layout import PROVENANCE_FILE
from packager.tf_runtime import reference_session, tensorflow


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory):
    return write_two_tower(tmp_path_factory.mktemp("towers"))


@pytest.fixture(scope="module")
def per_tower_outputs(towers):
    """Run the original frozen graph's towers one by one on their slice: the ground truth."""
    tf = tensorflow()
    from tensorflow.core.framework import graph_pb2

    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_pb2.GraphDef.FromString(towers.frozen.read_bytes()), name="")
    session = reference_session(graph)

    def run(x: np.ndarray) -> np.ndarray:
        parts = [
            session.run(f"Card_{i}/probs:0", {f"Card_{i}/x:0": x[rows]})
            for i, rows in enumerate(tower_slices(len(x), 2))
            if rows.stop > rows.start
        ]
        return np.concatenate(parts)

    return run


def serve(version_dir: Path, signature: str = "serving_default", **feeds):
    tf = tensorflow()
    function = tf.saved_model.load(str(version_dir)).signatures[signature]
    return {k: v.numpy() for k, v in function(**{k: tf.constant(v) for k, v in feeds.items()}).items()}


def batch(size: int) -> np.ndarray:
    return np.random.default_rng(size).normal(size=(size, 4)).astype(np.float32)


def test_tower_slices_are_even_ordered_and_allow_empty_towers() -> None:
    assert [(s.start, s.stop) for s in tower_slices(7, 2)] == [(0, 4), (4, 7)]
    assert [(s.start, s.stop) for s in tower_slices(1, 2)] == [(0, 1), (1, 1)]
    assert [(s.start, s.stop) for s in tower_slices(5, 3)] == [(0, 2), (2, 4), (4, 5)]


@pytest.mark.parametrize("kind", ["checkpoint", "frozen"])
def test_merge_serves_one_batch_across_both_towers(kind: str, towers, per_tower_outputs, tmp_path: Path) -> None:
    source = towers.prefix if kind == "checkpoint" else towers.frozen
    result = convert(source, ConvertOptions(name="towers", output_dir=tmp_path))  # auto = merge
    assert result.tower_mode == "merge"
    assert [(r.key, r.shape) for r in result.inputs] == [("x", (None, 4))]
    assert [r.key for r in result.outputs] == ["probs"]
    for size in (1, 5, 7):
        x = batch(size)
        served = serve(result.version_dir, x=x)["probs"]
        np.testing.assert_array_equal(served, per_tower_outputs(x))
        np.testing.assert_allclose(served, towers.predict(x), rtol=1e-5, atol=1e-6)
    towers_record = json.loads((result.version_dir / PROVENANCE_FILE).read_text())["towers"]
    assert towers_record["count"] == 2 and towers_record["mode"] == "merge"
    assert towers_record["scopes"] == ["Card_0", "Card_1"]


def test_split_exposes_one_working_signature_per_tower(towers, tmp_path: Path) -> None:
    result = convert(towers.prefix, ConvertOptions(name="towers", output_dir=tmp_path, towers="split"))
    assert result.signatures == ["serving_default", "tower_0", "tower_1"]
    x = batch(3)
    for signature in result.signatures:
        np.testing.assert_allclose(
            serve(result.version_dir, signature, x=x)["probs"], towers.predict(x), rtol=1e-5, atol=1e-6
        )


def test_single_keeps_tower_zero_without_devices(towers, tmp_path: Path) -> None:
    tf = tensorflow()
    result = convert(towers.frozen, ConvertOptions(name="towers", output_dir=tmp_path, towers="single"))
    assert result.signatures == ["serving_default"]
    with tf.compat.v1.Session(graph=tf.Graph()) as session:  # no soft placement: no device pins left
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(result.version_dir))
        assert not [n.device for n in meta_graph.graph_def.node if n.device]
        output = session.run("Card_0/probs:0", {"Card_0/x:0": batch(2)})
    np.testing.assert_allclose(output, towers.predict(batch(2)), rtol=1e-5, atol=1e-6)


def test_tower_modes_need_towers(tmp_path: Path) -> None:
    from factories.sources import write_frozen_classifier

    source = write_frozen_classifier(tmp_path / "plain.pb")
    with pytest.raises(UsageError, match="no tower family"):
        convert(source, ConvertOptions(name="m", output_dir=tmp_path / "out", towers="merge"))


def test_merged_towers_run_on_distinct_devices(towers, tmp_path: Path) -> None:
    """With two logical devices configured, the merged signature puts each tower on its own."""
    result = convert(towers.frozen, ConvertOptions(name="towers", output_dir=tmp_path))
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        tf.debugging.set_log_device_placement(True)
        function = tf.saved_model.load({str(result.version_dir)!r}).signatures["serving_default"]
        print(function(x=tf.constant(np.ones((4, 4), np.float32)))["probs"].shape)
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}  # placement is logged at INFO
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    # placer.cc lines: "... placer.cc:162] Card_1/probs: (Softmax): /job:localhost/.../device:CPU:1"
    placements = dict(re.findall(r"\] (Card_\d)/probs: \(\w+\): \S*device:(\w+:\d+)", completed.stderr))
    assert placements == {"Card_0": "CPU:0", "Card_1": "CPU:1"}, completed.stderr[-3000:]


def test_embedded_runtime_serves_merged_towers_on_a_cpu_host(towers, tmp_path: Path) -> None:
    """The embedded runtime, given the session config tfpack's images carry (soft placement),
    loads the merged graph pinned to /device:*:N on this CPU-only host and serves the towers'
    numbers. Without it, it places strictly — like tensorflow_model_server — and refuses."""
    from servers import ModelServerFailed, running_model_server
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from packager.image import SESSION_CONFIG

    tf = tensorflow()
    convert(towers.frozen, ConvertOptions(name="towers", output_dir=tmp_path / "models"))
    session_config = tmp_path / "session_config.pbtxt"
    session_config.write_text(SESSION_CONFIG)
    base = [f"--model_base_path={tmp_path / 'models' / 'towers'}", "--model_name=towers"]
    x = batch(5)
    with running_model_server([*base, f"--tensorflow_session_config_file={session_config}"], rest=False) as server:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "towers"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
        with server.channel() as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["probs"]), towers.predict(x), rtol=1e-5, atol=1e-6)
    with (
        pytest.raises(ModelServerFailed),
        running_model_server([*base, "--max_num_load_retries=0"], rest=False, timeout=60),
    ):
        pass
