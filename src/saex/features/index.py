"""The feature example index: for every feature of a dictionary, its examples over held-out fragments.

What automated interpretability (Bills et al. 2023; Cunningham et al. 2023 App. A) and dashboards need per
feature, gathered in one streaming pass over the fragments with memory bounded by the number of features
(not the number of tokens):

* ``top``: the K fragments with the highest per-fragment max activation (the paper's "top 20");
* ``random``: a uniform random sample of R *activating* fragments (max > 0), kept in random order, so
  its first 20 are Cunningham's "random fragments with non-zero activation" and, ranked, it gives the
  10 activation deciles that delphi samples (Paulo et al. 2024);
* ``zero``: a uniform random sample of non-activating fragments (for detection scoring);
* per-token activations of every kept fragment, stored sparsely (CSR over features: flat index
  ``slot·L + position`` and value, for non-zero values only);
* per-feature statistics over all tokens: non-zero and positive counts, activating fragments, max, and
  the raw moment sums that give density, skew and kurtosis (paper App. C.4, Table 2: skew = E[c³]/Var^1.5,
  kurtosis = E[c⁴]/Var², raw third and fourth moments over the central variance, as the paper's code).

Random samples use one key per (feature, fragment) drawn from a generator seeded by (seed, chunk): the
R smallest keys among a feature's activating fragments are a uniform sample without replacement. The keys are
drawn on the CPU whatever the device, so an index built on a GPU samples the same fragments.

The running state lives on the device of the codes (``IndexBuilder(..., device=)``); the moment sums and the
max are float64 there (on MPS, which has no float64: each chunk's float32 sums are added on the CPU in float64).
``examples`` and ``stats`` return CPU tensors, so the files written do not depend on the device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from saex.devices import accumulator_device, wide_dtype
from saex.errors import SaexError
from saex.features.records import ActivationRecord

INDEX_TENSORS = "index.safetensors"
INDEX_JSON = "index.json"
VOCAB_JSON = "vocab.json"
KINDS = ("top", "random", "zero")


@dataclass
class _Keep:
    """Running best-n per feature: values (higher is better), fragment ids, and a tie-break payload."""

    score_FK: torch.Tensor
    ids_FK: torch.Tensor
    value_FK: torch.Tensor

    @classmethod
    def empty(cls, F: int, K: int, device: torch.device | str = "cpu") -> _Keep:
        return cls(
            torch.full((F, K), -torch.inf, device=device),
            torch.full((F, K), -1, dtype=torch.int64, device=device),
            torch.zeros(F, K, device=device),
        )

    def merge(self, score_FC: torch.Tensor, ids_C: torch.Tensor, value_FC: torch.Tensor) -> None:
        K = self.score_FK.shape[1]
        if K == 0:
            return
        score = torch.cat([self.score_FK, score_FC], 1)
        ids = torch.cat([self.ids_FK, ids_C.expand(score_FC.shape[0], -1)], 1)
        value = torch.cat([self.value_FK, value_FC], 1)
        best = score.topk(K, dim=1, sorted=True).indices
        self.score_FK, self.ids_FK, self.value_FK = score.gather(1, best), ids.gather(1, best), value.gather(1, best)
        empty = ~torch.isfinite(self.score_FK)
        self.ids_FK = self.ids_FK.masked_fill(empty, -1)
        self.value_FK = self.value_FK.masked_fill(empty, 0.0)


class IndexBuilder:
    """Accumulates the index chunk by chunk: ``update(codes_CLF, fragment_ids_C, chunk_no)`` then ``tensors``."""

    def __init__(
        self, n_features: int, top: int, random: int, zero: int, seed: int, device: torch.device | str = "cpu"
    ):
        F = n_features
        self.F, self.seed, self.device = F, seed, torch.device(device)
        self.wide, acc = wide_dtype(self.device), accumulator_device(self.device)
        self.top, self.random, self.zero = (_Keep.empty(F, k, self.device) for k in (top, random, zero))
        self.n_tokens_ = torch.zeros((), dtype=torch.int64, device=self.device)  # a tensor: no sync per chunk
        self.nonzero_F = torch.zeros(F, dtype=torch.int64, device=self.device)
        self.positive_F = torch.zeros(F, dtype=torch.int64, device=self.device)
        self.active_frags_F = torch.zeros(F, dtype=torch.int64, device=self.device)
        self.max_F = torch.full((F,), -torch.inf, dtype=torch.float64, device=acc)
        self.moments_4F = torch.zeros(4, F, dtype=torch.float64, device=acc)

    @torch.no_grad()
    def update(self, c_CLF: torch.Tensor, ids_C: torch.Tensor, chunk: int, keep_CL: torch.Tensor | None = None) -> None:
        """Add one chunk of codes (on the builder's device; ``ids_C`` and ``keep_CL`` may be anywhere).
        ``keep_CL``: which tokens count (default all); excluded tokens must carry code 0, and are left out of
        the token count that densities and moments divide by and of the max."""
        C, L, F = c_CLF.shape
        ids_C = ids_C.to(self.device)
        flat = c_CLF.reshape(C * L, F)
        if keep_CL is None:
            self.n_tokens_ += C * L
            kept_max_F = flat.amax(0) if C * L else None
        else:
            # the max over the kept rows, without indexing them out (a data-dependent shape): the others at -inf
            keep_N = keep_CL.to(self.device).reshape(-1)
            self.n_tokens_ += keep_N.sum()
            kept_max_F = flat.masked_fill(~keep_N[:, None], -torch.inf).amax(0) if C * L else None
        self.nonzero_F += (flat != 0).sum(0)
        self.positive_F += (flat > 0).sum(0)
        self.add_moments(flat)
        max_FC = c_CLF.amax(1).T.contiguous()
        if kept_max_F is not None:  # where nothing is kept, -inf leaves the max as it was
            self.max_F = torch.maximum(self.max_F, kept_max_F.to(self.max_F.device, torch.float64))
        active_FC = max_FC > 0
        self.active_frags_F += active_FC.sum(1)
        self.top.merge(torch.where(active_FC, max_FC, -torch.inf), ids_C, max_FC)
        key_FC = self.keys(F, C, chunk).to(self.device)
        # the smallest keys win: negate them, since _Keep keeps the highest scores
        self.random.merge(torch.where(active_FC, -key_FC, -torch.inf), ids_C, max_FC)
        self.zero.merge(torch.where(active_FC, -torch.inf, -key_FC), ids_C, max_FC)

    @property
    def n_tokens(self) -> int:
        """Tokens counted so far (the kept ones)."""
        return int(self.n_tokens_)

    def add_moments(self, flat_NF: torch.Tensor) -> None:
        """Σ c, Σ c², Σ c³, Σ c⁴ per feature: powers in float32 (memory), each chunk's sums in float64 (float32
        on MPS) and the running sums in float64."""
        power = flat_NF.clone()
        for m in range(4):
            self.moments_4F[m] += power.sum(0, dtype=self.wide).to(self.moments_4F.device, torch.float64)
            if m < 3:
                power.mul_(flat_NF)

    def keys(self, F: int, C: int, chunk: int) -> torch.Tensor:
        """The random keys [F, C] of one chunk, on the CPU: the same on every device."""
        g = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, 5, chunk]).integers(2**62)))
        return torch.rand(F, C, generator=g)

    def examples(self) -> dict[str, torch.Tensor]:
        """Fragment ids and per-fragment max of each kind's examples, on the CPU."""
        out = {}
        for kind in KINDS:
            keep = getattr(self, kind)
            out[f"{kind}_ids"] = keep.ids_FK.cpu()
            out[f"{kind}_max"] = keep.value_FK.float().cpu()
        return out

    def stats(self) -> dict[str, torch.Tensor]:
        """The per-feature statistics, on the CPU."""
        return {
            "n_tokens": torch.tensor([self.n_tokens]),
            "nonzero": self.nonzero_F.cpu(),
            "positive": self.positive_F.cpu(),
            "active_fragments": self.active_frags_F.cpu(),
            "max": self.max_F.cpu(),
            "moments": self.moments_4F.cpu(),
        }


def moments_summary(moments_4F: torch.Tensor, n: int) -> dict[str, np.ndarray]:
    """Mean, variance, skew = E[c³]/Var^1.5 and kurtosis = E[c⁴]/Var² (the paper's code: raw moments over
    the central variance); NaN where the variance is 0."""
    m = (moments_4F / n).numpy()
    var = m[1] - m[0] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.where(var > 0, m[2] / var**1.5, np.nan)
        kurt = np.where(var > 0, m[3] / var**2, np.nan)
    return {"mean": m[0], "var": var, "skew": skew, "kurtosis": kurt}


def sparse_token_values(vals_PL: torch.Tensor, feature_P: torch.Tensor, slot_P: torch.Tensor):
    """Non-zero entries of per-token values as (feature, slot·L + position, value) triples."""
    L = vals_PL.shape[1]
    p, pos = (vals_PL != 0).nonzero(as_tuple=True)
    return feature_P[p], slot_P[p] * L + pos, vals_PL[p, pos]


class FeatureIndex:
    """Read access to an index folder written by ``saex features``."""

    def __init__(self, path):
        self.path = Path(path)
        if not (self.path / INDEX_JSON).is_file() or not (self.path / INDEX_TENSORS).is_file():
            raise SaexError(
                f"{self.path} is not a feature index (needs {INDEX_JSON} and {INDEX_TENSORS}); "
                "build one with saex features"
            )
        try:
            self.meta = json.loads((self.path / INDEX_JSON).read_text(encoding="utf-8"))
            t = load_file(str(self.path / INDEX_TENSORS))
            needed = [f"{k}_{v}" for k in KINDS for v in ("ids", "max")]
            needed += ["tokens", "n_tokens", "nonzero", "moments", "tok_ptr", "tok_idx", "tok_val"]
            missing = [k for k in needed if k not in t]
        except Exception as e:  # truncated or garbled: json, unicode or safetensors errors
            raise SaexError(
                f"the feature index {self.path} is damaged ({e.__class__.__name__}: {str(e)[:200]}); "
                "delete it and run saex features again"
            ) from None
        if not isinstance(self.meta, dict) or missing:
            raise SaexError(
                f"the feature index {self.path} is incomplete (missing {missing or 'its metadata'}); delete it and "
                "run saex features again"
            )
        self.t = t
        self.n_features = int(t["top_ids"].shape[0])
        self.fragment_length = int(t["tokens"].shape[1])
        self.slots = {k: t[f"{k}_ids"].shape[1] for k in KINDS}
        self._offset = {"top": 0, "random": self.slots["top"], "zero": self.slots["top"] + self.slots["random"]}
        self.n_tokens = int(t["n_tokens"][0])
        self._vocab = None

    def token_strings(self, fragment_ids) -> list[list[str]]:
        """The text of each token of the given fragments (needs an index built with decoding)."""
        if self._vocab is None:
            if not (self.path / VOCAB_JSON).is_file():
                raise SaexError(f"the index {self.path} was built with --no-decode: it has no token text")
            self._vocab = json.loads((self.path / VOCAB_JSON).read_text())
        return [[self._vocab[str(i)] for i in row] for row in self.tokens(fragment_ids).tolist()]

    def records(self, f: int, kind: str) -> list:
        """The examples of one kind as ActivationRecords (token text, per-token activations, fragment id)."""

        ids, _ = self.examples(f, kind)
        acts = self.activations(f, kind)
        toks = self.tokens(ids).tolist()
        return [
            ActivationRecord(s, a.astype(np.float64), t, int(n))
            for s, a, t, n in zip(self.token_strings(ids), acts, toks, ids)
        ]

    def check_feature(self, f: int) -> None:
        if not 0 <= f < self.n_features:
            raise SaexError(f"feature {f} is out of range: the index has features 0..{self.n_features - 1}")

    def density(self) -> np.ndarray:
        return (self.t["nonzero"].double() / self.n_tokens).numpy()

    def moments(self) -> dict[str, np.ndarray]:
        return moments_summary(self.t["moments"], self.n_tokens)

    def tokens(self, fragment_ids) -> torch.Tensor:
        return self.t["tokens"][torch.as_tensor(fragment_ids, dtype=torch.int64)]

    def examples(self, f: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(fragment ids, per-fragment max) of one kind, best first (top) or in random order (random, zero)."""
        self.check_feature(f)
        if kind not in KINDS:
            raise SaexError(f"unknown example kind {kind!r}; allowed: {KINDS}")
        ids = self.t[f"{kind}_ids"][f]
        ok = ids >= 0
        return ids[ok].numpy(), self.t[f"{kind}_max"][f][ok].numpy()

    def activations(self, f: int, kind: str) -> np.ndarray:
        """Per-token activations [n, L] of the examples of one kind, in ``examples`` order."""
        ids, _ = self.examples(f, kind)
        L = self.fragment_length
        out = np.zeros((self.slots[kind], L), dtype=np.float32)
        lo, hi = int(self.t["tok_ptr"][f]), int(self.t["tok_ptr"][f + 1])
        idx, val = self.t["tok_idx"][lo:hi].numpy(), self.t["tok_val"][lo:hi].numpy()
        start = self._offset[kind] * L
        sel = (idx >= start) & (idx < start + self.slots[kind] * L)
        local = idx[sel] - start
        out[local // L, local % L] = val[sel]
        return out[: len(ids)]
