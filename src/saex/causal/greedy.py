"""Greedy minimal feature sets, ACDC-style (Conmy et al. 2023), as Cunningham et al. 2023 §4 ran them.

``ioi_feature_ident.py`` (paper §4; docs/causal.md): start with every feature patched; for each threshold τ in
``logspace(−5, 0, 50)``, ascending, visit the patched features in a random order and tentatively un-patch
each; keep it un-patched when KL rises by less than τ (KL_new − KL_prev < τ), then continue from the new
set. After each τ, record (set, KL, edit magnitude). The sets are nested, so each feature has the τ at
which it was dropped, and the records give the curves "features patched vs KL" and "edit magnitude vs KL".

Faster than the paper's loop, with the same result: features whose code is equal in the base and
counterfactual runs everywhere change nothing, so they are dropped at the first τ without an evaluation;
candidates are evaluated several at a time (speculatively, against the current set: after a drop the rest
of the batch is re-evaluated, and the batch shrinks; after a batch without a drop it grows).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from saex.causal.patching import PatchingSetup

TAUS = np.logspace(-5, 0, 50)


def greedy_prune(
    setup: PatchingSetup, taus=TAUS, seed: int = 0, max_batch: int = 8, on_eval: Callable[[int], None] | None = None
) -> dict:
    F = setup.n_features
    mask = torch.zeros(F)
    mask[setup.active] = 1.0
    dropped_at = np.full(F, np.nan)
    dropped_at[np.setdiff1d(np.arange(F), setup.active.numpy())] = float(taus[0])
    kl_all, edit_all = (float(v[0]) for v in setup.evaluate(torch.ones(1, F)))
    kl_prev = kl_all
    rng = np.random.default_rng([seed, 19])
    records = [
        {"tau": None, "n_patched": F, "kl": kl_all, "edit": edit_all},
        {"tau": None, "n_patched": 0, "kl": setup.kl_base(), "edit": 0.0},
    ]
    evaluations, b = 1, 1
    for tau in taus:
        order = [int(j) for j in rng.permutation(torch.nonzero(mask).squeeze(1).numpy())]
        i = 0
        while i < len(order):
            cand = order[i : i + b]
            masks = mask.repeat(len(cand), 1)
            masks[torch.arange(len(cand)), torch.tensor(cand)] = 0.0
            kls, _ = setup.evaluate(masks, batch=len(cand))
            evaluations += len(cand)
            if on_eval:
                on_eval(len(cand))
            drop = next((k for k in range(len(cand)) if float(kls[k]) - kl_prev < tau), None)
            if drop is None:
                i += len(cand)
                b = min(max_batch, 2 * b)
                continue
            mask[cand[drop]] = 0.0
            kl_prev = float(kls[drop])
            dropped_at[cand[drop]] = float(tau)
            i += drop + 1
            b = max(1, b // 2)
        records.append(
            {
                "tau": float(tau),
                "n_patched": int(mask.sum()),
                "kl": kl_prev,
                "edit": float(setup.edit_magnitude(mask[None])[0]),
            }
        )
    return {
        "records": records,
        "dropped_at": [None if np.isnan(t) else t for t in dropped_at],
        "evaluations": evaluations,
        "seed": seed,
        "n_features": F,
        "n_active": int(len(setup.active)),
    }


def patched_set(result: dict, tau: float) -> list[int]:
    """The features still patched after threshold ``tau`` (never dropped, or dropped at a larger τ)."""
    return [j for j, t in enumerate(result["dropped_at"]) if t is None or t > tau]
