"""``saex train --model``: training from the model with no store (``saex.train.online``).

The ground truth is the store path: with a one-batch buffer and no shuffle, activations computed on the fly are
those a float32 harvest of the same contexts writes, so the two runs must give bit-identical weights. Resume after
a crash must equal an uninterrupted run; several hooks from one forward pass must equal one run per hook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saex.errors import SaexError
from saex.stages.harvest import run as harvest
from saex.train.config import TrainConfig
from saex.train.trainer import summary, train
from tests._support import free_port
from tests.store._helpers import MLP, RESID
from tests.store._helpers import cfg as harvest_cfg
from tests.train._synth import Interrupted, assert_same_weights, interrupt_at, metrics, weights

T, LM_BATCH, SHARD = 16, 4, 256  # context length, contexts per forward, rows of a store's first shard


def online_cfg(model, corpus, out, **kw) -> TrainConfig:
    base = dict(
        model=str(model), corpus=str(corpus), hooks=[RESID], out=str(out), context_length=T,
        lm_batch_size=LM_BATCH, calibration_tokens=SHARD, arch="tied_l1", ratio=[2.0],
        steps=40, batch_size=32, buffer_tokens=128, eval_every=10, eval_tokens=128, checkpoint_every=10,
        normalize="mean_norm", device="cpu",
    )  # fmt: skip
    if kw.get("arch", "tied_l1") == "tied_l1":
        base["alpha"] = [1e-3, 1e-2]
    base.update(kw)
    return TrainConfig(**base)


def test_on_the_fly_equals_training_on_a_float32_harvest_of_the_same_contexts(tmp_path, tiny_llama, corpus_file):
    acts = harvest(
        harvest_cfg(tmp_path / "acts", tiny_llama, corpus_file, hooks=[RESID], dtype="float32", tokens=2000),
        progress=False,
    )
    common = dict(
        arch="tied_l1", ratio=[2.0], alpha=[1e-3, 1e-2], steps=40, batch_size=32, eval_every=10, eval_tokens=128,
        normalize="mean_norm", shuffle=False, device="cpu",
    )  # fmt: skip
    stored = train(TrainConfig(acts=str(acts), hook=RESID, out=str(tmp_path / "stored"), **common), progress=False)
    fly = train(
        online_cfg(tiny_llama, corpus_file, tmp_path / "fly", buffer_tokens=32, **common),
        progress=False,
    )
    # 40 × 32 rows of a 2000-token store: one pass, no wrap-around; the default row filter and the input scale
    # both come from the first 256 tokens, which both runs compute alike.
    assert_same_weights(stored, fly, exact=True)
    run_s, run_f = (json.loads((p / "run.json").read_text()) for p in (stored, fly))
    assert run_f["scale"] == run_s["scale"] and run_f["rows"]["norm_limit"] == run_s["rows"]["norm_limit"]
    assert run_f["source"]["source"] == "model" and run_f["placement"]["device"] == "cpu"
    meta = json.loads((fly / "tied_l1_r2_a0.001" / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == RESID and meta["source"] == "model" and meta["tokens_seen"] == 40 * 32
    # held-out numbers were computed on the fly from held-out documents
    assert [r["step"] for r in metrics(fly)][-2:] == [40, 40]


def test_a_killed_on_the_fly_run_resumes_to_the_same_weights(tmp_path, tiny_llama, corpus_file, monkeypatch):
    """The buffer is not saved: it is recomputed from the recorded position (forward batch, row, permutation,
    batches taken), here in the middle of a shuffled 4-batch buffer."""
    cfg = dict(arch="topk", k=[3], aux_k=4, ratio=[2.0], buffer_tokens=128, steps=30, checkpoint_every=3)
    whole = train(online_cfg(tiny_llama, corpus_file, tmp_path / "whole", **cfg), progress=False)
    interrupt_at(monkeypatch, 14)  # checkpoint at 12; batches 13 and 14 lie inside the fourth buffer
    with pytest.raises(Interrupted):
        train(online_cfg(tiny_llama, corpus_file, tmp_path / "resumed", **cfg), progress=False)
    monkeypatch.undo()
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 12 and state["positions"][0]["taken"] == 4 and state["positions"][0]["ordinal"] == 2
    train(online_cfg(tiny_llama, corpus_file, tmp_path / "resumed", **cfg), progress=False)
    assert_same_weights(whole, tmp_path / "resumed", exact=True)


def test_several_hooks_from_one_pass_equal_one_run_per_hook(tmp_path, tiny_llama, corpus_file):
    # No norm limit: then a row is kept at both hooks exactly when it is kept at either, and the runs see the
    # same rows; the optimiser is per parameter, so training the sweeps side by side changes nothing.
    kw = dict(max_norm_ratio=0.0, steps=20)
    both = train(online_cfg(tiny_llama, corpus_file, tmp_path / "both", hooks=[RESID, MLP], **kw), progress=False)
    for hook in (RESID, MLP):
        alone = train(online_cfg(tiny_llama, corpus_file, tmp_path / hook, hooks=[hook], **kw), progress=False)
        assert_same_weights(alone, both / hook, exact=True)
        assert json.loads((both / hook / "run.json").read_text())["status"] == "complete"
    parent = json.loads((both / "run.json").read_text())
    assert parent["status"] == "complete" and parent["hooks"] == {RESID: RESID, MLP: MLP}
    text = summary(both)  # what `saex train` prints: one table per hook
    assert f"2 dictionaries on {RESID} of " in text and f"2 dictionaries on {MLP} of " in text


def test_options_that_do_not_apply_are_refused(tmp_path, tiny_llama, corpus_file):
    with pytest.raises(SaexError, match="--corpus applies only when training from a model"):
        train(TrainConfig(acts=str(tmp_path), hook=RESID, corpus="x.txt"), progress=False)
    with pytest.raises(SaexError, match="--shards-in-buffer applies to a store"):
        train(online_cfg(tiny_llama, corpus_file, tmp_path / "o", shards_in_buffer=2), progress=False)
    with pytest.raises(SaexError, match="holds less than one batch"):
        train(online_cfg(tiny_llama, corpus_file, tmp_path / "o", buffer_tokens=16), progress=False)
    with pytest.raises(SaexError, match="names a hook point twice"):
        train(online_cfg(tiny_llama, corpus_file, tmp_path / "o", hooks=[RESID, RESID]), progress=False)
    with pytest.raises(SaexError, match="this machine has no CUDA GPU"):
        train(online_cfg(tiny_llama, corpus_file, tmp_path / "o", device="cuda"), progress=False)
    assert not (tmp_path / "o").exists()


def test_two_processes_split_the_context_stream(tmp_path, tiny_llama, corpus_file):
    """torchrun with gloo: each rank computes its own share of the forward batches; the run completes, writes
    one set of dictionaries and its checkpoint records both ranks' positions."""
    torchrun = Path(sys.executable).with_name("torchrun")
    args = ["--model", str(tiny_llama), "--corpus", str(corpus_file), "--hooks", RESID, "--context-length", str(T)]
    args += ["--lm-batch-size", str(LM_BATCH), "--calibration-tokens", str(SHARD), "--ratio", "2", "--steps", "12"]
    args += ["--batch-size", "32", "--buffer-tokens", "64", "--eval-every", "6", "--eval-tokens", "64", "--quiet"]
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "saex.cli", "train", *args,
         "--out", str(tmp_path / "ddp"), "--device", "cpu"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(weights(tmp_path / "ddp")) == 1
    state = json.loads((tmp_path / "ddp" / "checkpoint" / "state.json").read_text())
    # each rank took 12 batches of 16 rows from its half of the 64-row buffer (2 batches): the 6th buffer, done
    assert [(p["ordinal"], p["taken"]) for p in state["positions"]] == [(5, 2), (5, 2)]


def test_each_rank_takes_every_other_forward_batch(tmp_path, tiny_llama, corpus_file):
    from saex.devices import placement
    from saex.distributed import Ranks
    from saex.train.online import Source

    cfg = online_cfg(tiny_llama, corpus_file, tmp_path / "o")
    whole = [
        [c.tokens_T.tolist() for c in b]
        for b in Source(cfg, [RESID], placement(cfg), Ranks())._forward_batches("train")
    ]
    shares = []
    for rank in (0, 1):
        src = Source(cfg, [RESID], placement(cfg), Ranks(2, rank))
        shares.append([[c.tokens_T.tolist() for c in b] for b in src._forward_batches("train", 2, rank)])
        src.close()
    assert len(whole) > 4 and shares[0] == whole[0::2] and shares[1] == whole[1::2]


def test_on_the_fly_training_makes_no_tensor_on_the_default_device(tmp_path, tiny_llama, corpus_file):
    """The whole run (model forward, calibration, buffer, held-out rows, training, export) with torch's default
    device set to ``meta`` equals one made normally: every tensor names its device (the GPU check on a CPU)."""
    import torch

    a = train(online_cfg(tiny_llama, corpus_file, tmp_path / "a", steps=12), progress=False)
    with torch.device("meta"):
        b = train(online_cfg(tiny_llama, corpus_file, tmp_path / "b", steps=12), progress=False)
    assert_same_weights(a, b, exact=True)
