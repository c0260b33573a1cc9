"""What every ``tfpack convert`` path shares around the model it writes: the golden inputs it is
proven on, and the records written beside it in ``assets.extra``.

    golden_run             --sample-inputs, or inputs generated for the signature (free dimensions
                           climbing a ladder of sizes until the reference runs), run through the
                           reference; its outputs finite
    write_version_records  goldens, warmup requests, provenance, and last its in-toto statement

:mod:`packager.convert` (a TensorFlow graph written as a SavedModel) and
:mod:`packager.convert_tflite` (a .tflite file served as it is) both call these; which model each
writes, and how it proves it, is theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

import packager
from packager.equivalence import free_dimension_ladder, generate_inputs
from packager.errors import SourceError
from packager.export import write_warmup_requests
from packager.graph.frozen_model import TensorRef
from packager.graph.input_constraints import InputConstraint
from packager.layout import DEFAULT_SIGNATURE, GOLDENS_FILE, PROVENANCE_FILE, WARMUP_FILE, Goldens, Provenance
from packager.provenance import write_provenance_statement
from packager.readiness import Verdict, check_finite
from packager.tf_runtime import tensorflow

# Runs signature NAME of the reference on feeds keyed by input key; raises SourceError when the
# source cannot run them.
SourceRunner = Callable[[str, Mapping[str, np.ndarray]], dict[str, np.ndarray]]
# The constraints generated values of a signature's inputs must meet, keyed by input key.
ConstraintsOf = Callable[[list[TensorRef]], Mapping[str, InputConstraint]]
# {signature: {key: array}}
SignatureArrays = dict[str, dict[str, np.ndarray]]


class DefaultSignature:
    """serving_default's inputs and outputs, for a record of ``signatures`` by name."""

    signatures: dict[str, tuple[list[TensorRef], list[TensorRef]]]

    @property
    def inputs(self) -> list[TensorRef]:
        return self.signatures[DEFAULT_SIGNATURE][0]

    @property
    def outputs(self) -> list[TensorRef]:
        return self.signatures[DEFAULT_SIGNATURE][1]


class SampleRecord(TypedDict):
    """The --sample-inputs file a conversion was proven on, as the provenance records it."""

    path: str
    sha256: str
    format: str
    batch: int


def _no_constraints(_inputs: list[TensorRef]) -> Mapping[str, InputConstraint]:
    return {}


def golden_run(
    plan_inputs: Mapping[str, list[TensorRef]],
    run: SourceRunner,
    sample_inputs: Path | None,
    constraints_of: ConstraintsOf = _no_constraints,
) -> tuple[SignatureArrays, SignatureArrays, SampleRecord | None, Verdict]:
    """Choose golden inputs and run the reference on them; the outputs must be finite.

    Generated inputs respect ``constraints_of`` (what a graph tells of index bounds and positive
    domains); unknown non-batch dimensions climb a ladder of sizes until the source runs and gives
    finite outputs.

    Args:
        plan_inputs: {signature: its inputs}; serving_default among them.
        run: the reference.
        sample_inputs: the --sample-inputs file, or None to generate inputs.
        constraints_of: the constraints of a signature's inputs.

    Returns:
        (goldens, expected, sample record or None, finite Verdict)

    Raises:
        UsageError: the sample inputs do not fit the signature.
        SourceError: the source cannot run the inputs, or gives non-finite or empty outputs on
            every one tried.
    """
    if sample_inputs is not None:
        from packager.sample_inputs import load_sample_inputs

        # One file for every signature: the per-tower signatures of split towers take the same
        # inputs as serving_default, which is the signature the file is read (and named) for.
        default_inputs = plan_inputs[DEFAULT_SIGNATURE]
        sample = load_sample_inputs(sample_inputs, default_inputs, DEFAULT_SIGNATURE)
        record: SampleRecord = {
            "path": str(sample_inputs),
            "sha256": sample.sha256,
            "format": sample.format,
            "batch": sample.batch,
        }
        goldens = {}
        for name, inputs in plan_inputs.items():
            same = [(r.key, r.dtype) for r in inputs] == [(r.key, r.dtype) for r in default_inputs]
            goldens[name] = sample.arrays if same else load_sample_inputs(sample_inputs, inputs, name).arrays
        expected = {name: run(name, goldens[name]) for name in goldens}
        verdict = check_finite(expected, f"--sample-inputs {sample_inputs.name}")
        if verdict.status == "failed":
            raise SourceError(f"{verdict.detail}: the source gives non-finite outputs on your sample inputs")
        return goldens, expected, record, verdict
    constraints = {name: constraints_of(inputs) for name, inputs in plan_inputs.items()}
    ladder = free_dimension_ladder([r for inputs in plan_inputs.values() for r in inputs])
    failure = ""
    for size in ladder:
        goldens = {
            name: generate_inputs(inputs, constraints=constraints[name], free_dimension=size)
            for name, inputs in plan_inputs.items()
        }
        try:
            expected = {name: run(name, goldens[name]) for name in goldens}
        except SourceError as exc:
            if len(ladder) == 1:
                raise  # no size to vary: the source itself cannot run
            failure = str(exc)
            continue
        empty = [f"{name}/{key}" for name, values in expected.items() for key, v in values.items() if np.size(v) == 0]
        verdict = check_finite(expected, "generated inputs" + (f" (free dimensions {size})" if len(ladder) > 1 else ""))
        if verdict.status == "passed" and not empty:
            return goldens, expected, None, verdict
        failure = verdict.detail if verdict.status == "failed" else f"output(s) {', '.join(empty)} are empty"
    sizes = f" (free dimensions tried: {', '.join(map(str, ladder))})" if len(ladder) > 1 else ""
    raise SourceError(
        f"no generated input exercises the model{sizes}: {failure}: give real inputs with --sample-inputs FILE "
        "(.npz, a TF Serving REST JSON body, or a warmup TFRecord)"
    )


def write_version_records(
    version_dir: Path,
    *,
    model_name: str,
    version: int,
    source: dict[str, Any],  # a JSON object: the source as the provenance records it
    options: dict[str, Any],  # a JSON object: the flags, as the provenance records them
    inputs: list[TensorRef],
    outputs: list[TensorRef],
    goldens: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    tolerance: float,
    max_abs_error: float,
    extra: dict[str, Any],  # a JSON object: what only this kind of conversion records
) -> Provenance:
    """Write serving_default's goldens, the warmup requests, the provenance and its statement
    into the (staged) ``version_dir``, once its model is written and proven.

    Returns:
        The provenance written.
    """
    Goldens(inputs=dict(goldens), outputs=dict(expected)).save(version_dir / GOLDENS_FILE)
    write_warmup_requests(version_dir / WARMUP_FILE, model_name, goldens)
    provenance = Provenance(
        model_name=model_name,
        version=version,
        source=source,
        tfpack_version=packager.__version__,
        tensorflow_version=tensorflow().__version__,
        options=options,
        inputs={r.key: r.summary() for r in inputs},
        outputs={r.key: r.summary() for r in outputs},
        tolerance=tolerance,
        max_abs_error=max_abs_error,
        extra=extra,
    )
    provenance.save(version_dir / PROVENANCE_FILE)
    # Last, so the statement's subject digest covers every other file of the version.
    write_provenance_statement(version_dir, provenance)
    return provenance
