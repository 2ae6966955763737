"""Output effect of the less-than-rank-one ablation (paper §5.2, Fig. 4 right).

Known answers: a feature planted along one token's unembedding direction at the last block's output lowers
that token most; the whole Δ log-prob vector equals an independent recomputation (each context alone, a
full HF forward with the ablated activation put in by a hook written here, our own log-softmax) for
residual and mid-block hook points, standard and signed dictionaries, several families, with batching and
padding. ``Segment`` itself is checked against the same kind of naive splice on a modified activation.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saex.causal.ablation import Segment, output_effect
from saex.dictionaries.sae import SAE
from saex.errors import SaexError
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model
from tests.causal._helpers import module_activation, pinv_dictionary, random_sae

CONTEXTS = [[7, 12, 30, 9, 44, 21], [5, 6, 7, 8, 9, 10, 11, 12, 13], [40, 41, 8, 50], [33, 17, 25, 9, 9, 30, 12]]


def _splice_forward(hooked, hook, ids_1T, x_1TD, end=None):
    """Full forward with the activation replaced at ``hook`` by a hook written here: logits, or the
    activation at ``end``."""
    point = hooked.resolve(hook)
    module = hooked.model.get_submodule(point.module)
    if point.capture == "input":
        h = module.register_forward_pre_hook(lambda m, a, kw: ((x_1TD, *a[1:]), kw), with_kwargs=True)
    else:
        h = module.register_forward_hook(lambda m, a, o: (x_1TD, *o[1:]) if isinstance(o, tuple) else x_1TD)
    try:
        if end is None:
            with torch.no_grad():
                return hooked.model(input_ids=ids_1T, use_cache=False).logits[0].float()
        got = {}
        p = hooked.resolve(end)
        mod = hooked.model.get_submodule(p.module)

        def keep(x):
            got.setdefault("x", x.clone())

        if p.capture == "input":
            g = mod.register_forward_pre_hook(lambda m, a, kw: keep(a[0]), with_kwargs=True)
        else:
            g = mod.register_forward_hook(lambda m, a, o: keep(o[0] if isinstance(o, tuple) else o))
        try:
            with torch.no_grad():
                hooked.model(input_ids=ids_1T, use_cache=False)
        finally:
            g.remove()
        return got["x"][0]
    finally:
        h.remove()


def _reference(hooked, hook, d, k, contexts):
    total, n = None, 0
    f = d.W_dec_FD[k]
    for ctx in contexts:
        ids = torch.tensor([ctx])
        x = module_activation(hooked, hook, ids)
        with torch.no_grad():
            c = d.encode(x)[0, :, k]
        act = c != 0
        if not act.any():
            continue
        clean = _splice_forward(hooked, hook, ids, x)
        abl = _splice_forward(hooked, hook, ids, x - c[None, :, None] * f)
        delta = (F.log_softmax(abl.double(), -1) - F.log_softmax(clean.double(), -1))[act].sum(0)
        total = delta if total is None else total + delta
        n += int(act.sum())
    return total / n, n


@pytest.mark.parametrize(
    "family, hook, kind",
    [
        ("llama", "blocks.1.hook_resid_post", "standard"),
        ("gpt2", "blocks.1.mlp.hook_post", "linear"),
        ("gemma3", "blocks.0.hook_resid_pre", "standard"),
        ("gpt_neox", "blocks.2.hook_resid_post", "linear"),
    ],
)
def test_equals_independent_log_softmax_difference(tiny_models, family, hook, kind):
    hooked = HookedLM(load_model(str(tiny_models[family])).model)
    width = hooked.resolve(hook).width
    d = random_sae(width, 24, seed=3) if kind == "standard" else pinv_dictionary(width, 12, seed=4)
    # a standard feature that is active at some positions but not all; a signed one is active everywhere
    with torch.no_grad():
        x = torch.cat([module_activation(hooked, hook, torch.tensor([c]))[0] for c in CONTEXTS])
        frac = (d.encode(x) != 0).float().mean(0)
    k = int(((frac - 0.5).abs()).argmin())
    assert 0 < frac[k] < 1 or kind == "linear"
    want, n = _reference(hooked, hook, d, k, CONTEXTS)
    V = hooked.model.config.vocab_size
    got = output_effect(hooked, hook, d, k, CONTEXTS, decode=lambda i: f"t{i}", top=V, batch=3)
    assert got["positions"] == n and got["contexts"] == sum(
        bool((d.encode(module_activation(hooked, hook, torch.tensor([c])))[0, :, k] != 0).any()) for c in CONTEXTS
    )
    vec = torch.zeros(V, dtype=torch.float64)
    for r in got["decreased"]:
        vec[r["id"]] = r["delta"]
    torch.testing.assert_close(vec, want, rtol=1e-4, atol=2e-5)
    assert [r["delta"] for r in got["decreased"]] == sorted(r["delta"] for r in got["decreased"])
    assert [r["delta"] for r in got["increased"]] == sorted((r["delta"] for r in got["increased"]), reverse=True)
    assert got["increased"][0]["delta"] == pytest.approx(float(want.max()), abs=2e-5)
    assert got["decreased"][0]["token"] == f"t{got['decreased'][0]['id']}"


def test_planted_feature_lowers_its_token(tiny_models):
    hooked = HookedLM(load_model(str(tiny_models["llama"])).model)
    hook = "blocks.3.hook_resid_post"  # the last block's output: the final norm and head come next
    W_U = hooked.model.get_output_embeddings().weight.detach()
    t = 23
    f = W_U[t] / W_U[t].norm()
    D = W_U.shape[1]
    # one feature along token t's unembedding, always on with code 20 (a zero encoder column, bias 20)
    W_dec = torch.stack([f, torch.randn(D)])
    d = SAE(torch.zeros(D, 2), W_dec, torch.tensor([20.0, -1e4]), torch.zeros(D), "standard")
    got = output_effect(hooked, hook, d, 0, CONTEXTS[:2], top=5)
    assert got["decreased"][0]["id"] == t and got["decreased"][0]["delta"] < got["decreased"][1]["delta"] < 0
    assert got["positions"] == len(CONTEXTS[0]) + len(CONTEXTS[1]) and got["contexts"] == 2
    # a feature that never fires has no effect to report
    none = output_effect(hooked, hook, d, 1, CONTEXTS[:2])
    assert none == {"positions": 0, "contexts": 0, "decreased": [], "increased": []}
    with pytest.raises(SaexError, match="feature 2 is out of range"):
        output_effect(hooked, hook, d, 2, CONTEXTS[:1])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize(
    "start, end",
    [
        ("blocks.0.hook_resid_post", "blocks.2.hook_resid_post"),
        ("blocks.1.hook_resid_pre", "blocks.1.mlp.hook_post"),
        ("blocks.0.mlp.hook_post", "blocks.2.hook_resid_pre"),
        ("blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"),
    ],
)
def test_segment_equals_naive_splice(tiny_models, family, start, end):
    hooked = HookedLM(load_model(str(tiny_models[family])).model)
    ids = torch.tensor([CONTEXTS[0], CONTEXTS[3][:6]])
    seg = Segment(hooked, start, ids, end)
    g = torch.Generator().manual_seed(0)
    x_BNTD = seg.x_start[None] + torch.randn((2, *seg.x_start.shape), generator=g)
    with torch.no_grad():
        got = seg(x_BNTD)
    for b in range(2):
        for n in range(2):
            want = _splice_forward(hooked, start, ids[n : n + 1], x_BNTD[b, n : n + 1], end=end)
            torch.testing.assert_close(got[b, n], want.float(), rtol=1e-4, atol=1e-5)
    with pytest.raises(SaexError, match="is not before"):
        Segment(hooked, end, ids, start)


def test_a_dictionary_that_normalises_its_inputs_ablates_in_the_model_units(tiny_models):
    """An OpenAI-style SAE (layer-normalised inputs) writes c·σ·f into the activation: the ablated activation is
    x − (decode(c, x) − decode(c without k, x)), which the reference computes here from ``decode`` itself."""
    hooked = HookedLM(load_model(str(tiny_models["llama"])).model)
    hook = "blocks.1.hook_resid_post"
    base = random_sae(hooked.resolve(hook).width, 24, seed=5)
    d = SAE(base.W_enc_DF, base.W_dec_FD, base.b_enc_F, base.b_dec_D, apply_b_dec_to_input=True, normalize="layer_norm")
    with torch.no_grad():
        x = torch.cat([module_activation(hooked, hook, torch.tensor([c]))[0] for c in CONTEXTS])
        frac = (d.encode(x) != 0).float().mean(0)
    k = int(((frac - 0.5).abs()).argmin())
    total, n = None, 0
    for ctx in CONTEXTS:
        ids = torch.tensor([ctx])
        x = module_activation(hooked, hook, ids)
        with torch.no_grad():
            c = d.encode(x)
            c0 = c.clone()
            c0[..., k] = 0
            x_abl = x - (d.decode(c, x) - d.decode(c0, x))
        act = c[0, :, k] != 0
        if not act.any():
            continue
        clean, abl = _splice_forward(hooked, hook, ids, x), _splice_forward(hooked, hook, ids, x_abl)
        delta = (F.log_softmax(abl.double(), -1) - F.log_softmax(clean.double(), -1))[act].sum(0)
        total = delta if total is None else total + delta
        n += int(act.sum())
    assert total is not None
    want = total / n
    V = hooked.model.config.vocab_size
    got = output_effect(hooked, hook, d, k, CONTEXTS, top=V, batch=3)
    vec = torch.zeros(V, dtype=torch.float64)
    for r in got["decreased"]:
        vec[r["id"]] = r["delta"]
    assert got["positions"] == n
    torch.testing.assert_close(vec, want, rtol=1e-4, atol=2e-5)
