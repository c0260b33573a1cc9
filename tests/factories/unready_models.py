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


MIX_WEIGHTS = np.linspace(-1, 1, 8, dtype=np.float32).reshape(4, 2)


def write_frozen(path: Path, build) -> Path:  # type: ignore[no-untyped-def]
    """Freeze what ``build()`` makes in a fresh graph (its output op named ``y``)."""
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        build()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            return _freeze(graph, session, ["y"], path)


def dense_input():  # type: ignore[no-untyped-def]
    """x [batch, 4] @ W: the hidden values the attacks below mix, drop or perturb."""
    tf = tensorflow()
    v1 = tf.compat.v1
    x = v1.placeholder(tf.float32, [None, 4], name="x")
    return tf.matmul(x, v1.get_variable("w", initializer=MIX_WEIGHTS))


def flattened_batch_mix() -> None:
    """Centred over the batch, then flattened: no output row belongs to one sample."""
    tf = tensorflow()
    hidden = dense_input()
    tf.reshape(hidden - tf.reduce_mean(hidden, axis=0), [-1], name="y")


def first_sample_only() -> None:
    """Serves the first sample's outputs whatever the batch."""
    tf = tensorflow()
    tf.identity(dense_input()[:1], name="y")


def tiny_noise() -> None:
    """Noise far below any tolerance, added on every request."""
    tf = tensorflow()
    hidden = dense_input()
    tf.identity(hidden + 1e-7 * tf.random.normal(tf.shape(hidden)), name="y")


def fixed_seed_dropout() -> None:
    """A dropout mask drawn by a stateless op with a constant seed: the same mask every time."""
    tf = tensorflow()
    hidden = dense_input()
    keep = tf.cast(tf.random.stateless_uniform([1, 2], seed=[1, 2]) > 0.5, tf.float32)
    tf.identity(hidden * keep * 2.0, name="y")


def dropout_and_batch_mix() -> None:
    """Stochastic on purpose, and mixing the batch too."""
    tf = tensorflow()
    hidden = tf.nn.dropout(dense_input(), rate=0.5)
    tf.identity(hidden - tf.reduce_mean(hidden, axis=0), name="y")


def centred_over_the_batch() -> None:
    """Deterministic, but each output row depends on the others."""
    tf = tensorflow()
    hidden = dense_input()
    tf.identity(hidden - tf.reduce_mean(hidden, axis=0), name="y")


def embedding_centred_over_the_batch() -> None:
    """Integer ids: identical id rows would hide this batch mix."""
    tf = tensorflow()
    v1 = tf.compat.v1
    ids = v1.placeholder(tf.int32, [None], name="ids")
    table = v1.get_variable("table", initializer=np.arange(10, dtype=np.float32).reshape(5, 2))
    embedded = tf.gather(table, ids)
    tf.identity(embedded - tf.reduce_mean(embedded, axis=0, keepdims=True), name="y")


def batchnorm_borrowing_another_layers_statistics(directory: Path) -> Path:
    """A real batch norm ``bn`` with moving statistics, and a hand-written batch-statistics norm
    under ``head/bn`` without any: scope matching must not give ``head/bn`` the statistics of
    ``bn``. Saved as a checkpoint."""
    tf = tensorflow()
    v1 = tf.compat.v1
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 2], name="x")
        with v1.variable_scope("bn"):
            moving_mean = v1.get_variable("moving_mean", initializer=np.full(2, 5.0, np.float32), trainable=False)
            v1.get_variable("moving_variance", initializer=np.full(2, 9.0, np.float32), trainable=False)
            mean, variance = tf.nn.moments(x, axes=[0])
            v1.assign_sub(moving_mean, (moving_mean - mean) * 0.01)
            hidden = tf.nn.batch_normalization(x, mean, variance, None, None, 1e-3)
        hidden = tf.matmul(tf.concat([hidden, hidden], 1), v1.get_variable("w", initializer=MIX_WEIGHTS))
        with tf.name_scope("head/bn"):
            mean, variance = tf.nn.moments(hidden, axes=[0])
            hidden = tf.nn.batch_normalization(hidden, mean, variance, None, None, 1e-3)
        tf.identity(hidden, name="y")
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            return Path(saver.save(session, str(directory / "model.ckpt")))


def batchnorm_behind_a_training_flag() -> None:
    """tf.compat.v1.layers.batch_normalization(training=is_training), is_training defaulting to
    True: the batch statistics live in a cond branch (an If op, or Switch/Merge once lowered)."""
    tf = tensorflow()
    v1 = tf.compat.v1
    from tf_keras.src.legacy_tf_layers import normalization

    x = v1.placeholder(tf.float32, [None, 4], name="x")
    training = v1.placeholder_with_default(True, [], name="is_training")
    tf.identity(normalization.batch_normalization(dense_input_of(x), training=training, name="bn"), name="y")


def dense_input_of(x):  # type: ignore[no-untyped-def]
    tf = tensorflow()
    return tf.matmul(x, tf.compat.v1.get_variable("w", initializer=MIX_WEIGHTS))


def random_behind_a_data_condition() -> None:
    """Noise added only when a request's values are large: generic goldens never take that branch."""
    tf = tensorflow()
    hidden = dense_input()
    tf.identity(
        tf.cond(
            tf.reduce_max(hidden) > 1000.0, lambda: hidden + tf.random.uniform(tf.shape(hidden)), lambda: hidden * 2.0
        ),
        name="y",
    )


def mean_over_runtime_axes() -> None:
    """Centred over the batch with axes computed at run time: no op type gives it away."""
    tf = tensorflow()
    hidden = dense_input()
    tf.identity(hidden - tf.reduce_mean(hidden, axis=tf.range(0, 1)), name="y")


def dropout_and_runtime_axes_mix() -> None:
    tf = tensorflow()
    hidden = tf.nn.dropout(dense_input(), rate=0.5)
    tf.identity(hidden - tf.reduce_mean(hidden, axis=tf.range(0, 1)), name="y")


def stateless_random_crop() -> None:
    """A fixed-seed augmentation crop (stateless bounding-box sampling) left in the graph."""
    tf = tensorflow()
    v1 = tf.compat.v1
    images = v1.placeholder(tf.float32, [None, 8, 8, 1], name="x")
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        [8, 8, 1], [[[0.0, 0.0, 1.0, 1.0]]], seed=[1, 2], min_object_covered=0.1
    )
    crop = tf.slice(images, tf.concat([[0], begin], 0), tf.concat([[-1], size], 0))
    tf.identity(tf.reduce_mean(crop, axis=[1, 2, 3]) * v1.get_variable("s", initializer=np.float32(2.0)), name="y")


def deterministic_function_call() -> None:
    """A deterministic tf.function called from the graph (a StatefulPartitionedCall, no random op)."""
    tf = tensorflow()

    @tf.function
    def scale(h):  # type: ignore[no-untyped-def]
        return h * 3.0

    tf.identity(scale(dense_input()), name="y")
