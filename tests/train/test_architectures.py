"""Training behaviour specific to the modern architectures: JumpReLU thresholds that learn and a λ that sets
the L0 (SAELens once shipped thresholds that did not move: #494, #718), a target L0 that is reached,
Matryoshka prefixes that each reconstruct, and bad settings refused with one clear error."""

from __future__ import annotations

import json

import pytest

from saex.dictionaries import SAE
from saex.dictionaries.jumprelu import THRESHOLD_INIT
from saex.dictionaries.matryoshka import prefix_sizes
from saex.errors import SaexError
from saex.train.config import TrainConfig
from saex.train.trainer import train
from tests.train._synth import metrics, train_cfg


def test_jumprelu_thresholds_learn_and_lambda_sets_the_l0(tmp_path, small_store, small_data):
    _, _, H = small_data
    cfg = train_cfg(
        small_store, tmp_path / "out", arch="jumprelu", alpha="0.001,0.01", steps=400, lr=3e-3, normalize="mean_norm"
    )
    out = train(cfg, progress=False)
    run = json.loads((out / "run.json").read_text())
    saes = {a: SAE.load(out / f"jumprelu_r4_a{a}") for a in ("0.001", "0.01")}
    theta0 = THRESHOLD_INIT * 4 / run["scale"]  # √16 = 4, in unscaled units
    for sae in saes.values():
        moved = (sae.threshold_F - theta0).abs() > 0.5 * theta0
        assert moved.float().mean() > 0.5, "the thresholds did not learn"
        assert (sae.threshold_F > 0).all()
    l0 = {a: (s.encode(H) != 0).float().sum(1).mean().item() for a, s in saes.items()}
    assert l0["0.01"] < 0.7 * l0["0.001"], l0  # the stronger penalty buys a sparser code
    # under the strong penalty the L0 ends far below where it starts (θ₀ is tiny: every feature fires on about
    # half the inputs, L0 ≈ 32 of 64) and keeps falling after the first evaluation
    rows = [r["l0"] for r in metrics(out) if r["dictionary"] == "jumprelu_r4_a0.01"]
    assert l0["0.01"] < 0.3 * 64 and rows[-1] < rows[0], rows


def test_jumprelu_target_l0_is_reached(tmp_path, small_store, small_data):
    _, _, H = small_data
    cfg = train_cfg(small_store, tmp_path / "out", arch="jumprelu", target_l0="3,8", steps=600, lr=3e-3)
    out = train(cfg, progress=False)
    for t in (3, 8):
        sae = SAE.load(out / f"jumprelu_r4_l0{t}")
        assert sae.metadata["alpha"] == 1.0
        l0 = (sae.encode(H) != 0).float().sum(1).mean().item()
        assert abs(l0 - t) < 0.2 * t, (t, l0)
    assert [m["target_l0"] for m in json.loads((out / "run.json").read_text())["members"]] == [3.0, 8.0]


def test_matryoshka_prefixes_each_reconstruct(tmp_path, small_store, small_data):
    """The nested prefixes' held-out FVU falls as they grow, and the smallest prefix alone already explains
    much more than the same number of a plain BatchTopK dictionary's first latents."""
    _, _, H = small_data
    common = dict(k="4", steps=600, lr=3e-3, eval_every=0)
    out = train(train_cfg(small_store, tmp_path / "m", arch="matryoshka", **common), progress=False)
    sae = SAE.load(out / "matryoshka_r4_k4")
    sizes = sae.metadata["matryoshka_prefixes"]
    assert sizes == prefix_sizes([0.0625, 0.125, 0.25, 0.5], 64) == [4, 8, 16, 32, 64]
    c = sae.encode(H)
    var = (H - H.mean(0)).pow(2).sum()

    def fvu(sae, c, m):
        return ((c[:, :m] @ sae.W_dec_FD[:m] + sae.b_dec_D - H).pow(2).sum() / var).item()

    f = [fvu(sae, c, m) for m in sizes]
    assert all(a > b for a, b in zip(f, f[1:])), f
    plain_out = train(train_cfg(small_store, tmp_path / "b", arch="batchtopk", **common), progress=False)
    plain = SAE.load(plain_out / "batchtopk_r4_k4")
    assert f[0] < fvu(plain, plain.encode(H), 4) - 0.1, (f[0], fvu(plain, plain.encode(H), 4))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(arch="batchtopk", k="65"), r"--k 65 must be an integer in 1\.\.64"),
        (dict(arch="matryoshka", k="0"), r"--k must be positive"),
        (dict(arch="gated", alpha="-0.01"), r"the sparsity coefficient α must be >= 0, got -0\.01"),
        (dict(arch="jumprelu", target_l0="-5"), r"--target-l0 must be positive, got -5"),
        (dict(arch="matryoshka", matryoshka_prefixes="0.5,1.5"), r"--matryoshka-prefixes must be < 1, got 1\.5"),
    ],
)
def test_bad_settings_get_one_clear_error(tmp_path, small_store, change, message):
    with pytest.raises(SaexError, match=message):
        train(train_cfg(small_store, tmp_path / "out", steps=10, **change), progress=False)
    assert not (tmp_path / "out").exists()


def test_the_cli_names_the_bad_value(tmp_path, small_store, capsys):
    from saex.cli import main

    rc = main(["train", "--acts", str(small_store), "--hook", "blocks.0.hook_resid_post", "--arch", "jumprelu",
               "--target-l0", "0", "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0 and "--target-l0 must be positive, got 0" in err and "Traceback" not in err
    assert TrainConfig(arch="jumprelu", target_l0=[5.0]).target_l0 == [5.0]
