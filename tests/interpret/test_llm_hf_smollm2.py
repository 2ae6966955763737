"""Smoke test of the hf backend on the embedded SmolLM2-135M-Instruct: structure only.

A 135M model is far below the quality range of automated interpretability (autointerp.md §4), so
nothing here looks at score values: only that the real tokenizer (digits split, so "10" is two
tokens) and chat template go through the same code paths as the tiny test model.
"""

import numpy as np
import pytest
import torch

from saex.features.records import ActivationRecord, Explanation
from saex.interpret.llm import LLMExplainer, LLMSimulator, make_backend
from saex.interpret.llm.prompts import simulation_segments
from tests._support import needs_smollm2

pytestmark = [needs_smollm2, pytest.mark.slow]


@pytest.fixture(scope="module")
def hf():
    return make_backend("hf", None, None)


def test_smollm2_simulation_structure(hf):
    assert hf.name == "hf:smollm2-135m" and len(hf.plan[10]) == 2  # "1" then "0"
    tokens = [" The", " cat", " sat", " on", " the", " mat", "."]
    record = ActivationRecord(tokens=tokens, activations=np.array([0, 5.0, 0, 0, 0, 1.0, 0]))
    calls = []
    handle = hf.lm.register_forward_hook(lambda *a: calls.append(1))
    try:
        (pred,) = LLMSimulator(hf).simulate(Explanation(text="the word cat", backend="t"), [record])
    finally:
        handle.remove()
    assert len(calls) == 1 and pred.shape == (7,) and ((pred >= 0) & (pred <= 10)).all()
    segs = simulation_segments("the word cat", tokens[:2])
    rows = hf.slot_probs(segs)
    assert all(abs(r.sum() - 1) < 1e-9 for r in rows)
    # The probe token's read-out equals a separate forward on "...<tab>1".
    ids, tabs = hf._segment_ids(segs)
    one = hf.plan[1][0]
    with torch.no_grad():
        probe = hf._forward_with_probes(ids, tabs)
        ref = hf.lm(input_ids=torch.tensor([ids[: tabs[1] + 1] + [one]])).logits[0, -1]
    torch.testing.assert_close(probe[len(ids) + 1], ref, rtol=1e-4, atol=1e-3)


def test_smollm2_explanation_structure(hf):
    rec = ActivationRecord(tokens=[" I", " like", " cats", " and", " dogs"], activations=np.array([0, 0, 3.0, 0, 1.0]))
    ex = LLMExplainer(hf, max_tokens=20).explain([rec])
    assert ex.backend == "hf:smollm2-135m" and isinstance(ex.text, str)
    assert ex.usage["requests"] == 1 and 0 < ex.usage["completion_tokens"] <= 20
