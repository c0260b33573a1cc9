"""Models that convert to *something* but must not be served as they are: each one of the ways a
training script leaves a graph that is not an inference model (issue 9's findings).

Every writer builds the model the way the seed posts' training code does (tf.compat.v1 graphs,
Keras layers) and returns what a user would hand to tfpack; where a fix exists, a way to compute
what the fixed model must return.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from packager.tf_runtime import tensorflow


def _freeze(graph, session, outputs: list[str], path: Path) -> Path:  # type: ignore[no-untyped-def]
    tf = tensorflow()
    frozen = tf.compat.v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), outputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frozen.SerializeToString())
    return path


AUGMENT_WEIGHTS = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2 * 3 * 4 // 2, 2)


def write_random_augmentation_frozen(path: Path) -> Path:
    """Images [batch, 2, 3, 2] through random flip and random brightness (left in the serving
    graph, as a training input pipeline written inline leaves them), then a dense layer."""
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, 2, 3, 2], name="images")
        flipped = tf.map_fn(tf.image.random_flip_left_right, images)
        brightened = tf.image.random_brightness(flipped, max_delta=0.5)
        weights = v1.get_variable("w", initializer=np.linspace(-1, 1, 24, dtype=np.float32).reshape(12, 2))
        tf.identity(tf.matmul(tf.reshape(brightened, [-1, 12]), weights), name="scores")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            return _freeze(graph, session, ["scores"], path)


TRAINING_WEIGHTS = np.arange(8, dtype=np.float32).reshape(4, 2) / 8


def write_training_default_true_frozen(path: Path) -> Path:
    """Dropout behind a bool ``training`` PlaceholderWithDefault whose default is True."""
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        training = v1.placeholder_with_default(True, [], name="training")
        weights = v1.get_variable("w", initializer=TRAINING_WEIGHTS)
        hidden = tf.matmul(x, weights)
        dropped = tf.cond(training, lambda: tf.nn.dropout(hidden, rate=0.5), lambda: hidden)
        tf.identity(dropped, name="y")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            return _freeze(graph, session, ["y"], path)


def training_default_true_reference(x: np.ndarray) -> np.ndarray:
    """The model with training=false: no dropout."""
    return x @ TRAINING_WEIGHTS


SQRT_WEIGHTS = np.linspace(0.5, 1.5, 6, dtype=np.float32).reshape(3, 2)


def write_sqrt_frozen(path: Path) -> Path:
    """y = sqrt(x) @ W: undefined for the negative values generic inputs contain."""
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        weights = v1.get_variable("w", initializer=SQRT_WEIGHTS)
        tf.identity(tf.matmul(tf.sqrt(x), weights), name="y")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            return _freeze(graph, session, ["y"], path)


def write_labelfree_loss_checkpoint(directory: Path) -> Path:
    """An autoencoder trained on a loss with no labels (its only sink is the scalar loss
    ``Mean_1``), with a Momentum optimizer; saved as a checkpoint with its meta graph."""
    tf = tensorflow()
    v1 = tf.compat.v1
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(3)
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        encoder = v1.get_variable("encoder", [4, 2])
        decoder = v1.get_variable("decoder", [2, 4])
        code = tf.tanh(tf.matmul(x, encoder))
        reconstruction = tf.matmul(code, decoder)
        tf.reduce_mean(tf.square(x))  # Mean: a statistic logged once, no loss
        loss = tf.reduce_mean(tf.square(reconstruction - x))  # Mean_1
        train = v1.train.MomentumOptimizer(0.1, 0.9).minimize(loss)
        saver = v1.train.Saver()
        rng = np.random.default_rng(2)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            for _ in range(3):
                session.run(train, {x: rng.normal(size=(8, 4)).astype(np.float32)})
            return Path(saver.save(session, str(directory / "autoencoder.ckpt")))
