"""Fixtures the signing tests share: one converted model, and two certificate hierarchies."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories.pki import Pki, make_pki
from factories.sources import write_frozen_classifier


@pytest.fixture(scope="package")
def version_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converted classifier version dir; tests that change or sign it work on a copy."""
    from packager.convert import ConvertOptions, convert

    root = tmp_path_factory.mktemp("signing")
    source = write_frozen_classifier(root / "classifier.pb")
    return convert(source, ConvertOptions(name="classifier", output_dir=root / "models")).version_dir


@pytest.fixture(scope="package")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="package")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """An unrelated certificate authority with its own signing leaf."""
    return make_pki(tmp_path_factory.mktemp("other-pki"), name="elsewhere")
