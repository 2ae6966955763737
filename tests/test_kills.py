"""SIGKILL at three points of `saex train` and `saex features`, then the same command again: the result equals an
uninterrupted run's, byte for byte. (`saex reproduce` is killed at three stages in tests/reproduce/test_pipeline.py,
`saex harvest` in tests/stages/test_harvest.py, every architecture's training in tests/train/test_trainer.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from saex.dictionaries import SAE
from tests._cli import run_cli
from tests.store._helpers import RESID

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _kill_when(args: list[str], ready, timeout: float = 120) -> None:
    """Run `saex ARGS` in a process and SIGKILL it as soon as ``ready()`` holds (failing if it ends first)."""
    proc = subprocess.Popen([sys.executable, "-m", "saex.cli", *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point: {proc.stderr.read()[-2000:]}")
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _files(root: Path, skip=("features.json", "run.json", "metrics.jsonl", ".saex.lock")) -> dict:
    """Every file's bytes, a JSON file's content with its own output path (config.out) left out."""
    out: dict = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in skip:
            if p.suffix == ".json":
                data = json.loads(p.read_text())
                data.get("config", {}).pop("out", None)
                out[str(p.relative_to(root))] = data
            else:
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def features_inputs(make_store, tmp_path_factory):
    """A store and three dictionaries on it (each index takes a moment, so a kill can land between them)."""
    root = tmp_path_factory.mktemp("kill-features")
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        W = torch.randn(32, 1024, generator=g) / 32**0.5
        SAE(W, W.T.clone(), torch.zeros(1024), torch.zeros(32), metadata={"hook_name": RESID}).save(
            root / "d" / f"d{i}"
        )
    return make_store(tokens=2048, heldout_tokens=2048, dtype="float32"), root / "d"


@pytest.mark.parametrize("point", [0, 1, 2])
def test_features_killed_at_three_points_resumes_to_the_same_indexes(features_inputs, tmp_path, point):
    acts, dicts = features_inputs

    def args(out):
        return [
            "features",
            "--acts",
            str(acts),
            "--dicts",
            str(dicts),
            "--out",
            str(out),
            "--fragment-length",
            "8",
            "--no-one-per-document",
            "--quiet",
        ]

    assert run_cli(*args(tmp_path / "whole"))[0] == 0
    out = tmp_path / "killed"

    def ready():  # kill points: before any index is done, with one done, with two done
        return (out / "features.json").is_file() and len(list(out.glob("*/index.json"))) >= point

    _kill_when(args(out), ready)
    rc, _, err = run_cli(*args(out))
    assert rc == 0, err
    assert _files(out) == _files(tmp_path / "whole")
    whole, resumed = (json.loads((p / "features.json").read_text()) for p in (tmp_path / "whole", out))
    assert resumed.get("counts") == whole.get("counts")


@pytest.mark.parametrize("at_step", [20, 120, 260])
def test_train_killed_at_three_points_resumes_to_the_same_weights(small_store, tmp_path, at_step):
    """Killed once the checkpoint of ``at_step`` is on disk (early, middle, late in a 300-step run)."""
    from saex.config import to_arguments
    from saex.train.trainer import train
    from tests.train._synth import assert_same_weights, train_cfg

    kw = dict(steps=300, checkpoint_every=20, eval_every=50)
    whole = train(train_cfg(small_store, tmp_path / "whole", **kw), progress=False)
    cfg = train_cfg(small_store, tmp_path / "killed", **kw)
    state = tmp_path / "killed" / "checkpoint" / "state.json"

    def ready():
        try:
            return json.loads(state.read_text())["step"] >= at_step
        except (OSError, ValueError, KeyError):
            return False

    _kill_when(["train", *to_arguments(cfg), "--quiet"], ready)
    assert run_cli("train", *to_arguments(cfg), "--quiet")[0] == 0
    assert_same_weights(tmp_path / "killed", whole, exact=True)
