"""ICA as a dictionary: paper §3.2 baseline (d), and App. G's Top-K ICA.

scikit-learn's ``FastICA`` (logcosh, ``max_iter`` 200, ``tol`` 1e-4: the defaults the paper's code used)
with ``n_components = d``, fitted on ``StandardScaler``-standardised float64 activations. "Due to the
slower convergence times, we run on only 2GB of data" (§3.2): the fit takes a seeded random sample of
the train split. The fitted transform is affine, so it is stored exactly as an SAE-layout dictionary:

* ``ica``: the signed sources ``s = ica.transform(scaler.transform(x))`` (identity activation). Each
  feature is rescaled so that its decoder row (its column of the mixing matrix, in activation units) has
  unit norm; encode-then-decode reconstructs ``x`` exactly.
* ``ica_topk``: the ±sources keeping the K largest per token (App. G, ``ica.to_topk_dict(K)``). With unit
  decoder rows, "largest" means the K largest contributions to the reconstruction. (The paper's code ranked
  raw-``x`` unmixing scores instead; those are not comparable across features.)
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from saex.dictionaries.sae import SAE
from saex.errors import SaexError


def fit_ica(x_ND: torch.Tensor, seed: int, max_iter: int = 200, tol: float = 1e-4, metadata: dict | None = None) -> SAE:
    """The signed ICA dictionary of ``x_ND``; ``metadata`` gains ``ica_n_iter`` and ``ica_converged``."""
    # imported here: scikit-learn brings its own OpenMP runtime, which every `saex` command (the CLI parser
    # imports this module's config) would otherwise load beside torch's
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    x = x_ND.double().numpy()
    n, d = x.shape
    if n <= d:
        raise SaexError(f"ICA on width {d} needs more than {d} rows to fit, got {n}")
    if not np.isfinite(x).all():
        raise SaexError(
            "the activations hold NaN or Inf values; ICA needs finite inputs (re-harvest with --dtype float32)"
        )
    scaler = StandardScaler().fit(x)
    ica = FastICA(n_components=d, whiten="unit-variance", max_iter=max_iter, tol=tol, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        ica.fit(scaler.transform(x))
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    # s = ((x - m)/σ - μ) Cᵀ  and  x = (s Aᵀ + μ) σ + m  with C = components_, A = mixing_.
    m, sigma = scaler.mean_, scaler.scale_
    C_FD, A_DF, mu_D = ica.components_, ica.mixing_, ica.mean_
    W_enc_DF = (C_FD / sigma[None, :]).T
    b_enc_F = -(m / sigma + mu_D) @ C_FD.T
    W_dec_FD = A_DF.T * sigma[None, :]
    b_dec_D = mu_D * sigma + m
    norm_F = np.linalg.norm(W_dec_FD, axis=1)
    meta = dict(metadata or {}, ica_n_iter=int(ica.n_iter_), ica_converged=converged, fit_rows=n)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()
    return SAE(
        t(W_enc_DF * norm_F[None, :]),
        t(W_dec_FD / norm_F[:, None]),
        t(b_enc_F * norm_F),
        t(b_dec_D),
        "linear",
        apply_b_dec_to_input=False,
        metadata=meta,
    )


def ica_topk(ica: SAE, k: int, metadata: dict | None = None) -> SAE:
    """±split of a signed ICA dictionary, keeping the K largest per token."""
    return SAE(
        torch.cat([ica.W_enc_DF, -ica.W_enc_DF], 1),
        torch.cat([ica.W_dec_FD, -ica.W_dec_FD]),
        torch.cat([ica.b_enc_F, -ica.b_enc_F]),
        ica.b_dec_D.clone(),
        "topk",
        k=k,
        apply_b_dec_to_input=False,
        metadata=metadata,
    )
