"""``saex mmcs``: mean max cosine similarity of one dictionary's features against another's (paper §3.3,
``saex.evaluate.mmcs``); printed, nothing written."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from saex.config import Config, opt
from saex.dictionaries import load_dictionary
from saex.evaluate.mmcs import mmcs

NAME = "mmcs"
HELP = "mean max cosine similarity of one dictionary's features against another's"


@dataclass
class MmcsConfig(Config):
    """Which dictionaries ``saex mmcs`` compares."""

    reference: str = opt(positional=True)
    """Dictionary whose atoms are matched against (any format saex reads)."""
    other: str = opt(positional=True)
    """Dictionary whose atoms are each matched."""
    hungarian: bool = True
    """Also the one-to-one (Hungarian) matching (--no-hungarian skips it)."""
    json: bool = False
    """Print as JSON."""


CONFIG = MmcsConfig


def run(cfg: MmcsConfig, progress: bool = True) -> Path:
    r = mmcs(load_dictionary(cfg.reference).W_dec_FD, load_dictionary(cfg.other).W_dec_FD, hungarian=cfg.hungarian)
    print(json.dumps(r, indent=1) if cfg.json else "  ".join(f"{k} {v:.4g}" for k, v in r.items()))
    return Path(cfg.other)
