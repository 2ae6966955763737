"""The paper's sparse autoencoder: tied weights, ReLU, L1 penalty, row-normalised dictionary.

Cunningham et al. 2023, §2 (eqs. 1, 2, 4): c = ReLU(M̂x + b), x̂ = M̂ᵀc, with M̂ the row-normalised M
(rows are the dictionary features f_i) and only an encoder bias b. The loss is

    L = mean over elements of (x - x̂)²  +  α · mean over the batch of ‖c‖₁

which is the reference code's normalisation (docs/training.md): the reconstruction term is ‖x - x̂‖²
divided by d_in, so the paper's α values (8.6e-4 for the residual stream of Pythia-70M) mean what they
say only under this loss. Initialisation as the reference code: xavier-uniform M, zero b.
"""

from __future__ import annotations

import torch

from saex.dictionaries.ensemble import Ensemble, StepOutput, live_row_norm, register, unit_rows, xavier_uniform
from saex.dictionaries.relu_l1 import ReluL1Step, Workspace
from saex.dictionaries.sae import SAE


@register
class TiedL1(Ensemble):
    arch = "tied_l1"
    feature_params = ("M_KFD", "b_KF")
    can_transcode = False  # one matrix encodes and decodes: input and output are the same space

    def __init__(self, d_in: int, d_dict: int, seeds: list[int], d_out: int | None = None, skip: bool = False):
        super().__init__(d_in, d_dict, seeds, d_out, skip)
        self.workspace = Workspace()
        self.M_KFD = torch.nn.Parameter(xavier_uniform(self.K, d_dict, d_in, seeds))
        self.b_KF = torch.nn.Parameter(torch.zeros(self.K, d_dict))

    def step(self, x_BD, coef_K, dead_KF=None, target=None) -> StepOutput:
        # No separate encoder: the fused step encodes with the normalised M as well.
        return StepOutput(*ReluL1Step.apply(x_BD, None, self.M_KFD, self.b_KF, None, coef_K, self.workspace))

    @torch.no_grad()
    def export(self, k, scale=1.0, metadata=None, out_scale=None) -> SAE:
        M_hat = unit_rows(self.M_KFD[k])
        return self.inference(
            k, "standard", scale, out_scale, metadata, W_enc_FD=M_hat, b_enc_F=self.b_KF[k], W_dec_FD=M_hat,
            b_dec_D=torch.zeros(self.d_in, device=M_hat.device), apply_b_dec_to_input=False,
        )  # fmt: skip

    @torch.no_grad()
    def resample(self, k, features, directions_ND, out_directions_NO=None) -> None:
        # Rows are normalised in the forward pass, so only the direction matters for the function; the
        # raw norm is set to that of the live rows so that Adam's step is as large relative to them.
        self.M_KFD[k, features] = directions_ND * live_row_norm(self.M_KFD[k], features)
        self.b_KF[k, features] = 0.0
