"""Scores (``saex.interpret.scoring``) against hand-computed values, numpy, scipy and scikit-learn.

Bills et al.'s aggregate score is one Pearson r over all tokens of all scored fragments pooled (not the
mean of per-fragment correlations); an undefined correlation is NaN per feature (autointerp.md §1.5, §5.6),
and the headline mean counts it as 0 and says how many there were (issue 13).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from saex.interpret.scoring import NO_INFORMATION, auroc, balanced_accuracy, mean_ci95, pooled_pearson


def a(*xs) -> np.ndarray:
    return np.array(xs, dtype=np.float64)


# -- pooled Pearson --------------------------------------------------------------------------------------
def test_pooled_pearson_hand_value():
    # pooled t = 0 1 0 2 3 (mean 1.2), p = 1 1 0 2 4 (mean 1.6)
    # Σ dt·dp = 0.72 + 0.12 + 1.92 + 0.32 + 4.32 = 7.4;  Σ dt² = 6.8;  Σ dp² = 9.2
    got = pooled_pearson([a(0, 1, 0), a(2, 3)], [a(1, 1, 0), a(2, 4)])
    assert got == pytest.approx(7.4 / math.sqrt(6.8 * 9.2), rel=1e-12)
    assert got == pytest.approx(np.corrcoef([0, 1, 0, 2, 3], [1, 1, 0, 2, 4])[0, 1], rel=1e-12)


def test_pooled_pearson_is_not_the_mean_of_per_sequence_correlations():
    true, pred = [a(0, 1), a(10, 11)], [a(0, 1), a(0, 1)]
    per_sequence = [np.corrcoef(t, p)[0, 1] for t, p in zip(true, pred)]
    assert per_sequence == pytest.approx([1.0, 1.0])
    # pooled: t = 0 1 10 11 (dt = ∓5.5, ∓4.5), p = 0 1 0 1 (dp = ∓0.5): Σ dt·dp = 1, Σ dt² = 101, Σ dp² = 1
    assert pooled_pearson(true, pred) == pytest.approx(1 / math.sqrt(101), rel=1e-12)


def test_pooled_pearson_against_numpy_on_random_sequences():
    rng = np.random.default_rng(0)
    true = [rng.random(n) for n in (64, 64, 3, 1, 64)]
    pred = [t * 2 + rng.normal(size=len(t)) for t in true]
    want = np.corrcoef(np.concatenate(true), np.concatenate(pred))[0, 1]
    assert pooled_pearson(true, pred) == pytest.approx(want, rel=1e-10)
    # invariant to scaling either side (no calibration needed, autointerp.md §1.2)
    assert pooled_pearson([t * 7 + 3 for t in true], [p / 10 for p in pred]) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize(
    "true,pred",
    [
        ([a(2, 2, 2), a(2)], [a(1, 2, 3), a(4)]),  # constant true
        ([a(1, 2, 3), a(4)], [a(0, 0, 0), a(0)]),  # constant predicted (a simulator that predicts nothing)
        ([a(1, 2, 3)], [a(5, 5, 5)]),
        ([a(0.5, 0.5)], [a(0.25, 0.25)]),
        ([a(3)], [a(1)]),  # one token
        ([], []),
    ],
)
def test_pooled_pearson_undefined_is_nan(true, pred):
    assert math.isnan(pooled_pearson(true, pred))


@pytest.mark.parametrize("const", [0.1, 0.7, 10 / 3, 3.3333])
def test_pooled_pearson_constant_non_dyadic_values_are_nan(const):
    rng = np.random.default_rng(0)
    other = rng.random(64)
    assert math.isnan(pooled_pearson([np.full(64, const)], [other]))
    assert math.isnan(pooled_pearson([other], [np.full(64, const)]))


def test_pooled_pearson_length_mismatch_raises():
    with pytest.raises(ValueError, match="differ in length: 3 vs 2"):
        pooled_pearson([a(1, 2, 3)], [a(1, 2)])
    with pytest.raises(ValueError, match="differ in length"):
        pooled_pearson([a(1, 2), a(3)], [a(1, 2)])


# -- AUROC -----------------------------------------------------------------------------------------------
def test_auroc_hand_value_with_a_tie():
    # pairs: 3>1, 3>2, 2>1, 2=2 (half) -> 3.5 / 4
    assert auroc(a(3, 2), a(1, 2)) == pytest.approx(0.875)
    assert auroc(a(5, 6), a(1, 2, 3)) == 1.0
    assert auroc(a(0), a(1, 2)) == 0.0
    assert auroc(a(1, 1), a(1, 1, 1)) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 4, 17).astype(float)  # few distinct values: many ties
    neg = rng.integers(0, 3, 23).astype(float)
    want = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
    assert auroc(pos, neg) == pytest.approx(want, rel=1e-12)
    # brute force over pairs
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(pos, neg) == pytest.approx(brute, rel=1e-12)


def test_auroc_without_both_classes_is_nan():
    assert math.isnan(auroc(a(), a(1, 2)))
    assert math.isnan(auroc(a(1), a()))


# -- balanced accuracy -----------------------------------------------------------------------------------
def test_balanced_accuracy_hand_values():
    # TPR 3/4, TNR 4/5
    assert balanced_accuracy(np.array([1, 1, 0, 1]), np.array([0, 1, 0, 0, 0])) == pytest.approx(0.775)
    assert balanced_accuracy(np.array([True] * 3), np.array([False] * 9)) == 1.0
    assert balanced_accuracy(np.array([True, True]), np.array([True])) == 0.5  # calls everything active
    assert balanced_accuracy(np.array([False]), np.array([True, True])) == 0.0
    assert math.isnan(balanced_accuracy(np.array([], bool), np.array([True])))
    assert math.isnan(balanced_accuracy(np.array([True]), np.array([], bool)))


# -- mean ± 95% CI ---------------------------------------------------------------------------------------
def test_mean_ci95_hand_values_ignoring_and_counting_undefined():
    # defined: 0.2 0.4 0.9 -> mean 0.5; deviations -0.3 -0.1 0.4; sd(ddof=1) = sqrt(0.26 / 2)
    got = mean_ci95([0.2, math.nan, 0.4, 0.9, math.nan, math.inf])
    assert got["mean"] == pytest.approx(0.5)
    assert got["ci95"] == pytest.approx(1.96 * math.sqrt(0.13) / math.sqrt(3), rel=1e-12)
    assert got["n"] == 3 and got["undefined"] == 3


def test_mean_ci95_against_numpy():
    rng = np.random.default_rng(1)
    v = rng.normal(size=50)
    got = mean_ci95(list(v) + [float("nan")] * 4)
    assert got["mean"] == pytest.approx(v.mean(), rel=1e-12)
    assert got["ci95"] == pytest.approx(1.96 * v.std(ddof=1) / math.sqrt(50), rel=1e-12)
    assert (got["n"], got["undefined"]) == (50, 4)


def test_mean_ci95_with_too_few_values():
    one = mean_ci95([0.3, math.nan])
    assert one["mean"] == pytest.approx(0.3) and math.isnan(one["ci95"]) and (one["n"], one["undefined"]) == (1, 1)
    none = mean_ci95([math.nan, math.nan])
    assert math.isnan(none["mean"]) and math.isnan(none["ci95"]) and (none["n"], none["undefined"]) == (0, 2)
    empty = mean_ci95([])
    assert math.isnan(empty["mean"]) and (empty["n"], empty["undefined"]) == (0, 0)


def test_mean_ci95_counts_undefined_as_zero():
    # [0.5, NaN, 0.3] with NaN as 0: values 0.5 0 0.3, mean 0.8/3; deviations 7/30, -8/30, 1/30
    # sd(ddof=1) = sqrt((49 + 64 + 1) / 900 / 2) = sqrt(114 / 1800)
    got = mean_ci95([0.5, math.nan, 0.3], undefined_as=0.0)
    assert got["mean"] == pytest.approx(0.26666666666666666, rel=1e-12)
    assert got["ci95"] == pytest.approx(1.96 * math.sqrt(114 / 1800) / math.sqrt(3), rel=1e-12)
    assert (got["n"], got["undefined"]) == (3, 1)
    # None (a JSON null) and ±inf are undefined too; the same numbers as numpy on the filled-in values
    got = mean_ci95([0.2, None, 0.4, 0.9, math.nan, -math.inf], undefined_as=0.0)
    v = np.array([0.2, 0, 0.4, 0.9, 0, 0])
    assert got["mean"] == pytest.approx(v.mean(), rel=1e-12)
    assert got["ci95"] == pytest.approx(1.96 * v.std(ddof=1) / math.sqrt(6), rel=1e-12)
    assert (got["n"], got["undefined"]) == (6, 3)
    # all undefined: a defined mean of 0 with a zero-width CI, every one counted
    assert mean_ci95([None, None], undefined_as=0.0) == {"mean": 0.0, "ci95": 0.0, "n": 2, "undefined": 2}
    assert mean_ci95([None], undefined_as=0.5)["mean"] == 0.5 and math.isnan(mean_ci95([None], 0.0)["ci95"])
    empty = mean_ci95([], undefined_as=0.0)
    assert math.isnan(empty["mean"]) and (empty["n"], empty["undefined"]) == (0, 0)


def test_no_information_values():
    # a correlation without information is 0; detection without information is chance (ties counted half)
    assert NO_INFORMATION == {"top_random": 0.0, "top": 0.0, "random": 0.0, "auroc": 0.5, "balanced_accuracy": 0.5}
    assert auroc(a(1, 1, 1), a(1, 1)) == NO_INFORMATION["auroc"]
    assert balanced_accuracy(np.array([False] * 3), np.array([False] * 4)) == NO_INFORMATION["balanced_accuracy"]
