"""BatchTopK (Bussmann et al. 2024): the top B·k activations of a batch, a threshold estimated in training,
saved as a JumpReLU SAE in SAELens's layout."""

from __future__ import annotations

import json

import pytest
import torch

from saex.causal.circuits import feature_code
from saex.dictionaries import SAE
from saex.dictionaries.batchtopk import THRESHOLD_DECAY, BatchTopK
from saex.dictionaries.ensemble import unit_rows
from saex.errors import SaexError
from saex.train import trainer
from tests.train._synth import train_cfg


def _model(K=2, D=8, F=32, k=3, seed=0):
    torch.manual_seed(seed)
    m = BatchTopK(D, F, list(range(K)), k=k, aux_coef=0.0)
    with torch.no_grad():
        m.b_enc_KF.normal_()
    return m


def test_keeps_exactly_b_times_k_activations_per_batch_and_member():
    m = _model()
    with torch.no_grad():
        m.b_enc_KF.fill_(5.0)  # every pre-activation positive: the count is exactly B·k, never fewer
    x = torch.randn(10, 8)
    out = m.step(x, torch.zeros(2))
    pre = torch.baddbmm(
        m.b_enc_KF.unsqueeze(1), x.expand(2, 10, 8) - m.b_dec_KD.unsqueeze(1), m.W_enc_KFD.transpose(1, 2)
    )
    kept = m.select(pre.detach())
    for rows, cols in kept:  # exactly B·k entries, all distinct, all positive here
        assert len(rows) == 30 and len({(r, c) for r, c in zip(rows.tolist(), cols.tolist())}) == 30
        assert (pre[0 if rows is kept[0][0] else 1][rows, cols] > 0).all()
    assert out.l0_K.tolist() == [3.0, 3.0]  # k per input on average


def test_forward_and_gradient_equal_a_plain_autograd_reference():
    m = _model(seed=1)
    x = torch.randn(16, 8)
    out = m.step(x, torch.zeros(2))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
    # reference: the same function written out with autograd only
    W_enc, W_dec, b_enc, b_dec = (
        p.detach().clone().requires_grad_(True) for p in (m.W_enc_KFD, m.W_dec_KFD, m.b_enc_KF, m.b_dec_KD)
    )
    loss = 0.0
    for i in range(2):
        pre = (x - b_dec[i]) @ W_enc[i].T + b_enc[i]
        flat = pre.reshape(-1)
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.topk(16 * 3).indices] = True
        c = (flat.relu() * keep).reshape(16, 32)
        xhat = c @ (W_dec[i] / W_dec[i].norm(dim=-1, keepdim=True)) + b_dec[i]
        loss = loss + (xhat - x).pow(2).mean()
    loss.backward()
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5)
    for name, ref in zip(("W_enc_KFD", "W_dec_KFD", "b_enc_KF", "b_dec_KD"), (W_enc, W_dec, b_enc, b_dec)):
        torch.testing.assert_close(grads[name], ref.grad, rtol=1e-4, atol=1e-6)


def test_threshold_is_the_running_minimum_kept_activation():
    m = _model(K=1)
    xs = [torch.randn(12, 8) for _ in range(3)]
    expected = None
    for x in xs:
        pre = torch.baddbmm(
            m.b_enc_KF.unsqueeze(1), x.expand(1, 12, 8) - m.b_dec_KD.unsqueeze(1), m.W_enc_KFD.transpose(1, 2)
        )
        kept = pre.detach().reshape(-1).topk(12 * 3).values
        low = kept[kept > 0].min().item()
        expected = low if expected is None else THRESHOLD_DECAY * expected + (1 - THRESHOLD_DECAY) * low
        m.step(x, torch.zeros(1))
    assert float(m.threshold_K[0]) == pytest.approx(expected, rel=1e-5)


def test_exported_as_jumprelu_with_the_threshold_divided_by_the_input_scale(tmp_path):
    m = _model(K=1)
    m.step(torch.randn(12, 8), torch.zeros(1))
    sae = m.export(0, scale=2.0)
    assert sae.architecture == "jumprelu" and torch.allclose(sae.threshold_F, m.threshold_K[0].expand(32) / 2)
    x = torch.randn(5, 8)
    pre = (x - sae.b_dec_D) @ sae.W_enc_DF + sae.b_enc_F
    torch.testing.assert_close(sae.encode(x), pre.relu() * (pre > sae.threshold_F))
    loaded = SAE.load(sae.save(tmp_path / "b"))
    assert json.loads((tmp_path / "b" / "cfg.json").read_text())["architecture"] == "jumprelu"
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    torch.testing.assert_close(loaded.W_dec_FD, unit_rows(m.W_dec_KFD[0]).detach())
    # the single-feature code the circuits use (one encoder column) agrees with the full encoder
    for f in (0, 7, 31):
        torch.testing.assert_close(feature_code(sae, x, f), sae.encode(x)[:, f])
    with pytest.raises(SaexError, match=r"a jumprelu SAE needs a threshold per feature, shape \(32,\); got None"):
        SAE(sae.W_enc_DF, sae.W_dec_FD, sae.b_enc_F, sae.b_dec_D, architecture="jumprelu")


def test_trained_threshold_gives_the_training_sparsity_on_held_out_data(small_data, small_store, tmp_path):
    """The point of the saved threshold: per-input JumpReLU inference reproduces the batch-level k."""
    _, _, H = small_data
    out = trainer.train(
        train_cfg(small_store, tmp_path / "out", arch="batchtopk", k="4", ratio="2", steps=600, eval_every=0),
        progress=False,
    )
    sae = SAE.load(out / "batchtopk_r2_k4")
    l0 = float((sae.encode(H) != 0).sum(-1).float().mean())
    assert abs(l0 - 4) / 4 < 0.10, l0
    run = json.loads((out / "run.json").read_text())
    assert [m["name"] for m in run["members"]] == ["batchtopk_r2_k4"]
