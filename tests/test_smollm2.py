"""The embedded default end to end: real SmolLM2-135M weights over the real Wikipedia corpus."""

import pytest
import torch

from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model
from saex.stages.harvest import HarvestConfig
from saex.stages.harvest import run as harvest
from saex.store.reader import ActivationStore
from tests._support import needs_smollm2

pytestmark = [needs_smollm2, pytest.mark.slow]


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


def test_hooks_on_the_real_model(smollm2):
    hooked = HookedLM(smollm2.model)
    assert (hooked.n_layers, hooked.d_model, hooked.d_mlp, hooked.family.name) == (30, 576, 1536, "llama")
    ids = smollm2.tokenizer(
        ["When Mary and John went to the store, John gave a drink to"], return_tensors="pt"
    ).input_ids
    names = ["blocks.6.hook_resid_pre", "blocks.6.hook_attn_out", "blocks.6.hook_mlp_out", "blocks.6.hook_resid_post"]
    with hooked.capture(names) as run:
        a = run(ids)
    with torch.no_grad():
        out = smollm2.model(ids, output_hidden_states=True)
    assert torch.equal(a["blocks.6.hook_resid_pre"], out.hidden_states[6])
    assert torch.equal(a["blocks.6.hook_resid_post"], out.hidden_states[7])
    total = a["blocks.6.hook_resid_pre"] + a["blocks.6.hook_attn_out"] + a["blocks.6.hook_mlp_out"]
    torch.testing.assert_close(total, a["blocks.6.hook_resid_post"], rtol=1e-5, atol=1e-3)
    # The model does the task the causal experiments rely on: " Mary" beats " John".
    mary, john = (smollm2.tokenizer(w).input_ids[0] for w in (" Mary", " John"))
    logits = out.logits[0, -1]
    assert logits[mary] - logits[john] > 2


def test_harvest_matches_an_independent_forward(smollm2, tmp_path):
    cfg = HarvestConfig(
        out=str(tmp_path / "acts"),
        model="smollm2-135m",
        corpus="default",
        hooks="blocks.3.hook_resid_post,blocks.3.mlp.hook_post",
        tokens=256,
        heldout_tokens=128,
        dtype="float32",
        batch_size=2,
    )
    store = ActivationStore(harvest(cfg, progress=False))
    assert store.complete and store.n_rows("train") == 256 and store.n_rows("heldout") == 128
    assert store.manifest["packing"]["separator_token"] == "<|endoftext|>"
    assert store.manifest["packing"]["bos_policy"] == "separator"
    tokens = store.tokens("train").long()
    with torch.no_grad():
        hs = smollm2.model(tokens, output_hidden_states=True).hidden_states
    x = store.load_shard("train", 0, "blocks.3.hook_resid_post")
    torch.testing.assert_close(x, hs[4].reshape(-1, 576), rtol=1e-4, atol=1e-3)
    assert store.load_shard("train", 0, "blocks.3.mlp.hook_post").shape == (256, 1536)
    # The tokens are Wikipedia text: they decode to readable English.
    text = smollm2.tokenizer.decode(tokens[0])
    assert sum(c.isalpha() for c in text) > 0.6 * len(text)
