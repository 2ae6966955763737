"""``saex steer`` and ``saex.causal.steering`` on the tiny llama: a planted feature whose decoder direction is a
token's unembedding raises that token when added; identities that must hold (clamping a feature to the code it
already has, or ablating one that never fires, changes nothing; without the error term the model runs on the
reconstruction); one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from saex.causal.steering import Edit, Steering, steer
from saex.dictionaries import SAE
from saex.errors import SaexError
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model
from tests._cli import run_cli

PROMPT = "mary went to the store and john"


@pytest.fixture(scope="module")
def lm(tiny_llama):
    return load_model(str(tiny_llama))


def _planted(lm, token: int, hook_layer: int = 3, n: int = 6, seed: int = 0) -> SAE:
    """Feature 0 writes along the unembedding of ``token``; features 1.. are random unit directions; feature n-1
    never fires (bias -1e4)."""
    W_U = lm.model.get_output_embeddings().weight.detach()
    D = W_U.shape[1]
    W_dec = torch.randn(n, D, generator=torch.Generator().manual_seed(seed))
    W_dec[0] = W_U[token]
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
    b_enc = torch.zeros(n)
    b_enc[-1] = -1e4
    meta = {"hook_name": f"blocks.{hook_layer}.hook_resid_post"}
    return SAE(W_dec.T.clone(), W_dec, b_enc, torch.zeros(D), metadata=meta)


def _token(lm) -> int:
    return lm.tokenizer.convert_tokens_to_ids("river")


def test_adding_a_planted_feature_raises_its_token(lm):
    t = _token(lm)
    d = _planted(lm, t)
    r = steer(lm.model, lm.tokenizer, d, "blocks.3.hook_resid_post", PROMPT, [Edit(0, "add", 40.0)], max_new_tokens=5)
    delta = r.logp_steered_V - r.logp_clean_V
    # (the tiny model's logits are small: its unembedding has std 0.02)
    assert int(delta.argmax()) == t and float(delta[t]) > float(delta.topk(2).values[1]) + 0.1
    assert int(r.logp_steered_V.argmax()) == t != int(r.logp_clean_V.argmax())  # now the most likely next token
    assert r.steered.split()[0] == "river" and r.clean.split()[0] != "river"
    changes = r.top_changes(3, lambda i: lm.tokenizer.decode([i]))
    assert changes["up"][0]["id"] == t and changes["up"][0]["delta_logp"] == pytest.approx(float(delta[t]))


def test_identities(lm):
    d = _planted(lm, _token(lm))
    hook = "blocks.3.hook_resid_post"
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    with HookedLM(lm.model).capture([hook]) as run:
        x = run(ids)[hook]
    # ablating a feature that never fires, with the error term kept, is the identity (up to float rounding)
    fn = Steering(d, [Edit(d.d_dict - 1, "ablate")], start=0)
    assert torch.allclose(fn(x), x, atol=1e-6)
    # clamping a feature to the code it has at one position changes only the other positions
    c = d.encode(x)[0]
    f = next(f for f in range(1, d.d_dict - 1) if c[:, f].unique().numel() > 1)
    pos = int(c[:, f].argmax())
    y = Steering(d, [Edit(f, "clamp", float(c[pos, f]))], start=0)(x)
    assert torch.allclose(y[0, pos], x[0, pos], atol=1e-6) and not torch.allclose(y, x, atol=1e-6)
    # add is code + s along W_dec[f]
    y = Steering(d, [Edit(2, "add", 3.0)], start=0)(x)
    assert torch.allclose(y, x + 3.0 * d.W_dec_FD[2], atol=1e-5)
    # from position 2 on only; positions count across calls (a cached generation sends one at a time)
    fn = Steering(d, [Edit(2, "add", 3.0)], start=2)
    y = fn(x)
    assert torch.equal(y[:, :2], x[:, :2]) and torch.allclose(y[:, 2:], x[:, 2:] + 3.0 * d.W_dec_FD[2], atol=1e-5)
    fn.reset()
    one = [fn(x[:, t : t + 1]) for t in range(x.shape[1])]
    assert torch.allclose(torch.cat(one, 1), y, atol=1e-6)
    # without the error term the model runs on the reconstruction
    r = steer(
        lm.model, lm.tokenizer, d, hook, PROMPT, [Edit(d.d_dict - 1, "ablate")], keep_error=False, max_new_tokens=3
    )
    hooked = HookedLM(lm.model)
    with hooked.splice(hook, lambda a: d(a)):
        logp = F.log_softmax(lm.model(input_ids=ids).logits[0, -1].float(), -1)
    assert torch.allclose(r.logp_steered_V, logp, atol=1e-5)
    # with the error term kept and nothing changed, the generation is the model's own
    r = steer(lm.model, lm.tokenizer, d, hook, PROMPT, [Edit(d.d_dict - 1, "ablate")], max_new_tokens=6)
    assert r.steered == r.clean and torch.allclose(r.logp_steered_V, r.logp_clean_V, atol=1e-5)


def test_seeded_sampling_is_repeatable(lm):
    d = _planted(lm, _token(lm))
    kw = dict(max_new_tokens=8, temperature=1.5, seed=3)
    a = steer(lm.model, lm.tokenizer, d, "blocks.3.hook_resid_post", PROMPT, [Edit(d.d_dict - 1, "ablate")], **kw)
    b = steer(lm.model, lm.tokenizer, d, "blocks.3.hook_resid_post", PROMPT, [Edit(d.d_dict - 1, "ablate")], **kw)
    assert a.clean == b.clean == a.steered == b.steered  # same stream, and the edit changes nothing


def test_edit_parsing():
    assert Edit.parse("12:add:8") == Edit(12, "add", 8.0)
    assert Edit.parse(" 3:clamp:-2.5e0 ") == Edit(3, "clamp", -2.5)
    assert Edit.parse("7:ablate") == Edit(7, "ablate", 0.0)
    for bad in ("x:add:1", "1:add", "1:ablate:3", "1:scale:2", "1:add:nan", "1:clamp:inf", "-1:add:2"):
        with pytest.raises(SaexError, match="steering edit"):
            Edit.parse(bad)


def test_cli(lm, tiny_llama, tmp_path):
    t = _token(lm)
    folder = _planted(lm, t).save(tmp_path / "planted")
    base = ("steer", folder, "--model", tiny_llama, "--prompt", PROMPT, "--device", "cpu")
    rc, out, err = run_cli(
        *base,
        "--edits",
        "0:add:40,1:ablate",
        "--max-new-tokens",
        4,
        "--top",
        3,
    )
    assert rc == 0, err
    assert "unsteered" in out and "| steered" in out and "0 add 40; 1 ablate" in out and "'river'" in out
    rc, out, err = run_cli(
        *base,
        "--edits",
        "0:add:40",
        "--json",
        "--max-new-tokens",
        4,
    )
    assert rc == 0, err
    r = json.loads(out)
    assert (
        r["next_token"]["up"][0]["id"] == t
        and r["steered"].split()[0] == "river"
        and r["hook"] == "blocks.3.hook_resid_post"
    )
    for args, pattern in (
        (("--edits", "0:add"), "bad steering edit '0:add'"),
        (("--edits", "99:ablate"), "feature 99 is out of range"),
        (("--edits", "0:ablate", "--hook", "blocks.3.mlp.hook_post"), "has width 48"),
        (("--edits", "0:ablate", "--temperature", "-1"), "--temperature"),
        (("--edits", "0:ablate", "--lm-dtype", "int3"), "unknown --lm-dtype 'int3'"),
        (("--edits", "0:ablate", "--device", "tpu"), "unknown --device 'tpu'"),
    ):
        rc, _, err = run_cli(*base, *args)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and pattern in lines[0] and "Traceback" not in err, (args, err)


def test_a_dictionary_that_normalises_its_inputs_steers_in_the_model_units(lm):
    """OpenAI-style (layer-normalised inputs, TopK): adding s to a code moves the activation by s·σ(x)·W_dec[f]."""
    d0 = _planted(lm, _token(lm))
    d = SAE(d0.W_enc_DF, d0.W_dec_FD, d0.b_enc_F, d0.b_dec_D, "topk", k=2, normalize="layer_norm")
    hook = "blocks.3.hook_resid_post"
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    with HookedLM(lm.model).capture([hook]) as run:
        x = run(ids)[hook]
    sigma = d.norm_stats(x)[1]
    y = Steering(d, [Edit(0, "add", 2.0)], start=0)(x)
    assert torch.allclose(y, x + 2.0 * sigma * d.W_dec_FD[0], atol=1e-5)
    assert torch.allclose(Steering(d, [Edit(5, "ablate")], start=0)(x), x - (d.decode(d.encode(x), x) - d.decode(
        torch.where(torch.arange(d.d_dict) == 5, 0.0, d.encode(x)), x)), atol=1e-6)  # fmt: skip
