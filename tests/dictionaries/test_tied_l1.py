"""The paper's tied SAE: loss, hand-derived gradients, export (Cunningham et al. 2023 eqs. 1, 2, 4)."""

from __future__ import annotations

import pytest
import torch

from saex.dictionaries import TiedL1
from saex.dictionaries.relu_l1 import SPARSE_MAX_DENSITY
from tests.dictionaries._build import inputs, tied

ALPHAS = torch.tensor([3e-3, 5e-2])


def reference(M_FD, b_F, x_BD, alpha):
    """Loss and its gradient w.r.t. M and b, written out by hand (no autograd), float64.

    M̂ = M / ‖M‖_row;  pre = x M̂ᵀ + b;  c = ReLU(pre);  x̂ = c M̂;  r = x̂ - x
    L = Σ r² / (B·D) + α Σ c / B
    ∂L/∂x̂ = 2r / (B·D) =: G;   ∂L/∂pre = (G M̂ᵀ + α/B) ⊙ [pre > 0] =: P
    ∂L/∂b = Σ_B P;   ∂L/∂M̂ = cᵀ G (decoder) + Pᵀ x (encoder) =: H
    through M̂_i = M_i / n_i:  ∂L/∂M_i = (H_i - (H_i · M̂_i) M̂_i) / n_i
    """
    M, b, x = M_FD.double(), b_F.double(), x_BD.double()
    B, D = x.shape
    n = M.norm(dim=1, keepdim=True)
    Mh = M / n
    pre = x @ Mh.T + b
    c = pre.clamp_min(0)
    r = c @ Mh - x
    loss = (r * r).sum() / (B * D) + alpha * c.sum() / B
    G = 2 * r / (B * D)
    P = (G @ Mh.T + alpha / B) * (pre > 0)
    H = c.T @ G + P.T @ x
    gM = (H - (H * Mh).sum(1, keepdim=True) * Mh) / n
    return loss, gM, P.sum(0), c, c @ Mh


# Bias shifts per member: every code dense; both sparse (the fused step's CSR path, at most SPARSE_MAX_DENSITY active); one each.
SHIFTS = {"dense": (0.0, 0.0), "sparse": (-3.5, -3.0), "mixed": (0.0, -3.5)}


@pytest.mark.parametrize("shift", list(SHIFTS))
def test_gradients_equal_the_hand_derived_ones(shift):
    F = 16 if shift == "dense" else 256
    model = tied(D=8, F=F, K=2)
    with torch.no_grad():
        model.b_KF.add_(torch.tensor(SHIFTS[shift]).unsqueeze(1))
    x = inputs(B=64, D=8, scale=1.5)
    density = [
        (reference(model.M_KFD[k].detach(), model.b_KF[k].detach(), x, 0.0)[3] > 0).double().mean().item()
        for k in range(2)
    ]
    assert [d <= SPARSE_MAX_DENSITY for d in density] == [s < 0 for s in SHIFTS[shift]] and min(density) > 0, density
    out = model.step(x, ALPHAS)
    out.loss.backward()
    total = 0.0
    for k in range(2):
        loss, gM, gb, _, _ = reference(model.M_KFD[k].detach(), model.b_KF[k].detach(), x, ALPHAS[k].item())
        total += loss.item()
        assert (gb != 0).any() and (gM != 0).any()
        torch.testing.assert_close(model.M_KFD.grad[k].double(), gM, rtol=1e-5, atol=1e-5 * gM.abs().max().item())
        torch.testing.assert_close(model.b_KF.grad[k].double(), gb, rtol=1e-5, atol=1e-5 * gb.abs().max().item())
    assert out.loss.item() == pytest.approx(total, rel=1e-5)


def test_members_are_independent_in_the_summed_loss():
    """Member k's gradient is what it would be trained alone (the ensemble's promise)."""
    model = tied(D=8, F=16, K=2)
    x = inputs(B=32, D=8)
    model.step(x, ALPHAS).loss.backward()
    alone = TiedL1(8, 16, [12])
    with torch.no_grad():
        alone.M_KFD.copy_(model.M_KFD[1:]), alone.b_KF.copy_(model.b_KF[1:])
    alone.step(x, ALPHAS[1:]).loss.backward()
    torch.testing.assert_close(alone.M_KFD.grad[0], model.M_KFD.grad[1], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(alone.b_KF.grad[0], model.b_KF.grad[1], rtol=1e-6, atol=1e-9)


def test_step_statistics_follow_the_paper_equations():
    model = tied(D=8, F=16, K=2)
    x = inputs(B=64, D=8)
    out = model.step(x, ALPHAS)
    with torch.no_grad():
        total = 0.0
        for k in range(2):
            M = model.M_KFD[k]
            Mh = M / M.norm(dim=1, keepdim=True)  # rows are the features f_i
            c = torch.relu(x @ Mh.T + model.b_KF[k])  # eq. 1: c = ReLU(M̂x + b)
            xhat = c @ Mh  # eq. 2: x̂ = M̂ᵀc
            mse = ((x - xhat) ** 2).mean()  # ‖x - x̂‖² / d_in, batch mean
            l1 = c.abs().sum(1).mean()  # ‖c‖₁, batch mean
            assert out.mse_K[k].item() == pytest.approx(mse.item(), rel=1e-5)
            assert out.l0_K[k].item() == pytest.approx((c > 0).sum(1).float().mean().item())
            assert torch.equal(out.fired_KF[k], (c > 0).any(0))
            total += mse + ALPHAS[k] * l1  # eq. 4 on the code's scale
        assert out.loss.item() == pytest.approx(total.item(), rel=1e-5)
        assert out.aux_K is None
    ref = sum(reference(model.M_KFD[k].detach(), model.b_KF[k].detach(), x, ALPHAS[k].item())[0] for k in range(2))
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    # loss depends on the row norms of M not at all
    with torch.no_grad():
        model.M_KFD.mul_(torch.tensor([3.0, 0.25]).view(2, 1, 1))
    assert model.step(x, ALPHAS).loss.item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_exported_sae_is_the_tied_member():
    model = tied(D=8, F=16, K=2)
    x = inputs(B=64, D=8)
    for k in range(2):
        sae = model.export(k)
        assert sae.architecture == "standard" and not sae.apply_b_dec_to_input
        assert torch.equal(sae.W_enc_DF, sae.W_dec_FD.T)
        torch.testing.assert_close(sae.W_dec_FD.norm(dim=1), torch.ones(16), rtol=0, atol=1e-6)
        assert torch.equal(sae.b_dec_D, torch.zeros(8))
        _, _, _, c, xhat = reference(model.M_KFD[k].detach(), model.b_KF[k].detach(), x, 0.0)
        torch.testing.assert_close(sae.encode(x).double(), c, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sae(x).double(), xhat, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("s", [0.1, 4.0])
def test_export_with_scale_serves_unscaled_inputs(s):
    """Trained on s·x: the export on x gives the member's codes and reconstruction on s·x, divided by s."""
    model = tied(D=8, F=16, K=2)
    x = inputs(B=64, D=8)
    for k in range(2):
        sae = model.export(k, scale=s)
        _, _, _, c, xhat = reference(model.M_KFD[k].detach(), model.b_KF[k].detach(), s * x, 0.0)
        torch.testing.assert_close(sae.encode(x).double(), c / s, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sae(x).double(), xhat / s, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sae.W_dec_FD.norm(dim=1), torch.ones(16), rtol=0, atol=1e-6)


def test_initialisation_is_xavier_with_zero_bias_and_per_member_seeds():
    a = TiedL1(8, 16, [1, 2])
    b = TiedL1(8, 16, [2])
    bound = (6 / (16 + 8)) ** 0.5
    assert a.M_KFD.abs().max() <= bound and torch.equal(a.b_KF, torch.zeros(2, 16))
    assert torch.equal(a.M_KFD[1], b.M_KFD[0]) and not torch.equal(a.M_KFD[0], a.M_KFD[1])


def test_resample_points_features_at_directions():
    model = tied(D=8, F=16, K=2)
    d = torch.nn.functional.normalize(inputs(B=3, D=8, seed=9), dim=1)
    feats = torch.tensor([0, 5, 7])
    before = model.M_KFD[0].detach().clone()
    model.resample(1, feats, d)
    sae = model.export(1)
    torch.testing.assert_close(sae.W_dec_FD[feats], d, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.b_KF[1, feats], torch.zeros(3))
    assert torch.equal(model.M_KFD[0], before)  # other member untouched
