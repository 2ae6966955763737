"""The fused training step shared by the paper's tied and untied ReLU + L1 autoencoders.

Computes, for K members at once,

    c_k = ReLU(W_enc,k (x - b_dec,k) + b_k),   x̂_k = W_dec,kᵀ c_k + b_dec,k,
    loss = Σ_k  mean over elements of (x - x̂_k)²  +  α_k · mean over the batch of ‖c_k‖₁

(Cunningham et al. 2023, eqs. 1-4 and App. C.3) with a hand-written backward. Why not autograd: the
backward needs none of the intermediates autograd would keep (the row normalisation and the tied
model's two gradient paths are folded in by hand), and once the codes are sparse (a trained SAE has an
L0 of tens out of thousands) every product except the encoder's forward touches only the active codes:
the decoder (sparse × dense), the code gradient (sampled dense × dense) and both weight gradients
(transposed sparse × dense), as CSR products. A dense step costs five B×D×F GEMMs; a sparse
one costs one plus work proportional to B·L0·D. The gradient is checked against autograd in the tests.
"""

from __future__ import annotations

import functools
import warnings

import torch

# Above this fraction of active codes dense GEMMs beat the CSR products on CPU. Measured for a whole
# tied step at B=4096, d=576, F=2304: CSR 264 ms vs dense 339 ms at 8% density, 372 vs 332 ms at 14%.
SPARSE_MAX_DENSITY = 0.11


def _csr(crow, col, vals, shape) -> torch.Tensor:
    # torch warns that CSR support is "in beta" on first use; the products used here are the stable,
    # MKL-backed ones, and the warning would otherwise reach every user's terminal.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, vals, shape, device=vals.device, check_invariants=False)


class _Sparse:
    """The active codes of one member in two CSR layouts: by input (c) and by feature (cᵀ)."""

    def __init__(self, c_BF: torch.Tensor, active_BF: torch.Tensor):
        B, F = c_BF.shape
        rows, cols = active_BF.nonzero(as_tuple=True)
        self.rows, self.cols, self.vals = rows, cols, c_BF[rows, cols]
        self.crow = torch.searchsorted(rows, torch.arange(B + 1, device=rows.device))
        # Stable, so that within a feature the inputs stay in order: sums are then deterministic.
        self.order = torch.argsort(cols, stable=True)
        self.crow_T = torch.searchsorted(cols[self.order], torch.arange(F + 1, device=cols.device))
        self.rows_T = rows[self.order]
        self.shape = (B, F)

    def csr(self, vals: torch.Tensor) -> torch.Tensor:
        return _csr(self.crow, self.cols, vals, self.shape)

    def csr_T(self, vals: torch.Tensor) -> torch.Tensor:
        return _csr(self.crow_T, self.rows_T, vals[self.order], self.shape[::-1])


class Workspace:
    """Large buffers an ensemble reuses from one training step to the next.

    Freshly allocated tensors above glibc's mmap threshold (32 MiB) are new pages every step, and the
    page faults of touching them cost as much as a GEMM at ensemble sizes (measured: 96 ms to fill a
    fresh 302 MB buffer against 12 ms for a reused one). A workspace is lent to one step at a time: a
    forward while the previous step's backward has not run allocates fresh buffers instead.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        self.busy = False

    def get(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        buf = self.buffers.get(name)
        if buf is None or buf.shape != shape or buf.device != device:
            buf = self.buffers[name] = torch.empty(shape, device=device)
        return buf


def _buffer(ws: Workspace | None, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.empty(shape, device=device) if ws is None else ws.get(name, shape, device)


def _float32(forward):
    """Run a step's forward with autocast off: its products write into float32 buffers (``--autocast`` leaves
    this fused step in float32)."""

    @functools.wraps(forward)
    def inner(ctx, x_BD, *args, **kwargs):
        with torch.autocast(x_BD.device.type, enabled=False):
            return forward(ctx, x_BD, *args, **kwargs)

    return inner


class ReluL1Step(torch.autograd.Function):
    """Forward returns ``(loss, mse_K, l0_K, fired_KF)``; only ``loss`` carries a gradient.

    Takes the *raw* decoder ``M_KFD`` and normalises its rows per member inside (W_dec = M / ‖M‖_row),
    with the normalisation's backward done by hand too; ``W_enc_KFD`` is None for the tied model, which
    encodes with the normalised decoder and sums both gradients. Each member's codes live in their own
    contiguous [B, F] block, so that an ensemble's passes stream through memory one member at a time
    instead of striding across all of them.

    The whole ensemble is one autograd node, one backward and one Adam step; inside it, each member's
    products are issued as separate large GEMMs (or CSR products) on its block. That is faster here than
    ``torch.bmm`` over the stacked tensors: on this 2-core CPU, a bmm version of this function made the
    8-member dense step 3313 ms against 2636 ms (benchmarks/train.py, same day), and per-member issue also
    lets each member switch to the CSR path on its own when its codes become sparse.
    """

    @staticmethod
    @_float32
    def forward(ctx, x_BD, W_enc_KFD, M_KFD, b_enc_KF, b_dec_KD, alpha_K, workspace=None, target=None, centre=True):
        # ``target`` ([B, D] or per member [K, B, D]; x when None) is what is reconstructed: a transcoder's
        # other hook point. ``centre``: the encoder reads x - b_dec (an autoencoder's; a transcoder's reads x).
        K, F, D = M_KFD.shape
        B = x_BD.shape[0]
        ws = workspace if workspace is not None and not workspace.busy else None
        if ws is not None:
            ws.busy = True
        ctx.ws = ws
        norm_KF = M_KFD.norm(dim=-1).clamp_min_(1e-8)
        W_dec_KFD = M_KFD / norm_KF.unsqueeze(-1)
        W_in_KFD = W_dec_KFD if W_enc_KFD is None else W_enc_KFD
        shift_KF = b_enc_KF
        centre = centre and b_dec_KD is not None
        ctx.centre, ctx.target_shape = centre, None if target is None else target.shape
        if centre:
            # Each member subtracts its own decoder bias: W(x - b_dec) = Wx - W b_dec, a per-member shift.
            shift_KF = b_enc_KF - torch.bmm(W_in_KFD, b_dec_KD.unsqueeze(-1)).squeeze(-1)
        dev = x_BD.device
        c_KBF = _buffer(ws, "c", (K, B, F), dev)
        err_KBD = _buffer(ws, "err", (K, B, D), dev)
        l0_K = torch.empty(K, device=dev)
        fired_KF = torch.empty(K, F, dtype=torch.bool, device=dev)
        # The CSR products are a CPU measurement (MKL); on an accelerator the dense GEMMs are kept.
        csr_ok = dev.type == "cpu"
        sparse = []
        for k in range(K):
            c_BF = torch.addmm(shift_KF[k], x_BD, W_in_KFD[k].T, out=c_KBF[k]).relu_()
            n_active = int(c_BF.count_nonzero())
            l0_K[k] = n_active / B
            sp = _Sparse(c_BF, c_BF > 0) if csr_ok and n_active <= SPARSE_MAX_DENSITY * B * F else None
            sparse.append(sp)
            if sp is None:
                torch.gt(c_BF.amax(0), 0, out=fired_KF[k])
                torch.mm(c_BF, W_dec_KFD[k], out=err_KBD[k])
            else:
                fired_KF[k] = False
                fired_KF[k, sp.cols] = True
                err_KBD[k] = sp.csr(sp.vals) @ W_dec_KFD[k]
        if b_dec_KD is not None:
            err_KBD += b_dec_KD.unsqueeze(1)
        err_KBD -= x_BD if target is None else target
        mse_K = err_KBD.pow(2).mean(dim=(1, 2))
        l1_K = c_KBF.view(K, -1).sum(1) / B  # c >= 0: the sum is the L1 norm
        loss = (mse_K + alpha_K * l1_K).sum()
        ctx.save_for_backward(x_BD, W_enc_KFD, W_dec_KFD, norm_KF, b_dec_KD, alpha_K, c_KBF, err_KBD)
        ctx.sparse = sparse
        ctx.mark_non_differentiable(mse_K, l0_K, fired_KF)
        return loss, mse_K, l0_K, fired_KF

    @staticmethod
    def backward(ctx, g_loss, _g_mse, _g_l0, _g_fired):
        x_BD, W_enc_KFD, W_dec_KFD, norm_KF, b_dec_KD, alpha_K, c_KBF, err_KBD = ctx.saved_tensors
        tied = W_enc_KFD is None
        W_in_KFD = W_dec_KFD if tied else W_enc_KFD
        K, F, D = W_dec_KFD.shape
        B = x_BD.shape[0]
        g_xhat_KBD = err_KBD.mul_(2.0 * g_loss / (B * D))  # err is not needed any more: reuse its memory
        g_M = torch.empty_like(W_dec_KFD)
        g_W_enc = None if tied else torch.empty_like(W_enc_KFD)
        dev = x_BD.device
        g_b_enc = torch.empty(K, F, device=dev)
        g_b_dec = None if b_dec_KD is None else torch.empty(K, D, device=dev)
        for k in range(K):
            g_xhat_BD = g_xhat_KBD[k]
            x_in = x_BD - b_dec_KD[k] if ctx.centre else x_BD
            l1_grad = alpha_K[k] * g_loss / B
            sp = ctx.sparse[k]
            # g_enc_FD: gradient w.r.t. the encoder matrix; g_dec_FD: w.r.t. the normalised decoder.
            # dL/dc = g_x̂ W_decᵀ + α/B, passed through the ReLU only where the code is active.
            if sp is None:
                c_BF = c_KBF[k]
                g_pre_BF = torch.mm(g_xhat_BD, W_dec_KFD[k].T, out=_buffer(ctx.ws, "g_pre", (B, F), dev))
                g_pre_BF += l1_grad
                g_pre_BF *= c_BF > 0
                g_dec_FD = c_BF.T @ g_xhat_BD
                g_enc_FD = g_pre_BF.T @ x_in
                torch.sum(g_pre_BF, dim=0, out=g_b_enc[k])
            else:
                pattern = sp.csr(torch.zeros_like(sp.vals))
                g_vals = torch.sparse.sampled_addmm(pattern, g_xhat_BD, W_dec_KFD[k].T, beta=0.0).values()
                g_vals += l1_grad
                g_dec_FD = sp.csr_T(sp.vals) @ g_xhat_BD
                g_enc_FD = sp.csr_T(g_vals) @ x_in
                g_b_enc[k] = torch.zeros(F, device=dev).index_add_(0, sp.cols, g_vals)
            if b_dec_KD is not None:
                # b_dec is added to x̂ and, when centred, x enters the encoder as (x - b_dec).
                g_b_dec[k] = g_xhat_BD.sum(0) - g_b_enc[k] @ W_in_KFD[k] if ctx.centre else g_xhat_BD.sum(0)
            if tied:
                g_dec_FD += g_enc_FD  # the same normalised matrix encodes and decodes
            else:
                g_W_enc[k] = g_enc_FD
            # Through W = M/‖M‖: dL/dM = (g - W (W·g)) / ‖M‖, row by row.
            W_FD = W_dec_KFD[k]
            g_dec_FD -= W_FD * (W_FD * g_dec_FD).sum(1, keepdim=True)
            torch.div(g_dec_FD, norm_KF[k].unsqueeze(-1), out=g_M[k])
        # The target enters the loss as -target: its gradient (through a skip connection, say) is -g_x̂.
        g_target = None
        if ctx.target_shape is not None and ctx.needs_input_grad[7]:
            g_target = -(g_xhat_KBD if len(ctx.target_shape) == 3 else g_xhat_KBD.sum(0))
        if ctx.ws is not None:
            ctx.ws.busy = False
        return None, g_W_enc, g_M, g_b_enc, g_b_dec, None, None, g_target, None
