"""Benchmark ``tfpack convert`` against bare TensorFlow load + save of the same model.

Three ~100 MB sources are built in a temp dir: a Keras 3 ResNet50 (random weights) saved as
.keras, the same network frozen into a binary GraphDef, and a tf_keras (Keras 2) ResNet50 saved as
HDF5 (.h5). For each, two jobs run, each in a fresh Python process so that TensorFlow's import and
caches cost both sides the same:

    baseline  .keras: keras.models.load_model + model.export (a TF2 SavedModel).
              .h5: tf_keras.models.load_model + tf.saved_model.save (a TF2 SavedModel; it also
              traces each layer's call for Keras' SavedModel metadata, so it is slower than
              tf_keras's leaner model.export (measured once: ~1.2x faster, ~10% lower peak RSS)).
              GraphDef: parse, import, tf.compat.v1.saved_model.Builder with a predict signature.
    tfpack    packager.convert.convert on the same file, every check included: load, freeze,
              prune, run the source twice (determinism), write, reload and compare on generated
              inputs, a batch of 3 vs 3 batches of 1 (batch independence), goldens, warmup,
              provenance.

Reported per model: wall time of the whole process (the figure the time target applies to), the
time after ``import tensorflow`` (work), CPU time (user + system; other load on a shared host
stretches wall time, not CPU time), peak RSS (the child's ru_maxrss from wait4), the tfpack/baseline
ratios, each against its target (time <= 1.5x, peak RSS <= 2.0x; issue 9), and tfpack's time and
peak RSS per convert progress step. The median of ``--repeat`` runs is shown.
``--profile DIR`` adds one cProfile'd tfpack run per model.

This is a report, not a test: it exits 0 whatever the ratios are.

    .venv/bin/python bench/convert.py [--repeat 3] [--profile DIR] [--models keras,h5,frozen_graph]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TARGET_TIME_RATIO = 1.5
TARGET_RSS_RATIO = 2.0
MODELS = ("keras", "h5", "frozen_graph")
SOURCE_FILES = {"keras": "resnet50.keras", "h5": "resnet50.h5", "frozen_graph": "resnet50_frozen.pb"}
FROZEN_META = "resnet50_frozen.json"  # the frozen graph's input and output tensor names
INPUT_KEY = "images"
CHILD_TIMEOUT_SECONDS = 900


# ---------------------------------------------------------------------------------------------
# Child jobs: each runs in its own process and writes a JSON result file.


def _import_tensorflow(via_tfpack: bool):  # -> the tensorflow module
    """Import TensorFlow the way the measured side does (tfpack hides TF's start-up noise)."""
    if via_tfpack:
        from packager.tf_runtime import tensorflow

        return tensorflow()
    import tensorflow as tf

    return tf


def build_sources(workdir: Path) -> dict[str, object]:
    """Write the .keras file and the frozen GraphDef of one random-weight Keras 3 ResNet50, and the
    .h5 file of a random-weight tf_keras ResNet50, into ``workdir``."""
    tf = _import_tensorflow(via_tfpack=False)
    import keras
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None)
    model.save(workdir / SOURCE_FILES["keras"])

    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name=INPUT_KEY)])
    def serve(images):  # type: ignore[no-untyped-def]
        return {"probabilities": model(images, training=False)}

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    (workdir / SOURCE_FILES["frozen_graph"]).write_bytes(frozen.graph.as_graph_def().SerializeToString())
    meta = {"input": frozen.inputs[0].name, "output": frozen.outputs[0].name}
    (workdir / FROZEN_META).write_text(json.dumps(meta))

    import tf_keras  # Keras 2: the Keras that writes .h5 files with keras_version 2.x

    tf_keras.utils.set_random_seed(0)
    legacy = tf_keras.applications.ResNet50(weights=None)
    legacy.save(workdir / SOURCE_FILES["h5"])
    return {"parameters": int(model.count_params())}


def baseline_keras(source: Path, output: Path) -> None:
    """Bare Keras: load the file and export a SavedModel."""
    import keras

    model = keras.models.load_model(source, compile=False)
    model.export(str(output))


def baseline_h5(source: Path, output: Path) -> None:
    """Bare tf_keras: load the HDF5 file and save a TF2 SavedModel."""
    tf = _import_tensorflow(via_tfpack=False)
    import tf_keras

    model = tf_keras.models.load_model(source, compile=False)
    tf.saved_model.save(model, str(output))


def baseline_frozen_graph(source: Path, output: Path) -> None:
    """Bare TF1: parse and import the GraphDef, save it with a predict signature."""
    tf = _import_tensorflow(via_tfpack=False)
    v1 = tf.compat.v1
    names = json.loads((source.parent / FROZEN_META).read_text())
    graph_def = v1.GraphDef()
    graph_def.ParseFromString(source.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        signature = v1.saved_model.signature_def_utils.predict_signature_def(
            inputs={INPUT_KEY: graph.get_tensor_by_name(names["input"])},
            outputs={"probabilities": graph.get_tensor_by_name(names["output"])},
        )
        builder = v1.saved_model.Builder(str(output))
        with v1.Session(graph=graph) as session:
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature})
        builder.save()


BASELINES = {".keras": baseline_keras, ".h5": baseline_h5, ".pb": baseline_frozen_graph}  # by source suffix


def peak_rss_mib_so_far() -> float:
    """This process's peak resident set size until now (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class StepClock:
    """A tfpack Progress that records when each step convert reports starts, and the peak RSS then."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float, float]] = []

    def step(self, message: str) -> None:
        self.steps.append((message, time.perf_counter(), peak_rss_mib_so_far()))


def tfpack_convert(source: Path, output: Path, profile_to: Path | None) -> dict[str, object]:
    """tfpack: the full conversion, equivalence check and warmup included; returns its step times."""
    from packager.convert import ConvertOptions, convert

    clock = StepClock()
    options = ConvertOptions(name="bench", output_dir=output)
    if profile_to is None:
        convert(source, options, progress=clock)
    else:
        import cProfile

        profiler = cProfile.Profile()
        profiler.runcall(convert, source, options, progress=clock)
        profiler.dump_stats(profile_to)
    # A step's peak is the high-water mark when the next one starts (or convert returns).
    ends = [(t, rss) for _, t, rss in clock.steps[1:]] + [(time.perf_counter(), peak_rss_mib_so_far())]
    return {
        "steps": [
            [_step_label(message), end - start, peak] for (message, start, _), (end, peak) in zip(clock.steps, ends)
        ]
    }


# convert's progress messages (by their start; some carry paths or tensor names) and what runs
# until the next one.
STEP_LABELS = (
    ("loading", "load + freeze + plan"),
    ("inputs", "prune + op scan"),
    ("running the source again", "source run again (determinism)"),
    ("running the source", "reference run (goldens, finite)"),
    ("writing SavedModel", "write SavedModel"),
    ("reloading the SavedModel", "reload + compare"),
    ("one sample alone", "batch independence + goldens/warmup/provenance"),
)


def _step_label(message: str) -> str:
    return next((label for prefix, label in STEP_LABELS if message.startswith(prefix)), message)


def run_child(args: argparse.Namespace) -> None:
    """Entry point of a child process: import TF, do one job, write timings to --result."""
    started = time.perf_counter()
    _import_tensorflow(via_tfpack=args.child == "tfpack")
    imported = time.perf_counter()
    extra: dict[str, object] = {}
    if args.child == "build":
        extra = build_sources(args.source)
    elif args.child == "baseline":
        BASELINES[args.source.suffix](args.source, args.output)
    else:
        extra = tfpack_convert(args.source, args.output, args.profile_to)
    done = time.perf_counter()
    timings = {"import_seconds": imported - started, "work_seconds": done - imported}
    args.result.write_text(json.dumps({**timings, **extra}))


# ---------------------------------------------------------------------------------------------
# Parent: spawn the children, measure them from outside, summarise.


@dataclass(frozen=True)
class Run:
    """One child process, measured."""

    wall_seconds: float  # process start to exit, as the parent saw it
    import_seconds: float  # `import tensorflow`, as the child saw it
    work_seconds: float  # after `import tensorflow`, as the child saw it
    cpu_seconds: float  # user + system (wait4): less sensitive than wall time to other load on the host
    peak_rss_mib: float  # the child's ru_maxrss (wait4)
    result: dict[str, object]


def spawn(role: str, source: Path, output: Path, scratch: Path, profile_to: Path | None = None) -> Run:
    """Run one child job in a fresh interpreter; its stdout/stderr are shown only if it fails."""
    result_file = scratch / f"result-{role}-{time.monotonic_ns()}.json"
    log_file = scratch / "child.log"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        role,
        "--source",
        str(source),
        "--output",
        str(output),
        "--result",
        str(result_file),
    ]
    if profile_to is not None:
        command += ["--profile-to", str(profile_to)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}  # the same quiet TF for both sides
    with log_file.open("wb") as log:
        started = time.perf_counter()
        child = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parent.parent
        )
        # wait4, not Popen.wait: it returns this child's own rusage (RUSAGE_CHILDREN would give the
        # largest of all children so far).
        deadline = started + CHILD_TIMEOUT_SECONDS
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                child.kill()
                pid, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.stdout.write(log_file.read_text(errors="replace")[-4000:])
        raise SystemExit(f"bench child {role} on {source.name} failed with exit {child.returncode}")
    result = json.loads(result_file.read_text())
    return Run(
        wall_seconds=wall,
        import_seconds=float(result["import_seconds"]),
        work_seconds=float(result["work_seconds"]),
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=usage.ru_maxrss / 1024,
        result=result,
    )


@dataclass
class Measurements:
    """Every run of one side (baseline or tfpack) on one model."""

    runs: list[Run] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs)

    def median_steps(self) -> list[tuple[str, float, float]]:
        """(step, median seconds, median peak RSS MiB by the step's end) of tfpack's convert steps."""
        per_run = [run.result["steps"] for run in self.runs]
        labels = [step[0] for step in per_run[0]]  # type: ignore[union-attr]
        return [
            (
                label,
                statistics.median(steps[i][1] for steps in per_run),  # type: ignore[index]
                statistics.median(steps[i][2] for steps in per_run),
            )  # type: ignore[index]
            for i, label in enumerate(labels)
        ]


def _verdict(ratio: float, target: float) -> str:
    return f"x{ratio:.2f} <= {target}x {'met' if ratio <= target else 'NOT MET'}"


def print_report(sizes: dict[str, int], results: dict[str, dict[str, Measurements]], repeat: int) -> dict[str, bool]:
    """Print the table and the ratios against their targets; return {target: met by every model}."""
    print(
        f"\nmedian of {repeat} run(s); each run a fresh process "
        f"(wall = whole process; import = `import tensorflow`; work = after it)\n"
    )
    header = f"{'model':<14}{'side':<10}{'wall s':>9}{'import s':>10}{'work s':>9}{'CPU s':>9}{'peak RSS MiB':>14}"
    print(header)
    print("-" * len(header))
    met = {"time": True, "rss": True}
    ratio_lines = []
    for model, sides in results.items():
        for side in ("baseline", "tfpack"):
            m = sides[side]
            print(
                f"{model:<14}{side:<10}{m.median('wall_seconds'):>9.2f}{m.median('import_seconds'):>10.2f}"
                f"{m.median('work_seconds'):>9.2f}"
                f"{m.median('cpu_seconds'):>9.2f}{m.median('peak_rss_mib'):>14.0f}"
            )
        base, ours = sides["baseline"], sides["tfpack"]
        ratio = {
            attribute: ours.median(attribute) / base.median(attribute)
            for attribute in ("wall_seconds", "work_seconds", "cpu_seconds", "peak_rss_mib")
        }
        met["time"] &= ratio["wall_seconds"] <= TARGET_TIME_RATIO
        met["rss"] &= ratio["peak_rss_mib"] <= TARGET_RSS_RATIO
        ratio_lines += [
            f"{model} ({sizes[model] / 1e6:.0f} MB)",
            f"    wall time  {_verdict(ratio['wall_seconds'], TARGET_TIME_RATIO)}   (the target's figure)",
            f"    CPU time   {_verdict(ratio['cpu_seconds'], TARGET_TIME_RATIO)}   "
            "(less sensitive to other load on the host)",
            f"    work only  x{ratio['work_seconds']:.2f}   (after `import tensorflow`; no target)",
            f"    peak RSS   {_verdict(ratio['peak_rss_mib'], TARGET_RSS_RATIO)}",
        ]
    print(
        f"\ntfpack / baseline, against issue 9's targets (time <= {TARGET_TIME_RATIO}x, "
        f"peak RSS <= {TARGET_RSS_RATIO}x)"
    )
    for line in ratio_lines:
        print("  " + line)
    print("\ntfpack convert steps (median): seconds, and peak RSS MiB by the step's end")
    for model, sides in results.items():
        print(f"  {model}")
        for label, seconds, peak in sides["tfpack"].median_steps():
            print(f"    {label:<50}{seconds:>7.2f} s{peak:>8.0f} MiB")
    return met


def print_profile(path: Path, model: str, top: int = 25) -> None:
    import pstats

    print(f"\ncProfile of tfpack convert on {model} ({path}), top {top} by cumulative time")
    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="runs per side and model; the median is reported")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--profile", type=Path, help="also run tfpack once per model under cProfile, stats here")
    parser.add_argument("--child", choices=("build", "baseline", "tfpack"), help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return 0
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or args.repeat < 1:
        parser.error(f"--models takes {','.join(MODELS)}; --repeat must be >= 1")

    scratch = Path(tempfile.mkdtemp(prefix="tfpack-bench-convert-"))
    try:
        print(
            "building ResNet50 (random weights) as .keras, as a frozen GraphDef and (tf_keras) as .h5 ...", flush=True
        )
        built = spawn("build", scratch, scratch / "unused", scratch)
        sizes = {m: (scratch / SOURCE_FILES[m]).stat().st_size for m in MODELS}
        print(
            f"  {built.result['parameters']:,} parameters; "
            + ", ".join(f"{SOURCE_FILES[m]} {sizes[m] / 1e6:.0f} MB" for m in MODELS),
            flush=True,
        )
        results: dict[str, dict[str, Measurements]] = {
            m: {"baseline": Measurements(), "tfpack": Measurements()} for m in models
        }
        for attempt in range(1, args.repeat + 1):
            for model in models:
                # Alternate the sides so drift (page cache, thermal) does not favour one of them.
                for side in ("baseline", "tfpack"):
                    output = scratch / f"out-{side}"
                    run = spawn(side, scratch / SOURCE_FILES[model], output, scratch)
                    shutil.rmtree(output, ignore_errors=True)
                    results[model][side].runs.append(run)
                    print(
                        f"  run {attempt}/{args.repeat} {model:<13}{side:<9}wall {run.wall_seconds:6.2f} s  "
                        f"import {run.import_seconds:5.2f} s  work {run.work_seconds:6.2f} s  "
                        f"CPU {run.cpu_seconds:6.2f} s  "
                        f"peak RSS {run.peak_rss_mib:6.0f} MiB",
                        flush=True,
                    )
        met = print_report(sizes, results, args.repeat)
        print(
            f"\ntargets over {', '.join(models)}: time (wall) <= {TARGET_TIME_RATIO}x baseline "
            f"{'met' if met['time'] else 'NOT MET'}; peak RSS <= {TARGET_RSS_RATIO}x baseline "
            f"{'met' if met['rss'] else 'NOT MET'}  (a report: the exit status is 0 either way)"
        )
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for model in models:
                stats_file = args.profile.resolve() / f"tfpack-{model}.prof"
                output = scratch / "out-profile"
                spawn("tfpack", scratch / SOURCE_FILES[model], output, scratch, profile_to=stats_file)
                shutil.rmtree(output, ignore_errors=True)
                print_profile(stats_file, model)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
