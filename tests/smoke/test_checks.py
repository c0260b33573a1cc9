"""The smoke checks against a real model server: pass on a faithful server, fail loudly otherwise."""

from __future__ import annotations

import json
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf

from packager import layout
from packager.errors import SmokeTestFailed
from packager.smoke import (
    GRPC_LATENCY,
    GRPC_MODEL_STATUS,
    GRPC_PREDICT,
    GRPC_SIGNATURE,
    PREDICT_REPEATS,
    REST_PREDICT,
    REST_PREDICT_ROWS,
    negative_check_names,
    smoke_target,
)
from tests.factories.half_plus_two import write_half_plus_two_tf2
from tests.servers import running_model_server
from tests.smoke.support import (
    MODEL,
    VERSION,
    Served,
    assets_only_copy,
    golden_y,
    good_run,
    junit_counts,
    rewriting_grpc_proxy,
    silent_port,
    title,
    write_assets,
)

DEFAULT = f"{MODEL}/{VERSION}/serving_default"


def test_faithful_server_passes_every_check(served: Served, tmp_path: Path) -> None:
    report = smoke_target(
        served.grpc_target,
        MODEL,
        served.version_dir,
        rest_target=served.rest_target,
        report_path=tmp_path / "smoke.json",
        junit_path=tmp_path / "smoke.xml",
        requests=30,
    )
    expected = good_run()
    assert report.passed
    assert [(check.name, check.subject) for check in report.checks] == expected
    timed = [
        check
        for check in report.checks
        if check.name not in negative_check_names("grpc") + negative_check_names("rest")
    ]
    assert all(check.latency_ms is not None and check.latency_ms > 0 for check in timed)
    assert report.version == VERSION and report.model == MODEL and report.models == {MODEL: [VERSION]}
    assert report.summary().startswith(
        f"smoke test of {MODEL} version {VERSION} on {served.grpc_target} passed "
        f"({len(expected)}/{len(expected)} checks); grpc_predict p50 "
    )
    for protocol in (GRPC_PREDICT, REST_PREDICT, REST_PREDICT_ROWS):
        latency = report.latencies_ms[protocol]
        assert latency["count"] == PREDICT_REPEATS
        assert 0 < latency["p50"] <= latency["max"]
    # The first Predict of the run is the first gRPC golden request; the percentiles are over --requests.
    assert report.latency_ms is not None
    first = report.latency_ms["first"]
    assert first is not None and 0 < first <= report.latencies_ms[GRPC_PREDICT]["max"]
    assert 0 < report.latency_ms["p50"] <= report.latency_ms["p95"] <= report.latency_ms["p99"]
    assert "30 requests" in next(c for c in report.checks if c.name == GRPC_LATENCY).detail

    written = json.loads((tmp_path / "smoke.json").read_text())
    assert written == report.to_json()
    assert written["passed"] is True
    assert written["target"] == served.grpc_target
    assert written["model"] == MODEL
    assert set(written["latency_ms"]) == {"first", "p50", "p95", "p99"}
    assert written["load"] is None
    # The JUnit parses, with one uniquely named testcase per check.
    assert junit_counts(tmp_path / "smoke.xml") == (len(expected), 0, [])
    names = [case.get("name") for case in ET.parse(tmp_path / "smoke.xml").getroot().iter("testcase")]
    assert names == [title(name, subject) for name, subject in expected]
    assert len(set(names)) == len(names)


def test_without_rest_target_only_grpc_is_checked(served: Served) -> None:
    report = smoke_target(served.grpc_target, MODEL, served.version_dir, requests=5)
    assert [(check.name, check.subject) for check in report.checks] == good_run(rest=False)
    assert REST_PREDICT not in report.latencies_ms


def test_tampered_golden_output_fails_every_predict_check(served: Served, tmp_path: Path) -> None:
    version_dir = tmp_path / "tampered" / MODEL / str(VERSION)
    shutil.copytree(served.version_dir, version_dir)  # the whole version dir: every signature is checked
    tampered = golden_y()
    tampered[2, 0] += 0.25
    write_assets(version_dir, {"y": tampered})
    expected = good_run()

    with pytest.raises(
        SmokeTestFailed, match=rf"failed 3 of {len(expected)} checks, first grpc_predict \({DEFAULT}\): "
    ) as excinfo:
        smoke_target(
            served.grpc_target,
            MODEL,
            version_dir,
            rest_target=served.rest_target,
            report_path=tmp_path / "smoke.json",
            junit_path=tmp_path / "smoke.xml",
            requests=5,
        )
    assert excinfo.value.exit_code == 4
    assert "\n" not in str(excinfo.value)
    assert str(tmp_path / "smoke.json") in str(excinfo.value)

    written = json.loads((tmp_path / "smoke.json").read_text())
    assert written["passed"] is False
    failed = [check for check in written["checks"] if not check["passed"]]
    assert [check["name"] for check in failed] == [GRPC_PREDICT, REST_PREDICT, REST_PREDICT_ROWS]
    assert "output 'y'" in failed[0]["detail"]
    assert "0.25" in failed[0]["detail"]
    assert junit_counts(tmp_path / "smoke.xml") == (
        len(expected),
        3,
        [title(name, DEFAULT) for name in (GRPC_PREDICT, REST_PREDICT, REST_PREDICT_ROWS)],
    )


def test_golden_error_within_tolerance_passes(served: Served, tmp_path: Path) -> None:
    version_dir = assets_only_copy(served, tmp_path / "nudged")
    nudged = golden_y()
    nudged[0, 0] = np.nextafter(nudged[0, 0], np.float32(10))  # one float32 ulp: 1.2e-7 at 1.5
    write_assets(version_dir, {"y": nudged})
    report = smoke_target(served.grpc_target, MODEL, version_dir, rest_target=served.rest_target, requests=5)
    assert report.passed
    # Without saved_model.pb only serving_default is known: from the provenance.
    signature_checks = [c for c in report.checks if c.name == GRPC_SIGNATURE]
    assert [c.subject for c in signature_checks] == [DEFAULT]
    assert "matches the provenance" in signature_checks[0].detail


def test_signature_drift_fails_the_signature_check(served: Served, tmp_path: Path) -> None:
    version_dir = assets_only_copy(served, tmp_path / "drifted")
    write_assets(version_dir, {"y": golden_y()}, output_dtype="float64", input_key="inputs")
    with pytest.raises(SmokeTestFailed, match="first grpc_signature"):
        smoke_target(served.grpc_target, MODEL, version_dir, report_path=tmp_path / "smoke.json", requests=5)
    results = {c["name"]: c for c in json.loads((tmp_path / "smoke.json").read_text())["checks"]}
    detail = results[GRPC_SIGNATURE]["detail"]
    assert "input keys ['x'] != provenance ['inputs']" in detail
    assert "output 'y' dtype float32 != float64" in detail
    assert not results[GRPC_SIGNATURE]["passed"]


def test_contract_drift_names_the_signature_that_differs(served: Served, tmp_path: Path) -> None:
    """The version dir's saved_model.pb says what clients were promised: a server serving
    another model under that name fails the signature checks, signature by signature."""

    class Renamed(tf.Module):
        """half_plus_two's serving_default with its input renamed, and no other signature."""

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="features")])
        def serve(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 0.5 * features + 2.0}

    other = tmp_path / "other" / MODEL / str(VERSION)
    module = Renamed()
    tf.saved_model.save(module, str(other), signatures={"serving_default": module.serve})
    shutil.copytree(served.version_dir / layout.ASSETS_EXTRA, other / layout.ASSETS_EXTRA)
    with pytest.raises(SmokeTestFailed, match="first grpc_signature"):
        smoke_target(served.grpc_target, MODEL, other, report_path=tmp_path / "smoke.json", requests=5)
    failed = {
        (c["name"], c["subject"]): c["detail"]
        for c in json.loads((tmp_path / "smoke.json").read_text())["checks"]
        if not c["passed"]
    }
    assert "input keys ['x'] != contract ['features']" in failed[(GRPC_SIGNATURE, DEFAULT)]
    extra = (GRPC_SIGNATURE, f"{MODEL}/{VERSION}/classify_x_to_y")
    assert "which the version dir's contract does not have" in failed[extra]


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
    assert junit_counts(tmp_path / "smoke.xml") == (1, 1, [title(GRPC_MODEL_STATUS, MODEL)])


def test_nothing_listening_fails_the_status_check(served: Served, tmp_path: Path) -> None:
    with pytest.raises(SmokeTestFailed, match=r"did not become AVAILABLE before the 1s deadline.*UNAVAILABLE"):
        smoke_target("127.0.0.1:9", MODEL, served.version_dir, timeout=1.0)


def test_a_server_that_never_answers_fails_at_the_deadline(served: Served, tmp_path: Path) -> None:
    """A port that accepts connections and never answers (a server stuck starting): the wait
    ends at --timeout, not at a request's own 30 s bound, and says so."""
    with silent_port() as target:
        started = time.monotonic()
        with pytest.raises(SmokeTestFailed) as excinfo:
            smoke_target(
                target, MODEL, served.version_dir, rest_target=target, timeout=3, report_path=tmp_path / "r.json"
            )
        elapsed = time.monotonic() - started
    assert excinfo.value.exit_code == 4
    assert elapsed < 10, elapsed
    message = str(excinfo.value)
    assert "first grpc_model_status (half_plus_two): " in message
    assert "did not become AVAILABLE before the 3s deadline (--timeout" in message
    (status,) = json.loads((tmp_path / "r.json").read_text())["checks"]
    assert status["name"] == GRPC_MODEL_STATUS and not status["passed"]
    assert "DEADLINE_EXCEEDED" in status["detail"] or "UNAVAILABLE" in status["detail"]


def test_a_version_that_fails_to_load_reports_the_servers_load_error(tmp_path: Path) -> None:
    """The server keeps serving version 3 and fails to load a new version 4: the smoke test of
    version 4 fails at once (not at the deadline) with the server's own load error."""
    base_path = tmp_path / "models" / MODEL
    write_half_plus_two_tf2(base_path, version=VERSION)
    args = [
        f"--model_name={MODEL}",
        f"--model_base_path={base_path}",
        "--file_system_poll_wait_seconds=1",
        "--max_num_load_retries=0",
    ]
    local = tmp_path / "local" / MODEL / str(VERSION + 1)
    write_assets(local, {"y": golden_y()})
    with running_model_server(args) as server:
        broken = tmp_path / "models" / "incoming"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        broken.rename(base_path / str(VERSION + 1))  # appears whole to the server's poll
        started = time.monotonic()
        with pytest.raises(SmokeTestFailed) as excinfo:
            smoke_target(server.grpc_target, MODEL, local, timeout=60, report_path=tmp_path / "r.json")
    assert time.monotonic() - started < 30
    message = str(excinfo.value)
    assert f"first grpc_model_status ({MODEL}): version {VERSION + 1} of {MODEL} failed to load" in message
    (status,) = json.loads((tmp_path / "r.json").read_text())["checks"]
    assert "the server says: Could not parse" in status["detail"]
    assert "saved_model.pb" in status["detail"]


def test_a_server_answering_a_bad_request_with_the_wrong_code_fails_that_check(served: Served, tmp_path: Path) -> None:
    """A fake front is the only way to get a wrong code from a faithful server: this proxy passes
    every gRPC call to the real tfpack-model-server and rewrites NOT_FOUND to INVALID_ARGUMENT, as
    a server that mislabels unknown models and versions would answer."""
    with (
        rewriting_grpc_proxy(
            served.grpc_target, (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
        ) as proxy,
        pytest.raises(SmokeTestFailed) as excinfo,
    ):
        smoke_target(proxy, MODEL, served.version_dir, junit_path=tmp_path / "j.xml", requests=5)
    assert excinfo.value.exit_code == 4
    assert f"failed 2 of {len(good_run(rest=False))} checks, first grpc_unknown_model ({DEFAULT}): " in str(
        excinfo.value
    )
    assert "TensorFlow Serving answers NOT_FOUND, this server answered INVALID_ARGUMENT" in str(excinfo.value)
    _, _, failed = junit_counts(tmp_path / "j.xml")
    assert failed == [title("grpc_unknown_model", DEFAULT), title("grpc_unknown_version", DEFAULT)]


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
        assert [check.name for check in report.checks] == [
            name for name, _ in good_run("strings", 1, ["serving_default"])
        ]

        wrong = layout.Goldens.load(version_dir / layout.GOLDENS_FILE)
        wrong.outputs["blob_bytes"] = np.array([b"\x00\xff\x80binarY", b""], dtype=np.bytes_)
        wrong.save(version_dir / layout.GOLDENS_FILE)
        with pytest.raises(
            SmokeTestFailed, match=f"failed 3 of {len(good_run('strings', 1, ['serving_default']))} checks"
        ) as excinfo:
            smoke_target(
                server.grpc_target,
                "strings",
                version_dir,
                rest_target=f"{server.host}:{server.rest_port}",
                report_path=tmp_path / "smoke.json",
            )
    assert "'blob_bytes'" in str(excinfo.value)
    failed = [c["name"] for c in json.loads((tmp_path / "smoke.json").read_text())["checks"] if not c["passed"]]
    assert failed == [GRPC_PREDICT, REST_PREDICT, REST_PREDICT_ROWS]
