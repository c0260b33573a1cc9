"""The smoke checks against a real model server: pass on a faithful server, fail loudly otherwise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from packager import layout
from packager.errors import SmokeTestFailed
from packager.smoke import (
    GRPC_MODEL_STATUS,
    GRPC_PREDICT,
    GRPC_SIGNATURE,
    PREDICT_REPEATS,
    REST_PREDICT,
    smoke_target,
)
from tests.servers import running_model_server
from tests.smoke.support import (
    ALL_CHECKS,
    MODEL,
    VERSION,
    Served,
    assets_only_copy,
    golden_y,
    junit_counts,
    write_assets,
)


def test_faithful_server_passes_every_check(served: Served, tmp_path: Path) -> None:
    report = smoke_target(
        served.grpc_target,
        MODEL,
        served.version_dir,
        rest_target=served.rest_target,
        report_path=tmp_path / "smoke.json",
        junit_path=tmp_path / "smoke.xml",
    )
    assert report.passed
    assert [check.name for check in report.checks] == ALL_CHECKS
    assert all(check.latency_ms is not None and check.latency_ms > 0 for check in report.checks)
    assert report.version == VERSION
    assert report.summary().startswith(
        f"smoke test of {MODEL} version {VERSION} on {served.grpc_target} passed (5/5 checks); grpc_predict p50 "
    )
    for protocol in (GRPC_PREDICT, REST_PREDICT):
        latency = report.latencies_ms[protocol]
        assert latency["count"] == PREDICT_REPEATS
        assert 0 < latency["p50"] <= latency["max"]

    written = json.loads((tmp_path / "smoke.json").read_text())
    assert written == report.to_json()
    assert written["passed"] is True
    assert written["target"] == served.grpc_target
    assert written["model"] == MODEL
    assert junit_counts(tmp_path / "smoke.xml") == (5, 0, [])


def test_without_rest_target_only_grpc_is_checked(served: Served) -> None:
    report = smoke_target(served.grpc_target, MODEL, served.version_dir)
    assert [check.name for check in report.checks] == [GRPC_MODEL_STATUS, GRPC_SIGNATURE, GRPC_PREDICT]
    assert REST_PREDICT not in report.latencies_ms


def test_tampered_golden_output_fails_both_predict_checks(served: Served, tmp_path: Path) -> None:
    version_dir = assets_only_copy(served, tmp_path / "tampered")
    tampered = golden_y()
    tampered[2, 0] += 0.25
    write_assets(version_dir, {"y": tampered})

    with pytest.raises(SmokeTestFailed, match="failed 2 of 5 checks, first grpc_predict") as excinfo:
        smoke_target(
            served.grpc_target,
            MODEL,
            version_dir,
            rest_target=served.rest_target,
            report_path=tmp_path / "smoke.json",
            junit_path=tmp_path / "smoke.xml",
        )
    assert excinfo.value.exit_code == 4
    assert "\n" not in str(excinfo.value)
    assert str(tmp_path / "smoke.json") in str(excinfo.value)

    written = json.loads((tmp_path / "smoke.json").read_text())
    assert written["passed"] is False
    results = {check["name"]: check for check in written["checks"]}
    assert [name for name, check in results.items() if not check["passed"]] == [
        GRPC_PREDICT,
        REST_PREDICT,
    ]
    assert "output 'y'" in results[GRPC_PREDICT]["detail"]
    assert "0.25" in results[GRPC_PREDICT]["detail"]
    assert junit_counts(tmp_path / "smoke.xml") == (5, 2, [GRPC_PREDICT, REST_PREDICT])


def test_golden_error_within_tolerance_passes(served: Served, tmp_path: Path) -> None:
    version_dir = assets_only_copy(served, tmp_path / "nudged")
    nudged = golden_y()
    nudged[0, 0] = np.nextafter(nudged[0, 0], np.float32(10))  # one float32 ulp: 1.2e-7 at 1.5
    write_assets(version_dir, {"y": nudged})
    report = smoke_target(served.grpc_target, MODEL, version_dir, rest_target=served.rest_target)
    assert report.passed


def test_signature_drift_fails_the_signature_check(served: Served, tmp_path: Path) -> None:
    version_dir = assets_only_copy(served, tmp_path / "drifted")
    write_assets(version_dir, {"y": golden_y()}, output_dtype="float64", input_key="inputs")
    with pytest.raises(SmokeTestFailed, match="first grpc_signature"):
        smoke_target(served.grpc_target, MODEL, version_dir, report_path=tmp_path / "smoke.json")
    results = {c["name"]: c for c in json.loads((tmp_path / "smoke.json").read_text())["checks"]}
    detail = results[GRPC_SIGNATURE]["detail"]
    assert "input keys ['x'] != provenance ['inputs']" in detail
    assert "output 'y' dtype float32 != float64" in detail
    assert not results[GRPC_SIGNATURE]["passed"]


def test_version_the_server_does_not_have_fails_the_status_check_in_time(served: Served, tmp_path: Path) -> None:
    version_dir = tmp_path / MODEL / str(VERSION + 1)
    shutil.copytree(served.version_dir / layout.ASSETS_EXTRA, version_dir / layout.ASSETS_EXTRA)
    with pytest.raises(SmokeTestFailed, match="first grpc_model_status"):
        smoke_target(
            served.grpc_target,
            MODEL,
            version_dir,
            timeout=1.5,
            junit_path=tmp_path / "smoke.xml",
        )
    assert junit_counts(tmp_path / "smoke.xml") == (1, 1, [GRPC_MODEL_STATUS])


def test_nothing_listening_fails_the_status_check(served: Served, tmp_path: Path) -> None:
    with pytest.raises(SmokeTestFailed, match=r"did not become AVAILABLE.*UNAVAILABLE"):
        smoke_target("127.0.0.1:9", MODEL, served.version_dir, timeout=1.0)


class _Strings(tf.Module):
    """String and integer tensors both ways: UTF-8 text, arbitrary bytes, an int32 length."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="text"),
            tf.TensorSpec([None], tf.string, name="blob"),
        ]
    )
    def serve(self, text: tf.Tensor, blob: tf.Tensor) -> dict[str, tf.Tensor]:
        # TF Serving's REST API returns outputs whose key ends in "_bytes" base64-encoded.
        return {
            "greeting": tf.strings.join(["hi ", text]),
            "blob_bytes": tf.identity(blob),
            "length": tf.strings.length(text, unit="UTF8_CHAR"),
        }


def test_strings_and_integers_round_trip_over_grpc_and_rest(tmp_path: Path) -> None:
    base_path = tmp_path / "strings"
    version_dir = base_path / "1"
    module = _Strings()
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
    text = np.array(["café".encode(), b"tfpack"], dtype=np.bytes_)
    blob = np.array([b"\x00\xff\x80binary", b""], dtype=np.bytes_)
    layout.Goldens(
        inputs={"text": text, "blob": blob},
        outputs={
            "greeting": np.array(["hi café".encode(), b"hi tfpack"], dtype=np.bytes_),
            "blob_bytes": blob,
            "length": np.array([4, 6], dtype=np.int32),
        },
    ).save(version_dir / layout.GOLDENS_FILE)
    strings = layout.TensorSummary(dtype="string", shape=[None])
    layout.Provenance(
        model_name="strings",
        version=1,
        source={},
        tfpack_version="test",
        tensorflow_version=tf.__version__,
        options={},
        inputs={"text": strings, "blob": strings},
        outputs={
            "greeting": strings,
            "blob_bytes": strings,
            "length": layout.TensorSummary(dtype="int32", shape=[None]),
        },
        tolerance=0.0,
        max_abs_error=0.0,
    ).save(version_dir / layout.PROVENANCE_FILE)

    with running_model_server(["--model_name=strings", f"--model_base_path={base_path}"]) as server:
        report = smoke_target(
            server.grpc_target, "strings", version_dir, rest_target=f"{server.host}:{server.rest_port}"
        )
        assert [check.name for check in report.checks] == ALL_CHECKS

        wrong = layout.Goldens.load(version_dir / layout.GOLDENS_FILE)
        wrong.outputs["blob_bytes"] = np.array([b"\x00\xff\x80binarY", b""], dtype=np.bytes_)
        wrong.save(version_dir / layout.GOLDENS_FILE)
        with pytest.raises(SmokeTestFailed, match="failed 2 of 5 checks") as excinfo:
            smoke_target(
                server.grpc_target,
                "strings",
                version_dir,
                rest_target=f"{server.host}:{server.rest_port}",
                report_path=tmp_path / "smoke.json",
            )
    assert "'blob_bytes'" in str(excinfo.value)
    failed = [c["name"] for c in json.loads((tmp_path / "smoke.json").read_text())["checks"] if not c["passed"]]
    assert failed == [GRPC_PREDICT, REST_PREDICT]
