"""``saex store``: summarise an activation store and verify its checksums (``saex.store.summary``); printed,
nothing written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saex.config import Config, opt
from saex.store.summary import summarize

NAME = "store"
HELP = "summarise an activation store (and verify its checksums)"


@dataclass
class StoreConfig(Config):
    """Which store ``saex store`` describes."""

    path: str = opt(positional=True)
    """Folder of the store."""
    verify: bool = False
    """Check every shard's sha256 against the manifest."""
    json: bool = False
    """Print the summary as JSON."""


CONFIG = StoreConfig


def run(cfg: StoreConfig, progress: bool = True) -> Path:
    print(summarize(cfg.path, verify=cfg.verify, as_json=cfg.json))
    return Path(cfg.path)
