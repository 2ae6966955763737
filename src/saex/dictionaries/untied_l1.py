"""The paper's untied sparse autoencoder, used for MLP activations.

Cunningham et al. 2023, Appendix C.3 (eqs. 5, 6): c = ReLU(M_e x + b), x̂ = M_dᵀ c, with the decoder's
rows (the features) normalised to unit length in the forward pass, and the same loss as the tied model
(mean over elements of (x - x̂)² + α · batch mean of ‖c‖₁; see :mod:`saex.dictionaries.tied_l1`). The
authors "retain a larger number of features" with it on MLP data.

An optional decoder bias b_d (off by default, as in the paper) is also subtracted from the encoder's
input, c = ReLU(M_e (x - b_d) + b), which is SAELens's ``standard`` architecture.
"""

from __future__ import annotations

from typing import Any

import torch

from saex.dictionaries.ensemble import Ensemble, Member, StepOutput, register, xavier_uniform
from saex.dictionaries.relu_l1 import ReluL1Step, Workspace
from saex.dictionaries.sae import SAE


@register
class UntiedL1(Ensemble):
    arch = "untied_l1"
    reads: tuple[str, ...] = ("alpha", "decoder_bias")
    feature_params = ("W_enc_KFD", "W_dec_KFD", "b_enc_KF")

    @classmethod
    def options(cls, cfg: Any, members: list[Member]) -> dict[str, Any]:
        return {"decoder_bias": cfg.decoder_bias}

    def __init__(
        self,
        d_in: int,
        d_dict: int,
        seeds: list[int],
        d_out: int | None = None,
        skip: bool = False,
        decoder_bias: bool = False,
    ):
        super().__init__(d_in, d_dict, seeds, d_out, skip)
        self.workspace = Workspace()
        self.W_enc_KFD = torch.nn.Parameter(xavier_uniform(self.K, d_dict, d_in, seeds))
        # A second, independent draw per member for the decoder (seed offset keeps members independent).
        self.W_dec_KFD = torch.nn.Parameter(xavier_uniform(self.K, d_dict, self.d_out, [s + 7_919 for s in seeds]))
        self.b_enc_KF = torch.nn.Parameter(torch.zeros(self.K, d_dict))
        # A transcoder always learns its output bias: the target's mean is not the input's.
        self.decoder_bias = decoder_bias or self.transcoder
        self.b_dec_KD = torch.nn.Parameter(torch.zeros(self.K, self.d_out), requires_grad=self.decoder_bias)

    def step(self, x_BD, coef_K, dead_KF=None, target=None) -> StepOutput:
        b_dec = self.b_dec_KD if self.decoder_bias else None
        return StepOutput(
            *ReluL1Step.apply(
                x_BD, self.W_enc_KFD, self.W_dec_KFD, self.b_enc_KF, b_dec, coef_K, self.workspace, target,
                not self.transcoder,
            )
        )  # fmt: skip

    @torch.no_grad()
    def export(self, k, scale=1.0, metadata=None, out_scale=None) -> SAE:
        return self.inference(k, "standard", scale, out_scale, metadata, apply_b_dec_to_input=self.decoder_bias)
