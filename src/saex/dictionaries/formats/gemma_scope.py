"""Gemma Scope JumpReLU SAEs and transcoders (Lieberum et al. 2024; Gemma Scope 2, 2025).

Gemma Scope 1 (Gemma 2) stores each SAE as ``params.npz`` in a folder path that names it
(``gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71``); Gemma Scope 2 (Gemma 3) as ``params.safetensors``
with lower-case keys beside a ``config.json`` that names its Hugging Face hook points
(``hf_hook_point_in``/``_out``, e.g. ``model.layers.6.output``) and ``"architecture": "jump_relu"``::

    w_enc [d_in, F], w_dec [F, d_out], b_enc [F], b_dec [d_out], threshold [F],
    affine_skip_connection [d_in, d_out]   (a skip transcoder's linear term)

Both compute ``c = ReLU(pre)·1[pre > θ]`` with ``pre = x W_enc + b_enc`` (no ``b_dec`` subtracted) and
``x̂ = c W_dec + b_dec (+ x W_skip)``. The .npz is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from saex.dictionaries.sae import SAE, mapped_hooks, read_json_object, read_safetensors, tensor
from saex.errors import SaexError

NPZ = "params.npz"
SAFETENSORS = "params.safetensors"
CONFIG = "config.json"


def detect(path: Path) -> bool:
    if path.is_file():
        return path.name in (NPZ, SAFETENSORS)
    return (path / NPZ).is_file() or (path / SAFETENSORS).is_file()


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: torch.from_numpy(np.asarray(data[key], dtype=np.float32)) for key in data.files}
    except (OSError, ValueError, EOFError) as e:  # a pickled object array is a ValueError with allow_pickle=False
        raise SaexError(f"{path} is not a readable .npz of arrays ({e.__class__.__name__}: {e})") from e


def _hook_from_path(path: Path) -> tuple[str | None, str | None]:
    """(TransformerLens hook, model) that a Gemma Scope 1 folder path names (``gemma-scope-2b-pt-res/layer_20/…``)."""
    text = str(path.resolve())
    layer = re.search(r"layer_(\d+)", text)
    model = re.search(r"gemma-scope-(2b|9b|27b)(-(?:pt|it))?", text)
    name = f"gemma-2-{model.group(1)}{'-it' if model.group(2) == '-it' else ''}" if model else None
    if not layer:
        return None, name
    kind = re.search(r"-(res|mlp|att)(?:-|/|$)", text)
    hook = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}.get(kind.group(1) if kind else "res")
    return f"blocks.{layer.group(1)}.{hook}", name


def read(path: Path) -> SAE:
    folder = path.parent if path.is_file() else path
    if (folder / SAFETENSORS).is_file():
        source = str(folder / SAFETENSORS)
        w = {key.lower(): t for key, t in read_safetensors(folder / SAFETENSORS).items()}
        cfg = read_json_object(folder / CONFIG) if (folder / CONFIG).is_file() else {}
        if cfg.get("architecture", "jump_relu") != "jump_relu":
            raise SaexError(
                f"{folder / CONFIG}: architecture {cfg['architecture']!r} is not supported; Gemma Scope 2 reads 'jump_relu'"
            )
        model = cfg.get("model_name")
        hook_in, hook_out = cfg.get("hf_hook_point_in"), cfg.get("hf_hook_point_out")
        if hook_in is None:  # a config.json without hook points: the folder path names them, as for Gemma Scope 1
            hook_in, path_model = _hook_from_path(folder)
            model = model or path_model
    else:
        source = str(folder / NPZ)
        w = {key.lower(): t for key, t in _read_npz(folder / NPZ).items()}
        hook_in, model = _hook_from_path(folder)
        hook_out = None
    W_dec = tensor(w, "w_dec", source)
    if W_dec.ndim != 2:
        raise SaexError(f"{source}: w_dec has shape {tuple(W_dec.shape)}; cross-layer transcoders are not supported")
    skip = w.get("affine_skip_connection")
    transcoder = hook_out is not None or skip is not None or W_dec.shape[1] != tensor(w, "w_enc", source).shape[0]
    hooks = mapped_hooks(hook_in, hook_out if transcoder else None, model)
    return SAE(
        tensor(w, "w_enc", source),
        W_dec,
        tensor(w, "b_enc", source),
        tensor(w, "b_dec", source),
        architecture="jumprelu",
        threshold_F=tensor(w, "threshold", source),
        apply_b_dec_to_input=False,
        W_skip_OD=None if skip is None else skip.T,
        transcoder=transcoder,
        metadata={"source_format": "gemma_scope", "source": str(folder), "model_name": model, **hooks},
    )
