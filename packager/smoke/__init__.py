"""Smoke tests against a running model server: a freshly started image, or a HOST:PORT.

    smoke_image(IMAGE, MODEL)                     start the image, check it, remove it
    smoke_target(HOST:PORT, MODEL, VERSION_DIR)   check a server the caller runs
    run_smoke(TARGET, MODEL)                      either, for any SmokeTarget

The package, one job per module: ``report`` (CheckResult, SmokeReport; JSON and JUnit XML),
``client`` (gRPC and REST clients behind one interface, typed results and errors), ``checks``
(the checks, each written once over a client, and the Expectation they compare against),
``targets`` (the server's lifecycle: StartedImage, RunningServer) and ``runner`` (one run).
The checks and what they prove: packager.smoke.checks.
"""

from packager.smoke.checks import (
    GRPC_MODEL_STATUS,
    GRPC_PREDICT,
    GRPC_SIGNATURE,
    PREDICT_REPEATS,
    REST_MODEL_STATUS,
    REST_PREDICT,
    Expectation,
)
from packager.smoke.report import CheckResult, LatencySummary, SmokeReport
from packager.smoke.runner import run_smoke, smoke_image, smoke_target
from packager.smoke.targets import RunningServer, SmokeTarget, StartedImage

__all__ = [
    "GRPC_MODEL_STATUS",
    "GRPC_PREDICT",
    "GRPC_SIGNATURE",
    "PREDICT_REPEATS",
    "REST_MODEL_STATUS",
    "REST_PREDICT",
    "CheckResult",
    "Expectation",
    "LatencySummary",
    "RunningServer",
    "SmokeReport",
    "SmokeTarget",
    "StartedImage",
    "run_smoke",
    "smoke_image",
    "smoke_target",
]
