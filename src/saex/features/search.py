"""Feature search by prompt (Cunningham et al. 2023 App. D.3).

The paper finds its apostrophe feature by running " I don't know about that. It is now up to Dave'" and
ranking the dictionary's features by their activation on the last apostrophe; it ranks the residual
dimensions the same way, by maximum and by minimum (the residual stream is signed), to show that the
basis gives outlier dimensions rather than an apostrophe dimension. ``search_prompt`` does both at one
token position (default: the last) of any hook point, for any dictionary.
"""

from __future__ import annotations

import torch

from saex.devices import device_of
from saex.errors import SaexError

DAVE = " I don't know about that. It is now up to Dave'"


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt, with the special tokens the tokenizer adds by default (Gemma's BOS)."""
    ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise SaexError(f"the prompt {prompt!r} tokenizes to nothing")
    return list(ids)


def check_position(position: int, n_tokens: int) -> int:
    """A token position (negative counts from the end) as a non-negative index, or a clear error."""
    if not -n_tokens <= position < n_tokens:
        raise SaexError(
            f"--position {position} is out of range: the prompt has {n_tokens} tokens "
            f"(allowed {-n_tokens}..{n_tokens - 1})"
        )
    return position % n_tokens


@torch.no_grad()
def search_prompt(
    hooked,
    tokenizer,
    hook: str,
    dictionary,
    prompt: str = DAVE,
    position: int = -1,
    top: int = 10,
    dictionary_name: str = "",
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The ``search`` entry of ``case_study.json`` (the prompt's tokens, the chosen position, the ``top``
    features by activation there, descending, and the ``top`` basis dimensions by maximum and by minimum),
    with the codes ``[F]`` and the activation ``[D]`` at that position (float32, on the CPU; the dictionary
    encodes on its own device)."""
    ids = encode_prompt(tokenizer, prompt)
    pos = check_position(position, len(ids))
    with hooked.capture([hook]) as run:
        x_D = run(torch.tensor([ids]))[hook][0, pos].to(device_of(dictionary), torch.float32)
    c_F, x_D = dictionary.encode(x_D[None])[0].cpu(), x_D.cpu()
    n = min(top, len(c_F))
    best = c_F.topk(n)
    m = min(top, len(x_D))
    hi, lo = x_D.topk(m), x_D.topk(m, largest=False)
    return (
        {
            "prompt": prompt,
            "tokens": [tokenizer.decode([i]) for i in ids],
            "position": pos,
            "hook": hook,
            "dictionary": dictionary_name,
            "features": [{"feature": int(f), "activation": float(a)} for a, f in zip(best.values, best.indices)],
            "resid_max": [{"dim": int(d), "value": float(v)} for v, d in zip(hi.values, hi.indices)],
            "resid_min": [{"dim": int(d), "value": float(v)} for v, d in zip(lo.values, lo.indices)],
        },
        c_F,
        x_D,
    )


def rank_of(codes_F: torch.Tensor, feature: int) -> int:
    """0-based rank of a feature in the search's order (how many features are strictly higher)."""
    return int((codes_F > codes_F[feature]).sum())
