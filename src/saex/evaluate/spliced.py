"""The model's loss with a dictionary's reconstruction spliced in (paper §6.2; docs/evaluation.md).

"Substituting the layer-2 residual of Pythia-70M with its reconstruction raises Pile perplexity from 25 to
40" (§6.2; ``perplexity_under_reconstruction`` in the paper's code). On held-out contexts, per predicted
token (every position but the last):

* CE_clean: the model's own next-token cross-entropy; CE_spliced: with the hook's activation replaced by
  x̂ = decode(encode(x)) at every position; CE_zero: with it replaced by zeros (zero-ablation)
* perplexity = exp(mean CE)
* CE recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean): 1 when the splice costs nothing, 0 when it
  is as bad as deleting the activation
* KL = mean over tokens of KL(p_clean ‖ p_spliced), in nats

The clean and zero-ablated forwards are shared by every dictionary evaluated at the same hook point. A
transcoder (Dunefsky et al. 2024) is spliced as a replacement: in one forward, its input hook point's
activation x is read and its target's activation replaced by its prediction ŷ(x) (skip term included), so
CE recovered says how much of the model's loss the replaced component (an MLP, say) keeps; zero-ablation is
then of the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, contextmanager

import torch

from saex.devices import device_of, wide_dtype
from saex.lm.hooks import HookedLM


def _logits(hooked: HookedLM, ids_BT: torch.Tensor) -> torch.Tensor:
    return hooked.model(input_ids=ids_BT, use_cache=False).logits[:, :-1].float()


def _token_terms(logits_BTV: torch.Tensor, p_clean_BTV: torch.Tensor, targets_BT1: torch.Tensor):
    """Per predicted token: CE = lse − logit[target], and Σ_v p_clean·log p = Σ_v p_clean·logit − lse.

    Working from the logits and their logsumexp avoids materialising log-probabilities for every
    dictionary; KL(p_clean ‖ p) per token is then the clean model's value of the second term minus this
    model's, computed the same way, so a dictionary that changes nothing gets exactly 0.
    """
    lse_BT = torch.logsumexp(logits_BTV, dim=-1)
    ce_BT = lse_BT - logits_BTV.gather(-1, targets_BT1).squeeze(-1)
    cross_BT = (p_clean_BTV * logits_BTV).sum(-1) - lse_BT
    return ce_BT, cross_BT


def _float32_on(d, a: torch.Tensor) -> torch.Tensor:
    """An activation of the model as dictionary ``d`` reads it: on its device, in float32."""
    return a.to(device_of(d), torch.float32)


def _reconstruct(d, a: torch.Tensor) -> torch.Tensor:
    x = _float32_on(d, a)
    return d.decode(d.encode(x), x)  # the hook puts it back on the activation's device, in its dtype


@contextmanager
def _replacement(hooked: HookedLM, hook: str, target: str, d):
    """Within the context, the activation at ``target`` is replaced by transcoder ``d``'s prediction from the
    activation at ``hook`` of the same forward (``hook`` comes first in the forward pass)."""
    seen: dict[str, torch.Tensor] = {}

    def keep(a):
        seen["x"] = a

    with ExitStack() as stack:
        handle = hooked.hook(hook, keep)
        stack.callback(handle.remove)
        stack.enter_context(hooked.splice(target, lambda y: d(_float32_on(d, seen["x"]))))
        yield


def splices_of(
    hooked: HookedLM, hook: str, dictionaries: dict, target: str | None = None
) -> dict[str, Callable[[], AbstractContextManager]]:
    """The zero-ablation and each dictionary's splice (a transcoder's replacement), as context managers."""
    at = target or hook

    def splice_of(d) -> Callable[[], AbstractContextManager]:
        if target:
            return lambda: _replacement(hooked, hook, target, d)
        return lambda: hooked.splice(hook, lambda a: _reconstruct(d, a))

    return {
        "<zero>": lambda: hooked.splice(at, torch.zeros_like),
        **{name: splice_of(d) for name, d in dictionaries.items()},
    }


@torch.inference_mode()
def batch_sums(
    hooked: HookedLM, ids_BT: torch.Tensor, splices: dict[str, Callable[[], AbstractContextManager]]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One batch of contexts: the summed CE of the clean model (``<clean>``) and of each splice, and the summed
    KL(p_clean ‖ p_spliced) of each splice, as 0-d tensors on the model's device (float64; float32 on MPS)."""
    ids_BT = ids_BT.long().to(hooked.device)
    targets = ids_BT[:, 1:, None]
    logits = _logits(hooked, ids_BT)
    wide = wide_dtype(logits.device)
    p_clean = torch.softmax(logits, dim=-1)
    ce_BT, cross_clean_BT = _token_terms(logits, p_clean, targets)
    ce = {"<clean>": ce_BT.to(wide).sum()}
    kl = {}
    for name, splice in splices.items():
        with splice():
            logits = _logits(hooked, ids_BT)
        ce_BT, cross_BT = _token_terms(logits, p_clean, targets)
        ce[name] = ce_BT.to(wide).sum()
        kl[name] = (cross_clean_BT.to(wide) - cross_BT.to(wide)).sum()
        del logits
    return ce, kl


@torch.inference_mode()
def spliced_losses(
    hooked: HookedLM,
    hook: str,
    dictionaries: dict,
    tokens_CT: torch.Tensor,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
    target: str | None = None,
) -> dict[str, dict]:
    """CE, perplexity, CE recovered and KL for each named dictionary spliced in at ``hook``, or for transcoders
    reading ``hook``, their prediction spliced in at ``target``. The model and the dictionaries may be on
    different devices (activations cross as float32)."""
    splices = splices_of(hooked, hook, dictionaries, target)
    ce = dict.fromkeys(["<clean>", *splices], 0.0)
    kl = dict.fromkeys(splices, 0.0)
    n = 0
    for start in range(0, tokens_CT.shape[0], batch_size):
        ids_BT = tokens_CT[start : start + batch_size]
        ce_sums, kl_sums = batch_sums(hooked, ids_BT, splices)
        for name, v in ce_sums.items():
            ce[name] += v.item()
        for name, v in kl_sums.items():
            kl[name] += v.item()
        n += ids_BT.shape[0] * (ids_BT.shape[1] - 1)
        if on_batch:
            on_batch(ids_BT.shape[0])
    if n == 0:
        raise ValueError("no tokens to evaluate")
    clean, zero = ce["<clean>"] / n, ce["<zero>"] / n
    out = {}
    for name in dictionaries:
        spliced = ce[name] / n
        out[name] = {
            "n_contexts": int(tokens_CT.shape[0]),
            "n_tokens": n,
            "ce_clean": clean,
            "ce_spliced": spliced,
            "ce_zero": zero,
            "ppl_clean": math.exp(clean),
            "ppl_spliced": math.exp(spliced),
            "ppl_zero": math.exp(zero),
            "ce_recovered": (zero - spliced) / (zero - clean) if zero != clean else math.nan,
            "kl": kl[name] / n,
            "kl_zero": kl["<zero>"] / n,
            # what was replaced: x̂ at every position of every context, attention-sink and separator
            # positions included (the dictionary's row filter applies to its training and metrics only)
            "positions": "all",
        }
    return out
