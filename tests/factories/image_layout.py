"""An image's baked files laid out in a temp dir: /etc/tfpack and /models as `tfpack build` bakes
them, for entrypoint tests that need no Docker."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from serving.entrypoint import BakedServing, ImageLayout, model_config_text


def baked_layout(root: Path, public_key: Path | None, model_server: str, **serving: object) -> ImageLayout:
    """Bake ``root/etc`` for the model dirs already under ``root/models``.

    Args:
        public_key: the trust baked into etc/trust (None: an unsigned image).
        model_server: the server recorded in serving.json.
        serving: further BakedServing fields (allow_unsigned, allow_reload_config).
    """
    models = root / "models"
    baked = BakedServing(
        model_server=model_server,
        models={m.name: sorted(int(v.name) for v in m.iterdir() if v.name.isdigit()) for m in sorted(models.iterdir())},
        trust="public_key" if public_key else "none",
        **serving,  # type: ignore[arg-type]
    )
    (root / "etc" / "trust").mkdir(parents=True)
    if public_key is not None:
        shutil.copyfile(public_key, root / "etc" / "trust" / "public_key.pem")
    (root / "etc" / "serving.json").write_text(baked.dumps())
    (root / "etc" / "models.config").write_text(model_config_text(baked.served_versions, str(models)))
    # No mountinfo file: nothing is mounted (tests that need mounts write one).
    return ImageLayout(
        etc_dir=root / "etc", models_root=models, mountinfo=root / "mountinfo", require_root_owned=os.geteuid() == 0
    )
