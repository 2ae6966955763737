"""Helpers for the feature-index tests: a synthetic store with chosen tokens / doc ids, hand-made
dictionaries, and brute-force recomputations of fragments and codes in numpy.

``write_store`` is ``tests/train/_synth.py``'s with a context length of 16 and given held-out ``tokens`` /
``doc_ids`` (``[C, T]`` each) where a test needs them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from saex.dictionaries.sae import SAE
from tests.train import _synth

HOOK = "blocks.0.hook_resid_post"


def write_store(
    path,
    train_ND: torch.Tensor,
    heldout_ND: torch.Tensor,
    T: int = 16,
    hook: str = HOOK,
    shard_rows: int = 4096,
    tokens_CT: torch.Tensor | None = None,
    docs_CT: torch.Tensor | None = None,
    name: str = "synthetic",
) -> Path:
    """``tests/train/_synth.write_store`` with this folder's defaults (T = 16, a 1000-token vocabulary)."""
    return _synth.write_store(
        path,
        train_ND.float(),
        heldout_ND.float(),
        hook=hook,
        shard_rows=shard_rows,
        name=name,
        T=T,
        tokens_CT=tokens_CT,
        docs_CT=docs_CT,
        vocab_size=1000,
    )


# -- the synthetic held-out data -------------------------------------------------------------------------
D = 6
T = 16
C = 12
L = 4
FIRE_ROWS = (5, 13, 14, 42, 97, 150, 151, 190)
"""Held-out rows where feature 0 of the standard dictionary fires (x[:, 0] > 0 there only)."""


def heldout_data(seed: int = 0) -> np.ndarray:
    """[C*T, D] float32: column 0 negative except at FIRE_ROWS, column 1 in [-1, 1], the rest normal."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(C * T, D))
    X[:, 0] = -1.0 - rng.random(C * T)
    X[list(FIRE_ROWS), 0] = 0.5 + 3.0 * rng.random(len(FIRE_ROWS))
    X[:, 1] = rng.uniform(-1, 1, C * T)
    return X.astype(np.float32)


def heldout_tokens() -> torch.Tensor:
    return (torch.arange(C * T, dtype=torch.int32) * 7 + 3).remainder(997).view(C, T)


def heldout_docs() -> torch.Tensor:
    """Documents spanning context boundaries, so that one_per_document keeps fewer fragments than windows."""
    lengths = [5, 11, 1, 22, 9, 30, 2, 14, 7, 25, 16, 8, 6, 36]  # the third owns no window
    # ids out of row order (a permutation), so that "sorted by document" and "in store order" differ
    ids = np.concatenate([np.full(n, 100 + 3 * ((5 * i) % len(lengths))) for i, n in enumerate(lengths)])
    assert len(ids) == C * T
    return torch.from_numpy(ids.astype(np.int32)).view(C, T)


def standard_sae(hook: str = HOOK, seed: int = 1) -> SAE:
    """5 features: 0 fires on FIRE_ROWS only, 1 never fires, 2 always fires (bias 2 over a small direction),
    3 and 4 random directions."""
    rng = np.random.default_rng(seed)
    W = np.zeros((D, 5))
    b = np.zeros(5)
    W[0, 0] = 1.0
    b[1] = -1.0
    W[2:, 2], b[2] = 0.2 * rng.normal(size=D - 2), 2.0
    W[:, 3:] = rng.normal(size=(D, 2))
    b[3:] = rng.normal(size=2) * 0.3
    b_dec = rng.normal(size=D) * 0.2
    b_dec[:2] = 0.0
    W_dec = rng.normal(size=(5, D))
    t = lambda a: torch.tensor(a, dtype=torch.float32)
    return SAE(t(W), t(W_dec), t(b), t(b_dec), "standard", apply_b_dec_to_input=True, metadata={"hook_name": hook})


def linear_dict(hook: str = HOOK, seed: int = 2) -> SAE:
    """4 signed features: 0 and 1 random, 2 never positive (bias -100), 3 always positive (bias +100)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(D, 4))
    b = rng.normal(size=4) * 0.3
    b[2], b[3] = -100.0, 100.0
    t = lambda a: torch.tensor(a, dtype=torch.float32)
    return SAE(t(W), t(rng.normal(size=(4, D))), t(b), t(np.zeros(D)), "linear", metadata={"hook_name": hook})


def topk_sae(hook: str = HOOK, seed: int = 3) -> SAE:
    rng = np.random.default_rng(seed)
    t = lambda a: torch.tensor(a, dtype=torch.float32)
    return SAE(
        t(rng.normal(size=(D, 6))),
        t(rng.normal(size=(6, D))),
        t(rng.normal(size=6) * 0.3),
        t(np.zeros(D)),
        "topk",
        k=2,
        metadata={"hook_name": hook},
    )


# -- brute force -----------------------------------------------------------------------------------------
def encode_np(d: SAE, X: np.ndarray) -> np.ndarray:
    """Codes of every row in float64, from the saved weights with plain numpy."""
    W = d.W_enc_DF.detach().double().numpy()
    b = d.b_enc_F.detach().double().numpy()
    x = X.astype(np.float64)
    if d.apply_b_dec_to_input:
        x = x - d.b_dec_D.detach().double().numpy()
    pre = x @ W + b
    if d.architecture == "standard":
        return np.maximum(pre, 0)
    if d.architecture == "topk":
        out = np.zeros_like(pre)
        for i, row in enumerate(pre):
            top = np.argsort(-row)[: d.k]
            out[i, top] = np.maximum(row[top], 0)
        return out
    return pre


def all_windows(C_: int, T_: int, L_: int) -> np.ndarray:
    """Row indices [C*W, L] of every window, context by context, loop-built."""
    out = []
    for c in range(C_):
        for w in range(T_ // L_):
            out.append([c * T_ + w * L_ + i for i in range(L_)])
    return np.array(out, dtype=np.int64).reshape(-1, L_)


def majority(docs) -> int:
    """Most frequent id, the smaller on ties."""
    counts = Counter(int(v) for v in docs)
    best = max(counts.values())
    return min(k for k, v in counts.items() if v == best)
