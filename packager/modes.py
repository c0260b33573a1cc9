"""The values of convert's and inspect's mode flags: one Literal type each, and its choices.

The code passes modes around as these Literal types (mypy checks every comparison against
them); the CLI offers the tuples as its choices; JSON records carry the same strings. They live
in this import-free leaf so that the CLI can build its options without importing graph/ or
sources/ (and numpy, TensorFlow) before a command runs. What each mode does is documented where
it is applied (graph/towers.py, graph/batchnorm.py, sources/checkpoint.py).
"""

from __future__ import annotations

from typing import Literal, get_args

# --towers: how a multi-GPU tower family is served (auto: merge when there are towers).
TowerMode = Literal["auto", "merge", "split", "single", "off"]
# What --towers resolves to once the graph is known (auto is never left).
ServedTowerMode = Literal["merge", "split", "single", "off"]
# --ema: restore checkpoint variables from their ExponentialMovingAverage shadows.
EmaMode = Literal["auto", "on", "off"]
# --batchnorm: batch norm on batch statistics refused (auto), rewritten (inference) or kept (batch).
BatchNormMode = Literal["auto", "inference", "batch"]

TOWER_MODES: tuple[TowerMode, ...] = get_args(TowerMode)
EMA_MODES: tuple[EmaMode, ...] = get_args(EmaMode)
BATCHNORM_MODES: tuple[BatchNormMode, ...] = get_args(BatchNormMode)
