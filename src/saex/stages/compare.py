"""``saex compare``: which architecture should I use? Every one trained on one store, side by side, resumable.

Runs the stage graph of ``saex.reproduce.architectures`` (harvest unless ``--acts`` names a store, α
calibration for the L1 architectures, one ensemble per architecture over the target L0s, eval, features and
offline autointerp at a matched L0, and the comparison's plots and tables) through the resumable pipeline of
``saex reproduce``: a killed run started again continues where it stopped, and a stage whose configuration or
inputs changed is run again. Results and measured times: docs/architectures.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from saex.config import Config, config_dict, opt
from saex.dictionaries import architecture_names
from saex.files import locked_output
from saex.reproduce.architectures import build_stages
from saex.reproduce.pipeline import Pipeline

NAME = "compare"
HELP = "which architecture to use: every one trained on one store at matched sparsity, evaluated side by side"


@dataclass
class CompareConfig(Config):
    """What ``saex compare`` runs; saved in reproduce.json of its run folder."""

    out: str = "runs/architectures"
    """Run folder: acts/, calibrate/, dicts/, eval/, features/, interpret/, comparison/ and reproduce.json."""
    acts: str = ""
    """Activation store to compare on (saex harvest); empty: harvest one into OUT/acts from --model."""
    model: str = "smollm2-135m"
    """Model harvested when --acts is empty (the embedded default)."""
    hook: str = "blocks.6.hook_resid_post"
    """Hook point every architecture is trained on."""
    tokens: int = opt(100_000, gt=0)
    """Train tokens harvested when --acts is empty."""
    heldout_tokens: int = opt(60_000, gt=0)
    """Held-out tokens harvested when --acts is empty."""
    archs: list[str] = opt(
        ["tied_l1", "untied_l1", "gated", "topk", "batchtopk", "matryoshka", "jumprelu"],
        nonempty=True,
        choices=architecture_names,
    )
    """Architectures compared."""
    l0: list[float] = opt([10.0, 30.0, 80.0, 200.0], gt=0, nonempty=True)
    """Target L0s: k of the TopK family, --target-l0 of jumprelu, calibrated α of tied_l1, untied_l1 and gated."""
    ratio: float = opt(4.0, gt=0)
    """Dictionary ratio R of every dictionary."""
    steps: int = opt(3000, gt=0)
    """Optimiser steps of every training run and calibration (the same tokens for every architecture)."""
    batch_size: int = opt(128, gt=0)
    """Inputs per step."""
    grid_l1: list[float] = opt([2.5e-4, 7e-4, 2e-3, 5e-3, 1.2e-2], gt=0, nonempty=True)
    """α grid of the tied_l1 and untied_l1 calibration sweeps (at least two values spanning the targets)."""
    grid_gated: list[float] = opt([3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1], gt=0, nonempty=True)
    """α grid of the gated calibration sweep (its penalty acts on the gate alone: larger α for the same L0)."""
    contexts: int = opt(16, ge=0)
    """Held-out contexts of the spliced CE / KL (0: none)."""
    interpret_l0: float = opt(30.0, gt=0)
    """The matched L0: each architecture's dictionary nearest it gets offline autointerp."""
    interpret_features: int = opt(60, gt=0)
    """Features scored per architecture."""
    fragments: int = opt(4000, gt=0)
    """Held-out fragments indexed for autointerp."""
    fragment_length: int = opt(64, gt=0)
    """Tokens per fragment (the paper: 64; at most the store's context length)."""
    seed: int = opt(0, ge=0)
    """Seed of training and calibration."""


CONFIG = CompareConfig


@locked_output("saex compare")
def run(cfg: CompareConfig, progress: bool = True) -> Path:
    root = Path(cfg.out)
    header = {"command": "compare", "config": config_dict(cfg)}
    log = print if progress else (lambda *a, **k: None)
    t0 = time.perf_counter()
    state = Pipeline(root, header, build_stages(cfg, root, progress), log).run()
    seconds = sum(r.get("seconds", 0.0) for r in state["stages"].values())
    log(f"compare: stages took {seconds:.0f} s in all ({time.perf_counter() - t0:.0f} s this time)")
    return root


def summary(out: str | Path) -> str:
    out = Path(out)
    state = json.loads((out / "reproduce.json").read_text())
    seconds = {name: r.get("seconds") for name, r in state["stages"].items()}
    lines = [(out / "comparison" / "comparison.md").read_text()]
    lines.append("stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items() if v is not None))
    lines.append(f"plots and numbers in {out / 'comparison'}")
    return "\n".join(lines)
