"""Packing and splitting, checked against hand-written token streams."""

import numpy as np
import pytest

from saex.data.documents import Document
from saex.data.packing import pack, resolve_packing, split_of
from saex.errors import SaexError
from tests._support import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def all_train(n):
    """Keys that all land in the train split for seed 0 and held-out fraction 0.5."""
    keys = (f"k{i}" for i in range(10_000))
    return [k for k in keys if split_of(k, 0, 0.5) == "train"][:n]


def test_separator_policy_matches_hand_packed_stream(tok):
    packing = resolve_packing(tok, context_length=4, bos_policy="separator")
    sep = tok.convert_tokens_to_ids("<|endoftext|>")
    assert (packing.separator_id, packing.separator_token, packing.bos_policy) == (sep, "<|endoftext|>", "separator")
    k1, k2, k3 = all_train(3)
    docs = [Document(k1, "the king"), Document(k2, "a river of light"), Document(k3, "mary")]
    ctx = list(pack(iter(docs), tok, packing, "train", seed=0, heldout_fraction=0.5))
    stream = [sep, *ids(tok, "the king"), sep, *ids(tok, "a river of light"), sep, *ids(tok, "mary")]
    doc_of = [0, 0, 0, 1, 1, 1, 1, 1, 2, 2]
    assert len(stream) == 10
    assert [c.tokens_T.tolist() for c in ctx] == [stream[0:4], stream[4:8]]  # partial tail dropped
    assert [c.doc_ids_T.tolist() for c in ctx] == [doc_of[0:4], doc_of[4:8]]
    assert all(c.tokens_T.dtype == np.int32 for c in ctx)


def test_bos_policy_opens_every_context_with_bos(tok):
    packing = resolve_packing(tok, context_length=4, bos_policy="bos")
    bos, sep = tok.bos_token_id, packing.separator_id
    k1, k2 = all_train(2)
    docs = [Document(k1, "the king of"), Document(k2, "a river")]
    ctx = list(pack(iter(docs), tok, packing, "train", seed=0, heldout_fraction=0.5))
    stream = [sep, *ids(tok, "the king of"), sep, *ids(tok, "a river")]
    assert [c.tokens_T.tolist() for c in ctx] == [[bos, *stream[0:3]], [bos, *stream[3:6]]]
    assert [c.doc_ids_T.tolist() for c in ctx] == [[-1, 0, 0, 0], [-1, 0, 1, 1]]


def test_auto_policy_follows_the_tokenizer(tok):
    assert resolve_packing(tok, 8).bos_policy == "separator"
    assert resolve_packing(build_tokenizer(add_bos=True), 8).bos_policy == "bos"


def test_separator_falls_back_to_eos_when_no_endoftext():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel(vocab={"<s>": 0, "</s>": 1, "<unk>": 2, "x": 3}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    p = resolve_packing(fast, 8)
    assert (p.separator_token, p.separator_id) == ("</s>", 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"context_length": 65, "max_context": 64}, "longer than the model allows"),
        ({"context_length": 1}, "too short"),
        ({"context_length": 8, "bos_policy": "always"}, "unknown BOS policy 'always'"),
        ({"context_length": 8, "separator": "<nope>"}, "'<nope>' is not in the tokenizer"),
    ],
)
def test_bad_packing_arguments(tok, kwargs, match):
    with pytest.raises(SaexError, match=match):
        resolve_packing(tok, **kwargs)


def test_split_is_disjoint_seeded_order_free_and_near_the_fraction():
    keys = [f"doc-{i}" for i in range(20_000)]
    a = {k: split_of(k, 3, 0.1) for k in keys}
    assert {k: split_of(k, 3, 0.1) for k in reversed(keys)} == a
    frac = sum(v == "heldout" for v in a.values()) / len(keys)
    assert abs(frac - 0.1) < 0.01  # binomial sd is 0.002
    other = {k: split_of(k, 4, 0.1) for k in keys}
    assert other != a


def test_splits_partition_the_documents(tok):
    docs = [Document(f"d{i}", "the king of the north") for i in range(300)]
    p = resolve_packing(tok, 6)
    seen = {}
    for split in ("train", "heldout"):
        ctx = list(pack(iter(docs), tok, p, split, seed=0, heldout_fraction=0.3))
        n_docs = max(int(c.doc_ids_T.max()) for c in ctx) + 1
        seen[split] = n_docs
    expected_heldout = sum(split_of(d.key, 0, 0.3) == "heldout" for d in docs)
    # The last document(s) may fall in the dropped tail, so a split's contexts cover at most its documents.
    assert expected_heldout - 2 <= seen["heldout"] <= expected_heldout
    assert 300 - expected_heldout - 2 <= seen["train"] <= 300 - expected_heldout


def test_unknown_split(tok):
    with pytest.raises(SaexError, match="unknown split 'test'"):
        list(pack(iter([]), tok, resolve_packing(tok, 4), "test", 0, 0.1))
