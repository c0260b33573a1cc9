"""An image's baked files laid out in a temp dir: /etc/tfpack and /models as `tfpack build` bakes
them, for entrypoint tests that need no Docker."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from packager.layout import SIGNATURE_FILE, is_version_name, signed_digest
from serving.entrypoint import (
    MODEL_CONFIG_FILE,
    SESSION_CONFIG_FILE,
    BakedServing,
    ImageLayout,
    baked_etc_files,
    model_config_text,
)


def baked_layout(
    root: Path, public_key: Path | None, model_server: str, *, batching_parameters: str = "", **serving: object
) -> ImageLayout:
    """Bake ``root/etc`` for the model dirs already under ``root/models``.

    Args:
        public_key: the trust baked into etc/trust (None: an unsigned image).
        model_server: the server recorded in serving.json.
        batching_parameters: batching.config's text when ``serving`` turns batching on.
        serving: further BakedServing fields (allow_unsigned, allow_reload_config, labels,
            monitoring, batching, models_from_volume, digests). Without ``digests`` an image
            with ``public_key`` records each signed version dir's, as tfpack build does.
    """
    models = root / "models"
    if public_key is not None and "digests" not in serving:
        serving["digests"] = {
            model.name: {
                str(int(version.name)): signed_digest(version)
                for version in model.iterdir()
                if is_version_name(version.name) and (version / SIGNATURE_FILE).is_file()
            }
            for model in sorted(models.iterdir())
        }
    baked = BakedServing(
        model_server=model_server,
        models={m.name: sorted(int(v.name) for v in m.iterdir() if v.name.isdigit()) for m in sorted(models.iterdir())},
        trust="public_key" if public_key else "none",
        **serving,  # type: ignore[arg-type]
    )
    (root / "etc" / "trust").mkdir(parents=True)
    if public_key is not None:
        shutil.copyfile(public_key, root / "etc" / "trust" / "public_key.pem")
    files = baked_etc_files(baked, batching_parameters=batching_parameters if baked.batching else None)
    # The image's models.config names /models; here the models are under root/models.
    files[MODEL_CONFIG_FILE] = model_config_text(baked, str(models))
    # No session config: the command lines tests expect are the ones without it.
    del files[SESSION_CONFIG_FILE]
    for name, text in files.items():
        (root / "etc" / name).write_text(text)
    # No mountinfo file: nothing is mounted (tests that need mounts write one).
    return ImageLayout(
        etc_dir=root / "etc", models_root=models, mountinfo=root / "mountinfo", require_root_owned=os.geteuid() == 0
    )
