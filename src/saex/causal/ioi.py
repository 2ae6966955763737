"""Indirect object identification prompts (Wang et al. 2022), as the paper's IOI experiment used them.

Cunningham et al. 2023 §4 (docs/causal.md, ``test_datasets/ioi_counterfact.py``): the 15 BABA
templates of Wang et al. and their ABBA versions (the first clause's two names swapped), 30 in all;
single-token names, places and objects; three distinct names per prompt. The base prompt has A = the
indirect object (IO) and B = the subject (S); its counterfactual keeps the template, place, object and S
and swaps in a third name as the IO. The final token (the IO, the answer) is dropped, so the model must
predict it. Base and counterfactual must tokenise to the same length (resampled otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from saex.errors import SaexError

BABA_TEMPLATES = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
)
# ABBA: the first clause names the IO first.
ABBA_TEMPLATES = tuple(
    t.replace("[B]", "[X]", 1).replace("[A]", "[B]", 1).replace("[X]", "[A]", 1) for t in BABA_TEMPLATES
)
TEMPLATES = BABA_TEMPLATES + ABBA_TEMPLATES
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")
NAMES = (
    "Mary",
    "John",
    "Alice",
    "Bob",
    "James",
    "Michael",
    "David",
    "Sarah",
    "Emma",
    "Daniel",
    "Laura",
    "Thomas",
    "Anna",
    "Paul",
    "Mark",
    "Kevin",
    "Lisa",
    "Peter",
    "Jessica",
    "Steven",
    "Andrew",
    "Rachel",
    "Kelly",
    "Brian",
    "Helen",
    "George",
    "Susan",
    "Robert",
    "Linda",
    "Jack",
    "Kate",
    "Eric",
    "Adam",
    "Amy",
    "Ryan",
    "Scott",
    "Chris",
    "Tom",
    "Sam",
    "Emily",
    "Jane",
    "Henry",
    "Grace",
    "Lucy",
    "Joseph",
    "William",
    "Richard",
    "Charles",
    "Martin",
    "Oliver",
    "Victoria",
    "Rose",
    "Max",
    "Ben",
    "Tim",
)


@dataclass
class IOIPrompts:
    """N prompt pairs, tokenised; every row is right-padded to the longest prompt."""

    base_NT: torch.Tensor
    counterfactual_NT: torch.Tensor
    lengths_N: torch.Tensor
    """Tokens in each prompt (base and counterfactual have the same); the answer comes after the last."""
    io_N: torch.Tensor
    """Token id of the base prompt's IO (the right answer)."""
    s_N: torch.Tensor
    """Token id of the subject (the wrong answer, in both prompts)."""
    cf_io_N: torch.Tensor
    """Token id of the counterfactual's IO."""
    texts: list[tuple[str, str]]
    templates: list[int]

    @property
    def n(self) -> int:
        return self.base_NT.shape[0]


def single_tokens(tokenizer, words) -> list[str]:
    """The words that are one token with a leading space (as they appear mid-sentence)."""
    return [w for w in words if len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1]


def make_prompts(tokenizer, n: int = 50, seed: int = 0, pad_id: int | None = None) -> IOIPrompts:
    if n <= 0:
        raise SaexError(f"the number of IOI prompts must be positive, got {n}")
    names, places, objects = (single_tokens(tokenizer, v) for v in (NAMES, PLACES, OBJECTS))
    if len(names) < 3 or not places or not objects:
        raise SaexError(
            f"this tokenizer splits too many IOI words: {len(names)} single-token names (need 3), "
            f"{len(places)} places and {len(objects)} objects (need 1 each)"
        )
    rng = np.random.default_rng([seed, 17])
    rows: list[tuple] = []  # (base ids, counterfactual ids, IO, S, counterfactual name token)
    texts: list[tuple[str, str]] = []
    templates: list[int] = []
    tries = 0
    while len(rows) < n:
        tries += 1
        if tries > 100 * n:
            raise SaexError("could not draw IOI prompt pairs of equal token length with this tokenizer")
        t = int(rng.integers(len(TEMPLATES)))
        io, s, cf = (names[i] for i in rng.choice(len(names), 3, replace=False))
        place, obj = places[rng.integers(len(places))], objects[rng.integers(len(objects))]

        def fill(a: str) -> str:  # called at once, with this draw's t, place, obj and s
            text = TEMPLATES[t].replace("[PLACE]", place).replace("[OBJECT]", obj)  # noqa: B023
            text = text.replace("[A]", a).replace("[B]", s)  # noqa: B023
            return text[: text.rfind(" " + a)]  # drop the answer: the last mention of the IO

        base, counter = fill(io), fill(cf)
        b_ids = tokenizer.encode(base, add_special_tokens=False)
        c_ids = tokenizer.encode(counter, add_special_tokens=False)
        if len(b_ids) != len(c_ids):
            continue
        tok = [tokenizer.encode(" " + w, add_special_tokens=False)[0] for w in (io, s, cf)]
        rows.append((b_ids, c_ids, *tok))
        texts.append((base, counter))
        templates.append(t)
    T = max(len(r[0]) for r in rows)
    if pad_id is None:  # padding never reaches a prompt's own positions (causal attention); any id will do
        pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    pad = pad_id
    base_NT = torch.full((n, T), pad, dtype=torch.long)
    cf_NT = torch.full((n, T), pad, dtype=torch.long)
    for i, (b, c, *_rest) in enumerate(rows):
        base_NT[i, : len(b)] = torch.tensor(b)
        cf_NT[i, : len(c)] = torch.tensor(c)
    return IOIPrompts(
        base_NT,
        cf_NT,
        torch.tensor([len(r[0]) for r in rows]),
        torch.tensor([r[2] for r in rows]),
        torch.tensor([r[3] for r in rows]),
        torch.tensor([r[4] for r in rows]),
        texts,
        templates,
    )


@torch.inference_mode()
def task_performance(model, prompts: IOIPrompts) -> dict:
    """Mean logit difference IO − S at the final position, and accuracy (difference > 0), on base prompts (the
    model on any device)."""
    device = next(model.parameters()).device
    logits = model(input_ids=prompts.base_NT.to(device), use_cache=False).logits
    last = logits[torch.arange(prompts.n, device=device), prompts.lengths_N.to(device) - 1].float()
    io_N, s_N = prompts.io_N.to(device), prompts.s_N.to(device)
    diff = (last.gather(1, io_N[:, None]) - last.gather(1, s_N[:, None])).squeeze(1)
    return {
        "n_prompts": prompts.n,
        "mean_logit_diff": float(diff.mean()),
        "accuracy": float((diff > 0).float().mean()),
        "logit_diffs": diff.tolist(),
    }
