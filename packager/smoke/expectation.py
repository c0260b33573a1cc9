"""What one served version must answer, read from its version dir.

    Expectation          per signature: method, inputs, outputs (TensorSpec) and goldens, if any;
                         plus the tolerance the converter met
    SignatureExpectation one signature of it

The signatures come from the version dir's serving contract (packager.contract.read_contract of
the model it serves: its model.tflite when it holds one, else its saved_model.pb): every
signature a client can call. A version dir holding neither (a copy holding only assets.extra)
falls back to the provenance's record of serving_default, the one signature tfpack convert
writes goldens for. The goldens file holds serving_default's goldens; a signature without
goldens is checked by its metadata (and, for Classify/Regress signatures, by a call) only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packager import layout
from packager.contract import read_contract
from packager.smoke.client import Features, TensorSpec
from packager.tf_runtime import tensorflow

tf = tensorflow()

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
SAVED_MODEL_FILE = layout.SAVED_MODEL_FILE
TFLITE_MODEL_FILE = layout.TFLITE_MODEL_FILE
# The files a version dir's contract is read from, the one served first (layout.served_format).
MODEL_FILES = (TFLITE_MODEL_FILE, SAVED_MODEL_FILE)
CONTRACT = "contract"  # the expectation's signatures come from the version dir's served model
PROVENANCE = "provenance"  # ... from the provenance's serving_default record only


@dataclass(frozen=True)
class SignatureExpectation:
    """One signature: what its metadata must say, and its goldens when the version dir has them."""

    method: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    goldens: layout.Goldens | None = None

    def request_inputs(self) -> dict[str, np.ndarray]:
        """The golden inputs, each of the dtype the signature declares for it (goldens required)."""
        goldens = self._goldens()
        return {
            key: np.asarray(value, dtype=_numpy_dtype(self.inputs[key].dtype)) if key in self.inputs else value
            for key, value in goldens.inputs.items()
        }

    def output_dtypes(self) -> dict[str, np.dtype[Any]]:
        """The golden outputs' dtypes, by key (goldens required)."""
        return {key: value.dtype for key, value in self._goldens().outputs.items()}

    def synthetic_inputs(self) -> dict[str, np.ndarray]:
        """A request of the signature's dtypes and shapes (unknown dimensions 1), for signatures
        without goldens: zeros, or b"" for strings."""
        return {
            key: np.zeros([1 if dim is None else dim for dim in (spec.shape or [1])], dtype=_numpy_dtype(spec.dtype))
            if spec.dtype != "string"
            else np.full([1 if dim is None else dim for dim in (spec.shape or [1])], b"", dtype=object)
            for key, spec in self.inputs.items()
        }

    def _goldens(self) -> layout.Goldens:
        if self.goldens is None:
            raise ValueError("this signature has no goldens")
        return self.goldens


@dataclass(frozen=True)
class Expectation:
    """What one version must serve: every signature of its contract, goldens, and the tolerance.

    Attributes:
        signatures: By name.
        source: CONTRACT when the signatures are the version dir's whole serving contract;
            PROVENANCE when only serving_default is known (neither saved_model.pb nor model.tflite).
        tolerance: The largest absolute error the converter accepted against the source.
    """

    signatures: dict[str, SignatureExpectation]
    source: str
    tolerance: float

    @classmethod
    def from_version_dir(cls, version_dir: Path) -> Expectation:
        """Read a version dir's contract, goldens and provenance.

        Raises:
            UsageError: The version dir was not written by tfpack convert (no goldens, or a
                provenance without the signature or the tolerance).
            SourceError: Its saved_model.pb or model.tflite cannot be read.
        """
        goldens = layout.Goldens.load(version_dir / layout.GOLDENS_FILE)
        provenance = layout.Provenance.load(version_dir / layout.PROVENANCE_FILE)
        signatures: dict[str, SignatureExpectation]
        if any((version_dir / name).is_file() for name in MODEL_FILES):
            contract = read_contract(version_dir)
            source = CONTRACT
            signatures = {
                name: SignatureExpectation(
                    method=signature.method,
                    inputs={k: TensorSpec(v.dtype, v.shape) for k, v in signature.inputs.items()},
                    outputs={k: TensorSpec(v.dtype, v.shape) for k, v in signature.outputs.items()},
                )
                for name, signature in contract.signatures.items()
            }
        else:
            source = PROVENANCE
            signatures = {
                layout.DEFAULT_SIGNATURE: SignatureExpectation(
                    method=PREDICT_METHOD,
                    inputs={k: TensorSpec(v.dtype, v.shape) for k, v in provenance.inputs.items()},
                    outputs={k: TensorSpec(v.dtype, v.shape) for k, v in provenance.outputs.items()},
                )
            }
        default = signatures.get(layout.DEFAULT_SIGNATURE)
        if default is not None:
            # The goldens file holds serving_default's goldens (tfpack convert writes no others).
            signatures[layout.DEFAULT_SIGNATURE] = SignatureExpectation(
                default.method, default.inputs, default.outputs, goldens
            )
        return cls(signatures=signatures, source=source, tolerance=provenance.tolerance)

    def golden_signature(self) -> tuple[str, SignatureExpectation] | None:
        """The signature to time and to send bad requests to: serving_default if it has goldens,
        else the first predict signature (by name), else None."""
        default = self.signatures.get(layout.DEFAULT_SIGNATURE)
        if default is not None and default.goldens is not None:
            return layout.DEFAULT_SIGNATURE, default
        for name in sorted(self.signatures):
            if self.signatures[name].method == PREDICT_METHOD and self.signatures[name].inputs:
                return name, self.signatures[name]
        return None

    def examples(self) -> list[Features]:
        """tf.Examples for Classify/Regress: one per golden row of serving_default, each input a
        feature of that name (the model's own inputs, as Examples name them); one empty Example
        when there are no goldens or their inputs are not batched alike."""
        default = self.signatures.get(layout.DEFAULT_SIGNATURE)
        if default is None or default.goldens is None or not default.goldens.inputs:
            return [{}]
        inputs = default.goldens.inputs
        batch = {np.shape(value)[0] if np.ndim(value) > 0 else None for value in inputs.values()}
        if len(batch) != 1 or None in batch:
            return [{}]
        (size,) = batch
        return [{key: np.asarray(value[row]).ravel() for key, value in inputs.items()} for row in range(int(size or 0))]


def _numpy_dtype(dtype: str) -> np.dtype[Any]:
    """TensorFlow's dtype name as the numpy dtype a request tensor of it has (strings: object)."""
    if dtype == "string":
        return np.dtype(object)
    return np.dtype(tf.as_dtype(dtype).as_numpy_dtype)
