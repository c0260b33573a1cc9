"""tfpack-model-server latency and throughput against an in-process call, in the same run.

Builds two SavedModels in a temp dir: half_plus_two (a tf.Module, y = 0.5x + 2) and a
MobileNetV2-architecture Keras model with random weights (keras.applications.MobileNetV2,
weights=None, exported for serving). For each, the baseline is an in-process call of the same
signature on the same kind of session the server uses (serving.servables.load_servable and
servable.run), and it is compared with tfpack-model-server subprocesses on loopback:

    latency      p50/p99 of sequential calls: in-process, gRPC Predict, REST :predict (kept-alive)
    throughput   requests/s with 1 and 8 concurrent clients: in-process, gRPC with batching off
                 and on (--enable_batching, max_batch_size 8, batch_timeout_micros 2000)

    REST at scale  a ~10 MB JSON :predict body (a batch of 3 images 224x224x3 as floats, as a
                 client writes float32 with tolist(): ~21 bytes a value; 64 such images would
                 be ~200 MB) against gRPC Predict with the same tensor, sequential requests on
                 one kept-alive connection / channel, on MobileNetV2 and on image_half_plus_two
                 (y = 0.5x + 2 over the images: a 10 MB answer too); and the in-process cost of
                 parsing that body into request tensors (serving.rest_json)

Ratios are against the in-process figures of this run. Goals (issue 11): half_plus_two gRPC
p50 <= in-process p50 + 0.5 ms, REST p50 <= gRPC p50 + 0.5 ms; REST throughput on the 10 MB
body >= 0.5x gRPC with the same tensor. Also 8-client gRPC throughput >= 0.8x in-process on
MobileNetV2. Clients run in this process (Python threads), so client-side costs count against
the server figures.

    .venv/bin/python bench/runtime.py [--seconds 4] [--latency-calls 300] [--large-seconds 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from serving import rest_json  # noqa: E402
from serving.servables import SessionOptions, load_servable  # noqa: E402
from tests.servers import ServerHandle, running_model_server  # noqa: E402

GRPC_LATENCY_GOAL_MS = 0.5  # half_plus_two gRPC p50 over in-process p50
REST_LATENCY_GOAL_MS = 0.5  # half_plus_two REST p50 over gRPC p50
REST_THROUGHPUT_GOAL = 0.5  # REST requests/s on the 10 MB body over gRPC's, same tensor
THROUGHPUT_TARGET = 0.8
LARGE_BATCH = 3  # images 224x224x3 in the ~10 MB body
BATCHING_CONFIG = (
    "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 2000 }\n"
    "max_enqueued_batches { value: 100 }\nnum_batch_threads { value: 2 }\n"
)


def write_half_plus_two(base_path: Path) -> None:
    module = tf.Module()
    module.slope, module.offset = tf.Variable(0.5), tf.Variable(2.0)
    module.serving_default = tf.function(
        lambda x: {"y": module.slope * x + module.offset},
        input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")],
    )
    tf.saved_model.save(module, str(base_path / "1"), signatures={"serving_default": module.serving_default})


def write_image_half_plus_two(base_path: Path) -> None:
    module = tf.Module()
    module.serving_default = tf.function(
        lambda x: {"y": 0.5 * x + 2.0},
        input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="x")],
    )
    tf.saved_model.save(module, str(base_path / "1"), signatures={"serving_default": module.serving_default})


def write_mobilenet_v2(base_path: Path) -> None:
    import keras

    model = keras.applications.MobileNetV2(weights=None)
    model.export(str(base_path / "1"), format="tf_saved_model", verbose=False)


class Model:
    """One benchmarked model: its base path, signature names and a request input."""

    def __init__(self, name: str, base_path: Path, x: np.ndarray) -> None:
        self.name = name
        self.base_path = base_path
        self.servable = load_servable(name, 1, base_path / "1", SessionOptions())
        signature = self.servable.signature_defs["serving_default"]
        ((self.alias, info),) = signature.inputs.items()
        self.feed = info.name
        self.fetches = [output.name for output in signature.outputs.values()]
        self.x = x
        self.request = predict_pb2.PredictRequest()
        self.request.model_spec.name = name
        self.request.inputs[self.alias].CopyFrom(tf.make_tensor_proto(x))
        self.rest_body = json.dumps({"instances": x.tolist()}).encode()

    def in_process(self) -> None:
        self.servable.run({self.feed: self.x}, self.fetches)


class LargeRequest:
    """The ~10 MB body and the same tensor as a PredictRequest, for a served model."""

    def __init__(self, name: str, alias: str, x: np.ndarray) -> None:
        self.name = name
        self.request = predict_pb2.PredictRequest()
        self.request.model_spec.name = name
        self.request.inputs[alias].CopyFrom(tf.make_tensor_proto(x))
        self.rest_body = json.dumps({"instances": x.tolist()}).encode()


def parse_ms(model: Model, body: bytes, runs: int = 5) -> float:
    """Best time to turn ``body`` into request tensors as the REST API does (parse, decode)."""
    inputs = dict(model.servable.signature_defs["serving_default"].inputs)
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        rest_json.predict_inputs(rest_json.parse_body(body), inputs)
        best = min(best, time.perf_counter() - started)
    return best * 1000


def percentiles_ms(call: Callable[[], None], calls: int) -> tuple[float, float]:
    for _ in range(max(calls // 10, 3)):  # warm the path first
        call()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(int(len(times) * 0.99), len(times) - 1)]


def throughput(make_call: Callable[[], Callable[[], None]], clients: int, seconds: float) -> float:
    """Requests per second with ``clients`` threads, each with its own caller (channel)."""
    counts = [0] * clients
    stop = threading.Event()
    calls = [make_call() for _ in range(clients)]
    for call in calls:
        call()  # connect and warm before timing

    def client(index: int) -> None:
        while not stop.is_set():
            calls[index]()
            counts[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def grpc_caller(server: ServerHandle, model: Model) -> Callable[[], None]:
    channel = grpc.insecure_channel(
        server.grpc_target,
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return lambda: stub.Predict(model.request, timeout=60)


def rest_caller(server: ServerHandle, model: Model) -> Callable[[], None]:
    connection = http.client.HTTPConnection(server.host, server.rest_port, timeout=60)
    path = f"/v1/models/{model.name}:predict"

    def call() -> None:
        connection.request("POST", path, body=model.rest_body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"REST predict answered {response.status}")

    return call


def sequential_rate(call: Callable[[], None], seconds: float) -> float:
    """Requests per second of back-to-back calls (after one warm call), at least 3 calls."""
    call()
    calls, started = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < seconds:
        call()
        calls += 1
    return calls / (time.perf_counter() - started)


def server_flags(models: list[Model], root: Path, batching: bool) -> list[str]:
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(
            f'  config {{ name: "{m.name}" base_path: "{m.base_path}" model_platform: "tensorflow" }}\n' for m in models
        )
        + "}\n"
    )
    flags = [f"--model_config_file={config}", "--file_system_poll_wait_seconds=0"]
    if batching:
        (root / "batching.config").write_text(BATCHING_CONFIG)
        flags += ["--enable_batching", f"--batching_parameters_file={root / 'batching.config'}"]
    return flags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per throughput figure")
    parser.add_argument("--latency-calls", type=int, default=300, help="for half_plus_two")
    parser.add_argument("--large-seconds", type=float, default=8.0, help="per 10 MB body throughput figure")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tfpack-bench-runtime-") as scratch:
        root = Path(scratch)
        write_half_plus_two(root / "half_plus_two")
        write_mobilenet_v2(root / "mobilenet_v2")
        write_image_half_plus_two(root / "image_half_plus_two")
        images = np.random.default_rng(1).random([LARGE_BATCH, 224, 224, 3], np.float32)
        models = [
            Model("half_plus_two", root / "half_plus_two", np.array([[2.0]], np.float32)),
            Model("mobilenet_v2", root / "mobilenet_v2", np.random.default_rng(0).random([1, 224, 224, 3], np.float32)),
        ]
        # Served for the 10 MB body only (not in the latency/throughput tables).
        image_model = Model("image_half_plus_two", root / "image_half_plus_two", images[:1])
        large = [LargeRequest(m.name, m.alias, images) for m in (models[1], image_model)]
        body_mb = len(large[0].rest_body) / 1e6
        parse_figure = parse_ms(models[1], large[0].rest_body)
        large_figures: dict[str, dict[str, float]] = {r.name: {} for r in large}
        calls = {"half_plus_two": args.latency_calls, "mobilenet_v2": args.latency_calls // 10}
        results: dict[str, dict[str, object]] = {m.name: {} for m in models}

        for model in models:
            results[model.name]["in-process"] = percentiles_ms(model.in_process, calls[model.name])
            for clients in (1, 8):
                results[model.name][f"in-process x{clients}"] = throughput(
                    lambda model=model: model.in_process, clients, args.seconds
                )

        for batching in (False, True):
            label = "batching on" if batching else "batching off"
            (root / label).mkdir()
            with running_model_server(
                server_flags([*models, image_model], root / label, batching), timeout=180
            ) as server:
                for model in models:
                    figures = results[model.name]
                    if not batching:
                        figures["gRPC"] = percentiles_ms(grpc_caller(server, model), calls[model.name])
                        figures["REST"] = percentiles_ms(rest_caller(server, model), calls[model.name])
                    for clients in (1, 8):
                        figures[f"gRPC x{clients} {label}"] = throughput(
                            lambda model=model: grpc_caller(server, model),
                            clients,
                            args.seconds,
                        )
                if not batching:
                    for request in large:
                        large_figures[request.name] = {
                            "gRPC": sequential_rate(
                                grpc_caller(server, request),  # type: ignore[arg-type]
                                args.large_seconds,
                            ),
                            "REST": sequential_rate(
                                rest_caller(server, request),  # type: ignore[arg-type]
                                args.large_seconds,
                            ),
                        }

    print(f"tfpack-model-server vs in-process, {os.cpu_count()} CPUs, TensorFlow {tf.__version__}")
    for name, figures in results.items():
        base_p50, _base_p99 = figures["in-process"]  # type: ignore[misc]
        print(f"\n{name}")
        print("  latency ms        p50      p99    p50 vs in-process")
        for label in ("in-process", "gRPC", "REST"):
            p50, p99 = figures[label]  # type: ignore[misc]
            print(f"  {label:<14} {p50:8.3f} {p99:8.3f}    {p50 / base_p50:5.2f}x (+{p50 - base_p50:.3f} ms)")
        print("  throughput req/s          x1      x8    x8 vs in-process x8")
        base = figures["in-process x8"]
        rows = [("in-process", "in-process x1", "in-process x8")] + [
            (f"gRPC {b}", f"gRPC x1 {b}", f"gRPC x8 {b}") for b in ("batching off", "batching on")
        ]
        for label, one, eight in rows:
            print(f"  {label:<22} {figures[one]:7.1f} {figures[eight]:7.1f}    {figures[eight] / base:5.2f}x")  # type: ignore[operator]

    print(f"\nREST at scale: {body_mb:.1f} MB JSON body, {LARGE_BATCH} x 224x224x3 float32 ({images.size} values)")
    print(f"  parse + decode to request tensors (in-process): {parse_figure:.0f} ms")
    print("  sequential req/s         gRPC     REST    REST vs gRPC")
    for name, figures in large_figures.items():
        print(
            f"  {name:<22} {figures['gRPC']:6.2f}   {figures['REST']:6.2f}    {figures['REST'] / figures['gRPC']:5.2f}x"
        )

    def verdict(met: bool) -> str:
        return "met" if met else "NOT MET"

    hp2 = results["half_plus_two"]
    grpc_extra = hp2["gRPC"][0] - hp2["in-process"][0]  # type: ignore[index]
    rest_extra = hp2["REST"][0] - hp2["gRPC"][0]  # type: ignore[index]
    mobilenet = results["mobilenet_v2"]
    best_x8 = max(mobilenet["gRPC x8 batching off"], mobilenet["gRPC x8 batching on"])  # type: ignore[type-var]
    ratio = best_x8 / mobilenet["in-process x8"]  # type: ignore[operator]
    print("\ngoals")
    print(
        f"  half_plus_two gRPC p50 - in-process p50 = {grpc_extra:.3f} ms "
        f"(goal <= {GRPC_LATENCY_GOAL_MS} ms): {verdict(grpc_extra <= GRPC_LATENCY_GOAL_MS)}"
    )
    print(
        f"  half_plus_two REST p50 - gRPC p50 = {rest_extra:.3f} ms "
        f"(goal <= {REST_LATENCY_GOAL_MS} ms): {verdict(rest_extra <= REST_LATENCY_GOAL_MS)}"
    )
    for name, figures in large_figures.items():
        large_ratio = figures["REST"] / figures["gRPC"]
        print(
            f"  {name} {body_mb:.0f} MB body: REST throughput = {large_ratio:.2f}x gRPC "
            f"(goal >= {REST_THROUGHPUT_GOAL}x): {verdict(large_ratio >= REST_THROUGHPUT_GOAL)}"
        )
    print(
        f"  mobilenet_v2 8-client gRPC throughput = {ratio:.2f}x in-process "
        f"(target >= {THROUGHPUT_TARGET}x): {verdict(ratio >= THROUGHPUT_TARGET)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
