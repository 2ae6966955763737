"""The untied SAE (paper App. C.3, eqs. 5, 6), with and without the optional decoder bias."""

from __future__ import annotations

import pytest
import torch

from saex.dictionaries import TopK, UntiedL1
from saex.dictionaries.relu_l1 import SPARSE_MAX_DENSITY
from tests.dictionaries._build import inputs, untied

ALPHAS = torch.tensor([1e-3, 2e-2])


def direct(model, k, x, s=1.0):
    """c = ReLU(M_e (x - b_d) + b), x̂ = M̂_dᵀ c + b_d, straight from the equations (b_d = 0 without the option)."""
    We, Wd, be = model.W_enc_KFD[k].double(), model.W_dec_KFD[k].double(), model.b_enc_KF[k].double()
    bd = model.b_dec_KD[k].double() if model.decoder_bias else torch.zeros(x.shape[1], dtype=torch.float64)
    x = s * x.double()
    Wdh = Wd / Wd.norm(dim=1, keepdim=True)
    c = torch.relu((x - bd) @ We.T + be)
    return c, c @ Wdh + bd, x


@pytest.mark.parametrize("decoder_bias", [False, True])
def test_loss_and_stats_follow_the_equations(decoder_bias):
    model = untied(decoder_bias=decoder_bias)
    x = inputs(B=64, D=8)
    out = model.step(x, ALPHAS)
    with torch.no_grad():
        total = 0.0
        for k in range(2):
            c, xhat, xs = direct(model, k, x)
            mse = ((xs - xhat) ** 2).mean()
            total += mse + ALPHAS[k].item() * c.sum(1).mean()
            assert out.mse_K[k].item() == pytest.approx(mse.item(), rel=1e-5)
            assert out.l0_K[k].item() == pytest.approx((c > 0).sum(1).double().mean().item())
            assert torch.equal(out.fired_KF[k], (c > 0).any(0))
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-5)
    assert out.aux_K is None


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("decoder_bias", [False, True])
def test_gradients_match_float64_autograd_of_the_equations(decoder_bias, sparse):
    model = untied(F=256 if sparse else 16, decoder_bias=decoder_bias)
    x = inputs(B=64, D=8)
    if sparse:  # at most SPARSE_MAX_DENSITY of codes active: the fused step's CSR path
        with torch.no_grad():
            model.b_enc_KF.sub_(torch.tensor([[1.2], [0.9]]))
        density = [(direct(model, k, x)[0] > 0).double().mean().item() for k in range(2)]
        assert all(0 < d <= SPARSE_MAX_DENSITY for d in density), density
    model.step(x, ALPHAS).loss.backward()
    params = {n: p.detach().double().clone().requires_grad_(p.requires_grad) for n, p in model.named_parameters()}
    We, Wd, be, bd = params["W_enc_KFD"], params["W_dec_KFD"], params["b_enc_KF"], params["b_dec_KD"]
    loss = 0.0
    for k in range(2):
        xin = x.double() - (bd[k] if decoder_bias else 0)
        c = torch.relu(xin @ We[k].T + be[k])
        xhat = c @ (Wd[k] / Wd[k].norm(dim=1, keepdim=True)) + (bd[k] if decoder_bias else 0)
        loss = loss + ((x.double() - xhat) ** 2).mean() + ALPHAS[k].item() * c.sum(1).mean()
    loss.backward()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert n == "b_dec_KD" and not decoder_bias and p.grad is None
            continue
        ref = params[n].grad
        torch.testing.assert_close(p.grad.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("decoder_bias", [False, True])
@pytest.mark.parametrize("s", [1.0, 0.2, 5.0])
def test_export_unit_rows_and_scale(decoder_bias, s):
    model = untied(decoder_bias=decoder_bias)
    x = inputs(B=64, D=8)
    for k in range(2):
        sae = model.export(k, scale=s)
        assert sae.architecture == "standard" and sae.apply_b_dec_to_input is decoder_bias
        torch.testing.assert_close(sae.W_dec_FD.norm(dim=1), torch.ones(16), rtol=0, atol=1e-6)
        if not decoder_bias:
            assert torch.equal(sae.b_dec_D, torch.zeros(8))
        c, xhat, _ = direct(model, k, x, s)
        torch.testing.assert_close(sae.encode(x).double(), c / s, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sae(x).double(), xhat / s, rtol=1e-5, atol=1e-6)


def test_encoder_and_decoder_are_independent_draws():
    m = UntiedL1(8, 16, [3, 4])
    assert not torch.equal(m.W_enc_KFD, m.W_dec_KFD)
    assert torch.equal(UntiedL1(8, 16, [4]).W_enc_KFD[0], m.W_enc_KFD[1])
    assert torch.equal(m.b_dec_KD, torch.zeros(2, 8)) and not m.b_dec_KD.requires_grad
    assert UntiedL1(8, 16, [3], decoder_bias=True).b_dec_KD.requires_grad


@pytest.mark.parametrize("cls, kw", [(UntiedL1, {}), (TopK, {"k": 3})])
def test_resample_sets_rows_as_bricken_et_al(cls, kw):
    torch.manual_seed(3)
    model = cls(8, 16, [1, 2], **kw)
    feats = torch.tensor([2, 5, 11])
    dirs = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    live = torch.ones(16, dtype=torch.bool)
    live[feats] = False
    enc_live = model.W_enc_KFD[1, live].norm(dim=1).mean()
    dec_live = model.W_dec_KFD[1, live].norm(dim=1).mean()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.b_enc_KF.fill_(0.5)
    model.resample(1, feats, dirs)
    torch.testing.assert_close(model.W_enc_KFD[1, feats], dirs * 0.2 * enc_live)
    torch.testing.assert_close(model.W_dec_KFD[1, feats], dirs * dec_live)
    assert torch.all(model.b_enc_KF[1, feats] == 0) and torch.all(model.b_enc_KF[1, live] == 0.5)
    # Other rows and the other member are untouched.
    assert torch.equal(model.W_enc_KFD[0], before["W_enc_KFD"][0])
    assert torch.equal(model.W_dec_KFD[1, live], before["W_dec_KFD"][1, live])
