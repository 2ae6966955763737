"""Transcoders (Dunefsky et al. 2024): read one hook point, reconstruct another, for every architecture that
can; a linear skip connection; the saved file; resume and sweeps as for autoencoders; bad input."""

from __future__ import annotations

import json

import pytest
import torch

from saex.dictionaries import SAE
from saex.errors import SaexError
from saex.store.reader import ActivationStore
from saex.train.trainer import train
from tests.train._synth import (
    RECOVERY,
    TRANSCODER_IN,
    TRANSCODER_OUT,
    Interrupted,
    assert_same_weights,
    interrupt_at,
    metrics,
    mmcs,
    train_cfg,
    transcoder_data,
    weights,
    write_store,
)

TRANSCODING = ["untied_l1", "topk", "batchtopk", "matryoshka", "jumprelu", "gated"]
# The autoencoders' recovery settings (tests/train/test_recovery.py), on the same kind of data.
SPARSITY = {arch: RECOVERY[arch] for arch in TRANSCODING}


@pytest.fixture(scope="module")
def map32(tmp_path_factory):
    """64 sparse latents (~5 active, magnitudes in (0, 1]) seen in 32 dims as x and in 24 dims as y."""
    G_in, G_out, (x, y), (hx, hy) = transcoder_data(d=32, d_out=24, n_gt=64, n=65_536, n_heldout=4096, seed=1)
    path = tmp_path_factory.mktemp("map32") / "acts"
    store = write_store(path, x, hx, hook=TRANSCODER_IN, shard_rows=16_384, more={TRANSCODER_OUT: (y, hy)})
    return G_out, hx, hy, store


def tc_cfg(store, out, **kw):
    return train_cfg(store, out, **({"hook": TRANSCODER_IN, "target": TRANSCODER_OUT} | kw))


def test_the_store_yields_input_and_target_side_by_side(transcoder_store, transcoder_data):
    _, _, (x, y), _ = transcoder_data
    store = ActivationStore(transcoder_store)
    batch = next(iter(store.batches("train", [TRANSCODER_IN, TRANSCODER_OUT], 64, seed=0)))
    assert batch.shape == (64, 16 + 12)
    # every row is an (x, y) pair of the data: y is G_out-coded from the same latents as x
    i = ((x.unsqueeze(0) - batch[:, None, :16]).abs().sum(-1)).argmin(1)
    assert torch.equal(batch[:, :16], x[i]) and torch.equal(batch[:, 16:], y[i])


@pytest.mark.parametrize("arch", TRANSCODING)
def test_every_architecture_learns_the_sparse_map(tmp_path, map32, arch):
    """x and y are codes of the same 64 sparse latents in different spaces: a transcoder's decoder rows must
    find the latents' output directions G_out (MMCS ≥ 0.9), and predict y from x."""
    G_out, hx, hy, store = map32
    out = train(
        tc_cfg(
            store, tmp_path / "out", arch=arch, ratio="4", steps=3906, batch_size=256, lr=1e-3, decay_fraction=0.0,
            eval_every=0, checkpoint_every=0, **SPARSITY[arch],
        ),
        progress=False,
    )  # fmt: skip
    ((name, _),) = weights(out).items()
    sae = SAE.load(out / name)
    cfg = json.loads((out / name / "cfg.json").read_text())
    assert sae.transcoder and sae.d_in == 32 and sae.d_out == 24 and not sae.apply_b_dec_to_input
    assert cfg["d_out"] == 24 and cfg["hook_name"] == TRANSCODER_IN and cfg["hook_name_out"] == TRANSCODER_OUT
    fvu = ((sae(hx) - hy).pow(2).sum() / (hy - hy.mean(0)).pow(2).sum()).item()
    score = mmcs(G_out, sae.W_dec_FD)
    assert score >= 0.9 and fvu < 0.3, (score, fvu)


def test_skip_connection_learns_a_linear_map(tmp_path, transcoder_data):
    """When y is a linear function of x, the skip term alone can carry it: W_skip → A and FVU → 0."""
    _, _, (x, _), (hx, _) = transcoder_data
    A = torch.randn(12, 16, generator=torch.Generator().manual_seed(4)) / 4
    store = write_store(
        tmp_path / "acts", x, hx, hook=TRANSCODER_IN, shard_rows=1024, more={TRANSCODER_OUT: (x @ A.T, hx @ A.T)}
    )
    common = dict(arch="topk", k="2", ratio="1", steps=1200, batch_size=128, lr=1e-2, eval_every=1200, eval_tokens=1024)
    out = train(tc_cfg(store, tmp_path / "skip", skip=True, normalize="mean_norm", **common), progress=False)
    sae = SAE.load(out / "topk_r1_k2")
    assert sae.W_skip_OD is not None and sae.saved_architecture() == "topk_skip_transcoder"
    fvu = ((sae(hx) - hx @ A.T).pow(2).sum() / (hx @ A.T - (hx @ A.T).mean(0)).pow(2).sum()).item()
    assert fvu < 0.01, fvu
    assert (sae.W_skip_OD - A).norm() < 0.25 * A.norm(), (sae.W_skip_OD - A).norm() / A.norm()
    # the trainer's logged FVU (every held-out row, unscaled units) is the same number, computed here
    assert metrics(out)[-1]["fvu"] == pytest.approx(fvu, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("arch", ["untied_l1", "jumprelu"])
def test_sweep_equals_separate_runs_and_resume_is_exact(tmp_path, monkeypatch, transcoder_store, arch):
    sweep = {"untied_l1": ("alpha", ["0.005", "0.02"]), "jumprelu": ("alpha", ["0.001", "0.01"])}[arch]
    common = dict(arch=arch, skip=True, steps=200, lr=3e-3, eval_every=50, resample_every=60, dead_window=64 * 8)
    together = train(
        tc_cfg(transcoder_store, tmp_path / "sweep", checkpoint_every=0, **common, **{sweep[0]: ",".join(sweep[1])}),
        progress=False,
    )
    for v in sweep[1]:
        alone = train(
            tc_cfg(transcoder_store, tmp_path / f"alone{v}", checkpoint_every=0, **common, **{sweep[0]: v}),
            progress=False,
        )
        ((name, w),) = weights(alone).items()
        for key in w:
            # Equal to float32 rounding: with a learned decoder bias (every transcoder has one, as does
            # untied_l1 --decoder-bias) members differ from a lone run in the last bits (measured ≤ 1.2e-7
            # after 200 steps), not bitwise as without one.
            torch.testing.assert_close(weights(together)[name][key], w[key], rtol=1e-5, atol=1e-6)
    # resume is exact, input and target scales (mean_norm) restored from the checkpoint
    common["normalize"] = "mean_norm"
    together = train(
        tc_cfg(transcoder_store, tmp_path / "ref", checkpoint_every=0, **common, **{sweep[0]: ",".join(sweep[1])}),
        progress=False,
    )
    out = tmp_path / "resumed"
    cfg = tc_cfg(transcoder_store, out, checkpoint_every=40, **common, **{sweep[0]: ",".join(sweep[1])})
    with monkeypatch.context() as m:
        interrupt_at(m, 130)
        with pytest.raises(Interrupted):
            train(cfg, progress=False)
    train(cfg, progress=False)
    assert_same_weights(out, together, exact=True)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(target="blocks.0.hook_attn_out"),
            r"transcoder target hook 'blocks.0.hook_attn_out' is not in the store .*; it has \['blocks.0.ln2.hook_normalized', 'blocks.0.hook_mlp_out'\]",
        ),
        (dict(target=TRANSCODER_IN), r"--target blocks.0.ln2.hook_normalized is the --hook itself"),
        (dict(arch="tied_l1"), r"--arch tied_l1 cannot be a transcoder"),
        (dict(target="", skip=True), r"--skip adds a linear skip connection to a transcoder: name its --target hook"),
    ],
)
def test_bad_transcoder_settings_get_one_clear_error(tmp_path, transcoder_store, change, message):
    with pytest.raises(SaexError, match=message):
        train(tc_cfg(transcoder_store, tmp_path / "out", steps=10, **change), progress=False)
    assert not (tmp_path / "out").exists()
