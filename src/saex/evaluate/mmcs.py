"""Mean max cosine similarity between two dictionaries (Sharkey et al. 2023; paper §3.3; docs/evaluation.md).

Not in the paper's text, but central in its code for comparing dictionaries and for synthetic-data ground
truth. For each atom of ``other`` (a row of its ``W_dec``), its highest cosine with any atom of
``reference`` (``mcs_duplicates``); MMCS is their mean. The Hungarian variant (``run_mmcs_with_larger``)
matches atoms one to one, maximising total cosine with ``scipy.optimize.linear_sum_assignment``, and
reports the mean matched cosine and the fraction of matched pairs above 0.9. Cosines are signed: a
dictionary whose features keep their sign (PCA, ICA) matches a flipped atom at −1.
"""

from __future__ import annotations

import numpy as np
import torch

from saex.devices import wide_dtype
from saex.errors import SaexError


def cosine_tensor(A_FD: torch.Tensor, B_GD: torch.Tensor) -> torch.Tensor:
    """Cosines ``[G, F]`` of B's rows against A's, computed on ``A``'s device (float64; float32 on MPS)."""
    if A_FD.shape[1] != B_GD.shape[1]:
        raise SaexError(f"dictionaries of different widths cannot be compared: d_in {A_FD.shape[1]} vs {B_GD.shape[1]}")
    wide = wide_dtype(A_FD.device)
    tiny = 1e-300 if wide == torch.float64 else torch.finfo(wide).tiny
    A, B = A_FD.to(wide), B_GD.to(A_FD.device, wide)
    A = A / A.norm(dim=1, keepdim=True).clamp_min(tiny)
    B = B / B.norm(dim=1, keepdim=True).clamp_min(tiny)
    return B @ A.T


def cosine_matrix(A_FD: torch.Tensor, B_GD: torch.Tensor) -> np.ndarray:
    return cosine_tensor(A_FD, B_GD).cpu().double().numpy()


def mmcs(reference_FD: torch.Tensor, other_GD: torch.Tensor, hungarian: bool = True) -> dict:
    """Plain MMCS of ``other`` against ``reference``, and (optionally) the Hungarian-matched variant; the cosines
    are computed where ``reference_FD`` is, the matching on the CPU."""
    cos_GF = cosine_matrix(reference_FD, other_GD)
    max_G = cos_GF.max(axis=1)
    out = {"mmcs": float(max_G.mean()), "frac_max_above_0.9": float((max_G > 0.9).mean())}
    if hungarian:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(cos_GF, maximize=True)
        matched = cos_GF[rows, cols]
        out |= {
            "hungarian_mmcs": float(matched.mean()),
            "hungarian_frac_above_0.9": float((matched > 0.9).mean()),
            "matched_pairs": int(len(rows)),
        }
    return out
