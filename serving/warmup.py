"""Model warmup: replay assets.extra/tf_serving_warmup_requests before a version serves.

As TF Serving's saved_model_warmup.cc: the file holds PredictionLog TFRecords (predict, classify,
regress or multi_inference logs, at most 1000); each request runs
--num_request_iterations_for_warmup times (at least once) against the freshly loaded version,
and any failure fails the load, so a version that cannot answer its own warmup never serves.
"""

from __future__ import annotations

import logging
import time

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving.examples import ExampleInference
from serving.inference import Inference
from serving.servables import LoadError, Servable

_LOG = logging.getLogger(__name__)

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000


class Warmup:
    """Replays a version's warmup requests (the ModelManager's on_loaded hook)."""

    def __init__(self, inference: Inference, examples: ExampleInference, iterations: int = 1) -> None:
        """Args: inference/examples: the handlers replaying requests; iterations: replays per
        record (values below 1 mean 1)."""
        self._inference = inference
        self._examples = examples
        self._iterations = max(iterations, 1)

    def __call__(self, servable: Servable) -> None:
        """Replay ``servable``'s warmup file if it has one.

        Raises:
            LoadError: If the file is unreadable, too long, or a request fails.
        """
        path = servable.path / WARMUP_FILE
        if not path.is_file():
            _LOG.info("No warmup data file found at %s", path)
            return
        started = time.monotonic()
        count = 0
        try:
            for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
                count += 1
                if count > MAX_WARMUP_RECORDS:
                    raise LoadError(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
                log = prediction_log_pb2.PredictionLog.FromString(record)
                for _ in range(self._iterations):
                    self._replay(servable, log)
        except tf.errors.OpError as error:
            raise LoadError(f"Failed to read warmup data at {path}: {error.message}") from None
        except Exception as error:  # ServingError, protobuf DecodeError: the load fails
            if isinstance(error, LoadError):
                raise
            raise LoadError(f"Warmup request {count} from {path} failed: {error}") from None
        _LOG.info(
            "Finished reading warmup data for model at %s. Number of warmup records read: %d. "
            "Elapsed time (microseconds): %d.",
            path,
            count,
            int((time.monotonic() - started) * 1e6),
        )

    def _replay(self, servable: Servable, log: prediction_log_pb2.PredictionLog) -> None:
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            self._inference.predict_with(servable, log.predict_log.request)
        elif kind == "classify_log":
            self._examples.classify_with(servable, log.classify_log.request)
        elif kind == "regress_log":
            self._examples.regress_with(servable, log.regress_log.request)
        elif kind == "multi_inference_log":
            self._examples.multi_inference_with(servable, log.multi_inference_log.request)
        else:
            raise LoadError(f"Unsupported log_type for warmup: {kind}")
