"""Fixture module of the saex interpret tests: a store with planted lexical features, two dictionaries over it
and their feature indexes, and the command's invocation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from saex.dictionaries.random_directions import random_directions
from saex.dictionaries.sae import SAE
from tests._cli import run_cli as _main
from tests._support import WORDS, build_tokenizer
from tests.features._helpers import HOOK, write_store
from tests.interpret._fixtures import write_vocab

T, C, L, D = 16, 100, 8, 16


def tokens_and_columns(seed: int = 0):
    tok = build_tokenizer()
    ids = {w: tok.convert_tokens_to_ids(w) for w in WORDS}
    rng = np.random.default_rng(seed)
    others = [w for w in WORDS if w not in ("river", "city", "water")]
    u = rng.random(C * T)
    words = np.where(
        u < 0.12,
        "river",
        np.where(u < 0.17, "city", np.where(u < 0.22, "water", np.array(others)[rng.integers(0, len(others), C * T)])),
    )
    token_ids = np.array([ids[w] for w in words], dtype=np.int32)
    X = rng.normal(size=(C * T, D))
    X[:, 0] = words == "river"
    X[:, 1] = np.isin(words, ["city", "water"])
    X[:, 2] = 0.5
    return torch.from_numpy(token_ids.reshape(C, T)), X.astype(np.float32), tok


def onehot_dict() -> SAE:
    W = torch.zeros(D, 4)
    W[0, 0] = W[1, 1] = W[2, 2] = 1.0
    b = torch.tensor([0.0, 0.0, 0.0, -1.0])
    return SAE(W, torch.eye(D)[:4], b, torch.zeros(D), "standard", metadata={"hook_name": HOOK})


def build_indexes(root: Path) -> Path:
    """A store with planted "river" / "city, water" features, two dictionaries and their feature indexes."""
    tokens, X, tok = tokens_and_columns()
    train = torch.from_numpy(np.random.default_rng(5).normal(size=(2 * T, D)).astype(np.float32))
    acts = write_store(root / "acts", train, torch.from_numpy(X), T=T, shard_rows=32 * T, tokens_CT=tokens)
    dicts = root / "dicts"
    onehot_dict().save(dicts / "onehot")
    random_directions(D, 12, seed=0, metadata={"hook_name": HOOK, "baseline": "random"}).save(dicts / "random")
    out = root / "features"
    rc, _, err = _main(
        "features",
        "--acts",
        str(acts),
        "--dicts",
        str(dicts),
        "--out",
        str(out),
        "--fragment-length",
        str(L),
        "--no-one-per-document",
        "--top",
        "25",
        "--random",
        "40",
        "--zero",
        "30",
        "--no-decode",
        "--exclude-first",
        "0",
        "--no-exclude-special-tokens",
        "--quiet",
    )
    assert rc == 0, err
    vocab = {i: tok.decode([i]) for i in torch.unique(tokens).tolist()}
    assert vocab[tok.convert_tokens_to_ids("river")] == "river"
    for name in ("onehot", "random"):
        write_vocab(out / name, vocab)
    return out


def interpret_cli(features, out, *extra) -> tuple[int, str, str]:
    return _main("interpret", "--features", str(features), "--out", str(out), "--quiet", *extra)


def results_folder(stdout: str) -> Path:
    """The folder the command says it wrote to (its last line)."""
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("scores, tables and plots in "), stdout
    return Path(last.removeprefix("scores, tables and plots in "))
