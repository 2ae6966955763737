"""Feature search by prompt (paper App. D.3): on an identity dictionary the feature ranking is the sorted
residual; the activation is the one a plain HF forward gives at the chosen position; bad positions refused."""

from __future__ import annotations

import pytest
import torch

from saex.errors import SaexError
from saex.features.search import DAVE, check_position, rank_of, search_prompt
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model
from tests.causal._helpers import identity_dictionary, random_sae

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def lm(tiny_models):
    return load_model(str(tiny_models["llama"]))


def test_identity_dictionary_sorts_the_residual(lm):
    hooked = HookedLM(lm.model)
    prompt = "the king of the north gave the city water"
    s, c, x = search_prompt(
        hooked, lm.tokenizer, HOOK, identity_dictionary(32), prompt, position=-2, top=6, dictionary_name="identity"
    )
    ids = lm.tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        # a plain HF forward: hidden_states[L + 1] is the output of block L
        want = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0, len(ids) - 2]
    torch.testing.assert_close(x, want)
    assert s["position"] == len(ids) - 2 and s["tokens"] == [lm.tokenizer.decode([i]) for i in ids]
    assert s["prompt"] == prompt and s["hook"] == HOOK and s["dictionary"] == "identity"
    order = want.argsort(descending=True)
    assert [r["feature"] for r in s["features"]] == order[:6].tolist()
    assert [r["dim"] for r in s["resid_max"]] == order[:6].tolist()
    assert [r["dim"] for r in s["resid_min"]] == want.argsort()[:6].tolist()
    assert [r["activation"] for r in s["features"]] == pytest.approx(want[order[:6]].tolist())
    assert [r["value"] for r in s["resid_min"]] == pytest.approx(want.sort().values[:6].tolist())
    assert rank_of(c, int(order[3])) == 3


def test_sae_ranking_and_default_prompt(lm):
    hooked = HookedLM(lm.model)
    d = random_sae(32, 40, seed=2)
    s, c, x = search_prompt(hooked, lm.tokenizer, HOOK, d, top=5)
    assert s["prompt"] == DAVE and s["position"] == len(s["tokens"]) - 1
    torch.testing.assert_close(c, d.encode(x[None])[0])
    acts = [r["activation"] for r in s["features"]]
    assert acts == sorted(acts, reverse=True) and acts[0] == pytest.approx(float(c.max()))


def test_position_out_of_range():
    assert check_position(-1, 4) == 3 and check_position(0, 4) == 0
    with pytest.raises(SaexError, match=r"--position 4 is out of range: the prompt has 4 tokens"):
        check_position(4, 4)
    with pytest.raises(SaexError, match="out of range"):
        check_position(-5, 4)
