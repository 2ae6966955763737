"""The fused training step shared by the paper's tied and untied ReLU + L1 autoencoders.

Computes, for K members at once,

    c_k = ReLU(W_enc,k (x - b_dec,k) + b_k),   x̂_k = W_dec,kᵀ c_k + b_dec,k,
    loss = Σ_k  mean over elements of (x - x̂_k)²  +  α_k · mean over the batch of ‖c_k‖₁

(Cunningham et al. 2023, eqs. 1-4 and App. C.3) with a hand-written backward. Why not autograd: the
encoders of all members run as one GEMM against the shared batch, and once the codes are sparse (a
trained SAE has an L0 of tens out of thousands) every product except the encoder's forward touches only
the active codes: the decoder (sparse × dense), the code gradient (sampled dense × dense) and both weight
gradients (transposed sparse × dense), as CSR products. A dense step costs five B×D×F GEMMs; a sparse
one costs one plus work proportional to B·L0·D. The gradient is checked against autograd in the tests.
"""

from __future__ import annotations

import warnings

import torch

# Above this fraction of active codes dense GEMMs beat the CSR products on CPU.
SPARSE_MAX_DENSITY = 0.06



def _csr(crow, col, vals, shape) -> torch.Tensor:
    # torch warns that CSR support is "in beta" on first use; the products used here are the stable,
    # MKL-backed ones, and the warning would otherwise reach every user's terminal.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, vals, shape, check_invariants=False)


class _Sparse:
    """The active codes of one member in two CSR layouts: by input (c) and by feature (cᵀ)."""

    def __init__(self, c_BF: torch.Tensor):
        B, F = c_BF.shape
        rows, cols = (c_BF > 0).nonzero(as_tuple=True)
        self.rows, self.cols, self.vals = rows, cols, c_BF[rows, cols]
        self.crow = torch.searchsorted(rows, torch.arange(B + 1))
        # Stable, so that within a feature the inputs stay in order: sums are then deterministic.
        self.order = torch.argsort(cols, stable=True)
        self.crow_T = torch.searchsorted(cols[self.order], torch.arange(F + 1))
        self.rows_T = rows[self.order]
        self.shape = (B, F)

    def csr(self, vals: torch.Tensor) -> torch.Tensor:
        return _csr(self.crow, self.cols, vals, self.shape)

    def csr_T(self, vals: torch.Tensor) -> torch.Tensor:
        return _csr(self.crow_T, self.rows_T, vals[self.order], self.shape[::-1])


def _codes(c_BF: torch.Tensor) -> _Sparse | None:
    return _Sparse(c_BF) if (c_BF > 0).sum() <= SPARSE_MAX_DENSITY * c_BF.numel() else None


class ReluL1Step(torch.autograd.Function):
    """Forward returns ``(loss, mse_K, l1_K, c_BKF)``; only ``loss`` carries a gradient."""

    @staticmethod
    def forward(ctx, x_BD, W_enc_KFD, W_dec_KFD, b_enc_KF, b_dec_KD, alpha_K):
        K, F, D = W_enc_KFD.shape
        B = x_BD.shape[0]
        shift_KF = b_enc_KF
        if b_dec_KD is not None:
            # Each member subtracts its own decoder bias: W(x - b_dec) = Wx - W b_dec, a per-member shift.
            shift_KF = b_enc_KF - torch.bmm(W_enc_KFD, b_dec_KD.unsqueeze(-1)).squeeze(-1)
        pre_BKF = torch.addmm(shift_KF.reshape(1, K * F), x_BD, W_enc_KFD.reshape(K * F, D).T)
        c_BKF = pre_BKF.relu_().view(B, K, F)
        err_KBD = torch.empty(K, B, D)
        sparse = []
        for k in range(K):
            sp = _codes(c_BKF[:, k])
            sparse.append(sp)
            if sp is None:
                torch.mm(c_BKF[:, k], W_dec_KFD[k], out=err_KBD[k])
            else:
                err_KBD[k] = sp.csr(sp.vals) @ W_dec_KFD[k]
        if b_dec_KD is not None:
            err_KBD += b_dec_KD.unsqueeze(1)
        err_KBD -= x_BD
        mse_K = err_KBD.pow(2).mean(dim=(1, 2))
        l1_K = c_BKF.sum(dim=(0, 2)) / B
        loss = (mse_K + alpha_K * l1_K).sum()
        ctx.save_for_backward(x_BD, W_enc_KFD, W_dec_KFD, b_dec_KD, alpha_K, c_BKF, err_KBD)
        ctx.sparse = sparse
        ctx.mark_non_differentiable(mse_K, l1_K, c_BKF)
        return loss, mse_K, l1_K, c_BKF

    @staticmethod
    def backward(ctx, g_loss, _g_mse, _g_l1, _g_c):
        x_BD, W_enc_KFD, W_dec_KFD, b_dec_KD, alpha_K, c_BKF, err_KBD = ctx.saved_tensors
        K, F, D = W_enc_KFD.shape
        B = x_BD.shape[0]
        g_xhat_KBD = err_KBD.mul_(2.0 * g_loss / (B * D))  # err is not needed any more: reuse its memory
        g_W_enc, g_W_dec = torch.empty_like(W_enc_KFD), torch.empty_like(W_dec_KFD)
        g_b_enc = torch.empty(K, F)
        g_b_dec = None if b_dec_KD is None else torch.empty(K, D)
        for k in range(K):
            g_xhat_BD = g_xhat_KBD[k]
            x_in = x_BD if b_dec_KD is None else x_BD - b_dec_KD[k]
            l1_grad = alpha_K[k] * g_loss / B
            sp = ctx.sparse[k]
            # dL/dc = g_x̂ W_decᵀ + α/B, passed through the ReLU only where the code is active.
            if sp is None:
                c_BF = c_BKF[:, k]
                g_pre_BF = g_xhat_BD @ W_dec_KFD[k].T
                g_pre_BF += l1_grad
                g_pre_BF *= c_BF > 0
                torch.mm(c_BF.T, g_xhat_BD, out=g_W_dec[k])
                torch.mm(g_pre_BF.T, x_in, out=g_W_enc[k])
                g_b_enc[k] = g_pre_BF.sum(0)
            else:
                pattern = sp.csr(torch.zeros_like(sp.vals))
                g_vals = torch.sparse.sampled_addmm(pattern, g_xhat_BD, W_dec_KFD[k].T, beta=0.0).values()
                g_vals += l1_grad
                g_W_dec[k] = sp.csr_T(sp.vals) @ g_xhat_BD
                g_W_enc[k] = sp.csr_T(g_vals) @ x_in
                g_b_enc[k] = torch.zeros(F).index_add_(0, sp.cols, g_vals)
            if b_dec_KD is not None:
                # x enters the encoder as (x - b_dec) and b_dec is added to x̂.
                g_b_dec[k] = g_xhat_BD.sum(0) - g_b_enc[k] @ W_enc_KFD[k]
        return None, g_W_enc, g_W_dec, g_b_enc, g_b_dec, None
