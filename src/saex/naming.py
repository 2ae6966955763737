"""Names shared by every layer: hook points, and the file names of dictionaries.

Hook points are named as TransformerLens does (``blocks.{L}.{kind}``; ``saex hooks`` lists a model's); this
module parses and builds those names from the text alone, with no model (``saex.lm.hooks`` resolves them to
modules). A dictionary's name can hold a ``/`` (``parent/name`` when two folders share a name), which a
per-dictionary file or folder name replaces by ``__``.
"""

from __future__ import annotations

import re

from saex.errors import SaexError

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


# Hugging Face module paths (with an optional ``.input`` / ``.output``, as Gemma Scope 2 writes them) inside a
# decoder layer -> saex hook kind. Gemma normalises the attention and MLP outputs before adding them to the
# residual stream (saex's attn/mlp "out" are those normed tensors), so its norms name different things than
# Llama's: Llama's ``post_attention_layernorm`` is the MLP's input norm, Gemma's the attention output's.
_HF_KINDS = {
    "": "hook_resid_post",
    ".output": "hook_resid_post",
    ".input": "hook_resid_pre",
    ".mlp.input": "ln2.hook_normalized",
    ".mlp.down_proj.input": "mlp.hook_post",
    ".mlp.dense_4h_to_h.input": "mlp.hook_post",
    ".mlp.c_proj.input": "mlp.hook_post",
}
_HF_KINDS_LLAMA = {
    ".mlp": "hook_mlp_out",
    ".mlp.output": "hook_mlp_out",
    ".post_attention_layernorm.output": "ln2.hook_normalized",
    ".self_attn": "hook_attn_out",
    ".self_attn.output": "hook_attn_out",
    ".attention": "hook_attn_out",
    ".attn": "hook_attn_out",
}
_HF_KINDS_GEMMA = {
    ".post_feedforward_layernorm": "hook_mlp_out",
    ".post_attention_layernorm": "hook_attn_out",
    ".pre_feedforward_layernorm": "ln2.hook_normalized",
}
_HF_LAYER = re.compile(r"^(?:model\.|base_model\.|gpt_neox\.|transformer\.|language_model\.)*(?:layers|h)\.(\d+)(.*)$")


def foreign_hook(name: str, model: str | None = None) -> str:
    """saex's hook point for a hook point another library names: a TransformerLens name (``blocks.6.hook_mlp_out``),
    a Hugging Face module path (``model.layers.6``, ``model.layers.6.post_feedforward_layernorm.output``) or a
    sparsify hookpoint (``layers.6``, ``layers.6.mlp``; a module's output unless ``.input`` follows). ``model``
    (its name) tells Gemma's norms from Llama's. One clear error when saex has no such hook point."""
    if HOOK_RE.match(name):
        return name
    gemma = "gemma" in (model or "").lower()
    m = _HF_LAYER.match(name)
    if m:
        rest = m.group(2)
        table = {**_HF_KINDS, **(_HF_KINDS_GEMMA if gemma else _HF_KINDS_LLAMA)}
        if gemma:
            table |= {f"{k}.output": v for k, v in _HF_KINDS_GEMMA.items()}
        if rest in table:
            return f"blocks.{m.group(1)}.{table[rest]}"
    elif re.fullmatch(r"blocks\.\d+\..+", name) or name.startswith("hook_"):
        raise SaexError(
            f"hook point {name!r} (TransformerLens) has no saex equivalent; saex hooks blocks.{{L}}.{{kind}} with kind "
            f"in {list(HOOK_KINDS)}"
        )
    raise SaexError(
        f"cannot map hook point {name!r}{f' of {model}' if model else ''} onto saex's hook points (blocks.{{L}}.{{kind}}, "
        f"kind in {list(HOOK_KINDS)}); name the hook point with --hook"
    )
