"""Source models of every kind tfpack converts, built with TensorFlow for the tests.

Each writer returns the path it wrote; each model is small (milliseconds to run) but has the
structure that matters: named scopes, training machinery beside the inference path, several
inputs or outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from packager.tf_runtime import tensorflow


def write_frozen_classifier(path: Path, *, text: bool = False) -> Path:
    """A frozen TF1 classifier: features [None, 4] -> model/probs (softmax) and model/logits.

    Beside the inference path the graph carries what freeze_graph leaves in practice: a label
    placeholder feeding only the loss, a loss, and a summary — none of which is serving I/O. Only
    ``model/probs`` is a sink on the inference path (logits feeds probs and the loss).
    """
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        features = v1.placeholder(tf.float32, [None, 4], name="features")
        labels = v1.placeholder(tf.int64, [None], name="labels")
        rng = np.random.default_rng(7)
        with v1.variable_scope("model"):
            kernel = v1.get_variable("kernel", initializer=rng.normal(size=(4, 3)).astype(np.float32))
            bias = v1.get_variable("bias", initializer=rng.normal(size=(3,)).astype(np.float32))
            logits = tf.add(tf.matmul(features, kernel), bias, name="logits")
            tf.nn.softmax(logits, name="probs")
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits), name="loss")
        v1.summary.scalar("loss", loss)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            frozen = v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), ["model/probs", "loss", "loss_1"]
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    if text:
        tf.io.write_graph(frozen, str(path.parent), path.name, as_text=True)
    else:
        path.write_bytes(frozen.SerializeToString())
    return path


def frozen_classifier_reference(features: np.ndarray) -> np.ndarray:
    """What write_frozen_classifier's model/probs computes, in numpy."""
    rng = np.random.default_rng(7)
    kernel = rng.normal(size=(4, 3)).astype(np.float32)
    bias = rng.normal(size=(3,)).astype(np.float32)
    logits = features.astype(np.float32) @ kernel + bias
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def build_keras3_multi_io():  # type: ignore[no-untyped-def]
    """A Keras 3 functional model with two inputs (features, extra) and two outputs (score, probs)."""
    import keras

    keras.utils.set_random_seed(3)
    features = keras.Input((4,), name="features")
    extra = keras.Input((2,), name="extra")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(
        keras.layers.Concatenate(name="joined")([features, extra])
    )
    score = keras.layers.Dense(1, name="score")(hidden)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    return keras.Model([features, extra], [score, probs], name="multi_io")


def write_keras3(path: Path) -> Path:
    """Save :func:`build_keras3_multi_io` as .keras or .h5 (by suffix) with Keras 3."""
    path.parent.mkdir(parents=True, exist_ok=True)
    build_keras3_multi_io().save(path)
    return path


def write_keras2_h5(path: Path) -> Path:
    """A Keras 2 (tf_keras) .h5 classifier: pixels [None, 8, 8, 1] -> conv -> dense softmax."""
    import tf_keras

    tf_keras.utils.set_random_seed(5)
    model = tf_keras.Sequential(
        [
            tf_keras.layers.Input((8, 8, 1), name="pixels"),
            tf_keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            tf_keras.layers.Flatten(name="flat"),
            tf_keras.layers.Dense(3, activation="softmax", name="classes"),
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path
