"""Greedy minimal feature sets (ACDC-style, Cunningham et al. 2023 §4): nested sets, records that are exact
re-evaluations, and agreement with a plain one-candidate-at-a-time reference loop written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saex.causal.greedy import TAUS, greedy_prune, patched_set
from saex.causal.patching import PatchingSetup
from tests.causal._helpers import hand_prompts, pinv_dictionary, sharpened_llama

HOOK = "blocks.1.hook_resid_post"
TAUS6 = np.logspace(-4, 0, 6)
DEAD = (3, 15)


@pytest.fixture(scope="module")
def hooked(tiny_models):
    return sharpened_llama(tiny_models)


@pytest.fixture(scope="module")
def prompts():
    return hand_prompts(lengths=(7, 5, 6, 4), seed=0, extra_diff=True)


@pytest.fixture(scope="module", params=["standard", "linear"])
def setup(request, hooked, prompts):
    if request.param == "standard":
        d = pinv_dictionary(32, 10, seed=1, split=True, dead=DEAD)  # 20 features, 2 never fire
    else:
        d = pinv_dictionary(32, 24, seed=1)
    return PatchingSetup(hooked, HOOK, prompts, d)


def reference_prune(setup: PatchingSetup, taus, seed: int) -> tuple[list, list]:
    """The paper's loop (paper §4; docs/causal.md), one candidate at a time, visiting the patched features in the same
    random order as saex (one permutation per τ from default_rng([seed, 19]))."""
    F_ = setup.n_features
    active = set(setup.active.tolist())
    mask = torch.tensor([1.0 if j in active else 0.0 for j in range(F_)])
    dropped = [None if j in active else float(taus[0]) for j in range(F_)]
    kl_prev = float(setup.evaluate(torch.ones(1, F_), batch=1)[0][0])
    rng = np.random.default_rng([seed, 19])
    records = []
    for tau in taus:
        for j in rng.permutation(np.flatnonzero(mask.numpy())):
            trial = mask.clone()
            trial[int(j)] = 0.0
            kl = float(setup.evaluate(trial[None], batch=1)[0][0])
            if kl - kl_prev < tau:
                mask, kl_prev, dropped[int(j)] = trial, kl, float(tau)
        records.append((float(tau), int(mask.sum()), kl_prev))
    return dropped, records


def _mask(result, tau, F_):
    m = torch.zeros(1, F_)
    m[0, patched_set(result, tau)] = 1.0
    return m


def test_default_taus_are_the_papers():
    np.testing.assert_allclose(TAUS, np.logspace(-5, 0, 50))


def test_result_layout_and_first_records(setup):
    F_ = setup.n_features
    r = greedy_prune(setup, TAUS6, seed=0)
    assert r["n_features"] == F_ and r["n_active"] == len(setup.active) and r["seed"] == 0
    assert len(r["dropped_at"]) == F_
    assert len(r["records"]) == 2 + len(TAUS6)
    first, none = r["records"][:2]
    assert first["tau"] is None and first["n_patched"] == F_
    kl_all, edit_all = setup.evaluate(torch.ones(1, F_))
    assert first["kl"] == pytest.approx(float(kl_all[0]), rel=1e-5)
    assert first["edit"] == pytest.approx(float(edit_all[0]))
    assert none == {"tau": None, "n_patched": 0, "kl": pytest.approx(setup.kl_base()), "edit": 0.0}
    assert [rec["tau"] for rec in r["records"][2:]] == pytest.approx(list(TAUS6))
    assert all(t is None or t in set(map(float, TAUS6)) for t in r["dropped_at"])


def test_sets_are_nested_and_shrink(setup):
    F_ = setup.n_features
    r = greedy_prune(setup, TAUS6, seed=0)
    sets = [set(patched_set(r, float(t))) for t in TAUS6]
    for a, b in zip(sets, sets[1:]):
        assert b <= a
    counts = [rec["n_patched"] for rec in r["records"][2:]]
    assert counts == [len(s) for s in sets]
    assert all(x >= y for x, y in zip(counts, counts[1:]))
    assert counts[0] <= len(setup.active) <= F_
    # the case is not trivial: some τ keeps a proper, non-empty subset
    assert any(0 < c < len(setup.active) for c in counts)
    assert counts[-1] < counts[0]


def test_every_record_is_a_fresh_evaluation_of_its_set(setup):
    F_ = setup.n_features
    r = greedy_prune(setup, TAUS6, seed=1)
    for rec in r["records"][2:]:
        kl, edit = setup.evaluate(_mask(r, rec["tau"], F_), batch=1)
        assert rec["kl"] == pytest.approx(float(kl[0]), rel=1e-4, abs=1e-6)
        assert rec["edit"] == pytest.approx(float(edit[0]), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("max_batch", [1, 3, 8])
@pytest.mark.parametrize("seed", [0, 5])
def test_matches_the_one_at_a_time_reference(setup, max_batch, seed):
    dropped, records = reference_prune(setup, TAUS6, seed)
    r = greedy_prune(setup, TAUS6, seed=seed, max_batch=max_batch)
    assert r["dropped_at"] == dropped
    for rec, (tau, n, kl) in zip(r["records"][2:], records):
        assert rec["tau"] == pytest.approx(tau) and rec["n_patched"] == n
        assert rec["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6)


def test_evaluation_count_and_callback(setup):
    calls = []
    r = greedy_prune(setup, TAUS6, seed=0, max_batch=1, on_eval=calls.append)
    assert set(calls) == {1}
    # one evaluation per visit: every feature still patched at the start of each τ
    before = [len(setup.active)] + [rec["n_patched"] for rec in r["records"][2:-1]]
    assert r["evaluations"] == 1 + sum(before) == 1 + len(calls)
    calls8 = []
    r8 = greedy_prune(setup, TAUS6, seed=0, max_batch=8, on_eval=calls8.append)
    assert r8["evaluations"] == 1 + sum(calls8) >= r["evaluations"]
    assert max(calls8) <= 8


def test_inactive_features_are_dropped_at_the_first_tau_without_evaluation(hooked, prompts):
    d = pinv_dictionary(32, 10, seed=1, split=True, dead=DEAD)
    setup = PatchingSetup(hooked, HOOK, prompts, d)
    assert set(DEAD).isdisjoint(setup.active.tolist())
    inactive = sorted(set(range(setup.n_features)) - set(setup.active.tolist()))
    assert set(DEAD) <= set(inactive)
    taus = np.array([-1e9, 1e9])  # nothing active can go at τ₀; everything goes at τ₁
    r = greedy_prune(setup, taus, seed=0, max_batch=1)
    for j in range(setup.n_features):
        assert r["dropped_at"][j] == (-1e9 if j in inactive else 1e9)
    assert r["records"][2]["n_patched"] == len(setup.active)
    assert r["records"][3]["n_patched"] == 0
    assert r["evaluations"] == 1 + 2 * len(setup.active)


def test_nothing_to_patch(hooked):
    same = hand_prompts(lengths=(5, 4), seed=3)
    same.counterfactual_NT = same.base_NT.clone()
    setup = PatchingSetup(hooked, HOOK, same, pinv_dictionary(32, 12, seed=2))
    assert len(setup.active) == 0
    r = greedy_prune(setup, TAUS6, seed=0)
    assert r["dropped_at"] == [float(TAUS6[0])] * 12
    assert r["evaluations"] == 1 and r["n_active"] == 0
    assert all(rec["n_patched"] == 0 and abs(rec["kl"]) < 1e-6 for rec in r["records"][2:])


def test_deterministic_for_a_seed(setup):
    a = greedy_prune(setup, TAUS6, seed=7)
    b = greedy_prune(setup, TAUS6, seed=7)
    assert a == b
