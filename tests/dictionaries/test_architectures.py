"""Every trainable architecture against a plain float64 autograd reference written from its paper's
equations, as an autoencoder and as a transcoder with a skip connection; resampling for every one; the
inference SAE of each reproducing the training-time codes."""

from __future__ import annotations

import pytest
import torch

from saex.dictionaries import architectures
from saex.dictionaries.jumprelu import THRESHOLD_SPEED, JumpReLU
from saex.errors import SaexError
from tests.dictionaries._build import inputs, perturb

D, F, K, B, D_OUT = 6, 12, 2, 20, 5


def build(arch: str, transcoder: bool = False, seed: int = 0):
    cls = architectures()[arch]
    kw = {"d_out": D_OUT, "skip": True} if transcoder else {}
    if arch in ("topk", "batchtopk", "matryoshka"):
        kw |= {"k": 3, "aux_k": 4}
    if arch == "matryoshka":
        kw["prefixes"] = [0.25, 0.5]
    if arch == "untied_l1":
        kw["decoder_bias"] = True
    m = perturb(cls(D, F, [101 + i for i in range(K)], **kw), seed)
    if arch == "jumprelu":
        with torch.no_grad():
            m.theta_KF.copy_(torch.rand(K, F, generator=torch.Generator().manual_seed(seed)) * 0.04)
    return m


def unit(W):
    return W / W.norm(dim=-1, keepdim=True)


def reference(arch, p, k, x, y, coef, dead_F, model):
    """Member k's loss from the equations (float64, plain autograd); p maps parameter names to [K, ...] leaves.
    Returns (loss, codes)."""
    x = x.double()
    if "W_skip_KOD" in p:
        y = y.double() - x @ p["W_skip_KOD"][k].T  # the dictionary reconstructs what the skip leaves
    else:
        y = x if y is None else y.double()
    transcoder = model.transcoder
    if arch == "tied_l1":
        M = unit(p["M_KFD"][k])
        c = (x @ M.T + p["b_KF"][k]).relu()
        xhat = c @ M
        return ((xhat - y) ** 2).mean() + coef * c.sum(1).mean(), c
    Wd = unit(p["W_dec_KFD"][k])
    bd = p["b_dec_KD"][k]
    We, be = p["W_enc_KFD"][k], p["b_enc_KF"][k]
    if arch == "untied_l1":
        xin = x if transcoder else x - bd
        c = (xin @ We.T + be).relu()
        return (((c @ Wd + bd) - y) ** 2).mean() + coef * c.sum(1).mean(), c
    if arch == "gated":
        xin = x if transcoder else x - bd
        pi_gate = xin @ We.T + p["b_gate_KF"][k]
        pi_mag = xin @ (We * p["r_mag_KF"][k].exp()[:, None]).T + be
        c = (pi_gate > 0).double() * pi_mag.relu()
        aux = ((pi_gate.relu() @ Wd.detach() + bd.detach() - y) ** 2).mean()
        return (((c @ Wd + bd) - y) ** 2).mean() + coef * pi_gate.relu().sum(1).mean() + aux, c
    if arch == "jumprelu":
        pre = x @ We.T + be
        theta = p["theta_KF"][k].detach() * THRESHOLD_SPEED  # θ's straight-through gradient is checked by hand below
        on = (pre > theta).double()
        c = pre.relu() * on
        return (((c @ Wd + bd) - y) ** 2).mean() + coef * on.sum(1).mean(), c
    # the TopK family
    xin = x if transcoder else x - bd
    pre = xin @ We.T + be
    if arch == "topk":
        idx = pre.topk(model.k, dim=1).indices
        c = torch.zeros_like(pre).scatter(1, idx, pre.gather(1, idx)).relu()
    else:  # batchtopk, matryoshka: the B·k largest of the whole batch
        flat = pre.flatten()
        idx = flat.topk(pre.shape[0] * model.k).indices
        c = torch.zeros_like(flat).scatter(0, idx, flat[idx]).relu().view_as(pre)
    xhat = c @ Wd + bd
    loss = ((xhat - y) ** 2).mean()
    if arch == "matryoshka":
        for m in model.prefixes_M[:-1]:
            loss = loss + (((c[:, :m] @ Wd[:m] + bd) - y) ** 2).mean()
    if dead_F is not None and dead_F.any():
        masked = pre.masked_fill(~dead_F, float("-inf"))
        n = min(model.aux_k, int(dead_F.sum()))
        idx = masked.topk(n, dim=1).indices
        c_aux = torch.zeros_like(pre).scatter(1, idx, masked.gather(1, idx)).relu()
        loss = loss + model.aux_coef * ((c_aux @ Wd - (y - xhat).detach()) ** 2).mean()
    return loss, c


ARCHS = ["tied_l1", "untied_l1", "topk", "batchtopk", "matryoshka", "jumprelu", "gated"]
CASES = [(a, False) for a in ARCHS] + [(a, True) for a in ARCHS if a != "tied_l1"]


def test_every_registered_architecture_is_checked_here():
    assert set(architectures()) == set(ARCHS)


@pytest.mark.parametrize("arch, transcoder", CASES, ids=[f"{a}{'-transcoder' if t else ''}" for a, t in CASES])
def test_loss_and_gradients_match_a_plain_autograd_reference(arch, transcoder):
    model = build(arch, transcoder)
    x = inputs(B=B, D=D, seed=3)
    y = inputs(B=B, D=D_OUT, seed=4) if transcoder else None
    coef = torch.tensor([0.02, 0.05])
    dead = torch.zeros(K, F, dtype=torch.bool)
    dead[:, ::3] = True  # some dead latents, for the aux-k term
    out = model(x, coef, dead if model.needs_dead_mask else None, y)
    out.loss.backward()
    params = {n: p.detach().double().requires_grad_(True) for n, p in model.named_parameters() if p.requires_grad}
    total = 0.0
    for k in range(K):
        loss_k, c = reference(
            arch, params, k, x, y, coef[k].double(), dead[k] if model.needs_dead_mask else None, model
        )
        total = total + loss_k
        # the step's diagnostics: L0 per member
        assert out.l0_K[k].item() == pytest.approx((c != 0).double().sum(1).mean().item(), rel=1e-6)
    torch.testing.assert_close(out.loss.double(), total, rtol=1e-5, atol=1e-6)
    total.backward()
    for n, p in model.named_parameters():
        if not p.requires_grad or (arch == "jumprelu" and n == "theta_KF"):
            continue
        torch.testing.assert_close(
            p.grad.double(), params[n].grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}"
        )
    if arch == "jumprelu":
        # eq. 11 by hand: dL/dθ_i = Σ_b K_ε(pre − θ)/ε · (−θ_i · dL/dc_bi − λ/B)
        eps = model.bandwidth
        for k in range(K):
            p64 = {n: t.detach().clone().requires_grad_(n != "theta_KF") for n, t in params.items()}
            pre = (x.double() @ p64["W_enc_KFD"][k].T + p64["b_enc_KF"][k]).detach()
            theta = p64["theta_KF"][k] * THRESHOLD_SPEED
            c = (pre.relu() * (pre > theta)).requires_grad_(True)
            Wd = unit(p64["W_dec_KFD"][k]).detach()
            target = y.double() - x.double() @ p64["W_skip_KOD"][k].T.detach() if transcoder else x.double()
            ((c @ Wd + p64["b_dec_KD"][k].detach() - target) ** 2).mean().backward()
            band = ((pre - theta).abs() < eps / 2).double() / eps
            want = (band * (-theta * c.grad - coef[k].double() / B)).sum(0)
            # θ = THRESHOLD_SPEED · theta_KF: the parameter's gradient is the speed times θ's
            torch.testing.assert_close(model.theta_KF.grad[k].double(), THRESHOLD_SPEED * want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch, transcoder", CASES, ids=[f"{a}{'-transcoder' if t else ''}" for a, t in CASES])
def test_the_saved_sae_computes_what_training_did(arch, transcoder):
    """Exported for unscaled data (training saw s·x and t·y), the SAE's codes are the training codes / t and
    its output the training reconstruction / t, skip term included."""
    model = build(arch, transcoder)
    if arch in ("batchtopk", "matryoshka"):
        y = inputs(B=B, D=D_OUT, seed=10) if transcoder else None
        model(inputs(B=B, D=D, seed=9), torch.zeros(K), None, y)  # sets the inference threshold
    s, t = 3.0, (2.0 if transcoder else 3.0)
    x = inputs(B=B, D=D, seed=5)
    for k in range(K):
        train_sae, sae = model.export(k), model.export(k, scale=s, out_scale=t if transcoder else None)
        assert sae.transcoder == transcoder and sae.d_out == (D_OUT if transcoder else D)
        torch.testing.assert_close(sae.encode(x / s), train_sae.encode(x) / t, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sae(x / s), train_sae(x) / t, rtol=1e-4, atol=1e-5)
        for f in (0, 5):  # the single-feature code (circuits) agrees with the full encoder
            torch.testing.assert_close(sae.code_of(x, f), sae.encode(x)[:, f])


@pytest.mark.parametrize("arch", [a for a in ARCHS])
def test_resampling_points_the_rows_at_the_given_directions(arch):
    model = build(arch)
    feats = torch.tensor([1, 4, 7])
    dirs = unit(torch.randn(3, D, generator=torch.Generator().manual_seed(8)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.resample(0, feats, dirs)
    sae = model.export(0)
    cos_dec = (sae.W_dec_FD[feats] * dirs).sum(1)
    torch.testing.assert_close(cos_dec, torch.ones(3), rtol=0, atol=1e-5)
    cos_enc = torch.nn.functional.cosine_similarity(sae.W_enc_DF[:, feats].T, dirs, dim=1)
    torch.testing.assert_close(cos_enc, torch.ones(3), rtol=0, atol=1e-5)
    # each resampled feature fires on its own direction (scaled up), and member 1 is untouched
    c = sae.encode(dirs * 10.0)
    assert all(c[i, f] > 0 for i, f in enumerate(feats.tolist())) or arch in ("topk", "batchtopk", "matryoshka")
    for n, p in model.named_parameters():
        assert torch.equal(p[1], before[n][1]), n
    if isinstance(model, JumpReLU):
        assert torch.allclose(model.threshold_KF[0, feats], torch.full((3,), model.bandwidth))


def test_tied_weights_cannot_transcode_and_skip_needs_a_target():
    with pytest.raises(SaexError, match="tied_l1 cannot be a transcoder"):
        architectures()["tied_l1"](D, F, [1], d_out=D_OUT)
    with pytest.raises(SaexError, match="--skip .* needs --target"):
        architectures()["topk"](D, F, [1], skip=True, k=2)
    with pytest.raises(SaexError, match=r"--k 13 must be an integer in 1\.\.12"):
        architectures()["batchtopk"](D, F, [1], k=13)
