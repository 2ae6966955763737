"""Helpers of the per-feature case studies (Cunningham et al. 2023 §5, App. D; run by ``saex case-study``):
a cached token decoder and the held-out contexts a feature's ablation effect and circuit are measured on."""

from __future__ import annotations

from functools import cache

import numpy as np
import torch


def decoder(tokenizer):
    @cache
    def decode(i: int) -> str:
        return tokenizer.decode([int(i)])

    return decode


def store_contexts(
    tokens_CT: torch.Tensor,
    cmax_C: torch.Tensor,
    carg_C: torch.Tensor,
    n: int,
    lo: float | None = None,
    hi: float | None = None,
    seed: int = 0,
) -> list[list[int]]:
    """Held-out contexts of one series: the ``n`` with the highest peaks, whole; or (with ``lo``/``hi``) a
    seeded sample of ``n`` among those whose peak is in [lo, hi], truncated after the peak's token."""
    if lo is None:
        order = torch.argsort(cmax_C, descending=True, stable=True)[:n]
        return [tokens_CT[c].tolist() for c in order[cmax_C[order] > 0].tolist()]
    assert hi is not None, "lo and hi come together"
    ok = torch.nonzero((cmax_C >= lo) & (cmax_C <= hi)).squeeze(1).numpy()
    pick = np.sort(ok[np.random.default_rng([seed, 17]).permutation(len(ok))[:n]])
    return [tokens_CT[c, : int(carg_C[c]) + 1].tolist() for c in pick.tolist()]
