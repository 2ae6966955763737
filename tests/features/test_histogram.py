"""Token histograms (paper Fig. 4 left / Fig. 11): hand-computed bins and stacks, the "other" series, the
subsampling bound, the index source and the exact store pass (against a brute-force numpy recount)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saex.features.histogram import (
    OTHER,
    dimension_values,
    feature_values,
    histogram_from_index,
    histograms_from_store,
    token_histogram,
)
from tests.features._helpers import HOOK, C, T, heldout_data, heldout_tokens, standard_sae, write_store


def _counts(h) -> dict:
    return {s["label"]: s["counts"] for s in h["series"]}


def test_hand_computed_bins_and_stack():
    # max 10 -> edges 0, 1, ..., 10; bins right-closed: 1.0 falls in (0, 1], 10 in (9, 10]
    vals = [1.0, 0.5, 10.0, 2.5, 2.0, 0.0, -3.0, 9.5, 5.0, 5.0]
    toks = [7, 7, 7, 8, 8, 9, 9, 3, 3, 4]
    h = token_histogram(vals, toks, {7: "'", 8: "s", 3: "x", 4: "y"}, top_tokens=2)
    assert h["edges"] == pytest.approx(list(np.arange(11.0)))
    assert h["n"] == h["total"] == 8  # the zero and the negative value are not counted
    c = _counts(h)
    # 7 (3 times) then, on a tie of 2 between 3 and 8, the smaller id 3
    assert [s["label"] for s in h["series"]] == ["'", "x", OTHER]
    assert [s["other"] for s in h["series"]] == [False, False, True]
    assert c["'"] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert c["x"] == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    assert c[OTHER] == [0, 1, 1, 0, 1, 0, 0, 0, 0, 0]  # 2.0 (8), 2.5 (8), 5.0 (4)
    assert sum(map(sum, c.values())) == 8


def test_other_is_zero_when_few_tokens_and_empty_input():
    h = token_histogram([1.0, 2.0], [5, 6], None)
    assert [s["label"] for s in h["series"]] == ["5", "6", OTHER]
    assert h["series"][-1]["counts"] == [0] * 10
    e = token_histogram([0.0, -1.0], [1, 2])
    assert (
        e["n"] == e["total"] == 0
        and e["edges"] == [0.0] * 11
        and e["series"] == [{"label": OTHER, "other": True, "counts": [0] * 10}]
    )


def test_subsampling_bound_and_seed():
    rng = np.random.default_rng(0)
    vals = rng.random(12_000) + 0.01
    toks = rng.integers(0, 20, 12_000)
    h = token_histogram(vals, toks, max_n=5000, seed=3)
    assert h["total"] == 12_000 and h["n"] == 5000
    assert sum(sum(s["counts"]) for s in h["series"]) == 5000
    assert h == token_histogram(vals, toks, max_n=5000, seed=3)
    assert h != token_histogram(vals, toks, max_n=5000, seed=4)
    assert token_histogram(vals[:100], toks[:100], max_n=5000)["n"] == 100


def test_store_pass_matches_brute_force(tmp_path):
    X = heldout_data()
    tok = heldout_tokens()
    store = write_store(
        tmp_path / "acts", torch.from_numpy(X[: 2 * T]), torch.from_numpy(X), T=T, shard_rows=4 * T, tokens_CT=tok
    )
    from saex.store.reader import ActivationStore

    s = ActivationStore(store)
    d = standard_sae()
    with torch.no_grad():
        codes = d.encode(torch.from_numpy(X)).numpy()
    # no subsampling: exact counts of every positive value, over shards and row chunks of 2 contexts
    out = histograms_from_store(s, HOOK, feature_values(d, [0, 3]), 2, max_n=None, chunk_rows=2 * T)
    flat_tok = tok.reshape(-1).numpy()
    for i, f in enumerate([0, 3]):
        assert out.histograms[i] == token_histogram(codes[:, f], flat_tok, max_n=None, source="held-out store")
        per_ctx = codes[:, f].reshape(C, T)
        np.testing.assert_allclose(out.context_max_CK[:, i].numpy(), per_ctx.max(1), rtol=1e-6)
        np.testing.assert_array_equal(out.context_argmax_CK[:, i].numpy(), per_ctx.argmax(1))
    # with a bound: at most max_n kept, the total still exact; a signed dimension (-x[:, 1], its negative part)
    out = histograms_from_store(s, HOOK, dimension_values([1], [-1]), 1, max_n=20)
    h = out.histograms[0]
    assert h["total"] == int((X[:, 1] < 0).sum()) and h["n"] == 20
    assert h["edges"][-1] <= -X[:, 1].min() + 1e-6


def test_from_index(tmp_path):
    from saex.features.index import FeatureIndex
    from saex.stages.features import FeaturesConfig
    from saex.stages.features import run as build_features
    from tests.features._helpers import heldout_docs

    X = heldout_data()
    store = write_store(
        tmp_path / "acts",
        torch.from_numpy(X[: 2 * T]),
        torch.from_numpy(X),
        T=T,
        shard_rows=4 * T,
        tokens_CT=heldout_tokens(),
        docs_CT=heldout_docs(),
    )
    standard_sae().save(tmp_path / "dicts" / "std")
    build_features(
        FeaturesConfig(
            acts=str(store),
            dicts=str(tmp_path / "dicts"),
            out=str(tmp_path / "ix"),
            fragment_length=4,
            one_per_document=False,
            random=100,
            decode=False,
        ),
        progress=False,
    )
    ix = FeatureIndex(tmp_path / "ix" / "std")
    h = histogram_from_index(ix, 0)
    # feature 0 fires at FIRE_ROWS only; the random sample keeps every activating fragment here
    acts = ix.activations(0, "random")
    toks = ix.tokens(ix.examples(0, "random")[0]).numpy()
    assert h == token_histogram(acts, toks, source=h["source"])
    assert h["total"] == 8 and "index random sample" in h["source"]
