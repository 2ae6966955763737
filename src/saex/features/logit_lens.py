"""Logit lens of feature directions: which tokens a feature's direction promotes (paper §5.2).

The paper unembeds feature 5_2027 (layer 5 of Pythia-70M, "closing parenthesis") and finds ")" variants on
top. Its code computes ``f_k @ W_U`` with no final LayerNorm and drops the tokens whose unembedding norm
exceeds 20 (unused tokens of Pythia's padded vocabulary, whose large rows would top every list).

Here ``W_U`` is the model's output embedding ``[V, D]`` (``get_output_embeddings()``), which is the input
embedding for tied models such as SmolLM2. The outlier rule is configurable: ``"5x"`` (the default) drops
tokens whose row norm exceeds 5 × the median row norm, a scale-free version of the paper's rule (an
absolute 20 means nothing on another model); a plain number such as ``"20"`` is an absolute limit, as the
paper; ``"none"`` keeps every token. With ``final_norm=True`` the final norm's gain ``g`` is applied,
``(g ⊙ f_k) @ W_U`` (Gemma's RMSNorm scales by ``1 + weight``); the norm's centring and scaling are not
(they depend on the whole residual vector, not on the direction), and its bias is ignored. The directions
are the raw decoder rows: rankings do not depend on their norm.

``logit_lens_all`` is vectorised over any number of directions in chunks, for dashboards.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from saex.devices import device_of
from saex.errors import SaexError


def unembedding(model) -> torch.Tensor:
    """The model's unembedding ``W_U`` as ``[V, D]`` float32 (tied models: their input embedding)."""
    head = model.get_output_embeddings()
    if head is None:
        raise SaexError(f"model {type(model).__name__} has no output embedding to unembed with")
    W = head.weight.detach().float()
    # GPT-2's Conv1D heads store [D, V]; nn.Linear (and tied embeddings) store [V, D].
    D = model.config.hidden_size
    return W if W.shape[1] == D else W.T


def final_norm_gain(model, final_norm: str) -> torch.Tensor:
    """The elementwise gain of the final norm (``model.norm`` etc.), ``[D]``."""
    norm = model.get_submodule(final_norm)
    w = getattr(norm, "weight", None)
    if w is None:
        return torch.ones(model.config.hidden_size, device=device_of(model))
    w = w.detach().float()
    # Gemma's RMSNorm stores the gain as an offset from 1 (its weights start at zero)
    return 1.0 + w if "Gemma" in type(norm).__name__ else w


def excluded_tokens(W_U_VD: torch.Tensor, rule: str | float | None = "5x") -> torch.Tensor:
    """Boolean mask ``[V]`` of tokens left out for their unembedding norm: ``"Nx"`` = above N × the median
    row norm, a number = above that absolute norm, ``"none"`` / None = nothing left out."""
    norms = W_U_VD.norm(dim=1)
    if rule is None or (isinstance(rule, str) and rule.strip().lower() in ("", "none")):
        return torch.zeros(len(norms), dtype=torch.bool, device=norms.device)
    text = str(rule).strip().lower()
    try:
        limit = (
            float(text[:-1]) * norms.median() if text.endswith("x") else torch.tensor(float(text), device=norms.device)
        )
    except ValueError as e:
        raise SaexError(
            f"unembedding-norm rule {rule!r} is not 'Nx' (N times the median norm), a number "
            "(an absolute norm) or 'none'"
        ) from e
    if not float(limit) > 0:
        raise SaexError(f"unembedding-norm rule {rule!r} must give a positive limit")
    return norms > limit


@torch.no_grad()
def logit_lens_all(
    directions_FD: torch.Tensor,
    W_U_VD: torch.Tensor,
    k: int = 20,
    excluded_V: torch.Tensor | None = None,
    gain_D: torch.Tensor | None = None,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k and bottom-k tokens of ``f @ W_Uᵀ`` for every direction: (top values [F, k] descending, their
    ids, bottom values [F, k] ascending, their ids), on the CPU. ``chunk`` directions at a time bound the memory
    to ``chunk × V`` floats; the products run where ``W_U_VD`` is."""
    W = W_U_VD.float()
    device = W.device
    if directions_FD.shape[1] != W.shape[1]:
        raise SaexError(
            f"directions have width {directions_FD.shape[1]}, but the unembedding has {W.shape[1]}; "
            "the logit lens needs a residual-stream dictionary"
        )
    keep = torch.ones(W.shape[0], dtype=torch.bool, device=device) if excluded_V is None else ~excluded_V.to(device)
    ids_kept = torch.nonzero(keep).squeeze(1)
    W = W[ids_kept]
    k = min(k, len(ids_kept))
    tops, top_ids, bots, bot_ids = [], [], [], []
    for lo in range(0, directions_FD.shape[0], chunk):
        f = directions_FD[lo : lo + chunk].to(device, torch.float32)
        if gain_D is not None:
            f = f * gain_D.to(device)
        logits = f @ W.T
        t = logits.topk(k, dim=1)
        b = logits.topk(k, dim=1, largest=False)
        tops.append(t.values.cpu())
        top_ids.append(ids_kept[t.indices].cpu())
        bots.append(b.values.cpu())
        bot_ids.append(ids_kept[b.indices].cpu())
    if not tops:
        empty = torch.zeros(0, k)
        return empty, empty.long(), empty, empty.long()
    return torch.cat(tops), torch.cat(top_ids), torch.cat(bots), torch.cat(bot_ids)


def logit_lens(
    direction_D: torch.Tensor,
    W_U_VD: torch.Tensor,
    decode: Callable[[int], str],
    k: int = 20,
    rule: str | float | None = "5x",
    gain_D: torch.Tensor | None = None,
) -> dict:
    """The logit-lens payload of ``schema.md`` for one direction."""
    excluded = excluded_tokens(W_U_VD, rule)
    tv, ti, bv, bi = logit_lens_all(direction_D[None], W_U_VD, k, excluded, gain_D)
    return payload(tv[0], ti[0], bv[0], bi[0], decode, int(excluded.sum()), gain_D is not None)


def payload(top_vals, top_ids, bot_vals, bot_ids, decode, excluded: int, final_norm: bool) -> dict:
    """One row of ``logit_lens_all`` as the schema's dict."""

    def row(vals, ids):
        return [{"token": decode(int(i)), "id": int(i), "value": float(v)} for v, i in zip(vals.tolist(), ids.tolist())]

    return {
        "top": row(top_vals, top_ids),
        "bottom": row(bot_vals, bot_ids),
        "excluded": excluded,
        "final_norm": final_norm,
    }
