"""Reconstruction and sparsity metrics, each defined once here (paper App. B, App. E; docs/evaluation.md).

Over an evaluation set of N activations x (width D) with codes c (F features) and reconstructions x̂:

* MSE = Σ (x − x̂)² / (N·D)
* FVU = Σ (x − x̂)² / Σ (x − x̄)², x̄ the per-dimension mean of the set (variance about the mean, not
  about zero: the residual stream's large mean would otherwise make every dictionary look good)
* L0 = mean number of non-zero codes per activation (signed codes count when non-zero)
* density_f = fraction of activations on which feature f is non-zero; a feature is *alive* when it is
  non-zero on more than ``alive_threshold`` activations (App. E: "more than 10 times"), else *dead*
* cosine = mean over activations of cos(x, x̂) (0 where either is zero); norm ratio = mean ‖x̂‖ / ‖x‖

Every sum is accumulated in float64 over batches, so the result does not depend on the batch size. The batches
may be on any device: each batch's sums are computed there (in float64; float32 on MPS, which has no float64)
and added to running sums on the CPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from saex.devices import wide_dtype

DENSITY_BINS = 40


class ReconstructionMetrics:
    """Streaming accumulator: ``update`` per batch, ``result`` at the end."""

    def __init__(self, d_in: int, d_dict: int):
        self.n = 0
        self.n_counted = 0  # rows the firing counts cover: those of ``update`` and of ``count``
        self.d_in = d_in
        self.sq_err = 0.0
        # running sums on the CPU whatever the device (per-batch sums are moved here; MPS has no float64)
        self.sum_x_D = torch.zeros(d_in, dtype=torch.float64, device="cpu")
        self.sum_sq_x = 0.0
        self.fires_F = torch.zeros(d_dict, dtype=torch.long, device="cpu")
        self.l0_sum = 0.0
        self.cos_sum = 0.0
        self.ratio_sum = 0.0

    @torch.no_grad()
    def update(self, x_BD: torch.Tensor, xhat_BD: torch.Tensor, c_BF: torch.Tensor) -> None:
        wide = wide_dtype(x_BD.device)
        tiny = 1e-300 if wide == torch.float64 else torch.finfo(wide).tiny  # 1e-300 is 0 in float32
        x, xh = x_BD.to(wide), xhat_BD.to(device=x_BD.device, dtype=wide)
        self.n += x.shape[0]
        self.n_counted += x.shape[0]
        self.sq_err += (x - xh).pow(2).sum().item()
        self.sum_x_D += x.sum(0).to("cpu", torch.float64)
        self.sum_sq_x += x.pow(2).sum().item()
        nz_BF = c_BF != 0
        self.fires_F += nz_BF.sum(0).cpu()
        self.l0_sum += nz_BF.sum().item()
        nx_B, nh_B = x.norm(dim=1), xh.norm(dim=1)
        both = (nx_B > 0) & (nh_B > 0)
        cos_B = torch.where(both, (x * xh).sum(1) / (nx_B * nh_B).clamp_min(tiny), torch.zeros_like(nx_B))
        self.cos_sum += cos_B.sum().item()
        self.ratio_sum += torch.where(nx_B > 0, nh_B / nx_B.clamp_min(tiny), torch.zeros_like(nx_B)).sum().item()

    @torch.no_grad()
    def count(self, c_BF: torch.Tensor) -> None:
        """Firing counts only (alive, never fired, density), for rows beyond the reconstruction metrics': the
        encoder alone is cheap, so the rarely firing features are counted over many more rows."""
        self.fires_F += (c_BF != 0).sum(0).cpu()
        self.n_counted += c_BF.shape[0]

    def result(self, alive_threshold: int = 10) -> dict:
        n = self.n
        if n == 0:
            raise ValueError("no activations were evaluated")
        var_about_mean = self.sum_sq_x - (self.sum_x_D.pow(2).sum().item() / n)
        alive = int((self.fires_F > alive_threshold).sum())
        density_F = (self.fires_F.double() / self.n_counted).numpy()
        return {
            "n_activations": n,
            "n_counted": self.n_counted,
            "mse": self.sq_err / (n * self.d_in),
            "fvu": self.sq_err / var_about_mean if var_about_mean > 0 else math.nan,
            "l0": self.l0_sum / n,
            "cosine": self.cos_sum / n,
            "norm_ratio": self.ratio_sum / n,
            "alive_threshold": alive_threshold,
            "alive": alive,
            "dead": int(self.fires_F.numel() - alive),
            "alive_fraction": alive / self.fires_F.numel(),
            "never_fired": int((self.fires_F == 0).sum()),
            "density_histogram": density_histogram(density_F, self.n_counted),
        }


def density_histogram(density_F: np.ndarray, n: int, bins: int = DENSITY_BINS) -> dict:
    """Histogram of log10 feature density over [log10(1/n), 0]; features that never fired are counted apart."""
    fired = density_F[density_F > 0]
    lo = math.log10(1.0 / n) if n > 1 else -1.0
    counts, edges = np.histogram(np.log10(fired), bins=bins, range=(lo, 0.0))
    return {
        "log10_density_edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "never_fired": int((density_F == 0).sum()),
    }


@torch.no_grad()
def evaluate_batch(dictionary, x_ND: torch.Tensor, alive_threshold: int = 10) -> dict:
    """All metrics of one dictionary on one in-memory set of activations."""
    c = dictionary.encode(x_ND)
    acc = ReconstructionMetrics(x_ND.shape[1], c.shape[1])
    acc.update(x_ND, dictionary.decode(c, x_ND), c)
    return acc.result(alive_threshold)
