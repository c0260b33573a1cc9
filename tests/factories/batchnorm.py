"""Models whose batch norms were built with training=True as a Python constant (issue 9).

TF1 graphs use tf.compat.v1.layers' batch_normalization and conv2d from tf_keras, where
tf.compat.v1.layers forwards them when TF_USE_LEGACY_KERAS=1 is set before TensorFlow is imported:
importing them from tf_keras works whatever the test process imported first. Each writer trains a
few steps with the UPDATE_OPS so the moving statistics differ from their initial values, saves a
checkpoint with its meta graph, and can compute the outputs the same graph built with
training=False gives restored from that checkpoint — what a served model must answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from packager.tf_runtime import tensorflow

INPUT = "x"
OUTPUT = "net/out"


@dataclass(frozen=True)
class BatchNormCheckpoint:
    """A trained checkpoint whose graph normalises with batch statistics."""

    prefix: Path
    input_shape: tuple[int, ...]  # one sample's shape
    build: Callable[[bool], None]  # builds the inference graph with training=True/False

    def inference_outputs(self, features: np.ndarray) -> np.ndarray:
        """What the graph built with training=False, restored from the checkpoint, computes."""
        return _restored_run(self.build, False, self.prefix, features)

    def training_outputs(self, features: np.ndarray) -> np.ndarray:
        """What the trained graph itself (batch statistics) computes."""
        return _restored_run(self.build, True, self.prefix, features)


def _restored_run(build: Callable[[bool], None], training: bool, prefix: Path, features: np.ndarray) -> np.ndarray:
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        build(training)
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            saver.restore(session, str(prefix))
            return session.run(f"{OUTPUT}:0", {f"{INPUT}:0": features})


def sample_batch(shape: tuple[int, ...], count: int = 5, seed: int = 3) -> np.ndarray:
    """Inputs far from the moving statistics' initial values (mean 0, variance 1)."""
    return np.random.default_rng(seed).normal(2.0, 3.0, size=(count, *shape)).astype(np.float32)


def layers_builder(rank: int, *, fused: bool | None, use_resource: bool) -> Callable[[bool], None]:
    """A model with two tf.compat.v1.layers batch norms: 4-D (conv, bn, relu, conv, bn) or 2-D
    (bn, relu, dense, bn); fused=None lets the layer choose (fused for 4-D)."""
    tf = tensorflow()
    v1 = tf.compat.v1
    from tf_keras.src.legacy_tf_layers import convolutional, core, normalization

    def build(training: bool) -> None:
        shape = (4, 4, 3) if rank == 4 else (3,)
        x = v1.placeholder(tf.float32, [None, *shape], name=INPUT)
        with v1.variable_scope("net", use_resource=use_resource):
            if rank == 4:
                h = normalization.batch_normalization(x, training=training, fused=fused, name="bn")
                h = convolutional.conv2d(tf.nn.relu(h), 4, 3, padding="same", name="conv")
                h = normalization.batch_normalization(h, training=training, fused=fused, name="bn2")
                y = tf.reduce_mean(h, axis=[1, 2])
            else:
                h = normalization.batch_normalization(x, training=training, fused=fused, name="bn")
                h = core.dense(tf.nn.relu(h), 4, name="dense")
                y = normalization.batch_normalization(h, training=training, fused=fused, name="bn2")
            tf.identity(y, name="out")

    return build


def slim_style_builder() -> Callable[[bool], None]:
    """slim.batch_norm's fused form with resource variables: in training the FusedBatchNorm gets
    empty mean/variance and the moving statistics are read only by their update, which this model
    builds in a ``train`` scope — training machinery that freezing drops."""
    tf = tensorflow()
    v1 = tf.compat.v1

    def build(training: bool) -> None:
        x = v1.placeholder(tf.float32, [None, 4, 4, 3], name=INPUT)
        with v1.variable_scope("net/BatchNorm", use_resource=True):
            beta = v1.get_variable("beta", initializer=np.full(3, 0.5, np.float32))
            gamma = v1.get_variable("gamma", initializer=np.full(3, 1.5, np.float32))
            moving_mean = v1.get_variable("moving_mean", initializer=np.zeros(3, np.float32), trainable=False)
            moving_variance = v1.get_variable("moving_variance", initializer=np.ones(3, np.float32), trainable=False)
        with tf.name_scope("net/BatchNorm/"):
            if training:
                y, mean, variance = v1.nn.fused_batch_norm(
                    x, gamma, beta, epsilon=1e-3, is_training=True, name="FusedBatchNorm"
                )
                with tf.name_scope("train/"):
                    for var, value in ((moving_mean, mean), (moving_variance, variance)):
                        v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, var.assign_sub(0.5 * (var - value)))
            else:
                y, _, _ = v1.nn.fused_batch_norm(
                    x, gamma, beta, moving_mean, moving_variance, epsilon=1e-3, is_training=False, name="FusedBatchNorm"
                )
        tf.identity(tf.reduce_mean(y, axis=[1, 2]), name=OUTPUT)

    return build


def moments_builder(*, keepdims: bool) -> Callable[[bool], None]:
    """tf.nn.moments and tf.nn.batch_normalization written out by hand over [batch, 3] inputs,
    the statistics with or without their reduced dimension ([1, 3] or [3])."""
    tf = tensorflow()
    v1 = tf.compat.v1

    def build(training: bool) -> None:
        x = v1.placeholder(tf.float32, [None, 3], name=INPUT)
        with v1.variable_scope("net/norm"):
            beta = v1.get_variable("beta", initializer=np.array([0.1, -0.2, 0.3], np.float32))
            gamma = v1.get_variable("gamma", initializer=np.array([1.5, 0.5, 2.0], np.float32))
            moving_mean = v1.get_variable("moving_mean", initializer=np.zeros(3, np.float32), trainable=False)
            moving_variance = v1.get_variable("moving_variance", initializer=np.ones(3, np.float32), trainable=False)
            if training:
                mean, variance = tf.nn.moments(x, [0], keepdims=keepdims)
                for var, value in ((moving_mean, mean), (moving_variance, variance)):
                    v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, var.assign_sub(0.5 * (var - tf.reshape(value, [-1]))))
            else:
                mean, variance = moving_mean, moving_variance
            y = tf.nn.batch_normalization(x, mean, variance, beta, gamma, 1e-3)
        tf.identity(y * 2.0, name=OUTPUT)

    return build


def write_checkpoint(
    directory: Path, build: Callable[[bool], None], input_shape: tuple[int, ...], steps: int = 3
) -> BatchNormCheckpoint:
    """Train ``build(True)`` a few steps with its update ops; save a checkpoint with meta graph."""
    tf = tensorflow()
    v1 = tf.compat.v1
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(7)
        build(True)
        out = graph.get_tensor_by_name(f"{OUTPUT}:0")
        target = v1.placeholder(tf.float32, out.shape, name="target")
        loss = tf.reduce_mean(tf.square(out - target), name="loss")
        with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
            train = v1.train.GradientDescentOptimizer(0.01).minimize(loss, name="train_op")
        saver = v1.train.Saver()
        rng = np.random.default_rng(0)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            for _ in range(steps):
                features = rng.normal(2.0, 3.0, size=(8, *input_shape)).astype(np.float32)
                session.run(train, {f"{INPUT}:0": features, target: np.ones((8, *out.shape[1:]), np.float32)})
            prefix = Path(saver.save(session, str(directory / "model.ckpt")))
    return BatchNormCheckpoint(prefix, input_shape, build)


def write_frozen_without_moving_statistics(path: Path) -> Path:
    """A frozen .pb of the slim-style model frozen down to its output only: the training-mode
    FusedBatchNorm never read the moving statistics, so this freeze dropped them."""
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        slim_style_builder()(True)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), [OUTPUT])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frozen.SerializeToString())
    return path


def write_keras_training_call(path: Path, keras_module: str) -> Callable[[np.ndarray], np.ndarray]:
    """A functional Keras model calling BatchNormalization(training=True), trained a few steps and
    saved to ``path`` (.h5 for tf_keras, .keras for Keras 3).

    Returns:
        The saved model's outputs with every layer in inference mode (training=False).
    """
    import importlib

    keras = importlib.import_module(keras_module)
    inputs = keras.Input(shape=(3,), name="features")
    hidden = keras.layers.BatchNormalization(name="bn")(inputs, training=True)
    outputs = keras.layers.Dense(2, name="head")(keras.layers.ReLU()(hidden))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(5)
    model.fit(
        rng.normal(2.0, 3.0, size=(32, 3)).astype(np.float32),
        np.zeros((32, 2), np.float32),
        batch_size=8,
        epochs=2,
        verbose=0,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    bn, head = model.get_layer("bn"), model.get_layer("head")
    mean, variance = np.asarray(bn.moving_mean), np.asarray(bn.moving_variance)
    gamma, beta, epsilon = np.asarray(bn.gamma), np.asarray(bn.beta), bn.epsilon
    kernel, bias = (np.asarray(w) for w in head.get_weights())

    def inference(features: np.ndarray) -> np.ndarray:
        normalized = (features - mean) / np.sqrt(variance + epsilon) * gamma + beta
        return np.maximum(normalized, 0.0) @ kernel + bias

    return inference
