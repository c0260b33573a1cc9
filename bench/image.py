"""Benchmark tfpack's serving images: model-only rebuild, size over the base, smoke, start-up.

A ~100 MB model (x[512] -> tanh(x W1[512x24576]) W2[24576x512], float32 random weights) is
converted with ``tfpack convert`` and signed; variants that differ only in their weights (another
seed) stand for "the model changed". On the local Docker engine, with the embedded base built
(the first build below builds whatever is not cached yet, and is not measured):

  1. rebuild  ``packager.image.build_image`` of a changed model, the previous build cached,
              against the baseline ``docker build`` of ``FROM <runtime base>`` +
              ``COPY model /models/wide/1`` with the same changed model on the same engine (the
              least any build can do: one new layer of model bytes).      goal <= 10 s
  2. size     (image size - runtime base size) / model bytes, and the baseline image's ratio
              (the model layer alone).                                    goal <= 1.05
  3. smoke    ``packager.smoke.smoke_image`` wall time on the ready image (start, wait for
              AVAILABLE, every check, remove), against its own start-to-AVAILABLE figure (4).
                                                                          goal <= 30 s
  4. start    container start to the model AVAILABLE over gRPC: the image as built
              (verify-then-serve entrypoint) against the same image with the model server started
              directly (entrypoint overridden: no verification), the baseline. No goal.

Only the public ``build_image`` and ``smoke_image`` are used, so the bench runs whatever the image
assembly inside them is. The median of ``--repeat`` rounds is reported; each round uses a new
variant, so each rebuild has a model layer the engine does not hold yet. A report, not a test: it
exits 0 whatever the figures. Every image and container it makes is removed again.

    .venv/bin/python bench/image.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import grpc
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from packager import _runtime_base
from packager.image import build_image
from packager.smoke import smoke_image

MODEL = "wide"
INPUT_WIDTH = 512
HIDDEN_WIDTH = 24576  # 2 x 512 x 24576 float32 weights: 100.7 MB
GOAL_REBUILD_S = 10.0
GOAL_SIZE_RATIO = 1.05
GOAL_SMOKE_S = 30.0
GOAL_BASE_BYTES = 1.0e9  # issue 13's goal for the embedded base itself
AVAILABLE_DEADLINE_S = 300.0
REPOSITORY = "tfpack-bench/image"
# The embedded server as the image's entrypoint would exec it, minus the verification before it.
DIRECT_SERVER = [
    f"{_runtime_base.VENV}/bin/python",
    "-I",
    "-m",
    "serving.model_server",
    "--port=8500",
    "--rest_api_port=8501",
    f"--model_name={MODEL}",
    f"--model_base_path=/models/{MODEL}",
]


class _Quiet:
    """A Progress that drops every line (the figures are the output)."""

    def step(self, message: str) -> None:
        del message


# ---------------------------------------------------------------------------------------------
# The model: variants converted and signed as a release engineer would.


def write_signed_variants(workdir: Path, count: int) -> tuple[list[Path], Path]:
    """Convert and sign ``count`` variants of the wide model; return (model base paths, public key)."""
    import tensorflow as tf

    from packager.convert import ConvertOptions, convert
    from packager.signing import sign

    key = ec.generate_private_key(ec.SECP256R1())
    private_key, public_key = workdir / "private.pem", workdir / "public.pem"
    private_key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public_key.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    class Wide(tf.Module):
        def __init__(self, seed: int) -> None:
            super().__init__()
            rng = np.random.default_rng(seed)
            self.w1 = tf.Variable(rng.standard_normal((INPUT_WIDTH, HIDDEN_WIDTH), np.float32) / INPUT_WIDTH**0.5)
            self.w2 = tf.Variable(rng.standard_normal((HIDDEN_WIDTH, INPUT_WIDTH), np.float32) / HIDDEN_WIDTH**0.5)

        @tf.function(input_signature=[tf.TensorSpec([None, INPUT_WIDTH], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.matmul(tf.tanh(tf.matmul(x, self.w1)), self.w2)}

    variants = []
    for seed in range(count):
        module = Wide(seed)
        source = workdir / f"source-{seed}"
        tf.saved_model.save(module, str(source), signatures={"serving_default": module.serve})
        output = workdir / f"variant-{seed}"
        result = convert(source, ConvertOptions(name=MODEL, output_dir=output, version=1))
        sign(result.version_dir, private_key)
        shutil.rmtree(source)
        variants.append(output / MODEL)
        print(f"  variant {seed + 1}/{count}: {_tree_bytes(output / MODEL) / 1e6:.1f} MB, signed", flush=True)
    return variants, public_key


def _tree_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


# ---------------------------------------------------------------------------------------------
# The measurements.


@dataclass
class Round:
    """One round's figures (seconds)."""

    rebuild: float
    baseline_build: float
    smoke: float
    start_to_available: float
    direct_start_to_available: float


@dataclass
class Images:
    """Every tag the bench made, removed at the end."""

    tags: list[str] = field(default_factory=list)

    def new(self, name: str) -> str:
        tag = f"{REPOSITORY}-{name}:{uuid.uuid4().hex[:8]}"
        self.tags.append(tag)
        return tag


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def baseline_build(client: docker.DockerClient, base: str, model: Path, tag: str, scratch: Path) -> float:
    """Seconds ``docker build`` takes for FROM base + COPY of the model's version dir (context laid out first)."""
    context = scratch / f"context-{uuid.uuid4().hex[:8]}"
    shutil.copytree(model / "1", context / "model")
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY model /models/{MODEL}/1\n")
    try:
        return timed(lambda: client.images.build(path=str(context), tag=tag, rm=True, forcerm=True))
    finally:
        shutil.rmtree(context)


@contextmanager
def running(
    client: docker.DockerClient, image: str, entrypoint: list[str] | None = None
) -> Iterator[tuple[float, str]]:
    """Start ``image``; yield (its start time, its gRPC address); remove it however the block ends."""
    started = time.perf_counter()
    container = client.containers.run(
        image, entrypoint=entrypoint, detach=True, ports={"8500/tcp": ("127.0.0.1", None)}
    )
    try:
        container.reload()
        yield started, f"127.0.0.1:{container.ports['8500/tcp'][0]['HostPort']}"
    except Exception:
        print(container.logs(tail=20).decode(errors="replace"), file=sys.stderr)
        raise
    finally:
        container.remove(force=True)


def start_to_available(client: docker.DockerClient, image: str, entrypoint: list[str] | None = None) -> float:
    """Seconds from ``docker run`` to GetModelStatus reporting the model AVAILABLE."""
    with running(client, image, entrypoint) as (started, address), grpc.insecure_channel(address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = MODEL
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        while time.perf_counter() - started < AVAILABLE_DEADLINE_S:
            try:
                reply = stub.GetModelStatus(request, timeout=2)
                if any(status.state == available for status in reply.model_version_status):
                    return time.perf_counter() - started
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise SystemExit(f"{image} did not serve {MODEL} within {AVAILABLE_DEADLINE_S:.0f} s")


def measure_round(
    client: docker.DockerClient,
    number: int,
    model: Path,
    public_key: Path,
    base: str,
    images: Images,
    scratch: Path,
) -> tuple[Round, str, str]:
    """One round on a model variant the engine has not seen; return it, the image and the baseline image."""
    tag, baseline_tag = images.new("tfpack"), images.new("baseline")

    def tfpack_build() -> float:
        return timed(lambda: build_image(model, tag, public_key=public_key, progress=_Quiet()))

    def docker_build() -> float:
        return baseline_build(client, base, model, baseline_tag, scratch)

    # Alternate which side goes first, so that neither always meets a colder page cache.
    if number % 2:
        rebuild, baseline = tfpack_build(), docker_build()
    else:
        baseline, rebuild = docker_build(), tfpack_build()
    smoke = timed(lambda: smoke_image(tag, MODEL))
    if number % 2:
        entrypoint, direct = start_to_available(client, tag), start_to_available(client, tag, DIRECT_SERVER)
    else:
        direct, entrypoint = start_to_available(client, tag, DIRECT_SERVER), start_to_available(client, tag)
    figures = Round(rebuild, baseline, smoke, entrypoint, direct)
    print(
        f"  round {number}: rebuild {rebuild:.1f} s (docker build {baseline:.1f} s), smoke {smoke:.1f} s, "
        f"start to AVAILABLE {entrypoint:.1f} s (server alone {direct:.1f} s)",
        flush=True,
    )
    return figures, tag, baseline_tag


def _verdict(value: float, goal: float) -> str:
    return "met" if value <= goal else "NOT MET"


def print_report(
    client: docker.DockerClient, rounds: list[Round], image: str, baseline_image: str, model_bytes: int
) -> None:
    def median(attribute: str) -> float:
        return statistics.median(getattr(round_, attribute) for round_ in rounds)

    base_bytes = _runtime_base.runtime_base_size(client)
    image_bytes = int(client.images.get(image).attrs["Size"])
    baseline_bytes = int(client.images.get(baseline_image).attrs["Size"])
    size_ratio = (image_bytes - base_bytes) / model_bytes
    baseline_ratio = (baseline_bytes - base_bytes) / model_bytes
    rebuild, docker_build = median("rebuild"), median("baseline_build")
    smoke, available, direct = median("smoke"), median("start_to_available"), median("direct_start_to_available")
    print(f"\nmedian of {len(rounds)} round(s); model {model_bytes / 1e6:.1f} MB (version dir, model.sig included)\n")
    rows = [
        (
            "1 rebuild after a model-only change",
            f"{rebuild:.1f} s",
            f"<= {GOAL_REBUILD_S:.0f} s {_verdict(rebuild, GOAL_REBUILD_S)}",
            f"x{rebuild / docker_build:.2f} docker build FROM base + COPY model ({docker_build:.1f} s)",
        ),
        (
            "2 (image - base) / model bytes",
            f"{size_ratio:.3f}",
            f"<= {GOAL_SIZE_RATIO} {_verdict(size_ratio, GOAL_SIZE_RATIO)}",
            f"baseline image {baseline_ratio:.3f}; image {image_bytes / 1e6:.0f} MB, base {base_bytes / 1e6:.0f} MB",
        ),
        (
            "3 tfpack smoke on a ready image",
            f"{smoke:.1f} s",
            f"<= {GOAL_SMOKE_S:.0f} s {_verdict(smoke, GOAL_SMOKE_S)}",
            f"x{smoke / available:.2f} its start to AVAILABLE ({available:.1f} s)",
        ),
        (
            "4 container start to AVAILABLE",
            f"{available:.1f} s",
            "no goal",
            f"x{available / direct:.2f} the server started directly, no verification ({direct:.1f} s)",
        ),
        (
            "  embedded runtime base size",
            f"{base_bytes / 1e9:.2f} GB",
            f"<= {GOAL_BASE_BYTES / 1e9:.1f} GB {_verdict(base_bytes, GOAL_BASE_BYTES)}",
            _runtime_base.runtime_base_tag(),
        ),
    ]
    for figure, value, goal, versus in rows:
        print(f"{figure:<38}{value:>10}   {goal:<16}  {versus}")
    print("\n(a report, not a test: the exit status is 0 whatever the figures)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="measured rounds, each on a new model variant")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    client = docker.from_env()
    images = Images()
    scratch = Path(tempfile.mkdtemp(prefix="tfpack-bench-image-"))
    try:
        print(f"converting and signing {args.repeat + 1} variants of a ~100 MB model ...", flush=True)
        variants, public_key = write_signed_variants(scratch, args.repeat + 1)
        print("first build (builds and caches whatever is missing; not measured) ...", flush=True)
        first = timed(lambda: build_image(variants[0], images.new("first"), public_key=public_key, progress=_Quiet()))
        base = _runtime_base.runtime_base_tag()
        print(f"  {first:.1f} s on {base}", flush=True)
        rounds = []
        image = baseline_image = ""
        for number, variant in enumerate(variants[1:], start=1):
            figures, image, baseline_image = measure_round(client, number, variant, public_key, base, images, scratch)
            rounds.append(figures)
        print_report(client, rounds, image, baseline_image, _tree_bytes(variants[-1] / "1"))
    finally:
        for tag in reversed(images.tags):
            with suppress(docker.errors.ImageNotFound):
                client.images.remove(tag, force=True)
        shutil.rmtree(scratch, ignore_errors=True)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
