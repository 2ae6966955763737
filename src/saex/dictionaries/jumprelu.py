"""JumpReLU sparse autoencoder with a directly penalised L0, trained through straight-through estimators.

Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse
Autoencoders" (the Gemma Scope recipe), eqs. 4-11: c = JumpReLU_θ(W_enc x + b_enc) = ReLU(pre) · H(pre − θ)
with a learned threshold θ_i per feature, x̂ = W_decᵀ c + b_dec (unit-norm decoder rows), and the loss

    L = mean over elements of (x − x̂)²  +  λ · mean_B Σ_i H(pre_i − θ_i)                  (--alpha λ)
    L = mean over elements of (x − x̂)²  +  λ · (mean_B Σ_i H(pre_i − θ_i) / L0* − 1)²     (--target-l0 L0*)

The first is the paper's L0 penalty (the reconstruction term normalised as every saex SAE's: under
``--normalize mean_norm``, saex's mean over elements of a √d-norm input equals the paper's summed squared
error on unit-norm inputs, so λ means the same). The second aims the L0 at a chosen value (the quadratic
form of dictionary_learning's JumpReLU trainer, λ = ``TARGET_L0_COEF``), which is how saex trains
members at matched sparsity.

H has no useful gradient, so both the JumpReLU and the L0 term take a straight-through estimator for θ
with the rectangle kernel K(u) = 1[|u| < ½] of bandwidth ε: ∂JumpReLU/∂θ = −(θ/ε)·K((pre − θ)/ε) and
∂H/∂θ = −(1/ε)·K((pre − θ)/ε) (eq. 11); the gradient to pre is H(pre − θ) from the JumpReLU and none from
the L0 term. θ and ε start at ``THRESHOLD_INIT`` and ``BANDWIDTH`` in units of the paper's unit-norm
inputs, i.e. × √d_in in saex's mean-norm units. The encoder starts as the decoder's transpose. Saved as
SAELens's ``jumprelu`` (weights key ``threshold``).

θ is stored as θ / ``THRESHOLD_SPEED`` (not as log θ, which moves slower still: SAELens's #718). Adam
moves every parameter by about the learning rate per step, so a raw θ travels at most ``lr`` per step: the
paper's runs (~10⁶ steps at lr 7e-5) let it travel ~70, saex's (10³–10⁴ steps at 1e-3) only 1–10, while the
thresholds must reach the pre-activations' scale (≈ 1 under mean_norm). Measured on SmolLM2 layer 6
(d = 576, R = 4, batch 1024): with a raw θ, λ = 1e-3 and 3e-3 stood at L0 168 and 158 after 700 steps, both
falling at nearly the same rate (30-70 per 100 steps) whatever λ was; stored ×1/10, the same runs stood at
66 and 34 after 700 steps: λ sets the L0 (docs/training.md).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from saex.dictionaries.ensemble import Ensemble, Member, StepOutput, register, unit_rows
from saex.dictionaries.sae import SAE

BANDWIDTH = 1e-3
"""ε of the straight-through estimators for unit-norm inputs (the paper's and Gemma Scope's value)."""
THRESHOLD_INIT = 1e-3
"""θ of every feature at the start, for unit-norm inputs (the paper's value)."""
TARGET_L0_COEF = 1.0
"""λ of the quadratic target-L0 penalty (dictionary_learning's default sparsity penalty)."""
THRESHOLD_SPEED = 10.0
"""θ is stored divided by this, so Adam moves it this many times faster than a raw parameter."""


def _kernel(pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """K((pre − θ)/ε)/ε with the rectangle kernel."""
    return ((pre - theta).abs() < bandwidth / 2).to(pre.dtype) / bandwidth


class JumpReLUFn(torch.autograd.Function):
    """ReLU(pre) · H(pre − θ); straight-through gradient to θ (eq. 11)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre.relu() * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        pre, theta = ctx.saved_tensors
        g_pre = g * ((pre > theta) & (pre > 0)).to(g.dtype)
        g_theta = (-theta * _kernel(pre, theta, ctx.bandwidth) * g).sum_to_size(theta.shape)
        return g_pre, g_theta, None


class StepFn(torch.autograd.Function):
    """H(pre − θ) for the L0 penalty; straight-through gradient to θ only (eq. 11)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        pre, theta = ctx.saved_tensors
        g_theta = (-_kernel(pre, theta, ctx.bandwidth) * g).sum_to_size(theta.shape)
        return None, g_theta, None


@register
class JumpReLU(Ensemble):
    arch = "jumprelu"
    reads: tuple[str, ...] = ("alpha", "target_l0")
    target_l0_K: torch.Tensor
    feature_params = ("W_enc_KFD", "W_dec_KFD", "b_enc_KF", "theta_KF")

    @classmethod
    def sweep(cls, cfg: Any, ratio: float, d_dict: int) -> list[dict[str, Any]]:
        """One member per λ of ``--alpha``, or, given ``--target-l0``, one per target L0 instead."""
        if not cfg.target_l0:
            return super().sweep(cfg, ratio, d_dict)
        return [
            {"name": f"{cls.arch}_r{ratio:g}_l0{t:g}", "alpha": TARGET_L0_COEF, "k": None, "target_l0": t}
            for t in cfg.target_l0
        ]

    @classmethod
    def options(cls, cfg: Any, members: list[Member]) -> dict[str, Any]:
        return {"target_l0": [m.target_l0 for m in members]}

    @staticmethod
    def group_key(member: Member) -> tuple:
        return (member.d_dict, member.target_l0 is not None)

    @staticmethod
    def held_out_penalty(member: Member, sae: SAE, x_ND: torch.Tensor, c_NF: torch.Tensor, scale: float) -> float:
        """λ·L0, or λ·(L0/L0* − 1)² in target mode (L0 does not depend on the scale)."""
        l0 = (c_NF != 0).float().sum(1).mean().item()
        return member.alpha * (l0 if member.target_l0 is None else (l0 / member.target_l0 - 1) ** 2)

    def __init__(
        self,
        d_in: int,
        d_dict: int,
        seeds: list[int],
        d_out: int | None = None,
        skip: bool = False,
        target_l0: list[float | None] | None = None,
    ):
        super().__init__(d_in, d_dict, seeds, d_out, skip)
        # ε and θ₀ are the paper's for unit-norm inputs; saex's mean-norm inputs have norm √d_in.
        unit = math.sqrt(d_in)
        self.bandwidth = BANDWIDTH * unit
        targets = target_l0 or [None] * self.K
        self.target_mode = targets[0] is not None
        assert all((t is not None) == self.target_mode for t in targets), "a group shares one penalty form"
        # a buffer, so that .to(device) moves it; not persistent: it is configuration, not state
        self.register_buffer("target_l0_K", torch.tensor([t or 0.0 for t in targets]), persistent=False)
        self.init_weights()
        self.theta_KF = torch.nn.Parameter(torch.full((self.K, d_dict), THRESHOLD_INIT * unit / THRESHOLD_SPEED))

    @property
    def threshold_KF(self) -> torch.Tensor:
        """θ per member and feature (the parameter ``theta_KF`` × ``THRESHOLD_SPEED``)."""
        return self.theta_KF * THRESHOLD_SPEED

    def step(self, x_BD, coef_K, dead_KF=None, target=None) -> StepOutput:
        y = x_BD if target is None else target
        # One member at a time, each with its own large GEMMs on contiguous [B, F] blocks (as the fused L1
        # step): stacked [K, B, F] autograd made 8 members cost 11.5× one (benchmarks/README.md, topk.py).
        # Views by unbind, whose backward stacks the K gradients once.
        W_enc, b_enc, b_dec = self.W_enc_KFD.unbind(0), self.b_enc_KF.unbind(0), self.b_dec_KD.unbind(0)
        W_dec, theta = unit_rows(self.W_dec_KFD).unbind(0), self.threshold_KF.unbind(0)
        mse_K, penalty_K, l0_K, fired_KF = (
            [],
            [],
            torch.empty(self.K, device=x_BD.device),
            torch.empty(self.K, self.d_dict, dtype=torch.bool, device=x_BD.device),
        )
        for m in range(self.K):
            # Gemma Scope's encoder reads x itself (no b_dec subtraction), as SAELens's jumprelu does by default.
            pre_BF = torch.addmm(b_enc[m], x_BD, W_enc[m].T)
            c_BF = JumpReLUFn.apply(pre_BF, theta[m], self.bandwidth)
            xhat_BD = torch.addmm(b_dec[m], c_BF, W_dec[m])
            mse_K.append((xhat_BD - (y if y.dim() == 2 else y[m])).pow(2).mean())
            l0 = StepFn.apply(pre_BF, theta[m], self.bandwidth).sum(-1).mean()
            penalty_K.append((l0 / self.target_l0_K[m] - 1).pow(2) if self.target_mode else l0)
            with torch.no_grad():
                active = c_BF != 0
                l0_K[m] = active.sum(-1).float().mean()
                fired_KF[m] = active.any(0)
        mse = torch.stack(mse_K)
        loss = (mse + coef_K * torch.stack(penalty_K)).sum()
        return StepOutput(loss, mse.detach(), l0_K, fired_KF)

    @torch.no_grad()
    def export(self, k, scale=1.0, metadata=None, out_scale=None) -> SAE:
        # θ is in pre-activation units: ``inference`` rescales it with the biases.
        return self.inference(
            k,
            "jumprelu",
            scale,
            out_scale,
            metadata,
            threshold_F=self.threshold_KF[k].clamp_min(0.0),
            apply_b_dec_to_input=False,
        )

    @torch.no_grad()
    def resample(self, k, features, directions_ND, out_directions_NO=None) -> None:
        super().resample(k, features, directions_ND, out_directions_NO)
        self.theta_KF[k, features] = THRESHOLD_INIT * math.sqrt(self.d_in) / THRESHOLD_SPEED
