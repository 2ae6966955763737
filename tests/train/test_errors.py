"""Bad input: a SaexError that names the value, and nothing already on disk lost."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from saex.config import load_config_file
from saex.errors import SaexError
from saex.train.config import TrainConfig
from saex.train.trainer import train
from tests.train._synth import HOOK, snapshot, train_cfg, write_store


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def completed(small_store, tmp_path_factory):
    """A completed run (copy it before handing it to a test that may write)."""
    out = tmp_path_factory.mktemp("done") / "out"
    train(train_cfg(small_store, out, steps=40, eval_every=20, checkpoint_every=20), progress=False)
    return out


@pytest.fixture
def out_done(completed, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(completed, dst)
    return dst


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(alpha="0.01,-0.5"), r"α must be >= 0, got -0\.5"),
        (dict(ratio="0"), r"dictionary ratio R must be positive, got 0\.0"),
        (dict(ratio="2,-1"), r"dictionary ratio R must be positive, got -1\.0"),
        (dict(ratio="0.01"), r"ratio 0\.01 gives no features for d_in 16"),
        (dict(arch="topk", ratio="2", k="33", alpha=[8.6e-4]), r"--k 33 must be an integer in 1\.\.32"),
        (dict(arch="topk", k="0"), r"--k must be positive, got 0"),
        (dict(arch="topk", k="2.5"), r"--k must be comma-separated integers, got '2\.5'"),
        (dict(arch="topk", k="3"), r"--alpha does not apply to --arch topk \(it is read by gated, jumprelu, tied_l1"),
        (dict(k="3"), r"--k does not apply to --arch tied_l1 \(it is read by batchtopk, matryoshka, topk\)"),
        (dict(arch="jumprelu", target_l0="20"), r"--alpha is unused with --target-l0"),
        (dict(arch="crosscoder"), r"unknown --arch 'crosscoder'"),
        (dict(steps=0), r"--steps must be positive, got 0"),
        (
            dict(steps=10, dead_window=640),
            r"--dead-window 640 is not shorter than the run \(10 steps × 64 = 640 inputs\)",
        ),
        (dict(batch_size=0), r"--batch-size must be positive, got 0"),
        (dict(lr=0.0), r"--lr must be positive, got 0\.0"),
        (dict(decay_fraction=1.5), r"--decay-fraction must be <= 1, got 1\.5"),
        (dict(alpha="x"), r"--alpha must be comma-separated numbers, got 'x'"),
        (dict(alpha="nan"), r"the sparsity coefficient α must be finite, got nan"),
        (dict(normalize="zscore"), r"unknown --normalize 'zscore'"),
        (dict(alpha="0.01,0.010001"), r"names a dictionary twice: tied_l1_r4_a0\.01"),
        (dict(hook="blocks.9.hook_resid_post"), r"hook 'blocks\.9\.hook_resid_post' is not in the store"),
        (dict(hook=""), r"name the hook point to train on with --hook; the store has \['blocks\.0\.hook_resid_post'\]"),
    ],
)
def test_bad_config_is_refused_before_anything_is_written(small_store, out_done, tmp_path, change, message):
    before = snapshot(out_done)
    cfg = train_cfg(small_store, out_done, steps=40, eval_every=20, checkpoint_every=20)
    with pytest.raises(SaexError, match=message):
        train(replace(cfg, **change), progress=False)
    assert snapshot(out_done) == before
    fresh = tmp_path / "fresh"
    with pytest.raises(SaexError, match=message):
        train(replace(cfg, out=str(fresh), **change), progress=False)
    assert not fresh.exists()


def test_missing_store_is_refused(tmp_path):
    with pytest.raises(SaexError, match=r"is not an activation store \(no manifest\.json\)"):
        train(TrainConfig(acts=str(tmp_path / "nope"), hook=HOOK, out=str(tmp_path / "out")), progress=False)
    assert not (tmp_path / "out").exists()


def _wider_store(tmp_path):
    g = torch.Generator().manual_seed(3)
    return write_store(
        tmp_path / "wide", torch.randn(2048, 24, generator=g), torch.randn(256, 24, generator=g), shard_rows=1024
    )


def test_completed_run_on_a_store_of_another_width_is_refused(small_store, out_done, tmp_path):
    before = snapshot(out_done)
    cfg = train_cfg(_wider_store(tmp_path), out_done, steps=40, eval_every=20, checkpoint_every=20)
    with pytest.raises(SaexError, match=r"different training run \(d_in: folder has 16, asked 24; store_hash") as e:
        train(cfg, progress=False)
    assert "Choose another --out" in str(e.value)
    assert snapshot(out_done) == before


def test_interrupted_run_on_a_store_of_another_width_is_refused(small_store, tmp_path, monkeypatch):
    """A checkpoint in --out from a run on a 16-wide store; resuming on a 24-wide one must not touch it."""
    import saex.train.trainer as trainer

    out = tmp_path / "out"
    cfg = train_cfg(small_store, out, steps=100, eval_every=20, checkpoint_every=20)
    real, calls = trainer._train_step, [0]

    def step(*a):
        calls[0] += 1
        if calls[0] > 50:
            raise Interrupted
        return real(*a)

    with monkeypatch.context() as m:
        m.setattr(trainer, "_train_step", step)
        with pytest.raises(Interrupted):
            train(cfg, progress=False)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 40
    before = snapshot(out)
    with pytest.raises(SaexError, match=r"d_in: folder has 16, asked 24"):
        train(replace(cfg, acts=str(_wider_store(tmp_path))), progress=False)
    assert snapshot(out) == before
    # and the untouched checkpoint still resumes on the right store
    train(cfg, progress=False)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_training_activations_are_refused(small_data, tmp_path, bad):
    _, X, H = small_data
    X = X.clone()
    X[100:110, 3] = bad  # in the train split's first shard
    store = write_store(tmp_path / "acts", X, H, shard_rows=1024)
    out = tmp_path / "out"
    with pytest.raises(SaexError, match=rf"holds NaN or Inf activations at {HOOK} \(found in the batch of step \d+\)"):
        train(train_cfg(store, out, steps=200), progress=False)
    # no dictionary was saved and no run claims to be complete
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert not [p for p in out.iterdir() if (p / "cfg.json").exists()]


def test_non_finite_heldout_activations_are_refused(small_data, tmp_path):
    _, X, H = small_data
    H = H.clone()
    H[:, 0] = float("nan")
    store = write_store(tmp_path / "acts", X, H, shard_rows=1024)
    with pytest.raises(SaexError, match="NaN or Inf"):
        train(train_cfg(store, tmp_path / "out", steps=60, eval_every=20), progress=False)


def test_config_file_with_an_unknown_key(tmp_path):
    for name, text in (("c.json", json.dumps({"alpha": "0.1", "alhpa": "0.2"})), ("c.toml", 'alhpa = "0.2"\n')):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(SaexError, match=rf"config file {path} has unknown option 'alhpa'"):
            load_config_file(TrainConfig, path)
    bad = tmp_path / "bad.toml"
    bad.write_text("alpha = [")
    with pytest.raises(SaexError, match="is not valid TOML"):
        load_config_file(TrainConfig, bad)
    with pytest.raises(SaexError, match="does not exist"):
        load_config_file(TrainConfig, tmp_path / "none.json")


def test_out_that_is_a_file_is_refused(small_store, tmp_path):
    f = tmp_path / "out"
    f.write_text("precious")
    with pytest.raises(SaexError, match="out"):
        train(train_cfg(small_store, f), progress=False)
    assert f.read_text() == "precious"


def test_negative_aux_k_is_refused(small_store, tmp_path):
    with pytest.raises(SaexError, match="aux"):
        train(
            train_cfg(small_store, tmp_path / "out", arch="topk", k="3", aux_k=-1, dead_window=64, steps=30),
            progress=False,
        )


@pytest.mark.parametrize("arch", ["tied_l1", "topk"])
def test_a_diverged_run_stops_with_one_error_and_writes_no_dictionary(small_store, tmp_path, arch):
    """--lr 1e38 overflows the weights within a few steps: the run stops naming the step, and no dictionary (whose
    NaN weights every later stage would otherwise accept) is written."""
    from tests.train._synth import weights

    out = tmp_path / "out"
    extra = dict(k="4") if arch == "topk" else {}
    with pytest.raises(SaexError, match=r"training diverged at step \d+ \(.*\); no dictionary was written"):
        train(train_cfg(small_store, out, arch=arch, lr=1e38, steps=50, **extra), progress=False)
    assert weights(out) == {}
