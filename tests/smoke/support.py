"""What the smoke tests share: half_plus_two's goldens and provenance, a served copy, JUnit counts."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from packager import layout
from packager.smoke import (
    GRPC_MODEL_STATUS,
    GRPC_PREDICT,
    GRPC_SIGNATURE,
    REST_MODEL_STATUS,
    REST_PREDICT,
)

MODEL = "half_plus_two"
VERSION = 3
GOLDEN_X = np.array([[-1.0], [0.0], [1.5], [1000.0]], dtype=np.float32)
ALL_CHECKS = [GRPC_MODEL_STATUS, GRPC_SIGNATURE, GRPC_PREDICT, REST_MODEL_STATUS, REST_PREDICT]


def write_assets(
    version_dir: Path,
    outputs: dict[str, np.ndarray],
    *,
    output_dtype: str = "float32",
    input_key: str = "x",
) -> Path:
    """Write goldens and provenance for half_plus_two's serving_default into version_dir."""
    layout.Goldens(inputs={"x": GOLDEN_X}, outputs=outputs).save(version_dir / layout.GOLDENS_FILE)
    layout.Provenance(
        model_name=MODEL,
        version=int(version_dir.name),
        source={"path": "test", "format": "saved_model", "files": {}},
        tfpack_version="test",
        tensorflow_version=tf.__version__,
        options={},
        inputs={input_key: layout.TensorSummary(dtype="float32", shape=[None, 1])},
        outputs={"y": layout.TensorSummary(dtype=output_dtype, shape=[None, 1])},
        tolerance=1e-6,
        max_abs_error=0.0,
    ).save(version_dir / layout.PROVENANCE_FILE)
    return version_dir


def golden_y() -> np.ndarray:
    return (0.5 * GOLDEN_X + 2.0).astype(np.float32)


@dataclass(frozen=True)
class Served:
    version_dir: Path
    grpc_target: str
    rest_target: str


def assets_only_copy(served: Served, destination: Path) -> Path:
    """A local version dir with the served version's number, holding only its assets.extra.

    smoke_target reads the expectation from the version dir it is given, so a doctored copy
    asks the unchanged server a question it must fail.
    """
    version_dir = destination / MODEL / str(VERSION)
    shutil.copytree(served.version_dir / layout.ASSETS_EXTRA, version_dir / layout.ASSETS_EXTRA)
    return version_dir


def junit_counts(path: Path) -> tuple[int, int, list[str]]:
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    failed = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None]
    assert int(suite.get("failures")) == len(failed)
    return int(suite.get("tests")), len(failed), failed
