"""``saex mmcs``: mean max cosine similarity of one dictionary's features against another's (paper §3.3,
``saex.evaluate.mmcs``); printed, nothing written."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from saex.config import opt
from saex.devices import DeviceOptions, placement
from saex.dictionaries import load_dictionary
from saex.evaluate.mmcs import mmcs

NAME = "mmcs"
HELP = "mean max cosine similarity of one dictionary's features against another's"


@dataclass
class MmcsConfig(DeviceOptions):
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
    device = placement(cfg).device  # the cosine matrix is computed there; the Hungarian matching on the CPU
    reference, other = (load_dictionary(p).W_dec_FD.detach().to(device) for p in (cfg.reference, cfg.other))
    r = mmcs(reference, other, hungarian=cfg.hungarian)
    print(json.dumps(r, indent=1) if cfg.json else "  ".join(f"{k} {v:.4g}" for k, v in r.items()))
    return Path(cfg.other)
