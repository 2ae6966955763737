"""``saex steer``: generate from a prompt with dictionary features added, clamped or ablated at their hook point
(``saex.causal.steering``), and print the unsteered and steered continuations side by side with the change of
the next-token log-probabilities after the prompt. Takes every architecture and every format saex reads."""

from __future__ import annotations

import itertools
import json
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

from saex.causal.steering import Edit, steer
from saex.config import Config, opt
from saex.devices import resolve_device, resolve_lm_dtype
from saex.dictionaries.folders import hook_of
from saex.dictionaries.formats import load
from saex.lm.loading import load_model

NAME = "steer"
HELP = "generate with features added, clamped or ablated; print it beside the unsteered generation"


@dataclass
class SteerConfig(Config):
    """What ``saex steer`` generates from and how it edits the features."""

    dict: str = opt(positional=True)
    """The dictionary: any format saex reads (a saex or SAELens folder, sparsify, dictionary_learning, Gemma
    Scope, OpenAI, hf://owner/repo/folder)."""
    prompt: str = opt(nonempty=True)
    """The text to continue."""
    edits: list[str] = opt(nonempty=True)
    """Feature edits, comma-separated: FEATURE:add:STRENGTH (code + strength), FEATURE:clamp:VALUE (code set at
    every position) or FEATURE:ablate (code 0); e.g. 123:add:8,456:ablate."""
    model: str = "smollm2-135m"
    """The model the dictionary reads (embedded name, local folder or hub id)."""
    hook: str | None = None
    """Hook point (default: the one the dictionary records)."""
    keep_error: bool = True
    """Keep the dictionary's error term (x + decode(c') - decode(c)); --no-keep-error runs the model on the
    edited reconstruction decode(c') instead."""
    start: int = opt(1, ge=0)
    """First position edited: 1 leaves position 0 alone (SmolLM2's attention sink, or a BOS token); 0 edits
    every position."""
    max_new_tokens: int = opt(30, gt=0, le=4096)
    """Tokens generated."""
    temperature: float = opt(0.0, ge=0.0, le=100.0)
    """0: greedy; above 0: sampling at this temperature, seeded (--seed)."""
    seed: int = opt(0, ge=0)
    """Seed of the sampling (the same stream for the steered and unsteered runs)."""
    top: int = opt(10, ge=0, le=1000)
    """Tokens shown whose next-token log-probability rose / fell most."""
    json: bool = False
    """Print JSON instead of the side-by-side text."""
    device: str = "auto"
    """Where the model and the dictionary run: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N, mps."""
    lm_dtype: str = "auto"
    """The model's precision: auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16, float16; the
    dictionary computes in float32."""


CONFIG = SteerConfig


def _columns(left: str, right: str, width: int) -> str:
    a, b = textwrap.wrap(left, width) or [""], textwrap.wrap(right, width) or [""]
    return "\n".join(f"{x:<{width}} | {y}" for x, y in itertools.zip_longest(a, b, fillvalue=""))


def run(cfg: SteerConfig, progress: bool = True) -> Path:
    edits = [Edit.parse(e) for e in cfg.edits]  # a mistyped edit, device or dtype fails before anything loads
    device = resolve_device(cfg.device)
    dtype = resolve_lm_dtype(cfg.lm_dtype, device)
    d = load(cfg.dict).to(device)
    hook = hook_of(d, cfg.dict, cfg.hook)
    path = Path(cfg.dict)
    lm = load_model(cfg.model)
    lm.model.to(device=device, dtype=dtype)
    r = steer(
        lm.model,
        lm.tokenizer,
        d,
        hook,
        cfg.prompt,
        edits,
        cfg.keep_error,
        cfg.max_new_tokens,
        cfg.temperature,
        cfg.seed,
        cfg.start,
    )
    decode = lambda i: lm.tokenizer.decode([i])  # noqa: E731
    changes = r.top_changes(cfg.top, decode) if cfg.top else {"up": [], "down": []}
    if cfg.json:
        print(
            json.dumps(
                {
                    "prompt": r.prompt,
                    "hook": hook,
                    "edits": [e.__dict__ for e in edits],
                    "keep_error": cfg.keep_error,
                    "unsteered": r.clean,
                    "steered": r.steered,
                    "next_token": changes,
                },
                ensure_ascii=False,
            )
        )
        return path
    width = max(30, (shutil.get_terminal_size((120, 20)).columns - 3) // 2)
    what = "; ".join(f"{e.feature} {e.mode}" + (f" {e.value:g}" if e.mode != "ablate" else "") for e in edits)
    print(
        f"prompt: {r.prompt!r}\nedits at {hook}: {what} ({'error term kept' if cfg.keep_error else 'on the reconstruction'})\n"
    )
    print(_columns("unsteered", "steered", width))
    print(_columns("-" * min(width, 9), "-" * 7, width))
    print(_columns(r.clean, r.steered, width))
    if cfg.top:
        print("\nnext-token log-probability after the prompt, largest changes (steered − unsteered):")
        for up, down in zip(changes["up"], changes["down"]):
            print(f"  {up['delta_logp']:+8.3f} {up['token']!r:<20} {down['delta_logp']:+8.3f} {down['token']!r}")
    return path
