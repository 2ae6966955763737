"""Synthetic feature indexes for the interpret tests, built with ``saex.stages.features`` on stores from
``tests/features/_helpers.write_store``.

The dictionaries are identities (``codes = relu(x)``), so every feature's activations are exactly the
columns written into the store, and the number of fragments each feature is active in is known by
construction. ``--no-decode`` builds have no token text; ``write_vocab`` supplies a ``vocab.json`` in
``FeatureIndex.token_strings``'s format (``{str(id): text}``) afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from saex.dictionaries.sae import SAE
from saex.features.index import VOCAB_JSON
from saex.stages.features import FeaturesConfig
from saex.stages.features import run as build_features
from tests.features._helpers import HOOK, write_store

# -- the protocol index: 4 features over 256 fragments of 4 tokens --------------------------------------
PT = 16
"""Context length of the protocol store."""
PL = 4
"""Fragment length: fragment k covers held-out rows 4k .. 4k+3 (``--no-one-per-document``)."""
PC = 64
N_FRAGMENTS = PC * PT // PL
ACTIVE = {0: 140, 1: 19, 2: 210, 3: 20}
"""Activating fragments per feature, by construction (feature 1 is one short of the protocol's 20)."""
TOP, RANDOM, ZERO = 25, 100, 40
PROTOCOL_VOCAB = 50


def protocol_columns(seed: int = 0) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """[PC*PT, 4] float32 and, per feature, the ids of the fragments it is active in.

    In an active fragment 1 to 3 positions hold distinct positive values (continuous, so per-fragment maxima
    never tie); everything else is negative (zero after the ReLU)."""
    rng = np.random.default_rng(seed)
    X = -0.1 - rng.random((N_FRAGMENTS, PL, 4))
    active = {}
    for f, n in ACTIVE.items():
        frags = np.sort(rng.choice(N_FRAGMENTS, n, replace=False))
        active[f] = frags
        for k in frags:
            pos = rng.choice(PL, rng.integers(1, 4), replace=False)
            X[k, pos, f] = 0.1 + 5.0 * rng.random(len(pos))
    return X.reshape(-1, 4).astype(np.float32), active


def identity_sae(d: int, hook: str = HOOK, **meta) -> SAE:
    return SAE(
        torch.eye(d), torch.eye(d), torch.zeros(d), torch.zeros(d), "standard", metadata={"hook_name": hook, **meta}
    )


def write_vocab(index_dir: Path, vocab: dict) -> None:
    (Path(index_dir) / VOCAB_JSON).write_text(json.dumps({str(k): v for k, v in vocab.items()}))


def build_protocol_index(
    root: Path, top: int = TOP, random: int = RANDOM, zero: int = ZERO, name: str = "ident"
) -> Path:
    """Build (or reuse) the protocol store under ``root/acts`` and an index of the identity dictionary;
    returns the index folder (``root/features-<top>-<random>-<zero>/<name>``), with token text t0..t49."""
    root = Path(root)
    acts = root / "acts"
    if not (acts / "manifest.json").is_file():
        X, _ = protocol_columns()
        tokens = torch.from_numpy(np.random.default_rng(1).integers(0, PROTOCOL_VOCAB, (PC, PT)).astype(np.int32))
        train = torch.from_numpy(np.random.default_rng(2).normal(size=(2 * PT, 4)).astype(np.float32))
        write_store(acts, train, torch.from_numpy(X), T=PT, shard_rows=16 * PT, tokens_CT=tokens)
    dicts = root / "dicts"
    if not (dicts / name).is_dir():
        identity_sae(4).save(dicts / name)
    out = root / f"features-{top}-{random}-{zero}"
    build_features(
        FeaturesConfig(
            acts=str(acts),
            dicts=str(dicts / name),
            out=str(out),
            fragment_length=PL,
            one_per_document=False,
            top=top,
            random=random,
            zero=zero,
            chunk=64,
            seed=0,
            decode=False,
            exclude_first=0,
            exclude_special_tokens=False,
        ),
        progress=False,
    )
    write_vocab(out / name, {i: f"t{i}" for i in range(PROTOCOL_VOCAB)})
    return out / name
