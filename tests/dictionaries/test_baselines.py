"""The baseline dictionaries of paper §3.2 / App. G: neurons, random directions, PCA (signed, ±, top-K), ICA.

Every expected value is computed independently of saex (numpy / scipy / hand values).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from saex.dictionaries.ica import fit_ica, ica_topk
from saex.dictionaries.neurons import neurons
from saex.dictionaries.pca import fit_pca, pca_dictionary, pca_split, pca_topk
from saex.dictionaries.random_directions import random_directions
from saex.dictionaries.sae import SAE
from saex.errors import SaexError

D = 6


def gaussian(n: int, d: int = D, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0.0)


# -- neurons ------------------------------------------------------------------------------------------


def test_neurons_is_relu_of_each_coordinate():
    x = gaussian(64, 10, seed=1) * 3
    sae = neurons(10, {"hook_name": "h"})
    expected = torch.from_numpy(relu(x.numpy()))
    assert (sae.d_in, sae.d_dict, sae.architecture) == (10, 10, "standard")
    assert torch.equal(sae.W_dec_FD, torch.eye(10)) and torch.equal(sae.W_enc_DF, torch.eye(10))
    assert not sae.b_enc_F.any() and not sae.b_dec_D.any()
    assert torch.equal(sae.encode(x), expected)
    assert torch.equal(sae.decode(sae.encode(x)), expected)
    assert (x < 0).any() and (sae.encode(x) >= 0).all()
    assert sae.metadata == {"hook_name": "h"}


# -- random directions --------------------------------------------------------------------------------


def test_random_directions_rows_are_unit_norm_with_zero_biases():
    sae = random_directions(8, 20, seed=3)
    W = sae.W_dec_FD.double().numpy()
    assert (sae.d_in, sae.d_dict, sae.architecture) == (8, 20, "standard")
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), np.ones(20), atol=1e-6)
    assert torch.equal(sae.W_enc_DF, sae.W_dec_FD.T)  # tied
    assert not sae.b_enc_F.any() and not sae.b_dec_D.any()
    assert sae.apply_b_dec_to_input is False
    # no two directions alike (random Gaussian directions in 8 dims)
    cos = W @ W.T
    assert np.abs(cos[~np.eye(20, dtype=bool)]).max() < 0.999


def test_random_directions_are_deterministic_in_the_seed():
    a, b, c = random_directions(8, 20, seed=3), random_directions(8, 20, seed=3), random_directions(8, 20, seed=4)
    assert torch.equal(a.W_dec_FD, b.W_dec_FD) and torch.equal(a.W_enc_DF, b.W_enc_DF)
    assert not torch.allclose(a.W_dec_FD, c.W_dec_FD, atol=1e-2)


def test_random_directions_encode_is_relu_of_projections():
    sae = random_directions(8, 20, seed=5)
    x = gaussian(50, 8, seed=2)
    V = sae.W_dec_FD.double().numpy()
    expected = relu(x.double().numpy() @ V.T)
    got = sae.encode(x)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    assert ((got == 0) == torch.from_numpy(expected <= 0)).float().mean() > 0.99
    np.testing.assert_allclose(sae.decode(got).numpy(), relu(x.double().numpy() @ V.T) @ V, atol=1e-5)


# -- PCA ----------------------------------------------------------------------------------------------

VARIANCES = np.array([9.0, 4.0, 2.0, 1.0, 0.5, 0.1])


def pca_data(n: int = 6000, seed: int = 0, offset: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian rows with covariance Q diag(VARIANCES) Qᵀ plus a mean; returns (x_ND float64, Q)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    z = rng.standard_normal((n, D)) * np.sqrt(VARIANCES)
    mean = offset * rng.standard_normal(D)
    return z @ Q.T + mean, Q


def numpy_pca(x: np.ndarray):
    """(mean, components [F, D] with largest-|entry| positive, variances) from the SVD of the centred data."""
    mean = x.mean(0)
    _, s, Vt = np.linalg.svd(x - mean, full_matrices=False)
    sign = np.sign(Vt[np.arange(len(Vt)), np.abs(Vt).argmax(1)])
    return mean, Vt * sign[:, None], s**2 / (len(x) - 1)


def batches(x: np.ndarray, sizes):
    """A generator of float32 tensors cutting x into consecutive batches of the given sizes (rest last)."""
    lo = 0
    for s in sizes:
        yield torch.from_numpy(x[lo : lo + s]).float()
        lo += s
    if lo < len(x):
        yield torch.from_numpy(x[lo:]).float()


@pytest.fixture(scope="module")
def pca_case():
    x, Q = pca_data()
    x = x.astype(np.float32).astype(np.float64)  # what the fit sees
    fit = fit_pca(batches(x, [1000, 37, 2500, 1]))
    return x, Q, fit


def test_fit_pca_matches_numpy_svd(pca_case):
    x, _, fit = pca_case
    mean, V, var = numpy_pca(x)
    assert fit.n_rows == len(x) == 6000
    assert fit.components_FD.shape == (D, D) and fit.variance_F.shape == (D,) and fit.mean_D.shape == (D,)
    np.testing.assert_allclose(fit.mean_D.numpy(), mean, atol=1e-5)
    np.testing.assert_allclose(fit.variance_F.numpy(), var, rtol=1e-5)
    # up to sign: |<v_fit, v_np>| = 1 row by row
    np.testing.assert_allclose(np.abs((fit.components_FD.double().numpy() * V).sum(1)), np.ones(D), atol=1e-5)
    # and with the sign convention applied to numpy's vectors, equal
    np.testing.assert_allclose(fit.components_FD.numpy(), V, atol=1e-4)


def test_fit_pca_recovers_the_known_covariance(pca_case):
    _, Q, fit = pca_case
    # sampling error on 6000 rows: a few percent on each variance
    np.testing.assert_allclose(fit.variance_F.numpy(), VARIANCES, rtol=0.08)
    # the top direction (well separated from the next: 9 vs 4) is Q's first column up to sign
    assert abs(float(fit.components_FD[0].double().numpy() @ Q[:, 0])) > 0.995


def test_fit_pca_order_sign_and_orthonormality(pca_case):
    _, _, fit = pca_case
    var = fit.variance_F.numpy()
    assert (np.diff(var) < 0).all()
    V = fit.components_FD.double().numpy()
    np.testing.assert_allclose(V @ V.T, np.eye(D), atol=1e-5)
    for row in V:
        assert row[np.abs(row).argmax()] > 0


def test_fit_pca_does_not_depend_on_the_batching(pca_case):
    x, _, fit = pca_case
    for sizes in ([len(x)], [1, 1, 2, 5999 - 3], [128] * 47, [3000]):
        other = fit_pca(batches(x, sizes))
        assert other.n_rows == fit.n_rows
        np.testing.assert_allclose(other.mean_D.numpy(), fit.mean_D.numpy(), atol=1e-5)
        np.testing.assert_allclose(other.variance_F.numpy(), fit.variance_F.numpy(), rtol=1e-5)
        np.testing.assert_allclose(other.components_FD.numpy(), fit.components_FD.numpy(), atol=1e-4)


def test_fit_pca_is_stable_under_a_large_offset():
    """Activations far from the origin (a big shared mean) still give the centred covariance."""
    x, _ = pca_data(n=4000, seed=4, offset=0.0)
    x = x + 1000.0
    x = x.astype(np.float32).astype(np.float64)
    mean, V, var = numpy_pca(x)
    fit = fit_pca(batches(x, [500] * 8))
    np.testing.assert_allclose(fit.variance_F.numpy(), var, rtol=1e-4)
    np.testing.assert_allclose(fit.components_FD.numpy(), V, atol=1e-3)
    np.testing.assert_allclose(fit.mean_D.numpy(), mean, rtol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_fit_pca_refuses_non_finite_input(bad):
    good = gaussian(100)
    broken = gaussian(100, seed=1)
    broken[17, 3] = bad
    with pytest.raises(SaexError, match="NaN or Inf"):
        fit_pca(iter([good, broken]))


def test_fit_pca_needs_two_rows():
    with pytest.raises(SaexError, match="at least 2 rows, got 1"):
        fit_pca(iter([gaussian(1)]))
    with pytest.raises(SaexError, match="at least 2 rows, got 0"):
        fit_pca(iter([]))


def test_pca_dictionary_codes_are_centred_projections(pca_case):
    x, _, fit = pca_case
    sae = pca_dictionary(fit, metadata={"hook_name": "h"})
    V, mu = fit.components_FD.double().numpy(), fit.mean_D.double().numpy()
    xt = torch.from_numpy(x[:500]).float()
    assert (sae.architecture, sae.d_in, sae.d_dict) == ("linear", D, D)
    codes = sae.encode(xt)
    np.testing.assert_allclose(codes.numpy(), (x[:500] - mu) @ V.T, atol=1e-4)
    assert (codes < 0).any()  # signed: the identity activation keeps negative projections
    np.testing.assert_allclose(sae.decode(codes).numpy(), x[:500], atol=1e-4)
    # the codes of the fitted rows have the fitted variances
    np.testing.assert_allclose(((x - mu) @ V.T).var(0, ddof=1), fit.variance_F.numpy(), rtol=1e-4)


def test_pca_dictionary_uncentred(pca_case):
    x, _, fit = pca_case
    sae = pca_dictionary(fit, center=False)
    V = fit.components_FD.double().numpy()
    xt = torch.from_numpy(x[:500]).float()
    codes = sae.encode(xt)
    np.testing.assert_allclose(codes.numpy(), x[:500] @ V.T, atol=1e-4)
    assert not sae.b_dec_D.any()
    np.testing.assert_allclose(sae.decode(codes).numpy(), x[:500], atol=1e-4)


@pytest.mark.parametrize("center", [True, False])
def test_pca_split_is_relu_of_plus_minus_projections(pca_case, center):
    x, _, fit = pca_case
    sae = pca_split(fit, center=center)
    V, mu = fit.components_FD.double().numpy(), fit.mean_D.double().numpy()
    xs = x[:500]
    p = (xs - mu if center else xs) @ V.T
    codes = sae.encode(torch.from_numpy(xs).float())
    assert (sae.architecture, sae.d_dict) == ("standard", 2 * D)
    assert (codes >= 0).all()
    np.testing.assert_allclose(codes.numpy(), relu(np.concatenate([p, -p], 1)), atol=1e-4)
    np.testing.assert_allclose(sae.decode(codes).numpy(), xs, atol=1e-4)
    np.testing.assert_allclose(sae.W_dec_FD.numpy(), np.concatenate([V, -V]), atol=0)


@pytest.mark.parametrize("k", [1, 3, D])
def test_pca_topk_keeps_the_k_largest_projections(k):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((400, D)) * np.array([3.0, 2.0, 1.5, 1.0, 0.7, 0.4]) + 1.0
    x = x.astype(np.float32).astype(np.float64)
    fit = fit_pca(iter([torch.from_numpy(x).float()]))
    sae = pca_topk(fit, k)
    assert (sae.architecture, sae.k, sae.d_dict) == ("topk", k, 2 * D)
    V, mu = fit.components_FD.double().numpy(), fit.mean_D.double().numpy()
    p = (x - mu) @ V.T
    codes = sae.encode(torch.from_numpy(x).float()).double().numpy()
    assert ((codes != 0).sum(1) == k).all()
    assert (codes >= 0).all()
    for i in range(len(x)):
        keep = np.sort(np.argsort(-np.abs(p[i]))[:k])
        nz = np.nonzero(codes[i])[0]
        comp = np.sort(nz % D)
        assert (comp == keep).all(), i
        # a kept + feature means a positive projection, a kept - feature a negative one
        assert all((j < D) == (p[i, j % D] > 0) for j in nz), i
        np.testing.assert_allclose(codes[i, nz], np.abs(p[i, nz % D]), atol=1e-4)
    expected = np.empty_like(x)
    for i in range(len(x)):
        keep = np.argsort(-np.abs(p[i]))[:k]
        expected[i] = mu + p[i, keep] @ V[keep]
    np.testing.assert_allclose(sae.decode(torch.from_numpy(codes).float()).numpy(), expected, atol=1e-4)


# -- ICA ----------------------------------------------------------------------------------------------

N_ICA, D_ICA = 20000, 5


@pytest.fixture(scope="module")
def ica_case():
    """Independent non-Gaussian sources (uniform, Laplace, bimodal), mixed by a random matrix, offset."""
    rng = np.random.default_rng(11)
    S = np.stack(
        [
            rng.uniform(-1, 1, N_ICA) * np.sqrt(3),
            rng.laplace(0, 1, N_ICA),
            rng.uniform(-1, 1, N_ICA) * 2.0,
            rng.laplace(0, 0.5, N_ICA),
            np.where(rng.random(N_ICA) < 0.5, -1.0, 1.0) + 0.2 * rng.standard_normal(N_ICA),
        ],
        1,
    )
    A = rng.standard_normal((D_ICA, D_ICA)) + 0.5 * np.eye(D_ICA)
    offset = rng.normal(0, 3, D_ICA)
    x = (S @ A.T + offset).astype(np.float32)
    sae = fit_ica(torch.from_numpy(x), seed=0, metadata={"hook_name": "h"})
    return S, A, x, sae


def _match(S_true: np.ndarray, S_est: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = S_true.shape[1]
    corr = np.abs(np.corrcoef(S_true.T, S_est.T)[:d, d:])
    rows, cols = linear_sum_assignment(corr, maximize=True)
    return rows, cols, corr[rows, cols]


def test_fit_ica_recovers_the_sources(ica_case):
    S, _, x, sae = ica_case
    assert (sae.architecture, sae.d_in, sae.d_dict) == ("linear", D_ICA, D_ICA)
    est = sae.encode(torch.from_numpy(x)).double().numpy()
    _, _, best = _match(S, est)
    assert (best > 0.98).all(), best


def test_fit_ica_decoder_rows_are_the_mixing_columns(ica_case):
    S, A, x, sae = ica_case
    est = sae.encode(torch.from_numpy(x)).double().numpy()
    rows, cols, _ = _match(S, est)
    W = sae.W_dec_FD.double().numpy()
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), np.ones(D_ICA), atol=1e-5)
    a = A / np.linalg.norm(A, axis=0, keepdims=True)  # unit mixing columns, one per source
    cos = np.abs((a[:, rows].T * W[cols]).sum(1))
    assert (cos > 0.98).all(), cos


def test_fit_ica_reconstructs_exactly(ica_case):
    _, _, x, sae = ica_case
    xt = torch.from_numpy(x[:2000])
    np.testing.assert_allclose(sae.decode(sae.encode(xt)).numpy(), x[:2000], atol=1e-3 * np.abs(x).max())


def test_fit_ica_metadata(ica_case):
    _, _, _, sae = ica_case
    m = sae.metadata
    assert m["hook_name"] == "h"
    assert m["fit_rows"] == N_ICA
    assert isinstance(m["ica_converged"], bool) and m["ica_converged"] is True
    assert isinstance(m["ica_n_iter"], int) and 1 <= m["ica_n_iter"] <= 200


def test_fit_ica_reports_non_convergence():
    x = gaussian(600, 4, seed=3)
    sae = fit_ica(x, seed=0, max_iter=1, tol=1e-12)
    assert sae.metadata["ica_converged"] is False and sae.metadata["ica_n_iter"] == 1


@pytest.mark.parametrize("n", [1, 3, 4])
def test_fit_ica_needs_more_rows_than_the_width(n):
    with pytest.raises(SaexError, match=f"width 4 needs more than 4 rows to fit, got {n}"):
        fit_ica(gaussian(n, 4), seed=0)


def test_fit_ica_refuses_non_finite_input():
    x = gaussian(100, 4)
    x[5, 1] = float("nan")
    with pytest.raises(SaexError, match="NaN or Inf"):
        fit_ica(x, seed=0)


@pytest.mark.parametrize("k", [1, 2, D_ICA])
def test_ica_topk_keeps_the_k_largest_sources(ica_case, k):
    _, _, x, sae = ica_case
    top = ica_topk(sae, k, {"hook_name": "h"})
    assert (top.architecture, top.k, top.d_dict) == ("topk", k, 2 * D_ICA)
    xs = x[:1000].astype(np.float64)
    s = xs @ sae.W_enc_DF.double().numpy() + sae.b_enc_F.double().numpy()  # the signed sources, by hand
    codes = top.encode(torch.from_numpy(x[:1000])).double().numpy()
    assert ((codes != 0).sum(1) == k).all()
    assert (codes >= 0).all()
    for i in range(0, 1000, 37):
        nz = np.nonzero(codes[i])[0]
        assert (np.sort(nz % D_ICA) == np.sort(np.argsort(-np.abs(s[i]))[:k])).all(), i
        np.testing.assert_allclose(codes[i, nz], np.abs(s[i, nz % D_ICA]), rtol=1e-4, atol=1e-4)
    if k == D_ICA:  # all of them kept: the ± split reconstructs exactly, like the signed ICA
        np.testing.assert_allclose(
            top.decode(torch.from_numpy(codes).float()).numpy(), xs, atol=1e-3 * np.abs(xs).max()
        )


# -- files and errors ---------------------------------------------------------------------------------


def test_linear_and_topk_baselines_round_trip(tmp_path, pca_case):
    x, _, fit = pca_case
    xt = torch.from_numpy(x[:300]).float()
    for name, sae in (
        ("pca", pca_dictionary(fit, metadata={"baseline": "pca"})),
        ("pca_topk", pca_topk(fit, 2, metadata={"baseline": "pca_topk", "k": 2})),
    ):
        back = SAE.load(sae.save(tmp_path / name))
        assert (back.architecture, back.k, back.apply_b_dec_to_input) == (sae.architecture, sae.k, True)
        assert back.metadata == sae.metadata
        for a in ("W_enc_DF", "W_dec_FD", "b_enc_F", "b_dec_D"):
            assert torch.equal(getattr(back, a), getattr(sae, a)), (name, a)
        assert torch.equal(back.encode(xt), sae.encode(xt)), name


def test_ica_round_trip(tmp_path, ica_case):
    _, _, x, sae = ica_case
    xt = torch.from_numpy(x[:300])
    for name, d in (("ica", sae), ("ica_topk", ica_topk(sae, 2))):
        back = SAE.load(d.save(tmp_path / name))
        assert (back.architecture, back.k, back.apply_b_dec_to_input) == (d.architecture, d.k, False)
        assert torch.equal(back.encode(xt), d.encode(xt)), name


def test_topk_k_out_of_range_is_refused(pca_case, ica_case):
    _, _, fit = pca_case
    with pytest.raises(SaexError, match=rf"0 < k <= d_sae = {2 * D}, got k = {2 * D + 1}"):
        pca_topk(fit, 2 * D + 1)
    with pytest.raises(SaexError, match=rf"0 < k <= d_sae = {2 * D_ICA}, got k = {2 * D_ICA + 1}"):
        ica_topk(ica_case[3], 2 * D_ICA + 1)
    with pytest.raises(SaexError, match="needs k"):
        pca_topk(fit, 0)
    with pytest.raises(SaexError):
        pca_topk(fit, -1)
