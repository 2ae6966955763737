"""Data-parallel training under torchrun: two CPU processes with gloo reproduce a single-process run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from saex.train.trainer import train
from tests._support import free_port
from tests.train._synth import HOOK, metrics, train_cfg, weights


@pytest.mark.parametrize(
    "arch, extra", [("tied_l1", ["--alpha", "0.01,0.03"]), ("topk", ["--k", "4,6", "--dead-window", "256"])]
)
def test_two_ranks_match_one_process(small_store, tmp_path, arch, extra):
    args = [
        "--acts",
        str(small_store),
        "--hook",
        HOOK,
        "--arch",
        arch,
        "--ratio",
        "2",
        "--steps",
        "60",
        "--batch-size",
        "64",
        "--exclude-first",
        "0",
        "--no-exclude-special-tokens",
        "--eval-every",
        "20",
        "--eval-tokens",
        "256",
        "--checkpoint-every",
        "20",
        "--quiet",
        *extra,
    ]
    kw = dict(
        arch=arch,
        ratio="2",
        steps=60,
        batch_size=64,
        eval_every=20,
        eval_tokens=256,
        checkpoint_every=20,
    )
    if arch == "topk":
        kw |= dict(k="4,6", dead_window=256)
    else:
        kw |= dict(alpha="0.01,0.03")
    single = train(train_cfg(small_store, tmp_path / "single", **kw), progress=False)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            "-m",
            "saex.cli",
            "train",
            *args,
            "--out",
            str(tmp_path / "ddp"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One summary (from rank 0), not one per process.
    assert proc.stdout.count(f" on {HOOK} of ") == 1
    a, b = weights(single), weights(tmp_path / "ddp")
    assert a.keys() == b.keys() and len(a) == 2
    for name in a:
        for key in a[name]:
            # Averaging two half-batch gradients differs from one whole-batch gradient only in summation
            # order; Adam can turn that into a step of ±lr for an element whose gradient is ~0, so the
            # bound on single elements is lr-sized while the typical difference stays at rounding level.
            diff = (a[name][key] - b[name][key]).abs()
            assert diff.max() < 5e-3 and diff.mean() < 1e-5, (name, key, diff.max().item(), diff.mean().item())
    # Only rank 0 wrote: one metrics row per evaluation and dictionary, as in the single-process run.
    assert [(r["step"], r["dictionary"]) for r in metrics(single)] == [
        (r["step"], r["dictionary"]) for r in metrics(tmp_path / "ddp")
    ]
    state = load_file(str(next((tmp_path / "ddp" / "checkpoint").glob("state-*.safetensors"))))
    assert any(k.startswith("adam.") for k in state)


def test_batch_must_divide_across_ranks(small_store, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            "-m",
            "saex.cli",
            "train",
            "--acts",
            str(small_store),
            "--hook",
            HOOK,
            "--batch-size",
            "63",
            "--steps",
            "10",
            "--out",
            str(tmp_path / "x"),
            "--quiet",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "--batch-size 63 must be divisible by the number of processes (2)" in proc.stderr
    assert not (tmp_path / "x").exists()
