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
from saex.errors import SaexError


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
    target_l0: float | None = None
    """The L0 the sparsity penalty aims at, where the architecture trains towards one (jumprelu)."""


class Ensemble(torch.nn.Module):
    """Base class: subclasses define parameters, ``step`` and ``export``, and how a sweep of them is made
    from the training config (``sweep``, ``build``; ``cfg`` is ``saex.train.config.TrainConfig``)."""

    arch: str = ""
    #: names of parameters whose leading dims are [K, F, ...]: rows that resampling re-initialises.
    feature_params: tuple[str, ...] = ()
    #: the step takes the [K, F] mask of dead features (e.g. for an auxiliary loss on them).
    needs_dead_mask: bool = False
    #: the architecture can read one hook and reconstruct another (a transcoder; not with tied weights).
    can_transcode: bool = True
    #: per-feature parameters ([K, F]) that resampling sets to zero for the resampled features.
    resample_zero: tuple[str, ...] = ("b_enc_KF",)
    #: the training options (``TrainConfig`` fields) the architecture reads beyond the common ones; another
    #: architecture's option given to it is refused rather than ignored (``saex.train.config.check_arch_options``).
    reads: tuple[str, ...] = ("alpha",)

    @classmethod
    def sweep(cls, cfg: Any, ratio: float, d_dict: int) -> list[dict[str, Any]]:
        """The members at one width: ``name``, ``alpha`` and ``k`` of each (the default: one per α of the
        config, named ``<arch>_r<R>_a<α>``)."""
        return [{"name": f"{cls.arch}_r{ratio:g}_a{a:.3g}", "alpha": a, "k": None} for a in cfg.alpha]

    @classmethod
    def build(cls, cfg: Any, d_in: int, d_dict: int, members: list[Member], d_out: int | None = None) -> Ensemble:
        """The ensemble of ``members`` (one group: equal width and ``group_key``), initialised from their seeds;
        ``d_out`` makes it a transcoder onto a target of that width (``cfg.skip`` adds the linear skip)."""
        return cls(
            d_in, d_dict, [m.seed for m in members], d_out=d_out, skip=bool(cfg.skip), **cls.options(cfg, members)
        )

    @classmethod
    def options(cls, cfg: Any, members: list[Member]) -> dict[str, Any]:
        """Keyword arguments of the class's constructor taken from the training config (none by default)."""
        return {}

    @staticmethod
    def group_key(member: Member) -> tuple:
        """Members with equal keys are stacked in one ensemble (the default: equal width)."""
        return (member.d_dict,)

    @staticmethod
    def sparse(member: Member) -> bool:
        """Whether the member is meant to be sparse (the convergence check's dense criterion applies)."""
        return member.alpha > 0

    @staticmethod
    def held_out_penalty(member: Member, sae: SAE, x_ND: torch.Tensor, c_NF: torch.Tensor, scale: float) -> float:
        """The sparsity term of the training objective on held-out inputs ``x_ND``, from the exported SAE's
        codes ``c_NF`` (which are the trained codes divided by ``scale``); the default is α · mean ‖c‖₁ in
        training units."""
        return member.alpha * scale * c_NF.abs().sum(1).mean().item()

    def __init__(self, d_in: int, d_dict: int, seeds: list[int], d_out: int | None = None, skip: bool = False):
        super().__init__()
        self.d_in, self.d_dict, self.K = d_in, d_dict, len(seeds)
        self.seeds = list(seeds)
        # A transcoder (Dunefsky et al. 2024) reads one hook and reconstructs another of width d_out; its
        # encoder cannot subtract the decoder bias (they live in different spaces).
        self.transcoder = d_out is not None
        self.d_out = d_in if d_out is None else d_out
        if self.transcoder and not self.can_transcode:
            raise SaexError(f"{self.arch} cannot be a transcoder (its encoder is its decoder); use another --arch")
        if skip and not self.transcoder:
            raise SaexError("--skip adds a linear skip connection to a transcoder: it needs --target")
        # The affine skip x -> W_skip x, [K, d_out, d_in], zero at the start (SAELens SkipTranscoder).
        self.W_skip_KOD = torch.nn.Parameter(torch.zeros(self.K, self.d_out, d_in)) if skip else None

    def init_weights(self) -> None:
        """Parameters ``W_dec_KFD`` (xavier-uniform, unit rows, from the members' seeds), ``W_enc_KFD`` (its
        copy: encoder = decoder transpose, Gao et al. 2024 §A.1; a transcoder's encoder maps another space and
        is an independent draw), ``b_enc_KF`` and ``b_dec_KD`` (zero)."""
        W_dec = unit_rows(xavier_uniform(self.K, self.d_dict, self.d_out, self.seeds))
        self.W_dec_KFD = torch.nn.Parameter(W_dec.clone())
        if self.transcoder:
            W_dec = unit_rows(xavier_uniform(self.K, self.d_dict, self.d_in, [s + 1 for s in self.seeds]))
        self.W_enc_KFD = torch.nn.Parameter(W_dec.clone())
        self.b_enc_KF = torch.nn.Parameter(torch.zeros(self.K, self.d_dict))
        self.b_dec_KD = torch.nn.Parameter(torch.zeros(self.K, self.d_out))

    def step(
        self,
        x_BD: torch.Tensor,
        coef_K: torch.Tensor,
        dead_KF: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
    ) -> StepOutput:
        """One training step's losses; ``target`` (``[B, d_out]`` or per member ``[K, B, d_out]``) is what is
        reconstructed, x itself when None."""
        raise NotImplementedError

    def forward(
        self,
        x_BD: torch.Tensor,
        coef_K: torch.Tensor,
        dead_KF: torch.Tensor | None = None,
        y_BO: torch.Tensor | None = None,
    ) -> StepOutput:
        """A training step is the module's forward, so DistributedDataParallel can wrap it. ``y_BO`` is a
        transcoder's target; with a skip connection the dictionary reconstructs what the skip leaves,
        y - W_skip x, and the gradient reaches W_skip through that difference."""
        target = y_BO
        if self.W_skip_KOD is not None:
            assert y_BO is not None, "a skip connection belongs to a transcoder"
            target = y_BO - torch.matmul(x_BD, self.W_skip_KOD.transpose(1, 2))
        return self.step(x_BD, coef_K, dead_KF, target)

    def centred(self, x_BD: torch.Tensor, b_dec_KD: torch.Tensor) -> torch.Tensor:
        """The encoder's input per member, ``[K, B, d_in]``: x - b_dec for an autoencoder, x for a transcoder."""
        K, (B, D) = self.K, x_BD.shape
        x_KBD = x_BD.expand(K, B, D)
        return x_KBD if self.transcoder else x_KBD - b_dec_KD.unsqueeze(1)

    def export(self, k: int, scale: float = 1.0, metadata: dict | None = None, out_scale: float | None = None) -> SAE:
        """Member k as an inference SAE for *unscaled* inputs, where training saw ``scale · x`` (and, for a
        transcoder, reconstructed ``out_scale · y``; by default the same scale).

        With c(s·x) = ReLU(s·x·W + b): dividing the biases by s gives codes c/s for x and x̂/s for the
        reconstruction, so the directions stay unit-norm and only the code scale changes. See ``inference``.
        """
        raise NotImplementedError

    @torch.no_grad()
    def inference(
        self,
        member: int,
        architecture: str,
        scale: float,
        out_scale: float | None,
        metadata: dict | None,
        **extra: Any,
    ) -> SAE:
        """The SAE of member ``member`` from its trained tensors (in training units), rescaled for unscaled data.

        Training saw x' = s·x and reconstructed y' = t·y (t = s for an autoencoder). Codes for x are taken to
        be c/t: the encoder is multiplied by s/t and every bias or threshold in pre-activation units divided
        by t, so pre-activations are pre'/t and any of saex's activations (ReLU, TopK, JumpReLU, the gate's
        sign) commutes with that positive factor; then x̂ = W_dec (c/t) + b_dec/t + (s/t) W_skip x = ŷ'/t.
        The tensors are the member's ``W_enc_KFD``, ``b_enc_KF``, unit-row ``W_dec_KFD`` and ``b_dec_KD``
        unless ``extra`` gives ``W_enc_FD``, ``b_enc_F``, ``W_dec_FD``, ``b_dec_D`` (the tied SAE's); ``extra``
        also passes the architecture's own fields: ``threshold_F`` and ``b_gate_F`` (pre-activation units,
        divided by t), ``r_mag_F``, ``k`` and ``apply_b_dec_to_input`` (never for a transcoder).
        """

        def tensor(key: str, param: str) -> torch.Tensor:
            given = extra.pop(key, None)
            return given if given is not None else cast(torch.Tensor, getattr(self, param))[member]

        W_enc_FD, b_enc_F = tensor("W_enc_FD", "W_enc_KFD"), tensor("b_enc_F", "b_enc_KF")
        W_dec_FD = extra.pop("W_dec_FD", None)
        W_dec_FD = unit_rows(self.W_dec_KFD[member]) if W_dec_FD is None else W_dec_FD
        b_dec_D = tensor("b_dec_D", "b_dec_KD")
        centre = extra.pop("apply_b_dec_to_input", True) and not self.transcoder
        t = scale if out_scale is None else out_scale
        r = scale / t
        for key in ("threshold_F", "b_gate_F"):
            if extra.get(key) is not None:
                extra[key] = extra[key] / t
        return SAE(
            (W_enc_FD * r).T.clone(),
            W_dec_FD.clone(),
            b_enc_F / t,
            b_dec_D / t,
            architecture=architecture,
            apply_b_dec_to_input=centre,
            metadata=metadata,
            W_skip_OD=None if self.W_skip_KOD is None else self.W_skip_KOD[member] * r,
            **extra,
        )

    @torch.no_grad()
    def resample(
        self, k: int, features: torch.Tensor, directions_ND: torch.Tensor, out_directions_NO: torch.Tensor | None = None
    ) -> None:
        """Re-initialise features of member k towards given unit directions (Bricken et al. 2023,
        "Neuron resampling"): encoder rows at 0.2 × the mean norm of the live encoder rows, decoder rows
        (towards ``out_directions_NO``, a transcoder's target space; the same directions otherwise) at the
        live decoder rows' norm, and every per-feature parameter named in ``resample_zero`` set to 0
        (biases; an architecture whose other per-feature parameters need more overrides this). This
        default serves models with separate ``W_enc_KFD`` and ``W_dec_KFD``; the trainer resets the rows'
        optimiser state."""
        W_enc_KFD, W_dec_KFD = (cast(torch.Tensor, getattr(self, n)) for n in ("W_enc_KFD", "W_dec_KFD"))
        W_enc_KFD[k, features] = directions_ND * 0.2 * live_row_norm(W_enc_KFD[k], features)
        # The decoder is normalised in the forward pass; the raw norm only sets Adam's relative step size.
        out = directions_ND if out_directions_NO is None else out_directions_NO
        W_dec_KFD[k, features] = out * live_row_norm(W_dec_KFD[k], features)
        for name in self.resample_zero:
            cast(torch.Tensor, getattr(self, name))[k, features] = 0.0


def live_row_norm(W_FD: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Mean norm of the rows not in ``features`` (1 when every row is)."""
    live = torch.ones(W_FD.shape[0], dtype=torch.bool, device=W_FD.device)
    live[features] = False
    return W_FD[live].norm(dim=-1).mean() if live.any() else torch.tensor(1.0, device=W_FD.device)


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
    """The registered names, sorted (registration order depends on import order)."""
    return sorted(architectures())
