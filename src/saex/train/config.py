"""Training configuration and the sweep it expands to."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from saex.config import opt
from saex.data.packing import ContextOptions
from saex.devices import LMOptions
from saex.dictionaries.ensemble import Member, architecture_names, architectures
from saex.dictionaries.matryoshka import PREFIXES
from saex.errors import SaexError
from saex.store.reader import RowOptions


@dataclass
class TrainConfig(LMOptions, ContextOptions, RowOptions):
    """What ``saex train`` does; saved as run.json and in every dictionary's metadata."""

    acts: str = "runs/acts"
    """Activation store to train on (written by saex harvest); unused with --model."""
    hook: str = ""
    """Hook point in the store to train on, e.g. blocks.6.hook_resid_post."""
    out: str = "runs/dicts"
    """Output folder: one sub-folder per dictionary (SAELens layout), run.json, metrics.jsonl, checkpoint/ (with
    several --hooks, one such folder per hook under it, and one checkpoint/)."""
    model: str = ""
    """Train from this model's activations computed on the fly, no store (docs/scaling.md): an embedded model
    (smollm2-135m, gemma3-270m), a local checkpoint folder or a hub id, read over --corpus. Empty: train on
    the store --acts."""
    hooks: list[str] = opt([])
    """With --model: hook points (comma-separated), each trained as its own sweep from one forward pass of the
    model, in its own sub-folder of --out (default: --hook alone, written to --out itself)."""
    lm_batch_size: int = opt(16, gt=0)
    """With --model: contexts per forward pass (as saex harvest's --batch-size)."""
    buffer_tokens: int = opt(262_144, gt=0)
    """With --model: activation rows shuffled together (rounded down to whole batches; memory: this × the summed
    widths of the hooks × 4 bytes). One batch with --no-shuffle reads the stream in order."""
    calibration_tokens: int = opt(65_536, gt=0)
    """With --model: the first this-many tokens of the train stream set the input scale (--normalize) and the
    row-norm limit (--max-norm-ratio), as a store's first shard does (saex harvest's --shard-tokens)."""
    heldout_acts: str = ""
    """With --model: evaluate on the held-out split of this store (same model, corpus and hooks) instead of
    held-out activations computed from the corpus's held-out documents."""
    shuffle: bool = True
    """Shuffle the training rows (a store: shards in a seeded order, rows within each --shards-in-buffer
    buffer; --model: rows within each --buffer-tokens buffer). Off: rows in stream order."""
    autocast: Literal["none", "bfloat16"] = "none"
    """Train the dictionaries under bfloat16 autocast (weights, optimiser and saved dictionaries stay float32);
    the fused tied / untied ReLU steps compute in float32 regardless."""
    arch: str = opt("tied_l1", choices=architecture_names)
    """A registered architecture (``saex.dictionaries``; docs/training.md): tied_l1 (the paper's SAE), untied_l1
    (paper App. C.3, for MLPs), topk (Gao et al. 2024), batchtopk (Bussmann et al. 2024), jumprelu (Rajamanoharan
    et al. 2024), gated (Rajamanoharan et al. 2024a) or matryoshka (Matryoshka BatchTopK, Bussmann et al. 2025)."""
    target: str = ""
    """Train transcoders (Dunefsky et al. 2024): read --hook, reconstruct this other hook point of the store
    (e.g. --hook blocks.6.ln2.hook_normalized --target blocks.6.hook_mlp_out). Empty: autoencoders."""
    skip: bool = False
    """Transcoders: add a linear skip connection y ≈ W_dec c + b_dec + W_skip x (W_skip starts at 0)."""
    ratio: list[float] = opt([4.0], gt=0, nonempty=True, label="dictionary ratio R")
    """Dictionary ratios R = d_dict / d_in (comma-separated on the command line); each is one member group of
    the sweep."""
    alpha: list[float] = opt([8.6e-4], ge=0, nonempty=True, label="the sparsity coefficient α")
    """Sparsity coefficients: α of the L1 penalty (tied_l1, untied_l1, gated) or λ of the L0 penalty (jumprelu);
    every (R, α) pair is one dictionary."""
    k: list[int] = opt([32], gt=0, nonempty=True)
    """Active latents per input (topk, batchtopk, matryoshka); every (R, k) pair is one dictionary."""
    target_l0: list[float] = opt([], gt=0)
    """jumprelu: train towards these L0s with the quadratic penalty (L0/target − 1)² instead of λ·L0; every
    (R, target) pair is one dictionary (--alpha is then unused)."""
    matryoshka_prefixes: list[float] = opt(PREFIXES, gt=0, lt=1)
    """matryoshka: the nested prefixes that must reconstruct on their own, as fractions of the dictionary
    (the whole dictionary is always the last)."""
    steps: int = opt(10_000, gt=0)
    """Optimiser steps: the training budget. Every dictionary of the sweep sees steps × batch-size inputs;
    when the store holds fewer, it is read again in a new shuffle (several passes are normal: the paper
    trained 1-3 epochs over 5-50M activations; a small store needs more passes to converge)."""
    batch_size: int = opt(1024, gt=0)
    """Inputs per step."""
    lr: float = opt(1e-3, gt=0)
    """Adam learning rate (the paper's 1e-3)."""
    warmup_steps: int = opt(0, ge=0)
    """Steps of linear learning-rate warm-up from 0."""
    decay_fraction: float = opt(0.2, ge=0, le=1)
    """Fraction of the run, at its end, over which the learning rate decays linearly to 0 (0: constant)."""
    normalize: Literal["none", "mean_norm"] = "none"
    """none, or mean_norm: scale inputs so that their mean norm is sqrt(d_in) (one α then carries across
    layers); the scale is folded back into the saved weights."""
    decoder_bias: bool = False
    """untied_l1: learn a decoder bias (also subtracted before encoding). The paper has none."""
    aux_k: int = opt(512, ge=1)
    """topk, batchtopk, matryoshka: dead latents used by the aux-k loss."""
    aux_coef: float = opt(0.03125, ge=0, hint="(0 turns the aux-k loss off)")
    """topk, batchtopk, matryoshka: weight of the aux-k loss (Gao et al.: 1/32)."""
    dead_window: int | None = opt(None, gt=0)
    """A feature is dead (for aux-k, resampling and the logged dead fraction) when it has not fired on any
    of the last this-many training inputs; default: a fifth of the run's inputs, at most 10M. It must be
    shorter than the run, or nothing could ever count as dead."""
    resample_every: int = opt(0, ge=0)
    """Resample dead features every this-many steps (0: never; the paper does not resample)."""
    eval_every: int | None = opt(None, ge=0)
    """Steps between held-out evaluations (loss, MSE, FVU, L0, dense and dead fractions) in metrics.jsonl;
    default: 20 evaluations over the run, which the convergence check reads; 0 disables them (and the check)."""
    eval_tokens: int = opt(8192, gt=0)
    """Held-out inputs per evaluation."""
    checkpoint_every: int = opt(500, ge=0)
    """Steps between checkpoints (exact resume after a kill)."""
    seed: int = opt(0, ge=0)
    """Seed of initialisation, data order and resampling."""
    shards_in_buffer: int = opt(4, gt=0)
    """Store shards shuffled together in memory (bounded memory, more mixing when larger)."""

    def runs_model(self) -> bool:
        """Whether this run computes activations with a model (--model), so that --lm-device / --lm-dtype apply."""
        return bool(self.model)


def dead_window(cfg: TrainConfig) -> int:
    """Inputs without a firing after which a feature counts as dead (the default: a fifth of the run)."""
    if cfg.dead_window is not None:
        return cfg.dead_window
    return max(cfg.batch_size, min(10_000_000, cfg.steps * cfg.batch_size // 5))


def eval_every(cfg: TrainConfig) -> int:
    """Steps between held-out evaluations (the default: 20 over the run)."""
    return max(1, cfg.steps // 20) if cfg.eval_every is None else cfg.eval_every


def _member_seed(seed: int, arch: str, ratio: float, alpha: float, k: int | None, target_l0: float | None) -> int:
    # A member's initialisation depends on its own settings only, not on what else is in the sweep:
    # a dictionary trained alone equals the same dictionary trained inside any ensemble.
    key = f"{seed}|{arch}|{ratio!r}|{alpha!r}|{k}" + ("" if target_l0 is None else f"|{target_l0!r}")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:6], "big")


ARCH_OPTIONS = ("alpha", "k", "aux_k", "aux_coef", "target_l0", "matryoshka_prefixes", "decoder_bias")
"""The options some architectures read and others do not (``Ensemble.reads``): given to one that does not (a
value other than the default), an option would be ignored, so it is an error instead."""


def check_arch_options(cfg: TrainConfig) -> None:
    """One error for an option the chosen architecture does not read (``--arch topk --alpha 1e-3``)."""
    defaults, registry = TrainConfig(), architectures()
    reads = registry[cfg.arch].reads
    for name in ARCH_OPTIONS:
        if getattr(cfg, name) != getattr(defaults, name) and name not in reads:
            readers = sorted(a for a, cls in registry.items() if name in cls.reads)
            raise SaexError(
                f"--{name.replace('_', '-')} does not apply to --arch {cfg.arch} (it is read by {', '.join(readers)})"
                + ("; its sparsity is set by --k" if name == "alpha" and "k" in reads else "")
            )
    if "target_l0" in reads and cfg.target_l0 and cfg.alpha != defaults.alpha:
        raise SaexError(
            f"--alpha is unused with --target-l0 ({cfg.arch} trains towards the target L0s): give one of them"
        )


def validate(cfg: TrainConfig, d_in: int) -> list[Member]:
    """Check the config against the store's width and expand the sweep into members (each field's own
    range is checked when the config is made)."""
    check_arch_options(cfg)
    if cfg.dead_window is not None and cfg.dead_window >= cfg.steps * cfg.batch_size:
        raise SaexError(
            f"--dead-window {cfg.dead_window} is not shorter than the run ({cfg.steps} steps × "
            f"{cfg.batch_size} = {cfg.steps * cfg.batch_size} inputs): no feature could ever count as dead"
        )
    arch = architectures()[cfg.arch]
    members = []
    for r in cfg.ratio:
        d_dict = round(r * d_in)
        if d_dict < 1:
            raise SaexError(f"ratio {r:g} gives no features for d_in {d_in}")
        for m in arch.sweep(cfg, r, d_dict):
            t = m.get("target_l0")
            seed = _member_seed(cfg.seed, cfg.arch, r, m["alpha"], m["k"], t)
            members.append(Member(m["name"], r, d_dict, m["alpha"], m["k"], seed, t))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise SaexError(f"the sweep names a dictionary twice: {sorted(n for n in names if names.count(n) > 1)[0]}")
    return members
