"""Gated sparse autoencoder: which features fire and how strongly, decided by two paths sharing weights.

Rajamanoharan et al. 2024a, "Improving Dictionary Learning with Gated Sparse Autoencoders", eqs. 6-8:
with x' = x − b_dec,

    π_gate = W_gate x' + b_gate,      f_gate = 1[π_gate > 0]
    π_mag  = (e^r_mag ⊙ W_gate) x' + b_mag,   f_mag = ReLU(π_mag)       (weight sharing, eq. 8)
    c = f_gate ⊙ f_mag,               x̂ = W_decᵀ c + b_dec  (unit-norm decoder rows)

The L1 penalty acts on the gate path only, so it selects features without shrinking their magnitudes;
the gate gets gradient from the penalty and from an auxiliary reconstruction through a frozen decoder:

    L = mean over elements of (x − x̂)²  +  α · mean_B ‖ReLU(π_gate)‖₁
        +  mean over elements of (x − x̂_frozen(ReLU(π_gate)))²

(x̂_frozen: the same decoder and bias with gradients stopped; the squared errors normalised as every saex
SAE's, so α is on the scale of the paper's tied SAE). Initialisation: W_dec xavier-uniform with unit rows,
W_gate its transpose, r_mag, b_gate, b_mag, b_dec zero (SAELens's). Saved as SAELens's ``gated`` (weights
``W_enc`` = W_gate, ``b_gate``, ``r_mag``, ``b_mag``, ``W_dec``, ``b_dec``).
"""

from __future__ import annotations

import torch

from saex.dictionaries.ensemble import Ensemble, Member, StepOutput, register, unit_rows
from saex.dictionaries.sae import SAE


@register
class Gated(Ensemble):
    arch = "gated"
    feature_params = ("W_enc_KFD", "W_dec_KFD", "b_enc_KF", "b_gate_KF", "r_mag_KF")
    # b_enc_KF is the magnitude bias b_mag; resampling also resets the gate's bias and magnitude scale.
    resample_zero = ("b_enc_KF", "b_gate_KF", "r_mag_KF")

    @staticmethod
    def held_out_penalty(member: Member, sae: SAE, x_ND: torch.Tensor, c_NF: torch.Tensor, scale: float) -> float:
        """α · mean ‖ReLU(π_gate)‖₁ in training units (the auxiliary reconstruction, a training aid, left out)."""
        x = x_ND if not sae.apply_b_dec_to_input else x_ND - sae.b_dec_D
        assert sae.b_gate_F is not None
        return member.alpha * scale * (x @ sae.W_enc_DF + sae.b_gate_F).relu().sum(1).mean().item()

    def __init__(self, d_in: int, d_dict: int, seeds: list[int], d_out: int | None = None, skip: bool = False):
        super().__init__(d_in, d_dict, seeds, d_out, skip)
        self.init_weights()  # W_enc is W_gate; b_enc is b_mag
        self.b_gate_KF = torch.nn.Parameter(torch.zeros(self.K, d_dict))
        self.r_mag_KF = torch.nn.Parameter(torch.zeros(self.K, d_dict))

    def step(self, x_BD, coef_K, dead_KF=None, target=None) -> StepOutput:
        y = x_BD if target is None else target
        # One member at a time on contiguous [B, F] blocks, views by unbind (see ``JumpReLU.step``).
        W_enc, b_gate, r_mag = self.W_enc_KFD.unbind(0), self.b_gate_KF.unbind(0), self.r_mag_KF.unbind(0)
        b_mag, b_dec, x_in = (
            self.b_enc_KF.unbind(0),
            self.b_dec_KD.unbind(0),
            self.centred(x_BD, self.b_dec_KD).unbind(0),
        )
        W_dec = unit_rows(self.W_dec_KFD).unbind(0)
        loss_K, mse_K, aux_K = [], [], []
        l0_K = torch.empty(self.K, device=x_BD.device)
        fired_KF = torch.empty(self.K, self.d_dict, dtype=torch.bool, device=x_BD.device)
        for m in range(self.K):
            y_m = y if y.dim() == 2 else y[m]
            # One product serves both paths: (e^r ⊙ W) x' = e^r ⊙ (W x') row by row.
            proj_BF = x_in[m] @ W_enc[m].T
            pi_gate_BF = proj_BF + b_gate[m]
            c_BF = (pi_gate_BF > 0).to(x_BD.dtype) * (proj_BF * r_mag[m].exp() + b_mag[m]).relu()
            mse = (torch.addmm(b_dec[m], c_BF, W_dec[m]) - y_m).pow(2).mean()
            gate_act_BF = pi_gate_BF.relu()
            l1 = gate_act_BF.sum(-1).mean()  # unit-norm decoder rows: the paper's ‖W_dec,i‖ weights are 1
            aux = (torch.addmm(b_dec[m].detach(), gate_act_BF, W_dec[m].detach()) - y_m).pow(2).mean()
            loss_K.append(mse + coef_K[m] * l1 + aux)
            mse_K.append(mse.detach())
            aux_K.append(aux.detach())
            with torch.no_grad():
                active = c_BF > 0
                l0_K[m] = active.sum(-1).float().mean()
                fired_KF[m] = active.any(0)
        return StepOutput(torch.stack(loss_K).sum(), torch.stack(mse_K), l0_K, fired_KF, torch.stack(aux_K))

    @torch.no_grad()
    def export(self, k, scale=1.0, metadata=None, out_scale=None) -> SAE:
        # b_gate is in pre-activation units like b_mag: ``inference`` rescales both.
        return self.inference(
            k, "gated", scale, out_scale, metadata, b_gate_F=self.b_gate_KF[k], r_mag_F=self.r_mag_KF[k]
        )
