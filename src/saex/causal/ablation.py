"""Output effect of a feature: the paper's less-than-rank-one ablation (Cunningham et al. 2023 §5.2, Fig. 4 right).

At every position of the hook point the activation becomes ``x ← x − c_k(x)·f_k`` (``f_k = W_dec[k]``, in
activation space, so any dictionary works, including signed ``linear`` ones such as PCA where ``c_k < 0``):
the feature is lowered along its own direction until it is no longer active, and the rest of ``x`` (other
features, the reconstruction error) is kept. The paper's code calls this "partial" ablation. The effect is
``log_softmax(ablated) − log_softmax(clean)`` for every vocabulary token, averaged over the positions where
the feature is active (``c_k ≠ 0``) in the given contexts. The apostrophe feature's largest effect is a
drop of "s".

Cost: ``Segment`` runs the network from one hook point to another. On the clean run it records the
activations at both ends and the arguments the model passed to each block in between (rotary embeddings,
masks); a modified activation then goes through those blocks only, called directly, as
``saex.causal.patching`` does after a hook. Hook points inside a block (MLP neurons, attention / MLP
outputs) as the start fall back to a full forward with the activation spliced in, stopped after the end
hook. The final norm and the LM head run only at the positions where the feature is active.

Devices: the model runs where it is, in its dtype; a ``Segment`` takes and gives activations in float32 on its
``device`` (the dictionaries'), and the ablation is computed there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from saex.devices import device_of, wide_dtype
from saex.errors import SaexError
from saex.lm.hooks import HookedLM, _first, _StopForward, expand_batch


class Segment:
    """The network from hook point ``start`` to hook point ``end`` (default: the last block's output) on
    fixed token ids: ``seg(x_BNTD)`` is the activation at ``end`` for each of B replacements of the one at
    ``start``; differentiable. ``x_start`` / ``x_end`` hold the clean activations [N, T, D]. Activations in and
    out are float32 on ``device`` (default: the model's); the model runs on its own device in its dtype."""

    def __init__(
        self,
        hooked: HookedLM,
        start: str,
        ids_NT: torch.Tensor,
        end: str | None = None,
        device: torch.device | str | None = None,
    ):
        self.hooked, self.ids_NT = hooked, ids_NT.to(hooked.device)
        self.device = torch.device(device) if device is not None else hooked.device
        end = end or f"blocks.{hooked.n_layers - 1}.hook_resid_post"
        p0, p1 = hooked.resolve(start), hooked.resolve(end)
        if p0.order > p1.order:
            raise SaexError(f"hook point {start} is not before {end}")
        self.start, self.end, self.p1 = start, end, p1
        self.identity = start == end
        # blocks called directly: start at a residual hook, so the blocks' inputs are known exactly
        self.first = {"hook_resid_post": p0.layer + 1, "hook_resid_pre": p0.layer}.get(p0.kind)
        self.calls: dict[int, tuple] = {}
        got: dict[str, torch.Tensor] = {}
        handles = []
        if self.first is not None and not self.identity:
            for i in range(self.first, min(p1.layer, hooked.n_layers - 1) + 1):

                def keep(mod, args, kwargs, i=i):
                    self.calls[i] = (tuple(args[1:]), {k: v for k, v in kwargs.items() if k != "hidden_states"})

                handles.append(hooked.blocks[i].register_forward_pre_hook(keep, with_kwargs=True))

        def grab(name, last):
            def fn(a):
                got[name] = a.detach().clone()
                if last:
                    raise _StopForward

            return fn

        handles.append(hooked.hook(start, grab("start", self.identity)))
        if not self.identity:
            handles.append(hooked.hook(end, grab("end", True)))
        try:
            with torch.no_grad():
                hooked.model(input_ids=self.ids_NT, use_cache=False)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        self.x_start = got["start"].to(self.device, torch.float32)
        self.x_end = self.x_start if self.identity else got["end"].to(self.device, torch.float32)

    def __call__(self, x_BNTD: torch.Tensor) -> torch.Tensor:
        B, N, T, D = x_BNTD.shape
        if self.identity:
            return x_BNTD
        return self._run(x_BNTD.reshape(B * N, T, D).to(self.hooked.device, self.hooked.dtype), B, N, T).to(
            self.device, torch.float32
        )

    def _run(self, h: torch.Tensor, B: int, N: int, T: int) -> torch.Tensor:
        """The activation at ``end`` [B, N, T, D'] from the one at ``start`` [B·N, T, D], on the model's device and
        in its dtype."""
        if self.first is None:
            return self._spliced(h).reshape(B, N, T, -1)
        p1 = self.p1
        for i in range(self.first, p1.layer):
            args, kw = self.calls[i]
            h = _first(self.hooked.blocks[i](h, *expand_batch(args, N, B), **expand_batch(kw, N, B)))
        if p1.kind != "hook_resid_pre":  # the end is in block p1.layer: run it (up to the end hook)
            args, kw = self.calls[p1.layer]
            block = self.hooked.blocks[p1.layer]
            if p1.kind == "hook_resid_post":
                h = _first(block(h, *expand_batch(args, N, B), **expand_batch(kw, N, B)))
            else:
                got = {}

                def fn(a):
                    got["x"] = a
                    raise _StopForward

                handle = self.hooked.hook(self.end, fn)
                try:
                    block(h, *expand_batch(args, N, B), **expand_batch(kw, N, B))
                except _StopForward:
                    pass
                finally:
                    handle.remove()
                h = got["x"]
        return h.reshape(B, N, T, -1)

    def _spliced(self, h: torch.Tensor) -> torch.Tensor:
        ids = self.ids_NT.repeat(h.shape[0] // self.ids_NT.shape[0], 1)
        got = {}

        def fn(a):
            got["x"] = a
            raise _StopForward

        handles = [self.hooked.hook(self.start, lambda a: h, replace=True), self.hooked.hook(self.end, fn)]
        try:
            self.hooked.model(input_ids=ids, use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return got["x"]


def pad_contexts(contexts: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [N, T] (pad = the context's first token; causal attention never lets a position see
    the padding after it) and the lengths [N]."""
    rows = [torch.as_tensor(c, dtype=torch.long).reshape(-1) for c in contexts]
    if not rows or any(len(r) == 0 for r in rows):
        raise SaexError("need at least one non-empty context")
    T = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([r, r[:1].expand(T - len(r))]) for r in rows])
    return ids, torch.tensor([len(r) for r in rows])


@torch.no_grad()
def output_effect(
    hooked: HookedLM,
    hook: str,
    dictionary,
    feature: int,
    contexts: Sequence,
    decode: Callable[[int], str] = str,
    top: int = 20,
    batch: int = 8,
    position_chunk: int = 256,
) -> dict:
    """The ``output_effect`` payload of ``schema.md``: mean Δ log-prob of every token when the feature is
    ablated (x ← x − c_k f_k at every position) over the positions where it is active in ``contexts``
    (token-id sequences; ``contexts`` counts those with at least one active position)."""
    if not 0 <= feature < dictionary.d_dict:
        raise SaexError(f"feature {feature} is out of range: the dictionary has features 0..{dictionary.d_dict - 1}")
    if dictionary.d_in != hooked.resolve(hook).width:
        raise SaexError(f"the dictionary has d_in {dictionary.d_in}, but {hook} has width {hooked.resolve(hook).width}")
    device = device_of(dictionary)
    f_D = dictionary.W_dec_FD[feature].detach().float()
    total_V, positions, used = None, 0, 0
    for lo in range(0, len(contexts), batch):
        ids_NT, len_N = pad_contexts(contexts[lo : lo + batch])
        seg = Segment(hooked, hook, ids_NT, device=device)
        c_NT = dictionary.encode(seg.x_start)[..., feature]
        valid_NT = torch.arange(ids_NT.shape[1], device=device)[None] < len_N.to(device)[:, None]
        active_NT = (c_NT != 0) & valid_NT
        if not active_NT.any():
            continue
        used += int(active_NT.any(1).sum())
        # in the model's units the feature writes c·σ·f (σ of a dictionary that normalises its input, else 1)
        sigma = dictionary.norm_stats(seg.x_start)[1]
        h_abl = seg((seg.x_start - c_NT[..., None] * sigma * f_D)[None])[0]
        clean_PD, abl_PD = seg.x_end[active_NT], h_abl[active_NT]
        for p in range(0, len(clean_PD), position_chunk):
            d = (
                (
                    F.log_softmax(hooked.logits_at(abl_PD[p : p + position_chunk]), -1)
                    - F.log_softmax(hooked.logits_at(clean_PD[p : p + position_chunk]), -1)
                )
                .to(wide_dtype(hooked.device))
                .sum(0)
            )
            total_V = d if total_V is None else total_V + d
        positions += int(active_NT.sum())
    if total_V is None:
        return {"positions": 0, "contexts": 0, "decreased": [], "increased": []}
    mean_V = (total_V / positions).float()
    k = min(top, len(mean_V))
    dec, inc = mean_V.topk(k, largest=False), mean_V.topk(k)

    def row(r):
        return [
            {"token": decode(int(i)), "id": int(i), "delta": float(v)}
            for v, i in zip(r.values.tolist(), r.indices.tolist())
        ]

    return {"positions": positions, "contexts": used, "decreased": row(dec), "increased": row(inc)}
