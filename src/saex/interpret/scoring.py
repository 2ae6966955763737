"""Scores of a simulation (Bills et al. 2023 ``explanations/scoring.py``; Cunningham et al. 2023 App. A).

The score is the Pearson correlation between true and simulated activations over **all tokens of all
scored fragments pooled** (``aggregate_scored_sequence_simulations``), not the mean of per-fragment
correlations. Cunningham et al. report it over the 5 top + 5 random fragments ("top-and-random"), and read
"top-only" and "random-only" off the two halves of the same simulation. When either side is constant the
correlation is undefined: it is returned as NaN, and each feature's record keeps it undefined (``null``).
The headline means count it as 0 and report how many there were (``mean_ci95(..., undefined_as=0.0)``).

For delphi-style detection (Paulo et al. 2024): balanced accuracy of binary calls and AUROC of scores.
"""

from __future__ import annotations

import math

import numpy as np


def pooled_pearson(true: list[np.ndarray], predicted: list[np.ndarray]) -> float:
    """Pearson r over the concatenation of every sequence; NaN when either side is constant."""
    t = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in true]) if true else np.zeros(0)
    p = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in predicted]) if predicted else np.zeros(0)
    if t.shape != p.shape:
        raise ValueError(f"true and predicted activations differ in length: {t.shape[0]} vs {p.shape[0]}")
    # a constant side has no correlation; test it before centring, whose rounding would leave ~1e-17 residues
    if t.size < 2 or np.ptp(t) == 0 or np.ptp(p) == 0:
        return math.nan
    t, p = t - t.mean(), p - p.mean()
    denom = math.sqrt(float(t @ t) * float(p @ p))
    return float(t @ p) / denom if denom > 0 else math.nan


def auroc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos·n_neg), ties counted half); NaN without both classes."""
    pos, neg = np.asarray(scores_pos, np.float64), np.asarray(scores_neg, np.float64)
    if pos.size == 0 or neg.size == 0:
        return math.nan
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def balanced_accuracy(calls_pos: np.ndarray, calls_neg: np.ndarray) -> float:
    """Mean of the true-positive and true-negative rates of binary calls; NaN without both classes."""
    pos, neg = np.asarray(calls_pos, bool), np.asarray(calls_neg, bool)
    if pos.size == 0 or neg.size == 0:
        return math.nan
    return float((pos.mean() + (1 - neg.mean())) / 2)


NO_INFORMATION = {"top_random": 0.0, "top": 0.0, "random": 0.0, "auroc": 0.5, "balanced_accuracy": 0.5}
"""The value an undefined score counts as in a headline mean: what a simulation carrying no information about
the activations scores. A correlation: 0. Detection (AUROC, balanced accuracy) is undefined only when the
sample lacks a class (a feature active in every window), never because the detector called nothing (that
scores 0.5), so it counts as chance, 0.5: 0 would mean every call was wrong."""


def mean_ci95(values, undefined_as: float | None = None) -> dict:
    """Mean, 95% CI half-width 1.96·sd(ddof=1)/√n, n, and how many values were undefined (None, NaN, ±inf).

    ``undefined_as=None``: undefined values are left out and ``n`` counts the defined ones (for quantities
    where undefined means missing, e.g. token entropy). ``undefined_as=<number>``: they count as that number
    and ``n`` counts them all. Autointerp means count an undefined score as ``NO_INFORMATION[score]``: an undefined
    correlation is mostly a constant simulation (the simulator predicted nothing; the offline table does so
    whenever none of its tokens occur), and leaving it out ranks a method by the few features its
    explanations happened to predict: up to 38 of 60 random-only scores were undefined, which put
    random-only above top-and-random (issue 13).
    """
    v = np.asarray([math.nan if x is None else x for x in values], dtype=np.float64)
    defined = np.isfinite(v)
    undefined = int(v.size - defined.sum())
    ok = v[defined] if undefined_as is None else np.where(defined, v, float(undefined_as))
    n = int(ok.size)
    half = 1.96 * float(ok.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return {"mean": float(ok.mean()) if n else math.nan, "ci95": half, "n": n, "undefined": undefined}
