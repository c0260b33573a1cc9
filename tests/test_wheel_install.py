"""A tfpack pip-installed from its wheel, outside the source tree, builds images and renders k8s.

The wheel is built from the checkout as a release engineer builds it (``pip wheel``, on a copy of
what the wheel is made of, so no build/ is left in the checkout) and installed with pip into a
fresh venv in a temp dir. TensorFlow and the other dependencies come from the project's .venv
through a .pth written after the install (reinstalling them would take minutes); tfpack's own
``packager`` and ``serving`` are the wheel's, which the first test proves. That venv's ``tfpack``
then runs, from a temp working directory, convert → sign → build (embedded base: the cached
runtime base, tfpack in the image packed from this install) → smoke → k8s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from conftest import REPO, CliResult, new_image_tag
from factories.sources import write_frozen_classifier

pytestmark = pytest.mark.docker

# What the wheel is built from; packager/_assets links to the top-level Dockerfile and k8s/.
_WHEEL_INPUTS = ("pyproject.toml", "README.md", "Dockerfile", "k8s", "packager", "serving")
MODEL = "classifier"


@dataclass(frozen=True)
class WheelInstall:
    wheel: Path
    venv: Path
    work: Path  # the working directory every tfpack of the venv runs in

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def _run(command: list[object], *, cwd: Path, timeout: float = 900) -> CliResult:
    # No PYTHON* variable: nothing but the venv's own site decides what it imports.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    completed = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def _check(result: CliResult, what: str) -> CliResult:
    assert result.exit_code == 0, f"{what} failed ({result.exit_code}): {result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> WheelInstall:
    root = tmp_path_factory.mktemp("wheel-install")
    source = root / "source"
    source.mkdir()
    for name in _WHEEL_INPUTS:
        path = REPO / name
        if path.is_dir():
            # symlinks=True: the wheel build itself must turn packager/_assets' links into files.
            shutil.copytree(path, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(path, source / name)
    dist = root / "dist"
    _check(
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", dist, source], cwd=root),
        "pip wheel of the checkout",
    )
    [wheel] = dist.glob("tfpack-*.whl")

    venv = root / "venv"
    _check(_run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root), "python -m venv")
    # Installed before the .pth exists, so pip sees an empty venv and never the project's .venv
    # (whose editable tfpack it would otherwise find, or uninstall).
    _check(
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                venv / "bin" / "python",
                "install",
                "--quiet",
                "--no-deps",
                "--no-index",
                wheel,
            ],
            cwd=root,
        ),
        "pip install of the wheel",
    )
    venv_site = _check(
        _run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root),
        "locating the venv's site-packages",
    ).stdout.strip()
    # A .pth's lines are appended to sys.path after the venv's own site-packages, and .pth files
    # in the directories they name are not processed: the .venv's editable-install finder, which
    # maps packager/serving to the checkout, never runs.
    (Path(venv_site) / "tfpack-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "work"
    work.mkdir()
    return WheelInstall(wheel=wheel, venv=venv, work=work)


def _tfpack(install: WheelInstall, *args: object, timeout: float = 1500) -> dict:
    result = _run([install.venv / "bin" / "tfpack", *args, "--json"], cwd=install.work, timeout=timeout)
    _check(result, f"the installed tfpack {args[0]}")
    return json.loads(result.stdout)


def test_the_venv_imports_tfpack_from_the_wheel_not_the_checkout(installed: WheelInstall) -> None:
    probe = """
import importlib.metadata, json, sys
import packager, packager.image, packager.k8s, serving
print(json.dumps({
    "packager": packager.__file__,
    "serving": list(serving.__path__),  # a namespace package: no __file__
    "templates": str(packager.k8s.TEMPLATES_DIR),
    "dockerfile": str(packager.image._DOCKERFILE),
    "distribution": str(importlib.metadata.distribution("tfpack").locate_file("")),
    "sys_path": sys.path,
}))
"""
    found = json.loads(_check(_run([installed.python, "-c", probe], cwd=installed.work), "the probe").stdout)
    venv = installed.venv.resolve()
    assert len(found["serving"]) == 1, found["serving"]
    for key in ("packager", "templates", "dockerfile", "distribution"):
        assert Path(found[key]).resolve().is_relative_to(venv), (key, found[key])
    assert Path(found["serving"][0]).resolve().is_relative_to(venv), found["serving"]
    templates, dockerfile = Path(found["templates"]), Path(found["dockerfile"])
    # Real files copied into the wheel, not links back into the checkout.
    assert not templates.is_symlink() and not dockerfile.is_symlink()
    assert (templates / "kustomization.yaml").read_bytes() == (REPO / "k8s" / "kustomization.yaml").read_bytes()
    assert dockerfile.read_bytes() == (REPO / "Dockerfile").read_bytes()
    for entry in found["sys_path"]:
        path = Path(entry or installed.work).resolve()
        in_checkout = REPO in [path, *path.parents]
        # The project's .venv provides the dependencies; nothing else of the checkout is importable.
        in_project_venv = REPO / ".venv" in [path, *path.parents]
        assert not in_checkout or in_project_venv, f"{entry} puts the source checkout on sys.path"


def test_the_image_wheel_is_the_installed_wheel_packed_again_byte_for_byte(installed: WheelInstall) -> None:
    pack = (
        "import sys; from pathlib import Path; from packager._runtime_wheel import build_runtime_wheel; "
        "print(build_runtime_wheel(Path(sys.argv[1])))"
    )
    packed = [
        Path(
            _check(
                _run([installed.python, "-c", pack, installed.work / f"packed-{n}"], cwd=installed.work),
                "packing the installed tfpack",
            ).stdout.strip()
        )
        for n in (1, 2)
    ]
    assert packed[0].name == installed.wheel.name
    assert packed[0].read_bytes() == packed[1].read_bytes()
    with zipfile.ZipFile(installed.wheel) as original, zipfile.ZipFile(packed[0]) as repacked:
        assert sorted(repacked.namelist()) == sorted(original.namelist())
        dist_info = installed.wheel.name.split("-py3")[0] + ".dist-info"
        for name in original.namelist():
            if name not in (f"{dist_info}/WHEEL", f"{dist_info}/RECORD"):
                assert repacked.read(name) == original.read(name), name
        assert repacked.testzip() is None


def test_convert_sign_build_smoke_and_k8s_from_the_installed_tfpack(
    installed: WheelInstall, signing_keys: dict[str, Path], image_tags: list[str]
) -> None:
    from packager import _runtime_base

    source = write_frozen_classifier(installed.work / "src" / "classifier.pb")
    converted = _tfpack(installed, "convert", source, "--name", MODEL, "--output-dir", installed.work / "models")
    version_dir = Path(converted["version_dir"])
    _tfpack(installed, "sign", version_dir, "--key", signing_keys["private"])

    # A project-local venv inside the user's own git repository: its commit is not tfpack's.
    project = installed.venv.parent
    for command in (
        ["git", "init", "-q"],
        ["git", "-c", "user.name=u", "-c", "user.email=u@e", "commit", "-q", "--allow-empty", "-m", "user's project"],
    ):
        _check(_run(command, cwd=project), " ".join(command[:2]))

    tag = new_image_tag(image_tags, "wheel-install")
    built = _tfpack(
        installed,
        "build",
        version_dir.parent,
        "--tag",
        tag,
        "--base",
        "embedded",
        "--public-key",
        signing_keys["public"],
    )
    # The cached runtime base: its key does not depend on how tfpack is installed.
    assert built["base"] == _runtime_base.runtime_base_tag()
    assert built["models"] == {MODEL: [1]}

    labels = docker.from_env().images.get(tag).labels
    assert "org.opencontainers.image.revision" not in labels and "org.opencontainers.image.source" not in labels

    report = _tfpack(installed, "smoke", tag, "--model", MODEL, "--report", installed.work / "smoke.json")
    assert report["passed"] is True

    manifests = installed.work / "k8s"
    rendered = _tfpack(installed, "k8s", "--image", tag, "--model", MODEL, "--output-dir", manifests, "--allow-tag")
    assert rendered["files"]
    assert (manifests / "kustomization.yaml").is_file()
    assert (manifests / "overlays" / "cpu" / "kustomization.yaml").is_file()
    assert any(tag in path.read_text() for path in manifests.rglob("*.yaml"))
