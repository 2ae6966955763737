"""The in-process transformers backend on a tiny, randomly initialised llama built here.

Random weights say nothing about interpretability; these tests check the mechanics: true
probabilities over "0".."10" at every slot (rows sum to 1, EVs in [0, 10]), exactly one forward pass per
record, the probe-token read-out of a two-token "10" matching separate forward passes, and generation
feeding the explainer and detector.
"""

import numpy as np
import pytest
import torch

from saex.features.records import ActivationRecord, Explanation
from saex.interpret.llm import LLMDetector, LLMExplainer, LLMSimulator
from saex.interpret.llm.hf_backend import HFBackend
from saex.interpret.llm.prompts import simulation_segments
from tests.interpret._hf_lm import tiny_lm


def records(n=3, length=9):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        toks = [" " + w for w in rng.choice(["the", "cat", "sat", "mat", "dog"], length)] + ["\t"]
        out.append(ActivationRecord(tokens=toks, activations=rng.random(length + 1)))
    return out


@pytest.fixture(params=[True, False], ids=["ten-one-token", "ten-two-tokens"])
def hf(request):
    return HFBackend("tiny", loaded=tiny_lm(ten_is_one_token=request.param))


def test_true_probabilities_in_one_forward_per_record(hf):
    calls = []
    handle = hf.lm.register_forward_hook(lambda *a: calls.append(1))
    try:
        sim = LLMSimulator(hf)
        assert sim.resolved_mode() == "echo"
        recs = records()
        pred = sim.simulate(Explanation(text="the word cat", backend="t"), recs)
        rows = hf.slot_probs(simulation_segments("the word cat", recs[0].tokens))
    finally:
        handle.remove()
    assert len(calls) == len(recs) + 1  # one forward per record, plus the direct call
    assert [p.shape for p in pred] == [(len(r.tokens),) for r in recs]
    assert all(((p >= 0) & (p <= 10)).all() for p in pred)
    assert len(rows) == len(recs[0].tokens)
    for row in rows:
        assert row.shape == (11,) and (row >= 0).all()
        np.testing.assert_allclose(row.sum(), 1.0, atol=1e-9)
    np.testing.assert_allclose(pred[0], np.stack(rows) @ np.arange(11), atol=1e-9)
    assert hf.stats["misaligned_slots"] == 0 and hf.stats["fallbacks"] == 0


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_two_token_ten_matches_separate_forward_passes(family):
    hf = HFBackend("tiny", loaded=tiny_lm(ten_is_one_token=False, family=family))
    assert hf.plan[10] == [hf.plan[1][0], hf.plan[0][0]] and hf._prefixes == [hf.plan[1][0]]
    segs = simulation_segments("the word cat", [" cat", " sat"])
    rows = hf.slot_probs(segs)
    ids, tabs = hf._segment_ids(segs)
    one, zero = hf.plan[1][0], hf.plan[0][0]
    digits = [hf.plan[v][0] for v in range(10)]
    assert len(ids) > 100  # far beyond gemma3's 8-token window: its sliding layer must get its own mask
    with torch.no_grad():
        for row, tab in zip(rows, tabs):
            p_first = torch.softmax(hf.lm(input_ids=torch.tensor([ids[: tab + 1]])).logits[0, -1].double(), -1)
            p_after_one = torch.softmax(
                hf.lm(input_ids=torch.tensor([ids[: tab + 1] + [one]])).logits[0, -1].double(), -1
            )
            raw = np.array([float(p_first[d]) for d in digits] + [0.0])
            raw[1] = float(p_first[one] * (1 - p_after_one[digits].sum()))
            raw[10] = float(p_first[one] * p_after_one[zero])
            np.testing.assert_allclose(row, raw / raw.sum(), rtol=1e-4, atol=1e-7)


def test_generation_feeds_explainer_and_detector(hf):
    ex = LLMExplainer(hf, max_tokens=8).explain(records(2))
    assert ex.backend == "hf:tiny" and ex.usage["requests"] == 1
    assert 0 < ex.usage["completion_tokens"] <= 8
    det = LLMDetector(hf, n_per_prompt=2)
    scores = det.detect(Explanation(text="cats", backend="t"), records(3))
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    # A random model rarely writes a list of 0/1: every miss is counted and scored 0, never a crash.
    u = det.last_usage
    assert u.get("malformed", 0) == u.get("failures", 0) and scores.count(0.0) >= u.get("fallbacks", 0)


def test_greedy_generation_reports_consistent_top_logprobs(hf):
    result = hf.chat(
        [{"role": "user", "content": "the cat sat on the mat"}], max_tokens=6, top_logprobs=5, parse=lambda r: r
    )
    assert "".join(t for t, _ in result.pieces) == result.text and len(result.pieces) <= 6
    for token, top in result.pieces:
        assert 0 < len(top) <= 5 and all(lp <= 0 for lp in top.values())
        assert max(top, key=top.get) == token  # greedy: the emitted token is the most likely one
