"""Reconstruction and sparsity metrics against numbers worked out by hand, and against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saex.dictionaries.sae import SAE
from saex.evaluate.metrics import DENSITY_BINS, ReconstructionMetrics, evaluate_batch

# 3 activations of width 2, their reconstructions, and codes over 3 features.
X = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
XHAT = torch.tensor([[1.0, 1.0], [3.0, 4.0], [0.0, 0.0]])
C = torch.tensor([[1.0, 0.0, -2.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0]])


class Fixed:
    """A stand-in dictionary whose codes and reconstructions are given."""

    def __init__(self, c, xhat):
        self.c, self.xhat = c, xhat

    def encode(self, x):
        return self.c

    def decode(self, c, x=None):
        assert c is self.c
        return self.xhat


def _hand(threshold):
    acc = ReconstructionMetrics(2, 3)
    acc.update(X, XHAT, C)
    return acc.result(alive_threshold=threshold)


def test_hand_computed_metrics():
    r = _hand(threshold=1)
    assert r["n_activations"] == 3
    # squared errors per row: (0,1) -> 1, (0,0) -> 0, (5,0) -> 25; total 26 over 3*2 entries
    assert r["mse"] == pytest.approx(26 / 6, rel=1e-12)
    # per-dimension mean (3, 2); deviations (-2,0) (0,2) (2,-2): 4 + 4 + 8 = 16
    assert r["fvu"] == pytest.approx(26 / 16, rel=1e-12)
    assert r["fvu"] != pytest.approx(26 / 55)  # not the variance about zero (Σx² = 55)
    # non-zero codes per row: 2 (the -2 counts), 1, 0
    assert r["l0"] == pytest.approx(1.0, rel=1e-12)
    # cos: row 0 = 3/(√5·√2); row 1 = 1; row 2 has x̂ = 0 -> 0
    assert r["cosine"] == pytest.approx((3 / math.sqrt(10) + 1) / 3, rel=1e-12)
    # ‖x̂‖/‖x‖: √2/√5, 1, 0
    assert r["norm_ratio"] == pytest.approx((math.sqrt(2 / 5) + 1) / 3, rel=1e-12)
    # feature fire counts: f0 1, f1 0, f2 2; alive means "more than threshold"
    assert (r["alive_threshold"], r["alive"], r["dead"], r["never_fired"]) == (1, 1, 2, 1)
    assert r["alive_fraction"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("threshold,alive", [(0, 2), (1, 1), (2, 0), (10, 0)])
def test_alive_threshold_is_strictly_more_than(threshold, alive):
    r = _hand(threshold)
    assert r["alive"] == alive and r["dead"] == 3 - alive and r["never_fired"] == 1


def test_hand_density_histogram():
    h = _hand(1)["density_histogram"]
    edges, counts = h["log10_density_edges"], h["counts"]
    assert len(counts) == DENSITY_BINS and len(edges) == DENSITY_BINS + 1
    assert edges[0] == pytest.approx(-math.log10(3)) and edges[-1] == 0.0
    assert h["never_fired"] == 1 and sum(counts) == 2
    # density 1/3 sits on the lower edge (bin 0); density 2/3 at log10(2)/log10(3) of the range -> bin 25
    expected = [0] * DENSITY_BINS
    expected[0] += 1
    expected[int(math.log10(2) / math.log10(3) * DENSITY_BINS)] += 1
    assert int(math.log10(2) / math.log10(3) * DENSITY_BINS) == 25
    assert counts == expected


def test_evaluate_batch_on_a_fixed_dictionary():
    r = evaluate_batch(Fixed(C, XHAT), X, alive_threshold=1)
    assert r["mse"] == pytest.approx(26 / 6) and r["fvu"] == pytest.approx(26 / 16) and r["l0"] == 1.0
    assert r["alive"] == 1


def test_evaluate_batch_on_a_relu_sae_by_hand():
    # c = relu(x - (2, 1)), x̂ = c: (1,2)->(0,1); (3,4)->(1,3); (5,0)->(3,0)
    sae = SAE(torch.eye(2), torch.eye(2), torch.tensor([-2.0, -1.0]), torch.zeros(2), "standard")
    r = evaluate_batch(sae, X, alive_threshold=2)
    # errors (1,1) (2,1) (2,0): 2 + 5 + 4 = 11
    assert r["mse"] == pytest.approx(11 / 6, rel=1e-12)
    assert r["fvu"] == pytest.approx(11 / 16, rel=1e-12)
    assert r["l0"] == pytest.approx(4 / 3, rel=1e-12)
    # each feature fires twice: not more than 2
    assert (r["alive"], r["dead"], r["never_fired"]) == (0, 2, 0)
    cos = [2 / (math.sqrt(5) * 1), 15 / (5 * math.sqrt(10)), 1.0]
    assert r["cosine"] == pytest.approx(sum(cos) / 3, rel=1e-12)
    ratio = [1 / math.sqrt(5), math.sqrt(10) / 5, 3 / 5]
    assert r["norm_ratio"] == pytest.approx(sum(ratio) / 3, rel=1e-12)


def test_zero_input_rows_give_zero_cosine_and_ratio():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    acc = ReconstructionMetrics(2, 1)
    acc.update(x, torch.tensor([[1.0, 1.0], [2.0, 0.0]]), torch.tensor([[1.0], [1.0]]))
    r = acc.result(0)
    assert r["cosine"] == pytest.approx(0.5) and r["norm_ratio"] == pytest.approx(1.0)


def test_constant_inputs_have_undefined_fvu():
    x = torch.ones(4, 3)
    acc = ReconstructionMetrics(3, 2)
    acc.update(x, x, torch.zeros(4, 2))
    assert math.isnan(acc.result()["fvu"])


def test_no_rows_is_an_error():
    with pytest.raises(ValueError):
        ReconstructionMetrics(2, 2).result()


def _random_sae(d=6, f=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(f, d, generator=g)
    W = W / W.norm(dim=1, keepdim=True)
    return SAE(
        W.T.clone() * 0.8, W, torch.randn(f, generator=g) * 0.5 - 0.6, torch.randn(d, generator=g) * 0.1, "standard"
    )


def _data(n=1000, d=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.linspace(0.5, 3, d) + torch.linspace(-4, 4, d)


def _numpy_metrics(sae, x):
    X = x.double().numpy()
    We, Wd = sae.W_enc_DF.double().numpy(), sae.W_dec_FD.double().numpy()
    be, bd = sae.b_enc_F.double().numpy(), sae.b_dec_D.double().numpy()
    c = np.maximum(X @ We + be, 0)
    xh = c @ Wd + bd
    err = ((X - xh) ** 2).sum()
    return {
        "mse": err / X.size,
        "fvu": err / ((X - X.mean(0)) ** 2).sum(),
        "l0": (c != 0).sum(1).mean(),
        "fires": (c != 0).sum(0),
    }


def test_matches_numpy_on_random_data():
    sae, x = _random_sae(), _data()
    r = evaluate_batch(sae, x, alive_threshold=10)
    ref = _numpy_metrics(sae, x)
    assert r["mse"] == pytest.approx(ref["mse"], rel=1e-5)
    assert r["fvu"] == pytest.approx(ref["fvu"], rel=1e-5)
    assert r["l0"] == pytest.approx(ref["l0"], rel=1e-6)
    assert r["alive"] == int((ref["fires"] > 10).sum()) and r["never_fired"] == int((ref["fires"] == 0).sum())
    assert r["never_fired"] > 0 or 0 < r["alive"] < 10  # the data exercises the alive/dead split


@pytest.mark.parametrize("batch", [1, 7, 128, 999])
def test_batch_size_independence(batch):
    sae, x = _random_sae(), _data()
    whole = ReconstructionMetrics(6, 10)
    whole.update(x, sae(x), sae.encode(x))
    parts = ReconstructionMetrics(6, 10)
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        parts.update(xb, sae(xb), sae.encode(xb))
    a, b = whole.result(), parts.result()
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float):
            assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-12), k
        else:
            assert a[k] == b[k], k


def test_histogram_counts_every_feature_that_fired():
    sae, x = _random_sae(f=40, seed=3), _data(n=500)
    r = evaluate_batch(sae, x, alive_threshold=10)
    h = r["density_histogram"]
    fires = _numpy_metrics(sae, x)["fires"]
    assert sum(h["counts"]) == int((fires > 0).sum()) == 40 - h["never_fired"]
    assert h["never_fired"] == r["never_fired"]
    # each feature lands in the bin of its log10 density (edges from np.linspace, independently)
    edges = np.linspace(math.log10(1 / 500), 0, DENSITY_BINS + 1)
    np.testing.assert_allclose(h["log10_density_edges"], edges, atol=1e-12)
    dens = fires[fires > 0] / 500
    idx = np.minimum(np.searchsorted(edges, np.log10(dens), side="right") - 1, DENSITY_BINS - 1)
    assert h["counts"] == np.bincount(idx, minlength=DENSITY_BINS).tolist()


def test_trainer_evaluate_agrees():
    from saex.train.trainer import evaluate

    sae, x = _random_sae(seed=5), _data(seed=6)
    r = evaluate(sae, x)
    ref = _numpy_metrics(sae, x)
    assert set(r) == {"mse", "fvu", "l0", "loss", "dense_fraction"}
    assert r["mse"] == pytest.approx(ref["mse"], rel=1e-5)
    assert r["fvu"] == pytest.approx(ref["fvu"], rel=1e-5)
    assert r["l0"] == pytest.approx(ref["l0"], rel=1e-6)
    assert r["loss"] == pytest.approx(ref["mse"], rel=1e-5)  # α = 0: the objective is the MSE
    hand = evaluate(SAE(torch.eye(2), torch.eye(2), torch.tensor([-2.0, -1.0]), torch.zeros(2), "standard"), X)
    assert {k: hand[k] for k in ("mse", "fvu", "l0")} == pytest.approx(
        {"mse": 11 / 6, "fvu": 11 / 16, "l0": 4 / 3}, rel=1e-12
    )
    # the training objective in the scaled units: s² MSE + α s L1, with L1 the mean over rows of Σ|c|
    c = torch.relu(X.double() + torch.tensor([-2.0, -1.0], dtype=torch.float64))
    l1 = c.abs().sum(1).mean().item()
    scaled = evaluate(
        SAE(torch.eye(2), torch.eye(2), torch.tensor([-2.0, -1.0]), torch.zeros(2), "standard"), X, scale=3.0, alpha=0.5
    )
    assert scaled["loss"] == pytest.approx(9 * 11 / 6 + 0.5 * 3 * l1, rel=1e-6)
    # dense: the share of features firing on more than 10% of the rows
    assert hand["dense_fraction"] == pytest.approx(((c > 0).double().mean(0) > 0.1).double().mean().item())


def test_fvu_is_accurate_for_a_large_mean():
    # the residual stream's mean can dwarf its spread; the streamed variance must not lose it
    g = torch.Generator().manual_seed(7)
    x = torch.randn(8192, 4, generator=g) + 1e4
    xh = x + 0.1 * torch.randn(8192, 4, generator=g)
    acc = ReconstructionMetrics(4, 1)
    for i in range(0, 8192, 1000):
        acc.update(x[i : i + 1000], xh[i : i + 1000], torch.ones(len(x[i : i + 1000]), 1))
    X, XH = x.double().numpy(), xh.double().numpy()
    ref = ((X - XH) ** 2).sum() / ((X - X.mean(0)) ** 2).sum()
    assert 0.005 < ref < 0.02
    assert acc.result()["fvu"] == pytest.approx(ref, rel=1e-6)
