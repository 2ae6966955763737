"""Attribution patching (first-order estimates of un-patching each feature): against autograd through a full
HF forward with a hook written here, central finite differences in float64, and exact single-feature
un-patching; the quick curve against fresh evaluations of its prefixes."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from saex.causal.attribution import attribution_scores, prefix_sizes, quick_curve, validate
from saex.causal.patching import PatchingSetup
from saex.errors import SaexError
from saex.lm.hooks import HookedLM
from tests.causal._helpers import (
    hand_prompts,
    independent_patch,
    kl_pq,
    module_activation,
    pinv_dictionary,
    plain_last_logits,
    sharpened_llama,
    spliced_last_logits,
    valid_mask,
)

HOOK = "blocks.1.hook_resid_post"
DEAD = (3, 15)


@pytest.fixture(scope="module")
def hooked(tiny_models):
    return sharpened_llama(tiny_models, scale=3.0)


@pytest.fixture(scope="module")
def prompts():
    return hand_prompts(lengths=(7, 5, 6, 4), seed=0, extra_diff=True)


@pytest.fixture(scope="module", params=["split", "linear"])
def dictionary(request):
    if request.param == "split":
        return pinv_dictionary(32, 10, seed=1, split=True, dead=DEAD)  # standard, 20 features, 2 dead
    return pinv_dictionary(32, 24, seed=1)


@pytest.fixture(scope="module")
def setup(hooked, prompts, dictionary):
    return PatchingSetup(hooked, HOOK, prompts, dictionary)


def _deltas(dictionary, x_base, x_target, valid):
    with torch.no_grad():
        return (dictionary.encode(x_target) - dictionary.encode(x_base)) * valid[..., None]


# -- prefix sizes ------------------------------------------------------------------------------------------


def test_prefix_sizes_by_hand():
    assert prefix_sizes(0) == [0]
    assert prefix_sizes(1) == [0, 1]
    assert prefix_sizes(5) == [0, 1, 2, 3, 4, 5]
    assert prefix_sizes(8) == list(range(9))
    # 8·2^(1/12) = 8.48 → 8, 8.98 → 9, 9.51 → 10 (capped at n)
    assert prefix_sizes(10) == list(range(11))
    assert prefix_sizes(12) == list(range(13))


@pytest.mark.parametrize("n", [0, 1, 3, 7, 8, 9, 13, 50, 100, 777, 4096])
def test_prefix_sizes_properties(n):
    s = prefix_sizes(n)
    assert s == sorted(set(s))
    assert s[0] == 0 and s[-1] == n and all(0 <= k <= n for k in s)
    assert set(range(min(n, 8) + 1)) <= set(s)
    if n >= 64:
        # about 12 sizes per doubling
        per_doubling = [sum(1 for k in s if m < k <= 2 * m) for m in (16, 32)]
        assert all(10 <= c <= 13 for c in per_doubling), per_doubling
        ratios = [b / a for a, b in zip(s, s[1:]) if a >= 16]
        assert max(ratios) < 2 ** (1 / 12) * 1.1


# -- the scores ----------------------------------------------------------------------------------------------


def _full_forward_gradient(hooked, prompts, dictionary, active, dtype=torch.float32):
    """∂KL/∂x′ at the all-active-patched point, through a full HF forward with a hook written here."""
    model = hooked.model if dtype == torch.float32 else copy.deepcopy(hooked.model).to(dtype)
    h = hooked if dtype == torch.float32 else HookedLM(model)
    v = valid_mask(prompts)
    x_base = module_activation(h, HOOK, prompts.base_NT)
    x_target = module_activation(h, HOOK, prompts.counterfactual_NT)
    d = copy.deepcopy(dictionary).to(dtype)
    x_all = independent_patch(d, x_base, x_target, v, active)
    target = plain_last_logits(model, prompts.counterfactual_NT, prompts.lengths_N)
    return h, x_all, x_base, x_target, target, d


def test_scores_equal_full_forward_autograd(setup, prompts, dictionary):
    active = setup.active.tolist()
    hooked = setup.hooked
    h, x_all, x_base, x_target, target, d = _full_forward_gradient(hooked, prompts, dictionary, active)
    x = x_all.clone().requires_grad_(True)
    with torch.enable_grad():
        kl = kl_pq(spliced_last_logits(h, HOOK, prompts.base_NT, x, prompts.lengths_N), target).mean()
        (g_NTD,) = torch.autograd.grad(kl, x)
    delta_NTF = _deltas(d, x_base, x_target, valid_mask(prompts))
    expected = torch.zeros(setup.n_features)
    for j in active:
        expected[j] = -(delta_NTF[..., j, None] * (g_NTD @ d.W_dec_FD[j])[..., None]).sum()
    got = attribution_scores(setup)
    assert got.shape == (setup.n_features,)
    scale = float(expected.abs().max())
    assert scale > 1e-4
    torch.testing.assert_close(got, expected, atol=2e-3 * scale, rtol=2e-3)


def test_scores_are_directional_derivatives_by_finite_differences(setup, prompts, dictionary):
    """score_j = d/dε KL(x′ − ε Δ_j f_j) at ε = 0, by central differences in float64."""
    got = attribution_scores(setup)
    active = setup.active.tolist()
    h, x_all, x_base, x_target, target, d = _full_forward_gradient(
        setup.hooked, prompts, dictionary, active, dtype=torch.float64
    )
    delta_NTF = _deltas(d, x_base, x_target, valid_mask(prompts))
    top = sorted(active, key=lambda j: -abs(float(got[j])))[:3]

    def kl_at(x):
        with torch.no_grad():
            return float(kl_pq(spliced_last_logits(h, HOOK, prompts.base_NT, x, prompts.lengths_N), target).mean())

    eps = 1e-3
    for j in top:
        step = delta_NTF[..., j, None] * d.W_dec_FD[j]
        fd = (kl_at(x_all - eps * step) - kl_at(x_all + eps * step)) / (2 * eps)
        assert float(got[j]) == pytest.approx(fd, rel=2e-3, abs=1e-5), j


def test_inactive_features_score_zero(hooked, prompts):
    setup = PatchingSetup(hooked, HOOK, prompts, pinv_dictionary(32, 10, seed=1, split=True, dead=DEAD))
    scores = attribution_scores(setup)
    inactive = sorted(set(range(setup.n_features)) - set(setup.active.tolist()))
    assert set(DEAD) <= set(inactive)
    assert (scores[inactive] == 0).all()
    assert (scores[setup.active] != 0).all()


def test_scores_leave_the_setup_unchanged(setup):
    before = (setup.x_base_NTD.clone(), setup.delta_NTF.clone())
    a = attribution_scores(setup)
    b = attribution_scores(setup)
    assert torch.equal(a, b) and not a.requires_grad
    assert torch.equal(before[0], setup.x_base_NTD) and torch.equal(before[1], setup.delta_NTF)


# -- validation against exact un-patching ----------------------------------------------------------------------


def test_validate_exact_values_and_spearman(setup):
    scores = attribution_scores(setup)
    res = validate(setup, scores, n=4, seed=0)
    active = setup.active
    top = active[torch.argsort(scores[active], descending=True)[:4]].tolist()
    feats = res["features"]
    assert set(top) <= set(feats) and feats == sorted(feats) and set(feats) <= set(active.tolist())
    assert len(feats) == min(len(active), 8)
    all_mask = torch.zeros(setup.n_features)
    all_mask[active] = 1.0
    kl_all = float(setup.evaluate(all_mask[None], batch=1)[0][0])
    for j, ex, est in zip(feats, res["exact"], res["estimated"]):
        m = all_mask.clone()
        m[j] = 0.0
        assert ex == pytest.approx(float(setup.evaluate(m[None], batch=1)[0][0]) - kl_all, rel=1e-4, abs=1e-6)
        assert est == pytest.approx(float(scores[j]))
    assert res["spearman"] == pytest.approx(spearmanr(res["estimated"], res["exact"]).statistic)


def test_first_order_estimate_ranks_features_well(hooked, prompts):
    # small patches (a sign-split dictionary on a mildly sharpened model): the estimate ranks them well
    setup = PatchingSetup(hooked, HOOK, prompts, pinv_dictionary(32, 10, seed=1, split=True, dead=DEAD))
    res = validate(setup, attribution_scores(setup), n=32)
    assert len(res["features"]) == len(setup.active)
    assert res["spearman"] > 0.8


def test_validate_seed_picks_the_random_features(setup):
    scores = attribution_scores(setup)
    a = validate(setup, scores, n=2, seed=0)
    b = validate(setup, scores, n=2, seed=0)
    assert a == b


def test_validate_with_nothing_active(hooked):
    same = hand_prompts(lengths=(5, 4), seed=3)
    same.counterfactual_NT = same.base_NT.clone()
    setup = PatchingSetup(hooked, HOOK, same, pinv_dictionary(32, 12, seed=2))
    assert len(setup.active) == 0
    try:
        res = validate(setup, attribution_scores(setup))
    except SaexError:
        return
    assert res["features"] == [] and math.isnan(res["spearman"])


# -- the quick curve -----------------------------------------------------------------------------------------------


def test_quick_curve_records_are_exact_prefix_evaluations(setup):
    scores = attribution_scores(setup)
    curve = quick_curve(setup, scores, batch=8)
    order = curve["order"]
    active = setup.active.tolist()
    assert sorted(order) == active
    s = [float(scores[j]) for j in order]
    assert all(a >= b for a, b in zip(s, s[1:])), "largest estimated KL rise first"
    sizes = [r["n_patched"] for r in curve["records"]]
    assert sizes == prefix_sizes(len(active))
    for rec in curve["records"]:
        m = torch.zeros(1, setup.n_features)
        m[0, order[: rec["n_patched"]]] = 1.0
        kl, edit = setup.evaluate(m, batch=1)
        assert rec["kl"] == pytest.approx(float(kl[0]), rel=1e-4, abs=1e-6)
        assert rec["edit"] == pytest.approx(float(edit[0]), rel=1e-5, abs=1e-7)
    assert curve["records"][0]["kl"] == pytest.approx(setup.kl_base(), rel=1e-3, abs=1e-6)
    assert curve["records"][0]["edit"] == 0.0
    kl_all = float(setup.evaluate(torch.ones(1, setup.n_features))[0][0])
    assert curve["records"][-1]["kl"] == pytest.approx(kl_all, rel=1e-4, abs=1e-6)


def test_quick_curve_batch_invariant(setup):
    scores = attribution_scores(setup)
    a, b = quick_curve(setup, scores, batch=1), quick_curve(setup, scores, batch=8)
    assert a["order"] == b["order"]
    for ra, rb in zip(a["records"], b["records"]):
        assert ra["n_patched"] == rb["n_patched"]
        assert ra["kl"] == pytest.approx(rb["kl"], rel=1e-4, abs=1e-7)


def test_quick_curve_follows_given_scores(setup):
    # any score vector: the order is the active features by descending score, inactive ones never enter
    g = np.random.default_rng(0)
    scores = torch.tensor(g.normal(size=setup.n_features), dtype=torch.float32)
    curve = quick_curve(setup, scores)
    active = setup.active.tolist()
    assert curve["order"] == sorted(active, key=lambda j: -float(scores[j]))
