"""Upstream circuits of a feature by ablation (Cunningham et al. 2023 §5.3, Fig. 5).

The paper picks a target feature (layer 5, "inside parentheses, predicts ')'"), takes its maximum
activation M over the dataset and 20 contexts where it is in [M/2, M], ablates each feature of the
previous layer's dictionary in turn (``x ← x − c_j f_j`` at every position, as in ``ablation.py``), and
ranks them by how much the target's activation drops; it recurses on the strongest ones, giving a causal
tree whose edges are these drops and whose linked features often point in similar directions (cosine).

Here (the paper's notebook is not published):

* contexts end at the token where the target fires (they are truncated after it), so the root's activation
  is read at each context's last token; a feature further up is ablated at every position, so what a
  deeper level explains is its *total* activation over the context's positions. ``effect`` = mean over
  contexts of (clean − ablated) of that quantity; ``cos`` = cosine of the two decoder directions (null when
  the hook points have different widths);
* only features active somewhere in the contexts can change anything. With ``candidates`` > 0 they are
  first ranked by attribution (one backward pass: ∂target/∂c_j · c_j summed over positions, the first-order
  estimate of the drop), and only the ``candidates`` highest (likely drops) and the ``candidates`` lowest
  (likely rises) are ablated exactly; ``candidates = 0`` ablates every active feature. Reported effects are
  always exact ablations; ``method`` at the root says which;
* the tree follows the features whose ablation *lowers* the parent (effect > 0), as the paper's does. So that
  the opposite can be seen (and the Fig. 5 claim can fail on it), every expanded node also records the
  strongest features whose ablation *raises* it (``increases``: effect < 0, not expanded further), how many
  candidates were ablated, and the sums of the positive and of the negative effects over them;
* each level runs only the blocks between the two hook points (``ablation.Segment``), one batch of
  candidate ablations per call; codes, ablations and effects are computed on the dictionaries' device in
  float32, the model runs on its own device in its dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from saex.causal.ablation import Segment, pad_contexts
from saex.devices import device_of
from saex.dictionaries.sae import SAE
from saex.errors import SaexError
from saex.lm.hooks import HookedLM


@dataclass
class Level:
    """One dictionary at one hook point."""

    hook: str
    dictionary: SAE


def feature_code(d, x_ND: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Code of feature k at every row of ``x [..., D]`` (one encoder column where the architecture allows it:
    ``SAE.code_of``)."""
    return d.code_of(x_ND, k, chunk)


def check_levels(hooked: HookedLM, target: Level, upstream: Sequence[Level]) -> None:
    """Each upstream hook point strictly before the one it explains, widths matching the dictionaries."""
    prev = target
    for lvl in [target, *upstream]:
        point = hooked.resolve(lvl.hook)
        if lvl.dictionary.d_in != point.width:
            raise SaexError(
                f"a dictionary for {lvl.hook} has d_in {lvl.dictionary.d_in}, but the hook has width {point.width}"
            )
        if lvl is not target and point.order >= hooked.resolve(prev.hook).order:
            raise SaexError(
                f"upstream hook {lvl.hook} is not earlier than {prev.hook}; give --upstream "
                "dictionaries nearest first, each at an earlier hook point"
            )
        prev = lvl


def contexts_from_index(index, feature: int, n: int = 20, seed: int = 0) -> tuple[list[list[int]], float]:
    """Up to ``n`` contexts (seeded sample) from the index's kept fragments (top and random) where the
    feature is in [M/2, M] at some token (M: its maximum over all indexed tokens), each truncated after
    its highest such token; and M."""
    index.check_feature(feature)
    M = float(index.t["max"][feature])
    if not M > 0:
        raise SaexError(f"feature {feature} never fires in the index {index.path}: no contexts for its circuit")
    found: dict[int, list[int]] = {}
    for kind in ("top", "random"):
        ids, _ = index.examples(feature, kind)
        acts = index.activations(feature, kind)
        for fid, row in zip(ids.tolist(), acts):
            ok = (row >= M / 2) & (row <= M * (1 + 1e-6))
            if fid in found or not ok.any():
                continue
            pos = int(np.argmax(np.where(ok, row, -np.inf)))
            found[fid] = index.tokens([fid])[0][: pos + 1].tolist()
    keys = sorted(found)
    pick = np.random.default_rng([seed, 17]).permutation(len(keys))[:n]
    return [found[keys[i]] for i in sorted(pick)], M


class _Circuit:
    def __init__(self, hooked, contexts, candidates: int, batch: int, children: int, device: torch.device):
        self.hooked, self.candidates, self.batch, self.children = hooked, candidates, batch, children
        self.device = device
        self.ids_NT, len_N = pad_contexts(contexts)
        N, T = self.ids_NT.shape
        len_N = len_N.to(device)
        self.valid_NT = torch.arange(T, device=device)[None] < len_N[:, None]
        self.last_NT = torch.zeros(N, T, device=device)
        self.last_NT[torch.arange(N, device=device), len_N - 1] = 1.0
        self.segments: dict[tuple[str, str], Segment] = {}

    def segment(self, start: str, end: str) -> Segment:
        if (start, end) not in self.segments:
            self.segments[start, end] = Segment(self.hooked, start, self.ids_NT, end, self.device)
        return self.segments[start, end]

    def effects(self, parent: Level, k: int, mask_NT: torch.Tensor, up: Level) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, exact mean drops) for the candidate upstream features, on the CPU."""
        seg = self.segment(up.hook, parent.hook)
        W_dec = up.dictionary.W_dec_FD.detach().float()
        N = self.ids_NT.shape[0]
        x_u = seg.x_start
        with torch.no_grad():
            # codes in the model's units: a feature writes c·σ·f (σ of a dictionary that normalises its input)
            c_NTF = up.dictionary.encode(x_u) * up.dictionary.norm_stats(x_u)[1]
            active = torch.nonzero(((c_NTF != 0) & self.valid_NT[..., None]).any(0).any(0)).squeeze(1)
            metric = lambda y: (feature_code(parent.dictionary, y, k) * mask_NT).sum(-1)
            clean_N = metric(seg(x_u[None])[0])
        if self.candidates and len(active) > 2 * self.candidates:
            # Both ends: a budget spent only on likely drops would never find the rises that could contradict
            # the tree, and one spent by |attribution| would crowd out the drops the tree is made of.
            attr_A = self.attribution(seg, metric, c_NTF, W_dec)[active]
            active = torch.unique(
                torch.cat(
                    [
                        active[attr_A.argsort(descending=True, stable=True)[: self.candidates]],
                        active[attr_A.argsort(stable=True)[: self.candidates]],
                    ]
                )
            )
        drops = []
        B = self.batch or max(1, min(8, 1200 // self.ids_NT.numel()))
        with torch.no_grad():
            for lo in range(0, len(active), B):
                J = active[lo : lo + B]
                edit = c_NTF[..., J].permute(2, 0, 1)[..., None] * W_dec[J][:, None, None, :]
                drops.append((clean_N[None] - metric(seg(x_u[None] - edit))).sum(1) / N)
        return active.cpu(), (torch.cat(drops) if drops else torch.zeros(0)).cpu()

    def attribution(self, seg: Segment, metric, c_NTF: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
        """First-order drop of the metric for ablating each feature: Σ_positions (∂m/∂x · f_j) c_j."""
        x = seg.x_start.clone().requires_grad_(True)
        with torch.enable_grad():
            metric(seg(x[None])[0]).sum().backward()
        assert x.grad is not None  # backward() above filled it
        g_NTD = x.grad * self.valid_NT[..., None]
        return ((g_NTD @ W_dec.T) * c_NTF).sum((0, 1)) / x.shape[0]

    def expand(self, parent: Level, k: int, mask_NT: torch.Tensor, upstream: Sequence[Level]) -> dict:
        """The fields a node gains from ablating its upstream level: ``children`` (the strongest drops,
        expanded), ``increases`` (the strongest rises), ``ablated`` and the positive / negative effect sums.
        A node with no upstream level gets only ``children = []``."""
        if not upstream:
            return {"children": []}
        up = upstream[0]
        feats, drops = self.effects(parent, k, mask_NT, up)
        nodes, rises = [], []
        for i in drops.argsort(descending=True, stable=True)[: self.children].tolist():
            if not drops[i] > 0:  # a feature whose ablation does not lower the parent is no cause of it
                break
            j = int(feats[i])
            nodes.append(
                {
                    "hook": up.hook,
                    "feature": j,
                    "effect": float(drops[i]),
                    "cos": _cos(parent, k, up, j),
                    **self.expand(up, j, self.valid_NT.float(), upstream[1:]),
                }
            )
        for i in drops.argsort(descending=False, stable=True)[: self.children].tolist():
            if not drops[i] < 0:
                break
            j = int(feats[i])
            rises.append({"hook": up.hook, "feature": j, "effect": float(drops[i]), "cos": _cos(parent, k, up, j)})
        return {
            "children": nodes,
            "increases": rises,
            "ablated": len(feats),
            "effect_sum_positive": float(drops.clamp(min=0).sum()),
            "effect_sum_negative": float(drops.clamp(max=0).sum()),
        }


def _cos(a: Level, i: int, b: Level, j: int) -> float | None:
    u, v = a.dictionary.W_dec_FD[i].detach().float(), b.dictionary.W_dec_FD[j].detach().float()
    if u.shape != v.shape:
        return None
    return float(torch.nn.functional.cosine_similarity(u, v, dim=0))


def upstream_circuit(
    hooked: HookedLM,
    target: Level,
    feature: int,
    contexts: Sequence,
    upstream: Sequence[Level],
    depth: int | None = None,
    children: int = 3,
    candidates: int = 64,
    batch: int = 0,
    max_activation: float | None = None,
) -> dict:
    """The upstream tree of ``schema.md`` for ``feature`` of ``target``: ``upstream`` holds one dictionary
    per level, nearest first, each at an earlier hook point; ``depth`` levels are expanded (default all),
    ``children`` strongest causes per node, and as many of the strongest rises in ``increases``.
    ``max_activation`` is M (default: the largest clean activation in the contexts)."""
    if not 0 <= feature < target.dictionary.d_dict:
        raise SaexError(
            f"feature {feature} is out of range: the target dictionary has features 0..{target.dictionary.d_dict - 1}"
        )
    depth = len(upstream) if depth is None else depth
    if not 0 <= depth <= len(upstream):
        raise SaexError(f"--depth {depth} needs that many upstream dictionaries; {len(upstream)} given")
    if children < 1 or candidates < 0:
        raise SaexError(f"children must be >= 1 and candidates >= 0, got {children} and {candidates}")
    check_levels(hooked, target, upstream)
    run = _Circuit(hooked, contexts, candidates, batch, children, device_of(target.dictionary))
    if max_activation is None:
        with torch.no_grad():
            with hooked.capture([target.hook]) as cap:
                x = cap(run.ids_NT)[target.hook].to(run.device, torch.float32)
            max_activation = float((feature_code(target.dictionary, x, feature) * run.last_NT).sum(1).max())
    method = (
        "exact ablation of every active upstream feature"
        if candidates == 0
        else f"attribution (gradient × code) ranks the active upstream features; the top {candidates} and the "
        f"bottom {candidates} are ablated exactly"
    )
    traced = run.expand(target, feature, run.last_NT, list(upstream)[:depth])
    return {
        "hook": target.hook,
        "feature": int(feature),
        "effect": None,
        "cos": None,
        **traced,
        "contexts": int(run.ids_NT.shape[0]),
        "max_activation": float(max_activation),
        "method": method,
    }
