"""JumpReLU (Rajamanoharan et al. 2024): the straight-through gradients of θ written out by hand on numbers,
the L0 and target-L0 penalties, and the scales θ and ε take in saex's units."""

from __future__ import annotations

import math

import pytest
import torch

from saex.dictionaries.jumprelu import (
    BANDWIDTH,
    THRESHOLD_INIT,
    THRESHOLD_SPEED,
    JumpReLU,
    JumpReLUFn,
    StepFn,
)


def test_straight_through_gradients_are_the_papers():
    eps = 0.5
    pre = torch.tensor([[0.1, 1.2, 0.95, 2.0], [1.05, -0.3, 1.3, 0.6]], requires_grad=True)
    theta = torch.tensor([[1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    out = JumpReLUFn.apply(pre, theta, eps)
    assert out.tolist() == [[0.0, pytest.approx(1.2), 0.0, 2.0], [pytest.approx(1.05), 0.0, pytest.approx(1.3), 0.0]]
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    out.backward(g)
    # to pre: g where pre > θ; to θ: −(θ/ε)·1[|pre − θ| < ε/2]·g, summed over the batch
    assert pre.grad.tolist() == [[0.0, 2.0, 0.0, 4.0], [5.0, 0.0, 7.0, 0.0]]
    near = [[0, 1, 1, 0], [1, 0, 0, 0]]  # |pre − θ| < 0.25
    want = [-(1.0 / eps) * sum(g[b, i].item() * near[b][i] for b in range(2)) for i in range(4)]
    assert theta.grad[0].tolist() == pytest.approx(want)
    pre2, theta2 = pre.detach().clone().requires_grad_(True), theta.detach().clone().requires_grad_(True)
    h = StepFn.apply(pre2, theta2, eps)
    assert h.tolist() == [[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]]
    h.sum().backward()
    assert pre2.grad is None  # the L0 term sends no gradient to the pre-activations
    assert theta2.grad[0].tolist() == pytest.approx([-(1 / eps) * sum(near[b][i] for b in range(2)) for i in range(4)])


def test_penalties_and_scales():
    torch.manual_seed(0)
    m = JumpReLU(9, 16, [1, 2])
    # θ₀ and ε: the paper's 1e-3 for unit-norm inputs, × √d in saex's mean-norm units (√9 = 3)
    assert m.bandwidth == pytest.approx(BANDWIDTH * 3)
    torch.testing.assert_close(m.threshold_KF, torch.full((2, 16), THRESHOLD_INIT * 3))
    # the parameter is θ / THRESHOLD_SPEED, so Adam moves θ that many times faster
    torch.testing.assert_close(m.theta_KF * THRESHOLD_SPEED, m.threshold_KF)
    with torch.no_grad():
        m.b_enc_KF.uniform_(-0.05, 0.05)
    x = torch.randn(32, 9)
    out = m.step(x, torch.tensor([0.0, 0.01]))
    want = 0.0
    for k, lam in enumerate((0.0, 0.01)):
        pre = x @ m.W_enc_KFD[k].T + m.b_enc_KF[k]
        on = (pre > m.threshold_KF[k]).float()
        xhat = (pre.relu() * on) @ torch.nn.functional.normalize(m.W_dec_KFD[k], dim=1) + m.b_dec_KD[k]
        want = want + (xhat - x).pow(2).mean() + lam * on.sum(-1).mean()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    # the target-L0 form: λ (L0 / L0* − 1)²
    t = JumpReLU(9, 16, [1, 2], target_l0=[4.0, 8.0])
    with torch.no_grad():
        for name in ("W_enc_KFD", "W_dec_KFD", "b_enc_KF", "theta_KF"):
            getattr(t, name).copy_(getattr(m, name))
    o2 = t.step(x, torch.tensor([1.0, 1.0]))
    l0 = out.l0_K
    want2 = out.mse_K.sum() + ((l0[0] / 4 - 1) ** 2 + (l0[1] / 8 - 1) ** 2)
    assert o2.loss.item() == pytest.approx(want2.item(), rel=1e-5) and math.isfinite(o2.loss.item())
