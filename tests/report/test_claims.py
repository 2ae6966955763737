"""The paper's claims judged on hand-made numbers: each verdict (held / did not hold / not measured) at its
edges, with the numbers it rests on."""

from __future__ import annotations

import math

import pytest

from saex.report import claims as C
from saex.report.claims_causal import case_study_claims, ioi_claims

HELD, NOT_HELD, NOT_MEASURED = C.HELD, C.NOT_HELD, C.NOT_MEASURED


def st(mean, ci=0.01, n=150):
    return {"mean": mean, "ci95": ci, "n": n}


def by_key(claims):
    return {c.key: c for c in claims}


def test_sae_beats_held_not_held_and_ci_separation():
    layers = {
        "layer 0": {"sae": st(0.30, 0.02), "baselines": {"pca": st(0.20, 0.02), "ica": st(0.25, 0.02)}},
        "layer 1": {"sae": st(0.28, 0.05), "baselines": {"pca": st(0.20, 0.02), "ica": st(0.25, 0.02)}},
    }
    c = by_key(C.sae_beats("fig2", "Fig. 2", "p", "top-and-random", layers))
    assert c["fig2_above"].verdict == HELD
    assert c["fig2_above"].numbers["layer 0"] == {"sae": 0.30, "best_baseline": "ica", "best_baseline_mean": 0.25}
    # layer 0: 0.28 > 0.27; layer 1: 0.23 < 0.27, so the CIs do not separate everywhere
    assert c["fig2_ci"].verdict == NOT_HELD and "1 of 2" in c["fig2_ci"].detail
    layers["layer 1"]["sae"] = st(0.24)
    assert by_key(C.sae_beats("fig2", "Fig. 2", "p", "s", layers))["fig2_above"].verdict == NOT_HELD


def test_sae_beats_restricted_baselines_and_not_measured():
    layers = {"layer 0": {"sae": st(0.3), "baselines": {"pca": st(0.5), "pca_topk": st(0.1)}}}
    only_topk = by_key(C.sae_beats("fig18", "Fig. 18", "p", "s", layers, ("pca_topk", "ica_topk")))
    assert only_topk["fig18_above"].verdict == HELD
    empty = by_key(C.sae_beats("fig2", "Fig. 2", "p", "s", {"layer 0": {"sae": None, "baselines": {"pca": st(0.1)}}}))
    assert empty["fig2_above"].verdict == NOT_MEASURED and empty["fig2_ci"].verdict == NOT_MEASURED
    nan = {"layer 0": {"sae": st(0.3, ci=math.nan), "baselines": {"pca": st(0.1)}}}
    c = by_key(C.sae_beats("fig2", "Fig. 2", "p", "s", nan))
    assert c["fig2_above"].verdict == HELD and c["fig2_ci"].verdict == NOT_MEASURED


def test_advantage_declines_slope():
    rows = lambda margins: {L: {"sae": st(0.3 + m), "baselines": {"ica": st(0.3)}} for L, m in margins.items()}  # noqa
    c = C.advantage_declines(rows({0: 0.10, 1: 0.08, 4: 0.01}))
    assert c.verdict == HELD
    # least-squares slope of (0, .1), (1, .08), (4, .01) by hand: x̄ = 5/3, ȳ = .19/3
    xs, ys = [0, 1, 4], [0.10, 0.08, 0.01]
    mx, my = sum(xs) / 3, sum(ys) / 3
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    assert c.numbers["slope"] == pytest.approx(slope)
    assert C.advantage_declines(rows({0: 0.01, 3: 0.02, 5: 0.05})).verdict == NOT_HELD
    # issue 13: a decline needs ≥ 3 layers (was 2), so two layers are not measured
    assert C.advantage_declines(rows({0: 0.01, 5: 0.05})).verdict == NOT_MEASURED
    assert C.advantage_declines(rows({2: 0.1})).verdict == NOT_MEASURED


def test_random_below_top_and_small_dictionaries():
    assert C.random_below_top({"l0": {"top_random": st(0.3), "random": st(0.1)}}).verdict == HELD
    assert C.random_below_top({"l0": {"top_random": st(0.1), "random": st(0.2)}}).verdict == NOT_HELD
    assert (
        "random 0.200 ≥ top-and-random 0.100"
        in C.random_below_top({"l0": {"top_random": st(0.1), "random": st(0.2)}}).detail
    )
    assert C.random_below_top({"l0": {"top_random": st(0.1), "random": None}}).verdict == NOT_MEASURED
    layers = {"l0": {"by_ratio": {0.5: st(0.3), 2.0: st(0.4)}, "baselines": {"pca": st(0.2)}}}
    assert C.small_dictionaries(layers).verdict == HELD
    layers["l0"]["baselines"]["ica"] = st(0.35)  # beats R = 0.5; R = 2 is not part of the claim
    assert C.small_dictionaries(layers).verdict == NOT_HELD
    assert (
        C.small_dictionaries({"l0": {"by_ratio": {2.0: st(0.4)}, "baselines": {"pca": st(0.2)}}}).verdict
        == NOT_MEASURED
    )


def test_fvu_and_tradeoff():
    assert C.fvu_falls_with_ratio({"l0": {0.5: 0.4, 1.0: 0.3, 2.0: 0.2}}).verdict == HELD
    assert C.fvu_falls_with_ratio({"l0": {0.5: 0.4, 1.0: 0.45}}).verdict == NOT_HELD
    assert C.fvu_falls_with_ratio({"l0": {1.0: 0.4}}).verdict == NOT_MEASURED
    # issue 13: a sweep needs ≥ 5 sparsity levels (was 3)
    good = [
        {"l0": 200, "fvu": 0.01},
        {"l0": 100, "fvu": 0.02},
        {"l0": 50, "fvu": 0.05},
        {"l0": 10, "fvu": 0.2},
        {"l0": 2, "fvu": 0.5},
    ]
    assert C.smooth_tradeoff({"s": good}).verdict == HELD
    bad = good + [{"l0": 5, "fvu": 0.1}]  # sorted by L0: 2 → .5, 5 → .1, 10 → .2: FVU rises from L0 5 to 10
    c = C.smooth_tradeoff({"s": bad})
    assert c.verdict == NOT_HELD and c.numbers["s"]["non_monotone_steps"] == 1
    assert C.smooth_tradeoff({"s": good[:4]}).verdict == NOT_MEASURED


def test_alive_claims():
    resid = {
        "h": [
            {"alpha": 1e-3, "ratio": 4.0, "alive_fraction": 0.97},
            {"alpha": 1e-2, "ratio": 4.0, "alive_fraction": 0.5},
        ]
    }
    mlp = {
        "m": [{"alpha": 0.0, "ratio": 2.0, "alive_fraction": 0.7}, {"alpha": 1e-3, "ratio": 2.0, "alive_fraction": 0.4}]
    }
    c = by_key(C.alive_claims(resid, mlp))
    assert c["fig16_overcomplete"].verdict == HELD and c["fig16_overcomplete"].numbers["h"]["alive_fraction"] == 0.97
    assert c["fig16_mlp_dead"].verdict == HELD and c["fig16_mlp_dead"].numbers["m"]["2"] == pytest.approx(0.3)
    assert c["fig16_falls"].verdict == HELD
    resid["h"][0]["alive_fraction"] = 0.9
    mlp["m"][0]["alive_fraction"] = 0.95
    mlp["m"][1]["alive_fraction"] = 0.99
    c = by_key(C.alive_claims(resid, mlp))
    assert [c[k].verdict for k in ("fig16_overcomplete", "fig16_mlp_dead", "fig16_falls")] == [NOT_HELD] * 3
    c = by_key(C.alive_claims({"h": [{"alpha": 1e-3, "ratio": 2.0, "alive_fraction": 1.0}]}, {}))
    assert [c[k].verdict for k in ("fig16_overcomplete", "fig16_mlp_dead", "fig16_falls")] == [NOT_MEASURED] * 3


def test_table2_fisher_ci_and_verdicts():
    lo, hi = C.fisher_ci(0.5, 100)
    se = 1.96 / math.sqrt(97)
    assert (lo, hi) == pytest.approx((math.tanh(math.atanh(0.5) - se), math.tanh(math.atanh(0.5) + se)))
    c = by_key(C.table2_claims({"skew": {"r": 0.5, "n": 100}, "kurtosis": {"r": 0.05, "n": 20}}))
    assert c["table2_skew"].verdict == HELD and c["table2_skew"].numbers["paper"] == 0.19
    assert c["table2_kurtosis"].verdict == NOT_HELD  # positive but its CI includes 0
    c = by_key(C.table2_claims({"skew": {"r": -0.3, "n": 500}, "kurtosis": {"r": None, "n": 0}}))
    assert c["table2_skew"].verdict == NOT_HELD and c["table2_kurtosis"].verdict == NOT_MEASURED
    assert by_key(C.table2_claims({}))["table2_skew"].verdict == NOT_MEASURED


def test_table1_and_perplexity():
    feats = lambda scores: [{"feature": i, "explanation": "x", "score": s} for i, s in enumerate(scores)]  # noqa
    assert C.table1_claim(feats([0.33, -0.11, 0.55, 0.57, 0.19])).verdict == HELD
    assert C.table1_claim(feats([0.3, -0.1, -0.2, 0.5, -0.1])).verdict == NOT_HELD
    assert C.table1_claim(feats([0.3, None, 0.2, 0.5, 0.1])).verdict == NOT_MEASURED
    c = C.perplexity_claim({"blocks.2.hook_resid_post": {"ppl_clean": 25.0, "ppl_spliced": 40.0}})
    assert c.verdict == HELD and c.numbers["blocks.2.hook_resid_post"]["ratio"] == pytest.approx(1.6)
    assert C.perplexity_claim({"h": {"ppl_clean": 25.0, "ppl_spliced": 24.0}}).verdict == NOT_HELD
    assert C.perplexity_claim({"h": {"ppl_clean": 25.0, "ppl_spliced": None}}).verdict == NOT_MEASURED


def curve(alpha, kind, pts, ratio=4.0):
    return {
        "alpha": alpha,
        "kind": kind,
        "ratio": ratio,
        "kl_base": 1.0,
        "points": [{"n_patched": n, "kl": kl, "edit": e} for n, kl, e in pts],
    }


def test_ioi_claims():
    curves = {
        "sae_1e-4": curve(1e-4, "tied_l1", [(0, 1.0, 0), (3, 0.4, 1.0), (10, 0.05, 2.0)]),
        "sae_1e-3": curve(1e-3, "tied_l1", [(0, 1.0, 0), (5, 0.45, 0.5), (10, 0.2, 1.5)]),
        "sae_0": curve(0.0, "tied_l1", [(0, 1.0, 0), (20, 0.3, 3.0)]),
        "pca_rot": curve(None, "pca_rot", [(0, 1.0, 0), (10, 0.5, 4.0), (30, 0.0, 9.0)], None),
    }
    c = by_key(ioi_claims(curves))
    assert c["fig3_features"].verdict == HELD  # 3 < 10
    assert c["fig3_edit"].verdict == HELD and c["fig3_edit"].numbers["sae_1e-3"]["edit"] == 0.5
    assert c["fig3_alpha0"].verdict == HELD  # 20 > 3
    assert c["fig3_floor"].verdict == HELD  # min KL 0.2 at α = 1e-3 > 0.05 at 1e-4
    curves["pca_rot"]["points"][1] = {"n_patched": 2, "kl": 0.1, "edit": 0.2}
    curves["sae_0"]["points"][1] = {"n_patched": 2, "kl": 0.3, "edit": 0.2}
    c = by_key(ioi_claims(curves))
    assert [c[k].verdict for k in ("fig3_features", "fig3_edit", "fig3_alpha0")] == [NOT_HELD] * 3
    c = by_key(ioi_claims({k: v for k, v in curves.items() if k != "pca_rot"}))
    assert c["fig3_features"].verdict == NOT_MEASURED and c["fig3_floor"].verdict == HELD
    c = by_key(ioi_claims({"sae_1e-4": curves["sae_1e-4"], "pca_rot": curves["pca_rot"]}))
    assert c["fig3_alpha0"].verdict == NOT_MEASURED and c["fig3_floor"].verdict == NOT_MEASURED


def _feature(labels_counts, decreased, rank=0, feature=7):
    series = [{"label": lab, "other": lab == "other", "counts": cnt} for lab, cnt in labels_counts]
    return {
        "hook": "h",
        "dictionary": "d",
        "feature": feature,
        "rank": rank,
        "histogram": {"edges": [i / 4 for i in range(5)], "series": series, "n": 1, "total": 1, "source": "x"},
        "output_effect": {
            "positions": 1,
            "contexts": 1,
            "increased": [],
            "decreased": [{"token": t, "id": 0, "delta": d} for t, d in decreased],
        },
    }


def test_case_study_claims():
    # the apostrophe is not the most common token overall, but it is in the upper half of the bins
    apos = _feature(
        [("'", [0, 0, 5, 6]), (".", [20, 9, 1, 0]), ("other", [9, 1, 1, 1])], [("Ġs", -0.9), ("t", -0.2)], rank=2
    )
    outlier = _feature([(" the", [5, 0, 0, 1])], [(" and", -0.1)], rank=0, feature=1)
    circuit = {
        "hook": "h",
        "feature": 7,
        "effect": None,
        "cos": None,
        "children": [
            {
                "hook": "g",
                "feature": 1,
                "effect": 0.5,
                "cos": 0.5,
                "children": [{"hook": "f", "feature": 2, "effect": 0.1, "cos": 0.3, "children": []}],
            },
            {"hook": "g", "feature": 3, "effect": 0.2, "cos": 0.4, "children": []},
        ],
        # issue 13: the tracer records the rises too, and the claim weighs the strongest drop against them
        "increases": [{"hook": "g", "feature": 9, "effect": -0.1, "cos": 0.0}],
        "ablated": 12,
    }
    c = by_key(case_study_claims({"features": [outlier, apos], "circuit": circuit}, d_in=100))
    assert c["fig4_apostrophe"].verdict == HELD
    share = [f for f in c["fig4_apostrophe"].numbers["features"] if f["feature"] == 7][0]["share"]
    assert share == pytest.approx(11 / 14)
    assert c["fig4_s"].verdict == HELD
    assert c["fig5_effects"].verdict == HELD
    assert c["fig5_cosine"].verdict == HELD and c["fig5_cosine"].numbers["mean_cos"] == pytest.approx(0.4)
    apos["output_effect"]["decreased"].reverse()
    circuit["children"] = []  # traced, but no upstream ablation lowered the target
    c = by_key(case_study_claims({"features": [outlier, apos], "circuit": circuit}, d_in=4))  # 3/√4 = 1.5
    assert [c[k].verdict for k in ("fig4_s", "fig5_effects")] == [NOT_HELD] * 2
    assert c["fig5_cosine"].verdict == NOT_MEASURED  # no edge
    circuit["children"] = [{"hook": "g", "feature": 3, "effect": 0.2, "cos": 0.4, "children": []}]
    c = by_key(case_study_claims({"features": [outlier, apos], "circuit": circuit}, d_in=4))  # 3/√4 = 1.5
    assert c["fig5_effects"].verdict == HELD and c["fig5_cosine"].verdict == NOT_HELD
    circuit["increases"][0]["effect"] = -0.3  # a rise stronger than the strongest drop
    assert by_key(case_study_claims({"circuit": circuit}, d_in=4))["fig5_effects"].verdict == NOT_HELD
    del circuit["increases"]  # a circuit without the rises (an older tracer): the claim cannot fail, so not judged
    assert by_key(case_study_claims({"circuit": circuit}, d_in=4))["fig5_effects"].verdict == NOT_MEASURED
    c = by_key(case_study_claims({"features": [outlier], "circuit": None}, d_in=None))
    assert c["fig4_apostrophe"].verdict == NOT_HELD
    assert [c[k].verdict for k in ("fig4_s", "fig5_effects", "fig5_cosine")] == [NOT_MEASURED] * 3
    assert {x.verdict for x in case_study_claims(None, None)} == {NOT_MEASURED}


def test_autointerp_failures_are_counted_in_the_report(tmp_path):
    """A backend that left features unanswered: the report says how many, per hook, instead of silently taking
    the means over the rest."""
    from saex.report.collect import Run
    from saex.report.sec_autointerp import failure_notes

    counts = {"considered": 40, "scored": 31, "failed": 9, "failed_explanation": 7, "failed_scoring": 2}
    run = Run(tmp_path)
    run.interpret["openai/top_random"] = {
        "blocks.6.hook_resid_post": {"comparison": {"counts": counts}},
        "blocks.1.hook_resid_post": {"comparison": {"counts": {**counts, "failed": 0}}},
    }
    assert failure_notes(run, "openai/top_random") == [
        "openai/top_random at blocks.6.hook_resid_post: 9 of 40 features got no usable answer from the backend "
        "(7 without an explanation, 2 without a scored simulation) and are left out of every mean here."
    ]
    assert failure_notes(run, "offline/top_random") == []


def test_compare_mean_all_counts_skipped_features_as_zero_and_leaves_failed_ones_out(tmp_path):
    """`saex compare`'s "skipped as 0" mean: features skipped for too few fragments count as 0 (no information),
    features the backend never answered are left out of it and counted on their own."""
    import json

    from saex.report.architectures import collect, markdown

    folder = tmp_path / "interpret" / "offline" / "top_random"
    folder.mkdir(parents=True)
    method = {"method": "topk_k30", "kind": "sae", "considered": 10, "skipped": 2, "failed": 3}
    method["top_random"] = {"mean": 0.5, "ci95": 0.1, "n": 5, "undefined": 0}
    (folder / "comparison.json").write_text(json.dumps({"methods": [method]}))
    (row,) = collect(tmp_path)["autointerp"]
    assert row["failed"] == 3 and row["mean_all"] == 0.5 * 5 / (10 - 3)  # 5 scored + 2 skipped as 0, 3 left out
    assert "| 3 |" in markdown(collect(tmp_path))
