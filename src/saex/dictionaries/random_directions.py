"""Random directions as a dictionary: paper §3.2 baseline (b), "Random" in Figure 2.

Gaussian directions with ReLU and zero bias (§3.2; ``RandomDict`` in the paper's code). The code used
unnormalised ``randn`` rows; here they are scaled to unit norm, which changes each feature's activation
by a constant factor only (no effect on which tokens activate it or on correlation scores) and gives the
unit-norm ``W_dec`` the Dictionary protocol promises. Encoder and decoder are tied.
"""

from __future__ import annotations

import torch

from saex.dictionaries.sae import SAE


def random_directions(d_in: int, d_dict: int, seed: int, metadata: dict | None = None) -> SAE:
    g = torch.Generator().manual_seed(seed)
    V_FD = torch.randn(d_dict, d_in, generator=g, dtype=torch.float64)
    V_FD = (V_FD / V_FD.norm(dim=1, keepdim=True)).float()
    return SAE(
        V_FD.T.clone(),
        V_FD,
        torch.zeros(d_dict),
        torch.zeros(d_in),
        "standard",
        apply_b_dec_to_input=False,
        metadata=metadata,
    )
