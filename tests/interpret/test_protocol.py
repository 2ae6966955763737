"""The protocol presets (``saex.interpret.protocol.sample_feature``) on a feature index built by
``saex.stages.features`` from a synthetic store whose activations are known by construction.

Expected fragment ids are recomputed from the store's columns (brute force) and from ``index.examples``;
the splits are the ones of paper §3.1 and docs/autointerp.md (Bills'
interleaved splits with ``n_examples_per_split=5``).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from saex.errors import SaexError
from saex.features.index import FeatureIndex
from saex.interpret.protocol import MIN_FRAGMENTS, PRESETS, sample_feature
from tests.interpret._fixtures import (
    ACTIVE,
    N_FRAGMENTS,
    PC,
    PL,
    PT,
    RANDOM,
    TOP,
    ZERO,
    build_protocol_index,
    protocol_columns,
)

SCORED = (0, 2, 3)
"""Features with at least 20 activating fragments (140, 210 and exactly 20)."""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("protocol")


@pytest.fixture(scope="module")
def ix(root) -> FeatureIndex:
    return FeatureIndex(build_protocol_index(root))


@pytest.fixture(scope="module")
def brute():
    """Per-fragment activations [N, L, F] after the ReLU, and the active fragments of each feature."""
    X, active = protocol_columns()
    return np.maximum(X.astype(np.float64), 0).reshape(N_FRAGMENTS, PL, -1), active


def _ids(records) -> list[int]:
    return [r.fragment for r in records]


def test_the_index_holds_what_the_store_was_built_with(ix, brute):
    acts, active = brute
    assert ix.meta["n_fragments"] == N_FRAGMENTS == PC * PT // PL
    assert ix.t["active_fragments"].tolist() == [ACTIVE[f] for f in range(4)]
    for f in range(4):
        assert sorted(np.flatnonzero(acts[:, :, f].max(1) > 0)) == active[f].tolist()
        top_ids, _ = ix.examples(f, "top")
        fmax = acts[:, :, f].max(1)
        want = active[f][np.argsort(-fmax[active[f]], kind="stable")][:TOP]
        np.testing.assert_array_equal(top_ids, want)
        assert len(ix.examples(f, "random")[0]) == min(RANDOM, ACTIVE[f])
        assert len(ix.examples(f, "zero")[0]) == min(ZERO, N_FRAGMENTS - ACTIVE[f])


@pytest.mark.parametrize("f", SCORED)
def test_cunningham2023_splits(ix, brute, f):
    acts, active = brute
    s = sample_feature(ix, f, "cunningham2023", seed=0)
    assert not isinstance(s, str)
    top_ids, _ = ix.examples(f, "top")
    rand_ids, _ = ix.examples(f, "random")
    assert s.feature == f
    assert _ids(s.explain) == [int(top_ids[i]) for i in (0, 4, 8, 12, 16)]
    assert _ids(s.score_top) == [int(top_ids[i]) for i in (2, 6, 10, 14, 18)]
    assert _ids(s.score_random) == [int(rand_ids[i]) for i in (1, 4, 7, 10, 13)]
    # random fragments "with non-zero activation": all activating, distinct
    assert set(_ids(s.score_random)) <= set(active[f].tolist()) and len(set(_ids(s.score_random))) == 5
    assert s.activating == [] and s.non_activating == [] and s.decile == []
    # every record carries the fragment's true activations (brute force) and its token text
    tokens = ix.t["tokens"].numpy()
    for r in s.explain + s.score_top + s.score_random:
        np.testing.assert_allclose(r.activations, acts[r.fragment, :, f], rtol=1e-6)
        assert r.tokens == [f"t{i}" for i in tokens[r.fragment]] and r.token_ids == tokens[r.fragment].tolist()
    # the explanation fragments are the 1st, 5th, ... highest by per-fragment max
    fmax = acts[:, :, f].max(1)
    by_max = active[f][np.argsort(-fmax[active[f]], kind="stable")]
    assert _ids(s.explain) == by_max[[0, 4, 8, 12, 16]].tolist()
    # the seed plays no part in this preset
    assert _ids(sample_feature(ix, f, "cunningham2023", seed=7).score_random) == _ids(s.score_random)


@pytest.mark.parametrize("preset", PRESETS)
def test_features_with_fewer_than_20_activating_fragments_are_skipped(ix, preset):
    assert ACTIVE[1] == MIN_FRAGMENTS - 1
    reason = sample_feature(ix, 1, preset, seed=0)
    assert isinstance(reason, str)
    assert "fewer than 20 activating fragments" in reason and "(19)" in reason
    # exactly 20 is enough
    assert not isinstance(sample_feature(ix, 3, preset, seed=0), str)


def test_bills2023_random_fragments_mix_activating_and_zero_samples(ix, brute):
    _, active = brute
    for f in SCORED:
        rand = set(ix.examples(f, "random")[0].tolist())
        zero = set(ix.examples(f, "zero")[0].tolist())
        cun = sample_feature(ix, f, "cunningham2023", seed=0)
        seen = set()
        for seed in range(20):
            s = sample_feature(ix, f, "bills2023", seed=seed)
            ids = _ids(s.score_random)
            assert len(ids) == 5 and len(set(ids)) == 5
            assert set(ids) <= rand | zero
            # the top splits are the paper's
            assert _ids(s.explain) == _ids(cun.explain) and _ids(s.score_top) == _ids(cun.score_top)
            # deterministic for a seed
            assert _ids(sample_feature(ix, f, "bills2023", seed=seed).score_random) == ids
            seen.add(tuple(ids))
        assert len(seen) > 1, "the seed should change the random fragments"


def test_bills2023_fraction_of_activating_fragments_matches_the_density_of_activating_fragments(ix, brute):
    _, active = brute
    for f in SCORED:
        act = set(active[f].tolist())
        drawn = [fr for seed in range(200) for fr in _ids(sample_feature(ix, f, "bills2023", seed=seed).score_random)]
        frac = np.mean([fr in act for fr in drawn])
        p = ACTIVE[f] / N_FRAGMENTS
        # 1000 draws: sd ≈ 0.016; the draws are seeded, so this bound cannot flake
        assert abs(frac - p) < 0.08, (f, frac, p)
    # Cunningham's random fragments are all activating, whatever the density
    assert all(fr in set(active[3].tolist()) for fr in _ids(sample_feature(ix, 3, "cunningham2023", 0).score_random))


@pytest.mark.parametrize("f", (0, 2))
def test_delphi_deciles_and_splits(ix, brute, f):
    acts, _ = brute
    s = sample_feature(ix, f, "delphi", seed=0)
    ids, maxes = ix.examples(f, "random")
    assert len(ids) == RANDOM == 100
    # per-fragment max, recomputed, and its decile by rank (maxima are distinct by construction)
    fmax = acts[ids, :, f].max(1)
    np.testing.assert_allclose(fmax, maxes, rtol=1e-6)
    assert len(np.unique(fmax)) == len(fmax)
    decile = (rankdata(fmax, method="ordinal").astype(int) - 1) // 10
    assert np.bincount(decile).tolist() == [10] * 10
    assert set(ids[decile == 9].tolist()) == set(ids[np.argsort(-fmax)[:10]].tolist())
    assert set(ids[decile == 0].tolist()) == set(ids[np.argsort(fmax)[:10]].tolist())
    want_explain, want_test, want_dec = [], [], []
    for d in range(10):
        members = [int(i) for i, dd in zip(ids, decile) if dd == d]  # in the sample's order
        want_explain += members[:2]
        want_test += members[2:7]
        want_dec += [d] * 5
    assert _ids(s.explain) == want_explain
    assert _ids(s.activating) == want_test
    assert s.decile == want_dec
    assert not set(_ids(s.explain)) & set(_ids(s.activating))
    assert max(np.bincount(s.decile, minlength=10)) <= 5
    # the recorded decile is the one of each record's own max
    for r, d in zip(s.activating, s.decile):
        assert decile[list(ids).index(r.fragment)] == d
    assert _ids(s.non_activating) == ix.examples(f, "zero")[0].tolist()
    assert all(float(np.max(r.activations)) <= 0 for r in s.non_activating)
    assert s.score_top == [] and s.score_random == []


def test_delphi_with_a_small_random_sample(ix):
    """20 activating fragments in the sample: 2 per decile, all explained on, none left to score."""
    s = sample_feature(ix, 3, "delphi", seed=0)
    assert len(s.explain) == 20 and s.activating == [] and s.decile == []
    assert sorted(_ids(s.explain)) == sorted(ix.examples(3, "random")[0].tolist())


def test_an_index_with_fewer_than_20_top_fragments_is_refused(root):
    small = FeatureIndex(build_protocol_index(root, top=10, random=RANDOM, zero=ZERO))
    for preset in PRESETS:
        with pytest.raises(SaexError, match=r"keeps 10 top fragments.*--top >= 20"):
            sample_feature(small, 0, preset, seed=0)
    # a feature that would be skipped anyway is still skipped, not refused
    assert isinstance(sample_feature(small, 1, "cunningham2023", seed=0), str)


def test_cunningham2023_needs_20_random_fragments(root):
    small = FeatureIndex(build_protocol_index(root, top=TOP, random=10, zero=5))
    with pytest.raises(SaexError, match=r"keeps 10 random activating fragments.*--random >= 20"):
        sample_feature(small, 0, "cunningham2023", seed=0)


def test_bills2023_with_small_samples_is_a_clear_error(root):
    small = FeatureIndex(build_protocol_index(root, top=TOP, random=10, zero=5))
    with pytest.raises(SaexError):
        sample_feature(small, 0, "bills2023", seed=0)


def test_unknown_preset(ix):
    with pytest.raises(SaexError, match="unknown preset 'paper'"):
        sample_feature(ix, 0, "paper", seed=0)
