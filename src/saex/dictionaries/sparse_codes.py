"""The TopK family's training products on the kept codes only (Gao et al. 2024, §A.3: their kernels).

A TopK, BatchTopK or Matryoshka code keeps N = B·k entries of the [B, F] pre-activations. Only the encoder's
forward product (every pre-activation, to choose the kept ones) needs all B·F; everything after it touches
the kept entries alone, given as ``rows``, ``cols`` (which input, which latent) and ``vals``:

* ``gather``: vals = pre[rows, cols] as a function of W_enc, b_enc and the encoder input x; its backward is
  ∂W_enc = Sᵀ x, ∂b_enc = Σ over each latent's entries, ∂x = S W_enc with S the sparse [B, F] matrix of the
  incoming gradients at (rows, cols): CSR products costing N·D, not B·F·D;
* ``decode``: x̂ = S(vals) W_dec (CSR × dense, N·D); backward ∂W_dec = S(vals)ᵀ ∂x̂ (N·D) and
  ∂vals = ⟨∂x̂[rows], W_dec[cols]⟩ (a sampled product, N·D).

A dense step costs six B×D×F products; this one, one such product plus work proportional to N·D. The
gradients are checked against plain autograd in the tests (tests/dictionaries/test_architectures.py).
"""

from __future__ import annotations

import torch

from saex.dictionaries.relu_l1 import _csr


class Kept:
    """The kept entries of one member's [B, F] code, ordered by row: CSR by input and by latent."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]):
        B, F = shape
        order = torch.argsort(rows * F + cols)  # CSR needs the entries sorted by row, then column
        self.rows, self.cols = rows[order], cols[order]
        self.crow = torch.searchsorted(self.rows, torch.arange(B + 1, device=rows.device))
        self.order_T = torch.argsort(self.cols * B + self.rows)
        self.crow_T = torch.searchsorted(self.cols[self.order_T], torch.arange(F + 1, device=rows.device))
        self.rows_T = self.rows[self.order_T]
        self.shape = shape

    def csr(self, vals: torch.Tensor) -> torch.Tensor:
        """[B, F] with ``vals`` (in this object's row order) at the kept entries."""
        return _csr(self.crow, self.cols, vals, self.shape)

    def csr_T(self, vals: torch.Tensor) -> torch.Tensor:
        """[F, B], the transpose."""
        return _csr(self.crow_T, self.rows_T, vals[self.order_T], self.shape[::-1])


class Gather(torch.autograd.Function):
    """vals = (x W_encᵀ + b_enc)[kept] of one member, the dense ``pre`` given (computed without grad)."""

    @staticmethod
    def forward(ctx, x_BD, W_FD, b_F, pre_BF, kept: Kept):
        ctx.save_for_backward(x_BD, W_FD)
        ctx.kept = kept
        return pre_BF[kept.rows, kept.cols]

    @staticmethod
    def backward(ctx, g_N):
        x_BD, W_FD = ctx.saved_tensors
        g_N = g_N.float()  # under autocast the kept values may be bfloat16; CSR products take float32
        kept: Kept = ctx.kept
        g_W = kept.csr_T(g_N) @ x_BD if ctx.needs_input_grad[1] else None
        g_b = torch.zeros(W_FD.shape[0], dtype=g_N.dtype, device=g_N.device).index_add_(0, kept.cols, g_N)
        g_x = kept.csr(g_N) @ W_FD if ctx.needs_input_grad[0] else None
        return g_x, g_W, g_b, None, None


class Decode(torch.autograd.Function):
    """x̂ = Σ over kept entries of vals · W_dec[cols], per input (one member), as a CSR product."""

    @staticmethod
    def forward(ctx, vals_N, W_FD, kept: Kept):
        # Under autocast the kept values may come in bfloat16: the CSR products (no bfloat16 kernel on the CPU)
        # compute in float32, as the weights are.
        vals_N = vals_N.float()
        ctx.save_for_backward(vals_N, W_FD)
        ctx.kept = kept
        with torch.autocast(vals_N.device.type, enabled=False):
            return kept.csr(vals_N) @ W_FD

    @staticmethod
    def backward(ctx, g_BD):
        vals_N, W_FD = ctx.saved_tensors
        g_BD = g_BD.float()
        kept: Kept = ctx.kept
        g_W = kept.csr_T(vals_N) @ g_BD if ctx.needs_input_grad[1] else None
        g_vals = None
        if ctx.needs_input_grad[0]:
            pattern = kept.csr(torch.zeros_like(vals_N))
            g_vals = torch.sparse.sampled_addmm(pattern, g_BD.contiguous(), W_FD.T, beta=0.0).values()
        return g_vals, g_W, None
