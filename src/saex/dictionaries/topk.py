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
from saex.dictionaries.sae import SAE
from saex.dictionaries.sparse_codes import Decode, Gather, Kept
from saex.errors import SaexError


@register
class TopK(Ensemble):
    arch = "topk"
    reads: tuple[str, ...] = ("k", "aux_k", "aux_coef")
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
        K, B, F = self.K, x_BD.shape[0], self.d_dict
        x_in_KBD = self.centred(x_BD, self.b_dec_KD)
        # Every pre-activation is needed to choose the kept ones; no gradient flows through this product:
        # the kept entries are gathered again as a function of the weights (saex.dictionaries.sparse_codes).
        with torch.no_grad():
            pre_KBF = torch.baddbmm(self.b_enc_KF.unsqueeze(1), x_in_KBD, self.W_enc_KFD.transpose(1, 2))
        # Per-member views through unbind: indexing [m] would give each member's gradient a full [K, ...] zero
        # tensor in the backward (K² work); unbind's backward stacks the K pieces once.
        W_enc, b_enc, b_dec = self.W_enc_KFD.unbind(0), self.b_enc_KF.unbind(0), self.b_dec_KD.unbind(0)
        W_dec, x_in = unit_rows(self.W_dec_KFD).unbind(0), x_in_KBD.unbind(0)
        kept = self.select(pre_KBF)
        loss_K, mse_K, aux_K = [], [], []
        dev = x_BD.device
        l0_K, fired_KF = torch.empty(K, device=dev), torch.zeros(K, F, dtype=torch.bool, device=dev)
        for m in range(K):
            codes = Kept(*kept[m], (B, F))
            vals_N = Gather.apply(x_in[m], W_enc[m], b_enc[m], pre_KBF[m], codes).relu()
            y_m = y if y.dim() == 2 else y[m]
            loss, mse, xhat_BD = self.reconstruction_loss(vals_N, codes, W_dec[m], b_dec[m], y_m)
            if dead_KF is not None and self.aux_coef > 0 and bool(dead_KF[m].any()):
                # Only dead latents compete; the residual is a fixed target (no gradient through x̂ here).
                with torch.no_grad():
                    masked_BF = pre_KBF[m].masked_fill(~dead_KF[m], float("-inf"))
                    # at most aux_k dead latents per input: fewer when fewer are dead
                    n_aux = min(self.aux_k, int(dead_KF[m].sum()))
                    idx_BA = masked_BF.topk(n_aux, dim=-1, sorted=False).indices
                aux_codes = Kept(
                    torch.arange(B, device=dev).repeat_interleave(idx_BA.shape[1]), idx_BA.reshape(-1), (B, F)
                )
                aux_vals = Gather.apply(x_in[m], W_enc[m], b_enc[m], pre_KBF[m], aux_codes).relu()
                e_BD = (y_m - xhat_BD).detach()
                aux = (Decode.apply(aux_vals, W_dec[m], aux_codes) - e_BD).pow(2).mean()
                aux_K.append(aux)
                loss = loss + self.aux_coef * aux
            loss_K.append(loss)
            mse_K.append(mse)
            with torch.no_grad():
                on = vals_N > 0
                l0_K[m] = on.sum() / B
                fired_KF[m, codes.cols[on]] = True
        aux = torch.stack(aux_K).detach() if len(aux_K) == K else None
        return StepOutput(torch.stack(loss_K).sum(), torch.stack(mse_K).detach(), l0_K, fired_KF, aux)

    def select(self, pre_KBF: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The kept entries of each member's codes, as (rows, cols): the k largest pre-activations of each input
        (their ReLU is the code)."""
        K, B, _ = pre_KBF.shape
        idx_KBk = pre_KBF.topk(self.k, dim=-1, sorted=False).indices
        rows = torch.arange(B, device=pre_KBF.device).repeat_interleave(self.k)
        return [(rows, idx_KBk[m].reshape(-1)) for m in range(K)]

    def reconstruction_loss(
        self, vals_N: torch.Tensor, codes: Kept, W_dec_FD: torch.Tensor, b_dec_D: torch.Tensor, y_BD: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, MSE, x̂) of one member's kept codes against the target: the plain MSE here (Matryoshka adds
        its prefixes' terms)."""
        xhat_BD = Decode.apply(vals_N, W_dec_FD, codes) + b_dec_D
        mse = (xhat_BD - y_BD).pow(2).mean()
        return mse, mse, xhat_BD

    @torch.no_grad()
    def export(self, k, scale=1.0, metadata=None, out_scale=None) -> SAE:
        return self.inference(k, "topk", scale, out_scale, metadata, k=self.k)
