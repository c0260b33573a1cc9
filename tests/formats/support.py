"""What the export tests share: version dirs converted by tfpack, fresh inputs, the SavedModel's answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from packager.convert import ConvertOptions, convert
from packager.layout import GOLDENS_FILE, Goldens
from packager.tf_runtime import tensorflow


def convert_sources(sources: dict[str, Path], models: Path) -> dict[str, Path]:
    """Convert each source with tfpack under its kind's name; the version dirs, by kind."""
    return {
        kind: convert(path, ConvertOptions(name=kind, output_dir=models)).version_dir for kind, path in sources.items()
    }


def fresh_feeds(version_dir: Path, *, rows: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs other than the goldens (same shapes and dtypes, other values, ``rows`` of them)."""
    goldens = Goldens.load(version_dir / GOLDENS_FILE)
    rng = np.random.default_rng(seed)
    return {
        key: rng.uniform(-1, 1, size=(rows, *value.shape[1:])).astype(value.dtype)
        for key, value in goldens.inputs.items()
    }


def serve_saved_model(version_dir: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the version dir's serving_default answers to ``feeds``."""
    tf = tensorflow()
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in feeds.items()}).items()}
