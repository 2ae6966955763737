"""Fragments: the short text windows that examples, explanations and simulations are made of.

Cunningham et al. 2023 (App. A; ``interpret.py``) take one random 64-token window from each document and
run the model on it. saex cuts windows out of the activation store's held-out contexts instead, so the
activations are the ones already harvested (each token keeps the context it had in the store): every
context of length T gives T // L non-overlapping windows of L tokens. With ``one_per_document`` each
document keeps one window, chosen at random with a seed among the windows it owns (a window belongs to the
document most of its tokens come from), which is the paper's "one fragment per document".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from saex.errors import SaexError


@dataclass
class Fragments:
    """Windows of the held-out split: which store rows each covers, its tokens and its document."""

    rows_NL: np.ndarray
    """Global held-out row index of every token of every fragment, int64 [N, L]."""
    tokens_NL: torch.Tensor
    """Token ids, int32 [N, L]."""
    doc_N: np.ndarray
    """Document each fragment belongs to (the most frequent document id among its tokens)."""

    @property
    def n(self) -> int:
        return self.rows_NL.shape[0]


def make_fragments(
    tokens_CT: torch.Tensor, docs_CT: torch.Tensor, length: int, one_per_document: bool, limit: int | None, seed: int
) -> Fragments:
    C, T = tokens_CT.shape
    if not 1 <= length <= T:
        raise SaexError(f"--fragment-length must be between 1 and the store's context length {T}, got {length}")
    W = T // length
    rows_NL = (
        np.arange(C)[:, None, None] * T + np.arange(W)[None, :, None] * length + np.arange(length)[None, None, :]
    ).reshape(C * W, length)
    docs_NL = docs_CT.numpy().reshape(-1)[rows_NL]
    from scipy import stats

    doc_N = stats.mode(docs_NL, axis=1, keepdims=False).mode.astype(np.int64)  # ties: the smaller id
    keep = np.arange(len(rows_NL))
    if one_per_document:
        key = np.random.default_rng([seed, 3]).random(len(rows_NL))
        order = np.lexsort((key, doc_N))  # by document, then by the random key
        first = np.ones(len(order), dtype=bool)
        first[1:] = doc_N[order][1:] != doc_N[order][:-1]
        keep = np.sort(order[first])
    if limit is not None:
        keep = keep[:limit]
    if len(keep) == 0:
        raise SaexError("the held-out split yields no fragments")
    rows_NL = rows_NL[keep]
    return Fragments(rows_NL, tokens_CT.reshape(-1)[torch.from_numpy(rows_NL)].to(torch.int32), doc_N[keep])
