"""The feature example index against brute force: IndexBuilder on hand-made codes, and built indexes of a
synthetic store (standard, topk and signed linear dictionaries) checked example by example."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saex.errors import SaexError
from saex.features.fragments import make_fragments
from saex.features.index import FeatureIndex, IndexBuilder, moments_summary
from saex.stages.features import FeaturesConfig
from saex.stages.features import run as build_features
from tests.features._helpers import (
    HOOK,
    C,
    D,
    L,
    T,
    all_windows,
    encode_np,
    heldout_data,
    heldout_docs,
    heldout_tokens,
    linear_dict,
    majority,
    standard_sae,
    topk_sae,
    write_store,
)

TOP, RANDOM, ZERO = 3, 5, 4


# -- brute force ------------------------------------------------------------------------------------------
def brute_moments(c: np.ndarray) -> dict[str, np.ndarray]:
    """Per-column mean, var, skew = E[c^3]/Var^1.5, kurtosis = E[c^4]/Var^2 (raw moments), NaN at Var = 0."""
    c = c.astype(np.float64)
    mean = c.mean(0)
    var = (c**2).mean(0) - mean**2
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.where(var > 1e-12, (c**3).mean(0) / var**1.5, np.nan)
        kurt = np.where(var > 1e-12, (c**4).mean(0) / var**2, np.nan)
    return {"mean": mean, "var": var, "skew": skew, "kurtosis": kurt}


def check_examples(ids, vals, fmax_N, kind, K, where=""):
    """ids / per-fragment max of one kind against the brute-force per-fragment max of that feature."""
    active = np.flatnonzero(fmax_N > 0)
    inactive = np.flatnonzero(~(fmax_N > 0))
    assert ids.dtype == np.int64 and len(ids) == len(vals)
    assert len(set(ids.tolist())) == len(ids), f"{where}: repeated fragments"
    np.testing.assert_allclose(vals, fmax_N[ids], rtol=1e-5, atol=1e-5, err_msg=where)
    if kind == "top":
        expected = active[np.argsort(-fmax_N[active], kind="stable")][:K]
        np.testing.assert_array_equal(ids, expected, err_msg=where)
        assert (np.diff(vals) <= 0).all(), f"{where}: top not sorted descending"
    elif kind == "random":
        assert len(ids) == min(K, len(active)), where
        assert set(ids.tolist()) <= set(active.tolist()), where
    else:
        assert len(ids) == min(K, len(inactive)), where
        assert set(ids.tolist()) <= set(inactive.tolist()), where


def assert_top_is_well_separated(fmax_NF, K):
    """Precondition on the data: no near-ties among each feature's top K + 1 (so the top set is exact)."""
    for f in range(fmax_NF.shape[1]):
        a = np.sort(fmax_NF[:, f][fmax_NF[:, f] > 0])[::-1][: K + 1]
        assert (np.diff(a) < -1e-4).all() if len(a) > 1 else True, f"feature {f}: near-tied top values {a}"


# -- IndexBuilder on hand-made codes ----------------------------------------------------------------------
def _codes_NLF(N=30, L_=4, seed=0):
    """Codes with: f0 sparse positive, f1 never non-zero, f2 always positive, f3 signed, f4 one fragment."""
    rng = np.random.default_rng(seed)
    c = np.zeros((N, L_, 5), dtype=np.float32)
    on = rng.random((N, L_)) < 0.15
    c[..., 0] = np.where(on, rng.random((N, L_)) * 5 + 0.1, 0)
    c[..., 2] = rng.random((N, L_)) + 0.5
    c[..., 3] = rng.normal(size=(N, L_)) - 0.8
    c[7, 2, 4] = 2.5
    return torch.from_numpy(c)


def _build(codes_NLF, chunk, K=TOP, R=RANDOM, Z=ZERO, seed=0):
    b = IndexBuilder(codes_NLF.shape[2], K, R, Z, seed)
    N = codes_NLF.shape[0]
    for i, start in enumerate(range(0, N, chunk)):
        b.update(codes_NLF[start : start + chunk], torch.arange(start, min(N, start + chunk)), i)
    return b


@pytest.mark.parametrize("chunk", [1, 3, 7, 30, 1000])
def test_builder_matches_brute_force(chunk):
    codes = _codes_NLF()
    c = codes.double().numpy()
    N, L_, F = c.shape
    fmax = c.max(1)
    assert_top_is_well_separated(fmax, TOP)
    b = _build(codes, chunk)
    ex = b.examples()
    for f in range(F):
        for kind, K in (("top", TOP), ("random", RANDOM), ("zero", ZERO)):
            ids_row = ex[f"{kind}_ids"][f].numpy()
            ok = ids_row >= 0
            assert (ok[: ok.sum()]).all(), "valid slots come first, -1 padding last"
            check_examples(ids_row[ok], ex[f"{kind}_max"][f].numpy()[ok], fmax[:, f], kind, K, f"f{f} {kind}")
    s = b.stats()
    flat = c.reshape(N * L_, F)
    assert int(s["n_tokens"][0]) == N * L_
    np.testing.assert_array_equal(s["nonzero"].numpy(), (flat != 0).sum(0))
    np.testing.assert_array_equal(s["positive"].numpy(), (flat > 0).sum(0))
    np.testing.assert_array_equal(s["active_fragments"].numpy(), (fmax > 0).sum(0))
    np.testing.assert_allclose(s["max"].numpy(), flat.max(0), rtol=1e-6)
    np.testing.assert_allclose(s["moments"].numpy(), [(flat**m).sum(0) for m in (1, 2, 3, 4)], rtol=1e-6)
    # hand values for the special features
    assert s["nonzero"][1] == 0 and s["active_fragments"][1] == 0 and s["max"][1] == 0
    assert s["nonzero"][2] == N * L_ and s["active_fragments"][2] == N
    assert s["active_fragments"][4] == 1 and s["nonzero"][4] == 1 and s["max"][4] == pytest.approx(2.5)
    assert ex["top_ids"][4].tolist() == [7, -1, -1] and ex["random_ids"][4].tolist() == [7, -1, -1, -1, -1]
    assert (ex["top_ids"][1] == -1).all() and (ex["random_ids"][1] == -1).all()
    assert (ex["zero_ids"][2] == -1).all()


def test_builder_top_is_independent_of_chunking():
    codes = _codes_NLF(seed=3)
    ref = _build(codes, 1000)
    for chunk in (1, 2, 5, 11):
        b = _build(codes, chunk)
        assert torch.equal(b.examples()["top_ids"], ref.examples()["top_ids"])
        assert torch.equal(b.examples()["top_max"], ref.examples()["top_max"])
        for k in ("nonzero", "positive", "active_fragments", "max"):
            assert torch.equal(b.stats()[k], ref.stats()[k]), k
        torch.testing.assert_close(b.stats()["moments"], ref.stats()["moments"], rtol=1e-12, atol=1e-9)


def test_builder_random_takes_everything_when_r_is_large():
    codes = _codes_NLF()
    fmax = codes.numpy().max(1)
    b = _build(codes, chunk=4, R=100, Z=100)
    ex = b.examples()
    for f in range(codes.shape[2]):
        r = ex["random_ids"][f]
        z = ex["zero_ids"][f]
        assert sorted(r[r >= 0].tolist()) == np.flatnonzero(fmax[:, f] > 0).tolist()
        assert sorted(z[z >= 0].tolist()) == np.flatnonzero(fmax[:, f] <= 0).tolist()


def test_builder_samples_depend_on_seed_deterministically():
    codes = _codes_NLF()
    a, b, c = _build(codes, 4, seed=1), _build(codes, 4, seed=1), _build(codes, 4, seed=2)
    for k in ("random_ids", "zero_ids"):
        assert torch.equal(a.examples()[k], b.examples()[k])
    assert not torch.equal(a.examples()["random_ids"], c.examples()["random_ids"])


def test_builder_random_and_zero_samples_are_uniform():
    # 10 fragments; feature 0 active in all of them, feature 1 in none, feature 2 in the odd ones
    N = 10
    c = np.zeros((N, 2, 3), dtype=np.float32)
    c[:, 0, 0] = np.linspace(1, 2, N)
    c[1::2, 1, 2] = 1.0
    codes = torch.from_numpy(c)
    n_seeds, R = 200, 2
    pick = np.zeros((3, N), dtype=int)
    zero = np.zeros((3, N), dtype=int)
    for seed in range(n_seeds):
        b = _build(codes, chunk=3, R=R, Z=R, seed=seed)  # 4 chunks: keys come from several generators
        ex = b.examples()
        for f in range(3):
            np.add.at(pick[f], ex["random_ids"][f][ex["random_ids"][f] >= 0].numpy(), 1)
            np.add.at(zero[f], ex["zero_ids"][f][ex["zero_ids"][f] >= 0].numpy(), 1)
    for counts, members in (
        (pick[0], np.arange(N)),
        (zero[1], np.arange(N)),
        (pick[2], np.arange(1, N, 2)),
        (zero[2], np.arange(0, N, 2)),
    ):
        assert counts.sum() == n_seeds * R
        assert set(np.flatnonzero(counts)) == set(members.tolist())
        expected = n_seeds * R / len(members)
        got = counts[members]
        # every member picked, none far from its share; chi-square far below a 1e-6 tail
        assert got.min() >= 0.4 * expected and got.max() <= 1.8 * expected, got
        chi2 = ((got - expected) ** 2 / expected).sum()
        assert chi2 < 45, (chi2, got)
    assert pick[1].sum() == 0 and zero[0].sum() == 0


def test_moments_summary_hand_values():
    # one feature with values 0, 0, 1, 3 -> E = 1, E2 = 2.5, Var = 1.5, E3 = 7, E4 = 20.5; one constant feature
    m = torch.tensor([[4.0, 8.0], [10.0, 16.0], [28.0, 32.0], [82.0, 64.0]], dtype=torch.float64)
    s = moments_summary(m, 4)
    assert s["mean"].tolist() == [1.0, 2.0]
    assert s["var"][0] == pytest.approx(1.5) and s["var"][1] == 0
    assert s["skew"][0] == pytest.approx(7 / 1.5**1.5) and s["kurtosis"][0] == pytest.approx(20.5 / 1.5**2)
    assert np.isnan(s["skew"][1]) and np.isnan(s["kurtosis"][1])


# -- built indexes on a synthetic store --------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("features-index")
    X = heldout_data()
    train = torch.from_numpy(np.random.default_rng(9).normal(size=(2 * T, D)).astype(np.float32))
    # three held-out shards of 4 contexts: fragments read rows across shards
    store = write_store(
        root / "acts",
        train,
        torch.from_numpy(X),
        T=T,
        shard_rows=4 * T,
        tokens_CT=heldout_tokens(),
        docs_CT=heldout_docs(),
    )
    dicts = {"std": standard_sae(), "lin": linear_dict(), "topk": topk_sae()}
    for name, d in dicts.items():
        d.save(root / "dicts" / name)
    # preconditions on the data: no code within 1e-5 of a sign change, topk selections not near-tied
    for name, d in dicts.items():
        W = d.W_enc_DF.double().numpy()
        x = X.astype(np.float64) - (d.b_dec_D.double().numpy() if d.apply_b_dec_to_input else 0)
        pre = x @ W + d.b_enc_F.double().numpy()
        assert np.abs(pre).min() > 1e-5, name
        if d.architecture == "topk":
            s = np.sort(pre, 1)[:, ::-1]
            assert (s[:, d.k - 1] - s[:, d.k] > 1e-5).all()
    return {"root": root, "store": store, "X": X, "dicts": dicts}


def _build_index(setup, name, **kw):
    # every token counts unless a build says otherwise ("excl")
    opts = (
        dict(
            fragment_length=L,
            one_per_document=False,
            top=TOP,
            random=RANDOM,
            zero=ZERO,
            chunk=3,
            decode=False,
            exclude_first=0,
            exclude_special_tokens=False,
        )
        | kw
    )
    out = setup["root"] / ("out-" + name)
    cfg = FeaturesConfig(acts=str(setup["store"]), dicts=str(setup["root"] / "dicts"), out=str(out), **opts)
    build_features(cfg, progress=False)
    return {k: FeatureIndex(out / k) for k in setup["dicts"]}


@pytest.fixture(scope="module")
def built(setup):
    """name -> (options, indexes by dictionary); chunk 3 unless named."""
    return {
        "chunk3": _build_index(setup, "chunk3"),
        "chunk1": _build_index(setup, "chunk1", chunk=1),
        "chunk1000": _build_index(setup, "chunk1000", chunk=1000),
        "len5": _build_index(setup, "len5", fragment_length=5),
        "opd": _build_index(setup, "opd", one_per_document=True, seed=4),
        "limit": _build_index(setup, "limit", fragments=17, random=100, zero=100),
        # positions 0 and 1 of every context are left out: zero codes there, and not counted
        "excl": _build_index(setup, "excl", exclude_first=2),
    }


def _fragment_rows(kind):
    """The fragments each build should have, brute force (opd: via make_fragments, tested on its own)."""
    if kind == "len5":
        return all_windows(C, T, 5)
    if kind == "opd":
        return make_fragments(heldout_tokens(), heldout_docs(), L, True, None, 4).rows_NL
    if kind == "limit":
        return all_windows(C, T, L)[:17]
    return all_windows(C, T, L)


def _slots(kind):
    return (TOP, 100, 100) if kind == "limit" else (TOP, RANDOM, ZERO)


@pytest.mark.parametrize("kind", ["chunk3", "chunk1", "chunk1000", "len5", "opd", "limit", "excl"])
@pytest.mark.parametrize("dname", ["std", "lin", "topk"])
def test_index_matches_brute_force(setup, built, kind, dname):
    ix = built[kind][dname]
    d = setup["dicts"][dname]
    rows = _fragment_rows(kind)
    N, L_ = rows.shape
    codes = encode_np(d, setup["X"])
    kept = np.ones(len(codes), dtype=bool)
    if kind == "excl":
        kept = np.arange(len(codes)) % T >= 2
        codes = codes * kept[:, None]
    c_NLF = codes[rows]
    fmax = c_NLF.max(1)
    F = d.d_dict
    assert_top_is_well_separated(fmax, TOP)
    # fragments, tokens, documents
    assert ix.n_features == F and ix.fragment_length == L_ and ix.n_tokens == kept[rows].sum()
    assert kind != "excl" or ix.n_tokens < N * L_
    np.testing.assert_array_equal(ix.t["fragment_rows"].numpy(), rows[:, 0])
    flat_docs = heldout_docs().reshape(-1).numpy()
    np.testing.assert_array_equal(ix.t["fragment_docs"].numpy(), [majority(flat_docs[r]) for r in rows])
    flat_tok = heldout_tokens().reshape(-1).numpy()
    np.testing.assert_array_equal(ix.tokens(np.arange(N)).numpy(), flat_tok[rows])
    assert ix.meta["n_fragments"] == N and ix.meta["fragment_length"] == L_ and ix.meta["d_dict"] == F
    assert ix.meta["architecture"] == d.architecture and ix.meta["hook"] == HOOK
    K = dict(zip(("top", "random", "zero"), _slots(kind)))
    assert ix.slots == K
    # examples and their per-token activations
    for f in range(F):
        for kk in ("top", "random", "zero"):
            ids, vals = ix.examples(f, kk)
            check_examples(ids, vals, fmax[:, f], kk, K[kk], f"{dname} f{f} {kk}")
            acts = ix.activations(f, kk)
            assert acts.shape == (len(ids), L_) and acts.dtype == np.float32
            np.testing.assert_allclose(acts, c_NLF[ids, :, f], rtol=1e-5, atol=1e-5, err_msg=f"{dname} f{f} {kk}")
            np.testing.assert_array_equal(ix.tokens(ids).numpy(), flat_tok[rows[ids]])
    # statistics over every (kept) token of every fragment
    flat = c_NLF.reshape(N * L_, F)[kept[rows].reshape(-1)]
    np.testing.assert_array_equal(ix.t["nonzero"].numpy(), (flat != 0).sum(0))
    np.testing.assert_array_equal(ix.t["positive"].numpy(), (flat > 0).sum(0))
    np.testing.assert_array_equal(ix.t["active_fragments"].numpy(), (fmax > 0).sum(0))
    np.testing.assert_allclose(ix.t["max"].numpy(), flat.max(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ix.density(), (flat != 0).mean(0), rtol=1e-12)
    got, want = ix.moments(), brute_moments(flat)
    for key in ("mean", "var", "skew", "kurtosis"):
        np.testing.assert_allclose(got[key], want[key], rtol=2e-4, atol=1e-6, equal_nan=True, err_msg=key)


def test_special_features_by_hand(built):
    ix = built["chunk3"]["std"]
    N = C * (T // L)
    fire_frags = sorted({r // L for r in (5, 13, 14, 42, 97, 150, 151, 190)})
    # feature 0 fires on the FIRE_ROWS only
    assert ix.t["nonzero"][0] == 8 and ix.t["active_fragments"][0] == len(fire_frags)
    ids, _ = ix.examples(0, "random")
    assert len(ids) == min(RANDOM, len(fire_frags)) and set(ids) <= set(fire_frags)
    # feature 1 never fires: no top or random examples, ZERO non-activating ones, all-zero activations
    assert ix.t["nonzero"][1] == 0 and ix.t["max"][1] == 0
    assert len(ix.examples(1, "top")[0]) == 0 and len(ix.examples(1, "random")[0]) == 0
    assert len(ix.examples(1, "zero")[0]) == ZERO and not ix.activations(1, "zero").any()
    assert ix.density()[1] == 0 and np.isnan(ix.moments()["skew"][1])
    # feature 2 always fires: no non-activating examples, every token non-zero
    assert ix.t["nonzero"][2] == N * L and ix.t["active_fragments"][2] == N
    assert len(ix.examples(2, "zero")[0]) == 0 and ix.density()[2] == 1.0
    assert (ix.activations(2, "top") > 0).all()
    # signed: feature 2 never positive (but non-zero everywhere), feature 3 always positive
    lin = built["chunk3"]["lin"]
    assert lin.t["positive"][2] == 0 and lin.t["nonzero"][2] == N * L and lin.t["active_fragments"][2] == 0
    assert lin.t["max"][2] < 0 and len(lin.examples(2, "top")[0]) == 0
    zids, zmax = lin.examples(2, "zero")
    assert len(zids) == ZERO and (zmax < 0).all() and (lin.activations(2, "zero") < 0).all()
    assert lin.t["active_fragments"][3] == N and len(lin.examples(3, "zero")[0]) == 0
    # some signed features have negative token values inside their activating top fragments
    assert any((lin.activations(f, "top") < 0).any() for f in (0, 1))


def test_random_set_is_the_whole_activating_set_when_r_is_large(setup, built):
    # the "limit" build keeps 100 random / 100 zero slots over 17 fragments
    for dname, ix in built["limit"].items():
        fmax = encode_np(setup["dicts"][dname], setup["X"])[all_windows(C, T, L)[:17]].max(1)
        for f in range(ix.n_features):
            assert sorted(ix.examples(f, "random")[0]) == np.flatnonzero(fmax[:, f] > 0).tolist()
            assert sorted(ix.examples(f, "zero")[0]) == np.flatnonzero(fmax[:, f] <= 0).tolist()


@pytest.mark.parametrize("dname", ["std", "lin", "topk"])
def test_result_does_not_depend_on_chunk(built, dname):
    ref = built["chunk3"][dname]
    for kind in ("chunk1", "chunk1000"):
        ix = built[kind][dname]
        for key in ("top_ids", "nonzero", "positive", "active_fragments", "n_tokens", "fragment_rows", "tokens"):
            assert torch.equal(ix.t[key], ref.t[key]), (kind, key)
        valid = ref.t["top_ids"] >= 0  # the values of empty (-1) slots are padding, not part of the result
        torch.testing.assert_close(ix.t["top_max"][valid], ref.t["top_max"][valid], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ix.t["max"], ref.t["max"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ix.t["moments"], ref.t["moments"], rtol=1e-6, atol=1e-6)
        for f in range(ix.n_features):
            np.testing.assert_allclose(ix.activations(f, "top"), ref.activations(f, "top"), rtol=1e-6, atol=1e-6)
        # chunk is part of the identity: the random samples' keys are drawn per chunk
        assert ix.meta["identity"]["options"]["chunk"] != ref.meta["identity"]["options"]["chunk"]


def test_csr_layout(built):
    for ix in built["chunk3"].values():
        ptr, idx, val = ix.t["tok_ptr"], ix.t["tok_idx"], ix.t["tok_val"]
        assert ptr[0] == 0 and ptr[-1] == len(idx) == len(val) and (ptr[1:] >= ptr[:-1]).all()
        assert (val != 0).all()
        for f in range(ix.n_features):
            seg = idx[ptr[f] : ptr[f + 1]]
            assert (seg[1:] > seg[:-1]).all()
            assert (seg < sum(ix.slots.values()) * ix.fragment_length).all()


def test_index_json(setup, built):
    meta = json.loads((setup["root"] / "out-chunk3" / "std" / "index.json").read_text())
    assert meta["format"] == "saex.feature_index" and meta["dictionary"]["name"] == "std"
    assert meta["identity"]["hook"] == HOOK and meta["store"] == str(setup["store"])
    assert meta["identity"]["options"]["top"] == TOP and meta["identity"]["options"]["chunk"] == 3
    assert meta["config"]["chunk"] == 3


# -- FeatureIndex errors ------------------------------------------------------------------------------------
def test_feature_index_refuses_a_non_index_folder(tmp_path):
    with pytest.raises(SaexError, match="not a feature index"):
        FeatureIndex(tmp_path)
    (tmp_path / "index.json").write_text("{}")
    with pytest.raises(SaexError, match="not a feature index"):
        FeatureIndex(tmp_path)
    with pytest.raises(SaexError, match="not a feature index"):
        FeatureIndex(tmp_path / "missing")


def test_feature_index_out_of_range_and_bad_kind(built):
    ix = built["chunk3"]["std"]
    for f in (-1, ix.n_features, 10_000):
        with pytest.raises(SaexError, match="out of range"):
            ix.examples(f, "top")
        with pytest.raises(SaexError, match="out of range"):
            ix.activations(f, "random")
    with pytest.raises(SaexError, match="unknown example kind"):
        ix.examples(0, "bottom")
    with pytest.raises(SaexError, match="no-decode"):
        ix.token_strings([0])


def test_a_damaged_index_is_one_error(tmp_path):
    """A truncated tensors file or metadata: one error naming the index, not a safetensors / JSON traceback."""
    from saex.errors import SaexError
    from saex.features.index import INDEX_JSON, INDEX_TENSORS, FeatureIndex

    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / INDEX_JSON).write_text("{}")
    (folder / INDEX_TENSORS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated")
    with pytest.raises(SaexError, match=rf"the feature index {folder} is damaged"):
        FeatureIndex(folder)
    (folder / INDEX_JSON).write_text('{"trunc')
    with pytest.raises(SaexError, match="is damaged"):
        FeatureIndex(folder)
