"""Names shared by every layer: hook points, and the file names of dictionaries.

Hook points are named as TransformerLens does (``blocks.{L}.{kind}``; ``saex hooks`` lists a model's); this
module parses and builds those names from the text alone, with no model (``saex.lm.hooks`` resolves them to
modules). A dictionary's name can hold a ``/`` (``parent/name`` when two folders share a name), which a
per-dictionary file or folder name replaces by ``__``.
"""

from __future__ import annotations

import re

HOOK_KINDS = (
    "hook_resid_pre",
    "hook_attn_out",
    "ln2.hook_normalized",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)
"""Hook kinds within a block, in the order the forward pass reaches them."""
HOOK_RE = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(k) for k in HOOK_KINDS) + r")$")


def resid_hook(layer: int) -> str:
    """The residual stream after block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def mlp_hook(layer: int) -> str:
    """The MLP's hidden neurons after the nonlinearity (the paper's MLP dictionaries, App. C.3)."""
    return f"blocks.{layer}.mlp.hook_post"


def hook_layer(hook: str | None) -> int | None:
    """The block index of a ``blocks.{L}.…`` name; None for any other name."""
    m = re.match(r"blocks\.(\d+)\.", hook or "")
    return int(m.group(1)) if m else None


def hook_suffix(hook: str | None) -> str | None:
    """What follows ``blocks.{L}.`` (e.g. ``mlp.hook_post``); None for any other name."""
    m = re.fullmatch(r"blocks\.\d+\.(.+)", hook or "")
    return m.group(1) if m else None


def hook_family(hook: str) -> str:
    """``resid``, ``mlp`` (anything inside the MLP) or ``other``: which of the paper's dictionaries it gets."""
    if ".mlp." in hook:
        return "mlp"
    return "resid" if "hook_resid" in hook else "other"


def file_name(name: str) -> str:
    """A dictionary name as one file or folder name (``parent/name`` → ``parent__name``)."""
    return name.replace("/", "__")
