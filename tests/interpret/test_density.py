"""Scores per activation-density bin and the SAE − baseline difference at matched density
(``saex.interpret.density``), and the headline means of ``summarize_method`` with undefined scores counted as
0 (issue 13): hand-computed on synthetic score records of known densities."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from saex.interpret.density import (
    BELOW,
    EDGES,
    NEVER,
    bin_labels,
    by_density,
    density_bin,
    density_comparison,
    matched_difference,
)
from saex.interpret.summary import summarize_method


def row(density, top_random, top=None, random=None, feature=0) -> dict:
    return {
        "feature": feature,
        "density": density,
        "skew": 1.0,
        "kurtosis": 3.0,
        "token_entropy": 1.0,
        "explanation": {"text": "x"},
        "scores": {"top_random": top_random, "top": top, "random": random},
    }


def test_bin_labels_and_edges():
    assert EDGES == (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    assert bin_labels() == [NEVER, BELOW, "[1e-5, 1e-4)", "[1e-4, 1e-3)", "[1e-3, 1e-2)", "[1e-2, 1e-1)", "[1e-1, 1]"]


@pytest.mark.parametrize(
    "density,label",
    [
        (0.0, NEVER),
        (None, NEVER),
        (math.nan, NEVER),
        (3e-6, BELOW),
        (1e-5, "[1e-5, 1e-4)"),
        (9.99e-5, "[1e-5, 1e-4)"),
        (1e-4, "[1e-4, 1e-3)"),
        (5e-3, "[1e-3, 1e-2)"),
        (0.0999, "[1e-2, 1e-1)"),
        (0.1, "[1e-1, 1]"),
        (1.0, "[1e-1, 1]"),
    ],
)
def test_density_bin(density, label):
    assert density_bin(density) == label


def test_by_density_on_known_densities():
    rows = [
        row(2e-4, 0.5),
        row(3e-4, None),
        row(5e-4, 0.3),  # [1e-4, 1e-3): 0.5, 0, 0.3
        row(0.5, 0.1),
        row(1.0, 0.2),  # [1e-1, 1]: 0.1, 0.2
        {"feature": 9, "density": 0.5, "skipped": "too few fragments"},
    ]  # not scored: in no bin
    got = by_density(rows, "top_random")
    assert list(got) == bin_labels()
    mid = got["[1e-4, 1e-3)"]
    assert mid["mean"] == pytest.approx(0.8 / 3) and (mid["n"], mid["undefined"]) == (3, 1)
    assert mid["ci95"] == pytest.approx(1.96 * np.std([0.5, 0, 0.3], ddof=1) / math.sqrt(3))
    top = got["[1e-1, 1]"]
    assert top["mean"] == pytest.approx(0.15) and (top["n"], top["undefined"]) == (2, 0)
    assert all(
        got[b]["n"] == 0 and math.isnan(got[b]["mean"]) for b in bin_labels() if b not in ("[1e-4, 1e-3)", "[1e-1, 1]")
    )


def test_matched_difference_by_hand():
    def stat(mean, ci, n):
        return {"mean": mean, "ci95": ci, "n": n, "undefined": 0}

    sae = {"[1e-4, 1e-3)": stat(0.6, 0.196, 30), "[1e-3, 1e-2)": stat(0.4, 0.098, 10), "[1e-1, 1]": stat(0.9, 0.1, 4)}
    base = {"[1e-4, 1e-3)": stat(0.5, 0.098, 5), "[1e-3, 1e-2)": stat(0.5, 0.196, 20), "[1e-1, 1]": stat(0.3, 0.1, 40)}
    got = matched_difference(sae, base)
    # the top bin has 4 < 5 SAE features: left out. Weights 30/40, 10/40: 0.75·0.1 + 0.25·(−0.1) = 0.05
    assert [b["bin"] for b in got["bins"]] == ["[1e-4, 1e-3)", "[1e-3, 1e-2)"]
    assert got["diff"] == pytest.approx(0.05)
    # se per bin = ci95 / 1.96: (0.1, 0.05) and (0.05, 0.1); var = 0.75²·0.0125 + 0.25²·0.0125
    assert got["ci95"] == pytest.approx(1.96 * math.sqrt((0.5625 + 0.0625) * 0.0125))
    assert (got["n_sae"], got["n_baseline"], got["min_features"]) == (40, 25, 5)
    assert matched_difference(sae, base, min_features=31)["diff"] is None


def test_density_comparison_separates_density_from_score():
    # the baseline scores higher overall only because its features are dense, where every method scores higher:
    # at matched density the SAE is ahead in each bin
    sae = [row(5e-4, 0.30 + 0.01 * i, feature=i) for i in range(8)] + [row(0.5, 0.62 + 0.01 * i) for i in range(5)]
    base = [row(5e-4, 0.20 + 0.01 * i) for i in range(5)] + [row(0.5, 0.50 + 0.01 * i) for i in range(20)]
    got = density_comparison({"sae": sae, "pca": base}, {"pca"}, "top_random")
    bins = got["by_density"]["methods"]
    assert bins["sae"]["[1e-4, 1e-3)"]["n"] == 8 and bins["pca"]["[1e-1, 1]"]["n"] == 20
    pair = got["density_matched"]["pairs"]["sae"]["pca"]
    sae_all = np.mean([r["scores"]["top_random"] for r in sae])
    base_all = np.mean([r["scores"]["top_random"] for r in base])
    assert pair["unmatched_diff"] == pytest.approx(sae_all - base_all) and pair["unmatched_diff"] < 0
    # within bins: (0.335 − 0.22) and (0.64 − 0.595), weighted 8/13 and 5/13
    assert pair["diff"] == pytest.approx((8 * 0.115 + 5 * 0.045) / 13) and pair["diff"] > 0
    assert list(got["density_matched"]["pairs"]) == ["sae"]  # baselines are not compared with each other


def _index(baseline=None):
    return SimpleNamespace(
        meta={
            "dictionary": {"baseline": baseline, "arch": "tied_l1", "alpha": 1e-3},
            "hook": "h",
            "d_dict": 8,
            "d_in": 4,
        }
    )


def test_random_only_with_many_undefined_no_longer_beats_top_and_random():
    # 10 features: top-and-random 0.3 each; random-only defined (0.6) for 3 and undefined (a constant
    # simulation) for 7. Leaving the undefined out gave random-only 0.6 > 0.3; counted as 0 it is 0.18
    rows = [row(1e-3, 0.3, 0.3, 0.6 if i < 3 else None, feature=i) for i in range(10)]
    got = summarize_method("m", _index(), rows, [], "cunningham2023")
    assert got["top_random"]["mean"] == pytest.approx(0.3) and got["top_random"]["undefined"] == 0
    assert got["random"]["mean"] == pytest.approx(0.18)
    assert (got["random"]["n"], got["random"]["undefined"]) == (10, 7)
    assert got["random"]["mean"] < got["top_random"]["mean"]
    # the per-feature value stays undefined
    assert [r["scores"]["random"] for r in rows[3:]] == [None] * 7


def test_nulls_and_detection_count_undefined_as_no_information():
    rows = [row(1e-3, 0.4), row(1e-3, 0.2)]
    nulls = [
        {"feature": 0, "scores": {"top_random": None, "top": None, "random": 0.1}},
        {"feature": 1, "scores": {"top_random": 0.1, "top": 0.1, "random": 0.1}},
    ]
    got = summarize_method("m", _index("pca"), rows, nulls, "cunningham2023")
    assert got["null_top_random"]["mean"] == pytest.approx(0.05) and got["null_top_random"]["undefined"] == 1
    # delphi: an undefined AUROC (no non-activating window) is chance, 0.5, not 0
    det = [
        {
            "feature": i,
            "density": 0.5,
            "skew": 1.0,
            "kurtosis": 3.0,
            "explanation": {"text": "x"},
            "scores": {"auroc": a, "balanced_accuracy": b},
        }
        for i, (a, b) in enumerate([(0.9, 0.8), (None, None)])
    ]
    got = summarize_method("m", _index(), det, [], "delphi")
    assert got["auroc"]["mean"] == pytest.approx(0.7) and got["auroc"]["undefined"] == 1
    assert got["balanced_accuracy"]["mean"] == pytest.approx(0.65)
