"""Matryoshka BatchTopK sparse autoencoder: nested prefixes of the dictionary, each a reconstruction.

Bussmann, Nabeshima, Karvonen and Nanda 2025, "Learning Multi-Level Features with Matryoshka Sparse
Autoencoders" (eq. 3), after Nabeshima 2024: the codes are BatchTopK's (see
:mod:`saex.dictionaries.batchtopk`), and for nested sizes m_1 < m_2 < … < m_n = d_dict the first m_i
features alone must reconstruct the input,

    L = Σ_i mean over elements of (x − (c_{1:m_i} W_dec,{1:m_i} + b_dec))²   +   aux-k term,

so early features learn general directions that do not depend on later ones (less feature absorption).
The prefix sizes are ``--matryoshka-prefixes`` fractions of the dictionary (default ``PREFIXES`` and the
whole). Each prefix's reconstruction is one sparse decode of the kept codes of its latents
(:mod:`saex.dictionaries.sparse_codes`, N·D work per prefix for N kept codes). Saved, like BatchTopK, as a JumpReLU SAE with the estimated threshold; the prefix
sizes are recorded in the metadata.
"""

from __future__ import annotations

from typing import Any

import torch

from saex.dictionaries.batchtopk import BatchTopK
from saex.dictionaries.ensemble import Member, register
from saex.dictionaries.sae import SAE
from saex.dictionaries.sparse_codes import Decode
from saex.errors import SaexError

PREFIXES = [1 / 16, 1 / 8, 1 / 4, 1 / 2]
"""The default nested prefixes, as fractions of the dictionary (the whole dictionary is always the last)."""


def prefix_sizes(fractions: list[float], d_dict: int) -> list[int]:
    """The nested sizes m_1 < … < m_n = d_dict for the given fractions of the dictionary."""
    sizes = sorted({round(f * d_dict) for f in fractions if 0 < f < 1} | {d_dict})
    if sizes[0] < 1:
        raise SaexError(f"--matryoshka-prefixes {fractions} gives an empty prefix for a dictionary of {d_dict}")
    return sizes


@register
class Matryoshka(BatchTopK):
    arch = "matryoshka"
    reads: tuple[str, ...] = ("k", "aux_k", "aux_coef", "matryoshka_prefixes")

    @classmethod
    def options(cls, cfg: Any, members: list[Member]) -> dict[str, Any]:
        return super().options(cfg, members) | {"prefixes": list(cfg.matryoshka_prefixes)}

    def __init__(self, d_in: int, d_dict: int, seeds: list[int], *args, prefixes: list[float] | None = None, **kwargs):
        super().__init__(d_in, d_dict, seeds, *args, **kwargs)
        self.prefixes_M = prefix_sizes(PREFIXES if prefixes is None else prefixes, d_dict)

    def reconstruction_loss(self, vals_N, codes, W_dec_FD, b_dec_D, y_BD):
        # Prefix i's reconstruction is the decode of the kept codes of latents below m_i, plus b_dec.
        loss = torch.zeros((), device=vals_N.device)
        for size in self.prefixes_M:
            inside = (codes.cols < size).to(vals_N.dtype)
            xhat_BD = Decode.apply(vals_N * inside, W_dec_FD, codes) + b_dec_D
            mse = (xhat_BD - y_BD).pow(2).mean()
            loss = loss + mse
        return loss, mse, xhat_BD  # the last prefix is the whole dictionary

    @torch.no_grad()
    def export(self, k, scale=1.0, metadata=None, out_scale=None) -> SAE:
        sae = super().export(k, scale, metadata, out_scale)
        sae.metadata["matryoshka_prefixes"] = list(self.prefixes_M)
        return sae
