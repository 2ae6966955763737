"""``saex calibrate``: choose the sparsity coefficients α that give target L0s on one model and hook.

The L0 an α buys depends on the model, the hook, the input scale, the dictionary's width and the training
budget: the paper's α = 8.6e-4 (Cunningham et al. 2023, App. B; chosen on Pythia-70M) gives L0 ≈ 146 on
SmolLM2-135M layer 6 under ``mean_norm`` scaling, where ≈ 2e-3 gives ≈ 45. A sweep written as α values
therefore spans a different L0 range on every model. This command trains one short ensemble over a
geometric α grid (the paper's own sweep is ``logspace(-4, -2, 16)``, docs/training.md), reads each member's
held-out L0 at the end, and interpolates log α against log L0 piecewise-linearly (L0 falls monotonically
with α) to the α of every target L0; a target outside the grid's L0 range is extrapolated along the
nearest segment and flagged.

What the calibration measures is L0 after ``--steps``: L0 keeps falling with steps (on SmolLM2-135M layer 6,
R = 4, α = 3e-3 gives L0 32 after 1000 steps and 25 after 3000), so give it the full run's steps. It depends
much less on the width (α = 3.32e-3 after 3000 steps: L0 20.1 at R = 1, 21.5 at R = 2, 22.0 at R = 4), so a
narrow calibration (``--ratio 1``) is a cheap stand-in for a wide run, about 10% low on L0 there
(docs/training.md, "Choosing α"). Writes ``calibration.json`` and the sweep's own training folder under
``--out``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import saex
from saex.config import opt
from saex.devices import DeviceOptions, placement
from saex.errors import SaexError
from saex.files import locked_output, read_jsonl, write_json_atomic
from saex.store.reader import RowOptions, row_options
from saex.train.calibration import interpolate
from saex.train.config import TrainConfig
from saex.train.trainer import METRICS, train

NAME = "calibrate"
HELP = "choose the L1 coefficients α that give target L0s on a store's hook (a short sweep)"
RESULT = "calibration.json"


@dataclass
class CalibrateConfig(RowOptions, DeviceOptions):
    """What ``saex calibrate`` does; saved in calibration.json."""

    acts: str = "runs/acts"
    """Activation store to calibrate on (written by saex harvest)."""
    hook: str = ""
    """Hook point in the store, e.g. blocks.6.hook_resid_post."""
    out: str = "runs/calibrate"
    """Output folder: calibration.json and sweep/ (the calibration's training run)."""
    target_l0: list[float] = opt([30.0], gt=0, nonempty=True)
    """Target L0s (mean active features per input on held-out rows)."""
    grid: list[float] = opt([1e-4, 2.2e-4, 4.6e-4, 1e-3, 2.2e-3, 4.6e-3, 1e-2], gt=0)
    """α grid trained in the calibration sweep (geometric, spanning the targets; at least two values)."""
    arch: Literal["tied_l1", "untied_l1", "gated"] = "tied_l1"
    """tied_l1, untied_l1 or gated (the architectures whose sparsity an L1 coefficient α sets), as the run
    being calibrated."""
    ratio: float = opt(1.0, gt=0)
    """Dictionary ratio R of the calibration members: the run's own, or 1 (cheaper; L0 depends little on R)."""
    steps: int = opt(3000, gt=0)
    """Optimiser steps of the calibration sweep: those of the run being calibrated (L0 falls with steps)."""
    batch_size: int = opt(128, gt=0)
    """Inputs per step (that of the run being calibrated)."""
    lr: float = opt(1e-3, gt=0)
    """Adam learning rate (that of the run being calibrated)."""
    decay_fraction: float = opt(0.2, ge=0, le=1)
    """Learning-rate decay over the end of the run (that of the run being calibrated)."""
    normalize: Literal["none", "mean_norm"] = "mean_norm"
    """Input scaling, as saex train's --normalize."""
    decoder_bias: bool = False
    """untied_l1: learn a decoder bias, as saex train's --decoder-bias."""
    eval_tokens: int = opt(8192, gt=0)
    """Held-out inputs the final L0 is measured on."""
    seed: int = opt(0, ge=0)
    """Seed of the calibration sweep."""


@locked_output("saex calibrate")
def run(cfg: CalibrateConfig, progress: bool = True) -> Path:
    """Train the grid, measure held-out L0s, write calibration.json with the α of every target."""
    placement(cfg)  # a device the machine lacks fails before any work
    targets = cfg.target_l0
    grid = sorted(set(cfg.grid))
    if len(grid) < 2:
        raise SaexError(f"--grid needs at least two positive α values, got {cfg.grid}")
    out = Path(cfg.out)
    sweep = TrainConfig(
        acts=cfg.acts,
        hook=cfg.hook,
        out=str(out / "sweep"),
        arch=cfg.arch,
        ratio=[float(f"{cfg.ratio:g}")],
        alpha=[float(f"{a:g}") for a in grid],
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        decay_fraction=cfg.decay_fraction,
        normalize=cfg.normalize,
        decoder_bias=cfg.decoder_bias,
        eval_tokens=cfg.eval_tokens,
        eval_every=cfg.steps,
        seed=cfg.seed,
        device=cfg.device,
        **row_options(cfg),
    )
    train(sweep, progress=progress)
    run = json.loads((out / "sweep" / "run.json").read_text())
    final = {row["dictionary"]: row for row in read_jsonl(out / "sweep" / METRICS) if row.get("step") == cfg.steps}
    measured = [
        {"alpha": m["alpha"], "l0": final[m["name"]]["l0"], "fvu": final[m["name"]]["fvu"]} for m in run["members"]
    ]
    chosen = []
    for t in targets:
        alpha, extrapolated = interpolate([(p["alpha"], p["l0"]) for p in measured], t)
        chosen.append({"target_l0": t, "alpha": float(f"{alpha:.3g}"), "extrapolated": extrapolated})
    result = {
        "saex_version": saex.__version__,
        "config": asdict(cfg),
        "hook": cfg.hook,
        "grid": measured,
        "chosen": chosen,
        "alphas": [c["alpha"] for c in chosen],
        "method": "piecewise-linear interpolation of log α against log L0 (held-out, after the sweep's "
        f"{cfg.steps} steps at batch {cfg.batch_size})",
    }
    write_json_atomic(out / RESULT, result)
    return out


CONFIG = CalibrateConfig


def summary(out: str | Path) -> str:
    r = json.loads((Path(out) / RESULT).read_text())
    lines = [
        f"calibration of α at {r['hook']}: L0 after {r['config']['steps']} steps",
        "  grid: " + ", ".join(f"α {p['alpha']:.3g} → L0 {p['l0']:.1f}" for p in r["grid"]),
    ]
    lines += [
        f"  target L0 {c['target_l0']:g}: α = {c['alpha']:.3g}" + (" (extrapolated)" if c["extrapolated"] else "")
        for c in r["chosen"]
    ]
    return "\n".join(lines)
