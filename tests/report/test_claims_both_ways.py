"""Every claim can fail as well as hold (issue 13): for each claim of ``claims.py`` and ``claims_causal.py``, one
hand-made input on which it holds, at least one on which it does not, and where the claim needs a minimum of
data, one on which it is not measured. Then the rules that changed with this issue at their edges: the
perplexity band around the paper's ×1.6, ≥ 5 sparsity levels, ≥ 3 layers, the circuit's rises, and top-K
baselines whose K came from a non-converged SAE."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from saex.report import claims as C
from saex.report.claims_causal import case_study_claims, ioi_claims

HELD, NOT_HELD, NOT_MEASURED = C.HELD, C.NOT_HELD, C.NOT_MEASURED


def st(mean, ci=0.01, n=150):
    return {"mean": mean, "ci95": ci, "n": n}


@dataclass
class Case:
    key: str
    judge: Callable
    """input -> Claim or [Claim]; the claim named ``key`` is the one checked."""
    held: object
    fails: list = field(default_factory=list)
    unmeasured: list = field(default_factory=list)


def verdict(case: Case, x) -> str:
    out = case.judge(x)
    found = {c.key: c for c in (out if isinstance(out, list) else [out])}
    return found[case.key].verdict


# --- inputs ---------------------------------------------------------------------------------------------------


def beats(sae, base, label="layer 0"):
    return {label: {"sae": sae, "baselines": {"pca": base}}}


def declines(margins):
    return {L: {"sae": st(0.3 + m), "baselines": {"ica": st(0.3)}} for L, m in margins.items()}


def sweep(pairs):
    return {"s": [{"l0": l0, "fvu": fvu} for l0, fvu in pairs]}


MONOTONE = [(100, 0.02), (50, 0.05), (20, 0.1), (10, 0.2), (2, 0.5)]


def features(scores):
    return [{"feature": i, "explanation": "x", "score": s} for i, s in enumerate(scores)]


def alive(resid=None, mlp=None):
    return resid or {}, mlp or {}


def curve(alpha, kind, pts, ratio=4.0):
    return {
        "alpha": alpha,
        "kind": kind,
        "ratio": ratio,
        "kl_base": 1.0,
        "points": [{"n_patched": n, "kl": kl, "edit": e} for n, kl, e in pts],
    }


def ioi(
    sae_small=(3, 0.4, 1.0), sae_big_floor=0.2, pca=(10, 0.5, 4.0), dense=(20, 0.3, 3.0), with_pca=True, with_dense=True
):
    """Two α > 0 dictionaries at one R (α = 1e-4 reaches KL 0.05), an α = 0 one and PCA."""
    out = {
        "sae_1e-4": curve(1e-4, "tied_l1", [(0, 1.0, 0), sae_small, (10, 0.05, 2.0)]),
        "sae_1e-3": curve(1e-3, "tied_l1", [(0, 1.0, 0), (5, 0.45, 0.5), (10, sae_big_floor, 1.5)]),
    }
    if with_dense:
        out["sae_0"] = curve(0.0, "tied_l1", [(0, 1.0, 0), dense])
    if with_pca:
        out["pca_rot"] = curve(None, "pca_rot", [(0, 1.0, 0), pca, (30, 0.0, 9.0)], None)
    return out


def feature(labels_counts, decreased, rank=0, fid=7):
    series = [{"label": lab, "other": lab == "other", "counts": cnt} for lab, cnt in labels_counts]
    return {
        "hook": "h",
        "dictionary": "d",
        "feature": fid,
        "rank": rank,
        "histogram": {"edges": [i / 4 for i in range(5)], "series": series, "n": 1, "total": 1, "source": "x"},
        "output_effect": {
            "positions": 1,
            "contexts": 1,
            "increased": [],
            "decreased": [{"token": t, "id": 0, "delta": d} for t, d in decreased],
        },
    }


APOS = [("'", [0, 0, 5, 6]), (".", [20, 9, 1, 0]), ("other", [9, 1, 1, 1])]
OUTLIER = feature([(" the", [5, 0, 0, 1])], [(" and", -0.1)], fid=1)


def node(feature_id, effect, cos=0.5, children=()):
    return {"hook": "g", "feature": feature_id, "effect": effect, "cos": cos, "children": list(children)}


def circuit(drops, rises, cos=0.5, ablated=10):
    """A traced root: children with the given drops, increases with the given (negative) effects."""
    return {
        "hook": "h",
        "feature": 7,
        "effect": None,
        "cos": None,
        "children": [node(i, e, cos) for i, e in enumerate(drops)],
        "increases": [{"hook": "g", "feature": 100 + i, "effect": e, "cos": 0.0} for i, e in enumerate(rises)],
        "ablated": ablated,
        "effect_sum_positive": sum(drops),
        "effect_sum_negative": sum(rises),
    }


def study(circ=None, feats=(OUTLIER,), d_in=100):
    return {"features": list(feats), "circuit": circ}, d_in


# --- every claim, both ways -----------------------------------------------------------------------------------

CASES = [
    Case(
        "fig2_above",
        lambda x: C.sae_beats("fig2", "Fig. 2", "p", "s", x),
        held=beats(st(0.5), st(0.2)),
        fails=[beats(st(0.1), st(0.2))],
        unmeasured=[beats(None, st(0.2))],
    ),
    Case(
        "fig2_ci",
        lambda x: C.sae_beats("fig2", "Fig. 2", "p", "s", x),
        held=beats(st(0.5, 0.05), st(0.2, 0.05)),
        fails=[beats(st(0.25, 0.05), st(0.2, 0.05))],  # above, but the CIs overlap
        unmeasured=[beats(st(0.5, float("nan")), st(0.2))],
    ),
    Case(
        "fig2_declines",
        C.advantage_declines,
        held=declines({0: 0.10, 1: 0.05, 2: 0.0}),
        fails=[declines({0: 0.0, 1: 0.05, 2: 0.10})],
        unmeasured=[declines({0: 0.10, 1: 0.0})],
    ),  # two layers: "declines", but too few to say
    Case(
        "fig9_smaller",
        C.random_below_top,
        held={"l0": {"top_random": st(0.3), "random": st(0.1)}},
        fails=[{"l0": {"top_random": st(0.1), "random": st(0.2)}}],
        unmeasured=[{"l0": {"top_random": st(0.1), "random": None}}],
    ),
    Case(
        "fig8_small",
        C.small_dictionaries,
        held={"l0": {"by_ratio": {0.5: st(0.3), 2.0: st(0.4)}, "baselines": {"pca": st(0.2)}}},
        fails=[{"l0": {"by_ratio": {0.5: st(0.3), 2.0: st(0.4)}, "baselines": {"pca": st(0.35)}}}],
        unmeasured=[{"l0": {"by_ratio": {2.0: st(0.4)}, "baselines": {"pca": st(0.2)}}}],
    ),
    Case(
        "fig8_fvu",
        C.fvu_falls_with_ratio,
        held={"l0": {0.5: 0.4, 1.0: 0.3, 2.0: 0.2}},
        fails=[{"l0": {0.5: 0.4, 1.0: 0.45}}],
        unmeasured=[{"l0": {1.0: 0.4}}],
    ),
    Case(
        "fig6_tradeoff",
        C.smooth_tradeoff,
        held=sweep(MONOTONE),
        fails=[sweep(MONOTONE[:4] + [(15, 0.05)])],  # FVU rises from L0 15 to 20
        unmeasured=[sweep(MONOTONE[:4])],
    ),  # four sparsity levels: too few
    Case(
        "fig16_overcomplete",
        lambda x: C.alive_claims(*x),
        held=alive({"h": [{"alpha": 1e-3, "ratio": 4.0, "alive_fraction": 0.97}]}),
        fails=[alive({"h": [{"alpha": 1e-3, "ratio": 4.0, "alive_fraction": 0.9}]})],
        unmeasured=[alive({"h": [{"alpha": 1e-3, "ratio": 2.0, "alive_fraction": 1.0}]})],
    ),
    Case(
        "fig16_mlp_dead",
        lambda x: C.alive_claims(*x),
        held=alive(mlp={"m": [{"alpha": 0.0, "ratio": 2.0, "alive_fraction": 0.7}]}),
        fails=[alive(mlp={"m": [{"alpha": 0.0, "ratio": 2.0, "alive_fraction": 0.95}]})],
        unmeasured=[alive(mlp={"m": [{"alpha": 1e-3, "ratio": 2.0, "alive_fraction": 0.7}]})],
    ),
    Case(
        "fig16_falls",
        lambda x: C.alive_claims(*x),
        held=alive(
            {
                "h": [
                    {"alpha": 0.0, "ratio": 2.0, "alive_fraction": 0.9},
                    {"alpha": 1e-2, "ratio": 2.0, "alive_fraction": 0.5},
                ]
            }
        ),
        fails=[
            alive(
                {
                    "h": [
                        {"alpha": 0.0, "ratio": 2.0, "alive_fraction": 0.5},
                        {"alpha": 1e-2, "ratio": 2.0, "alive_fraction": 0.9},
                    ]
                }
            )
        ],
        unmeasured=[alive({"h": [{"alpha": 0.0, "ratio": 2.0, "alive_fraction": 0.9}]})],
    ),
    Case(
        "table2_skew",
        C.table2_claims,
        held={"skew": {"r": 0.5, "n": 100}},
        fails=[{"skew": {"r": -0.3, "n": 500}}, {"skew": {"r": 0.05, "n": 20}}],
        unmeasured=[{"skew": {"r": None, "n": 0}}, {"skew": {"r": 0.5, "n": 3}}],
    ),
    Case(
        "table2_kurtosis",
        C.table2_claims,
        held={"kurtosis": {"r": 0.3, "n": 200}},
        fails=[{"kurtosis": {"r": 0.05, "n": 20}}],
        unmeasured=[{}],
    ),
    Case(
        "table1_positive",
        C.table1_claim,
        held=features([0.33, -0.11, 0.55, 0.57, 0.19]),
        fails=[features([0.3, -0.1, -0.2, 0.5, -0.1])],
        unmeasured=[features([0.3, None, 0.2, 0.5, 0.1])],
    ),
    Case(
        "ppl_spliced",
        C.perplexity_claim,
        held={"h": {"ppl_clean": 25.0, "ppl_spliced": 40.0}},
        fails=[
            {"h": {"ppl_clean": 25.0, "ppl_spliced": 26.0}},  # ×1.04: far cheaper than the paper's splice
            {"h": {"ppl_clean": 25.0, "ppl_spliced": 24.0}},  # the splice helps
            {"h": {"ppl_clean": 25.0, "ppl_spliced": 100.0}},
        ],  # ×4: far costlier
        unmeasured=[{"h": {"ppl_clean": 25.0, "ppl_spliced": None}}, {}],
    ),
    Case("fig3_features", ioi_claims, held=ioi(), fails=[ioi(pca=(2, 0.1, 0.2))], unmeasured=[ioi(with_pca=False)]),
    Case("fig3_edit", ioi_claims, held=ioi(), fails=[ioi(pca=(10, 0.1, 0.2))], unmeasured=[ioi(with_pca=False)]),
    Case("fig3_alpha0", ioi_claims, held=ioi(), fails=[ioi(dense=(2, 0.3, 0.2))], unmeasured=[ioi(with_dense=False)]),
    Case(
        "fig3_floor",
        ioi_claims,
        held=ioi(),
        fails=[ioi(sae_big_floor=0.01)],
        unmeasured=[{"sae_1e-4": ioi()["sae_1e-4"]}],
    ),
    Case(
        "fig4_apostrophe",
        lambda x: case_study_claims(*x),
        held=study(feats=[OUTLIER, feature(APOS, [("Ġs", -0.9)], rank=2)]),
        fails=[study()],
        unmeasured=[study(feats=[])],
    ),
    Case(
        "fig4_s",
        lambda x: case_study_claims(*x),
        held=study(feats=[feature(APOS, [("Ġs", -0.9), ("t", -0.2)])]),
        fails=[study(feats=[feature(APOS, [("t", -0.9), ("Ġs", -0.2)])])],
        unmeasured=[study(feats=[feature(APOS, [])]), study()],
    ),
    Case(
        "fig5_effects",
        lambda x: case_study_claims(*x),
        held=study(circuit([0.5, 0.2], [-0.3])),
        fails=[
            study(circuit([0.2, 0.1], [-0.5])),  # one upstream feature raises the target more than any lowers
            study(circuit([], [-0.1])),  # nothing lowers it
            study(circuit([], [])),
        ],  # nothing changes it
        unmeasured=[
            study(None),
            study(
                {
                    "hook": "h",
                    "feature": 7,
                    "effect": None,
                    "cos": None,  # an older tracer's circuit
                    "children": [node(1, 0.5)],
                }
            ),
        ],
    ),
    Case(
        "fig5_cosine",
        lambda x: case_study_claims(*x),
        held=study(circuit([0.5, 0.2], [], cos=0.4), d_in=100),  # 3/√100 = 0.3
        fails=[study(circuit([0.5, 0.2], [], cos=0.4), d_in=4)],  # 3/√4 = 1.5
        unmeasured=[study(circuit([], [-0.1])), study(circuit([0.5], []), d_in=None)],
    ),
]


def test_every_claim_is_covered():
    keys = {c.key for c in CASES}
    made = {c.key for c in C.sae_beats("fig2", "Fig. 2", "p", "s", {})}
    made |= {
        c.key for c in C.alive_claims({}, {}) + C.table2_claims({}) + ioi_claims({}) + case_study_claims(None, None)
    }
    made |= {
        f({}).key
        for f in (
            C.advantage_declines,
            C.random_below_top,
            C.small_dictionaries,
            C.fvu_falls_with_ratio,
            C.smooth_tradeoff,
            C.perplexity_claim,
        )
    }
    made.add(C.table1_claim([]).key)
    assert made == keys


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
def test_holds_on_one_input_and_fails_on_another(case):
    assert verdict(case, case.held) == HELD
    assert case.fails
    for x in case.fails:
        assert verdict(case, x) == NOT_HELD, x
    for x in case.unmeasured:
        assert verdict(case, x) == NOT_MEASURED, x


# --- the changed rules at their edges -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spliced, where, want",
    [
        (25 * 1.6**0.5 * 0.999, "below", NOT_HELD),
        (25 * 1.6**0.5 * 1.001, "within", HELD),
        (25 * 1.6**1.5 * 0.999, "within", HELD),
        (25 * 1.6**1.5 * 1.001, "above", NOT_HELD),
    ],
)
def test_perplexity_band_edges(spliced, where, want):
    c = C.perplexity_claim({"blocks.2.hook_resid_post": {"ppl_clean": 25.0, "ppl_spliced": spliced}})
    v = c.numbers["blocks.2.hook_resid_post"]
    assert c.verdict == want and v["position"] == where
    assert v["band"] == pytest.approx([1.6**0.5, 1.6**1.5]) and "[1.26, 2.02]" in c.test
    if where == "below":
        assert "costs much less than the paper's" in c.detail and "too dense" in c.detail


def test_perplexity_judges_every_hook():
    rows = {"a": {"ppl_clean": 25.0, "ppl_spliced": 40.0}, "b": {"ppl_clean": 20.0, "ppl_spliced": 21.0}}
    c = C.perplexity_claim(rows)
    assert c.verdict == NOT_HELD and c.numbers["a"]["position"] == "within" and c.numbers["b"]["position"] == "below"


def test_tradeoff_judges_only_sweeps_with_five_levels():
    c = C.smooth_tradeoff(
        {
            "short": [{"l0": l0, "fvu": f} for l0, f in [(1, 0.1), (2, 0.5)]],  # not monotone
            "long": [{"l0": l0, "fvu": f} for l0, f in MONOTONE],
        }
    )
    assert c.verdict == HELD and c.numbers["too_few_levels"] == {"short": 2}
    assert "needs ≥ 5 sparsity levels" in c.detail and "short: have 2" in c.detail
    c = C.smooth_tradeoff(sweep(MONOTONE[:4]))
    assert c.verdict == NOT_MEASURED and "needs ≥ 5 sparsity levels" in c.detail and "have 4" in c.detail


def test_decline_needs_three_layers():
    c = C.advantage_declines(declines({0: 0.10, 5: 0.0}))
    assert c.verdict == NOT_MEASURED and "needs ≥ 3" in c.detail and "have 2" in c.detail


def test_circuit_claim_reads_the_strongest_of_each_sign():
    c = {x.key: x for x in case_study_claims(*study(circuit([0.5, 0.2], [-0.3, -0.1])))}["fig5_effects"]
    assert c.numbers["strongest_drop"] == 0.5 and c.numbers["strongest_rise"] == pytest.approx(0.3)
    assert c.numbers["ablated"] == 10 and "10 upstream features ablated" in c.detail
    # equal strength is no tree of causes
    c = {x.key: x for x in case_study_claims(*study(circuit([0.3], [-0.3])))}["fig5_effects"]
    assert c.verdict == NOT_HELD


# --- top-K baselines whose K came from a non-converged SAE ----------------------------------------------------

TOPK = {
    "layer 0": {"sae": st(0.5), "baselines": {"pca": st(0.2), "pca_topk": st(0.3), "ica_topk": st(0.1)}},
    "layer 1": {"sae": st(0.5), "baselines": {"pca": st(0.2), "pca_topk": st(0.3), "ica_topk": st(0.1)}},
}
BAD = {"dictionary": "tied_l1_r2_a0.00086", "converged": False, "reasons": ["L0 still falling: 90 → 60"]}
GOOD = {"dictionary": "tied_l1_r2_a0.00086", "converged": True, "reasons": []}
UNCHECKED = {"dictionary": "tied_l1_r2_a0.00086", "converged": None, "reasons": ["not checked"]}


def fig18(k_source):
    return {c.key: c for c in C.sae_beats("fig18", "Fig. 18", "p", "s", TOPK, ("pca_topk", "ica_topk"), k_source)}


@pytest.mark.parametrize(
    "k_source", [None, {}, {"layer 0": GOOD, "layer 1": GOOD}, {"layer 0": UNCHECKED, "layer 1": None}]
)
def test_topk_judged_when_k_source_converged_or_unrecorded(k_source):
    c = fig18(k_source)
    assert c["fig18_above"].verdict == HELD and "topk_left_out" not in c["fig18_above"].numbers


def test_topk_not_measured_when_k_source_not_converged():
    c = fig18({"layer 0": BAD, "layer 1": BAD})
    assert c["fig18_above"].verdict == NOT_MEASURED and c["fig18_ci"].verdict == NOT_MEASURED
    assert "flagged not converged" in c["fig18_above"].detail and "L0 still falling" in c["fig18_above"].detail
    assert set(c["fig18_above"].numbers["topk_left_out"]) == {"layer 0", "layer 1"}
    # one layer flagged: the other is still judged, and the flagged one is named
    c = fig18({"layer 0": BAD, "layer 1": GOOD})
    assert c["fig18_above"].verdict == HELD and "1 of 1 layers" in c["fig18_above"].detail
    assert "layer 0: top-K baselines not compared" in c["fig18_above"].detail
    # Fig. 2's baselines hold no top-K: nothing is left out and nothing is said
    c = C.sae_beats("fig2", "Fig. 2", "p", "s", TOPK, ("pca",), {"layer 0": BAD})
    assert c[0].verdict == HELD and "not compared" not in c[0].detail


def test_small_dictionaries_drop_topk_from_non_converged_k_source():
    layers = {"layer 0": {"by_ratio": {0.5: st(0.3)}, "baselines": {"pca": st(0.2), "pca_topk": st(0.4)}}}
    assert C.small_dictionaries(layers).verdict == NOT_HELD
    assert C.small_dictionaries(layers, {"layer 0": GOOD}).verdict == NOT_HELD
    c = C.small_dictionaries(layers, {"layer 0": BAD})
    assert c.verdict == HELD and "top-K baselines not compared" in c.detail


def test_k_source_read_from_the_topk_baselines(tmp_path):
    """saex baselines records, in each top-K baseline's metadata, the --k-from folder and that dictionary's
    convergence verdict at the time; the report reads it from there."""
    from saex.report.collect import Run
    from saex.report.k_source import k_source_convergence

    hook = "blocks.1.hook_resid_post"
    run = Run(tmp_path)
    assert k_source_convergence(run, hook) is None  # no baselines
    folder = tmp_path / "baselines" / hook / "pca_topk"
    folder.mkdir(parents=True)

    def meta(**m):
        (folder / "cfg.json").write_text(json.dumps({"metadata": {"baseline": "pca_topk", **m}}))

    meta(k=5)
    assert k_source_convergence(run, hook) is None  # K given by hand
    src = "/elsewhere/dicts/" + hook + "/tied_l1_r2_a0.00086"
    meta(k=5, k_from=src, k_from_convergence=None)  # a dictionary trained before the check existed
    assert k_source_convergence(run, hook) == {"dictionary": "tied_l1_r2_a0.00086", "converged": None, "reasons": []}
    meta(k=5, k_from=src, k_from_convergence={"converged": False, "reasons": ["loss still falling"]})
    assert k_source_convergence(run, hook) == {
        "dictionary": "tied_l1_r2_a0.00086",
        "converged": False,
        "reasons": ["loss still falling"],
    }
    meta(k=5, k_from=src, k_from_convergence={"converged": True, "reasons": []})
    assert k_source_convergence(run, hook) == {"dictionary": "tied_l1_r2_a0.00086", "converged": True, "reasons": []}
