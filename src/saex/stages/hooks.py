"""``saex hooks``: a model's hook points and the modules behind them (``saex.lm.hooks``); printed, nothing
written."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from saex.config import Config
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model

NAME = "hooks"
HELP = "list a model's hook points and the modules behind them"


@dataclass
class HooksConfig(Config):
    """Which model ``saex hooks`` describes."""

    model: str = "smollm2-135m"
    """Embedded model, local folder or hub id."""
    json: bool = False
    """Print as JSON."""


CONFIG = HooksConfig


def run(cfg: HooksConfig, progress: bool = True) -> Path:
    hooked = HookedLM(load_model(cfg.model).model)
    rows = [hooked.resolve(n) for n in hooked.hook_names()]
    if cfg.json:
        print(json.dumps({p.name: p.describe() for p in rows}, indent=1))
    else:
        for p in rows:
            print(f"{p.name:<28} {p.capture:>6} of {p.module:<40} width {p.width}")
    return Path(cfg.model)
