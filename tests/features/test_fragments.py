"""make_fragments: windows, document attribution, one fragment per document, limit, errors."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from saex.errors import SaexError
from saex.features.fragments import make_fragments
from tests.features._helpers import C, L, T, all_windows, heldout_docs, heldout_tokens, majority


def _tokens(C_, T_):
    return (torch.arange(C_ * T_, dtype=torch.int32) * 13 + 5).remainder(1009).view(C_, T_)


@pytest.mark.parametrize("C_,T_,L_", [(3, 10, 3), (2, 8, 4), (4, 8, 8), (2, 5, 1), (1, 7, 2)])
def test_windows_are_non_overlapping_per_context(C_, T_, L_):
    tokens = _tokens(C_, T_)
    docs = torch.arange(C_, dtype=torch.int32).repeat_interleave(T_).view(C_, T_)
    f = make_fragments(tokens, docs, L_, one_per_document=False, limit=None, seed=0)
    W = T_ // L_
    assert f.n == C_ * W and f.rows_NL.shape == (C_ * W, L_) and f.rows_NL.dtype == np.int64
    np.testing.assert_array_equal(f.rows_NL, all_windows(C_, T_, L_))
    # no window crosses a context boundary, and none overlap
    assert (f.rows_NL // T_ == f.rows_NL[:, :1] // T_).all()
    assert len(set(f.rows_NL.ravel().tolist())) == f.rows_NL.size
    flat = tokens.reshape(-1).numpy()
    assert f.tokens_NL.dtype == torch.int32 and f.tokens_NL.shape == (C_ * W, L_)
    np.testing.assert_array_equal(f.tokens_NL.numpy(), flat[f.rows_NL])
    np.testing.assert_array_equal(f.doc_N, np.arange(C_).repeat(W))


def test_the_tail_of_a_context_is_dropped():
    # T = 10, L = 4: tokens 8 and 9 of each context belong to no window
    f = make_fragments(_tokens(2, 10), torch.zeros(2, 10, dtype=torch.int32), 4, False, None, 0)
    np.testing.assert_array_equal(f.rows_NL, [[0, 1, 2, 3], [4, 5, 6, 7], [10, 11, 12, 13], [14, 15, 16, 17]])


def test_majority_document_with_ties_to_the_smaller_id():
    docs = torch.tensor(
        [[1, 1, 2, 2, 5, 3, 3, 5], [7, 7, 7, 2, 9, 9, 9, 9], [4, 8, 8, 6, 6, 6, 2, 2]], dtype=torch.int32
    )
    f = make_fragments(_tokens(3, 8), docs, 4, one_per_document=False, limit=None, seed=0)
    # 1 vs 2 tie -> 1; 5 vs 3 tie -> 3 (the smaller, though 5 comes first); 7; 9; 8 (2 of 4);
    # 6 vs 2 tie -> 2 (the smaller, though 6 comes first)
    np.testing.assert_array_equal(f.doc_N, [1, 3, 7, 9, 8, 2])
    assert f.doc_N.dtype == np.int64
    f3 = make_fragments(_tokens(3, 8), docs, 3, one_per_document=False, limit=None, seed=0)
    # windows of 3: [1,1,2] [2,5,3] | [7,7,7] [2,9,9] | [4,8,8] [6,6,6]; [2,5,3] is a three-way tie -> 2
    np.testing.assert_array_equal(f3.doc_N, [1, 2, 7, 9, 8, 6])


def test_majority_matches_brute_force_on_the_synthetic_docs():
    docs = heldout_docs()
    f = make_fragments(heldout_tokens(), docs, L, False, None, 0)
    flat = docs.reshape(-1).numpy()
    np.testing.assert_array_equal(f.doc_N, [majority(flat[r]) for r in all_windows(C, T, L)])


def _owned_windows(L_=L):
    """doc -> the window indices (into all windows) it owns, by brute force."""
    flat = heldout_docs().reshape(-1).numpy()
    owned = defaultdict(list)
    for i, r in enumerate(all_windows(C, T, L_)):
        owned[majority(flat[r])].append(i)
    return owned


def test_one_per_document_keeps_one_owned_window_per_document():
    owned = _owned_windows()
    windows = all_windows(C, T, L)
    all_docs = set(heldout_docs().reshape(-1).tolist())
    assert all_docs - set(owned), "the data should have a document that owns no window"
    assert any(len(v) > 1 for v in owned.values()), "the data should have a document owning several windows"
    for seed in range(20):
        f = make_fragments(heldout_tokens(), heldout_docs(), L, True, None, seed)
        assert f.n == len(owned)
        assert sorted(f.doc_N.tolist()) == sorted(owned)  # exactly one per owning document
        assert Counter(f.doc_N.tolist()).most_common(1)[0][1] == 1
        first = f.rows_NL[:, 0]
        assert (np.diff(first) > 0).all(), "fragments come in store order"
        for rows, doc in zip(f.rows_NL, f.doc_N):
            i = int(rows[0]) // L  # T is a multiple of L here, so windows tile the rows
            np.testing.assert_array_equal(rows, windows[i])
            assert i in owned[int(doc)]
        flat_tok = heldout_tokens().reshape(-1).numpy()
        np.testing.assert_array_equal(f.tokens_NL.numpy(), flat_tok[f.rows_NL])


def test_one_per_document_is_deterministic_in_seed_and_varies_across_seeds():
    a = make_fragments(heldout_tokens(), heldout_docs(), L, True, None, 7)
    b = make_fragments(heldout_tokens(), heldout_docs(), L, True, None, 7)
    np.testing.assert_array_equal(a.rows_NL, b.rows_NL)
    np.testing.assert_array_equal(a.doc_N, b.doc_N)
    picks = {tuple(make_fragments(heldout_tokens(), heldout_docs(), L, True, None, s).rows_NL[:, 0]) for s in range(10)}
    assert len(picks) > 1, "different seeds should pick different windows"


def test_one_per_document_picks_every_owned_window_over_seeds():
    owned = _owned_windows()
    counts = Counter()
    n_seeds = 200
    for s in range(n_seeds):
        f = make_fragments(heldout_tokens(), heldout_docs(), L, True, None, s)
        counts.update((int(r) // L) for r in f.rows_NL[:, 0])
    for doc, wins in owned.items():
        got = [counts[w] for w in wins]
        assert sum(got) == n_seeds
        # uniform over the document's windows: each expected n_seeds / len(wins) times; loose bounds
        expected = n_seeds / len(wins)
        assert all(0.3 * expected <= g <= 2.0 * expected for g in got), (doc, got)


def test_limit():
    full = make_fragments(heldout_tokens(), heldout_docs(), L, False, None, 0)
    lim = make_fragments(heldout_tokens(), heldout_docs(), L, False, 5, 0)
    assert lim.n == 5
    np.testing.assert_array_equal(lim.rows_NL, full.rows_NL[:5])
    np.testing.assert_array_equal(lim.doc_N, full.doc_N[:5])
    np.testing.assert_array_equal(lim.tokens_NL, full.tokens_NL[:5])
    assert make_fragments(heldout_tokens(), heldout_docs(), L, False, 10_000, 0).n == full.n
    one = make_fragments(heldout_tokens(), heldout_docs(), L, True, None, 3)
    one_lim = make_fragments(heldout_tokens(), heldout_docs(), L, True, 4, 3)
    np.testing.assert_array_equal(one_lim.rows_NL, one.rows_NL[:4])
    with pytest.raises(SaexError, match="no fragments"):
        make_fragments(heldout_tokens(), heldout_docs(), L, False, 0, 0)


@pytest.mark.parametrize("length", [0, -1, T + 1, 1000])
def test_bad_length(length):
    with pytest.raises(SaexError, match="fragment-length"):
        make_fragments(heldout_tokens(), heldout_docs(), length, False, None, 0)


def test_length_bounds_are_accepted():
    assert make_fragments(heldout_tokens(), heldout_docs(), T, False, None, 0).n == C
    assert make_fragments(heldout_tokens(), heldout_docs(), 1, False, None, 0).n == C * T
