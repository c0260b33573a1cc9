"""Several models and versions at once (--models-dir): every version, every signature, every label,
Classify and Regress, against a real tfpack-model-server serving a models dir."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from packager import layout
from packager.errors import SmokeTestFailed, UsageError
from packager.smoke import (
    GRPC_CLASSIFY,
    GRPC_LABEL,
    GRPC_MODEL_STATUS,
    GRPC_PREDICT,
    GRPC_REGRESS,
    REST_CLASSIFY,
    REST_LABEL,
    REST_MODEL_STATUS,
    REST_PREDICT,
    REST_PREDICT_ROWS,
    REST_REGRESS,
    smoke_target,
)
from tests.smoke.conftest import FLEET_LABELS
from tests.smoke.support import MODEL, Fleet, junit_counts, title

OTHER = "half_plus_three"


def test_every_model_version_signature_and_label_is_checked(fleet: Fleet, tmp_path: Path) -> None:
    report = smoke_target(
        fleet.grpc_target,
        None,
        models_dir=fleet.models_dir,
        rest_target=fleet.rest_target,
        labels=FLEET_LABELS,
        report_path=tmp_path / "r.json",
        junit_path=tmp_path / "j.xml",
        requests=10,
    )
    assert report.passed
    assert report.models == {OTHER: [7], MODEL: [1, 2]}
    assert (report.model, report.version) == (None, None)
    assert report.summary().startswith(f"smoke test of 2 models ({OTHER} 7; {MODEL} 1,2) on {fleet.grpc_target} passed")
    checks = [(check.name, check.subject) for check in report.checks]
    assert checks[:2] == [(GRPC_MODEL_STATUS, OTHER), (GRPC_MODEL_STATUS, MODEL)]
    for version in (1, 2):
        default = f"{MODEL}/{version}/serving_default"
        for name in (GRPC_PREDICT, REST_PREDICT, REST_PREDICT_ROWS):
            assert (name, default) in checks
        # TF1 half_plus_two: real Classify and Regress signatures (regress_x2_to_y3 takes no Examples).
        for name in (GRPC_CLASSIFY, REST_CLASSIFY):
            assert (name, f"{MODEL}/{version}/classify_x_to_y") in checks
        for name in (GRPC_REGRESS, REST_REGRESS):
            assert (name, f"{MODEL}/{version}/regress_x_to_y") in checks
            assert (name, f"{MODEL}/{version}/regress_x_to_y2") in checks
            assert (name, f"{MODEL}/{version}/regress_x2_to_y3") not in checks
    assert (GRPC_PREDICT, f"{OTHER}/7/serving_default") in checks
    assert (REST_MODEL_STATUS, MODEL) in checks
    for label in FLEET_LABELS[MODEL]:
        assert (GRPC_LABEL, f"{MODEL}:{label}") in checks and (REST_LABEL, f"{MODEL}:{label}") in checks
    assert not [check for check, count in Counter(checks).items() if count > 1]
    # The first model's highest version gets the bad requests and the timing.
    assert ("grpc_unknown_model", f"{OTHER}/7/serving_default") in checks
    assert report.latency_ms is not None

    written = json.loads((tmp_path / "r.json").read_text())
    assert written["models"] == {OTHER: [7], MODEL: [1, 2]}
    assert junit_counts(tmp_path / "j.xml") == (len(checks), 0, [])
    names = [case.get("name") for case in ET.parse(tmp_path / "j.xml").getroot().iter("testcase")]
    assert names == [title(name, subject) for name, subject in checks]


def test_one_model_of_a_models_dir(fleet: Fleet) -> None:
    report = smoke_target(fleet.grpc_target, MODEL, models_dir=fleet.models_dir, requests=5)
    assert report.models == {MODEL: [1, 2]}
    assert (report.model, report.version) == (MODEL, 2)
    assert {check.subject.split("/")[0].split(":")[0] for check in report.checks if check.subject} == {MODEL}


def test_a_label_that_resolves_elsewhere_fails_both_label_checks(fleet: Fleet, tmp_path: Path) -> None:
    with pytest.raises(SmokeTestFailed, match=rf"first grpc_label \({MODEL}:stable\): ") as excinfo:
        smoke_target(
            fleet.grpc_target,
            MODEL,
            models_dir=fleet.models_dir,
            rest_target=fleet.rest_target,
            labels={MODEL: {"stable": 2}},
            report_path=tmp_path / "r.json",
            requests=5,
        )
    assert excinfo.value.exit_code == 4
    failed = [c for c in json.loads((tmp_path / "r.json").read_text())["checks"] if not c["passed"]]
    assert [(c["name"], c["subject"]) for c in failed] == [
        (GRPC_LABEL, f"{MODEL}:stable"),
        (REST_LABEL, f"{MODEL}:stable"),
    ]
    assert "label 'stable' resolves to version 1, not 2" in failed[0]["detail"]


def test_a_version_the_server_lacks_fails_its_model_and_the_others_are_still_checked(
    fleet: Fleet, tmp_path: Path
) -> None:
    models_dir = tmp_path / "models"
    shutil.copytree(fleet.models_dir, models_dir)
    extra = models_dir / MODEL / "3"
    shutil.copytree(models_dir / MODEL / "2" / layout.ASSETS_EXTRA, extra / layout.ASSETS_EXTRA)
    with pytest.raises(SmokeTestFailed, match=rf"first grpc_model_status \({MODEL}\): versions 1, 2, 3 of {MODEL}"):
        smoke_target(
            fleet.grpc_target, None, models_dir=models_dir, timeout=2, report_path=tmp_path / "r.json", requests=5
        )
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["models"] == {OTHER: [7], MODEL: []}
    failed = [(c["name"], c["subject"]) for c in written["checks"] if not c["passed"]]
    assert failed == [(GRPC_MODEL_STATUS, MODEL)]
    assert not [c for c in written["checks"] if (c["subject"] or "").startswith(f"{MODEL}/")]
    assert (GRPC_PREDICT, f"{OTHER}/7/serving_default") in [(c["name"], c["subject"]) for c in written["checks"]]


def test_models_dir_usage_errors(fleet: Fleet, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a directory"):
        smoke_target(fleet.grpc_target, None, models_dir=tmp_path / "absent")
    with pytest.raises(UsageError, match="holds no version dirs"):
        smoke_target(fleet.grpc_target, None, models_dir=tmp_path)
    with pytest.raises(UsageError, match="has no nope/"):
        smoke_target(fleet.grpc_target, "nope", models_dir=fleet.models_dir)
    with pytest.raises(UsageError, match="not both"):
        smoke_target(fleet.grpc_target, MODEL, fleet.models_dir / MODEL / "1", models_dir=fleet.models_dir)
