"""The shared shape of every trainable SAE: K members of one shape stacked along a leading axis.

An ensemble holds K independent autoencoders of equal width as stacked parameters (``[K, F, D]`` etc.),
so one batch is encoded and decoded by all of them with batched matmuls; the loss is the sum of the
members' losses, which leaves each member's gradient (and, Adam being elementwise, each member's update)
exactly what it would be alone. Sweeps over the sparsity coefficient α vary per member inside one
ensemble; members of different width live in different ensembles (see ``saex.train``).

Every architecture registers its class with ``@register`` (one file per architecture in this package); the
trainer asks the class for what differs between architectures (which members a sweep has, how an ensemble
is built from the training config, whether it needs the dead-feature mask), so it has no per-architecture
branch, and ``--arch`` accepts exactly the registered names.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import torch

from saex.dictionaries.sae import SAE


@dataclass
class StepOutput:
    """What one training step of an ensemble returns."""

    loss: torch.Tensor
    """Scalar: sum over members of each member's loss (what is back-propagated)."""
    mse_K: torch.Tensor
    """Per-member mean over elements of (x - x̂)² (no grad)."""
    l0_K: torch.Tensor
    """Per-member mean number of active features per input (no grad)."""
    fired_KF: torch.Tensor
    """Per-member, per-feature: did the feature fire on any input of this batch (bool, no grad)."""
    aux_K: torch.Tensor | None = None
    """Per-member auxiliary loss, where the method has one."""


def xavier_uniform(K: int, F: int, D: int, seeds: list[int]) -> torch.Tensor:
    """Xavier-uniform [F, D] init per member, each from its own seed (as ``torch.nn.init.xavier_uniform_``)."""
    bound = math.sqrt(6.0 / (F + D))
    out = torch.empty(K, F, D)
    for k, s in enumerate(seeds):
        out[k].uniform_(-bound, bound, generator=torch.Generator().manual_seed(s))
    return out


def unit_rows(W_KFD: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; the division happens inside the forward pass (as the paper's code does; docs/training.md), so
    the constraint holds exactly in every step without a projection."""
    return W_KFD / W_KFD.norm(dim=-1, keepdim=True).clamp_min(1e-8)


@dataclass(frozen=True)
class Member:
    """One dictionary of a sweep (recorded in run.json)."""

    name: str
    ratio: float
    d_dict: int
    alpha: float
    k: int | None
    seed: int


class Ensemble(torch.nn.Module):
    """Base class: subclasses define parameters, ``step`` and ``export``, and how a sweep of them is made
    from the training config (``sweep``, ``build``; ``cfg`` is ``saex.train.config.TrainConfig``)."""

    arch: str = ""
    #: names of parameters whose leading dims are [K, F, ...]: rows that resampling re-initialises.
    feature_params: tuple[str, ...] = ()
    #: the step takes the [K, F] mask of dead features (e.g. for an auxiliary loss on them).
    needs_dead_mask: bool = False

    @classmethod
    def sweep(cls, cfg: Any, ratio: float, d_dict: int) -> list[dict[str, Any]]:
        """The members at one width: ``name``, ``alpha`` and ``k`` of each (the default: one per α of the
        config, named ``<arch>_r<R>_a<α>``)."""
        return [{"name": f"{cls.arch}_r{ratio:g}_a{a:.3g}", "alpha": a, "k": None} for a in cfg.alpha]

    @classmethod
    def build(cls, cfg: Any, d_in: int, d_dict: int, members: list[Member]) -> Ensemble:
        """The ensemble of ``members`` (one group: equal width and ``group_key``), initialised from their seeds."""
        return cls(d_in, d_dict, [m.seed for m in members])

    @staticmethod
    def group_key(member: Member) -> tuple:
        """Members with equal keys are stacked in one ensemble (the default: equal width)."""
        return (member.d_dict,)

    @staticmethod
    def sparse(member: Member) -> bool:
        """Whether the member is meant to be sparse (the convergence check's dense criterion applies)."""
        return member.alpha > 0

    def __init__(self, d_in: int, d_dict: int, seeds: list[int]):
        super().__init__()
        self.d_in, self.d_dict, self.K = d_in, d_dict, len(seeds)
        self.seeds = list(seeds)

    def step(self, x_BD: torch.Tensor, coef_K: torch.Tensor, dead_KF: torch.Tensor | None = None) -> StepOutput:
        raise NotImplementedError

    def forward(self, x_BD: torch.Tensor, coef_K: torch.Tensor, dead_KF: torch.Tensor | None = None) -> StepOutput:
        # A training step is the module's forward, so DistributedDataParallel can wrap it.
        return self.step(x_BD, coef_K, dead_KF)

    def export(self, k: int, scale: float = 1.0, metadata: dict | None = None) -> SAE:
        """Member k as an inference SAE for *unscaled* inputs, where training saw ``scale · x``.

        With c(s·x) = ReLU(s·x·W + b): dividing the biases by s gives codes c/s for x and x̂/s for the
        reconstruction, so the directions stay unit-norm and only the code scale changes.
        """
        raise NotImplementedError

    @torch.no_grad()
    def resample(self, k: int, features: torch.Tensor, directions_ND: torch.Tensor) -> None:
        """Re-initialise features of member k towards given unit directions (Bricken et al. 2023,
        "Neuron resampling"): encoder rows at 0.2 × the mean norm of the live encoder rows, decoder rows
        at the live decoder rows' norm, biases 0. This default serves models with separate
        ``W_enc_KFD``, ``W_dec_KFD`` and ``b_enc_KF``; the trainer resets the rows' optimiser state."""
        W_enc_KFD, W_dec_KFD, b_enc_KF = (
            cast(torch.Tensor, getattr(self, n)) for n in ("W_enc_KFD", "W_dec_KFD", "b_enc_KF")
        )
        W_enc_KFD[k, features] = directions_ND * 0.2 * live_row_norm(W_enc_KFD[k], features)
        # The decoder is normalised in the forward pass; the raw norm only sets Adam's relative step size.
        W_dec_KFD[k, features] = directions_ND * live_row_norm(W_dec_KFD[k], features)
        b_enc_KF[k, features] = 0.0


def live_row_norm(W_FD: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Mean norm of the rows not in ``features`` (1 when every row is)."""
    live = torch.ones(W_FD.shape[0], dtype=torch.bool)
    live[features] = False
    return W_FD[live].norm(dim=-1).mean() if live.any() else torch.tensor(1.0)


E = TypeVar("E", bound=type[Ensemble])
_REGISTRY: dict[str, type[Ensemble]] = {}


def register(cls: E) -> E:
    """Class decorator: make an architecture trainable as ``--arch <cls.arch>``."""
    if not cls.arch or cls.arch in _REGISTRY:
        raise ValueError(f"architecture name {cls.arch!r} is empty or registered twice")
    _REGISTRY[cls.arch] = cls
    return cls


def architectures() -> dict[str, type[Ensemble]]:
    """Every registered architecture by name; the modules of this package are imported first, so a new
    architecture is one new file here."""
    # plugin discovery: each module of this package registers what it defines when imported
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{info.name}")
    return dict(_REGISTRY)


def architecture_names() -> list[str]:
    return list(architectures())
