"""End-to-end training through ``train()`` on synthetic stores whose ground truth is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saex.dictionaries import SAE
from saex.store.reader import ActivationStore
from saex.train.trainer import train
from tests.train._synth import HOOK, RECOVERY, ground_truth, mmcs, train_cfg, write_store


def test_synthetic_store_is_a_valid_store(small_store, small_data):
    _, X, H = small_data
    store = ActivationStore(small_store)
    assert store.complete and store.hooks == [HOOK] and store.width(HOOK) == 16
    assert store.verify_all() == 9
    assert store.n_rows("train") == len(X) and store.n_rows("heldout") == len(H)
    assert torch.equal(store.rows("train", HOOK, np.arange(len(X))), X)
    assert torch.equal(store.rows("heldout", HOOK, [5, 1000, 3]), H[[5, 1000, 3]])
    seen = torch.cat(list(store.batches("train", HOOK, 64, seed=0)))
    assert torch.equal(seen[seen[:, 0].argsort()], X[X[:, 0].argsort()])  # one epoch: every row once


@pytest.fixture(scope="module")
def gt32(tmp_path_factory):
    """Sharkey et al. 2022's data: 64 unit features in 32 dims, ~5 active per input, magnitudes in (0, 1]."""
    G, X, H = ground_truth(d=32, n=65_536, n_heldout=4096, active=5.0, seed=0)
    return G, H, write_store(tmp_path_factory.mktemp("gt32") / "acts", X, H, shard_rows=16_384)


def test_every_architecture_is_in_the_recovery_check():
    from saex.dictionaries import architecture_names

    assert set(RECOVERY) == set(architecture_names())


@pytest.mark.parametrize("arch", list(RECOVERY))
def test_every_architecture_recovers_ground_truth_features(tmp_path, gt32, arch):
    """Every architecture (R = 4, lr 1e-3, 1M inputs) learns the 64 true features: MMCS ≥ 0.9."""
    G, H, store = gt32
    out = train(
        train_cfg(
            store,
            tmp_path / "out",
            arch=arch,
            ratio="4",
            steps=3906,
            batch_size=256,
            decay_fraction=0.0,
            lr=1e-3,
            eval_every=0,
            checkpoint_every=0,
            **RECOVERY[arch],
        ),
        progress=False,
    )
    (name,) = [p.name for p in out.iterdir() if (p / "cfg.json").is_file()]
    sae = SAE.load(out / name)
    assert sae.W_dec_FD.shape == (128, 32)
    score = mmcs(G, sae.W_dec_FD)
    print(f"{arch} MMCS {score:.4f}")
    assert score >= 0.9
    # and the dictionary is a good sparse code of held-out data: a handful of features per input
    c = sae.encode(H)
    l0 = (c > 0).sum(1).float().mean().item()
    fvu = ((sae.decode(c) - H).pow(2).sum() / (H - H.mean(0)).pow(2).sum()).item()
    assert 2 < l0 < 12 and fvu < 0.3, (l0, fvu)
    # a random dictionary of the same size scores far lower: the test can tell
    assert mmcs(G, torch.randn(128, 32, generator=torch.Generator().manual_seed(999))) < 0.7


@pytest.mark.parametrize(
    "arch, extra",
    [
        ("tied_l1", {}),
        ("untied_l1", {}),
        ("untied_l1", {"decoder_bias": True}),
        ("topk", {"k": "2,5"}),
        ("batchtopk", {"k": "2,5"}),
        ("matryoshka", {"k": "2,5"}),
        ("jumprelu", {"alpha": "0.001,0.01"}),
        ("gated", {"alpha": "0.005,0.02"}),
    ],
)
def test_saved_decoder_rows_are_unit_norm_for_every_arch(tmp_path, small_store, small_data, arch, extra):
    _, _, H = small_data
    out = train(
        train_cfg(
            small_store,
            tmp_path / "out",
            arch=arch,
            ratio="2,4",
            steps=150,
            eval_every=0,
            checkpoint_every=0,
            lr=1e-2,
            normalize="mean_norm",
            **extra,
        ),
        progress=False,
    )
    names = json.loads((out / "run.json").read_text())["members"]
    assert len(names) == 4
    for m in names:
        sae = SAE.load(out / m["name"])
        assert sae.d_dict == m["d_dict"] == round(m["ratio"] * 16)
        torch.testing.assert_close(sae.W_dec_FD.norm(dim=1), torch.ones(sae.d_dict), rtol=0, atol=1e-5)
        if arch == "tied_l1":
            assert torch.equal(sae.W_enc_DF, sae.W_dec_FD.T) and not sae.b_dec_D.any()
        if arch == "topk":
            assert sae.k == m["k"] and ((sae.encode(H) > 0).sum(1) <= m["k"]).all()
        if arch == "untied_l1" and not extra:
            assert not sae.b_dec_D.any() and not sae.apply_b_dec_to_input
        if extra.get("decoder_bias"):
            assert sae.b_dec_D.any() and sae.apply_b_dec_to_input
