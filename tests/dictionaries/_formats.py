"""Dictionary files of other libraries, written by hand from each format's documented key layout (no library
code): shared by the format tests and the stage tests that import dictionaries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


def weights(D: int, F: int, seed: int, D_out: int | None = None) -> dict[str, torch.Tensor]:
    """Random encoder / decoder tensors in saex's orientation (W_enc [D, F], W_dec [F, D_out]) and a
    threshold, at scales where codes are a mix of zeros and non-zeros."""
    g = torch.Generator().manual_seed(seed)
    D_out = D_out or D
    return {
        "W_enc": torch.randn(D, F, generator=g) / D**0.5,
        "W_dec": torch.randn(F, D_out, generator=g) / D_out**0.5,
        "b_enc": torch.randn(F, generator=g) * 0.1,
        "b_dec": torch.randn(D_out, generator=g) * 0.1,
        "threshold": torch.rand(F, generator=g) * 0.2,
        "W_skip": torch.randn(D_out, D, generator=g) * 0.05,
    }


def write_sparsify(root: Path, hookpoint: str, w: dict, k: int, transcode: bool = False, skip: bool = False) -> Path:
    folder = root / hookpoint
    folder.mkdir(parents=True)
    t = {
        "encoder.weight": w["W_enc"].T.contiguous(),
        "encoder.bias": w["b_enc"],
        "W_dec": w["W_dec"],
        "b_dec": w["b_dec"],
    }
    if skip:
        t["W_skip"] = w["W_skip"]
    save_file(t, str(folder / "sae.safetensors"))
    F, D = t["encoder.weight"].shape
    cfg = {
        "activation": "topk",
        "expansion_factor": F // D,
        "normalize_decoder": True,
        "num_latents": F,
        "k": k,
        "multi_topk": False,
        "skip_connection": skip,
        "transcode": transcode,
        "d_in": D,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def write_openai(path: Path, w: dict, k: int | None) -> Path:
    """OpenAI's ``Autoencoder.state_dict()``: TopK (layer-normalised inputs) when ``k``, else ReLU."""
    path.parent.mkdir(parents=True, exist_ok=True)
    F = w["W_enc"].shape[1]
    sd = {
        "pre_bias": w["b_dec"],
        "encoder.weight": w["W_enc"].T.contiguous(),
        "latent_bias": w["b_enc"],
        "decoder.weight": w["W_dec"].T.contiguous(),
        "stats_last_nonzero": torch.zeros(F, dtype=torch.long),
        "activation": "TopK" if k else "ReLU",
    }
    if k:
        sd["activation_state_dict"] = {"k": k, "postact_fn": "ReLU"}
    torch.save(sd, path)
    return path


def write_gemma_scope_1(folder: Path, w: dict) -> Path:
    folder.mkdir(parents=True)
    np.savez(
        folder / "params.npz", **{key: w[key].numpy() for key in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    )
    return folder


def write_gemma_scope_2(folder: Path, w: dict, cfg: dict, skip: bool = False) -> Path:
    folder.mkdir(parents=True)
    t = {key.lower(): w[key] for key in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    if skip:
        t["affine_skip_connection"] = w["W_skip"].T.contiguous()
    save_file(t, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "jump_relu", **cfg}))
    return folder


def write_dictionary_learning(folder: Path, cls: str, sd: dict, layer: int = 1, lm: str = "tiny") -> Path:
    folder.mkdir(parents=True)
    torch.save(sd, folder / "ae.pt")
    trainer = {"dict_class": cls, "layer": layer, "lm_name": lm, "submodule_name": f"resid_post_layer_{layer}"}
    (folder / "config.json").write_text(json.dumps({"trainer": trainer}))
    return folder


class Payload:
    """Pickled, it creates ``marker`` when unpickled: what a hostile .pt file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))
