"""packager.layout.versions: the one rule for what names a version dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from packager.errors import UsageError
from packager.layout import (
    MAX_VERSION,
    find_version_dirs,
    is_version_dir,
    is_version_name,
    require_version_dir,
    served_format,
)

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast


@pytest.mark.parametrize("name", ["0", "1", "007", str(MAX_VERSION)])
def test_ascii_digit_names_are_versions(name: str) -> None:
    assert is_version_name(name)


@pytest.mark.parametrize("name", ["", "1\n", " 1", "1.0", "-1", "²", "١", "1a"])
def test_anything_else_is_not(name: str) -> None:
    assert not is_version_name(name)


def test_a_dir_named_with_a_trailing_newline_is_not_served(tmp_path: Path) -> None:
    for name in ("1", "2\n"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    found, _ = find_version_dirs(tmp_path)
    assert sorted(found) == [1]


def test_a_version_dir_holds_a_saved_model_a_model_tflite_or_both(tmp_path: Path) -> None:
    saved_model, tflite, both, neither = (tmp_path / name for name in ("sm", "lite", "both", "neither"))
    for directory, files in (
        (saved_model, ["saved_model.pb"]),
        (tflite, ["model.tflite"]),
        (both, ["saved_model.pb", "model.tflite"]),
        (neither, ["assets.extra"]),
    ):
        directory.mkdir()
        for name in files:
            (directory / name).write_bytes(b"")
    assert [is_version_dir(d) for d in (saved_model, tflite, both, neither)] == [True, True, True, False]
    # With --prefer_tflite_model (set by tfpack build) a model.tflite is served, the SavedModel not.
    assert [served_format(d) for d in (saved_model, tflite, both)] == ["saved_model", "tflite", "tflite"]
    assert require_version_dir(tflite) == tflite.resolve()
    with pytest.raises(UsageError, match=r"holds no saved_model.pb \(nor model.tflite\)"):
        require_version_dir(neither)
