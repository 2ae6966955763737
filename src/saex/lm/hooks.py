"""TransformerLens-style hook-point names on raw Hugging Face models, and the truncated forward.

The paper harvests ``blocks.{L}.hook_resid_post`` (residual stream after block L) and
``blocks.{L}.mlp.hook_post`` (MLP hidden neurons) with TransformerLens (paper §2, App. C). saex keeps
those names but hooks the Hugging Face modules directly, with no TransformerLens weight processing, so the
activations are exactly what the HF model computes. Each family maps the five kinds of hook point onto
its modules (``ln2.hook_normalized``, TransformerLens's name for the MLP's normalised input, is what a
transcoder of the MLP reads; Dunefsky et al. 2024):

=====================  =======================================  ============================
hook point             module                                   captured
=====================  =======================================  ============================
``hook_resid_pre``     decoder layer L                          its input
``hook_attn_out``      attention (Gemma: post-attention norm)   its output (first element)
``ln2.hook_normalized`` MLP                                     its input: the normed stream
``mlp.hook_post``      MLP down-projection                      its input (width d_mlp)
``hook_mlp_out``       MLP (Gemma: post-feedforward norm)       its output
``hook_resid_post``    decoder layer L                          its output (first element)
=====================  =======================================  ============================

Gemma applies a norm to the attention and MLP outputs before adding them to the residual stream; the
normed tensor is what the residual stream receives, so it is the one that "attn out" and "MLP out" mean.
The forward stops right after the deepest requested hook point (an exception raised from its hook), so
later layers and the LM head are never computed. ``splice`` does the opposite: it replaces the activation at
one hook point (with a dictionary's reconstruction, zeros, a patched value) and lets the forward go on.
"""

from __future__ import annotations

from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, cast

import torch

from saex.errors import SaexError
from saex.naming import HOOK_KINDS, HOOK_RE

# Execution order inside one block; truncation and "deepest hook" use it.


def hook_order(name: str) -> tuple[int, int]:
    """(layer, position within the block) of a hook point, from its name alone (no model needed): earlier
    hook points sort first."""
    m = HOOK_RE.match(name)
    if not m:
        raise SaexError(
            f"unknown hook point {name!r}; valid names are blocks.{{L}}.{{kind}} with kind in {list(HOOK_KINDS)}"
        )
    return int(m.group(1)), HOOK_KINDS.index(m.group(2))


@dataclass(frozen=True)
class Family:
    """Where one model family keeps the modules behind each hook kind (paths relative to a block)."""

    name: str
    layers: str
    attn_out: str
    mlp_out: str
    mlp_down: str
    final_norm: str
    """The norm after the last block (the suffix forward of ``saex.causal.patching`` runs it itself)."""


FAMILIES = {
    "llama": Family("llama", "model.layers", "self_attn", "mlp", "mlp.down_proj", "model.norm"),
    "gemma": Family(
        "gemma", "model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "mlp.down_proj", "model.norm"
    ),
    "gpt_neox": Family(
        "gpt_neox", "gpt_neox.layers", "attention", "mlp", "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm"
    ),
    "gpt2": Family("gpt2", "transformer.h", "attn", "mlp", "mlp.c_proj", "transformer.ln_f"),
}
# HF model_type -> family. Llama-shaped decoders share module names.
MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3_text": "gemma",
    "gpt_neox": "gpt_neox",
    "gpt2": "gpt2",
}


@dataclass(frozen=True)
class HookPoint:
    """One resolved hook point."""

    name: str
    """TransformerLens-style name, e.g. ``blocks.6.hook_resid_post``."""
    layer: int
    kind: str
    module: str
    """Dotted path of the Hugging Face module that is hooked."""
    capture: str
    """``input`` or ``output`` of that module."""
    width: int
    """Width of the captured activation (d_model, or d_mlp for ``mlp.hook_post``)."""

    @property
    def order(self) -> tuple[int, int]:
        return hook_order(self.name)

    def describe(self) -> dict:
        return {"module": self.module, "capture": self.capture, "width": self.width, "layer": self.layer}


class _StopForward(Exception):
    """Raised from the deepest hook so the rest of the network is never computed."""


def family_of(model: torch.nn.Module) -> Family:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPES:
        raise SaexError(f"model type {model_type!r} has no hook-point mapping; supported: {sorted(MODEL_TYPES)}")
    return FAMILIES[MODEL_TYPES[model_type]]


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def expand_batch(value, n: int, times: int):
    """Repeat every tensor whose first dimension is the batch ``n``, ``times`` times along it (in nested
    tuples, lists and dicts): a block's captured arguments for ``times`` candidate inputs at once."""
    if torch.is_tensor(value):
        return value.repeat(times, *([1] * (value.dim() - 1))) if value.dim() and value.shape[0] == n else value
    if isinstance(value, (tuple, list)):
        return type(value)(expand_batch(v, n, times) for v in value)
    if isinstance(value, dict):
        return {k: expand_batch(v, n, times) for k, v in value.items()}
    return value


class HookedLM:
    """A Hugging Face causal LM addressed by TransformerLens-style hook names."""

    def __init__(self, model: torch.nn.Module):
        # Any: transformers' models expose config, generation and heads that torch's Module type lacks
        self.model: Any = model
        self.family = family_of(model)
        self.blocks = cast(torch.nn.ModuleList, model.get_submodule(self.family.layers))
        self.n_layers = len(self.blocks)
        cfg: Any = self.model.config
        self.d_model: int = cfg.hidden_size
        down: Any = self.blocks[0].get_submodule(self.family.mlp_down)
        # nn.Linear keeps in_features; GPT-2's Conv1D stores its weight as [in, out].
        self.d_mlp: int = getattr(down, "in_features", None) or down.weight.shape[0]
        self.max_context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (token ids go there)."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The precision of the model's weights (what activations written back into it are cast to)."""
        return next(self.model.parameters()).dtype

    def hook_names(self) -> list[str]:
        return [f"blocks.{L}.{k}" for L in range(self.n_layers) for k in HOOK_KINDS]

    def resolve(self, name: str) -> HookPoint:
        m = HOOK_RE.match(name)
        if not m or int(m.group(1)) >= self.n_layers:
            raise SaexError(
                f"unknown hook point {name!r}; valid names are blocks.{{L}}.{{kind}} with L in "
                f"0..{self.n_layers - 1} and kind in {list(HOOK_KINDS)}, e.g. blocks.{self.n_layers // 2}.hook_resid_post"
            )
        layer, kind = int(m.group(1)), m.group(2)
        block = f"{self.family.layers}.{layer}"
        module, capture, width = {
            "hook_resid_pre": (block, "input", self.d_model),
            "hook_attn_out": (f"{block}.{self.family.attn_out}", "output", self.d_model),
            # the MLP module is the parent of its down-projection in every family
            "ln2.hook_normalized": (f"{block}.{self.family.mlp_down.rsplit('.', 1)[0]}", "input", self.d_model),
            "mlp.hook_post": (f"{block}.{self.family.mlp_down}", "input", self.d_mlp),
            "hook_mlp_out": (f"{block}.{self.family.mlp_out}", "output", self.d_model),
            "hook_resid_post": (block, "output", self.d_model),
        }[kind]
        return HookPoint(name, layer, kind, module, capture, width)

    @contextmanager
    def capture(self, names: list[str], stop_early: bool = True):
        """Context manager yielding ``run(input_ids_BT) -> {name: act_BTD}`` for these hook points (the
        activations on the model's device; the ids may be anywhere).

        With ``stop_early`` the forward ends after the deepest of them; the LM head is never run.
        """
        points = [self.resolve(n) for n in names]
        if len(set(names)) != len(names):
            raise SaexError(f"hook points repeated in {names}")
        deepest = max(points, key=lambda p: p.order)
        store: dict[str, torch.Tensor] = {}
        handles = []

        def make(point: HookPoint):
            last = stop_early and point is deepest

            def keep(x):
                store[point.name] = _first(x).detach()
                if last:
                    raise _StopForward

            return self.hook(point.name, keep)

        try:
            for p in points:
                handles.append(make(p))

            def run(input_ids_BT: torch.Tensor) -> dict[str, torch.Tensor]:
                store.clear()
                with torch.inference_mode(), suppress(_StopForward):  # token ids go where the model is
                    self.model(input_ids=input_ids_BT.to(self.device), use_cache=False)
                return {n: store[n] for n in names}

            yield run
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def splice(self, name: str, fn):
        """Within the context, every forward replaces the activation at hook point ``name`` by ``fn(act_BTD)``.

        ``fn`` must return a tensor of the same shape (on any device, in any dtype: a dictionary's float32
        reconstruction); the rest of the network runs on it, moved back to the activation's device and dtype.
        """

        def checked(act):
            new = fn(act)
            if new.shape != act.shape:
                raise SaexError(f"a splice at {name} returned shape {tuple(new.shape)}, expected {tuple(act.shape)}")
            return new

        handle = self.hook(name, checked, replace=True)
        try:
            yield
        finally:
            handle.remove()

    def hook(self, name: str, fn, replace: bool = False):
        """Register ``fn(act)`` at hook point ``name`` and return the handle: ``fn`` sees the activation (it may
        raise to stop the forward), and with ``replace`` what it returns goes on in the activation's place, on the
        activation's device and in its dtype (a dictionary's float32 reconstruction, made on another device,
        goes back into a bfloat16 model)."""
        point = self.resolve(name)
        module = self.model.get_submodule(point.module)

        def call(act):
            new = fn(act)
            return new.to(device=act.device, dtype=act.dtype) if replace else new

        if point.capture == "input":

            def pre(mod, args, kwargs):
                if args:
                    new = call(args[0])
                    return ((new, *args[1:]), kwargs) if replace else None
                new = call(kwargs["hidden_states"])
                return (args, {**kwargs, "hidden_states": new}) if replace else None

            return module.register_forward_pre_hook(pre, with_kwargs=True)

        def post(mod, args, out):
            new = call(_first(out))
            if not replace:
                return None
            return (new, *out[1:]) if isinstance(out, tuple) else new

        return module.register_forward_hook(post)

    def logits_at(self, h_PD: torch.Tensor) -> torch.Tensor:
        """Logits from last-block outputs at chosen positions: the final norm, the LM head (the model's own
        accessor: module names move between transformers releases) and Gemma's soft-capping, only there. ``h_PD``
        may be anywhere, in any precision (it is moved to the model's device and dtype); the logits are float32
        on the model's device."""
        model = self.model
        h_PD = h_PD.to(self.device, self.dtype)
        logits = model.get_output_embeddings()(model.get_submodule(self.family.final_norm)(h_PD)).float()
        cap = getattr(model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits
