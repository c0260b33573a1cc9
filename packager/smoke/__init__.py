"""Smoke tests against a running model server: a freshly started image, or a HOST:PORT.

    smoke_image(IMAGE, MODEL | None)                   start the image, check it, remove it
    smoke_target(HOST:PORT, MODEL, VERSION_DIR)        check a server the caller runs against
    smoke_target(HOST:PORT, None, models_dir=DIR)      one version dir, or every DIR/NAME/N
    run_smoke(TARGET)                                  either, for any SmokeTarget

The package, one job per module: ``report`` (CheckResult, SmokeReport; JSON and JUnit XML),
``client`` (gRPC and REST clients behind one interface, typed results and errors),
``expectation`` (what a version dir says the server must answer), ``checks`` (the checks a
faithful server passes), ``negative`` (bad requests and TensorFlow Serving's exact answers),
``latency`` (percentiles and load), ``suite`` (their order), ``targets`` (the server's
lifecycle and plan: StartedImage, RunningServer) and ``runner`` (one run).
"""

from packager.smoke.checks import (
    GRPC_CLASSIFY,
    GRPC_LABEL,
    GRPC_MODEL_STATUS,
    GRPC_PREDICT,
    GRPC_REGRESS,
    GRPC_SIGNATURE,
    PREDICT_REPEATS,
    REST_CLASSIFY,
    REST_LABEL,
    REST_MODEL_STATUS,
    REST_PREDICT,
    REST_PREDICT_ROWS,
    REST_REGRESS,
    REST_SIGNATURE,
)
from packager.smoke.expectation import Expectation, SignatureExpectation
from packager.smoke.latency import DEFAULT_REQUESTS, GRPC_LATENCY, GRPC_LOAD, LoadSpec
from packager.smoke.negative import TF_SERVING_ANSWERS, negative_check_names
from packager.smoke.report import CheckResult, LatencySummary, SmokeReport
from packager.smoke.runner import parse_load, run_smoke, smoke_image, smoke_target
from packager.smoke.targets import RunningServer, ServingPlan, SmokeTarget, StartedImage

__all__ = [
    "DEFAULT_REQUESTS",
    "GRPC_CLASSIFY",
    "GRPC_LABEL",
    "GRPC_LATENCY",
    "GRPC_LOAD",
    "GRPC_MODEL_STATUS",
    "GRPC_PREDICT",
    "GRPC_REGRESS",
    "GRPC_SIGNATURE",
    "PREDICT_REPEATS",
    "REST_CLASSIFY",
    "REST_LABEL",
    "REST_MODEL_STATUS",
    "REST_PREDICT",
    "REST_PREDICT_ROWS",
    "REST_REGRESS",
    "REST_SIGNATURE",
    "TF_SERVING_ANSWERS",
    "CheckResult",
    "Expectation",
    "LatencySummary",
    "LoadSpec",
    "RunningServer",
    "ServingPlan",
    "SignatureExpectation",
    "SmokeReport",
    "SmokeTarget",
    "StartedImage",
    "negative_check_names",
    "parse_load",
    "run_smoke",
    "smoke_image",
    "smoke_target",
]
