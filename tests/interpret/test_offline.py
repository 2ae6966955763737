"""Bills' discretisation (``records``) and the offline token/bigram explainer and simulator (``offline``),
checked against hand-computed tables and numpy."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from saex.features.records import ActivationRecord, Explanation, discretize, max_activation
from saex.interpret.offline import LABEL, TableExplainer, TableSimulator, token_entropy
from saex.interpret.scoring import pooled_pearson
from tests._support import WORDS


def rec(tokens, acts) -> ActivationRecord:
    if isinstance(tokens, str):
        tokens = tokens.split()
    return ActivationRecord(list(tokens), np.asarray(acts, dtype=np.float64))


# -- records.discretize / max_activation (Bills' normalize_activations / calculate_max_activation) --------
def test_discretize_hand_values():
    a = np.array([-1.0, 0.0, 0.19, 0.2, 1.0, 1.99, 2.0, 3.0])
    # 10·relu(a)/2 = 0, 0, 0.95, 1, 5, 9.95, 10, 15 -> floor, capped at 10
    got = discretize(a, 2.0)
    assert got.tolist() == [0, 0, 0, 1, 5, 9, 10, 10]
    assert got.dtype.kind == "i"
    assert discretize(np.array([0.05, 0.35, 0.7]), 0.7).tolist() == [0, 5, 10]


@pytest.mark.parametrize("max_act", [0.0, -1.0, math.nan, math.inf])
def test_discretize_without_a_positive_finite_max_is_all_zeros(max_act):
    got = discretize(np.array([-2.0, 0.0, 3.0, 7.5]), max_act)
    assert got.tolist() == [0, 0, 0, 0]


def test_max_activation_is_the_largest_relu_over_records():
    assert max_activation([rec("a b", [-3, 0.5]), rec("c", [2.25]), rec([], [])]) == 2.25
    assert max_activation([rec("a b", [-3, -0.5])]) == 0.0
    assert max_activation([]) == 0.0


# -- TableExplainer --------------------------------------------------------------------------------------
HAND = [
    rec("a b c", [0.0, 2.0, 1.1]),  # max 2 -> discretised 0, 10, 5
    rec("b a b", [1.99, -3.0, 0.05]),  # -> 9, 0, 0
    rec("d b", [0.0, 2.0]),
]  # -> 0, 10


def test_explainer_hand_table():
    # unigram sums / counts:  a 0/2, b (10+9+0+10)/4 = 29/4, c 5/1, d 0/1
    #   shrunken Σa/(n+1):    a 0,   b 29/5 = 5.8,          c 2.5, d 0
    # bigrams: (a,b) (10+0)/2 -> 10/3; (b,c) 5/1 -> 2.5; (b,a) 0; (d,b) 10/1 -> 5
    e = TableExplainer(budget=8).explain(HAND)
    assert e.backend == "offline" and e.usage == {}
    assert e.rule == {
        "unigrams": [["b", 5.8], ["c", 2.5]],
        "bigrams": [[["d", "b"], 5.0], [["a", "b"], 3.3333], [["b", "c"], 2.5]],
    }
    assert e.text == "tokens: 'b' (5.8); 'c' (2.5); 'd' then 'b' (5.0); 'a' then 'b' (3.3); 'b' then 'c' (2.5)"
    json.dumps(e.rule)  # JSON-ready


def test_explainer_respects_the_budget_and_keeps_the_largest_values():
    rng = np.random.default_rng(0)
    records = [
        rec([f"w{i}" for i in rng.integers(0, 40, 64)], rng.random(64) * (rng.random(64) < 0.5)) for _ in range(5)
    ]
    # hand table from the definition
    top = max(float(r.activations.max()) for r in records)
    uni: dict = {}
    for r in records:
        for t, a in zip(r.tokens, np.floor(10 * r.activations / top).clip(0, 10)):
            s, n = uni.get(t, (0.0, 0))
            uni[t] = (s + a, n + 1)
    shrunk = sorted(((s / (n + 1), t) for t, (s, n) in uni.items()), key=lambda vt: (-vt[0], repr(vt[1])))
    for budget in (1, 3, 8):
        e = TableExplainer(budget=budget).explain(records)
        assert len(e.rule["unigrams"]) == budget and len(e.rule["bigrams"]) <= budget
        assert [t for t, _ in e.rule["unigrams"]] == [t for _, t in shrunk[:budget]]
        np.testing.assert_allclose([v for _, v in e.rule["unigrams"]], [v for v, _ in shrunk[:budget]], atol=5e-5)
        assert all(v >= 1.0 for _, v in e.rule["unigrams"] + e.rule["bigrams"])
        assert TableExplainer(budget).name == f"offline-table-{budget}"


def test_explainer_min_value_and_empty_table():
    # a token seen once at 1 gets 1/2 < 1: nothing reliable
    e = TableExplainer().explain([rec("x y z", [0.0, 0.0, 0.1]), rec("q", [1.0])])
    assert e.rule["unigrams"] == [["q", 5.0]] and e.rule["bigrams"] == []
    e = TableExplainer().explain([rec("x y", [0.0, -1.0])])
    assert e.rule == {"unigrams": [], "bigrams": []} and e.text == "tokens: (no token fires reliably)"


def test_explainer_is_deterministic_and_order_free():
    rng = random.Random(3)
    records = [
        rec([rng.choice("abcdefg") for _ in range(20)], [rng.choice([0, 0, 1, 2, 3]) for _ in range(20)])
        for _ in range(5)
    ]
    first = TableExplainer(budget=3).explain(records)
    assert TableExplainer(budget=3).explain(records) == first
    assert TableExplainer(budget=3).explain(records[::-1]).rule == first.rule
    # ties (a, b, c all at 10/2) are broken in a fixed order, not by first appearance
    tie = [rec("c b a", [1, 1, 1])]
    assert TableExplainer(budget=2).explain(tie).rule["unigrams"] == [["a", 5.0], ["b", 5.0]]


# -- TableSimulator --------------------------------------------------------------------------------------
def test_simulator_takes_the_larger_of_bigram_and_unigram():
    e = TableExplainer(budget=8).explain(HAND)
    pred = TableSimulator().simulate(e, [rec("a b c b d", [0] * 5), rec("b", [0]), rec([], [])])
    # a: no entry; b after a: max(bigram 3.3333, unigram 5.8) = 5.8; c after b: bigram 2.5 (c has no unigram);
    # b after c: no bigram -> unigram 5.8; d: unigram below 1 -> 0
    np.testing.assert_allclose(pred[0], [0.0, 5.8, 2.5, 5.8, 0.0])
    np.testing.assert_allclose(pred[1], [5.8])  # the first token has no bigram
    assert len(pred[2]) == 0
    # a rule that came back through JSON (scores.jsonl) simulates the same
    e2 = Explanation(e.text, e.backend, json.loads(json.dumps(e.rule)))
    np.testing.assert_array_equal(TableSimulator().simulate(e2, [rec("a b c b d", [0] * 5)])[0], pred[0])


def test_simulator_hand_rule():
    e = Explanation("t", "offline", {"unigrams": [["x", 4.0], ["y", 1.5]], "bigrams": [[["y", "x"], 9.0]]})
    pred = TableSimulator().simulate(e, [rec("x y x z x", [0] * 5)])[0]
    assert pred.tolist() == [4.0, 1.5, 9.0, 0.0, 4.0]


def _river_records(rng: random.Random, n: int, length: int = 64, must: bool = False) -> list[ActivationRecord]:
    """Word fragments; the feature is 2.5 on "river" and slightly negative elsewhere."""
    out = []
    while len(out) < n:
        toks = ["river" if rng.random() < 0.1 else rng.choice(WORDS) for _ in range(length)]
        if must and "river" not in toks:
            continue
        out.append(rec(toks, [2.5 if t == "river" else -0.01 * rng.random() for t in toks]))
    return out


def test_a_one_token_feature_is_predicted_on_held_out_fragments():
    rng = random.Random(0)
    explain = _river_records(rng, 5, must=True)
    held_out = _river_records(rng, 5, must=True) + _river_records(rng, 5)
    e = TableExplainer(budget=8).explain(explain)
    assert e.rule["unigrams"][0][0] == "river"
    assert {t for t, _ in e.rule["unigrams"]} == {"river"}
    assert all(pair[1] == "river" for pair, _ in e.rule["bigrams"])
    pred = TableSimulator().simulate(e, held_out)
    true = [r.activations for r in held_out]
    r = pooled_pearson(true, pred)
    np.testing.assert_allclose(r, np.corrcoef(np.concatenate(true), np.concatenate(pred))[0, 1], rtol=1e-12)
    assert r > 0.95
    # positive predictions exactly on "river"
    for rc, p in zip(held_out, pred):
        assert [t == "river" for t in rc.tokens] == (p > 0).tolist()


# -- token entropy ---------------------------------------------------------------------------------------
def test_token_entropy():
    assert token_entropy([rec("a b a", [1.0, 0.0, 3.0]), rec("a c", [0.5, -1.0])]) == 0.0
    for k in (2, 3, 5):
        toks = [f"t{i}" for i in range(k)] * 4
        records = [rec(toks, [1.0] * len(toks)), rec(["never"] * 3, [0.0] * 3)]
        assert token_entropy(records) == pytest.approx(math.log2(k), abs=1e-12)
    # weighted by count: p = (3/4, 1/4)
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert token_entropy([rec("a a a b c", [1, 2, 3, 1, 0])]) == pytest.approx(h, abs=1e-12)
    assert math.isnan(token_entropy([rec("a b", [0.0, -1.0])]))
    assert math.isnan(token_entropy([]))


def test_label_names_the_score_for_what_it_is():
    assert "lexical predictability" in LABEL and "not an LLM" in LABEL
