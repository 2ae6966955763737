"""Training configuration and the sweep it expands to."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from saex.errors import SaexError
from saex.store.reader import RowOptions

ARCH_NAMES = ("tied_l1", "untied_l1", "topk")
NORMALIZE = ("none", "mean_norm")


@dataclass
class TrainConfig(RowOptions):
    """What ``saex train`` does; saved as run.json and in every dictionary's metadata."""

    acts: str = "runs/acts"
    """Activation store to train on (written by saex harvest)."""
    hook: str = ""
    """Hook point in the store to train on, e.g. blocks.6.hook_resid_post."""
    out: str = "runs/dicts"
    """Output folder: one sub-folder per dictionary (SAELens layout), run.json, metrics.jsonl, checkpoint/."""
    arch: str = "tied_l1"
    """tied_l1 (the paper's SAE), untied_l1 (paper App. C.3, for MLPs) or topk (Gao et al. 2024)."""
    ratio: str = "4"
    """Dictionary ratios R = d_dict / d_in, comma-separated; each is one member group of the sweep."""
    alpha: str = "8.6e-4"
    """L1 coefficients α (tied_l1, untied_l1), comma-separated; every (R, α) pair is one dictionary."""
    k: str = "32"
    """Active latents per input (topk), comma-separated; every (R, k) pair is one dictionary."""
    steps: int = 10_000
    """Optimiser steps: the training budget. Every dictionary of the sweep sees steps × batch-size inputs;
    when the store holds fewer, it is read again in a new shuffle (several passes are normal: the paper
    trained 1-3 epochs over 5-50M activations; a small store needs more passes to converge)."""
    batch_size: int = 1024
    """Inputs per step."""
    lr: float = 1e-3
    """Adam learning rate (the paper's 1e-3)."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warm-up from 0."""
    decay_fraction: float = 0.2
    """Fraction of the run, at its end, over which the learning rate decays linearly to 0 (0: constant)."""
    normalize: str = "none"
    """none, or mean_norm: scale inputs so that their mean norm is sqrt(d_in) (one α then carries across
    layers); the scale is folded back into the saved weights."""
    decoder_bias: bool = False
    """untied_l1: learn a decoder bias (also subtracted before encoding). The paper has none."""
    aux_k: int = 512
    """topk: dead latents used by the aux-k loss."""
    aux_coef: float = 0.03125
    """topk: weight of the aux-k loss (Gao et al.: 1/32)."""
    dead_window: int | None = None
    """A feature is dead (for aux-k, resampling and the logged dead fraction) when it has not fired on any
    of the last this-many training inputs; default: a fifth of the run's inputs, at most 10M. It must be
    shorter than the run, or nothing could ever count as dead."""
    resample_every: int = 0
    """Resample dead features every this-many steps (0: never; the paper does not resample)."""
    eval_every: int | None = None
    """Steps between held-out evaluations (loss, MSE, FVU, L0, dense and dead fractions) in metrics.jsonl;
    default: 20 evaluations over the run, which the convergence check reads; 0 disables them (and the check)."""
    eval_tokens: int = 8192
    """Held-out inputs per evaluation."""
    checkpoint_every: int = 500
    """Steps between checkpoints (exact resume after a kill)."""
    seed: int = 0
    """Seed of initialisation, data order and resampling."""
    shards_in_buffer: int = 4
    """Store shards shuffled together in memory (bounded memory, more mixing when larger)."""


@dataclass(frozen=True)
class Member:
    """One dictionary of the sweep."""

    name: str
    ratio: float
    d_dict: int
    alpha: float
    k: int | None
    seed: int


def dead_window(cfg: TrainConfig) -> int:
    """Inputs without a firing after which a feature counts as dead (the default: a fifth of the run)."""
    if cfg.dead_window is not None:
        return cfg.dead_window
    return max(cfg.batch_size, min(10_000_000, cfg.steps * cfg.batch_size // 5))


def eval_every(cfg: TrainConfig) -> int:
    """Steps between held-out evaluations (the default: 20 over the run)."""
    return max(1, cfg.steps // 20) if cfg.eval_every is None else cfg.eval_every


def parse_floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError as e:
        raise SaexError(f"--{name} must be comma-separated numbers, got {text!r}") from e
    if not values:
        raise SaexError(f"--{name} is empty")
    if any(not math.isfinite(v) for v in values):
        raise SaexError(f"--{name} values must be finite, got {text!r}")
    return values


def _member_seed(seed: int, arch: str, ratio: float, alpha: float, k: int | None) -> int:
    # A member's initialisation depends on its own settings only, not on what else is in the sweep:
    # a dictionary trained alone equals the same dictionary trained inside any ensemble.
    key = f"{seed}|{arch}|{ratio!r}|{alpha!r}|{k}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:6], "big")


def validate(cfg: TrainConfig, d_in: int) -> list[Member]:
    """Check the config against the store's width and expand the sweep into members."""
    if cfg.arch not in ARCH_NAMES:
        raise SaexError(f"unknown --arch {cfg.arch!r}; allowed: {list(ARCH_NAMES)}")
    if cfg.normalize not in NORMALIZE:
        raise SaexError(f"unknown --normalize {cfg.normalize!r}; allowed: {list(NORMALIZE)}")
    for name in ("steps", "batch_size", "eval_tokens", "shards_in_buffer", "dead_window"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise SaexError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    for name in ("warmup_steps", "resample_every", "eval_every", "checkpoint_every", "exclude_first"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            raise SaexError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if cfg.aux_k < 1:
        raise SaexError(f"--aux-k must be at least 1, got {cfg.aux_k}")
    if cfg.aux_coef < 0:
        raise SaexError(f"--aux-coef must be >= 0 (0 turns the aux-k loss off), got {cfg.aux_coef}")
    if not cfg.lr > 0:
        raise SaexError(f"--lr must be positive, got {cfg.lr}")
    if not 0.0 <= cfg.decay_fraction <= 1.0:
        raise SaexError(f"--decay-fraction must be in [0, 1], got {cfg.decay_fraction}")
    if cfg.dead_window is not None and cfg.dead_window >= cfg.steps * cfg.batch_size:
        raise SaexError(
            f"--dead-window {cfg.dead_window} is not shorter than the run ({cfg.steps} steps × "
            f"{cfg.batch_size} = {cfg.steps * cfg.batch_size} inputs): no feature could ever count as dead"
        )
    ratios = parse_floats(cfg.ratio, "ratio")
    bad = [r for r in ratios if r <= 0]
    if bad:
        raise SaexError(f"dictionary ratio R must be > 0, got {bad[0]:g}")
    members = []
    for r in ratios:
        d_dict = round(r * d_in)
        if d_dict < 1:
            raise SaexError(f"ratio {r:g} gives no features for d_in {d_in}")
        if cfg.arch == "topk":
            for k in parse_floats(cfg.k, "k"):
                if k != int(k) or not 1 <= k <= d_dict:
                    raise SaexError(f"--k {k:g} must be an integer in 1..{d_dict} (the dictionary size for R={r:g})")
                k = int(k)
                members.append(
                    Member(f"topk_r{r:g}_k{k}", r, d_dict, 0.0, k, _member_seed(cfg.seed, cfg.arch, r, 0.0, k))
                )
        else:
            for a in parse_floats(cfg.alpha, "alpha"):
                if a < 0:
                    raise SaexError(f"the sparsity coefficient α must be >= 0, got {a:g}")
                members.append(
                    Member(
                        f"{cfg.arch}_r{r:g}_a{a:.3g}", r, d_dict, a, None, _member_seed(cfg.seed, cfg.arch, r, a, None)
                    )
                )
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise SaexError(f"the sweep names a dictionary twice: {sorted(n for n in names if names.count(n) > 1)[0]}")
    return members
