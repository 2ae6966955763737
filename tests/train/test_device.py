"""Training steps create every tensor on their inputs' device.

No GPU here, so the check runs the steps on the CPU with torch's default device set to ``meta``: a tensor made
inside a step without ``device=`` (which on a GPU would land on the CPU and fail there, or silently slow the
step) is then a meta tensor, and the step raises where it meets the CPU data, or reads ``.item()`` of it, or
leaves a result different from the same step run normally, which the test compares bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch

from saex.dictionaries.ensemble import architecture_names, architectures
from saex.distributed import Ranks
from saex.train import trainer
from saex.train.config import TrainConfig, validate
from saex.train.trainer import train


def _run(cfg, groups, x_BD, y_BO, steps):
    params = [p for g in groups for p in g.model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, fused=True)
    for grp in groups:
        grp.step_fn = grp.model
    for step in range(steps):
        trainer._train_step(cfg, [(groups, x_BD, y_BO)], opt, step, steps, Ranks())
    return {f"{i}.{n}": p.detach().clone() for i, g in enumerate(groups) for n, p in g.model.named_parameters()}


def _sparsity(arch: str, alpha: list[float], k: list[int]) -> dict:
    """The sparsity options ``arch`` reads (another architecture's are refused)."""
    return dict(k=k, aux_k=4) if "k" in architectures()[arch].reads else dict(alpha=alpha)


@pytest.mark.parametrize("transcoder", [False, True])
@pytest.mark.parametrize("arch", architecture_names())
def test_training_step_makes_no_tensor_off_its_inputs_device(arch, transcoder):
    if transcoder and not architectures()[arch].can_transcode:
        pytest.skip(f"{arch} cannot be a transcoder")
    D, d_out, B = 8, 6, 32
    cfg = TrainConfig(
        arch=arch, hook="h", target="t" if transcoder else "", skip=transcoder, ratio=[2.0], steps=4, batch_size=B,
        dead_window=1, resample_every=2, decay_fraction=0.0, **_sparsity(arch, alpha=[1e-3, 3e-2], k=[3]),
    )  # fmt: skip
    members = validate(cfg, D)
    g = torch.Generator().manual_seed(0)
    x_BD = torch.randn(B, D, generator=g)
    y_BO = torch.randn(B, d_out, generator=g) if transcoder else None
    groups = trainer._build_groups(cfg, members, D, d_out if transcoder else None)
    reference = _run(cfg, copy.deepcopy(groups), x_BD, y_BO, cfg.steps)
    with torch.device("meta"):
        got = _run(cfg, groups, x_BD, y_BO, cfg.steps)
        outputs = [grp.model(x_BD, grp.coef_K, grp.since_fired_KF >= 1, y_BO) for grp in groups]
    for o in outputs:  # every output of the step, not only those the trainer reads, is where the inputs are
        for name, value in vars(o).items():
            assert value is None or value.device.type == "cpu", name
    assert got.keys() == reference.keys()
    for name, ref in reference.items():
        assert got[name].device.type == "cpu", name
        torch.testing.assert_close(got[name], ref, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("arch", architecture_names())
def test_autocast_trains_every_architecture_with_float32_weights(arch):
    """--autocast bfloat16: the big products run in bfloat16 (the autograd-built steps then differ from float32 in
    the low bits), the fused ReLU + L1 step stays float32 (bit-identical), the weights stay float32."""
    D, B = 16, 64
    x_BD = torch.randn(B, D, generator=torch.Generator().manual_seed(1))
    got = {}
    for autocast in ("none", "bfloat16"):
        cfg = TrainConfig(
            arch=arch, hook="h", ratio=[2.0], steps=3, batch_size=B, autocast=autocast, **_sparsity(arch, [1e-3], [4])
        )
        got[autocast] = _run(cfg, trainer._build_groups(cfg, validate(cfg, D), D, None), x_BD, None, cfg.steps)
    for name, ref in got["none"].items():
        w = got["bfloat16"][name]
        assert w.dtype == torch.float32 and torch.isfinite(w).all(), name
        torch.testing.assert_close(w, ref, rtol=0.05, atol=0.01, msg=name)
    same = all(torch.equal(got["bfloat16"][n], ref) for n, ref in got["none"].items())
    assert same == (arch in ("tied_l1", "untied_l1")), "autocast changed nothing" if same else "fused step not float32"


@pytest.mark.parametrize("arch", architecture_names())
def test_a_whole_training_run_makes_no_tensor_on_the_default_device(small_store, tmp_path, arch):
    """``train()`` end to end (store reading, scaling, held-out evaluation, resampling, checkpoint, export) with
    torch's default device set to ``meta``: every tensor it makes names its device, so the run equals one made
    normally, bit for bit. (Found: the tied SAE's export made its zero decoder bias on the default device.)"""
    from tests.train._synth import assert_same_weights, train_cfg

    kw = dict(arch=arch, steps=40, eval_every=20, checkpoint_every=20, resample_every=20)
    kw |= dict(k="3") if "k" in architectures()[arch].reads else dict(alpha="0.01")
    a = train(train_cfg(small_store, tmp_path / "a", **kw), progress=False)
    with torch.device("meta"):
        b = train(train_cfg(small_store, tmp_path / "b", **kw), progress=False)
    assert_same_weights(a, b, exact=True)
