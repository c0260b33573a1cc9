"""``tfpack convert``: any supported source to a verified SavedModel version dir.

    load source ─▶ choose inputs/outputs (inference outputs only) ─▶ batch norm, randomness
      ─▶ prune for serving, scan ─▶ goldens: generated (sizes the graph allows) or --sample-inputs,
         finite ─▶ the source twice: deterministic
      ─▶ write SavedModel (staged) ─▶ reload it: equal to the source, batch independent
      ─▶ goldens, warmup, provenance ─▶ rename into DIR/NAME/N

``prepare`` is everything before writing; ``inspect`` runs it too, so a user can iterate on the
signature flags and see every readiness verdict without writing a file.

A .tflite source is no graph to cut: :func:`convert` hands it to :mod:`packager.convert_tflite`,
which writes it as TF Serving's TFLite layout. What both paths share (golden inputs, the records
beside the model) is :mod:`packager.version_assets`.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from packager.convert_tflite import REFERENCE as TFLITE_REFERENCE
from packager.convert_tflite import SOURCE_FORMAT as TFLITE_FORMAT
from packager.convert_tflite import convert_tflite, is_tflite_source
from packager.equivalence import compare_outputs
from packager.errors import SourceError, UsageError, VerificationError, first_line
from packager.export import (
    SignatureRunner,
    check_writable,
    loaded_saved_model,
    staged_version_dir,
    write_saved_model,
)
from packager.graph.constants import ControlPlaceholder, parse_constants
from packager.graph.frozen_model import VARIABLE_OPS, TensorRef
from packager.graph.input_constraints import InputConstraint, derive_input_constraints
from packager.graph.io_discovery import OutputCandidate, has_batch_dimension, training_subgraphs
from packager.graph.op_scan import ScanResult, scan_graph_def
from packager.graph.serving_path import derandomize, random_ops_as_constants, reachable_random_ops
from packager.graph.signature import Reference, SignaturePlan, plan_signature
from packager.graph.surgery import prune_for_serving
from packager.graph.towers import TowerFamily
from packager.layout import DEFAULT_SIGNATURE, check_model_name, file_sha256, next_version
from packager.modes import BATCHNORM_MODES, BatchNormMode, ServedTowerMode, TowerMode
from packager.progress import SILENT, Progress
from packager.readiness import (
    ReadinessReport,
    Verdict,
    check_batch_independence,
    check_determinism,
    independence_batch,
    raise_first_failure,
)
from packager.sources import SourceOptions, load_source
from packager.tf_runtime import reference_session, tensorflow
from packager.version_assets import DefaultSignature, SampleRecord, golden_run, write_version_records

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef

DEFAULT_TOLERANCE = 1e-5
# Tables need an initialization op run at load; a frozen graph has none to run.
LOOKUP_TABLE_OPS = frozenset(
    {
        "HashTable",
        "HashTableV2",
        "MutableHashTable",
        "MutableHashTableV2",
        "MutableHashTableOfTensors",
        "MutableHashTableOfTensorsV2",
        "MutableDenseHashTable",
        "MutableDenseHashTableV2",
    }
)


@dataclass(frozen=True, kw_only=True)
class ProofOptions:
    """The flags that shape the signature and its proof (shared by convert and inspect)."""

    inputs: list[str] | None = None
    outputs: list[str] | None = None
    tolerance: float = DEFAULT_TOLERANCE
    constants: list[str] = field(default_factory=list)  # NAME=VALUE, as given
    towers: TowerMode = "auto"
    batchnorm: BatchNormMode = "auto"
    allow_random: bool = False
    batch_dependent: bool = False
    sample_inputs: Path | None = None
    allowed_ops: list[str] = field(default_factory=list)  # --allow-op: denied op types let through
    source: SourceOptions = SourceOptions()

    def to_json(self) -> dict[str, Any]:  # a JSON object: values of several types
        return {
            "inputs": self.inputs,
            "outputs": self.outputs,
            "tolerance": self.tolerance,
            "constants": self.constants,
            "towers": self.towers,
            "batchnorm": self.batchnorm,
            "allow_random": self.allow_random,
            "batch_dependent": self.batch_dependent,
            "sample_inputs": str(self.sample_inputs) if self.sample_inputs else None,
            "allowed_ops": self.allowed_ops,
            "checkpoint": str(self.source.checkpoint) if self.source.checkpoint else None,
            "builder": self.source.builder,
            "custom_objects": self.source.custom_objects,
            "unsafe": self.source.unsafe,
            "ema": self.source.ema,
        }


@dataclass(frozen=True, kw_only=True)
class ConvertOptions(ProofOptions):
    """What the user asked for beyond the source path."""

    name: str
    output_dir: Path
    version: int | None = None

    def to_json(self) -> dict[str, Any]:  # a JSON object: values of several types
        return {**super().to_json(), "version": self.version}


@dataclass(frozen=True)
class ConvertResult:
    """A published version dir and what was proven about it."""

    version_dir: Path
    source_format: str
    inputs: list[TensorRef]
    outputs: list[TensorRef]
    max_abs_error: float
    tolerance: float
    signatures: list[str] = field(default_factory=lambda: ["serving_default"])
    tower_mode: ServedTowerMode = "off"
    readiness: dict[str, dict[str, str]] = field(default_factory=dict)
    reference: str = "source"  # what the SavedModel was proven equal to

    def to_json(self) -> dict[str, Any]:  # a JSON object: values of several types
        return {
            "version_dir": str(self.version_dir),
            "format": self.source_format,
            "inputs": [r.to_json() for r in self.inputs],
            "outputs": [r.to_json() for r in self.outputs],
            "signatures": self.signatures,
            "towers": self.tower_mode,
            "equivalence": {
                "max_abs_error": self.max_abs_error,
                "tolerance": self.tolerance,
                "reference": self.reference,
            },
            "readiness": self.readiness,
        }


@dataclass(frozen=True)
class SourceFacts:
    """What inspect shows of a source and of the signature plan cut from it."""

    op_count: int
    variable_count: int
    constant_count: int
    devices: list[str]
    training_subgraphs: dict[str, int]  # kind of training machinery -> op count
    candidates: list[OutputCandidate]
    set_aside: list[OutputCandidate]
    towers: TowerFamily | None


@dataclass
class Prepared(DefaultSignature):
    """A source read, its serving graph cut, its goldens run and its source-side readiness proven:
    everything ``convert`` has before it writes, and everything ``inspect`` shows.

    Attributes:
        source_record: the source as the provenance records it (a JSON object).
        graph_def: the serving graph (pruned, rewritten as asked).
        signatures: {name: (inputs, outputs)}.
        goldens, expected: {signature: {key: array}} — the inputs and the source's outputs on them.
        readiness: the verdicts so far (batch independence comes with a runnable serving model).
        keep_devices: the graph's device strings are deliberate (merged towers).
        reference_graph: the proof compares with the serving graph itself rather than the source
            (a graph deliberately different from the source: rewritten batch norm, seeded
            random ops); see ``graph_runner``.
        facts: what inspect shows of the source and plan.
    """

    source_record: dict[str, Any]
    graph_def: GraphDef
    signatures: dict[str, tuple[list[TensorRef], list[TensorRef]]]
    goldens: dict[str, dict[str, np.ndarray]]
    expected: dict[str, dict[str, np.ndarray]]
    readiness: ReadinessReport
    scan: ScanResult
    keep_devices: bool
    tower_mode: ServedTowerMode
    towers_record: dict[str, Any]  # JSON objects, as the provenance records them
    controls: list[ControlPlaceholder]
    rewrites: dict[str, Any]
    reference_graph: bool
    facts: SourceFacts
    sample_inputs: SampleRecord | None = None
    # Outputs named with --outputs although they have no batch dimension: no row per sample.
    batchless_outputs: frozenset[str] = frozenset()

    @property
    def reference(self) -> str:
        """What the written model is proven equal to."""
        return "serving graph (deliberately not the source: see rewrites)" if self.reference_graph else "source"


def _run_source(reference: Reference, feeds: Mapping[str, np.ndarray], source_path: Path) -> dict[str, np.ndarray]:
    """Run the source on generated inputs; a source that cannot run them is a bad source."""
    tf = tensorflow()
    try:
        return reference(feeds)
    except (tf.errors.OpError, ValueError, TypeError) as exc:
        raise SourceError(
            f"{source_path} fails to run on inputs of the signature's dtypes and shapes: {first_line(exc)}"
        ) from None


def _reference_of(run: SignatureRunner, name: str) -> Reference:
    """Signature ``name`` of ``run`` as a function of its feeds alone."""
    return lambda feeds: run(name, feeds)


def graph_runner(
    graph_def: GraphDef, signatures: Mapping[str, tuple[list[TensorRef], list[TensorRef]]]
) -> SignatureRunner:
    """Run a frozen graph itself as the reference: ``run(signature, feeds)``, one session reused."""
    tf = tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    session = reference_session(graph)

    def run(name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs, outputs = signatures[name]
        by_key = {r.key: r.tensor_name for r in inputs}
        values = session.run([o.tensor_name for o in outputs], {by_key[k]: v for k, v in feeds.items()})
        return {o.key: v for o, v in zip(outputs, values)}

    return run


def written_graph_def(export_dir: Path) -> GraphDef:
    """The GraphDef of a SavedModel as written (its one meta graph)."""
    tensorflow()
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel.FromString((export_dir / "saved_model.pb").read_bytes())
    return saved_model.meta_graphs[0].graph_def


def _input_constraints(
    graph_def: GraphDef, inputs: list[TensorRef], index_bounds: Mapping[str, int]
) -> dict[str, InputConstraint]:
    """What the graph says each input's generated values must meet, plus the index bounds the
    source format itself declares where the graph shows none: an ONNX Gather's table size is
    hidden inside the graph onnx2tf writes, and without it the goldens would try ids 0 and 1 only.
    """
    constraints = derive_input_constraints(graph_def, inputs)
    for ref in inputs:
        bound = index_bounds.get(ref.key)
        known = constraints.get(ref.key, InputConstraint())
        if bound is not None and known.upper_bound is None:
            constraints[ref.key] = replace(known, upper_bound=bound, uses=(*known.uses, "an index, per the source"))
    return constraints


def _half_precision_hint(outputs: list[TensorRef]) -> str:
    """A hint for a failed comparison of half-precision outputs: 16-bit floats carry about three
    significant digits, so the default tolerance (1e-5) cannot hold between two runtimes' roundings."""
    half = [r.key for r in outputs if r.dtype in ("float16", "bfloat16")]
    if not half:
        return ""
    return f"; {', '.join(half)} are 16-bit floats (about 3 significant digits): --tolerance 1e-2 suits them"


def _control_flags(controls: list[ControlPlaceholder]) -> list[str]:
    """``--constant`` suggestions for the control placeholders that may switch training
    behaviour (dropout, batch statistics) off: a bool flag to false, a scalar without default
    (keep_prob) to the value inference needs."""
    return [
        f"--constant {c.name}=false" if c.dtype == "bool" else f"--constant {c.name}=VALUE"
        for c in controls
        if c.dtype == "bool" or not c.has_default
    ]


def _outputs_verdict(plan: SignaturePlan) -> Verdict:
    if not plan.output_findings:
        return Verdict("inference_outputs", "passed", "no loss, training op or batchless output is served")
    listing = "; ".join(f"{name} ({reason})" for name, reason in plan.output_findings.items())
    if plan.outputs_named:
        return Verdict("inference_outputs", "allowed", f"named with --outputs: {listing}")
    return Verdict(
        "inference_outputs",
        "failed",
        f"the model's declared outputs are not inference outputs: {listing}: name the outputs to serve with --outputs",
    )


def prepare(source_path: Path, options: ProofOptions, progress: Progress = SILENT, *, strict: bool = True) -> Prepared:
    """Read the source, cut the serving graph and prove everything that needs no written model.

    Args:
        strict: False (inspect) reports readiness failures in ``Prepared.readiness`` instead of
            raising, and leaves a control placeholder without a value as an input.

    Raises:
        UsageError / SourceError: bad flags or a bad source (exit 2).
        NotServingReady: a readiness check failed (exit 2), with ``strict``.
    """
    if not options.tolerance > 0 or not np.isfinite(options.tolerance):
        raise UsageError(f"--tolerance must be a positive finite number, not {options.tolerance}")
    if options.batchnorm not in BATCHNORM_MODES:
        raise UsageError(f"--batchnorm must be one of {', '.join(BATCHNORM_MODES)}, not {options.batchnorm!r}")
    if options.sample_inputs is not None and not options.sample_inputs.is_file():
        raise UsageError(f"--sample-inputs {options.sample_inputs}: no such file")
    constants = parse_constants(options.constants)

    progress.step(f"loading {source_path}")
    source = load_source(
        source_path,
        replace(options.source, batchnorm=options.batchnorm, allowed_ops=frozenset(options.allowed_ops)),
        progress,
    )
    plan = plan_signature(
        source,
        options.inputs,
        options.outputs,
        constants,
        towers=options.towers,
        batchnorm=options.batchnorm,
        strict=strict,
    )
    default = plan.default
    inputs, outputs = default.inputs, default.outputs
    progress.step(
        f"inputs {', '.join(r.key for r in inputs)}; outputs {', '.join(r.key for r in outputs)}"
        + (f"; {plan.towers.count} towers, {plan.tower_mode}" if plan.towers else "")
    )
    report = ReadinessReport()
    report.add(_outputs_verdict(plan))
    # The inputs stay in the serving graph even when no output needs them: clients send them.
    keep = plan.output_tensor_names() + sorted(
        {r.tensor_name for spec in plan.signatures.values() for r in spec.inputs}
    )
    graph_def = prune_for_serving(plan.graph_def, keep, clear_devices=not plan.keep_devices)
    tables = sorted({n.op for n in graph_def.node if n.op in LOOKUP_TABLE_OPS})
    if tables and strict:
        raise SourceError(
            f"{source_path} uses lookup tables ({', '.join(tables)}, e.g. Keras StringLookup): "
            "tfpack cannot freeze their initialization yet; export it as a SavedModel with its "
            "tables and serve that, or convert the model without the lookup layers"
        )
    scan = scan_graph_def(graph_def, str(source_path), frozenset(options.allowed_ops))
    if scan.blocking and strict:
        raise UsageError(f"{scan.summary()}: remove them, or allow each with --allow-op {scan.blocking[0].op_type}")
    rewrites: dict[str, Any] = {
        "batchnorm": options.batchnorm,
        "batchnorm_sites": [site.to_json() for site in plan.batchnorm_sites],
        "batchnorm_rewritten": plan.batchnorm_rewrites,
    }
    signatures = {name: (spec.inputs, spec.outputs) for name, spec in plan.signatures.items()}
    # A graph source's reference is the unfrozen training graph, whose batch norms still use the
    # batch: the rewritten graph is what the written model must equal (a Keras source was loaded
    # with the training calls stripped, so it stays its own reference).
    reference_graph = bool(plan.batchnorm_rewrites) and source.format != "keras"
    proof_graph = graph_def
    random_problem = ""
    if options.allow_random:
        # The model is served with its random ops; the proof runs both sides derandomized.
        proof_graph, unprovable = derandomize(graph_def)
        rewrites["random_ops"] = [op for ops in reachable_random_ops(graph_def) for op in ops]
        reference_graph = True
        if not rewrites["random_ops"]:
            random_problem = "--allow-random, but no random op is on the serving path: drop --allow-random"
        elif unprovable:
            random_problem = (
                f"--allow-random: the proof cannot fix the seeds of {', '.join(unprovable[:4])} (no stateless "
                "twin): tfpack proves stochastic models built on uniform, normal, truncated-normal and "
                "uniform-int random ops"
            )
        if random_problem and strict:
            raise UsageError(random_problem)

    if reference_graph:
        run = graph_runner(proof_graph, signatures)
    else:
        run = lambda name, feeds: plan.signatures[name].reference(feeds)  # noqa: E731
    progress.step("running the source on " + ("--sample-inputs" if options.sample_inputs else "generated inputs"))
    try:
        goldens, expected, sample_record, finite = golden_run(
            {name: spec.inputs for name, spec in plan.signatures.items()},
            lambda name, feeds: _run_source(_reference_of(run, name), feeds, source_path),
            options.sample_inputs,
            lambda inputs: _input_constraints(graph_def, inputs, source.details.get("index_bounds", {})),
        )
    except SourceError as exc:
        if strict:
            raise
        goldens, expected, sample_record, finite = {}, {}, None, Verdict("finite_goldens", "failed", str(exc))
    report.add(finite)
    if not goldens:
        report.add(Verdict("determinism", "skipped", "no golden inputs to run the source on"))
    elif random_problem:
        report.add(Verdict("determinism", "failed", random_problem))
    elif options.allow_random:
        report.add(
            Verdict(
                "determinism",
                "allowed",
                f"--allow-random: a stochastic model is served ({len(rewrites['random_ops'])} random op(s)); "
                "the proof fixed their seeds on both sides to compare like with like",
            )
        )
    else:
        progress.step("running the source again: deterministic?")

        def rerun() -> dict[str, dict[str, np.ndarray]]:
            return {name: _run_source(_reference_of(run, name), goldens[name], source_path) for name in goldens}

        report.add(check_determinism(expected, rerun, options.tolerance, graph_def, _control_flags(plan.controls)))
    if strict:
        raise_first_failure(report)
    source_record = {
        "path": str(source_path),
        "format": source.format,
        "details": source.details,
        "control_placeholders": [c.to_json() for c in plan.controls],
        "files": file_digests(source.files, source.path),
        "read": [str(path.resolve()) for path in source.files],
    }
    if sample_record:
        source_record["sample_inputs"] = sample_record
    op_types = Counter(node.op for node in source.graph_def.node)
    subgraphs = source.details.get("training_subgraphs") or training_subgraphs(source.graph_def)
    facts = SourceFacts(
        op_count=len(source.graph_def.node),
        variable_count=source.details.get("variables", sum(op_types[op] for op in VARIABLE_OPS)),
        constant_count=op_types["Const"],
        devices=sorted({node.device for node in source.graph_def.node if node.device}),
        training_subgraphs=subgraphs,
        candidates=plan.candidates,
        set_aside=plan.set_aside,
        towers=plan.towers,
    )
    return Prepared(
        source_record=source_record,
        graph_def=graph_def,
        signatures=signatures,
        goldens=goldens,
        expected=expected,
        readiness=report,
        scan=scan,
        keep_devices=plan.keep_devices,
        tower_mode=plan.tower_mode,
        towers_record={"mode": plan.tower_mode, **(plan.towers.to_json() if plan.towers else {"count": 0})},
        controls=plan.controls,
        rewrites=rewrites,
        reference_graph=reference_graph,
        sample_inputs=sample_record,
        facts=facts,
        batchless_outputs=frozenset(
            key for key, reason in plan.output_findings.items() if plan.outputs_named and "no batch dimension" in reason
        ),
    )


def check_batch_independence_of(
    run: SignatureRunner, prepared: Prepared, options: ProofOptions, served_graph_def: GraphDef
) -> Verdict:
    """Batch independence of the model ``run`` serves (``served_graph_def``), or why it was not
    checked. A stochastic model (--allow-random) is checked on a copy whose random draws are
    constants: its samples differ between runs, what they share must not."""
    if options.batch_dependent:
        return Verdict("batch_independence", "allowed", "--batch-dependent: outputs may mix samples on purpose")
    if prepared.readiness.status("determinism") == "failed":
        return Verdict("batch_independence", "skipped", "the model is not deterministic: its samples differ anyway")
    if options.allow_random:
        run = graph_runner(random_ops_as_constants(served_graph_def)[0], prepared.signatures)
    batches = {}
    for name, (inputs, _) in prepared.signatures.items():
        batched = [r.key for r in inputs if has_batch_dimension(r.shape)]
        if batched:
            batches[name] = independence_batch(prepared.goldens[name], batched)
    return check_batch_independence(
        run,
        batches,
        options.tolerance,
        prepared.graph_def,
        exempt=prepared.batchless_outputs,
        fixes=tuple(_control_flags(prepared.controls)),
    )


@contextmanager
def _collecting_only_new_objects() -> Iterator[None]:
    """Let the garbage collector skip the objects that exist on entry (gc.freeze) until exit.

    A full collection walks every tracked object, ~300k after TensorFlow and Keras are imported
    (~0.15 s); only the conversion's own objects can be its garbage. A caller that froze its
    objects itself is left as it is.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def file_digests(files: list[Path], root: Path) -> dict[str, str]:
    """sha256 of each source file, keyed by its path relative to the source (or its name)."""
    digests = {}
    base = root.resolve() if root.is_dir() else None
    for path in files:
        resolved = path.resolve()
        # A checkpoint state file may name shards elsewhere: those go by name.
        relative = resolved.relative_to(base).as_posix() if base and resolved.is_relative_to(base) else path.name
        digests[relative] = file_sha256(resolved)
    return digests


def check_tflite_flags(options: ProofOptions) -> None:
    """Refuse the flags that reshape or load a TensorFlow graph: a .tflite source is served as it
    is, with the signature TF Serving gives it.

    Raises:
        UsageError: one of them was given (the message names it).
    """
    given = [
        flag
        for flag, used in (
            ("--inputs", options.inputs is not None),
            ("--outputs", options.outputs is not None),
            ("--constant", bool(options.constants)),
            ("--towers", options.towers != "auto"),
            ("--batchnorm", options.batchnorm != "auto"),
            ("--allow-random", options.allow_random),
            ("--allow-op", bool(options.allowed_ops)),
            ("--checkpoint", options.source.checkpoint is not None),
            ("--builder", options.source.builder is not None),
            ("--custom-objects", options.source.custom_objects is not None),
            ("--unsafe", options.source.unsafe),
            ("--ema", options.source.ema != "auto"),
            ("--channels-last", options.source.channels_last),
        )
        if used
    ]
    if given:
        raise UsageError(
            f"{given[0]} does not apply to a .tflite source: it is served as it is, with the signature "
            "TF Serving gives it (see 'tfpack inspect')"
        )


def _convert_tflite(source_path: Path, options: ConvertOptions, version: int, progress: Progress) -> ConvertResult:
    """Convert a .tflite source (see packager.convert_tflite): served as TFLite, not a SavedModel."""
    check_tflite_flags(options)
    converted = convert_tflite(
        source_path,
        name=options.name,
        output_dir=options.output_dir,
        version=version,
        tolerance=options.tolerance,
        sample_inputs=options.sample_inputs,
        batch_dependent=options.batch_dependent,
        options=options.to_json(),
        progress=progress,
    )
    return ConvertResult(
        version_dir=converted.version_dir,
        source_format=TFLITE_FORMAT,
        inputs=converted.inputs,
        outputs=converted.outputs,
        max_abs_error=converted.max_abs_error,
        tolerance=options.tolerance,
        signatures=sorted(converted.signatures),
        readiness=converted.readiness,
        reference=TFLITE_REFERENCE,
    )


def convert(source_path: Path, options: ConvertOptions, progress: Progress = SILENT) -> ConvertResult:
    """Convert ``source_path`` into ``options.output_dir/NAME/N``; prove it equivalent and ready.

    A SavedModel is written, or, for a .tflite source, the file itself as ``N/model.tflite``
    (:func:`packager.convert_tflite.convert_tflite`).

    Raises:
        UsageError / SourceError: bad flags or a bad source (exit 2); nothing is written.
        NotServingReady: a serving-readiness check failed (exit 2); nothing is written.
        VerificationError: the written SavedModel does not reproduce the source (exit 3);
            nothing is published.
    """
    check_model_name(options.name)
    if options.version is not None and not 1 <= options.version < 2**63:
        raise UsageError(f"--version must be a positive 64-bit integer, not {options.version}")
    if options.output_dir.exists() and not options.output_dir.is_dir():
        raise UsageError(f"--output-dir {options.output_dir} exists and is not a directory")
    check_writable(options.output_dir)
    version = options.version or next_version(options.output_dir / options.name)
    if is_tflite_source(source_path):
        return _convert_tflite(source_path, options, version, progress)
    with _collecting_only_new_objects():
        prepared = prepare(source_path, options, progress)
        # The loaded source (a Keras model, a reference session and graph) is garbage now, but
        # held in reference cycles: free it before the written model is loaded beside it (~100 MB
        # of peak RSS for a ~100 MB ResNet50).
        gc.collect()
    report = prepared.readiness

    with staged_version_dir(options.output_dir, options.name, version) as staging:
        progress.step(f"writing SavedModel version {version}")
        write_saved_model(prepared.graph_def, prepared.signatures, staging)
        progress.step("reloading the SavedModel and comparing with the source")
        max_error = 0.0
        with loaded_saved_model(staging, soft_placement=prepared.keep_devices) as run:
            # A stochastic model is compared as its reference ran: the written graph derandomized.
            check = (
                graph_runner(derandomize(written_graph_def(staging))[0], prepared.signatures)
                if options.allow_random
                else run
            )
            for name in prepared.signatures:
                try:
                    actual = check(name, prepared.goldens[name])
                except tensorflow().errors.OpError as exc:
                    raise VerificationError(
                        f"the written SavedModel fails to run signature {name}: {first_line(exc)}"
                    ) from None
                try:
                    comparison = compare_outputs(
                        prepared.expected[name],
                        actual,
                        options.tolerance,
                        f"signature {name} of the written SavedModel vs the {prepared.reference}",
                    )
                except VerificationError as exc:
                    raise VerificationError(f"{exc}{_half_precision_hint(prepared.signatures[name][1])}") from None
                max_error = max(max_error, comparison.max_abs_error)
            progress.step("one sample alone vs inside a batch: batch independent?")
            report.add(check_batch_independence_of(run, prepared, options, written_graph_def(staging)))
        raise_first_failure(report)
        write_version_records(
            staging,
            model_name=options.name,
            version=version,
            source=prepared.source_record,
            options=options.to_json(),
            inputs=prepared.inputs,
            outputs=prepared.outputs,
            goldens=prepared.goldens[DEFAULT_SIGNATURE],
            expected=prepared.expected[DEFAULT_SIGNATURE],
            tolerance=options.tolerance,
            max_abs_error=max_error,
            extra={
                "towers": prepared.towers_record,
                "signatures": sorted(prepared.signatures),
                "op_scan": prepared.scan.to_json(),
                "readiness": report.to_json(),
                "rewrites": prepared.rewrites,
                "reference": prepared.reference,
            },
        )
    return ConvertResult(
        version_dir=options.output_dir / options.name / str(version),
        source_format=prepared.source_record["format"],
        inputs=prepared.inputs,
        outputs=prepared.outputs,
        max_abs_error=max_error,
        tolerance=options.tolerance,
        signatures=sorted(prepared.signatures),
        tower_mode=prepared.tower_mode,
        readiness=report.to_json(),
        reference=prepared.reference,
    )
