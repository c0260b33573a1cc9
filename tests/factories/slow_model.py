"""A model that loads slowly and then serves fast: y = 0.5 * x + 2 after a warmup of LOAD_SECONDS.

The serving graph busy-waits on ``tf.timestamp()`` for ``max(x) - 1000`` seconds when
``max(x) > 1000`` (an in-graph ``tf.while_loop``, so the SavedModel carries it and no Python runs at
serving time), and answers at once otherwise. Its warmup file (assets.extra/tf_serving_warmup_requests,
PredictionLog TFRecords as packager.export writes them) holds one request ``x = [1000 + load_seconds]``.
TF Serving and tfpack-model-server replay warmup before a version becomes AVAILABLE, so the
version is LOADING for ``load_seconds`` and every later request is fast: what a large model's
first load looks like to probes, without a large model.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import tensorflow as tf

from packager.export import write_warmup_requests
from packager.signing import sign

SLOPE = 0.5
OFFSET = 2.0
# Inputs above this make the graph wait (input - BUSY_FROM) seconds; real requests stay below it.
BUSY_FROM = 1000.0
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"


class _SlowToWarm(tf.Module):
    """y = SLOPE * x + OFFSET, after busy-waiting max(x) - BUSY_FROM seconds when that is positive."""

    def __init__(self) -> None:
        super().__init__()
        self.slope = tf.Variable(SLOPE)
        self.offset = tf.Variable(OFFSET)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")], autograph=False)
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        # reduce_max of an empty batch is -inf: no wait.
        wait_s = tf.cast(tf.maximum(tf.reduce_max(x) - BUSY_FROM, 0.0), tf.float64)
        deadline = tf.timestamp() + wait_s
        (waited_until,) = tf.while_loop(
            lambda now: now < deadline,
            lambda now: [tf.timestamp()],
            [tf.timestamp()],
        )
        # The answer depends on the loop, so no runtime may prune or reorder the wait away.
        with tf.control_dependencies([waited_until]):
            return {"y": tf.identity(self.slope * x + self.offset)}


def write_slow_model(version_dir: Path, load_seconds: float, key: Path | None = None, *, model_name: str = "") -> Path:
    """Write the slow-to-load SavedModel to ``version_dir``, signed with ``key`` when given.

    Args:
        version_dir: ``BASE/NAME/N``; written beside it first and renamed into place, so a server
            polling BASE/NAME never sees half a version dir.
        load_seconds: How long replaying the warmup file takes (the version's load time).
        key: The PEM private key to sign with (packager.signing.sign); None leaves it unsigned.
        model_name: The model name recorded in the warmup request (servers ignore it).

    Returns:
        ``version_dir``, every file world-readable (the image's non-root user reads a mount of it).
    """
    module = _SlowToWarm()
    staging = version_dir.parent / f".staging-{version_dir.name}-{uuid.uuid4().hex[:6]}"
    staging.parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
    write_warmup_requests(
        staging / WARMUP_FILE,
        model_name or version_dir.parent.name,
        {"x": np.array([BUSY_FROM + load_seconds], dtype=np.float32)},
    )
    if key is not None:
        sign(staging, key)
    for path in [staging, *staging.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    staging.rename(version_dir)
    return version_dir


def expected_output(x: np.ndarray) -> np.ndarray:
    """What the model answers for inputs below BUSY_FROM."""
    return (SLOPE * np.asarray(x, dtype=np.float32) + OFFSET).astype(np.float32)
