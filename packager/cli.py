"""The ``tfpack`` command line: parse arguments, call one library function, print the result.

Exit codes (DESIGN.md): 0 ok · 1 a bug in tfpack · 2 bad usage or a bad/unsupported source ·
3 verification failed · 4 smoke test failed · 5 a breaking serving-contract change.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from packager import __version__
from packager.errors import TfpackError
from packager.modes import BATCHNORM_MODES, EMA_MODES, TOWER_MODES, EmaMode

# Before anything imports TensorFlow: keep its C++ start-up notices out of tfpack's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# emoji=False: a path or name containing ":thumbs_up:" must print as written, JSON included.
_stderr = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
_stdout = Console(highlight=False, soft_wrap=True, emoji=False)
T = TypeVar("T")

ENV_DEBUG = "TFPACK_DEBUG"
ENV_KEY_PASSWORD = "TFPACK_KEY_PASSWORD"


class LineProgress:
    """For a stderr that is not a terminal (CI logs): one line per finished step with its duration,
    so a log shows where a long conversion spent its time without spinner control codes."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._current: str | None = None
        self._started = 0.0

    def step(self, message: str) -> None:
        self._finish_current()
        self._current = message
        self._started = time.monotonic()

    def _print_finished(self, message: str, seconds: float) -> None:
        self._console.print(f"tfpack: {message} ({seconds:.1f}s)", markup=False)

    def _finish_current(self) -> None:
        if self._current is not None:
            self._print_finished(self._current, time.monotonic() - self._started)
            self._current = None

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._finish_current()


class ConsoleProgress(LineProgress):
    """On a terminal: the current step with a spinner; finished steps printed dimmed."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self._status = console.status("", spinner="dots")

    def step(self, message: str) -> None:
        super().step(message)
        self._status.update(message)

    def _print_finished(self, message: str, seconds: float) -> None:
        self._console.print(f"[dim]·[/dim] {message} [dim]({seconds:.1f}s)[/dim]")

    def __enter__(self) -> ConsoleProgress:
        self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._status.stop()
        super().__exit__(*exc)


class _QuietProgress:
    def step(self, message: str) -> None:
        del message

    def __enter__(self) -> _QuietProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@contextmanager
def _progress(as_json: bool) -> Iterator[Any]:
    """A spinner on an interactive stderr, a line per step otherwise (CI logs); nothing for --json."""
    progress: LineProgress | _QuietProgress
    if as_json:
        progress = _QuietProgress()
    elif _stderr.is_terminal:
        progress = ConsoleProgress(_stderr)
    else:
        progress = LineProgress(_stderr)
    with progress:
        yield progress


def _run(action: Callable[[], T], as_json: bool = False) -> T:
    """Run a library call; turn tfpack's errors into one line and the documented exit code.

    With ``as_json``, an error that carries a result (a failed smoke test's report) still prints
    that JSON on stdout, so a pipeline gets the report and the exit code.
    """
    try:
        with warnings.catch_warnings():
            if not os.environ.get(ENV_DEBUG):
                warnings.simplefilter("ignore")
            return action()
    except TfpackError as exc:
        if as_json and exc.result is not None:
            _stdout.print(json.dumps(exc.result, indent=2, sort_keys=True), markup=False)
        _stderr.print(f"tfpack: error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except Terminated:
        _stderr.print("tfpack: terminated", markup=False)
        sys.exit(143)
    except KeyboardInterrupt:
        _stderr.print("tfpack: interrupted", markup=False)
        sys.exit(130)
    except Exception as exc:  # anything else is a bug in tfpack: say so, exit 1
        if os.environ.get(ENV_DEBUG):
            traceback.print_exc()
        _stderr.print(
            f"tfpack: internal error (a bug in tfpack, please report it): {type(exc).__name__}: {exc}"
            f" — rerun with {ENV_DEBUG}=1 for the traceback",
            markup=False,
        )
        sys.exit(1)


def _emit(result: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        _stdout.print(json.dumps(result.to_json(), indent=2, sort_keys=True), markup=False)
    else:
        human(result)


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise click.BadParameter("give at least one name, comma-separated")
    return names


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")


def source_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The flags that say how to load a source (shared by inspect and convert)."""
    for option in reversed(
        [
            click.option(
                "--checkpoint",
                type=click.Path(path_type=Path),
                help="Checkpoint prefix holding the variables of a GraphDef source (freeze_graph's case).",
            ),
            click.option("--builder", help="MODULE:FUNC building the inference graph for a checkpoint without one."),
            click.option("--custom-objects", help="Module with the custom Keras layers/functions the file uses."),
            click.option(
                "--unsafe", is_flag=True, help="Allow Keras Lambda layers (they run code stored in the file)."
            ),
            click.option(
                "--ema",
                type=click.Choice(EMA_MODES),
                default="auto",
                show_default=True,
                help="Use ExponentialMovingAverage shadows of checkpoint variables (auto: where present).",
            ),
        ]
    ):
        function = option(function)
    return function


def _source_options(
    checkpoint: Path | None,
    builder: str | None,
    custom_objects: str | None,
    unsafe: bool,
    ema: EmaMode,
    *,
    channels_last: bool = False,
) -> Any:
    from packager.sources import SourceOptions

    return SourceOptions(
        checkpoint=checkpoint,
        builder=builder,
        custom_objects=custom_objects,
        unsafe=unsafe,
        ema=ema,
        channels_last=channels_last,
    )


def proof_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The flags that shape the signature and its proof (shared by inspect and convert)."""
    for option in reversed(
        [
            click.option("--inputs", help="Comma-separated input tensor or op names (default: discovered)."),
            click.option("--outputs", help="Comma-separated output tensor or op names (default: discovered)."),
            click.option(
                "--towers",
                type=click.Choice(TOWER_MODES),
                default="auto",
                show_default=True,
                help="Multi-GPU tower graphs: one batch across all towers (merge), a signature per tower "
                "(split), tower 0 alone (single); auto merges when towers exist.",
            ),
            click.option(
                "--allow-op",
                "allowed_ops",
                multiple=True,
                metavar="OP",
                help="Let a denied op type (ReadFile, PyFunc, PrintV2, ...) onto the serving path; may repeat.",
            ),
            click.option(
                "--constant",
                "constants",
                multiple=True,
                metavar="NAME=VALUE",
                help="Fix a control placeholder (e.g. keep_prob=1.0, training=false); may repeat.",
            ),
            click.option(
                "--batchnorm",
                type=click.Choice(BATCHNORM_MODES),
                default="auto",
                show_default=True,
                help="Batch norm on batch statistics: refuse it (auto), rewrite it to the moving mean and "
                "variance (inference), or serve it as it is (batch).",
            ),
            click.option(
                "--allow-random",
                is_flag=True,
                help="Serve a deliberately stochastic model (random ops on the serving path).",
            ),
            click.option(
                "--batch-dependent", is_flag=True, help="Serve outputs that mix the samples of a batch on purpose."
            ),
            click.option(
                "--channels-last",
                is_flag=True,
                help="ONNX source: serve inputs and outputs of rank 3 to 5 channels-last (NHWC) instead of as "
                "the model declares them (NCHW).",
            ),
            click.option(
                "--sample-inputs",
                type=click.Path(path_type=Path),
                help="Real inputs for the proof, goldens and warmup: .npz, TF Serving REST JSON, or "
                "PredictionLog TFRecords.",
            ),
            click.option(
                "--tolerance",
                type=click.FloatRange(min=0, min_open=True),
                default=1e-5,
                show_default=True,
                help="Largest allowed difference to the source: |a-b| <= tol*(1+|b|).",
            ),
        ]
    ):
        function = option(function)
    return source_options(function)


def _proof_options(flags: dict[str, Any]) -> dict[str, Any]:
    """ProofOptions keyword arguments from the flags of ``proof_options``."""
    return {
        "inputs": _split(flags["inputs"]),
        "outputs": _split(flags["outputs"]),
        "towers": flags["towers"],
        "allowed_ops": list(flags["allowed_ops"]),
        "constants": list(flags["constants"]),
        "batchnorm": flags["batchnorm"],
        "allow_random": flags["allow_random"],
        "batch_dependent": flags["batch_dependent"],
        "sample_inputs": flags["sample_inputs"],
        "tolerance": flags["tolerance"],
        "source": _source_options(
            flags["checkpoint"],
            flags["builder"],
            flags["custom_objects"],
            flags["unsafe"],
            flags["ema"],
            channels_last=flags["channels_last"],
        ),
    }


def _print_readiness(readiness: dict[str, dict[str, str]]) -> None:
    for check, verdict in readiness.items():
        _stdout.print(
            f"    {check.replace('_', ' ')}: {verdict['status']}"
            + (f" — {verdict['detail']}" if verdict["status"] != "passed" else ""),
            markup=False,
        )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tfpack")
def cli() -> None:
    """tfpack: convert, sign, build, smoke-test and deploy TensorFlow Serving models."""


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@proof_options
@json_option
def inspect(source: Path, as_json: bool, **flags: Any) -> None:
    """Show the signature convert would write and each readiness verdict, without writing anything."""
    from packager.convert import ProofOptions
    from packager.inspection import inspect_source

    options = ProofOptions(**_proof_options(flags))
    with _progress(as_json) as progress:
        report = _run(lambda: inspect_source(source, options, progress))

    def human(r: Any) -> None:
        _stdout.print(f"{r.path}: {r.source_format}", markup=False)
        for title, refs in (("inputs", r.inputs), ("outputs", r.outputs)):
            _stdout.print(f"  {title}:", markup=False)
            for ref in refs:
                shape = (
                    "?" if ref.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in ref.shape) + "]"
                )
                _stdout.print(f"    {ref.key:<24} {ref.dtype:<8} {shape:<16} {ref.tensor_name}", markup=False)
        _stdout.print(
            f"  ops: {r.op_count} in the source, {r.serving_op_count} in the serving graph; variables: {r.variable_count}, "
            f"constants: {r.constant_count}, training machinery: {r.training_ops}",
            markup=False,
        )
        if r.devices:
            _stdout.print(f"  devices: {', '.join(r.devices)}", markup=False)
        for control in r.controls:
            fix = "folded to its default" if control.has_default else f"needs --constant {control.name}=VALUE"
            _stdout.print(f"  control placeholder: {control.name} ({control.dtype}, {fix})", markup=False)
        if len(r.candidates) > 1:
            ranked = ", ".join(f"{c.op_name} (needs {', '.join(sorted(c.placeholders))})" for c in r.candidates[:6])
            _stdout.print(f"  output candidates, deepest first: {ranked}", markup=False)
        for candidate in r.set_aside:
            _stdout.print(f"  set aside (training sink): {candidate.op_name}", markup=False)
        if r.training_subgraphs:
            found = ", ".join(f"{kind} ({count} ops)" for kind, count in r.training_subgraphs.items())
            _stdout.print(f"  training machinery (not served): {found}", markup=False)
        if r.towers is not None:
            _stdout.print(
                f"  towers: {r.towers.count} ({', '.join(t.scope for t in r.towers.towers)}), "
                f"inputs {', '.join(r.towers.input_roles)}, outputs {', '.join(r.towers.output_roles)}",
                markup=False,
            )
            for tower in r.towers.towers:
                _stdout.print(
                    f"    {tower.scope}: device {tower.device or '(none)'}; "
                    f"{', '.join(tower.inputs)} -> {', '.join(tower.outputs)}",
                    markup=False,
                )
        for key, value in sorted(r.details.items()):
            if value in ([], {}, None):
                continue
            shown = json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
            _stdout.print(f"  {key}: {shown}", markup=False)
        _stdout.print("  serving readiness:", markup=False)
        _print_readiness(r.readiness)

    _emit(report, as_json, human)


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Model name (a plain name: letters, digits, . _ -).")
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    default=Path("models"),
    show_default=True,
    help="Writes OUTPUT_DIR/NAME/VERSION.",
)
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1, max=2**63 - 1),
    default=None,
    help="Version number [default: one more than the highest existing, else 1].",
)
@proof_options
@json_option
def convert(source: Path, name: str, output_dir: Path, version: int | None, as_json: bool, **flags: Any) -> None:
    """Convert SOURCE into a verified SavedModel version dir OUTPUT_DIR/NAME/N."""
    from packager.convert import ConvertOptions
    from packager.convert import convert as convert_source

    options = ConvertOptions(name=name, output_dir=output_dir, version=version, **_proof_options(flags))
    with _progress(as_json) as progress:
        result = _run(lambda: convert_source(source, options, progress))

    def human(r: Any) -> None:
        towers = f", towers {r.tower_mode}" if r.tower_mode != "off" else ""
        _stdout.print(
            f"wrote {r.version_dir} ({r.source_format}{towers}; signatures: {', '.join(r.signatures)})", markup=False
        )
        _stdout.print(f"  inputs:  {', '.join(f'{i.key} {i.dtype}' for i in r.inputs)}", markup=False)
        _stdout.print(f"  outputs: {', '.join(f'{o.key} {o.dtype}' for o in r.outputs)}", markup=False)
        _stdout.print(
            f"  equal to the {r.reference}: max |error| {r.max_abs_error:.3g} (tolerance {r.tolerance:g})", markup=False
        )
        _stdout.print("  serving readiness:", markup=False)
        _print_readiness(r.readiness)

    _emit(result, as_json, human)


@cli.command()
@click.argument("version_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", required=True, type=click.Choice(["tflite", "tfjs", "frozen-pb"]))
@click.option(
    "--quantize",
    type=click.Choice(["none", "dynamic", "float16"]),
    default="none",
    show_default=True,
    help="TFLite weight quantization.",
)
@click.option("--select-tf-ops", is_flag=True, help="Let TFLite use TensorFlow kernels for ops its builtins lack.")
@click.option(
    "--tolerance",
    type=float,
    default=None,
    help="Bound of the proof [default: the conversion's; 0.05 for dynamic, 0.01 for float16].",
)
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Writes OUTPUT_DIR/NAME.pb|.tflite|_tfjs/ (or give --into-version).",
)
@click.option(
    "--into-version",
    is_flag=True,
    help="--format tflite: write model.tflite into the unsigned VERSION_DIR itself, served by TF Serving's TFLite path.",
)
@json_option
def export(
    version_dir: Path,
    fmt: str,
    quantize: str,
    select_tf_ops: bool,
    tolerance: float | None,
    output_dir: Path | None,
    into_version: bool,
    as_json: bool,
) -> None:
    """Export VERSION_DIR to another format, proved against its goldens in that format's runtime."""
    from packager.formats import export_version

    with _progress(as_json) as progress:
        result = _run(
            lambda: export_version(
                version_dir,
                fmt,
                output_dir,
                quantize=quantize,
                select_tf_ops=select_tf_ops,
                tolerance=tolerance,
                into_version=into_version,
                progress=progress,
            ),
            as_json,
        )

    def human(r: Any) -> None:
        _stdout.print(f"wrote {r.path} ({r.format}, {r.bytes} bytes, sha256 {r.sha256[:12]})", markup=False)
        _stdout.print(f"  inputs:  {', '.join(f'{k} {v}' for k, v in r.inputs.items())}", markup=False)
        _stdout.print(f"  outputs: {', '.join(f'{k} {v}' for k, v in r.outputs.items())}", markup=False)
        errors = ", ".join(f"{k} {v:.3g}" for k, v in r.max_abs_error.items())
        _stdout.print(
            f"  equal to the goldens in {r.runtime}: max |error| {errors} (tolerance {r.tolerance:g})", markup=False
        )
        if r.select_tf_ops_needed:
            _stdout.print(f"  Select TF ops: {', '.join(r.select_tf_ops_needed)}", markup=False)
        if r.served_max_abs_error is not None:
            served = ", ".join(f"{k} {v:.3g}" for k, v in r.served_max_abs_error.items())
            _stdout.print(f"  served from it by the model server's TFLite loader: max |error| {served}", markup=False)
            _stdout.print(f"  sign the version dir now: tfpack sign {r.version_dir} ...", markup=False)

    _emit(result, as_json, human)


@cli.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--allow-op", "allowed_ops", multiple=True, metavar="OP", help="An op type to accept; may repeat.")
@source_options
@json_option
def scan(
    target: Path,
    allowed_ops: tuple[str, ...],
    checkpoint: Path | None,
    builder: str | None,
    custom_objects: str | None,
    unsafe: bool,
    ema: EmaMode,
    as_json: bool,
) -> None:
    """Scan a source or a version dir for ops that touch files, run Python or print; exit 3 if any."""
    from packager.scanning import scan_target

    options = _source_options(checkpoint, builder, custom_objects, unsafe, ema)
    with _progress(as_json) as progress:
        result = _run(lambda: scan_target(target, options, frozenset(allowed_ops), progress), as_json)
    _emit(result, as_json, lambda r: _stdout.print(r.summary(), markup=False))


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1, required=True, metavar="VERSION_DIR | diff OLD NEW")
@json_option
def contract(args: tuple[str, ...], as_json: bool) -> None:
    """Show a version's serving contract, or diff two versions (exit 5 on a breaking change)."""
    from packager.contract import Contract, ContractDiff, diff_contracts, read_contract

    result: Contract | ContractDiff
    if len(args) == 1:
        result = _run(lambda: read_contract(Path(args[0])), as_json)
    elif len(args) == 3 and args[0] == "diff":
        result = _run(lambda: diff_contracts(Path(args[1]), Path(args[2])), as_json)
    else:
        raise click.UsageError("usage: tfpack contract VERSION_DIR | tfpack contract diff OLD NEW")
    _emit(result, as_json, lambda r: _stdout.print(r.summary(), markup=False))


@cli.command()
@click.argument("version_dir", type=click.Path(path_type=Path))
@click.option("--key", "key", type=click.Path(path_type=Path), help="EC private key (PEM), optionally encrypted.")
@click.option("--pkcs11-uri", help="RFC 7512 pkcs11: URI of a key in a PKCS#11 token, instead of --key.")
@click.option("--cert", "certificate", type=click.Path(path_type=Path), help="Signing certificate (PEM).")
@click.option(
    "--chain",
    "chain",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Certificate chain (PEM), with --cert; may repeat.",
)
@click.option(
    "--prompt-password",
    is_flag=True,
    help=f"Ask for the key's password or the token's PIN (or set {ENV_KEY_PASSWORD}; never pass it as an argument).",
)
@click.option(
    "--allow-op",
    "allowed_ops",
    multiple=True,
    metavar="OP",
    help="Vouch for an op 'tfpack convert --allow-op' let onto the serving path; may repeat.",
)
@json_option
def sign(
    version_dir: Path,
    key: Path | None,
    pkcs11_uri: str | None,
    certificate: Path | None,
    chain: tuple[Path, ...],
    prompt_password: bool,
    allowed_ops: tuple[str, ...],
    as_json: bool,
) -> None:
    """Sign VERSION_DIR into VERSION_DIR/model.sig (OpenSSF model-signing bundle)."""
    from packager.signing import sign as sign_version_dir

    if (key is None) == (pkcs11_uri is None):
        raise click.UsageError("give exactly one of --key KEY.pem or --pkcs11-uri URI")
    if chain and certificate is None:
        raise click.UsageError("--chain goes with --cert")
    password_text = os.environ.get(ENV_KEY_PASSWORD)
    if prompt_password:
        if not sys.stdin.isatty():
            raise click.UsageError(f"--prompt-password needs a terminal: set {ENV_KEY_PASSWORD} instead")
        password_text = click.prompt("key password" if key else "token PIN", hide_input=True, err=True)
    password = password_text.encode() if password_text else None
    with _progress(as_json) as progress:
        result = _run(
            lambda: sign_version_dir(
                version_dir,
                key,
                password=password,
                certificate=certificate,
                chain=list(chain),
                pkcs11_uri=pkcs11_uri,
                allowed_ops=frozenset(allowed_ops),
                progress=progress,
            )
        )
    _emit(
        result,
        as_json,
        lambda r: _stdout.print(
            f"signed {r.files} files of {r.version_dir} -> {r.signature} ({r.to_json()['digest']})", markup=False
        ),
    )


@cli.command()
@click.argument("version_dir", type=click.Path(path_type=Path))
@click.option("--public-key", type=click.Path(path_type=Path), help="EC public key (PEM).")
@click.option(
    "--cert-chain",
    "cert_chain",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Certificate chain (PEM) to verify a certificate signature; may repeat.",
)
@json_option
def verify(version_dir: Path, public_key: Path | None, cert_chain: tuple[Path, ...], as_json: bool) -> None:
    """Verify VERSION_DIR against its model.sig; exit 3 on any mismatch."""
    from packager.signing import verify as verify_version_dir

    if (public_key is None) == (not cert_chain):
        raise click.UsageError("give exactly one of --public-key or --cert-chain")
    with _progress(as_json) as progress:
        result = _run(
            lambda: verify_version_dir(version_dir, public_key, certificate_chain=list(cert_chain), progress=progress)
        )
    _emit(
        result,
        as_json,
        lambda r: _stdout.print(f"verified {r.files} files of {r.version_dir} ({r.to_json()['digest']})", markup=False),
    )


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--tag", required=True, help="Image tag, e.g. registry.example.com/models/NAME:1.")
@click.option(
    "--base",
    default="embedded",
    show_default=True,
    help="'embedded' (tfpack's runtime, built here) or a TF Serving image, e.g. tensorflow/serving:2.21.0.",
)
@click.option(
    "--public-key",
    type=click.Path(path_type=Path),
    help="Public key the image's entrypoint verifies every model.sig with.",
)
@click.option(
    "--cert-chain",
    "cert_chain",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Instead of a key: certificate chain (PEM) certificate signatures must chain to; may repeat.",
)
@click.option("--allow-unsigned", is_flag=True, help="Serve unsigned models (recorded in the image labels).")
@click.option(
    "--allow-reload-config",
    is_flag=True,
    help="Let ModelService.HandleReloadConfigRequest change the served models at run time, each "
    "new version dir verified first (embedded base only; otherwise reloads are refused).",
)
@click.option(
    "--label",
    "version_labels",
    multiple=True,
    metavar="NAME:LABEL=N",
    help="A version label (e.g. half:stable=2) written into the model config; N must be a version "
    "of NAME in the image. May repeat.",
)
@click.option(
    "--monitoring",
    is_flag=True,
    help="Serve Prometheus metrics at /monitoring/prometheus/metrics on the REST port.",
)
@click.option(
    "--batching",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="A text-format BatchingParameters file: baked into the image, server-side batching on.",
)
@click.option(
    "--models-from-volume",
    is_flag=True,
    help="Bake no model: the image serves the verified versions from one read-only volume mounted at "
    "/models, each checked at every start against the signed digest recorded here (tfpack k8s "
    "--models-from-volume PVC). Not with --allow-unsigned.",
)
@click.option("--push", is_flag=True, help="Push the tag after building and print its digest.")
@json_option
def build(
    model_dir: Path,
    tag: str,
    base: str,
    public_key: Path | None,
    cert_chain: tuple[Path, ...],
    allow_unsigned: bool,
    allow_reload_config: bool,
    version_labels: tuple[str, ...],
    monitoring: bool,
    batching: Path | None,
    models_from_volume: bool,
    push: bool,
    as_json: bool,
) -> None:
    """Build the serving image for MODEL_DIR (DIR/NAME with version dirs, or a dir of models)."""
    from packager.image import MODELS_FROM_VOLUME_UNSIGNED, BuildResult, build_image, parse_version_labels

    if public_key is not None and cert_chain:
        raise click.UsageError("give --public-key or --cert-chain, not both")
    if models_from_volume and allow_unsigned:
        raise click.UsageError(MODELS_FROM_VOLUME_UNSIGNED)
    if public_key is None and not cert_chain and not allow_unsigned:
        raise click.UsageError(
            "give --public-key PUB.pem or --cert-chain CHAIN.pem (or --allow-unsigned to serve unsigned models)"
        )
    with _progress(as_json) as progress:
        result = _run(
            lambda: build_image(
                model_dir,
                tag,
                base=base,
                public_key=public_key,
                cert_chain=list(cert_chain),
                allow_unsigned=allow_unsigned,
                allow_reload_config=allow_reload_config,
                version_labels=parse_version_labels(version_labels),
                monitoring=monitoring,
                batching=batching,
                models_from_volume=models_from_volume,
                push=push,
                progress=progress,
            )
        )

    def human(r: BuildResult) -> None:
        _stdout.print(f"built {r.tag} ({r.image_id})", markup=False)
        if r.repo_digest is not None:
            _stdout.print(f"pushed {r.repo_digest}", markup=False)

    _emit(result, as_json, human)


@cli.command()
@click.argument("image", required=False)
@click.option("--target", help="HOST:PORT of a running model server's gRPC port, instead of IMAGE.")
@click.option("--rest-target", help="HOST:PORT of its REST port (with --target).")
@click.option(
    "--version-dir", type=click.Path(path_type=Path), help="The version dir whose goldens to send (with --target)."
)
@click.option(
    "--models-dir",
    type=click.Path(path_type=Path),
    help="Instead of --version-dir: DIR/NAME/N for every model and version the target serves; all are checked.",
)
@click.option(
    "--model",
    help="Model name to test (required with --version-dir); without it, every model the image or --models-dir has.",
)
@click.option(
    "--requests",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Sequential gRPC Predicts to time (latency_ms p50/p95/p99).",
)
@click.option(
    "--load", "load_text", metavar="C,S", help="Also run C concurrent clients for S seconds; any error fails."
)
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path), help="Write JUnit XML here.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=180,
    show_default=True,
    help="Seconds to wait for the model to become AVAILABLE.",
)
@json_option
def smoke(
    image: str | None,
    target: str | None,
    rest_target: str | None,
    version_dir: Path | None,
    models_dir: Path | None,
    model: str | None,
    requests: int,
    load_text: str | None,
    report_path: Path | None,
    junit_path: Path | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Smoke-test IMAGE (or a running server) with the models' contracts and goldens; exit 4 on failure."""
    from packager import smoke as smoke_tests

    if (image is None) == (target is None):
        raise click.UsageError("give either IMAGE or --target HOST:PORT")
    if target is not None and (version_dir is None) == (models_dir is None):
        raise click.UsageError("--target needs --version-dir or --models-dir (where the goldens are), not both")
    if image is not None and version_dir is not None:
        raise click.UsageError("--version-dir goes with --target: an image holds its own goldens")
    if version_dir is not None and model is None:
        raise click.UsageError("--version-dir needs --model NAME")
    load = _run(lambda: smoke_tests.parse_load(load_text)) if load_text is not None else None
    with _progress(as_json) as progress:
        if image is not None:
            report = _run(
                lambda: smoke_tests.smoke_image(
                    image,
                    model,
                    report_path=report_path,
                    junit_path=junit_path,
                    timeout=timeout,
                    requests=requests,
                    load=load,
                    models_dir=models_dir,
                    progress=progress,
                ),
                as_json,
            )
        else:
            assert target is not None  # one of IMAGE or --target, checked above
            address = target
            report = _run(
                lambda: smoke_tests.smoke_target(
                    address,
                    model,
                    version_dir,
                    models_dir=models_dir,
                    rest_target=rest_target,
                    report_path=report_path,
                    junit_path=junit_path,
                    timeout=timeout,
                    requests=requests,
                    load=load,
                    progress=progress,
                ),
                as_json,
            )
    _emit(report, as_json, lambda r: _stdout.print(r.summary(), markup=False))


@cli.command()
@click.option("--image", required=True, help="The image to deploy (a tag is pinned to its digest).")
@click.option("--model", required=True, help="Model name.")
@click.option("--output-dir", required=True, type=click.Path(path_type=Path), help="Writes a kustomize tree here.")
@click.option(
    "--gpus",
    type=click.IntRange(min=0),
    default=None,
    help="GPUs per replica [default: the tower count of a merged tower model, else 0].",
)
@click.option("--replicas", type=click.IntRange(min=1), default=2, show_default=True, help="Minimum replicas.")
@click.option("--namespace", default=None, help="Namespace for every object (default: kubectl's context).")
@click.option("--canary", "canary", default=None, metavar="IMAGE", help="A canary Deployment of this image.")
@click.option(
    "--canary-weight",
    type=click.IntRange(min=1, max=99),
    default=None,
    metavar="P",
    help="The canary's share of the pods, in percent.",
)
@click.option(
    "--models-from-volume",
    default=None,
    metavar="PVC",
    help="Serve the version dirs on this PersistentVolumeClaim (an image built with --models-from-volume).",
)
@click.option("--allow-tag", is_flag=True, help="Deploy the image tag as given instead of pinning its digest.")
@json_option
def k8s(
    image: str,
    model: str,
    output_dir: Path,
    gpus: int | None,
    replicas: int,
    namespace: str | None,
    canary: str | None,
    canary_weight: int | None,
    models_from_volume: str | None,
    allow_tag: bool,
    as_json: bool,
) -> None:
    """Render Kubernetes manifests (kustomize base, components and cpu/gpu/canary overlays) for IMAGE."""
    from packager.k8s import render_manifests

    with _progress(as_json) as progress:
        result = _run(
            lambda: render_manifests(
                image,
                model,
                output_dir,
                gpus=gpus,
                replicas=replicas,
                namespace=namespace,
                canary=canary,
                canary_weight=canary_weight,
                models_from_volume=models_from_volume,
                allow_tag=allow_tag,
                progress=progress,
            )
        )
    _emit(result, as_json, lambda r: _stdout.print(r.summary(), markup=False))


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled, `docker stop`, a Kubernetes Job deleted) raised in the main
    thread, so that every clean-up that runs on Ctrl-C runs on it too: a smoke test's container
    is removed, a half-written output is discarded."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    try:
        cli.main(args=argv, prog_name="tfpack", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:  # bad usage: click's message on one line, exit 2
        context = getattr(exc, "ctx", None)
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        message = " ".join(exc.format_message().split())
        _stderr.print(f"tfpack: error: {message}{hint}", markup=False)
        return 2
    except click.exceptions.Abort:
        _stderr.print("tfpack: aborted", markup=False)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
