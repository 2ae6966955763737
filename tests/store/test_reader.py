"""``ActivationStore``: the shuffled batch stream, random row access, token alignment and bad stores."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from saex.errors import SaexError
from saex.lm.loading import load_model
from saex.store.reader import ActivationStore
from tests.store._helpers import MLP, RESID

T = 16
STORE = dict(tokens=2048, dtype="float32")  # train: 8 full shards of 256 rows; held-out: 13 contexts (208 rows)
N_TRAIN, SHARD_ROWS = 2048, 256


@pytest.fixture(scope="module")
def store_path(make_store):
    return make_store(**STORE)


@pytest.fixture
def store(store_path):
    return ActivationStore(store_path)


def _all_rows(store, split, hook):
    return torch.cat([store.load_shard(split, i, hook) for i in range(len(store.shards(split)))])


def _multiset(x: torch.Tensor) -> Counter:
    return Counter(r.numpy().tobytes() for r in x)


def _row_shards(store, split, hook) -> dict[bytes, set[int]]:
    """Which shards hold each distinct row (a row can repeat: position 0 of equal first tokens)."""
    where: dict[bytes, set[int]] = {}
    for i in range(len(store.shards(split))):
        for r in store.load_shard(split, i, hook):
            where.setdefault(r.numpy().tobytes(), set()).add(i)
    return where


def test_store_description(store):
    assert store.complete and store.hooks == [RESID, MLP]
    assert store.width(RESID) == 32 and store.width(MLP) == 48 and store.context_length == T
    assert store.n_rows("train") == N_TRAIN and store.n_rows("heldout") == 208
    assert [s["rows"] for s in store.shards("train")] == [SHARD_ROWS] * 8
    assert store.verify_all() == 9


# -- batches ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size,shards_in_buffer", [(64, 3), (256, 1), (128, 4), (32, 8), (2048, 8)])
def test_one_epoch_yields_every_row_exactly_once(store, batch_size, shards_in_buffer):
    full = _all_rows(store, "train", RESID)
    batches = list(store.batches("train", RESID, batch_size, seed=1, epoch=0, shards_in_buffer=shards_in_buffer))
    assert len(batches) == N_TRAIN // batch_size
    assert all(b.shape == (batch_size, 32) and b.dtype == torch.float32 for b in batches)
    got = torch.cat(batches)
    assert _multiset(got) == _multiset(full)
    assert not torch.equal(got, full), "rows must come shuffled"


def test_every_row_once_for_the_mlp_hook_and_heldout(store):
    for split, hook, bs in (("train", MLP, 64), ("heldout", RESID, 16), ("heldout", MLP, 52)):
        got = torch.cat(list(store.batches(split, hook, bs, seed=3)))
        assert got.shape[1] == store.width(hook)
        assert _multiset(got) == _multiset(_all_rows(store, split, hook))


def test_drop_last_drops_each_buffers_leftover_only(store):
    full = _multiset(_all_rows(store, "train", RESID))
    # 8 shards in buffers of 3, 3, 2 -> 768, 768, 512 rows; batches of 100 leave 68, 68, 12 behind
    kept = list(store.batches("train", RESID, 100, shards_in_buffer=3))
    assert len(kept) == 7 + 7 + 5 and all(len(b) == 100 for b in kept)
    got = _multiset(torch.cat(kept))
    assert not got - full  # no row invented or repeated
    every = list(store.batches("train", RESID, 100, shards_in_buffer=3, drop_last=False))
    assert sorted(len(b) for b in every) == [12] + [68] * 2 + [100] * 19
    assert _multiset(torch.cat(every)) == full


def test_batches_are_deterministic_per_seed_and_epoch(store):
    def run(**kw):
        return list(store.batches("train", RESID, 64, shards_in_buffer=2, **kw))

    a, b = run(seed=0, epoch=0), run(seed=0, epoch=0)
    assert len(a) == len(b) == 32 and all(torch.equal(x, y) for x, y in zip(a, b))
    for other in (run(seed=0, epoch=1), run(seed=1, epoch=0)):
        assert len(other) == 32 and not torch.equal(torch.cat(a), torch.cat(other))
        assert _multiset(torch.cat(a)) == _multiset(torch.cat(other))
        assert not torch.equal(a[0], other[0])


@pytest.mark.parametrize("skip", [0, 1, 5, 11, 12, 13, 23, 24, 31, 32, 40])
def test_skip_batches_yields_exactly_the_suffix(store, skip, monkeypatch):
    full = list(store.batches("train", RESID, 64, seed=7, epoch=2, shards_in_buffer=3))
    assert len(full) == 32  # buffers of 768, 768, 512 rows -> 12 + 12 + 8 batches
    loaded = []
    real = store.load_shard
    monkeypatch.setattr(store, "load_shard", lambda *a, **k: loaded.append(a[1]) or real(*a, **k))
    rest = list(store.batches("train", RESID, 64, seed=7, epoch=2, shards_in_buffer=3, skip_batches=skip))
    assert len(rest) == max(0, 32 - skip)
    assert all(torch.equal(x, y) for x, y in zip(rest, full[skip:]))
    # whole buffers that are skipped are not read at all
    skipped_shards = 3 * (skip >= 12) + 3 * (skip >= 24) + 2 * (skip >= 32)
    assert len(loaded) == 8 - skipped_shards


def test_one_shard_per_buffer_still_covers_all_rows(store):
    where = _row_shards(store, "train", RESID)
    batches = list(store.batches("train", RESID, 64, shards_in_buffer=1))
    assert _multiset(torch.cat(batches)) == _multiset(_all_rows(store, "train", RESID))
    for b in batches:  # bounded memory: each batch comes from a single shard
        assert set.intersection(*(where[r.numpy().tobytes()] for r in b)), "a batch mixes shards"
    mixed = list(store.batches("train", RESID, 64, shards_in_buffer=4))
    assert any(not set.intersection(*(where[r.numpy().tobytes()] for r in b)) for b in mixed), (
        "with several shards in the buffer, batches should mix them"
    )


@pytest.mark.parametrize("batch_size", [0, -4])
def test_batch_size_must_be_positive(store, batch_size):
    with pytest.raises(SaexError, match=str(batch_size)):
        list(store.batches("train", RESID, batch_size))


def test_unknown_hook_or_split_lists_what_the_store_has(store):
    with pytest.raises(SaexError) as err:
        list(store.batches("train", "blocks.3.hook_resid_post", 64))
    assert "blocks.3.hook_resid_post" in str(err.value) and RESID in str(err.value) and MLP in str(err.value)
    with pytest.raises(SaexError) as err:
        list(store.batches("test", RESID, 64))
    assert "'test'" in str(err.value) and "train" in str(err.value) and "heldout" in str(err.value)
    for call in (
        lambda: store.rows("validation", RESID, [0]),
        lambda: store.load_shard("train", 0, "nope"),
        lambda: store.width("nope"),
        lambda: store.tokens("nope"),
    ):
        with pytest.raises(SaexError):
            call()


@pytest.mark.parametrize(
    "kw",
    [dict(shards_in_buffer=0), dict(shards_in_buffer=-1), dict(skip_batches=-1)],
    ids=["buffer0", "buffer-1", "skip-1"],
)
def test_invalid_stream_arguments_raise(store, kw):
    with pytest.raises(SaexError):
        list(store.batches("train", RESID, 64, **kw))


# -- random access ---------------------------------------------------------------------------------------


def test_rows_equal_indexing_the_concatenated_shards(store):
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.integers(0, N_TRAIN, 300), [2047, 0, 256, 255, 1024, 1023, 5, 5]])
    assert len(np.unique(idx // SHARD_ROWS)) == 8 and not np.all(np.diff(idx) >= 0)
    for hook in (RESID, MLP):
        full = _all_rows(store, "train", hook)
        got = store.rows("train", hook, idx)
        assert got.shape == (len(idx), store.width(hook)) and got.dtype == torch.float32
        assert torch.equal(got, full[torch.from_numpy(idx)])
        assert torch.equal(store.rows("train", hook, list(idx[:7])), full[torch.from_numpy(idx[:7])])
    held = _all_rows(store, "heldout", MLP)
    hidx = rng.permutation(208)[:50]
    assert torch.equal(store.rows("heldout", MLP, hidx), held[torch.from_numpy(hidx)])
    assert store.rows("train", RESID, [3], dtype=torch.float64).dtype == torch.float64
    assert store.rows("train", RESID, []).shape == (0, 32)


@pytest.mark.parametrize("idx", [[N_TRAIN], [-1], [0, 10_000], [5, N_TRAIN + 3, 7]])
def test_rows_out_of_range(store, idx):
    with pytest.raises(SaexError, match="out of range"):
        store.rows("train", RESID, idx)


def test_tokens_align_with_activation_rows(store, tiny_llama):
    tokens = store.tokens("train")
    assert tokens.shape == (N_TRAIN // T, T) and tokens.dtype == torch.int32
    assert torch.equal(tokens, torch.cat([store.load_tokens("train", i)[0] for i in range(8)]))
    model = load_model(str(tiny_llama)).model
    flat = tokens.view(-1)
    for c in (0, 17, 64, 127):  # contexts in shards 0, 1, 4, 7
        rows = np.arange(c * T, (c + 1) * T)
        assert torch.equal(flat[torch.from_numpy(rows)], tokens[c])
        with torch.no_grad():
            ref = model(input_ids=tokens[c : c + 1].long(), output_hidden_states=True).hidden_states[2][0]
        torch.testing.assert_close(store.rows("train", RESID, rows), ref, rtol=1e-5, atol=1e-6)
    # one row off would not match
    with torch.no_grad():
        ref = model(input_ids=tokens[17:18].long(), output_hidden_states=True).hidden_states[2][0]
    assert not torch.allclose(store.rows("train", RESID, np.arange(17 * T + 1, 18 * T + 1)), ref, atol=1e-3)


# -- not a store -----------------------------------------------------------------------------------------


def test_folder_without_manifest(tmp_path):
    with pytest.raises(SaexError, match="not an activation store"):
        ActivationStore(tmp_path)
    with pytest.raises(SaexError, match="not an activation store"):
        ActivationStore(tmp_path / "missing")


@pytest.mark.parametrize(
    "content,match",
    [
        ({"name": "my web app", "icons": []}, "not a saex activation-store manifest"),
        ({"format": "other.store", "format_version": 1}, "not a saex activation-store manifest"),
        ({"format": "saex.activation_store", "format_version": 2}, "version 2"),
    ],
)
def test_foreign_manifest(tmp_path, content, match):
    (tmp_path / "manifest.json").write_text(json.dumps(content))
    with pytest.raises(SaexError, match=match):
        ActivationStore(tmp_path)


@pytest.mark.parametrize("text", ["not json {", "[1, 2]"], ids=["garbage", "list"])
def test_unreadable_manifest(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(SaexError):
        ActivationStore(tmp_path)


def test_verify_false_reads_without_checksums(store_path, copy_store):
    out = copy_store(store_path)
    path = out / "train" / "shard-00003.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(SaexError, match="corrupted"):
        ActivationStore(out).load_shard("train", 3, MLP)
    x = ActivationStore(out, verify=False).load_shard("train", 3, MLP)
    assert x.shape == (SHARD_ROWS, 48)


# -- row filter (attention sinks, separators) ---------------------------------------------------------------


def _expected_keep(store, split, first, special):
    """The kept rows computed from the manifest and the stored tokens directly."""
    tok = store.tokens(split).reshape(-1)
    pos = torch.arange(len(tok)) % store.context_length
    p = store.manifest["packing"]
    ids = [i for i in (p["separator_id"], p.get("bos_id")) if i is not None]
    keep = pos >= first
    if special:
        for i in ids:
            keep &= tok != i
    return keep


@pytest.mark.parametrize("first, special", [(1, True), (0, True), (3, False), (0, False)])
def test_kept_rows_are_the_positions_and_tokens_named(store, first, special):
    from saex.store.reader import RowFilter

    expected = _expected_keep(store, "train", first, special)
    got = store.kept_rows("train", RowFilter(first, special, 0.0), RESID)
    assert np.array_equal(got, expected.nonzero().flatten().numpy())
    if special:  # the corpus puts separators inside contexts too, so the test sees both kinds of exclusion
        assert (_expected_keep(store, "train", first, False) & ~expected).any()


def test_filtered_epoch_yields_every_kept_row_once_and_resumes(store):
    from saex.store.reader import RowFilter

    rows = RowFilter(1, True, 0.0)
    keep = _expected_keep(store, "train", 1, True)
    full = list(store.batches("train", RESID, 32, seed=3, shards_in_buffer=3, drop_last=False, rows=rows))
    assert _multiset(torch.cat(full)) == _multiset(_all_rows(store, "train", RESID)[keep])
    rest = list(
        store.batches("train", RESID, 32, seed=3, shards_in_buffer=3, drop_last=False, rows=rows, skip_batches=7)
    )
    assert len(rest) == len(full) - 7 and all(torch.equal(a, b) for a, b in zip(rest, full[7:]))


def test_row_filter_beyond_the_context_is_refused(store):
    from saex.store.reader import RowFilter

    with pytest.raises(SaexError, match=r"--exclude-first must be in 0\.\.15 .* got 16"):
        store.kept_rows("train", RowFilter(16, False, 0.0), RESID)


def test_norm_limit_is_the_ratio_times_the_median_of_the_first_train_shard(store):
    """Rows above max_norm_ratio × the median norm (of the position- and token-kept rows of train shard 0)
    are left out: checked against numpy on the stored rows, for a ratio that leaves some out."""
    from saex.store.reader import RowFilter

    x0 = store.load_shard("train", 0, RESID).double()
    keep0 = _expected_keep(store, "train", 1, True).reshape(len(store.shards("train")), -1)[0]
    median = x0[keep0].norm(dim=1).median().item()
    ratio = 1.2  # the tiny model's rows are close in norm: a low ratio so that some are over the limit
    rows = RowFilter(1, True, ratio)
    assert store.norm_limit(RESID, rows) == pytest.approx(ratio * median, rel=1e-6)
    x = _all_rows(store, "train", RESID).double()
    expected = _expected_keep(store, "train", 1, True) & (x.norm(dim=1) <= ratio * median)
    assert 0 < int(expected.sum()) < int(_expected_keep(store, "train", 1, True).sum())
    assert np.array_equal(store.kept_rows("train", rows, RESID), expected.nonzero().flatten().numpy())
    got = torch.cat(list(store.batches("train", RESID, 32, seed=1, drop_last=False, rows=rows)))
    assert _multiset(got) == _multiset(x.float()[expected])
    with pytest.raises(SaexError, match=r"--max-norm-ratio must be 0 \(off\) or a number above 1, got 0\.5"):
        store.kept_rows("train", RowFilter(1, True, 0.5), RESID)


def _edit_manifest(path, edit) -> None:
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_an_edited_manifest_is_detected_on_open_and_repaired_by_the_harvest(
    store_path, copy_store, tiny_llama, shared_corpus
):
    """A shard's row count changed by hand: the store refuses to open (saex store --verify with it), naming the
    shard; counts changed consistently but not matching the file: refused when the shard is opened; the same
    `saex harvest` rebuilds the shard, and the store is the original again."""
    from saex.stages.harvest import run as harvest
    from tests.store._helpers import cfg, snapshot

    original = snapshot(store_path)
    path = copy_store(store_path)

    def rows(m):
        m["splits"]["train"]["shards"][2]["rows"] -= 5

    _edit_manifest(path, rows)
    with pytest.raises(
        SaexError, match=r"manifest.json is damaged: shard train/shard-00002.safetensors records \d+ rows"
    ):
        ActivationStore(path)

    def both(m):
        s = m["splits"]["train"]["shards"][2]
        s["contexts"] -= 1
        s["rows"] = s["contexts"] * T

    path2 = copy_store(store_path, "acts2")
    _edit_manifest(path2, both)
    store = ActivationStore(path2)
    with pytest.raises(SaexError, match=r"shard-00002.safetensors does not match its manifest entry: blocks"):
        store.load_shard("train", 2, RESID)
    shards = json.loads((store_path / "manifest.json").read_text())["splits"]
    for p in (path, path2):
        harvest(cfg(p, tiny_llama, shared_corpus, **STORE), progress=False)
        got = snapshot(p)
        assert {k: v for k, v in got.items() if k != "manifest.json"} == {
            k: v for k, v in original.items() if k != "manifest.json"
        }
        assert json.loads((p / "manifest.json").read_text())["splits"] == shards
        ActivationStore(p).verify_all()
