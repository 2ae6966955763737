"""Attribution patching: a first-order estimate of every feature's effect from one backward pass
(Nanda 2023, "Attribution patching"; Syed et al. 2023), used to order candidates for the greedy search.

With every active feature patched, x′ = x + Σ_j Δ_j f_j. Un-patching feature j moves x′ by −Δ_j f_j at
each position, so to first order KL changes by −Σ_{n,t} Δ_{n,t,j} ⟨∂KL/∂x′_{n,t}, f_j⟩. One backward pass
through the blocks after the hook gives ∂KL/∂x′ for all features at once.

The quick mode orders features by this estimate (largest estimated KL rise on removal first) and
evaluates the nested prefixes of that order exactly: the KL of each recorded set is exact, only the order
is approximate. ``validate`` compares the estimate with exact single-feature un-patching.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from saex.causal.patching import PatchingSetup


def attribution_scores(setup: PatchingSetup) -> torch.Tensor:
    """Estimated KL rise [F] when each feature alone is un-patched from the all-patched state (0 if inactive); on
    the CPU."""
    mask = torch.zeros(1, setup.n_features)
    mask[0, setup.active] = 1.0
    with torch.enable_grad():
        x = setup.patched(mask).detach().requires_grad_(True)
        kl = setup.kl(setup.final_logits(x))[0]
        (grad_NTD,) = torch.autograd.grad(kl, x)
    proj_NTF = grad_NTD[0] @ setup.W_dec_FD.T
    return -(setup.delta_NTF * proj_NTF).sum((0, 1)).detach().cpu()


def prefix_sizes(n: int) -> list[int]:
    """0, 1, 2, ... 8, then about 12 sizes per doubling, up to n."""
    sizes = set(range(min(n, 8) + 1))
    k = 8.0
    while k < n:
        k *= 2 ** (1 / 12)
        sizes.add(min(n, int(round(k))))
    sizes.add(n)
    return sorted(sizes)


def quick_curve(setup: PatchingSetup, scores: torch.Tensor, batch: int = 8) -> dict:
    """Exact KL and edit magnitude of the nested prefixes of the attribution order."""
    active = setup.active
    order = active[torch.argsort(scores[active], descending=True)]
    sizes = prefix_sizes(len(order))
    masks = torch.zeros(len(sizes), setup.n_features)
    for r, k in enumerate(sizes):
        masks[r, order[:k]] = 1.0
    kls, edits = setup.evaluate(masks, batch=batch)
    return {
        "order": order.tolist(),
        "records": [{"n_patched": k, "kl": float(a), "edit": float(e)} for k, a, e in zip(sizes, kls, edits)],
    }


def validate(setup: PatchingSetup, scores: torch.Tensor, n: int = 32, seed: int = 0, batch: int = 8) -> dict:
    """Spearman correlation between estimated and exact KL change for single-feature un-patching, on the n
    features with the largest estimates and n random active ones."""
    active = setup.active
    top = active[torch.argsort(scores[active], descending=True)[:n]]
    rest = np.setdiff1d(active.numpy(), top.numpy())
    rand: Any = np.random.default_rng([seed, 23]).choice(rest, min(n, len(rest)), replace=False) if len(rest) else []
    feats = torch.tensor(sorted(set(top.tolist()) | {int(j) for j in rand}), dtype=torch.long)
    mask = torch.zeros(setup.n_features)
    mask[active] = 1.0
    kl_all = float(setup.evaluate(mask[None])[0][0])
    masks = mask.repeat(len(feats), 1)
    masks[torch.arange(len(feats)), feats] = 0.0
    exact = setup.evaluate(masks, batch=batch)[0] - kl_all
    est = scores[feats]
    from scipy.stats import spearmanr

    rho = float(spearmanr(est.numpy(), exact.numpy()).statistic) if len(feats) > 2 else float("nan")
    return {"features": feats.tolist(), "estimated": est.tolist(), "exact": exact.tolist(), "spearman": rho}
