"""Shared helpers for the store / harvest / CLI tests: configs, snapshots and independent recomputations.

Everything here recomputes what a store should hold without going through saex's own harvest code:
tokenisation uses the word-level vocabulary the tiny tokenizer is built from, activations come from a
plain Hugging Face forward with ``output_hidden_states`` (or a forward pre-hook on the MLP's down
projection), and checksums are taken with hashlib.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open

from tests._support import SPECIALS, WORDS

VOCAB = {t: i for i, t in enumerate(SPECIALS + WORDS)}
SEP_ID = VOCAB["<|endoftext|>"]
BOS_ID = VOCAB["<|bos|>"]

RESID = "blocks.1.hook_resid_post"
MLP = "blocks.2.mlp.hook_post"
HOOKS = f"{RESID},{MLP}"


def cfg(out, model, corpus, **kw):
    from saex.stages.harvest import HarvestConfig

    base = dict(
        out=str(out),
        model=str(model),
        corpus=str(corpus),
        hooks=HOOKS,
        tokens=2000,
        context_length=16,
        shard_tokens=256,
        batch_size=4,
    )
    base.update(kw)
    return HarvestConfig(**base)


def cli_args(c) -> list[str]:
    """A HarvestConfig as `saex harvest` options."""
    from saex.config import to_arguments

    return to_arguments(c)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under a folder, by relative path (the manifest included)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def mtimes(folder: Path) -> dict[str, int]:
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*.safetensors"))}


def manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


def shard_lists(folder: Path) -> dict[str, list[dict]]:
    m = manifest(folder)
    return {s: m["splits"][s]["shards"] for s in m["splits"]}


def word_ids(text: str) -> list[int]:
    """Independent tokenisation: the tiny tokenizer is word-level over WORDS, split on whitespace."""
    return [VOCAB[w] for w in text.split()]


def expected_stream(docs, split: str, seed: int = 0, fraction: float = 0.1):
    """(token stream, doc-index stream, keys) of one split: ``[SEP] doc ...`` in corpus order."""
    from saex.data.packing import split_of

    toks, ids, keys = [], [], []
    for d in docs:
        if split_of(d.key, seed, fraction) != split:
            continue
        w = word_ids(d.text)
        toks += [SEP_ID] + w
        ids += [len(keys)] * (len(w) + 1)
        keys.append(d.key)
    return toks, ids, keys


def expected_contexts(
    docs, split: str, T: int, n_contexts: int, bos: bool = False, seed: int = 0, fraction: float = 0.1
):
    """The contexts a split should hold, as ``(tokens [C, T], doc_ids [C, T])`` int32 tensors."""
    toks, ids, keys = expected_stream(docs, split, seed, fraction)
    body = T - 1 if bos else T
    assert len(toks) >= n_contexts * body, "corpus too small for the test"
    tok = torch.tensor(toks[: n_contexts * body], dtype=torch.int32).view(n_contexts, body)
    doc = torch.tensor(ids[: n_contexts * body], dtype=torch.int32).view(n_contexts, body)
    if bos:
        tok = torch.cat([torch.full((n_contexts, 1), BOS_ID, dtype=torch.int32), tok], 1)
        doc = torch.cat([torch.full((n_contexts, 1), -1, dtype=torch.int32), doc], 1)
    return tok, doc, keys


def read_shard(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


def all_tokens(folder: Path, split: str) -> torch.Tensor:
    folder = Path(folder)
    return torch.cat([read_shard(folder / split / s["file"])["tokens"] for s in shard_lists(folder)[split]])


def reference_acts(
    model, tokens_CT: torch.Tensor, layer_resid: int, mlp_module: str | None, batch: int = 4
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Independent activations: ``hidden_states[L+1]`` of a full HF forward and the input of the MLP's down
    projection (a plain forward pre-hook), flattened to ``[C*T, D]``, float32."""
    got_mlp = []
    handle = None
    if mlp_module is not None:
        handle = model.get_submodule(mlp_module).register_forward_pre_hook(
            lambda mod, args: got_mlp.append(args[0].detach().clone())
        )
    resid = []
    try:
        with torch.no_grad():
            for i in range(0, len(tokens_CT), batch):
                out = model(input_ids=tokens_CT[i : i + batch].long(), output_hidden_states=True, use_cache=False)
                resid.append(out.hidden_states[layer_resid + 1])
    finally:
        if handle is not None:
            handle.remove()
    r = torch.cat(resid).reshape(-1, resid[0].shape[-1]).float()
    m = torch.cat(got_mlp).reshape(-1, got_mlp[0].shape[-1]).float() if got_mlp else None
    return r, m


def assert_same_content(a: Path, b: Path) -> None:
    """Two stores hold the same shards: same manifest entries (file, contexts, rows, size, token hash and
    sha256, so byte-identical files), every tensor of every shard identical, and each shard's recorded
    sha256 that of its file."""
    la, lb = shard_lists(a), shard_lists(b)
    assert la == lb, [
        (split, i, x, y) for split in la for i, (x, y) in enumerate(zip(la[split], lb.get(split, []))) if x != y
    ][:3]
    for folder, lists in ((a, la), (b, lb)):
        for split, shards in lists.items():
            listed = sorted(p.name for p in (Path(folder) / split).iterdir())
            assert listed == sorted(s["file"] for s in shards), (
                folder,
                split,
                set(listed) ^ {s["file"] for s in shards},
            )
            for s in shards:
                assert sha256_file(Path(folder) / split / s["file"]) == s["sha256"]
    for split, shards in la.items():
        for s in shards:
            ta, tb = read_shard(Path(a) / split / s["file"]), read_shard(Path(b) / split / s["file"])
            assert ta.keys() == tb.keys()
            for k in ta:
                assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), f"{split}/{s['file']}:{k} differs"
