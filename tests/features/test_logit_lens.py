"""Logit lens of feature directions (paper §5.2): a token's own unembedding ranks it first, high-norm tokens
never appear, the vectorised chunked version equals a per-direction loop, tied models, the final-norm gain."""

from __future__ import annotations

import pytest
import torch

from saex.errors import SaexError
from saex.features.logit_lens import excluded_tokens, final_norm_gain, logit_lens, logit_lens_all, unembedding
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model


@pytest.fixture(scope="module")
def llama(tiny_models):
    return load_model(str(tiny_models["llama"])).model


def test_own_unembedding_first_and_outliers_excluded(llama):
    W = unembedding(llama).clone()
    assert W.shape == (llama.config.vocab_size, llama.config.hidden_size)
    t, outlier = 17, 30
    W[outlier] = W[t] * 50  # aligned with the direction, huge norm: would top the list if kept
    rule = "5x"
    excluded = excluded_tokens(W, rule)
    assert excluded.tolist() == [i == outlier for i in range(len(W))]
    p = logit_lens(W[t], W, decode=lambda i: f"tok{i}", k=5, rule=rule)
    assert p["top"][0] == {"token": "tok17", "id": 17, "value": pytest.approx(float(W[t] @ W[t]), rel=1e-5)}
    assert all(r["id"] != outlier for r in p["top"] + p["bottom"])
    assert p["excluded"] == 1 and p["final_norm"] is False
    vals = [r["value"] for r in p["top"]]
    assert vals == sorted(vals, reverse=True)
    low = [r["value"] for r in p["bottom"]]
    assert low == sorted(low) and low[0] == pytest.approx(float((W @ W[t])[~excluded].min()), rel=1e-5)
    # with no exclusion the outlier wins; an absolute limit works as the paper's "> 20"
    assert logit_lens(W[t], W, str, k=1, rule="none")["top"][0]["id"] == outlier
    limit = float(W[outlier].norm()) - 1e-3
    assert excluded_tokens(W, str(limit)).sum() == 1
    with pytest.raises(SaexError, match="is not 'Nx'"):
        excluded_tokens(W, "lots")


def test_vectorised_equals_loop(llama):
    W = unembedding(llama)
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(37, W.shape[1], generator=g)
    exc = torch.zeros(len(W), dtype=torch.bool)
    exc[[3, 9]] = True
    tv, ti, bv, bi = logit_lens_all(dirs, W, k=4, excluded_V=exc, chunk=5)
    for f in range(37):
        logits = dirs[f] @ W.T
        logits[exc] = float("nan")
        order = torch.tensor([i for i in logits.argsort(descending=True).tolist() if not exc[i]])
        assert ti[f].tolist() == order[:4].tolist()
        assert bi[f].tolist() == order.flip(0)[:4].tolist()
        torch.testing.assert_close(tv[f], logits[ti[f]])
        torch.testing.assert_close(bv[f], logits[bi[f]])


def test_tied_model_and_final_norm_gain(tiny_models):
    gemma = load_model(str(tiny_models["gemma3"])).model
    assert gemma.config.tie_word_embeddings
    W = unembedding(gemma)
    assert torch.equal(W, gemma.get_input_embeddings().weight.float())
    norm_path = HookedLM(gemma).family.final_norm
    with torch.no_grad():
        gemma.get_submodule(norm_path).weight.copy_(torch.linspace(-0.5, 0.5, W.shape[1]))
    gain = final_norm_gain(gemma, norm_path)
    # Gemma's RMSNorm multiplies by 1 + weight: the gain is read off the module's own output
    x = torch.randn(1, W.shape[1])
    normed = gemma.get_submodule(norm_path)(x)
    plain = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + gemma.get_submodule(norm_path).eps)
    torch.testing.assert_close(normed, plain * gain)
    f = torch.randn(W.shape[1])
    p = logit_lens(f, W, str, k=3, rule="none", gain_D=gain)
    assert p["final_norm"] is True
    assert p["top"][0]["id"] == int(((f * gain) @ W.T).argmax())
