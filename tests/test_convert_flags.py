"""convert's flags out of their domain are usage errors (exit 2, nothing written): Keras-only flags
on another source, and non-finite tolerances or out-of-range versions (from the attacker review
that also hardened signing)."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories.sources import write_frozen_classifier

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast


def test_custom_objects_and_unsafe_go_with_keras_sources_only(tfpack_cli, tmp_path: Path) -> None:
    source = write_frozen_classifier(tmp_path / "classifier.pb")
    result = tfpack_cli(
        "convert", source, "--name", "m", "--output-dir", tmp_path / "out", "--custom-objects", "nosuchmodule"
    )
    assert result.exit_code == 2 and "--custom-objects goes with a Keras source" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, needle",
    [
        (("--tolerance", "inf"), "--tolerance"),
        (("--tolerance", "nan"), "--tolerance"),
        (("--version", "99999999999999999999999"), "--version"),
    ],
)
def test_out_of_range_flags_are_usage_errors(flags, needle: str, tfpack_cli, tmp_path: Path) -> None:
    source = write_frozen_classifier(tmp_path / "classifier.pb")
    result = tfpack_cli("convert", source, "--name", "m", "--output-dir", tmp_path / "out", *flags)
    assert result.exit_code == 2, result.stderr
    assert needle in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_failed_comparison_of_half_precision_outputs_suggests_a_tolerance() -> None:
    from packager.convert import _half_precision_hint
    from packager.graph.frozen_model import TensorRef

    half = TensorRef(key="probs", tensor_name="probs:0", dtype="float16", shape=(None, 3))
    full = TensorRef(key="logits", tensor_name="logits:0", dtype="float32", shape=(None, 3))
    assert "probs are 16-bit floats" in _half_precision_hint([half, full])
    assert "--tolerance 1e-2" in _half_precision_hint([half])
    assert _half_precision_hint([full]) == ""
