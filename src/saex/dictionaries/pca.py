"""PCA as a dictionary: paper §3.2 baseline (c), and App. G's Top-K PCA.

"We use PCA ... using an online estimation approach ... on the same quantity of data we used for training
the autoencoders" (§3.2). The covariance is accumulated over the store's train split shard by shard
(float64, shifted by the first batch's mean for numerical stability), then ``eigh``; the d components are
sorted by descending variance. Three dictionaries come from one fit:

* ``pca``: the signed projections ``⟨v_k, x − μ⟩`` (identity activation, d features, exact reconstruction).
  The paper's code projected uncentred ``x``; ``center=False`` reproduces that, at the cost of a constant
  offset on every projection.
* ``pca_split``: the sign-split ±PCA with ReLU (2d features ``ReLU(±⟨v_k, x − μ⟩)``), the nonnegative form
  of the same basis that paper §4 uses as an IOI baseline; SAELens can open it.
* ``pca_topk``: the ±directions keeping the K largest per token (App. G, ``pca.to_topk_dict(K)``): a
  PCA direction "is active to an entire half-space", so keeping only the K largest |projections| tests
  whether sparsity alone explains the SAE's advantage.

Each eigenvector's sign is fixed so that its largest-magnitude entry is positive, so a fit is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from saex.devices import accumulator_device, wide_dtype
from saex.dictionaries.sae import SAE
from saex.errors import SaexError


@dataclass
class PCAFit:
    mean_D: torch.Tensor
    components_FD: torch.Tensor
    """Unit eigenvectors of the covariance, one per row, by descending variance."""
    variance_F: torch.Tensor
    n_rows: int


def fit_pca(batches: Iterable[torch.Tensor], device: torch.device | str = "cpu") -> PCAFit:
    """Streaming covariance over ``batches`` of ``x_ND``, then its eigendecomposition. The products run on
    ``device`` (float64; float32 per batch on MPS, summed on the CPU in float64); the eigendecomposition runs on
    the CPU, so the components do not depend on the device beyond rounding."""
    device = torch.device(device)
    wide, acc = wide_dtype(device), accumulator_device(device)
    n = 0
    shift_D = sum_D = sum_DD = torch.zeros(0, dtype=torch.float64)  # set from the first batch
    for x_ND in batches:
        x_ND = x_ND.to(device, wide)
        if not torch.isfinite(x_ND).all():
            raise SaexError(
                "the activations hold NaN or Inf values; PCA needs finite inputs (re-harvest with --dtype float32)"
            )
        if n == 0:
            shift_D = x_ND.mean(0)
            sum_D = torch.zeros(x_ND.shape[1], dtype=torch.float64, device=acc)
            sum_DD = torch.zeros(x_ND.shape[1], x_ND.shape[1], dtype=torch.float64, device=acc)
        y_ND = x_ND - shift_D
        sum_D += y_ND.sum(0).to(acc, torch.float64)
        sum_DD += (y_ND.T @ y_ND).to(acc, torch.float64)
        n += x_ND.shape[0]
    if n < 2:
        raise SaexError(f"PCA needs at least 2 rows, got {n}")
    shift_D, sum_D, sum_DD = (t.to("cpu", torch.float64) for t in (shift_D, sum_D, sum_DD))
    mean_D = sum_D / n
    cov_DD = (sum_DD - n * torch.outer(mean_D, mean_D)) / (n - 1)
    variance_F, vecs_DF = torch.linalg.eigh(cov_DD)
    order = variance_F.argsort(descending=True)
    variance_F, V_FD = variance_F[order], vecs_DF[:, order].T
    sign_F = V_FD.gather(1, V_FD.abs().argmax(1, keepdim=True)).sign().squeeze(1)
    V_FD = V_FD * sign_F[:, None]
    return PCAFit((mean_D + shift_D).float(), V_FD.float().contiguous(), variance_F.clamp_min(0).float(), n)


def pca_dictionary(fit: PCAFit, center: bool = True, metadata: dict | None = None) -> SAE:
    V_FD = fit.components_FD
    b_dec_D = fit.mean_D.clone() if center else torch.zeros_like(fit.mean_D)
    return SAE(
        V_FD.T.clone(),
        V_FD.clone(),
        torch.zeros(V_FD.shape[0]),
        b_dec_D,
        "linear",
        apply_b_dec_to_input=center,
        metadata=metadata,
    )


def _split(fit: PCAFit, center: bool, architecture: str, k: int | None, metadata: dict | None) -> SAE:
    V_FD = fit.components_FD
    W_dec_FD = torch.cat([V_FD, -V_FD])
    b_dec_D = fit.mean_D.clone() if center else torch.zeros_like(fit.mean_D)
    return SAE(
        W_dec_FD.T.clone(),
        W_dec_FD,
        torch.zeros(W_dec_FD.shape[0]),
        b_dec_D,
        architecture,
        k=k,
        apply_b_dec_to_input=center,
        metadata=metadata,
    )


def pca_split(fit: PCAFit, center: bool = True, metadata: dict | None = None) -> SAE:
    return _split(fit, center, "standard", None, metadata)


def pca_topk(fit: PCAFit, k: int, center: bool = True, metadata: dict | None = None) -> SAE:
    return _split(fit, center, "topk", k, metadata)
