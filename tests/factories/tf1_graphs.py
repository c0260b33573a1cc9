"""TF1 training graphs as training code leaves them: checkpoints with a Saver, graph + checkpoint
pairs, BERT-like frozen graphs with a label input, dropout/is_training controls, old BatchNorm.

All built with tf.compat.v1 in their own tf.Graph; each writer returns what a user would hand to
tfpack plus a numpy/TensorFlow way to compute the expected outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from packager.tf_runtime import tensorflow

HIDDEN = 5


@dataclass(frozen=True)
class Regressor:
    """A trained TF1 regressor's files and its weights (to compute the expected outputs)."""

    prefix: Path  # checkpoint prefix
    directory: Path  # holds the `checkpoint` state file
    graph_pbtxt: Path  # the GraphDef without variables' values (freeze_graph's input)
    kernel: np.ndarray
    bias: np.ndarray
    head: np.ndarray

    def predict(self, features: np.ndarray) -> np.ndarray:
        hidden = np.tanh(features @ self.kernel + self.bias)
        return hidden @ self.head


def build_regressor_graph() -> None:
    """The inference graph of the regressor, in the default graph (also a --builder FUNC)."""
    tf = tensorflow()
    v1 = tf.compat.v1
    features = v1.placeholder(tf.float32, [None, 3], name="features")
    with v1.variable_scope("dense"):
        kernel = v1.get_variable("kernel", [3, HIDDEN])
        bias = v1.get_variable("bias", [HIDDEN])
        head = v1.get_variable("head", [HIDDEN, 1])
    hidden = tf.tanh(tf.matmul(features, kernel) + bias)
    tf.identity(tf.matmul(hidden, head), name="prediction")


def write_trained_regressor(directory: Path, steps: int = 3) -> Regressor:
    """Train the regressor a few steps with a label placeholder, loss, optimizer and Saver; save a
    checkpoint (with its .meta graph) at global step ``steps`` and the bare GraphDef as text."""
    tf = tensorflow()
    v1 = tf.compat.v1
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(11)
        build_regressor_graph()
        prediction = graph.get_tensor_by_name("prediction:0")
        target = v1.placeholder(tf.float32, [None, 1], name="target")
        loss = tf.reduce_mean(tf.square(prediction - target), name="loss")
        global_step = v1.train.get_or_create_global_step()
        train = v1.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=global_step)
        v1.summary.scalar("loss", loss)
        saver = v1.train.Saver()
        rng = np.random.default_rng(1)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            for _ in range(steps):
                x = rng.normal(size=(8, 3)).astype(np.float32)
                session.run(train, {"features:0": x, "target:0": x.sum(axis=1, keepdims=True)})
            prefix = Path(saver.save(session, str(directory / "model.ckpt"), global_step=global_step))
            by_name = {v.op.name: v for v in v1.global_variables()}
            kernel, bias, head = session.run([by_name["dense/kernel"], by_name["dense/bias"], by_name["dense/head"]])
        tf.io.write_graph(graph.as_graph_def(), str(directory), "graph.pbtxt", as_text=True)
    return Regressor(prefix, directory, directory / "graph.pbtxt", kernel, bias, head)


def write_bert_like_frozen(path: Path) -> Path:
    """A frozen BERT-like classifier: int32 input_ids, input_mask, segment_ids -> probabilities;
    an int32 label placeholder feeds only the loss (named `xent`, not `loss`, on purpose)."""
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        rng = np.random.default_rng(2)
        input_ids = v1.placeholder(tf.int32, [None, 8], name="input_ids")
        input_mask = v1.placeholder(tf.int32, [None, 8], name="input_mask")
        segment_ids = v1.placeholder(tf.int32, [None, 8], name="segment_ids")
        labels = v1.placeholder(tf.int32, [None], name="label_ids")
        with v1.variable_scope("bert"):
            word = v1.get_variable("word_embeddings", initializer=rng.normal(size=(30, 6)).astype(np.float32))
            token_type = v1.get_variable(
                "token_type_embeddings", initializer=rng.normal(size=(2, 6)).astype(np.float32)
            )
            embedded = tf.gather(word, input_ids) + tf.gather(token_type, segment_ids)
            mask = tf.cast(input_mask, tf.float32)[:, :, None]
            pooled = tf.reduce_sum(embedded * mask, axis=1) / (tf.reduce_sum(mask, axis=1) + 1e-6)
        with v1.variable_scope("classifier"):
            weights = v1.get_variable("output_weights", initializer=rng.normal(size=(6, 2)).astype(np.float32))
            logits = tf.matmul(pooled, weights, name="logits")
            tf.nn.softmax(logits, name="probabilities")
        tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits), name="xent")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            frozen = v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), ["classifier/probabilities", "xent"]
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frozen.SerializeToString())
    return path


def write_dropout_frozen(path: Path) -> Path:
    """A frozen graph with dropout steered by a scalar `keep_prob` placeholder (no default) and
    an `is_training` PlaceholderWithDefault(False) choosing between two branches."""
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        keep_prob = v1.placeholder(tf.float32, [], name="keep_prob")
        is_training = v1.placeholder_with_default(False, [], name="is_training")
        weights = v1.get_variable("w", initializer=np.arange(8, dtype=np.float32).reshape(4, 2) / 8)
        hidden = tf.nn.dropout(tf.matmul(x, weights), rate=1 - keep_prob)
        scaled = tf.where(is_training, hidden * 100.0, hidden)
        tf.identity(scaled, name="y")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), ["y"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frozen.SerializeToString())
    return path


def dropout_reference(x: np.ndarray) -> np.ndarray:
    return x @ (np.arange(8, dtype=np.float32).reshape(4, 2) / 8)


def write_old_batchnorm_frozen(path: Path) -> Path:
    """A frozen graph the way TF1 froze BatchNorm with an is_training cond over reference
    variables: RefSwitch and AssignSub ops reading constants of ref dtype, which TensorFlow 2
    refuses to import as they are."""
    tf = tensorflow()
    v1 = tf.compat.v1
    v1.disable_control_flow_v2()
    try:
        graph = tf.Graph()
        with graph.as_default():
            x = v1.placeholder(tf.float32, [None, 3], name="x")
            is_training = v1.placeholder_with_default(False, [], name="is_training")
            moving_mean = v1.Variable(np.array([0.5, -0.5, 1.0], np.float32), name="moving_mean", use_resource=False)

            def update():
                batch_mean = tf.reduce_mean(x, axis=0)
                return v1.assign_sub(moving_mean, 0.1 * (moving_mean - batch_mean))

            mean = tf.cond(is_training, update, lambda: tf.identity(moving_mean))
            tf.identity(x - mean, name="normalized")
            with v1.Session(graph=graph) as session:
                session.run(v1.global_variables_initializer())
                frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), ["normalized"])
    finally:
        v1.enable_control_flow_v2()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frozen.SerializeToString())
    return path


@dataclass(frozen=True)
class DatasetFedModel:
    """A dataset-fed, EMA-averaged TF1 training run: its checkpoint and both sets of weights."""

    prefix: Path
    raw: dict[str, np.ndarray]  # the variables' final values
    averaged: dict[str, np.ndarray]  # their ExponentialMovingAverage shadows

    @staticmethod
    def predict(weights: dict[str, np.ndarray], images: np.ndarray) -> np.ndarray:
        logits = images.reshape(len(images), -1) @ weights["net/w"] + weights["net/b"]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


def write_dataset_fed_ema(directory: Path, steps: int = 5) -> DatasetFedModel:
    """Train a softmax classifier fed by a tf.data one-shot iterator (images [batch, 2, 3] float,
    labels int64), with EMA of its weights; save a checkpoint with its meta graph. There is no
    placeholder anywhere in the graph."""
    tf = tensorflow()
    v1 = tf.compat.v1
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        rng = np.random.default_rng(4)
        images = rng.normal(size=(64, 2, 3)).astype(np.float32)
        labels = rng.integers(0, 4, size=64).astype(np.int64)
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(16, drop_remainder=True)
        batch_images, batch_labels = v1.data.make_one_shot_iterator(dataset).get_next()
        with v1.variable_scope("net"):
            w = v1.get_variable("w", initializer=rng.normal(size=(6, 4)).astype(np.float32))
            b = v1.get_variable("b", initializer=np.zeros(4, np.float32))
        logits = tf.matmul(tf.reshape(batch_images, [-1, 6]), w) + b
        tf.nn.softmax(logits, name="probs")
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=batch_labels, logits=logits))
        step = v1.train.GradientDescentOptimizer(0.5).minimize(loss)
        ema = v1.train.ExponentialMovingAverage(decay=0.5)
        with tf.control_dependencies([step]):
            train = ema.apply([w, b])
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            for _ in range(steps):
                session.run(train)
            raw = dict(zip(["net/w", "net/b"], session.run([w, b])))
            averaged = dict(zip(["net/w", "net/b"], session.run([ema.average(w), ema.average(b)])))
            prefix = Path(saver.save(session, str(directory / "model.ckpt")))
    return DatasetFedModel(prefix, raw, averaged)


@dataclass(frozen=True)
class TwoTowerModel:
    """The classic multi-GPU recipe with two towers: its checkpoint, frozen graph and weights."""

    prefix: Path
    frozen: Path
    kernel: np.ndarray
    bias: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        """What each tower computes: map_fn(2x + 1) -> dense -> softmax."""
        logits = (2.0 * x + 1.0) @ self.kernel + self.bias
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


def write_two_tower(directory: Path, towers: int = 2, scope: str = "Card") -> TwoTowerModel:
    """Build towers under name scopes Card_0, Card_1 on /gpu:0, /gpu:1 sharing variables through
    reuse_variables, each with its own placeholder, a tf.map_fn preprocessing step and a softmax;
    train one step with a per-tower loss, save a checkpoint (with meta graph) and a frozen .pb."""
    tf = tensorflow()
    v1 = tf.compat.v1
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        rng = np.random.default_rng(6)
        losses = []
        with v1.variable_scope(v1.get_variable_scope()):
            for index in range(towers):
                with tf.device(f"/gpu:{index}"), tf.name_scope(f"{scope}_{index}"):
                    x = v1.placeholder(tf.float32, [None, 4], name="x")
                    labels = v1.placeholder(tf.int64, [None], name="labels")
                    prepared = tf.map_fn(lambda row: row * 2.0 + 1.0, x)
                    kernel = v1.get_variable("kernel", initializer=rng.normal(size=(4, 3)).astype(np.float32))
                    bias = v1.get_variable("bias", initializer=rng.normal(size=(3,)).astype(np.float32))
                    logits = tf.matmul(prepared, kernel) + bias
                    tf.nn.softmax(logits, name="probs")
                    losses.append(
                        tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
                    )
                    v1.get_variable_scope().reuse_variables()
        total = tf.add_n(losses, name="total_loss")
        train = v1.train.GradientDescentOptimizer(0.1).minimize(total, colocate_gradients_with_ops=True)
        saver = v1.train.Saver()
        config = v1.ConfigProto(allow_soft_placement=True)
        with v1.Session(graph=graph, config=config) as session:
            session.run(v1.global_variables_initializer())
            feed = {}
            for index in range(towers):
                feed[f"{scope}_{index}/x:0"] = rng.normal(size=(4, 4)).astype(np.float32)
                feed[f"{scope}_{index}/labels:0"] = rng.integers(0, 3, size=4)
            session.run(train, feed)
            by_name = {v.op.name: v for v in v1.global_variables()}
            kernel_value, bias_value = session.run([by_name["kernel"], by_name["bias"]])
            prefix = Path(saver.save(session, str(directory / "towers.ckpt")))
            frozen = v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), [f"{scope}_{i}/probs" for i in range(towers)]
            )
    frozen_path = directory / "towers_frozen.pb"
    frozen_path.write_bytes(frozen.SerializeToString())
    return TwoTowerModel(prefix, frozen_path, kernel_value, bias_value)
