"""TopK SAE (Gao et al. 2024 §2.3, App. A.2): k active latents, unit decoder rows, aux-k for dead latents."""

from __future__ import annotations

import pytest
import torch

from saex.dictionaries import TopK
from tests.dictionaries._build import inputs, topk

COEF = torch.zeros(2)  # TopK ignores the L1 coefficients


def direct(model, k, x, dead_F=None, s=1.0):
    """(c, x̂, aux, c_aux) from the equations, float64."""
    We, Wd = model.W_enc_KFD[k].double(), model.W_dec_KFD[k].double()
    be, bd = model.b_enc_KF[k].double(), model.b_dec_KD[k].double()
    x = s * x.double()
    pre = (x - bd) @ We.T + be
    idx = pre.topk(model.k, dim=1).indices
    c = torch.zeros_like(pre).scatter(1, idx, pre.gather(1, idx)).relu()
    Wdh = Wd / Wd.norm(dim=1, keepdim=True)
    xhat = c @ Wdh + bd
    aux = c_aux = None
    if dead_F is not None and dead_F.any():
        masked = pre.masked_fill(~dead_F, float("-inf"))
        n = min(model.aux_k, int(dead_F.sum()))
        idx = masked.topk(n, dim=1).indices
        c_aux = torch.zeros_like(pre).scatter(1, idx, masked.gather(1, idx)).relu()
        aux = ((c_aux @ Wdh - (x - xhat)) ** 2).mean()
    return c, xhat, aux, c_aux


def test_exactly_k_active_when_pre_activations_are_positive():
    model = topk(k=3)
    with torch.no_grad():
        model.b_enc_KF.add_(20.0)  # every pre-activation positive: ReLU removes none of the top k
    x = inputs(B=64, D=8)
    out = model.step(x, COEF)
    assert torch.equal(out.l0_K, torch.full((2,), 3.0))
    for k in range(2):
        c = model.export(k).encode(x)
        assert ((c != 0).sum(1) == 3).all()


def test_at_most_k_active_and_they_are_the_largest():
    model = topk(k=5)
    x = inputs(B=64, D=8)
    for k in range(2):
        sae = model.export(k)
        c, pre = sae.encode(x), sae.pre_acts(x)
        nz = (c != 0).sum(1)
        assert (nz <= 5).all() and (nz > 0).any()
        kth = pre.topk(5, dim=1).values[:, -1:]
        assert torch.equal(c != 0, (pre >= kth) & (pre > 0))
        assert torch.equal(c[c != 0], pre[c != 0])


def test_loss_is_reconstruction_only_without_dead_latents():
    model = topk(k=3)
    x = inputs(B=64, D=8)
    for dead in (None, torch.zeros(2, 16, dtype=torch.bool)):
        out = model.step(x, torch.tensor([5.0, 7.0]), dead)  # L1 coefficients play no part
        assert out.aux_K is None
        total = 0.0
        for k in range(2):
            c, xhat, _, _ = direct(model, k, x)
            mse = ((x.double() - xhat) ** 2).mean().item()
            total += mse
            assert out.mse_K[k].item() == pytest.approx(mse, rel=1e-5)
            assert out.l0_K[k].item() == pytest.approx((c > 0).sum(1).double().mean().item())
            assert torch.equal(out.fired_KF[k], (c > 0).any(0))
        assert out.loss.item() == pytest.approx(total, rel=1e-5)


def _dead_mask():
    dead = torch.zeros(2, 16, dtype=torch.bool)
    dead[0, [1, 4, 6, 9, 12, 13]] = True
    dead[1, [0, 2]] = True
    return dead


def test_aux_loss_value_follows_the_equations():
    model = topk(k=3, aux_k=4)
    x = inputs(B=64, D=8)
    dead = _dead_mask()
    out = model.step(x, COEF, dead)
    assert out.aux_K is not None and out.aux_K.shape == (2,)
    total = 0.0
    for k in range(2):
        _, xhat, aux, _ = direct(model, k, x, dead[k])
        assert out.aux_K[k].item() == pytest.approx(aux.item(), rel=1e-5)
        total += ((x.double() - xhat) ** 2).mean().item() + model.aux_coef * aux.item()
    assert out.loss.item() == pytest.approx(total, rel=1e-5)
    assert model.aux_coef == pytest.approx(1 / 32)


def _grads(model, x, dead):
    model.zero_grad(set_to_none=True)
    model.step(x, COEF, dead).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def test_aux_gradient_reaches_only_dead_latents_and_the_decoder_rows_it_selects():
    model = topk(k=3, aux_k=2)
    x = inputs(B=4, D=8, seed=3)  # few inputs: not every dead latent is selected by aux-k
    dead = _dead_mask()
    g_aux = {n: a - b for (n, a), b in zip(_grads(model, x, dead).items(), _grads(model, x, None).values())}
    for k in range(2):
        _, _, _, c_aux = direct(model, k, x, dead[k])
        selected = (c_aux > 0).any(0)
        assert selected.any() and bool((selected <= dead[k]).all())
        enc_rows = g_aux["W_enc_KFD"][k].abs().amax(1) > 1e-9
        dec_rows = g_aux["W_dec_KFD"][k].abs().amax(1) > 1e-9
        benc = g_aux["b_enc_KF"][k].abs() > 1e-9
        assert torch.equal(enc_rows, selected), (k, enc_rows, selected)
        assert torch.equal(benc, selected)
        assert torch.equal(dec_rows, selected)
    assert (dead[0] & ~(direct(model, 0, x, dead[0])[3] > 0).any(0)).any(), "want a dead latent aux-k leaves out"


def test_aux_residual_is_a_fixed_target():
    """e = x - x̂ is detached: the aux term alone sends no gradient to live latents' rows."""
    model = topk(k=3, aux_k=16)
    x = inputs(B=64, D=8)
    dead = torch.zeros(2, 16, dtype=torch.bool)
    dead[:, :3] = True
    g_aux = {n: a - b for (n, a), b in zip(_grads(model, x, dead).items(), _grads(model, x, None).values())}
    assert g_aux["W_enc_KFD"][:, 3:].abs().max() < 1e-9
    assert g_aux["W_dec_KFD"][:, 3:].abs().max() < 1e-9
    assert g_aux["W_enc_KFD"][:, :3].abs().max() > 1e-6


@pytest.mark.parametrize("s", [1.0, 0.3, 4.0])
def test_export_unit_rows_and_scale(s):
    model = topk(k=3)
    x = inputs(B=64, D=8)
    for k in range(2):
        sae = model.export(k, scale=s)
        assert sae.architecture == "topk" and sae.k == 3 and sae.apply_b_dec_to_input
        torch.testing.assert_close(sae.W_dec_FD.norm(dim=1), torch.ones(16), rtol=0, atol=1e-6)
        c, xhat, _, _ = direct(model, k, x, s=s)
        torch.testing.assert_close(sae.encode(x).double(), c / s, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sae(x).double(), xhat / s, rtol=1e-5, atol=1e-6)


def test_encoder_starts_as_the_decoder_transpose():
    m = TopK(8, 16, [5, 6], k=4)
    assert torch.equal(m.W_enc_KFD, m.W_dec_KFD)
    torch.testing.assert_close(m.W_dec_KFD.norm(dim=-1), torch.ones(2, 16))
    assert m.aux_k == 16  # clipped to the dictionary size
