"""The stage graph of ``saex compare``: every architecture on one store, at matched sparsity, side by side.

Run by the resumable pipeline of ``saex reproduce`` (``saex.reproduce.pipeline``) on one run folder:
``acts/`` (harvested unless a store is given), ``calibrate/<arch>/`` (the L1 architectures' α for each target
L0: ``saex calibrate``), ``dicts/<arch>/`` (one ensemble per architecture, every target L0 a member:
k = L0 for the TopK family, ``--target-l0`` for JumpReLU, the calibrated α for tied_l1, untied_l1 and gated),
``eval/`` (FVU, L0, dead fraction, spliced CE of every dictionary), ``features/`` and ``interpret/`` (offline
autointerp of each architecture's dictionary nearest the matched L0), ``comparison/`` (the plots, their
numbers and a Markdown summary: ``saex.report.architectures``). Every architecture trains on the same store
for the same steps and batch, so for the same tokens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from saex.errors import SaexError
from saex.report import architectures as summary
from saex.reproduce.graph import calibrated_alphas
from saex.reproduce.pipeline import Stage, module_stage
from saex.stages import calibrate, eval, features, harvest, interpret, train

#: Architectures whose sparsity is set by an L1 coefficient, chosen per target L0 by a calibration sweep.
CALIBRATED = ("tied_l1", "untied_l1", "gated")
#: Architectures whose sparsity is given as k active latents per input.
BY_K = ("topk", "batchtopk", "matryoshka")


def sparsity(cfg: Any, arch: str, root: Path) -> dict[str, Any]:
    """The training options that give ``arch`` the target L0s of ``cfg.l0``."""
    if arch in BY_K:
        return {"k": [round(t) for t in cfg.l0]}
    if arch == "jumprelu":
        return {"target_l0": list(cfg.l0)}
    return {"alpha": sorted(set(calibrated_alphas(root / "calibrate" / arch).values()))}


def nearest(root: Path, arch: str, l0: float) -> Path:
    """The dictionary of ``arch`` whose held-out L0 (``saex eval``, as the comparison reads it) is nearest
    ``l0`` on a log scale."""
    series = [r for r in summary.collect(root)["architectures"].get(arch, []) if r["l0"]]
    if not series:
        raise SaexError(f"no evaluated dictionary of {arch} in {root / 'eval'}")
    return Path(min(series, key=lambda r: abs(math.log(r["l0"] / l0)))["path"])


def build_stages(cfg: Any, root: Path, progress: bool) -> list[Stage]:
    """The stages, in order; ``cfg`` is ``saex.stages.compare.CompareConfig``."""
    acts = Path(cfg.acts) if cfg.acts else root / "acts"
    stages: list[Stage] = []

    def add(name, folder, inputs, make, stage):
        stages.append(module_stage(name, folder, inputs, make, stage, root, progress))

    harvested = () if cfg.acts else ("harvest",)
    if not cfg.acts:
        add(
            "harvest",
            "acts",
            (),
            lambda: harvest.HarvestConfig(
                out=str(acts),
                model=cfg.model,
                hooks=[cfg.hook],
                tokens=cfg.tokens,
                heldout_tokens=cfg.heldout_tokens,
            ),
            harvest,
        )
    common = dict(steps=cfg.steps, batch_size=cfg.batch_size, normalize="mean_norm", seed=cfg.seed)
    for arch in [a for a in cfg.archs if a in CALIBRATED]:
        add(
            f"calibrate:{arch}",
            f"calibrate/{arch}",
            harvested,
            lambda arch=arch: calibrate.CalibrateConfig(
                acts=str(acts),
                hook=cfg.hook,
                out=str(root / "calibrate" / arch),
                target_l0=list(cfg.l0),
                grid=list(cfg.grid_gated if arch == "gated" else cfg.grid_l1),
                arch=arch,
                ratio=1.0,
                decoder_bias=arch == "untied_l1",
                **common,
            ),
            calibrate,
        )
    for arch in cfg.archs:
        add(
            f"train:{arch}",
            f"dicts/{arch}",
            harvested + ((f"calibrate:{arch}",) if arch in CALIBRATED else ()),
            lambda arch=arch: train.CONFIG(
                acts=str(acts),
                hook=cfg.hook,
                out=str(root / "dicts" / arch),
                arch=arch,
                ratio=[cfg.ratio],
                decoder_bias=arch == "untied_l1",
                **sparsity(cfg, arch, root),
                **common,
            ),
            train,
        )
    trained = tuple(f"train:{a}" for a in cfg.archs)
    add(
        "eval",
        "eval",
        harvested + trained,
        lambda: eval.EvalConfig(
            acts=str(acts),
            dicts=[str(root / "dicts" / a) for a in cfg.archs],
            out=str(root / "eval"),
            contexts=cfg.contexts,
        ),
        eval,
    )
    add(
        "features",
        "features",
        ("eval",),
        lambda: features.FeaturesConfig(
            acts=str(acts),
            dicts=[str(nearest(root, a, cfg.interpret_l0)) for a in cfg.archs],
            out=str(root / "features"),
            fragments=cfg.fragments,
            fragment_length=cfg.fragment_length,
        ),
        features,
    )
    add(
        "interpret",
        "interpret",
        ("features",),
        lambda: interpret.InterpretConfig(
            features=[str(root / "features")], out=str(root / "interpret"), n_features=cfg.interpret_features
        ),
        interpret,
    )
    stages.append(
        Stage(
            "comparison",
            "comparison",
            ("eval", "interpret"),
            lambda: {"archs": list(cfg.archs), "l0": list(cfg.l0), "interpret_l0": cfg.interpret_l0},
            lambda c: summary.write(root, root / "comparison"),
        )
    )
    return stages
