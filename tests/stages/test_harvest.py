"""``saex.stages.harvest``: manifest, stored activations against an independent forward, document-disjoint splits,
every model family, crash-safe resume (in-process crash and a real SIGKILL), bad input, corruption,
dtypes and corpus exhaustion."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import saex.stages.harvest as H
from saex.data.corpora import resolve_corpus
from saex.data.packing import split_of
from saex.errors import SaexError
from saex.lm.loading import load_model
from saex.stages.harvest import run as harvest
from saex.store.reader import ActivationStore
from tests._support import FAMILIES, write_corpus
from tests.store._helpers import (
    BOS_ID,
    MLP,
    RESID,
    SEP_ID,
    all_tokens,
    assert_same_content,
    cfg,
    cli_args,
    expected_contexts,
    expected_stream,
    manifest,
    mtimes,
    read_shard,
    reference_acts,
    sha256_file,
    shard_lists,
    snapshot,
)

T = 16
BASE = dict(tokens=1990, dtype="float16")  # 1990 -> 125 contexts (2000 rows); held-out 199 -> 13 contexts
SHARD_FILES = lambda folder: {k: v for k, v in snapshot(folder).items() if k != "manifest.json"}


def _tmp_files(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob(".tmp-*")]


# -- manifest ---------------------------------------------------------------------------------------------


def test_manifest_contents(make_store, tiny_llama, shared_corpus, tmp_path):
    out = make_store(**BASE)
    m = manifest(out)
    assert m["format"] == "saex.activation_store" and m["format_version"] == 1
    assert m["status"] == "complete" and "completed" in m
    asked = dataclasses.asdict(cfg(out, tiny_llama, shared_corpus, **BASE))
    assert m["config"] | {"out": None} == asked | {"out": None}

    # Weights hash: a content hash of the checkpoint (same for a copy elsewhere, different once a weight changes).
    copy = shutil.copytree(tiny_llama, tmp_path / "copy")
    assert m["model"]["weights_sha256"] == load_model(str(copy)).weights_sha256 == m["identity"]["weights_sha256"]
    assert len(m["model"]["weights_sha256"]) == 64
    from safetensors.torch import load_file, save_file

    w = load_file(copy / "model.safetensors")
    name = next(iter(w))
    w[name] = w[name] + 1
    save_file(w, copy / "model.safetensors", metadata={"format": "pt"})
    assert load_model(str(copy)).weights_sha256 != m["model"]["weights_sha256"]
    assert m["model"]["family"] == "llama" and m["model"]["n_layers"] == 4
    assert (m["model"]["d_model"], m["model"]["d_mlp"], m["model"]["max_context"]) == (32, 48, 64)

    assert m["hooks"] == {
        RESID: {"module": "model.layers.1", "capture": "output", "width": 32, "layer": 1},
        MLP: {"module": "model.layers.2.mlp.down_proj", "capture": "input", "width": 48, "layer": 2},
    }
    assert m["dtype"] == "float16"
    assert m["packing"] == {
        "context_length": 16,
        "bos_policy": "separator",
        "separator_id": SEP_ID,
        "separator_token": "<|endoftext|>",
        "bos_id": BOS_ID,
        "bos_token": "<|bos|>",
    }
    assert m["identity"]["packing"] == m["packing"]
    fp = resolve_corpus(str(shared_corpus)).fingerprint
    assert m["corpus"]["fingerprint"] == m["identity"]["corpus_fingerprint"] == fp
    assert m["corpus"]["n_documents"] == 200
    assert m["split"]["seed"] == 0 and m["split"]["heldout_fraction"] == 0.1 and "sha256" in m["split"]["method"]

    # Row counts: whole contexts, rounded up; held-out defaults to a tenth of --tokens.
    train, held = m["splits"]["train"], m["splits"]["heldout"]
    assert train["rows"] == math.ceil(1990 / T) * T == 2000 and train["contexts"] == 125
    assert held["rows"] == math.ceil((1990 // 10) / T) * T == 208 and held["contexts"] == 13
    assert train["target_tokens"] == 1990 and held["target_tokens"] == 199
    assert not train.get("exhausted") and not held.get("exhausted")
    assert [s["contexts"] for s in train["shards"]] == [16] * 7 + [13]
    assert [s["contexts"] for s in held["shards"]] == [13]

    for split, entry in m["splits"].items():
        assert sorted(os.listdir(out / split)) == [f"shard-{i:05d}.safetensors" for i in range(len(entry["shards"]))]
        assert sum(s["rows"] for s in entry["shards"]) == entry["rows"]
        for i, s in enumerate(entry["shards"]):
            path = out / split / s["file"]
            assert s["file"] == f"shard-{i:05d}.safetensors"
            assert s["sha256"] == sha256_file(path) and s["bytes"] == path.stat().st_size
            assert s["rows"] == s["contexts"] * T
            t = read_shard(path)
            assert set(t) == {RESID, MLP, "tokens", "doc_ids"}
            assert t[RESID].shape == (s["rows"], 32) and t[MLP].shape == (s["rows"], 48)
            assert t["tokens"].shape == t["doc_ids"].shape == (s["contexts"], T)
            assert t["tokens"].dtype == t["doc_ids"].dtype == torch.int32
            assert s["tokens_sha256"] == hashlib.sha256(t["tokens"].numpy().tobytes()).hexdigest()
    assert sorted(p.name for p in out.iterdir()) == ["heldout", "manifest.json", "train"]


def test_explicit_heldout_tokens(tmp_path, tiny_llama, shared_corpus):
    out = harvest(
        cfg(tmp_path / "a", tiny_llama, shared_corpus, tokens=100, heldout_tokens=40, shard_tokens=32), progress=False
    )
    m = manifest(out)
    contexts = {s: [x["contexts"] for x in m["splits"][s]["shards"]] for s in m["splits"]}
    assert m["splits"]["train"]["rows"] == 112 and contexts["train"] == [2, 2, 2, 1]  # ceil(100/16) = 7 contexts
    assert m["splits"]["heldout"]["rows"] == 48 and contexts["heldout"] == [2, 1]  # ceil(40/16) = 3 contexts


# -- activations and tokens against independent recomputation --------------------------------------------

# fp16 / bf16 rounding: relative half-ulp 2^-11 / 2^-8 (plus a tiny absolute term for subnormals).
TOLERANCE = {
    "float32": dict(rtol=1e-6, atol=1e-6),
    "float16": dict(rtol=2**-10, atol=2**-24),
    "bfloat16": dict(rtol=2**-7, atol=1e-30),
}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_activations_equal_independent_forward(make_store, tiny_llama, dtype):
    out = make_store(tokens=1990, dtype=dtype)
    assert manifest(out)["dtype"] == dtype
    model = load_model(str(tiny_llama)).model
    store = ActivationStore(out)
    want = getattr(torch, dtype)
    for split in ("train", "heldout"):
        for i in range(len(store.shards(split))):
            tokens, _ = store.load_tokens(split, i)
            ref_resid, ref_mlp = reference_acts(model, tokens, 1, "model.layers.2.mlp.down_proj")
            with safe_open(str(store.shard_path(split, i)), framework="pt") as f:
                assert f.get_tensor(RESID).dtype == want and f.get_tensor(MLP).dtype == want
            for hook, ref in ((RESID, ref_resid), (MLP, ref_mlp)):
                got = store.load_shard(split, i, hook, dtype=None)
                assert got.dtype == want
                if dtype == "float32":
                    torch.testing.assert_close(got, ref, **TOLERANCE[dtype])
                else:
                    torch.testing.assert_close(got.float(), ref, **TOLERANCE[dtype])
    # a hook on the wrong layer would not match
    tokens, _ = store.load_tokens("train", 0)
    with torch.no_grad():
        hs = model(input_ids=tokens[:4].long(), output_hidden_states=True).hidden_states
    assert not torch.allclose(store.load_shard("train", 0, RESID)[:64], hs[1].reshape(-1, 32), atol=1e-3)


def test_splits_are_document_disjoint_and_reproduce_the_documents(make_store, shared_corpus):
    out = make_store(**BASE)
    m = manifest(out)
    docs = list(resolve_corpus(str(shared_corpus)).documents(0))
    assert len(docs) == 200
    keys_by_split = {}
    for split in ("train", "heldout"):
        C = m["splits"][split]["contexts"]
        store = ActivationStore(out)
        tok = torch.cat([store.load_tokens(split, i)[0] for i in range(len(store.shards(split)))])
        doc = torch.cat([store.load_tokens(split, i)[1] for i in range(len(store.shards(split)))])
        want_tok, want_doc, keys = expected_contexts(docs, split, T, C)
        assert torch.equal(tok, want_tok), f"{split} token stream differs from the documents' tokenisation"
        assert torch.equal(doc, want_doc)
        assert tok[0, 0] == SEP_ID  # the separator also opens the first document
        used = [keys[i] for i in sorted(set(doc.view(-1).tolist()))]
        assert all(split_of(k, 0, 0.1) == split for k in used)
        keys_by_split[split] = set(keys)
    assert keys_by_split["train"].isdisjoint(keys_by_split["heldout"])
    assert keys_by_split["train"] | keys_by_split["heldout"] == {d.key for d in docs}
    assert 5 <= len(keys_by_split["heldout"]) <= 40  # ~10% of 200 documents


# -- every family ----------------------------------------------------------------------------------------

MLP_DOWN = {
    "llama": "model.layers.2.mlp.down_proj",
    "gpt_neox": "gpt_neox.layers.2.mlp.dense_4h_to_h",
    "gpt2": "transformer.h.2.mlp.c_proj",
    "gemma3": "model.layers.2.mlp.down_proj",
}
RESID_MODULE = {
    "llama": "model.layers.1",
    "gpt_neox": "gpt_neox.layers.1",
    "gpt2": "transformer.h.1",
    "gemma3": "model.layers.1",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_harvests(family, tiny_models, shared_corpus, tmp_path):
    out = harvest(
        cfg(tmp_path / "acts", tiny_models[family], shared_corpus, tokens=256, shard_tokens=128, dtype="float32"),
        progress=False,
    )
    m = manifest(out)
    assert m["status"] == "complete"
    assert m["model"]["family"] == ("gemma" if family == "gemma3" else family)
    assert m["hooks"][RESID]["module"] == RESID_MODULE[family] and m["hooks"][MLP]["module"] == MLP_DOWN[family]
    bos = family == "gemma3"
    assert m["packing"]["bos_policy"] == ("bos" if bos else "separator")
    model = load_model(str(tiny_models[family])).model
    docs = list(resolve_corpus(str(shared_corpus)).documents(0))
    store = ActivationStore(out)
    for split in ("train", "heldout"):
        tok = store.tokens(split)
        doc = torch.cat([store.load_tokens(split, i)[1] for i in range(len(store.shards(split)))])
        assert tok.shape[0] == m["splits"][split]["contexts"] > 0
        want_tok, want_doc, _ = expected_contexts(docs, split, T, tok.shape[0], bos=bos)
        assert torch.equal(tok, want_tok) and torch.equal(doc, want_doc)
        if bos:
            assert (tok[:, 0] == BOS_ID).all() and (doc[:, 0] == -1).all()
            assert not (tok[:, 1:] == BOS_ID).any() and (doc[:, 1:] >= 0).all()
        else:
            assert (doc >= 0).all()
        ref_resid, ref_mlp = reference_acts(model, tok, 1, MLP_DOWN[family])
        assert m["hooks"][RESID]["width"] == ref_resid.shape[1] == 32
        assert m["hooks"][MLP]["width"] == ref_mlp.shape[1]
        n = store.n_rows(split)
        got_resid = torch.cat([store.load_shard(split, i, RESID) for i in range(len(store.shards(split)))])
        got_mlp = store.rows(split, MLP, range(n))
        torch.testing.assert_close(got_resid, ref_resid, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_mlp, ref_mlp, rtol=1e-5, atol=1e-6)


# -- resume ----------------------------------------------------------------------------------------------


def test_resume_after_in_process_crash(tmp_path, tiny_llama, shared_corpus, make_store, monkeypatch):
    ref = make_store(**BASE)
    out = tmp_path / "acts"
    real = H.write_safetensors_atomic
    calls = []

    def crashing(path, tensors, metadata):
        calls.append(path.name)
        if len(calls) > 3:
            (path.parent / f".tmp-{path.name}.torn").write_bytes(b"half a shard")  # what a killed writer leaves
            raise RuntimeError("simulated crash")
        return real(path, tensors, metadata)

    monkeypatch.setattr(H, "write_safetensors_atomic", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        harvest(cfg(out, tiny_llama, shared_corpus, **BASE), progress=False)
    m = manifest(out)
    assert m["status"] == "in_progress" and len(m["splits"]["train"]["shards"]) == 3
    assert _tmp_files(out)

    writes = []

    def counting(path, tensors, metadata):
        writes.append(path.name)
        return real(path, tensors, metadata)

    monkeypatch.setattr(H, "write_safetensors_atomic", counting)
    harvest(cfg(out, tiny_llama, shared_corpus, **BASE), progress=False)
    assert len(writes) == 9 - 3, "only the shards not yet written are computed again"
    assert manifest(out)["status"] == "complete"
    assert_same_content(out, ref)
    assert not _tmp_files(out)


def test_identical_harvests_write_identical_shard_bytes(tmp_path, tiny_llama, shared_corpus, make_store):
    ref = make_store(**BASE)
    out = harvest(cfg(tmp_path / "again", tiny_llama, shared_corpus, **BASE), progress=False)
    assert_same_content(out, ref)  # same tensors ...
    assert shard_lists(out) == shard_lists(ref)  # ... so the same sha256s
    assert SHARD_FILES(out) == SHARD_FILES(ref)


def test_resume_after_sigkill(tmp_path, tiny_llama):
    corpus = write_corpus(tmp_path / "big.jsonl", n_docs=1000, seed=1)
    kw = dict(tokens=12000, shard_tokens=128)  # 94 train + 10 held-out shards
    out = tmp_path / "killed"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        SAEX_CACHE=str(tmp_path / "cache"),
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )  # like the in-process runs (see conftest); tiny matmuls gain nothing from threads
    c = cfg(out, tiny_llama, corpus, **kw)
    argv = [sys.executable, "-m", "saex.cli", "harvest", "--quiet", *cli_args(c)]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"harvest ended before it could be killed: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "harvest wrote no shards in 120 s"
            try:
                if len(manifest(out)["splits"]["train"]["shards"]) >= 2:
                    break
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    m = manifest(out)
    assert m["status"] == "in_progress", "the kill must land before the harvest finishes"
    assert 2 <= len(m["splits"]["train"]["shards"]) < 94

    harvest(c, progress=False)
    ref = harvest(cfg(tmp_path / "ref", tiny_llama, corpus, **kw), progress=False)
    assert manifest(out)["status"] == "complete"
    assert_same_content(out, ref)
    assert [len(v) for v in shard_lists(ref).values()] == [94, 10]
    for split in ("train", "heldout"):
        assert torch.equal(all_tokens(out, split), all_tokens(ref, split))
    assert all_tokens(out, "train").shape == (750, T)
    assert not _tmp_files(out)


def test_rerun_complete_is_a_noop_and_larger_tokens_extends(
    tmp_path, tiny_llama, shared_corpus, make_store, copy_store, monkeypatch
):
    big = dict(BASE, tokens=3000)
    ref = make_store(**big)
    out = copy_store(make_store(**BASE))
    before_files, before_mtimes = SHARD_FILES(out), mtimes(out)
    before_shards = shard_lists(out)
    real = H.write_safetensors_atomic
    writes = []

    def counting(path, tensors, metadata):
        writes.append(f"{path.parent.name}/{path.name}")
        return real(path, tensors, metadata)

    monkeypatch.setattr(H, "write_safetensors_atomic", counting)
    harvest(cfg(out, tiny_llama, shared_corpus, **BASE), progress=False)
    assert writes == []
    assert mtimes(out) == before_mtimes and SHARD_FILES(out) == before_files
    assert shard_lists(out) == before_shards and manifest(out)["status"] == "complete"

    harvest(cfg(out, tiny_llama, shared_corpus, **big), progress=False)
    assert_same_content(out, ref)
    m = manifest(out)
    assert m["splits"]["train"]["rows"] == math.ceil(3000 / T) * T and m["splits"]["heldout"]["rows"] == 304
    # the seven full train shards are kept; the short last one and the held-out shard are redone
    after = mtimes(out)
    kept = [f"train/shard-{i:05d}.safetensors" for i in range(7)]
    assert {k: after[k] for k in kept} == {k: before_mtimes[k] for k in kept}
    assert sorted(writes) == sorted(
        [f"train/shard-{i:05d}.safetensors" for i in range(7, 12)]
        + ["heldout/shard-00000.safetensors", "heldout/shard-00001.safetensors"]
    )


# -- bad input -------------------------------------------------------------------------------------------


def _bad_cases(tmp_path, tiny_models):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n\n\t\n")
    return {
        "unknown hook": (
            dict(hooks=f"{RESID},blocks.9.hook_resid_post"),
            ["'blocks.9.hook_resid_post'", "0..3", "hook_resid_pre", "mlp.hook_post", "hook_attn_out"],
        ),
        "malformed hook": (dict(hooks="blocks.1.resid"), ["'blocks.1.resid'", "hook_resid_post"]),
        "empty jsonl": (dict(corpus=str(empty)), [str(empty)]),
        "blank txt": (dict(corpus=str(blank)), [str(blank)]),
        "context too long": (dict(context_length=65), ["65", "64"]),
        "int8": (dict(dtype="int8"), ["'int8'", "float16", "bfloat16", "float32"]),
        "different hooks": (dict(hooks=RESID), ["hooks", MLP]),
        "different model": (dict(model=str(tiny_models["gpt2"])), ["model", str(tiny_models["gpt2"])]),
        "different context": (dict(context_length=32), ["context_length", "32"]),
        "fraction 0": (dict(heldout_fraction=0.0), ["heldout-fraction", "0.0"]),
        "fraction 1": (dict(heldout_fraction=1.0), ["heldout-fraction", "1.0"]),
        "fraction 1.5": (dict(heldout_fraction=1.5), ["1.5"]),
        "fraction negative": (dict(heldout_fraction=-0.1), ["-0.1"]),
        "tokens 0": (dict(tokens=0), ["--tokens", "0"]),
        "tokens negative": (dict(tokens=-5), ["--tokens", "-5"]),
    }


BAD = [
    "unknown hook",
    "malformed hook",
    "empty jsonl",
    "blank txt",
    "context too long",
    "int8",
    "different hooks",
    "different model",
    "different context",
    "fraction 0",
    "fraction 1",
    "fraction 1.5",
    "fraction negative",
    "tokens 0",
    "tokens negative",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_raises_and_leaves_store_intact(
    case, tmp_path, tiny_models, tiny_llama, shared_corpus, make_store, copy_store
):
    out = copy_store(make_store(**BASE))
    before = snapshot(out)
    overrides, fragments = _bad_cases(tmp_path, tiny_models)[case]
    with pytest.raises(SaexError) as err:
        harvest(cfg(out, **{"model": tiny_llama, "corpus": shared_corpus, **BASE, **overrides}), progress=False)
    for frag in fragments:
        assert frag in str(err.value), f"{frag!r} not in {str(err.value)!r}"
    assert snapshot(out) == before
    assert ActivationStore(out).verify_all() == 9


def test_changed_corpus_is_refused(tmp_path, tiny_llama):
    corpus = write_corpus(tmp_path / "c.jsonl", n_docs=60, seed=5)
    out = harvest(cfg(tmp_path / "acts", tiny_llama, corpus, tokens=256), progress=False)
    before = snapshot(out)
    lines = corpus.read_text().splitlines()
    lines[0] = json.dumps({"text": "the king went to the river", "id": 0})
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(SaexError, match="corpus_fingerprint"):
        harvest(cfg(out, tiny_llama, corpus, tokens=256), progress=False)
    assert snapshot(out) == before


def test_output_folder_with_unrelated_files(tmp_path, tiny_llama, shared_corpus):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = snapshot(out)
    with pytest.raises(SaexError, match="not empty") as err:
        harvest(cfg(out, tiny_llama, shared_corpus, tokens=64), progress=False)
    assert str(out) in str(err.value)
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["notes.txt", "sub"]


def test_output_path_is_a_file(tmp_path, tiny_llama, shared_corpus):
    out = tmp_path / "file"
    out.write_text("x")
    with pytest.raises(SaexError, match="not a folder"):
        harvest(cfg(out, tiny_llama, shared_corpus, tokens=64), progress=False)
    assert out.read_text() == "x"


# -- corruption ------------------------------------------------------------------------------------------


def test_corrupted_shards_are_detected_and_rebuilt(make_store, copy_store, tiny_llama, shared_corpus):
    out = copy_store(make_store(**BASE))
    before = snapshot(out)
    flipped, truncated = out / "train" / "shard-00002.safetensors", out / "train" / "shard-00005.safetensors"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])

    store = ActivationStore(out)
    store.load_shard("train", 0, RESID)  # intact shards still read
    for i in (2, 5):
        with pytest.raises(SaexError, match="corrupted") as err:
            store.load_shard("train", i, RESID)
        assert f"shard-{i:05d}" in str(err.value)
    with pytest.raises(SaexError, match="corrupted"):
        ActivationStore(out).verify_all()
    with pytest.raises(SaexError, match="corrupted"):
        ActivationStore(out).rows("train", MLP, [16 * 5 * 16 + 3])

    with pytest.warns(UserWarning, match="corrupted"):
        harvest(cfg(out, tiny_llama, shared_corpus, **BASE), progress=False)
    assert snapshot(out).keys() == before.keys()
    assert_same_content(out, make_store(**BASE))
    assert ActivationStore(out).verify_all() == 9


def test_missing_shard_is_rebuilt(make_store, copy_store, tiny_llama, shared_corpus):
    out = copy_store(make_store(**BASE))
    (out / "heldout" / "shard-00000.safetensors").unlink()
    with pytest.raises(SaexError, match="missing"):
        ActivationStore(out).load_shard("heldout", 0, RESID)
    harvest(cfg(out, tiny_llama, shared_corpus, **BASE), progress=False)
    assert_same_content(out, make_store(**BASE))


# -- dtypes ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def huge_llama(tiny_llama, tmp_path_factory):
    """The tiny llama with its embeddings scaled by 1e7: the residual stream overflows float16."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1e7)
    path = tmp_path_factory.mktemp("huge") / "llama"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(str(tiny_llama)).save_pretrained(path)
    return path


def test_float16_overflow_is_a_clear_error(huge_llama, shared_corpus, tmp_path):
    with pytest.raises(SaexError) as err:
        harvest(cfg(tmp_path / "fp16", huge_llama, shared_corpus, tokens=64), progress=False)
    msg = str(err.value)
    assert "float16" in msg and "--dtype float32" in msg and "bfloat16" in msg and RESID in msg
    out = harvest(cfg(tmp_path / "bf16", huge_llama, shared_corpus, tokens=64, dtype="bfloat16"), progress=False)
    x = ActivationStore(out).load_shard("train", 0, RESID, dtype=None)
    assert x.dtype == torch.bfloat16 and torch.isfinite(x).all() and x.float().abs().max() > 65504


# -- corpus exhaustion -----------------------------------------------------------------------------------


def test_corpus_exhaustion(tmp_path, tiny_llama):
    corpus = write_corpus(tmp_path / "small.jsonl", n_docs=30, seed=2)
    with pytest.warns(UserWarning, match="ran out"):
        out = harvest(cfg(tmp_path / "acts", tiny_llama, corpus, tokens=100_000, shard_tokens=128), progress=False)
    m = manifest(out)
    assert m["status"] == "complete"
    docs = list(resolve_corpus(str(corpus)).documents(0))
    for split in ("train", "heldout"):
        entry = m["splits"][split]
        assert entry["exhausted"] is True
        n_stream = len(expected_stream(docs, split)[0])
        assert entry["rows"] == (n_stream // T) * T == sum(s["rows"] for s in entry["shards"])
        assert all(s["contexts"] == 8 for s in entry["shards"][:-1])
        if entry["contexts"]:
            want_tok, _, _ = expected_contexts(docs, split, T, entry["contexts"])
            assert torch.equal(all_tokens(out, split), want_tok)
    assert m["splits"]["train"]["rows"] > 0


def test_a_store_written_before_hooks_were_a_list_is_still_the_same_store(
    tiny_llama, shared_corpus, make_store, copy_store, monkeypatch
):
    """A complete store whose manifest records ``hooks`` as comma-joined text (as saex wrote it before config
    lists were lists) is recognised as the same store: the rerun writes nothing; a real difference is refused."""
    out = copy_store(make_store(**BASE))
    m = manifest(out)
    assert isinstance(m["identity"]["hooks"], list)
    m["identity"]["hooks"] = ",".join(m["identity"]["hooks"])
    (out / "manifest.json").write_text(json.dumps(m))
    writes = []
    monkeypatch.setattr(H, "write_safetensors_atomic", lambda path, *a: writes.append(path))
    harvest(cfg(out, tiny_llama, shared_corpus, **BASE), progress=False)
    assert writes == []
    m["identity"]["hooks"] = "blocks.0.hook_resid_post"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SaexError, match=r"holds a different activation store \(hooks: store has \['blocks\.0"):
        harvest(cfg(out, tiny_llama, shared_corpus, **BASE), progress=False)


def test_device_and_lm_dtype(tiny_llama, shared_corpus, make_store, copy_store, tmp_path, monkeypatch):
    """--device cpu and --lm-dtype float32 are what auto means on this machine (the same store, byte for byte);
    a bfloat16 model gives another store, recorded as such and refused as a resume of a float32 one; a store
    written before --lm-dtype existed is the float32 store; a device this machine lacks is one error before the
    model loads."""
    if torch.cuda.is_available():
        pytest.skip("auto is a GPU here")
    ref = make_store(**BASE)
    assert manifest(ref)["lm_dtype"] == "float32" and manifest(ref)["device"] == "cpu"
    out = harvest(
        cfg(tmp_path / "cpu", tiny_llama, shared_corpus, device="cpu", lm_dtype="float32", **BASE), progress=False
    )
    assert SHARD_FILES(out) == SHARD_FILES(ref) and shard_lists(out) == shard_lists(ref)
    bf = harvest(cfg(tmp_path / "bf16", tiny_llama, shared_corpus, lm_dtype="bfloat16", **BASE), progress=False)
    assert manifest(bf)["lm_dtype"] == "bfloat16" and manifest(bf)["identity"]["lm_dtype"] == "bfloat16"
    a = ActivationStore(ref).rows("heldout", RESID, torch.arange(64)).float()
    b = ActivationStore(bf).rows("heldout", RESID, torch.arange(64)).float()
    assert not torch.equal(a, b) and torch.allclose(a, b, rtol=0.1, atol=0.05 * float(a.abs().max()))
    with pytest.raises(SaexError, match=r"lm_dtype: store has 'bfloat16', asked 'float32'"):
        harvest(cfg(bf, tiny_llama, shared_corpus, **BASE), progress=False)
    old = copy_store(ref, "old")
    m = manifest(old)
    del m["identity"]["lm_dtype"]
    (old / "manifest.json").write_text(json.dumps(m))
    writes = []
    monkeypatch.setattr(H, "write_safetensors_atomic", lambda path, *a: writes.append(path))
    harvest(cfg(old, tiny_llama, shared_corpus, **BASE), progress=False)
    assert writes == []
    loads = []
    monkeypatch.setattr(H, "load_model", lambda name: loads.append(name))
    for device, pattern in (("cuda", "this machine has no CUDA GPU"), ("tpu", "unknown --device 'tpu'")):
        with pytest.raises(SaexError, match=pattern):
            harvest(cfg(tmp_path / device, tiny_llama, shared_corpus, device=device, **BASE), progress=False)
    assert loads == [] and not (tmp_path / "cuda").exists()


def test_a_first_attempt_that_failed_before_any_shard_does_not_block_the_corrected_command(
    tiny_llama, shared_corpus, tmp_path, monkeypatch
):
    """The manifest is written before the first shard; an attempt that fails there (here: the first shard's
    computation raises) leaves a store with no shard, which the corrected command — another config — takes over
    instead of refusing as "a different store"."""
    out = tmp_path / "acts"

    def fail(*a, **k):
        raise SaexError("the first attempt fails")

    with monkeypatch.context() as m:
        m.setattr(H, "_compute_shard", fail)
        with pytest.raises(SaexError, match="the first attempt fails"):
            harvest(cfg(out, tiny_llama, shared_corpus, seed=3), progress=False)
    assert manifest(out)["status"] == "in_progress" and not manifest(out)["splits"]["train"]["shards"]
    harvest(cfg(out, tiny_llama, shared_corpus, seed=4), progress=False)
    assert manifest(out)["status"] == "complete" and manifest(out)["identity"]["seed"] == 4
    # once a shard exists, a different config is refused as before
    with pytest.raises(SaexError, match=r"holds a different activation store \(seed: store has 4, asked 5\)"):
        harvest(cfg(out, tiny_llama, shared_corpus, seed=5), progress=False)
    with pytest.raises(SaexError, match="--hooks names a hook point twice"):
        harvest(
            cfg(tmp_path / "dup", tiny_llama, shared_corpus, hooks=["blocks.0.hook_resid_post"] * 2), progress=False
        )
    assert not (tmp_path / "dup").exists()
