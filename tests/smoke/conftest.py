"""The model server the smoke tests share: one per package run, not one per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.factories.half_plus_two import write_half_plus_two_tf2
from tests.servers import running_model_server
from tests.smoke.support import MODEL, VERSION, Served, golden_y, write_assets


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One model server, serving half_plus_two version VERSION with its goldens."""
    base_path = tmp_path_factory.mktemp("models") / MODEL
    version_dir = write_half_plus_two_tf2(base_path, version=VERSION)
    write_assets(version_dir, {"y": golden_y()})
    args = [f"--model_name={MODEL}", f"--model_base_path={base_path}"]
    with running_model_server(args) as server:
        yield Served(version_dir, server.grpc_target, f"{server.host}:{server.rest_port}")
