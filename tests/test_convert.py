"""convert: every issue-2 source kind, with no names given, reproduces the source's numbers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from factories.sources import (
    build_keras3_multi_io,
    frozen_classifier_reference,
    write_frozen_classifier,
    write_keras2_h5,
    write_keras3,
)

from packager.convert import ConvertOptions, convert
from packager.layout import GOLDENS_FILE, PROVENANCE_FILE, WARMUP_FILE, Goldens
from packager.tf_runtime import tensorflow

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {
        "frozen_pb": write_frozen_classifier(root / "classifier.pb"),
        "frozen_pbtxt": write_frozen_classifier(root / "classifier.pbtxt", text=True),
        "keras3": write_keras3(root / "multi.keras"),
        "keras3_h5": write_keras3(root / "multi_k3.h5"),
        "keras2_h5": write_keras2_h5(root / "conv_k2.h5"),
    }


def serve_with_tensorflow(version_dir: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run serving_default through TF2's own loader, independently of tfpack's session path."""
    tf = tensorflow()
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in feeds.items()}).items()}


@pytest.mark.parametrize("kind", ["frozen_pb", "frozen_pbtxt"])
def test_frozen_graph_converts_with_discovered_names(kind: str, sources, tmp_path: Path) -> None:
    result = convert(sources[kind], ConvertOptions(name="classifier", output_dir=tmp_path))

    assert result.version_dir == tmp_path / "classifier" / "1"
    # The label placeholder only feeds the loss; the loss and summary are not outputs.
    assert [(r.key, r.tensor_name, r.dtype, r.shape) for r in result.inputs] == [
        ("features", "features:0", "float32", (None, 4))
    ]
    assert [(r.key, r.tensor_name) for r in result.outputs] == [("probs", "model/probs:0")]
    features = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    served = serve_with_tensorflow(result.version_dir, {"features": features})
    np.testing.assert_allclose(served["probs"], frozen_classifier_reference(features), rtol=1e-5, atol=1e-6)


def test_keras3_multi_io_keeps_every_input_and_output(sources, tmp_path: Path) -> None:
    for kind in ("keras3", "keras3_h5"):
        result = convert(sources[kind], ConvertOptions(name=kind, output_dir=tmp_path))
        assert [r.key for r in result.inputs] == ["features", "extra"]
        assert sorted(r.key for r in result.outputs) == ["probs", "score"]
        feeds = {"features": np.ones((3, 4), np.float32), "extra": np.full((3, 2), 0.5, np.float32)}
        expected = build_keras3_multi_io()  # same seed, same weights as the file
        want = expected([feeds["features"], feeds["extra"]])
        served = serve_with_tensorflow(result.version_dir, feeds)
        np.testing.assert_allclose(served["score"], np.asarray(want[0]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(served["probs"], np.asarray(want[1]), rtol=1e-5, atol=1e-6)


def test_keras2_h5_is_loaded_with_tf_keras(sources, tmp_path: Path) -> None:
    import tf_keras

    result = convert(sources["keras2_h5"], ConvertOptions(name="conv", output_dir=tmp_path))
    provenance = json.loads((result.version_dir / PROVENANCE_FILE).read_text())
    assert provenance["source"]["details"]["keras_version"].startswith("2.")
    pixels = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype(np.float32)
    want = tf_keras.models.load_model(sources["keras2_h5"], compile=False)(pixels).numpy()
    served = serve_with_tensorflow(result.version_dir, {"pixels": pixels})
    np.testing.assert_allclose(served["classes"], want, rtol=1e-5, atol=1e-6)


def test_saved_model_source_round_trips(sources, tmp_path: Path) -> None:
    first = convert(sources["frozen_pb"], ConvertOptions(name="classifier", output_dir=tmp_path / "a"))
    again = convert(first.version_dir, ConvertOptions(name="classifier", output_dir=tmp_path / "b"))
    assert again.source_format == "saved_model"
    assert [r.key for r in again.inputs] == ["features"] and [r.key for r in again.outputs] == ["probs"]


def test_version_dir_holds_goldens_warmup_and_provenance(sources, tmp_path: Path) -> None:
    tf = tensorflow()
    from tensorflow_serving.apis import prediction_log_pb2

    result = convert(sources["frozen_pb"], ConvertOptions(name="classifier", output_dir=tmp_path))
    goldens = Goldens.load(result.version_dir / GOLDENS_FILE)
    assert goldens.inputs["features"].shape == (2, 4)
    np.testing.assert_allclose(
        goldens.outputs["probs"], frozen_classifier_reference(goldens.inputs["features"]), rtol=1e-5
    )

    records = list(tf.data.TFRecordDataset(str(result.version_dir / WARMUP_FILE)).as_numpy_iterator())
    assert len(records) == 1
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    assert log.predict_log.request.model_spec.name == "classifier"
    np.testing.assert_array_equal(
        tf.make_ndarray(log.predict_log.request.inputs["features"]), goldens.inputs["features"]
    )

    provenance = json.loads((result.version_dir / PROVENANCE_FILE).read_text())
    assert provenance["source"]["format"] == "frozen_graph"
    assert (
        provenance["source"]["files"]["classifier.pb"] == hashlib.sha256(sources["frozen_pb"].read_bytes()).hexdigest()
    )
    assert provenance["signature"]["inputs"] == {"features": {"dtype": "float32", "shape": [None, 4]}}
    assert provenance["equivalence"]["tolerance"] == 1e-5
    assert provenance["tensorflow_version"] == tf.__version__


def test_versions_increment_and_nothing_is_left_beside_them(sources, tmp_path: Path) -> None:
    for _ in range(2):
        convert(sources["frozen_pb"], ConvertOptions(name="classifier", output_dir=tmp_path))
    convert(sources["frozen_pb"], ConvertOptions(name="classifier", output_dir=tmp_path, version=7))
    assert sorted(p.name for p in (tmp_path / "classifier").iterdir()) == ["1", "2", "7"]
    following = convert(sources["frozen_pb"], ConvertOptions(name="classifier", output_dir=tmp_path))
    assert following.version_dir.name == "8"


def test_explicit_names_override_discovery(sources, tmp_path: Path) -> None:
    result = convert(
        sources["frozen_pb"],
        ConvertOptions(
            name="logits", output_dir=tmp_path, inputs=["features"], outputs=["model/logits:0", "model/probs"]
        ),
    )
    assert [r.key for r in result.outputs] == ["logits", "probs"]
