"""TF1 checkpoints as they really arrive: state files naming another machine's paths, empty
basenames, meta graphs carrying attrs TensorFlow no longer knows, train + eval copies of a model
sharing variables, sparse (IndexedSlices) optimizer updates on resource variables, and
``--builder`` functions honouring (or breaking) the builder contract.

Every writer builds with real tf.compat.v1 in its own tf.Graph and returns what a user would hand
to tfpack plus the weights to compute the expected outputs with numpy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from packager.tf_runtime import tensorflow

FEATURES = 3
HIDDEN = 4


@dataclass(frozen=True)
class SmallModel:
    """A trained dense model's checkpoint and weights: y = tanh(x @ w + b) @ head."""

    prefix: str  # as Saver.save returned it ("DIR/" for an empty basename)
    directory: Path
    weights: dict[str, np.ndarray]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x @ self.weights["dense/w"] + self.weights["dense/b"]) @ self.weights["dense/head"]


def build_small_model() -> dict[str, object]:
    """The inference graph of :class:`SmallModel` in the default graph; returns {"y": tensor}
    (a --builder FUNC honouring the contract's dict form)."""
    tf = tensorflow()
    v1 = tf.compat.v1
    x = v1.placeholder(tf.float32, [None, FEATURES], name="x")
    with v1.variable_scope("dense"):
        w = v1.get_variable("w", [FEATURES, HIDDEN])
        b = v1.get_variable("b", [HIDDEN])
        head = v1.get_variable("head", [HIDDEN, 1])
    return {"y": tf.identity(tf.matmul(tf.tanh(tf.matmul(x, w) + b), head), name="y")}


def write_small_model(directory: Path, basename: str = "model.ckpt", steps: int = 2) -> SmallModel:
    """Train :func:`build_small_model` a few steps (label placeholder, loss, SGD) and save it with
    its meta graph as ``directory/basename`` (``basename=""`` gives DIR/.index, DIR/.meta)."""
    tf = tensorflow()
    v1 = tf.compat.v1
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(3)
        y = build_small_model()["y"]
        target = v1.placeholder(tf.float32, [None, 1], name="target")
        loss = tf.reduce_mean(tf.square(y - target), name="loss")
        train = v1.train.GradientDescentOptimizer(0.1).minimize(loss)
        saver = v1.train.Saver()
        rng = np.random.default_rng(5)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            for _ in range(steps):
                x = rng.normal(size=(8, FEATURES)).astype(np.float32)
                session.run(train, {"x:0": x, "target:0": x.sum(axis=1, keepdims=True)})
            prefix = saver.save(session, os.path.join(directory, basename))
            names = ["dense/w", "dense/b", "dense/head"]
            by_name = {v.op.name: v for v in v1.global_variables()}
            weights = dict(zip(names, session.run([by_name[n] for n in names])))
    return SmallModel(prefix, directory, weights)


def write_state_file(directory: Path, model_checkpoint_path: str) -> Path:
    """Write ``directory/checkpoint`` the way a training job elsewhere left it."""
    state = directory / "checkpoint"
    state.write_text(
        f'model_checkpoint_path: "{model_checkpoint_path}"\nall_model_checkpoint_paths: "{model_checkpoint_path}"\n'
    )
    return state


# ---- meta graphs as old TensorFlow versions leave them -------------------------------------

STALE_ATTR = "use_legacy_kernel"  # an attr the op's current definition does not have


def age_graph_def(graph_def) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """Damage ``graph_def`` in place the way old TensorFlow versions leave graphs: every MatMul
    and Tanh gets an ``_output_shapes`` that disagrees with its real shape (and the placeholder
    a correct one, which must survive), and every MatMul an attr its op no longer has.

    Returns:
        {"stale_shapes": op names, "unknown_attrs": op names} of what was damaged.
    """
    tensorflow()
    stale, unknown = [], []
    for node in graph_def.node:
        if node.op in ("MatMul", "Tanh"):
            node.attr["_output_shapes"].list.ClearField("shape")  # Saver's meta graphs carry true ones
            shape = node.attr["_output_shapes"].list.shape.add()
            shape.dim.add(size=-1)
            shape.dim.add(size=7)  # no op of the model has 7 columns
            stale.append(node.name)
        if node.op == "MatMul":
            node.attr[STALE_ATTR].b = True
            unknown.append(node.name)
        if node.op == "Placeholder" and node.name == "x":
            node.attr["_output_shapes"].list.ClearField("shape")
            shape = node.attr["_output_shapes"].list.shape.add()
            shape.dim.add(size=-1)
            shape.dim.add(size=FEATURES)
    return {"stale_shapes": stale, "unknown_attrs": unknown}


def age_meta_graph(meta_path: Path) -> dict[str, list[str]]:
    """Rewrite the .meta file at ``meta_path`` with :func:`age_graph_def`'s damage."""
    tensorflow()
    from tensorflow.core.protobuf import meta_graph_pb2

    meta_graph = meta_graph_pb2.MetaGraphDef.FromString(meta_path.read_bytes())
    damage = age_graph_def(meta_graph.graph_def)
    meta_path.write_bytes(meta_graph.SerializeToString())
    return damage


def write_aged_frozen_graph(model: SmallModel, path: Path) -> dict[str, list[str]]:
    """Freeze ``model`` into a GraphDef at ``path`` and age it like :func:`age_graph_def`."""
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        build_small_model()
        with v1.Session(graph=graph) as session:
            v1.train.Saver().restore(session, model.prefix)
            frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), ["y"])
    damage = age_graph_def(frozen)
    path.write_bytes(frozen.SerializeToString())
    return damage


# ---- a train copy and an eval copy of one model -------------------------------------------


@dataclass(frozen=True)
class TwoCopies:
    """A graph with the model built twice over shared variables: ``model/`` (training, fed by its
    own placeholder, with loss and Adam) and ``model_1/`` (evaluation)."""

    prefix: Path
    weights: dict[str, np.ndarray]

    def predict(self, x: np.ndarray) -> np.ndarray:
        hidden = np.maximum(x @ self.weights["model/w"] + self.weights["model/b"], 0)
        logits = hidden @ self.weights["model/out"]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


def _two_copies_model(x):  # type: ignore[no-untyped-def]
    tf = tensorflow()
    v1 = tf.compat.v1
    w = v1.get_variable("w", [FEATURES, HIDDEN])
    b = v1.get_variable("b", [HIDDEN], initializer=v1.constant_initializer(0.1))
    out = v1.get_variable("out", [HIDDEN, 2])
    logits = tf.matmul(tf.nn.relu(tf.matmul(x, w) + b), out, name="logits")
    return logits, tf.nn.softmax(logits, name="probs")


def write_two_copies(directory: Path, steps: int = 3) -> TwoCopies:
    """Train the ``model/`` copy (labels, cross-entropy, Adam) while ``model_1/`` — the eval copy,
    built with variable_scope("model", reuse=True) — reads the same variables; save with Saver."""
    tf = tensorflow()
    v1 = tf.compat.v1
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(8)
        train_x = v1.placeholder(tf.float32, [None, FEATURES], name="train_x")
        labels = v1.placeholder(tf.int64, [None], name="labels")
        eval_x = v1.placeholder(tf.float32, [None, FEATURES], name="eval_x")
        with v1.variable_scope("model"):
            train_logits, _ = _two_copies_model(train_x)
        with v1.variable_scope("model", reuse=True):
            _two_copies_model(eval_x)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=train_logits))
        train = v1.train.AdamOptimizer(0.05).minimize(loss)
        saver = v1.train.Saver()
        rng = np.random.default_rng(8)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            for _ in range(steps):
                x = rng.normal(size=(8, FEATURES)).astype(np.float32)
                session.run(train, {train_x: x, labels: (x.sum(axis=1) > 0).astype(np.int64)})
            names = ["model/w", "model/b", "model/out"]
            by_name = {v.op.name: v for v in v1.global_variables()}
            weights = dict(zip(names, session.run([by_name[n] for n in names])))
            prefix = Path(saver.save(session, str(directory / "model.ckpt")))
    return TwoCopies(prefix, weights)


def two_copies_inference_reference(model: TwoCopies, x: np.ndarray) -> np.ndarray:
    """The model rebuilt as inference only (one copy, no training ops), restored from the
    checkpoint and run with TensorFlow: what either copy must serve."""
    tf = tensorflow()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        placeholder = v1.placeholder(tf.float32, [None, FEATURES], name="x")
        with v1.variable_scope("model"):
            _, probs = _two_copies_model(placeholder)
        with v1.Session(graph=graph) as session:
            v1.train.Saver().restore(session, str(model.prefix))
            return session.run(probs, {placeholder: x})


# ---- sparse updates of resource variables -------------------------------------------------

VOCABULARY = 6
EMBEDDING = 3


@dataclass(frozen=True)
class SparseModel:
    """An embedding model trained with sparse (IndexedSlices) updates of resource variables."""

    prefix: Path
    weights: dict[str, np.ndarray]

    def predict(self, ids: np.ndarray) -> np.ndarray:
        pooled = self.weights["embedding"][ids].mean(axis=1)
        return pooled @ self.weights["head"]


def write_sparse_embedding(directory: Path, optimizer: str, steps: int = 3) -> SparseModel:
    """An Estimator-era model: int32 ids [batch, 2] -> embedding_lookup on a resource variable ->
    mean -> dense head; trained with ``optimizer`` ("adam" or "sgd"), whose gradient for the
    table is IndexedSlices (ResourceSparseApplyAdam / ResourceScatterAdd in the graph)."""
    tf = tensorflow()
    v1 = tf.compat.v1
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        rng = np.random.default_rng(12)
        ids = v1.placeholder(tf.int32, [None, 2], name="ids")
        target = v1.placeholder(tf.float32, [None, 1], name="target")
        table = v1.get_variable(
            "embedding", initializer=rng.normal(size=(VOCABULARY, EMBEDDING)).astype(np.float32), use_resource=True
        )
        head = v1.get_variable(
            "head", initializer=rng.normal(size=(EMBEDDING, 1)).astype(np.float32), use_resource=True
        )
        pooled = tf.reduce_mean(tf.nn.embedding_lookup(table, ids), axis=1)
        score = tf.matmul(pooled, head, name="score")
        loss = tf.reduce_mean(tf.square(score - target))
        global_step = v1.train.get_or_create_global_step()
        chosen = v1.train.AdamOptimizer(0.1) if optimizer == "adam" else v1.train.GradientDescentOptimizer(0.1)
        train = chosen.minimize(loss, global_step=global_step)
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            for _ in range(steps):
                batch = rng.integers(0, VOCABULARY, size=(8, 2)).astype(np.int32)
                session.run(train, {ids: batch, target: batch.sum(axis=1, keepdims=True).astype(np.float32)})
            weights = dict(zip(["embedding", "head"], session.run([table, head])))
            prefix = Path(saver.save(session, str(directory / "model.ckpt"), global_step=global_step))
    return SparseModel(prefix, weights)


# ---- --builder functions: the contract, kept and broken --------------------------------------


def build_inputs_and_outputs() -> tuple[dict[str, object], dict[str, object]]:
    """The tuple form: ({"features": x}, {"score": y}) — keys chosen by the builder."""
    outputs = build_small_model()
    graph = tensorflow().compat.v1.get_default_graph()
    return {"features": graph.get_tensor_by_name("x:0")}, {"score": outputs["y"]}


def build_returning_none() -> None:
    """The pre-contract form: builds the graph, returns nothing (discovery picks the signature)."""
    build_small_model()


def build_returning_a_list() -> list[object]:
    """Breaks the contract: a list of tensors is neither a dict nor an (inputs, outputs) pair."""
    return list(build_small_model().values())


def build_returning_names() -> dict[str, str]:
    """Breaks the contract: tensor names, not tensors."""
    build_small_model()
    return {"y": "y:0"}


def build_raising() -> None:
    """A builder whose own code fails (a typo in the user's model code)."""
    build_small_model()
    raise KeyError("dense/kernel_typo")
