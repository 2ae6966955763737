"""TopK sparse autoencoder with the aux-k loss for dead latents.

Gao et al. 2024, "Scaling and evaluating sparse autoencoders", §2.3 and Appendix A.2: c = ReLU(TopK(W_enc
(x - b_dec) + b_enc)), keeping the K largest pre-activations; x̂ = W_decᵀ c + b_dec with unit-norm
decoder rows; sparsity is set by K, so the loss is reconstruction only (mean over elements of (x - x̂)²),
plus the aux-k term: the reconstruction error e = x - x̂ is predicted from the k_aux largest
pre-activations of the latents that are dead (no activation for a window of tokens),
ê = W_decᵀ TopK_aux(dead pre-activations), and ``aux_coef · mean((e - ê)²)`` is added (coef 1/32, as
Gao et al.). The encoder starts as the decoder's transpose (their §A.1).
"""

from __future__ import annotations

from typing import Any

import torch

from saex.dictionaries.ensemble import Ensemble, Member, StepOutput, register, unit_rows
from saex.dictionaries.sae import SAE, topk_relu
from saex.errors import SaexError


@register
class TopK(Ensemble):
    arch = "topk"
    feature_params = ("W_enc_KFD", "W_dec_KFD", "b_enc_KF")
    needs_dead_mask = True  # the aux-k loss reads the dead latents

    @classmethod
    def sweep(cls, cfg: Any, ratio: float, d_dict: int) -> list[dict[str, Any]]:
        """One member per k of the config (sparsity is set by k; α is unused)."""
        for k in cfg.k:
            if not 1 <= k <= d_dict:
                raise SaexError(f"--k {k} must be an integer in 1..{d_dict} (the dictionary size for R={ratio:g})")
        return [{"name": f"{cls.arch}_r{ratio:g}_k{k}", "alpha": 0.0, "k": k} for k in cfg.k]

    @classmethod
    def options(cls, cfg: Any, members: list[Member]) -> dict[str, Any]:
        k = members[0].k
        assert k is not None and all(m.k == k for m in members), "a group shares one k"
        return {"k": k, "aux_k": cfg.aux_k, "aux_coef": cfg.aux_coef}

    @staticmethod
    def group_key(member: Member) -> tuple:
        return (member.d_dict, member.k)

    @staticmethod
    def sparse(member: Member) -> bool:
        return True

    def __init__(
        self,
        d_in: int,
        d_dict: int,
        seeds: list[int],
        d_out: int | None = None,
        skip: bool = False,
        k: int = 32,
        aux_k: int = 512,
        aux_coef: float = 1 / 32,
    ):
        super().__init__(d_in, d_dict, seeds, d_out, skip)
        if not 1 <= k <= d_dict:
            raise SaexError(f"--k {k} must be an integer in 1..{d_dict} (the dictionary size)")
        self.k, self.aux_k, self.aux_coef = k, min(aux_k, d_dict), aux_coef
        self.init_weights()

    def step(self, x_BD, coef_K, dead_KF=None, target=None) -> StepOutput:
        y = x_BD if target is None else target
        pre_KBF = torch.baddbmm(
            self.b_enc_KF.unsqueeze(1), self.centred(x_BD, self.b_dec_KD), self.W_enc_KFD.transpose(1, 2)
        )
        c_KBF = self.select(pre_KBF)
        W_dec = unit_rows(self.W_dec_KFD)
        loss_K, mse_K, xhat_KBD = self.reconstruction_loss(c_KBF, W_dec, y)
        aux_K = None
        if dead_KF is not None and self.aux_coef > 0 and bool(dead_KF.any()):
            # Only dead latents compete; the residual is a fixed target (no gradient through x̂ here).
            masked = pre_KBF.masked_fill(~dead_KF.unsqueeze(1), float("-inf"))
            c_aux = topk_relu(masked, self.aux_k)
            e_KBD = (y - xhat_KBD).detach()
            aux_K = (torch.bmm(c_aux, W_dec) - e_KBD).pow(2).mean(dim=(1, 2))
            loss_K = loss_K + self.aux_coef * aux_K
        loss = loss_K.sum()
        with torch.no_grad():
            active = c_KBF > 0
            return StepOutput(
                loss,
                mse_K.detach(),
                active.sum(-1).float().mean(-1),
                active.any(1),
                None if aux_K is None else aux_K.detach(),
            )

    def select(self, pre_KBF: torch.Tensor) -> torch.Tensor:
        """The codes kept from the pre-activations: ReLU of the k largest of each input."""
        return topk_relu(pre_KBF, self.k)

    def reconstruction_loss(
        self, c_KBF: torch.Tensor, W_dec_KFD: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss per member, MSE per member, x̂) of the codes against the target: the plain MSE here (Matryoshka
        adds its prefixes' terms)."""
        xhat_KBD = torch.bmm(c_KBF, W_dec_KFD) + self.b_dec_KD.unsqueeze(1)
        mse_K = (xhat_KBD - y).pow(2).mean(dim=(1, 2))
        return mse_K, mse_K, xhat_KBD

    @torch.no_grad()
    def export(self, k, scale=1.0, metadata=None, out_scale=None) -> SAE:
        return self.inference(
            k, scale, out_scale, metadata, self.W_enc_KFD[k], self.b_enc_KF[k], unit_rows(self.W_dec_KFD[k]),
            self.b_dec_KD[k], "topk", k=self.k,
        )  # fmt: skip
