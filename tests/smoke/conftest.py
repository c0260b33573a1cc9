"""The model servers the smoke tests share: one per package run, not one per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.factories.half_plus_two import write_half_plus_two_tf1, write_half_plus_two_tf2
from tests.servers import running_model_server
from tests.smoke.support import MODEL, VERSION, Fleet, Served, golden_y, write_assets

# The fleet: half_plus_two (TF1: Classify and Regress signatures) in versions 1 and 2, both
# served, with labels; half_plus_three (TF2) in version 7.
FLEET_LABELS = {MODEL: {"stable": 1, "canary": 2}}


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One model server, serving half_plus_two version VERSION with its goldens."""
    base_path = tmp_path_factory.mktemp("models") / MODEL
    version_dir = write_half_plus_two_tf2(base_path, version=VERSION)
    write_assets(version_dir, {"y": golden_y()})
    args = [f"--model_name={MODEL}", f"--model_base_path={base_path}"]
    with running_model_server(args) as server:
        yield Served(version_dir, server.grpc_target, f"{server.host}:{server.rest_port}")


@pytest.fixture(scope="package")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One model server for a models dir of two models, one of them in two versions with labels."""
    root = tmp_path_factory.mktemp("fleet")
    models_dir = root / "models"
    for version, offset in ((1, 2.0), (2, 3.0)):
        write_assets(write_half_plus_two_tf1(models_dir / MODEL, version, offset), {"y": golden_y(offset)})
    write_assets(write_half_plus_two_tf2(models_dir / "half_plus_three", 7, 3.0), {"y": golden_y(3.0)})
    labels = "".join(f"    version_labels {{ key: '{k}' value: {v} }}\n" for k, v in FLEET_LABELS[MODEL].items())
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        f"  config {{\n    name: '{MODEL}'\n    base_path: '{models_dir / MODEL}'\n"
        "    model_platform: 'tensorflow'\n    model_version_policy { all {} }\n"
        f"{labels}  }}\n"
        f"  config {{\n    name: 'half_plus_three'\n    base_path: '{models_dir / 'half_plus_three'}'\n"
        "    model_platform: 'tensorflow'\n  }\n"
        "}\n"
    )
    with running_model_server([f"--model_config_file={config}"]) as server:
        yield Fleet(models_dir, server.grpc_target, f"{server.host}:{server.rest_port}")
