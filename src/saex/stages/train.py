"""``saex train``: a sweep of sparse autoencoders on one hook of an activation store (``saex.train``).

The config is ``saex.train.config.TrainConfig`` (the trainer reads it throughout); this module is the
command: it runs the trainer and prints each dictionary's held-out numbers and convergence verdict.
"""

from __future__ import annotations

from pathlib import Path

from saex.train import trainer
from saex.train.config import TrainConfig

NAME = "train"
HELP = "train a sweep of sparse autoencoders on an activation store"
CONFIG = TrainConfig


def run(cfg: TrainConfig, progress: bool = True) -> Path:
    return trainer.train(cfg, progress=progress)


def summary(out: Path) -> str:
    return trainer.summary(out)
