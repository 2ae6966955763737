"""BatchTopK sparse autoencoder: the top B·k activations of a whole batch, saved as JumpReLU.

Bussmann, Leask and Nanda 2024, "BatchTopK Sparse Autoencoders": TopK (Gao et al. 2024; see
:mod:`saex.dictionaries.topk`) keeps the k largest pre-activations of every input; BatchTopK keeps the B·k
largest ReLU'd pre-activations of the batch of B inputs, so the sparsity is k per input on average and an
input may use more latents or fewer. Loss and aux-k term are TopK's (reconstruction MSE, plus the dead
latents' prediction of the residual). Selection across a batch cannot be applied to one input at
inference, so a threshold θ is estimated during training (their §3.2): each step's smallest kept positive
activation, averaged (an exponential moving average with weight ``THRESHOLD_DECAY`` per step). The saved
dictionary is a JumpReLU SAE (SAELens ``jumprelu``): c = ReLU(pre) where pre > θ, else 0, which gives about
k active latents per input on held-out data when the threshold has settled.
"""

from __future__ import annotations

import torch

from saex.dictionaries.ensemble import register
from saex.dictionaries.sae import SAE
from saex.dictionaries.topk import TopK

THRESHOLD_DECAY = 0.99
"""Weight of the running threshold at each step (time constant about 100 steps)."""


@register
class BatchTopK(TopK):
    arch = "batchtopk"

    def __init__(self, d_in: int, d_dict: int, seeds: list[int], *args, **kwargs):
        super().__init__(d_in, d_dict, seeds, *args, **kwargs)
        # A parameter without gradient: saved in checkpoints with the weights, never touched by Adam.
        # Negative until the first step sets it.
        self.threshold_K = torch.nn.Parameter(torch.full((self.K,), -1.0), requires_grad=False)

    def select(self, pre_KBF: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The B·k largest pre-activations of each member's batch, as (rows, cols); updates the threshold."""
        K, B, F = pre_KBF.shape
        vals_KN, idx_KN = pre_KBF.reshape(K, B * F).topk(min(B * self.k, B * F), dim=-1, sorted=False)
        if self.training:
            with torch.no_grad():
                low_K = torch.where(vals_KN > 0, vals_KN, torch.full_like(vals_KN, float("inf"))).amin(-1)
                found = torch.isfinite(low_K)
                first = self.threshold_K < 0
                new = torch.where(first, low_K, THRESHOLD_DECAY * self.threshold_K + (1 - THRESHOLD_DECAY) * low_K)
                self.threshold_K.copy_(torch.where(found, new, self.threshold_K))
        return [(idx_KN[m] // F, idx_KN[m] % F) for m in range(K)]

    @torch.no_grad()
    def export(self, k, scale=1.0, metadata=None, out_scale=None) -> SAE:
        # θ is in pre-activation units: ``inference`` rescales it with the biases.
        theta_F = torch.full((self.d_dict,), max(float(self.threshold_K[k]), 0.0), device=self.threshold_K.device)
        return self.inference(k, "jumprelu", scale, out_scale, metadata, threshold_F=theta_F)
