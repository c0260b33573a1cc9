"""TensorFlow Serving's half_plus_two test model (y = 0.5 * x + offset), built here.

Two forms, mirroring tensorflow_serving/servables/tensorflow/testdata:

* TF1: a graph built with ``tf.compat.v1`` and written by ``SavedModelBuilder``. Signatures
  ``serving_default`` (predict, x -> y), ``classify_x_to_y`` and ``regress_x_to_y`` /
  ``regress_x_to_y2`` (serialized tf.Example -> y / y2) and ``regress_x2_to_y3`` (x2 -> y3), with
  the same tensor names as TF Serving's model (``x:0``, ``y:0``, ``tf_example:0``, ...).
* TF2: a ``tf.Module`` written by ``tf.saved_model.save``, whose signatures all use the predict
  method name, as TF2 exports do.

Both write ``MODEL_BASE_PATH/VERSION`` (the directory given to ``--model_base_path`` plus a numeric
version), the layout a model server polls.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

_SLOPE = 0.5
# y2 and y3 use offset + 1, as TF Serving's model does (b = 2, c = 3).
_SECOND_OFFSET_DELTA = 1.0


def write_half_plus_two_tf1(base_path: Path, version: int = 1, offset: float = 2.0) -> Path:
    """Write a TF1-style half_plus_two SavedModel to ``base_path/version``.

    Args:
        base_path: The model base path (what ``--model_base_path`` points at).
        version: The numeric version directory to write.
        offset: ``b`` in ``y = 0.5 * x + b``; y2 and y3 use ``b + 1``.

    Returns:
        The version directory written.
    """
    version_dir = Path(base_path) / str(version)
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        slope = v1.Variable(_SLOPE, name="a")
        offset_var = v1.Variable(offset, name="b")
        second_offset = v1.Variable(offset + _SECOND_OFFSET_DELTA, name="c")
        serialized_examples = v1.placeholder(tf.string, name="tf_example")
        features = tf.io.parse_example(
            serialized_examples,
            {
                "x": tf.io.FixedLenFeature([1], tf.float32),
                "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            },
        )
        # parse_example of an unknown-rank input has unknown rank; TF Serving's model says [-1, 1].
        for feature in features.values():
            feature.set_shape([None, 1])
        x = tf.identity(features["x"], name="x")
        x2 = tf.identity(features["x2"], name="x2")
        y = tf.add(tf.multiply(slope, x), offset_var, name="y")
        y2 = tf.add(tf.multiply(slope, x), second_offset, name="y2")
        y3 = tf.add(tf.multiply(slope, x2), second_offset, name="y3")

        info = v1.saved_model.utils.build_tensor_info
        signatures = {
            "serving_default": v1.saved_model.signature_def_utils.predict_signature_def(
                inputs={"x": x}, outputs={"y": y}
            ),
            "classify_x_to_y": v1.saved_model.signature_def_utils.build_signature_def(
                inputs={"inputs": info(serialized_examples)},
                outputs={"scores": info(y)},
                method_name="tensorflow/serving/classify",
            ),
        }
        for name, inputs, outputs in (
            ("regress_x_to_y", serialized_examples, y),
            ("regress_x_to_y2", serialized_examples, y2),
            ("regress_x2_to_y3", x2, y3),
        ):
            signatures[name] = v1.saved_model.signature_def_utils.build_signature_def(
                inputs={"inputs": info(inputs)},
                outputs={"outputs": info(outputs)},
                method_name="tensorflow/serving/regress",
            )

        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(version_dir))
            builder.add_meta_graph_and_variables(session, [tf.saved_model.SERVING], signature_def_map=signatures)
            builder.save()
    return version_dir


class _HalfPlusTwo(tf.Module):
    def __init__(self, offset: float) -> None:
        super().__init__()
        self.slope = tf.Variable(_SLOPE)
        self.offset = tf.Variable(offset)
        self.second_offset = tf.Variable(offset + _SECOND_OFFSET_DELTA)

    def _parse(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return tf.io.parse_example(
            serialized,
            {
                "x": tf.io.FixedLenFeature([1], tf.float32),
                "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            },
        )

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serving_default(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self.slope * x + self.offset}

    @tf.function(input_signature=[tf.TensorSpec(None, tf.string, name="inputs")])
    def classify_x_to_y(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": self.slope * self._parse(inputs)["x"] + self.offset}

    @tf.function(input_signature=[tf.TensorSpec(None, tf.string, name="inputs")])
    def regress_x_to_y(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"outputs": self.slope * self._parse(inputs)["x"] + self.offset}

    @tf.function(input_signature=[tf.TensorSpec(None, tf.string, name="inputs")])
    def regress_x_to_y2(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"outputs": self.slope * self._parse(inputs)["x"] + self.second_offset}

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="inputs")])
    def regress_x2_to_y3(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"outputs": self.slope * inputs + self.second_offset}

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="inputs")])
    def classify_x2_to_y3(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": self.slope * inputs + self.second_offset}


def write_half_plus_two_tf2(base_path: Path, version: int = 1, offset: float = 2.0) -> Path:
    """Write a TF2 half_plus_two SavedModel (``tf.saved_model.save``) to ``base_path/version``.

    Args:
        base_path: The model base path (what ``--model_base_path`` points at).
        version: The numeric version directory to write.
        offset: ``b`` in ``y = 0.5 * x + b``; y2 and y3 use ``b + 1``.

    Returns:
        The version directory written.
    """
    version_dir = Path(base_path) / str(version)
    module = _HalfPlusTwo(offset)
    signature_names = (
        "serving_default",
        "classify_x_to_y",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
        "classify_x2_to_y3",
    )
    tf.saved_model.save(
        module,
        str(version_dir),
        signatures={name: getattr(module, name) for name in signature_names},
    )
    return version_dir
