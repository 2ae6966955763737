"""The convergence check (``saex.train.convergence``) and α calibration's interpolation, on hand-made
trajectories and a synthetic store where the answer is known."""

from __future__ import annotations

import json
import math

import pytest

from saex.errors import SaexError
from saex.train import convergence
from saex.train.calibration import interpolate
from tests.train._synth import ground_truth, train_cfg, write_store


def _rows(l0s, losses, dense_end=0.0, total=100):
    """Evaluations at steps 10, 20, ..., total with the given L0 and loss values."""
    n = len(l0s)
    return [
        {"step": total * (i + 1) // n, "l0": l0, "loss": loss, "dense_fraction": dense_end if i == n - 1 else 0.5}
        for i, (l0, loss) in enumerate(zip(l0s, losses))
    ]


def test_flat_tail_is_converged():
    v = convergence.assess(
        _rows([300, 120, 60, 50, 48, 47, 46, 46, 45, 45], [1, 0.5, 0.3, 0.25, 0.24, 0.23, 0.23, 0.22, 0.22, 0.22]), 100
    )
    # the tail starts at the last evaluation at or before step 80: L0 46 -> 45 (2.2%), loss .22 -> .22
    assert v["converged"] is True and v["reasons"] == []
    assert v["tail_start_step"] == 80 and v["l0_drop"] == pytest.approx(1 / 45)


def test_falling_l0_is_not_converged_with_the_numbers():
    v = convergence.assess(_rows([300, 280, 260, 229, 220], [0.5, 0.45, 0.44, 0.43, 0.42]), 100)
    # step 80: L0 229 -> 220 at step 100: (229 - 220) / 220 = 4.1%: under the 5% limit; loss (.43-.42)/.42 = 2.4%
    assert v["converged"] is True
    v = convergence.assess(_rows([300, 280, 260, 250, 220], [0.5, 0.45, 0.44, 0.43, 0.42]), 100)
    assert v["converged"] is False and v["l0_drop"] == pytest.approx(30 / 220) and v["still_changing"]
    assert "--steps" in convergence.advice(v)
    assert "L0 still falling: 250.0 → 220.0 (14%)" in v["reasons"][0]


def test_falling_loss_is_not_converged():
    v = convergence.assess(_rows([50, 50, 50, 50, 50], [0.5, 0.4, 0.35, 0.33, 0.30]), 100)
    assert v["converged"] is False and v["loss_drop"] == pytest.approx(0.03 / 0.30)
    assert v["reasons"][0].startswith("loss still falling: 0.33 → 0.3 (10%)")


def test_dense_features_fail_only_sparse_methods():
    rows = _rows([50] * 5, [0.3] * 5, dense_end=0.2)
    v = convergence.assess(rows, 100)
    assert v["converged"] is False and v["dense"] and not v["still_changing"]
    assert "larger α" in convergence.advice(v)
    assert "20.0% of features fire on more than 10% of held-out inputs" in convergence.assess(rows, 100)["reasons"][0]
    assert convergence.assess(rows, 100, sparse=False)["converged"] is True  # α = 0 asks for no sparsity


def test_without_evaluations_nothing_is_claimed():
    assert convergence.assess([], 100)["converged"] is None
    v = convergence.assess([{"step": 100, "l0": 5, "loss": 1, "dense_fraction": 0.0}], 100)
    assert v["converged"] is None and "no evaluation before step 80" in v["reasons"][0]
    assert convergence.describe(v).startswith("not checked")


def test_trainer_records_the_verdict_short_run_fires_long_run_quiet(tmp_path):
    """Sharkey et al.'s synthetic features: 30 steps leave L0 falling steeply; 1500 steps converge."""
    from saex.train.trainer import summary, train

    # each of 64 features fires on ~2/64 ≈ 5% of inputs: under the dense limit once learnt
    G, X, H = ground_truth(d=16, n_gt=64, n=16_384, n_heldout=2048, active=2.0, seed=1)
    store = write_store(tmp_path / "acts", X, H, shard_rows=4096)
    verdicts = {}
    for steps in (30, 1500):
        out = train(
            train_cfg(
                store,
                tmp_path / f"s{steps}",
                ratio="4",
                alpha="0.05",
                steps=steps,
                batch_size=128,
                lr=3e-3,
                eval_every=max(1, steps // 10),
                checkpoint_every=0,
            ),
            progress=False,
        )
        run = json.loads((out / "run.json").read_text())
        meta = json.loads((out / "tied_l1_r4_a0.05" / "cfg.json").read_text())["metadata"]
        assert meta["convergence"] == run["convergence"]["tied_l1_r4_a0.05"]
        verdicts[steps] = meta["convergence"]
        text = summary(out)
        assert ("NOT CONVERGED" in text) == (verdicts[steps]["converged"] is False)
    assert verdicts[30]["converged"] is False, verdicts[30]
    assert verdicts[1500]["converged"] is True, verdicts[1500]


# -- calibration ---------------------------------------------------------------------------------------------


def test_interpolation_is_linear_in_log_log():
    grid = [(1e-3, 100.0), (1e-2, 10.0)]  # L0 = 0.1 / α: a line of slope -1 in log-log
    for target in (10, 31.6, 100):
        a, extrapolated = interpolate(grid, target)
        assert a == pytest.approx(0.1 / target, rel=1e-9) and not extrapolated
    a, extrapolated = interpolate(grid, 1.0)  # beyond the grid: along the end segment, flagged
    assert a == pytest.approx(0.1) and extrapolated


def test_interpolation_picks_the_segment_around_the_target():
    grid = [(1e-4, 400.0), (1e-3, 100.0), (1e-2, 10.0)]
    a, _ = interpolate(grid, 200.0)  # between 1e-4 (400) and 1e-3 (100): log-linear there
    t = (math.log(200) - math.log(400)) / (math.log(100) - math.log(400))
    assert a == pytest.approx(math.exp(math.log(1e-4) + t * (math.log(1e-3) - math.log(1e-4))))


def test_extrapolation_stays_within_a_factor_of_ten_of_the_grid():
    # a nearly flat end segment: the line would ask for an α of about 1e-3 · 10^(2 / 0.0043)
    a, extrapolated = interpolate([(1e-3, 100.0), (2e-3, 99.7)], 1.0)
    assert extrapolated and a == pytest.approx(2e-2)
    a, extrapolated = interpolate([(1e-3, 100.0), (2e-3, 99.7)], 1e4)
    assert extrapolated and a == pytest.approx(1e-4)


@pytest.mark.parametrize("grid", [[(1e-3, 0.0), (1e-2, 0.0)], [(1e-3, 5.0), (1e-2, 5.0)], [(1e-3, 5.0)]])
def test_interpolation_needs_two_distinct_l0(grid):
    with pytest.raises(SaexError):
        interpolate(grid, 10.0)


def test_real_runs_old_quick_budget_fires_new_one_is_quiet():
    """Held-out trajectories recorded from saex train on SmolLM2-135M layer 6 (tests/train/data): the quick
    preset's old budget, 146 steps of 1024, is NOT converged; every dictionary of the new quick budget is."""
    from pathlib import Path

    data = json.loads((Path(__file__).parent / "data" / "smollm2_l6_metrics.json").read_text())
    old = data["old_quick"]
    for name, rows in old["dictionaries"].items():
        v = convergence.assess(rows, old["steps"])
        assert v["converged"] is False, (name, v)
        # each criterion fires on its own: the loss still falling, and 76% of the features dense
        assert v["loss_drop"] > convergence.MAX_LOSS_DROP and v["dense_fraction"] > 0.5
    new = data["new_quick"]
    assert len(new["dictionaries"]) == 4
    for name, rows in new["dictionaries"].items():
        v = convergence.assess(rows, new["steps"])
        assert v["converged"] is True, (name, v)
