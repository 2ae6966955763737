"""Token histograms of a feature's activations (Cunningham et al. 2023 §5.1, Fig. 4 left, Figs. 11-15).

For the positions where a feature is active, the paper's code (``case_studies_loop.ipynb``) draws 10
equal-width activation bins from 0 to the maximum and stacks, in each bin, the counts of the 5 most common
tokens overall plus "[All Other Tokens]"; with more than 5,000 active positions it first draws 5,000 of them
at random. A monosemantic feature shows one token (the apostrophe) dominating, above all at high
activations; a residual-stream dimension shows different tokens at different activation ranges (Fig. 11).

Conventions here:

* only positive values are counted (the bins cover (0, max]); a signed code (PCA / ICA ``linear``
  dictionaries) or a residual dimension is histogrammed through its positive part, or through its negative
  part with ``sign = -1`` (the values are then ``-x``, for dimensions found by the search's minimum);
* bins are right-closed, ``(e_i, e_{i+1}]``, so the maximum falls in the last bin and nothing in (0, e_1]
  is lost; ``max`` is that of the values counted (after subsampling);
* the 5 tokens are the most common ones among the counted values, ties broken by the smaller token id;
  the "other" series is always present (zeros where nothing else is left).

Three sources: arrays (``token_histogram``); a feature index's uniform random sample of activating fragments,
every active position in them (``histogram_from_index``); and an exact pass over an activation store's
held-out split for a few features or dimensions at once, with a bottom-k reservoir (one uniform key per
active position, the ``max_n`` smallest kept) so memory is bounded by ``max_n`` per series, not by the
number of tokens (``histograms_from_store``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from saex.errors import SaexError
from saex.store.reader import ALL_ROWS, RowFilter

BINS = 10
TOP_TOKENS = 5
MAX_SAMPLES = 5000
OTHER = "[All Other Tokens]"


def _decoder(decode) -> Callable[[int], str]:
    if decode is None:
        return lambda i: str(i)
    if callable(decode):
        return decode
    if isinstance(decode, Mapping):
        return lambda i: decode.get(i, decode.get(str(i), str(i)))
    if isinstance(decode, Sequence):
        return lambda i: decode[i]
    raise TypeError(f"decode must be a callable, mapping or sequence, got {type(decode).__name__}")


def token_histogram(
    values,
    token_ids,
    decode=None,
    bins: int = BINS,
    top_tokens: int = TOP_TOKENS,
    max_n: int | None = MAX_SAMPLES,
    seed: int = 0,
    source: str = "",
) -> dict:
    """The histogram payload of ``schema.md`` from parallel arrays of activations and token ids.

    ``decode`` maps a token id to its text (callable, mapping or sequence; default: the id itself).
    Values ≤ 0 are ignored; with more than ``max_n`` positive values, ``max_n`` of them are drawn uniformly
    without replacement (seeded) before binning.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    t = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    if v.shape != t.shape:
        raise SaexError(f"{v.size} activations but {t.size} token ids")
    keep = v > 0
    v, t = v[keep], t[keep]
    total = int(v.size)
    if max_n is not None and total > max_n:
        pick = np.sort(np.random.default_rng(seed).choice(total, size=max_n, replace=False))
        v, t = v[pick], t[pick]
    return _binned(v, t, total, _decoder(decode), bins, top_tokens, source)


def _binned(v: np.ndarray, t: np.ndarray, total: int, decode, bins: int, top_tokens: int, source: str) -> dict:
    top = float(v.max()) if v.size else 0.0
    edges = np.linspace(0.0, top, bins + 1)
    edges[-1] = top  # linspace may round the end point
    idx = np.clip(np.searchsorted(edges, v, side="left") - 1, 0, bins - 1)
    ids, counts = np.unique(t, return_counts=True)
    order = np.lexsort((ids, -counts))[:top_tokens]  # most common first, the smaller id on ties
    series = []
    rest = np.ones(v.size, dtype=bool)
    for tok in ids[order]:
        sel = t == tok
        rest &= ~sel
        series.append(
            {
                "label": decode(int(tok)),
                "other": False,
                "counts": np.bincount(idx[sel], minlength=bins).astype(int).tolist(),
            }
        )
    series.append(
        {"label": OTHER, "other": True, "counts": np.bincount(idx[rest], minlength=bins).astype(int).tolist()}
    )
    return {"edges": [float(e) for e in edges], "series": series, "n": int(v.size), "total": total, "source": source}


def histogram_from_index(
    index, feature: int, decode=None, max_n: int | None = MAX_SAMPLES, seed: int = 0, **kw
) -> dict:
    """From a ``saex features`` index: every non-zero position of the feature's random sample of activating
    fragments (a uniform sample of fragments, so its positions are a cluster sample of the feature's
    activations). ``decode`` defaults to the index's own token text (or the ids without it)."""
    ids, _ = index.examples(feature, "random")
    acts = index.activations(feature, "random")
    toks = index.tokens(ids).numpy() if len(ids) else np.zeros((0, index.fragment_length), dtype=np.int64)
    if decode is None and len(ids):
        try:
            text = index.token_strings(ids)
        except SaexError:
            text = None
        if text is not None:
            decode = {int(i): s for row_i, row_s in zip(toks.tolist(), text) for i, s in zip(row_i, row_s)}
    return token_histogram(
        acts,
        toks,
        decode,
        max_n=max_n,
        seed=seed,
        source=f"index random sample ({len(ids)} activating fragments)",
        **kw,
    )


@dataclass
class StorePass:
    """What one exact pass over a split gathers for each of K series (features or signed dimensions)."""

    histograms: list[dict]
    """The histogram payload of each series."""
    context_max_CK: torch.Tensor
    """Per-context maximum of each series' values (before the positive-part cut), [contexts, K]."""
    context_argmax_CK: torch.Tensor
    """Position of that maximum within its context, [contexts, K]."""
    max_K: torch.Tensor
    """Overall maximum of each series."""


@torch.no_grad()
def histograms_from_store(
    store,
    hook: str,
    values_fn: Callable[[torch.Tensor], torch.Tensor],
    n_series: int,
    decode=None,
    split: str = "heldout",
    max_n: int | None = MAX_SAMPLES,
    seed: int = 0,
    source: str = "held-out store",
    bins: int = BINS,
    top_tokens: int = TOP_TOKENS,
    chunk_rows: int = 4096,
    rows: RowFilter = ALL_ROWS,
    device: torch.device | str = "cpu",
) -> StorePass:
    """One exact pass over ``split``: ``values_fn(x_ND) -> v_NK`` gives the K series' values at every row
    (e.g. a dictionary's codes of a few features, or ±x[:, dim]). Every positive value is a candidate; a
    bottom-k reservoir keeps a uniform sample of at most ``max_n`` per series (bounded memory). Rows that
    ``rows`` leaves out (attention sinks, separators) count as 0 for every series. ``values_fn`` runs on
    ``device`` (where its dictionary is); the rest on the CPU."""
    T = store.context_length
    gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, 11]).integers(2**62)))
    keep_v = [torch.zeros(0) for _ in range(n_series)]
    keep_t = [torch.zeros(0, dtype=torch.int64) for _ in range(n_series)]
    keep_k = [torch.zeros(0) for _ in range(n_series)]
    totals = [0] * n_series
    cmax, carg = [], []
    for i in range(len(store.shards(split))):
        x = store.load_shard(split, i, hook)
        tok = store.load_tokens(split, i)[0].reshape(-1).long()
        # whole contexts per chunk; a wide dictionary's codes of a whole shard would not fit in memory
        step = T * max(1, chunk_rows // T)
        v = (
            torch.cat([values_fn(x[lo : lo + step].to(device)).float().cpu() for lo in range(0, len(x), step)])
            if len(x)
            else torch.zeros(0, n_series)
        )
        if v.shape != (x.shape[0], n_series):
            raise SaexError(f"values_fn returned shape {tuple(v.shape)}, expected {(x.shape[0], n_series)}")
        if rows.active:
            v[~store.keep_mask(split, i, rows, hook, x)] = 0
        per_ctx = v.view(-1, T, n_series)
        m, a = per_ctx.max(1)
        cmax.append(m)
        carg.append(a)
        for k in range(n_series):
            pos = torch.nonzero(v[:, k] > 0).squeeze(1)
            totals[k] += len(pos)
            key = torch.rand(len(pos), generator=gen)
            vv, tt, kk = (
                torch.cat([keep_v[k], v[pos, k]]),
                torch.cat([keep_t[k], tok[pos]]),
                torch.cat([keep_k[k], key]),
            )
            if max_n is not None and len(kk) > max_n:
                best = kk.topk(max_n, largest=False).indices
                vv, tt, kk = vv[best], tt[best], kk[best]
            keep_v[k], keep_t[k], keep_k[k] = vv, tt, kk
    dec = _decoder(decode)
    hists = [
        _binned(keep_v[k].double().numpy(), keep_t[k].numpy(), totals[k], dec, bins, top_tokens, source)
        for k in range(n_series)
    ]
    context_max = torch.cat(cmax) if cmax else torch.zeros(0, n_series)
    return StorePass(
        hists,
        context_max,
        torch.cat(carg) if carg else torch.zeros(0, n_series, dtype=torch.int64),
        context_max.amax(0) if len(context_max) else torch.zeros(n_series),
    )


def feature_values(dictionary, features: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``values_fn`` for ``histograms_from_store``: the dictionary's codes of these features."""
    idx = torch.as_tensor(list(features), dtype=torch.long)
    return lambda x_ND: dictionary.encode(x_ND)[:, idx.to(x_ND.device)]


def dimension_values(dims: Sequence[int], signs: Sequence[int] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``values_fn`` for basis dimensions (Fig. 11): ``sign · x[:, dim]``, so the histogram shows the positive
    part of the dimension (sign +1) or its negative part as positive values (sign -1)."""
    idx = torch.as_tensor(list(dims), dtype=torch.long)
    s = torch.as_tensor(list(signs) if signs is not None else [1] * len(idx), dtype=torch.float32)
    if not set(s.tolist()) <= {1.0, -1.0}:
        raise SaexError(f"signs must be +1 or -1, got {s.tolist()}")
    return lambda x_ND: x_ND[:, idx.to(x_ND.device)] * s.to(x_ND.device)
