"""Presets of ``saex reproduce``: which layers, sweeps and sample sizes stand in for the paper's study.

The paper (Cunningham et al. 2023, Sections 3-5 and Appendices B-G) trains tied SAEs on the residual stream
of every layer of Pythia-70M and untied ones on its MLPs, sweeps α and R, scores 150 features per method
with GPT-4 autointerp, patches IOI on Pythia-410M and studies single features. A preset scales that study
to a model and a machine: ``quick`` runs in minutes on 2 CPU cores, ``paper`` keeps the paper's sweeps and
sample sizes. Layers are chosen relative to the model's depth, so a preset works on any model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from saex.config import Config, opt
from saex.errors import SaexError

PRESETS = ("quick", "standard", "paper")

# The paper's choices (§3.3, App. E; saex.report.collect.PAPER_MAIN): α = 8.6e-4 residual, 3.2e-4 MLP, chosen on
# Pythia-70M.
# They are not reused as numbers: the L0 an α buys differs by model and hook (8.6e-4 gives L0 ≈ 146 on
# SmolLM2-135M layer 6), so every preset calibrates α per hook for target L0s (``saex calibrate``).
# Geometric α grids for the calibration sweeps, bracketing L0 ≈ 10-100 under mean_norm scaling on the models
# tried (SmolLM2-135M layer 6, R = 1, 3000 steps: α 2e-3 → L0 42, 3.32e-3 → 20, 4.51e-3 → 13; the layer-6 MLP
# neurons, untied, 1000 steps: 4e-4 → 620, 1.6e-3 → 48); targets outside are extrapolated (at most 10× beyond
# the grid, and flagged).
GRID_RESID = [1.5e-3, 3e-3, 6e-3]
GRID_MLP = [8e-4, 1.6e-3, 3.2e-3]


@dataclass
class Plan(Config):
    """The concrete study for one model: every number a stage of ``saex reproduce`` needs (printed by
    ``--dry-run``, saved in reproduce.json; ``--set key=value`` overrides a field, checked as declared)."""

    preset: str
    """The preset the plan was made from."""
    main_layer: int = opt(ge=0)
    """Where Fig. 4's prompt search, the R sweep (Fig. 8), the case studies and the dashboard run."""
    resid_layers: list[int] = opt(ge=0)
    """Residual-stream layers harvested and trained (tied SAEs)."""
    mlp_layers: list[int] = opt(ge=0)
    """MLP layers harvested and trained (untied SAEs on the post-nonlinearity neurons)."""
    ioi_layer: int = opt(ge=0)
    """Layer of the IOI feature patching (Fig. 3)."""
    main_target_l0_resid: float = opt(gt=0)
    """Target L0 of the main residual SAE."""
    main_target_l0_mlp: float = opt(gt=0)
    """Target L0 of the main MLP SAE."""
    target_l0_resid: list[float] = opt(gt=0)
    """Target L0s of the α sweep at the main and IOI layers (each calibrated to an α)."""
    target_l0_resid_other: list[float] = opt(gt=0)
    """Target L0s at the other residual layers."""
    target_l0_mlp: list[float] = opt(gt=0)
    """Target L0s at the MLP layers."""
    extra_alphas_resid: list[float] = opt(ge=0)
    """α trained as they are at every residual layer (0: the dense control)."""
    extra_alphas_mlp: list[float] = opt(ge=0)
    """α trained as they are at every MLP layer."""
    calibration_grid_resid: list[float] = opt(gt=0)
    """α grid of the residual calibration sweeps."""
    calibration_grid_mlp: list[float] = opt(gt=0)
    """α grid of the MLP calibration sweeps."""
    calibration_ratio: float = opt(gt=0)
    """Dictionary ratio R of the calibration sweeps."""
    calibration_batch: int = opt(gt=0)
    """Batch size of the calibration sweeps."""
    calibration_layers_resid: list[int] = opt(ge=0)
    """Residual layers calibrated ([]: every one); the others take the nearest one's α."""
    ratios_resid: list[float] = opt(gt=0)
    """Dictionary ratios R trained at the main layer (the others train the main R)."""
    ratios_mlp: list[float] = opt(gt=0)
    """Dictionary ratios R trained at the MLP layers."""
    main_ratio: float = opt(gt=0)
    """R of the main residual SAEs."""
    main_ratio_mlp: float = opt(gt=0)
    """R of the main MLP SAEs."""
    train_steps: int = opt(gt=0)
    """Optimiser steps of every training run and calibration sweep."""
    train_batch: int = opt(gt=0)
    """Batch size of the training runs."""
    corpus: str = opt()
    """The corpus (saex harvest's --corpus; --corpus of saex reproduce overrides it)."""
    heldout_fraction: float = opt(gt=0, lt=1)
    """Share of the corpus's documents held out."""
    tokens: int = opt(gt=0)
    """Train tokens harvested."""
    heldout_tokens: int = opt(gt=0)
    """Held-out tokens harvested."""
    context_length: int = opt(gt=0)
    """Tokens per context."""
    eval_tokens: int = opt(ge=0)
    """Held-out rows of the reconstruction metrics (0: every one)."""
    eval_contexts: int = opt(ge=0)
    """Held-out contexts of the spliced CE / KL."""
    ica_rows: int = opt(gt=0)
    """Rows of the ICA fit."""
    ica_max_iter: int = opt(gt=0)
    """FastICA iterations."""
    fragments: int = opt(gt=0)
    """Fragments indexed per hook."""
    fragment_length: int = opt(gt=0)
    """Tokens per fragment."""
    interpret_features: int = opt(gt=0)
    """Features scored per method."""
    ioi_prompts: int = opt(gt=0)
    """IOI prompt pairs."""
    ioi_mode: Literal["quick", "greedy", "both"] = opt()
    """IOI search (saex ioi --mode)."""
    circuit_depth: int = opt(gt=0)
    """Levels of the case study's upstream circuit."""
    case_top: int = opt(gt=0)
    """Features given case studies."""
    case_max_density: float = opt(gt=0, le=1)
    """Case studies skip features denser than this."""
    dashboard_features: int = opt(ge=0)
    """Features on the dashboard (0: all)."""


def _layers(n_layers: int, count: int) -> list[int]:
    """``count`` layers spread evenly from the first to the last."""
    if count >= n_layers:
        return list(range(n_layers))
    return sorted({round(i * (n_layers - 1) / (count - 1)) for i in range(count)})


def plan(preset: str, n_layers: int) -> Plan:
    return Plan(**_plan_values(preset, n_layers))


def _plan_values(preset: str, n_layers: int) -> dict:
    """The concrete study for a model with ``n_layers`` blocks: every number a stage needs.

    ``main_layer`` is where Fig. 4's prompt search, the R sweep (Fig. 8) and the dashboard run; the layer
    before it is also harvested so that a Fig. 5 circuit has an upstream dictionary. Sparsity is given as
    target L0s, turned into α per hook by a calibration stage: ``target_l0_resid`` is the α sweep at the main
    and IOI layers (at the main R), ``target_l0_resid_other`` at the other residual layers, ``extra_alphas_*``
    are added as they are (α = 0, the dense control). Training budgets are optimiser steps.
    """
    if preset not in PRESETS:
        raise SaexError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if n_layers < 2:
        raise SaexError(
            f"the model has {n_layers} layer(s); saex reproduce needs at least 2 (a circuit needs a "
            "layer before the main one)"
        )
    # About a fifth of the way in: Pythia-70M's apostrophe feature sits at layer 4 of 6 but the early-middle
    # layers of a deeper model are where the paper's autointerp advantage is largest (Fig. 2).
    main = max(1, round(0.2 * (n_layers - 1)))
    common = {
        "main_layer": main,
        # the main SAE: L0 ≈ 35 keeps ≤ 1% of features dense and most of the model's loss (measured: R = 4 at
        # L0 22 recovers 88% of the CE, at L0 46 has 1.0% of its features on > 10% of tokens)
        "main_target_l0_resid": 35.0,
        "main_target_l0_mlp": 35.0,
        "calibration_grid_resid": GRID_RESID,
        "calibration_grid_mlp": GRID_MLP,
        # Calibrated at R = 1 for the full step budget: L0 at a given α hardly depends on R (SmolLM2 layer 6,
        # 3000 steps: α 3.32e-3 gives L0 20.1 at R = 1, 21.5 at R = 2, 22.0 at R = 4) but keeps falling with
        # steps (at R = 4 the same α gives 32 after 1000 steps), so steps are kept and width is saved.
        "calibration_ratio": 1.0,
        "calibration_batch": 128,
        "calibration_layers_resid": [],
        "fragment_length": 64,
        "case_top": 3,
        "case_max_density": 0.05,
        "dashboard_features": 0,
        # the corpus (saex harvest's --corpus; --corpus of saex reproduce overrides it) and the share of its
        # documents held out
        "corpus": "default",
        "heldout_fraction": 0.1,
    }
    if preset == "quick":
        # Budgeted for `make demo` (< 15 minutes with setup on 2 cores). Measured on SmolLM2-135M layer 6,
        # R = 4 (docs/training.md, "Budgets"): at equal inputs more, smaller steps converge further (3000 steps
        # of 128: FVU 0.149 at L0 24.5; 2000 of 256: 0.157 at 25.7; 1500 of 512: 0.163 at 27.0), and every run
        # ends with L0 and loss flat over its last fifth. The MLP dictionaries (d_mlp wide, untied) would cost
        # as much again: they are in the standard preset.
        return common | {
            "preset": "quick",
            "resid_layers": [main - 1, main],
            "mlp_layers": [],
            "ioi_layer": main,
            # one calibration for both residual layers (measured: the same α gives L0 20.5 at layer 5 and 22.0
            # at layer 6 under mean_norm); the standard preset calibrates every hook
            "calibration_layers_resid": [main],
            "target_l0_resid": [15.0, 35.0],
            "target_l0_resid_other": [35.0],
            "target_l0_mlp": [35.0],
            "extra_alphas_resid": [],
            "extra_alphas_mlp": [],
            "ratios_resid": [2.0, 4.0],
            "ratios_mlp": [1.0],
            "main_ratio": 4.0,
            "main_ratio_mlp": 1.0,
            "train_steps": 3000,
            "train_batch": 128,
            "tokens": 100_000,
            "heldout_tokens": 60_000,
            "context_length": 128,
            "eval_tokens": 30_000,
            "eval_contexts": 8,
            "ica_rows": 8192,
            "ica_max_iter": 100,
            "fragments": 1500,
            "interpret_features": 60,
            "ioi_prompts": 6,
            "ioi_mode": "quick",
            "circuit_depth": 1,
        }
    # Pythia-410M layer 11 of 24 for Fig. 3.
    ioi = round(11 / 23 * (n_layers - 1))
    if preset == "standard":
        # The paper's study at a scale 2 CPU cores finish in about two hours: ≥ 4 residual layers for Fig. 2's
        # trend, α = 0 and 5 sparsity levels, R < 1, ≥ 1M held-out tokens, IOI at a mid layer on 20 prompts,
        # 150 features scored per method.
        resid = sorted(set(_layers(max(2, ioi + 1), 4)) | {main - 1, main, ioi})
        return common | {
            "preset": "standard",
            "resid_layers": resid,
            "mlp_layers": [main],
            "ioi_layer": ioi,
            "target_l0_resid": [10.0, 20.0, 35.0, 70.0, 140.0],
            "target_l0_resid_other": [35.0],
            "target_l0_mlp": [15.0, 35.0, 70.0],
            "extra_alphas_resid": [0.0],
            "extra_alphas_mlp": [0.0],
            "ratios_resid": [0.5, 1.0, 2.0, 4.0],
            "ratios_mlp": [1.0],
            "main_ratio": 4.0,
            "main_ratio_mlp": 1.0,
            "train_steps": 3000,
            "train_batch": 128,
            # ≥ 1M held-out tokens: the Wikipedia leads alone hold 1.07M in all, so the King James Bible
            # (Debian bible-kjv, 1.21M) joins them and 55% of the documents are held out (≈ 1.25M tokens)
            "corpus": "default,kjv",
            "heldout_fraction": 0.55,
            "tokens": 300_000,
            "heldout_tokens": 1_000_000,
            "context_length": 128,
            # FVU, L0 and the rest on the first 100k held-out rows; alive and never-fired over all of them
            "eval_tokens": 100_000,
            "eval_contexts": 32,
            "ica_rows": 16_384,
            "ica_max_iter": 200,
            "fragments": 8000,
            "interpret_features": 150,
            "ioi_prompts": 20,
            "ioi_mode": "quick",
            "circuit_depth": 1,
        }
    resid = _layers(n_layers, 6)
    if main - 1 not in resid:
        resid = sorted(set(resid) | {main - 1, main})
    return common | {
        "preset": "paper",
        "resid_layers": resid,
        "mlp_layers": _layers(n_layers, 6),
        "ioi_layer": ioi,
        # The code's sweep spans two decades of α (its code's logspace(-4, -2, 16); docs/training.md): here six sparsity levels over the L0 range
        # that spans, and its R series (Fig. 8).
        "target_l0_resid": [5.0, 10.0, 20.0, 40.0, 80.0, 160.0],
        "target_l0_resid_other": [10.0, 30.0, 100.0],
        "target_l0_mlp": [10.0, 30.0, 100.0],
        "extra_alphas_resid": [0.0],
        "extra_alphas_mlp": [0.0],
        "ratios_resid": [0.5, 1.0, 2.0, 4.0, 8.0],
        "ratios_mlp": [1.0, 2.0],
        "main_ratio": 2.0,
        "main_ratio_mlp": 1.0,
        # the paper: 5-50M activations, 1-3 epochs, batch 2048 (≈ 10k steps)
        "train_steps": 10_000,
        "train_batch": 2048,
        "tokens": 20_000_000,
        "heldout_tokens": 10_000_000,
        "context_length": 256,
        "eval_tokens": 0,
        "eval_contexts": 256,
        "ica_rows": 65_536,
        "ica_max_iter": 200,
        "fragments": 50_000,
        "interpret_features": 150,
        "ioi_prompts": 50,
        "ioi_mode": "quick",
        "circuit_depth": 2,
    }


def sweep_targets(p: Plan, hook_kind: str, layer: int) -> list[float]:
    """The target L0s trained at one hook: the α sweep at the main and IOI layers, fewer elsewhere."""
    if hook_kind == "mlp":
        return p.target_l0_mlp
    return p.target_l0_resid if layer in (p.main_layer, p.ioi_layer) else p.target_l0_resid_other


def estimate_seconds(
    p: Plan, n_params_per_layer: float, d_model: int, d_mlp: int, vocab: int, gflops: float
) -> dict[str, float]:
    """Rough time of each stage from FLOP counts and a measured fp32 matmul rate (``gflops``).

    An estimate, not a measurement. The efficiency factors were fitted to the quick preset on SmolLM2-135M
    on 2 CPU cores (docs/report.md gives the measured stage times beside the estimates); other shapes and
    machines will differ.
    """
    rate = gflops * 1e9
    depth = max(p.resid_layers + p.mlp_layers) + 1
    tokens = p.tokens + p.heldout_tokens
    hooks = len(p.resid_layers) + len(p.mlp_layers)
    out = {"harvest": 2 * n_params_per_layer * depth * tokens / (0.7 * rate)}

    def sae_flops(d: int, ratios, members: int, steps: int, batch: int) -> float:
        # A training step costs about 3 matmuls of B·d·F once codes are sparse (the first ~10% of steps,
        # dense, cost 5): forward, and the sparse products and Adam that scale like one or two more.
        return sum(3 * 2 * batch * d * r * d for r in ratios) * members * steps

    steps, batch = p.train_steps, p.train_batch
    train = calib = 0.0
    for L in p.resid_layers:
        members = len(set(sweep_targets(p, "resid", L)) | {p.main_target_l0_resid}) + len(p.extra_alphas_resid)
        # every α × every R at the main layer (Figs. 6/7, 8, 16), the main R elsewhere
        ratios = p.ratios_resid if p.main_layer == L else [p.main_ratio]
        train += sae_flops(d_model, ratios, members, steps, batch)
        if L in (p.calibration_layers_resid or p.resid_layers):
            calib += sae_flops(
                d_model, [p.calibration_ratio], len(p.calibration_grid_resid), steps, p.calibration_batch
            )
    for _ in p.mlp_layers:
        members = len(set(p.target_l0_mlp) | {p.main_target_l0_mlp}) + len(p.extra_alphas_mlp)
        # untied: a second matrix in every product
        train += 2 * sae_flops(d_mlp, p.ratios_mlp, members, steps, batch)
        calib += 2 * sae_flops(d_mlp, [p.calibration_ratio], len(p.calibration_grid_mlp), steps, p.calibration_batch)
    # small batches run well below the matmul peak (per-step overheads, Adam over every parameter)
    out["calibrate"] = calib / (0.25 * rate)
    out["train"] = train / (0.4 * rate)
    # FastICA: iterations × rows × d² multiply-adds a few times over, per residual layer (PCA is cheap).
    out["baselines"] = len(p.resid_layers) * 24 * p.ica_max_iter * p.ica_rows * d_model**2 / rate
    n_model = n_params_per_layer * depth + 2 * vocab * d_model
    n_alpha = len(p.target_l0_resid) + len(p.extra_alphas_resid)
    n_dicts = (
        n_alpha * len(p.ratios_resid)
        + (len(p.resid_layers) - 1) * (len(p.target_l0_resid_other) + 1 + len(p.extra_alphas_resid))
        + 6 * hooks
    )
    eval_tokens = p.eval_contexts * p.context_length
    out["eval"] = (n_dicts + 2 * hooks) * 2 * n_model * eval_tokens / (0.25 * rate)
    out["features"] = hooks * 8 * 2 * d_model * 4 * d_model * min(p.heldout_tokens, 64 * p.fragments) / (0.5 * rate)
    # Quick mode: ~160 exact evaluations of ~20-token prompts per dictionary (the α sweep and 2 PCA variants).
    n_ioi = len(p.target_l0_resid) + len(p.extra_alphas_resid) + 2
    out["ioi"] = n_ioi * 160 * 2 * n_model * p.ioi_prompts * 20 / (0.75 * rate)
    out["other"] = 0.1 * sum(out.values())  # autointerp (offline), case studies, dashboard, report
    return {k: math.ceil(v) for k, v in out.items()}
