"""Steering with dictionary features: generate with features added, clamped or ablated at their hook point.

Templeton et al. (2024, "Scaling Monosemanticity") steer Claude by clamping a feature to a multiple of its
maximum activation; Turner et al. (2023) add a direction to the residual stream; Neuronpedia and SAELens add
``strength × W_dec[f]``. saex does all three through the dictionary's codes. At every position of the hook
point, with ``c = encode(x)`` and ``c′`` the edited codes,

=========  =========================  ====================================================================
mode       edit                       c′_f
=========  =========================  ====================================================================
``add``    strength s                 c_f + s   (the activation moves by s·W_dec[f] in the dictionary's
                                      units; ×σ for one that normalises each input)
``clamp``  value v                    v         (at every position, active or not)
``ablate`` —                          0
=========  =========================  ====================================================================

and the activation becomes ``x + decode(c′) − decode(c)`` (the error term ``x − x̂`` kept: only the edited
features change) or, with the error term dropped, ``decode(c′)`` (plus a skip term): the model then runs on the
reconstruction, as spliced evaluation does. Several features are edited together. Position 0 is left alone by
default: in SmolLM2 (and Gemma) it is an attention sink whose activation is many times the norm of the others,
and in models that prepend one it is the BOS token. Generation is greedy, or
sampled with a seed so that the steered and the unsteered run draw from the same random stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from saex.errors import SaexError
from saex.lm.hooks import HookedLM

Mode = Literal["add", "clamp", "ablate"]


@dataclass(frozen=True)
class Edit:
    """One feature's edit: ``add`` a strength to its code, ``clamp`` it to a value, or ``ablate`` it."""

    feature: int
    mode: Mode
    value: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Edit:
        """``F:add:S``, ``F:clamp:V`` or ``F:ablate`` (F the feature index)."""
        m = re.fullmatch(r"\s*(\d+):(add|clamp|ablate)(?::([-+0-9.eE]+|[-+]?inf))?\s*", text)
        if not m or (m.group(2) == "ablate") != (m.group(3) is None):
            raise SaexError(
                f"bad steering edit {text!r}: expected FEATURE:add:STRENGTH, FEATURE:clamp:VALUE or FEATURE:ablate"
            )
        value = float(m.group(3) or 0.0)
        if value != value or abs(value) == float("inf"):
            raise SaexError(f"bad steering edit {text!r}: the value must be finite")
        return cls(int(m.group(1)), m.group(2), value)  # type: ignore[arg-type]


def edited_codes(c_BTF: torch.Tensor, edits: list[Edit]) -> torch.Tensor:
    c = c_BTF.clone()
    for e in edits:
        if e.mode == "add":
            c[..., e.feature] += e.value
        else:
            c[..., e.feature] = e.value if e.mode == "clamp" else 0.0
    return c


class Steering:
    """The activation edit ``x -> x′`` at the dictionary's hook point (module docstring), at the positions from
    ``start`` on: by default position 0 is left alone, the attention sink of SmolLM2 and Gemma (its norm many times
    the others') or a BOS token. Positions are counted across the calls of one generation (a cached generation
    sees one new position per call); ``reset()`` starts a new sequence."""

    def __init__(self, dictionary, edits: list[Edit], keep_error: bool = True, start: int = 1):
        for e in edits:
            if not 0 <= e.feature < dictionary.d_dict:
                raise SaexError(
                    f"feature {e.feature} is out of range: the dictionary has features 0..{dictionary.d_dict - 1}"
                )
        if getattr(dictionary, "transcoder", False):
            raise SaexError(
                "steering edits the activation a dictionary reconstructs; a transcoder writes to another hook point"
            )
        self.d, self.edits, self.keep_error, self.start = dictionary, edits, keep_error, start
        self.seen = 0

    def reset(self) -> None:
        self.seen = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        first = max(0, self.start - self.seen)  # the first position of this call to edit
        self.seen += x.shape[1]
        if first >= x.shape[1]:
            return x
        xf = x[:, first:].float()  # the dictionary computes in float32 whatever the model's dtype
        c = self.d.encode(xf)
        c2 = edited_codes(c, self.edits)
        if self.keep_error:
            new = xf + self.d.decode(c2, xf) - self.d.decode(c, xf)
        else:
            new = self.d.decode(c2, xf) + self.d.skip(xf)
        return torch.cat([x[:, :first], new.to(x.dtype)], 1)


@dataclass
class Steered:
    """What ``steer`` returns: the generations and the change of the next-token distribution after the prompt."""

    prompt: str
    clean: str
    steered: str
    logp_clean_V: torch.Tensor = field(repr=False)
    logp_steered_V: torch.Tensor = field(repr=False)

    def top_changes(self, n: int, decode) -> dict[str, list[dict]]:
        """The ``n`` tokens whose next-token log-probability rose most, and the ``n`` that fell most."""
        delta = self.logp_steered_V - self.logp_clean_V
        up, down = delta.topk(n), (-delta).topk(n)

        def rows(vals, ids, sign):
            return [
                {
                    "token": decode(int(i)),
                    "id": int(i),
                    "delta_logp": sign * float(v),
                    "logp_clean": float(self.logp_clean_V[i]),
                    "logp_steered": float(self.logp_steered_V[i]),
                }
                for v, i in zip(vals, ids)
            ]

        return {"up": rows(up.values, up.indices, 1), "down": rows(down.values, down.indices, -1)}


@torch.no_grad()
def steer(
    model,
    tokenizer,
    dictionary,
    hook: str,
    prompt: str,
    edits: list[Edit],
    keep_error: bool = True,
    max_new_tokens: int = 30,
    temperature: float = 0.0,
    seed: int = 0,
    start: int = 1,
) -> Steered:
    """Generate from ``prompt`` without and with the edits at ``hook`` (module docstring)."""
    hooked = HookedLM(model)
    point = hooked.resolve(hook)
    if point.width != dictionary.d_in:
        raise SaexError(f"the dictionary has d_in {dictionary.d_in}, but {hook} has width {point.width}")
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    if ids.shape[1] == 0:
        raise SaexError("the prompt is empty")
    fn = Steering(dictionary, edits, keep_error, start)

    def run() -> tuple[str, torch.Tensor]:
        fn.reset()
        logp = F.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
        fn.reset()
        torch.manual_seed(seed)  # the same random stream for both runs
        kw = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, pad_token_id=pad, **kw
        )
        return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True), logp

    clean, logp_clean = run()
    with hooked.splice(hook, fn):
        steered, logp_steered = run()
    return Steered(prompt, clean, steered, logp_clean.cpu(), logp_steered.cpu())
