"""The trainer: sweeps equal separate runs, exact resume, idempotence, metrics, lr schedule, resampling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import saex.train.trainer as trainer
from saex.cli import main
from saex.config import to_arguments
from saex.dictionaries import SAE
from saex.errors import SaexError
from saex.train import checkpoint
from saex.train.config import TrainConfig
from saex.train.trainer import lr_at, train
from tests.train._synth import Interrupted, assert_same_weights, interrupt_at, metrics, snapshot, train_cfg, weights

# 8192 train rows / 64 = 128 steps per epoch: resumable runs cross several epochs.
RESUME = dict(
    ratio="4",
    steps=400,
    lr=3e-3,
    warmup_steps=20,
    decay_fraction=0.3,
    dead_window=64 * 8,
    resample_every=40,
    eval_every=30,
)


# What each architecture needs on top of RESUME (its own sparsity setting).
ARCH_EXTRA = {
    "tied_l1": {"alpha": "0.01,0.3"},
    "topk": {"k": "3"},
    "batchtopk": {"k": "3"},
    "matryoshka": {"k": "3"},
    "jumprelu": {"alpha": "0.001,0.01", "normalize": "mean_norm"},
    "gated": {"alpha": "0.005,0.02"},
    "untied_l1": {"alpha": "0.01,0.3", "decoder_bias": True, "normalize": "mean_norm"},
}


def no_duplicate_steps(out) -> list[dict]:
    rows = metrics(out)
    keys = [(r["step"], r["dictionary"]) for r in rows]
    assert len(keys) == len(set(keys)), "metrics.jsonl repeats a step"
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    return rows


@pytest.fixture(scope="module")
def reference(small_store, tmp_path_factory):
    """Uninterrupted runs (no intermediate checkpoints) that resumed runs must equal bitwise."""
    cache = {}

    def run(**kw):
        key = tuple(sorted(kw.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp("ref") / "out"
            train(train_cfg(small_store, out, checkpoint_every=0, **kw), progress=False)
            cache[key] = out
        return cache[key]

    return run


# -- sweeps ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, sweep, one",
    [
        ("tied_l1", dict(alpha="0.005,0.01,0.02"), [dict(alpha=a) for a in ("0.005", "0.01", "0.02")]),
        ("untied_l1", dict(alpha="0.005,0.01,0.02"), [dict(alpha=a) for a in ("0.005", "0.01", "0.02")]),
        ("tied_l1", dict(ratio="2,4", alpha="0.01"), [dict(ratio=r, alpha="0.01") for r in ("2", "4")]),
        ("topk", dict(k="2,4,6"), [dict(k=k) for k in ("2", "4", "6")]),
        ("batchtopk", dict(k="2,4"), [dict(k=k) for k in ("2", "4")]),
        ("matryoshka", dict(k="2,4"), [dict(k=k) for k in ("2", "4")]),
        ("jumprelu", dict(alpha="0.001,0.01"), [dict(alpha=a) for a in ("0.001", "0.01")]),
        ("jumprelu", dict(target_l0="3,6"), [dict(target_l0=t) for t in ("3", "6")]),
        ("gated", dict(alpha="0.005,0.02"), [dict(alpha=a) for a in ("0.005", "0.02")]),
    ],
)
def test_ensemble_equals_separate_runs(tmp_path, small_store, arch, sweep, one):
    common = dict(
        arch=arch, steps=150, eval_every=50, checkpoint_every=0, lr=3e-3, dead_window=64 * 4, resample_every=40
    )
    out = train(train_cfg(small_store, tmp_path / "sweep", **common, **sweep), progress=False)
    together = weights(out)
    assert len(together) == len(one)
    rows = metrics(out)
    for i, kw in enumerate(one):
        alone_out = train(train_cfg(small_store, tmp_path / f"alone{i}", **common, **kw), progress=False)
        ((name, alone),) = weights(alone_out).items()
        for key in alone:
            # Same seed, same data order, members independent: equal to float32 rounding, in fact bitwise.
            assert torch.equal(together[name][key], alone[key]), f"{name}/{key}"
        assert [r for r in rows if r["dictionary"] == name] == metrics(alone_out)


# -- resume -----------------------------------------------------------------------------------------------


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root + "/src", env.get("PYTHONPATH")) if p)
    return env


def _cli_args(cfg: TrainConfig) -> list[str]:
    return [*to_arguments(cfg), "--quiet"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("arch", ["tied_l1", "untied_l1", "topk", "batchtopk", "matryoshka", "jumprelu", "gated"])
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, small_store, reference, arch):
    extra = dict(arch=arch, **RESUME) | ARCH_EXTRA.get(arch, {})
    ref = reference(**extra)
    out = tmp_path / "out"
    cfg = train_cfg(small_store, out, checkpoint_every=25, **extra)
    log = open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115 (the child process writes it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "saex.cli", "train", *_cli_args(cfg)], env=_env(), stdout=subprocess.DEVNULL, stderr=log
    )
    state, deadline = out / "checkpoint" / "state.json", time.monotonic() + 90
    try:
        while True:
            # Kill once a checkpoint exists and an evaluation was logged after it: the resumed run must
            # then both restore the checkpoint and drop the log rows written after it.
            if state.is_file() and (out / "metrics.jsonl").is_file():
                try:
                    ck = json.loads(state.read_text())["step"]
                    logged = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if x]
                except (ValueError, KeyError):
                    logged, ck = [], None
                if logged and ck is not None and ck >= 50 and max(logged) > ck:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            if proc.poll() is not None:
                pytest.fail(
                    f"the run ended (rc {proc.returncode}) before it could be killed: "
                    f"{(tmp_path / 'stderr.txt').read_text()[-2000:]}"
                )
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "running" and not any((out / m["name"]).exists() for m in run["members"])
    # the same command again, to completion
    assert main(["train", *_cli_args(cfg)]) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert_same_weights(out, ref, exact=True)
    assert no_duplicate_steps(out) == metrics(ref)
    assert [p.name for p in (out / "checkpoint").iterdir()] and len(list((out / "checkpoint").glob("state-*"))) == 1


@pytest.mark.parametrize(
    "arch, stop, every",
    [
        ("tied_l1", 95, 25),  # mid-epoch; checkpoint at 75, the log row of step 90 must be dropped
        ("tied_l1", 130, 32),  # checkpoint at 128: exactly at the end of an epoch
        ("untied_l1", 261, 50),  # with a decoder bias and input scaling (the scale is restored from the checkpoint)
        ("topk", 215, 40),  # aux-k with dead latents: the dead counters must resume too; log row 210 dropped
        ("batchtopk", 215, 40),  # and the running threshold, saved with the weights
        ("matryoshka", 215, 40),
        ("jumprelu", 215, 40),  # learned thresholds and their Adam moments
        ("gated", 215, 40),  # the gate's parameters
    ],
)
def test_resume_in_process_equals_an_uninterrupted_run(
    tmp_path, monkeypatch, small_store, reference, arch, stop, every
):
    extra = dict(arch=arch, **RESUME) | ARCH_EXTRA.get(arch, {})
    ref = reference(**extra)
    out = tmp_path / "out"
    cfg = train_cfg(small_store, out, checkpoint_every=every, **extra)
    with monkeypatch.context() as m:
        interrupt_at(m, stop)
        with pytest.raises(Interrupted):
            train(cfg, progress=False)
    ck = json.loads((out / "checkpoint" / "state.json").read_text())
    assert ck["step"] == stop // every * every
    logged_after = [r["step"] for r in metrics(out) if r["step"] > ck["step"]]
    train(cfg, progress=False)
    assert_same_weights(out, ref, exact=True)
    assert no_duplicate_steps(out) == metrics(ref)
    assert bool(logged_after) == (stop in (95, 215))


def test_kill_between_checkpoint_tensors_and_state_json(tmp_path, monkeypatch, small_store, reference):
    """The tensors of a new checkpoint are on disk but state.json still names the previous one."""
    ref = reference(**RESUME)
    out = tmp_path / "out"
    cfg = train_cfg(small_store, out, checkpoint_every=25, **RESUME)
    real, seen = checkpoint.write_json_atomic, []

    def write_json(path, obj):
        if Path(path).name == "state.json":
            seen.append(obj["step"])
            if len(seen) == 4:
                raise Interrupted(obj["step"])
        return real(path, obj)

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "write_json_atomic", write_json)
        with pytest.raises(Interrupted):
            train(cfg, progress=False)
    files = sorted(p.name for p in (out / "checkpoint").iterdir())
    assert files == ["state-000000075.safetensors", "state-000000100.safetensors", "state.json"]
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 75
    train(cfg, progress=False)
    assert_same_weights(out, ref, exact=True)
    assert no_duplicate_steps(out) == metrics(ref)


def test_interrupted_while_saving_the_dictionaries(tmp_path, monkeypatch, small_store, reference):
    """Killed after the final checkpoint, while exporting: the re-run exports from it without training."""
    from saex.dictionaries import sae as sae_module

    ref = reference(**RESUME)
    out = tmp_path / "out"
    cfg = train_cfg(small_store, out, checkpoint_every=25, **RESUME)
    real, saved = sae_module.SAE.save, []

    def save(self, folder):
        if saved:
            raise Interrupted(folder)
        saved.append(folder)
        return real(self, folder)

    with monkeypatch.context() as m:
        m.setattr(sae_module.SAE, "save", save)
        with pytest.raises(Interrupted):
            train(cfg, progress=False)
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    steps = []
    with monkeypatch.context() as m:
        real_step = trainer._train_step
        m.setattr(trainer, "_train_step", lambda *a: steps.append(1) or real_step(*a))
        train(cfg, progress=False)
    assert not steps
    assert_same_weights(out, ref, exact=True)
    assert no_duplicate_steps(out) == metrics(ref)


def test_stale_checkpoint_temporaries_are_removed(tmp_path, monkeypatch, small_store):
    out = tmp_path / "out"
    cfg = train_cfg(small_store, out, steps=100, checkpoint_every=25)
    with monkeypatch.context() as m:
        interrupt_at(m, 60)
        with pytest.raises(Interrupted):
            train(cfg, progress=False)
    stale = out / "checkpoint" / ".tmp-state-000000075.safetensors.abc123"
    stale.write_bytes(b"x" * 1000)  # what a kill in the middle of write_safetensors_atomic leaves
    train(cfg, progress=False)
    assert not stale.exists()


def test_resume_drops_a_torn_metrics_line(tmp_path, monkeypatch, small_store, reference):
    ref = reference(**RESUME)
    out = tmp_path / "out"
    cfg = train_cfg(small_store, out, checkpoint_every=25, **RESUME)
    with monkeypatch.context() as m:
        interrupt_at(m, 95)
        with pytest.raises(Interrupted):
            train(cfg, progress=False)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 120, "tok')
    train(cfg, progress=False)
    assert_same_weights(out, ref, exact=True)
    assert no_duplicate_steps(out) == metrics(ref)


# -- idempotence, refusal, replay -------------------------------------------------------------------------


def test_completed_run_again_is_a_no_op(tmp_path, small_store):
    cfg = train_cfg(small_store, tmp_path / "out", steps=60)
    out = train(cfg, progress=False)
    before = snapshot(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    called = []
    orig = trainer._train_step
    trainer._train_step = lambda *a: called.append(1) or orig(*a)
    try:
        # not an identity field (eval_every is: the evaluations decide the convergence verdict)
        assert train(replace(cfg, checkpoint_every=3), progress=False) == out
    finally:
        trainer._train_step = orig
    assert not called and snapshot(out) == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(alpha="0.01,0.03"), "alpha"),
        (dict(steps=61), "steps"),
        (dict(arch="untied_l1"), "arch"),
        (dict(seed=1), "seed"),
        (dict(lr=2e-3), "lr"),
    ],
)
def test_different_config_into_the_same_out_is_refused(tmp_path, small_store, change, field):
    cfg = train_cfg(small_store, tmp_path / "out", steps=60)
    out = train(cfg, progress=False)
    before = snapshot(out)
    with pytest.raises(SaexError, match=rf"different training run \({field}: folder has") as e:
        train(replace(cfg, **change), progress=False)
    assert str(getattr(cfg, field)) in str(e.value) or repr(getattr(cfg, field)) in str(e.value)
    assert snapshot(out) == before


def test_from_run_json_into_a_new_out_reproduces_the_weights(tmp_path, small_store, capsys):
    out = train(
        train_cfg(small_store, tmp_path / "a", steps=80, arch="untied_l1", decoder_bias=True, normalize="mean_norm"),
        progress=False,
    )
    assert main(["train", "--from", str(out / "run.json"), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert_same_weights(out, tmp_path / "b", exact=True)
    ra, rb = (json.loads((tmp_path / d / "run.json").read_text()) for d in "ab")
    assert ra["identity"] == rb["identity"] and rb["config"]["out"] == str(tmp_path / "b")
    assert metrics(out) == metrics(tmp_path / "b")


def test_out_folder_with_unrelated_files_is_refused(tmp_path, small_store):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SaexError, match="not empty and holds no saex training run"):
        train(train_cfg(small_store, out), progress=False)
    assert snapshot(out) == {"notes.txt": snapshot(out)["notes.txt"]} and (out / "notes.txt").read_text() == "mine"


# -- metrics ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize, scale", [("none", 1.0), ("mean_norm", 25.0)])
def test_metrics_rows_and_independent_fvu(tmp_path, small_store, small_data, normalize, scale):
    from tests.train._synth import write_store

    _, X, H = small_data
    store = small_store if scale == 1.0 else write_store(tmp_path / "acts", X * scale, H * scale, shard_rows=1024)
    cfg = train_cfg(
        store,
        tmp_path / "out",
        alpha="0.005,0.02",
        steps=170,
        eval_every=40,
        eval_tokens=300,
        normalize=normalize,
        dead_window=64 * 20,
    )
    out = train(cfg, progress=False)
    rows = metrics(out)
    names = ["tied_l1_r4_a0.005", "tied_l1_r4_a0.02"]
    assert [(r["step"], r["dictionary"]) for r in rows] == [(s, n) for s in (40, 80, 120, 160, 170) for n in names]
    for r in rows:
        assert set(r) == {"step", "tokens", "dictionary", "mse", "fvu", "l0", "loss", "dense_fraction", "dead_fraction"}
        assert r["tokens"] == 64 * r["step"] and 0 <= r["dead_fraction"] <= 1 and r["mse"] >= 0
    for n in names:
        first, last = [r for r in rows if r["dictionary"] == n][::4]
        assert last["fvu"] < first["fvu"]  # it learns
    # The held-out sample: 300 of the 1024 held-out rows, picked as trainer._heldout_sample does.
    idx = np.sort(np.random.default_rng([cfg.seed, 1]).permutation(len(H))[:300])
    x = H[idx] * scale
    for n in names:
        sae = SAE.load(out / n)
        c = sae.encode(x)
        err = (c @ sae.W_dec_FD + sae.b_dec_D - x).pow(2).sum()
        got = {
            "mse": (err / x.numel()).item(),
            "fvu": (err / (x - x.mean(0)).pow(2).sum()).item(),
            "l0": (c > 0).sum(1).float().mean().item(),
            "dense_fraction": ((c > 0).float().mean(0) > 0.1).float().mean().item(),
        }
        # the objective in the units training saw: inputs s·x give codes s·c, so MSE·s² + α·s·L1
        s = json.loads((out / "run.json").read_text())["scale"]
        alpha = json.loads((out / n / "cfg.json").read_text())["metadata"]["alpha"]
        got["loss"] = got["mse"] * s**2 + alpha * s * c.abs().sum(1).mean().item()
        last = rows[-2 + names.index(n)]
        for key in got:
            assert last[key] == pytest.approx(got[key], rel=1e-4, abs=1e-7), (n, key)
    if normalize == "mean_norm":
        meta = json.loads((out / names[0] / "cfg.json").read_text())["metadata"]
        s = meta["input_scale"]
        assert s == pytest.approx(np.sqrt(16) / (X[:1024] * scale).norm(dim=1).mean().item(), rel=1e-5)


def test_no_evaluation_when_eval_every_is_zero(tmp_path, small_store):
    out = train(train_cfg(small_store, tmp_path / "out", steps=30, eval_every=0), progress=False)
    assert (out / "metrics.jsonl").read_text() == ""


# -- learning-rate schedule -------------------------------------------------------------------------------


def test_lr_schedule_by_hand():
    c = TrainConfig(lr=1e-3, warmup_steps=10, decay_fraction=0.25)
    # warm-up: (step + 1) / 10 of lr
    assert lr_at(c, 0, 100) == pytest.approx(1e-4)
    assert lr_at(c, 4, 100) == pytest.approx(5e-4)
    assert lr_at(c, 9, 100) == pytest.approx(1e-3)
    assert lr_at(c, 50, 100) == pytest.approx(1e-3)
    # decay over the last 25 steps: (100 - step) / 25 of lr
    assert lr_at(c, 75, 100) == pytest.approx(1e-3)
    assert lr_at(c, 80, 100) == pytest.approx(0.8e-3)
    assert lr_at(c, 99, 100) == pytest.approx(0.04e-3)
    # no schedule: constant
    plain = TrainConfig(lr=3e-4, decay_fraction=0.0)
    assert {lr_at(plain, s, 10) for s in range(10)} == {3e-4}
    # overlapping warm-up and decay: the smaller factor wins
    short = TrainConfig(lr=1.0, warmup_steps=8, decay_fraction=1.0)
    assert [lr_at(short, s, 4) for s in range(4)] == pytest.approx([1 / 8, 2 / 8, 3 / 8, 1 / 4])


def test_trainer_sets_the_scheduled_lr_every_step(tmp_path, small_store, monkeypatch):
    seen = []
    real_step = torch.optim.Adam.step

    def step(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    cfg = train_cfg(small_store, tmp_path / "out", steps=40, lr=1e-2, warmup_steps=5, decay_fraction=0.5, eval_every=0)
    train(cfg, progress=False)
    assert seen == pytest.approx([lr_at(cfg, s, 40) for s in range(40)])
    assert seen[0] == pytest.approx(2e-3) and seen[-1] == pytest.approx(1e-2 / 20)


# -- resampling ------------------------------------------------------------------------------------------


def test_resampling_revives_dead_features(tmp_path, small_store, small_data):
    """A large α with lr 1e-2 kills most features within a few hundred steps; resampling every 100 steps
    re-points the dead ones at badly reconstructed inputs, and many of them stay alive."""
    _, X, H = small_data
    common = dict(
        alpha="1", steps=650, lr=1e-2, eval_every=50, eval_tokens=1024, dead_window=64 * 25, checkpoint_every=0
    )
    plain = train(train_cfg(small_store, tmp_path / "plain", **common), progress=False)
    resampled = train(train_cfg(small_store, tmp_path / "resampled", resample_every=100, **common), progress=False)
    dead = {k: [r["dead_fraction"] for r in metrics(o)][-3:] for k, o in (("plain", plain), ("res", resampled))}
    fires = {
        k: int((SAE.load(o / "tied_l1_r4_a1").encode(H) > 0).any(0).sum())
        for k, o in (("plain", plain), ("res", resampled))
    }
    assert min(dead["plain"]) >= 0.7, dead
    assert max(dead["res"]) <= min(dead["plain"]) - 0.3, dead
    assert fires["res"] >= fires["plain"] + 15, fires


def test_resampled_rows_point_at_training_inputs(tmp_path, small_store, small_data):
    """When the last step resamples, the re-initialised rows are exactly unit training inputs."""
    _, X, _ = small_data
    out = train(
        train_cfg(
            small_store,
            tmp_path / "out",
            alpha="1",
            steps=300,
            lr=1e-2,
            eval_every=0,
            dead_window=64 * 25,
            resample_every=100,
            checkpoint_every=0,
        ),
        progress=False,
    )
    W = SAE.load(out / "tied_l1_r4_a1").W_dec_FD
    best = (W @ torch.nn.functional.normalize(X, dim=1).T).max(1).values
    assert (best > 1 - 1e-5).sum() >= 20, best.sort().values
    # the same run without resampling has no row that close to an input
    ref = train(
        train_cfg(
            small_store,
            tmp_path / "ref",
            alpha="1",
            steps=300,
            lr=1e-2,
            eval_every=0,
            dead_window=64 * 25,
            checkpoint_every=0,
        ),
        progress=False,
    )
    W0 = SAE.load(ref / "tied_l1_r4_a1").W_dec_FD
    assert (W0 @ torch.nn.functional.normalize(X, dim=1).T).max() < 1 - 1e-4


def test_excluded_positions_never_reach_training(tmp_path, small_data):
    """Two stores that differ only at position 0 of every context (there: a 50× 'attention sink'): with
    position 0 excluded, training, input scaling and held-out metrics cannot tell them apart."""
    from tests.train._synth import T, write_store

    _, X, H = small_data
    sink = lambda A: torch.where((torch.arange(len(A)) % T == 0)[:, None], 50 * A + 30, A)
    # precondition of the last check: every sink row is far above 20 × the median norm, every other row below
    norms, med = sink(X).norm(dim=1), sink(X).norm(dim=1).median()
    assert (norms[::T] > 20 * med).all() and (norms.reshape(-1, T)[:, 1:] < 20 * med).all()
    plain = write_store(tmp_path / "plain", X, H, shard_rows=1024)
    sunk = write_store(tmp_path / "sunk", sink(X), sink(H), shard_rows=1024)
    kw = dict(alpha="0.01", steps=40, eval_every=20, normalize="mean_norm", exclude_first=1, max_norm_ratio=0.0)
    a = train(train_cfg(plain, tmp_path / "a", **kw), progress=False)
    b = train(train_cfg(sunk, tmp_path / "b", **kw), progress=False)
    assert_same_weights(a, b)
    assert metrics(a) == metrics(b)  # the same held-out numbers too
    run = json.loads((a / "run.json").read_text())
    assert run["rows"] == {
        "exclude_first": 1,
        "exclude_special_tokens": False,
        "max_norm_ratio": 0.0,
        "kept_train_rows": len(X) * (T - 1) // T,
        "train_rows": len(X),
        "norm_limit": None,
    }
    # kept, the sink changes everything
    c = train(train_cfg(sunk, tmp_path / "c", **(kw | {"exclude_first": 0})), progress=False)
    assert json.loads((c / "run.json").read_text())["scale"] != run["scale"]
    # the norm limit alone finds the sink rows (50× the median norm): it trains what excluding position 0 does
    d = train(train_cfg(sunk, tmp_path / "d", **(kw | {"exclude_first": 0, "max_norm_ratio": 20.0})), progress=False)
    assert_same_weights(a, d)
    assert json.loads((d / "run.json").read_text())["rows"]["kept_train_rows"] == run["rows"]["kept_train_rows"]
