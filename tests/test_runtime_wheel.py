"""packager._runtime_wheel: the tfpack wheel every serving image installs, packed from the running tfpack.

Run under pytest on purpose: pytest puts tests/ (which holds a tests/serving/ directory) on
sys.path, exactly the situation in which a wheel packed from "the first serving/ directory" shipped
the tests instead of the server.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

import packager
import serving
from packager._runtime_wheel import build_runtime_wheel

pytestmark = pytest.mark.fast  # needs neither Docker nor a model server: make test-fast

REPO = Path(__file__).resolve().parent.parent


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_a_tests_serving_directory_on_sys_path_is_not_the_serving_package() -> None:
    assert str(REPO / "tests") in sys.path or str(REPO / "tests" / "serving") in sys.path
    assert Path(serving.__file__).resolve() == REPO / "serving" / "__init__.py"


def test_the_wheel_holds_the_server_and_the_assets_and_no_tests(tmp_path: Path) -> None:
    names = _names(build_runtime_wheel(tmp_path))
    for required in (
        "serving/__init__.py",
        "serving/entrypoint.py",
        "serving/model_server.py",
        "packager/__init__.py",
        "packager/layout/trust.py",
        "packager/_assets/Dockerfile",
        "packager/_assets/k8s/base/kustomization.yaml",
    ):
        assert required in names
    assert not [n for n in names if Path(n).name.startswith("test_") or n.startswith("tests/")]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    packed = {n for n in names if n.startswith(("packager/", "serving/")) and n.endswith(".py")}
    on_disk = {
        p.relative_to(REPO).as_posix()
        for root in (Path(packager.__file__).parent, Path(serving.__file__).parent)
        for p in root.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert packed == on_disk


def test_packing_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    first = build_runtime_wheel(tmp_path / "a").read_bytes()
    second = build_runtime_wheel(tmp_path / "b").read_bytes()
    assert first == second
