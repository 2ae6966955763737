"""EleutherAI's sparsify (``eai-sparsify``) sparse coders: read and write.

A sparsify run writes one folder per hookpoint, named by the module (``layers.6``, ``layers.6.mlp``, relative to
the model's base model), beside the run's ``config.json``::

    cfg.json          d_in, k, num_latents (or expansion_factor), activation, transcode, skip_connection, ...
    sae.safetensors   encoder.weight [F, D], encoder.bias [F], W_dec [F, D], b_dec [D], W_skip [D, D] (optional)

and computes ``c = TopK(ReLU((x − b_dec) Wᵀ + b))`` (a transcoder does not subtract ``b_dec``) and
``x̂ = c W_dec + b_dec + x W_skipᵀ`` (Gao et al. 2024's TopK SAE, as sparsify implements it). An SAE reads its
module's output; a transcoder reads the module's input and predicts its output, with ``d_out = d_in``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from saex.dictionaries.sae import SAE, mapped_hooks, read_json_object, read_safetensors, tensor
from saex.errors import SaexError
from saex.files import write_json_atomic, write_safetensors_atomic
from saex.naming import HOOK_RE

CFG = "cfg.json"
WEIGHTS = "sae.safetensors"


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG).is_file() and (path / WEIGHTS).is_file()


def read(path: Path) -> SAE:
    cfg = read_json_object(path / CFG)
    w = read_safetensors(path / WEIGHTS)
    source = str(path / WEIGHTS)
    if cfg.get("activation", "topk") != "topk":
        raise SaexError(f"{path}: sparsify activation {cfg.get('activation')!r} is not supported; saex reads 'topk'")
    if cfg.get("signed"):
        raise SaexError(f"{path}: signed sparsify coders (negative codes) are not supported")
    if "k" not in cfg:
        raise SaexError(f"{path / CFG} has no k")
    W_FD = tensor(w, "encoder.weight", source)
    transcode = bool(cfg.get("transcode"))
    run = path.parent / "config.json"
    model = read_json_object(run).get("model") if run.is_file() else None
    # A sparsify hookpoint names a module: an SAE reads its output, a transcoder its input and predicts its output.
    hooks = mapped_hooks(f"{path.name}.input" if transcode else path.name, path.name if transcode else None, model)
    return SAE(
        W_FD.T,
        tensor(w, "W_dec", source),
        tensor(w, "encoder.bias", source),
        tensor(w, "b_dec", source),
        architecture="topk",
        k=int(cfg["k"]),
        apply_b_dec_to_input=not transcode,
        W_skip_OD=w.get("W_skip"),
        transcoder=transcode,
        metadata={"source_format": "sparsify", "source": str(path), "model_name": model, **hooks},
    )


def hookpoint(sae: SAE) -> str:
    """The sparsify hookpoint (module name) of a saex dictionary's hook point(s)."""
    hook, target = sae.metadata.get("hook_name"), sae.metadata.get("target_hook")
    m = HOOK_RE.match(hook or "")
    t = HOOK_RE.match(target or "") if sae.transcoder else None
    if m and not sae.transcoder and m.group(2) == "hook_resid_post":
        return f"layers.{m.group(1)}"
    if m and not sae.transcoder and m.group(2) == "hook_mlp_out":
        return f"layers.{m.group(1)}.mlp"
    if m and t and m.group(2) == "ln2.hook_normalized" and t.group(2) == "hook_mlp_out" and m.group(1) == t.group(1):
        return f"layers.{m.group(1)}.mlp"
    raise SaexError(
        f"sparsify names a hook point by the module whose output it reads (a transcoder: whose input and output); "
        f"saex can name blocks.L.hook_resid_post (layers.L), blocks.L.hook_mlp_out (layers.L.mlp) and the MLP "
        f"transcoder ln2.hook_normalized -> hook_mlp_out (layers.L.mlp), not {hook!r}"
        + (f" -> {target!r}" if sae.transcoder else "")
    )


def check_writable(sae: SAE) -> None:
    """One clear error for a dictionary sparsify has no form for: anything but TopK on raw inputs, or a
    transcoder whose output is not as wide as its input."""
    if sae.architecture != "topk" or sae.normalize != "none":
        raise SaexError(
            f"sparsify coders are TopK on raw inputs; this dictionary is {sae.architecture!r}"
            + (f" with {sae.normalize} inputs" if sae.normalize != "none" else "")
            + " (convert it --to saelens)"
        )
    if sae.transcoder and sae.d_out != sae.d_in:
        raise SaexError(
            f"sparsify transcoders predict an output as wide as their input; this one maps {sae.d_in} -> {sae.d_out}"
        )


def write(sae: SAE, out: Path) -> Path:
    """Write ``sae`` as the sparsify folder ``out/<hookpoint>``; sparsify's own ``SparseCoder.load_from_disk`` opens
    it and encodes and decodes as saex does. Only TopK coders without input normalisation have a sparsify form."""
    check_writable(sae)
    folder = out / hookpoint(sae)
    W_enc_DF, b_enc_F = sae.W_enc_DF.detach(), sae.b_enc_F.detach()
    if not sae.transcoder and not sae.apply_b_dec_to_input:
        # sparsify always encodes x − b_dec; x W_enc + b_enc = (x − b_dec) W_enc + (b_enc + b_dec W_enc).
        b_enc_F = b_enc_F + sae.b_dec_D.detach() @ W_enc_DF
    tensors = {
        "encoder.weight": W_enc_DF.T.contiguous(),
        "encoder.bias": b_enc_F.contiguous(),
        "W_dec": sae.W_dec_FD.detach().contiguous(),
        "b_dec": sae.b_dec_D.detach().contiguous(),
    }
    if sae.W_skip_OD is not None:
        tensors["W_skip"] = sae.W_skip_OD.detach().contiguous()
    norms = sae.W_dec_FD.detach().norm(dim=-1)
    write_safetensors_atomic(folder / WEIGHTS, tensors, {"format": "pt"})
    write_json_atomic(
        folder / CFG,
        {
            "activation": "topk",
            "expansion_factor": max(1, sae.d_dict // sae.d_in),
            "normalize_decoder": bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-4)),
            "num_latents": sae.d_dict,
            "k": sae.k,
            "multi_topk": False,
            "skip_connection": sae.W_skip_OD is not None,
            "transcode": sae.transcoder,
            "d_in": sae.d_in,
        },
    )
    if sae.metadata.get("model_name") and not (out / "config.json").exists():
        # the run's config, where sparsify (and SAELens's sparsify reader) find the model's name
        write_json_atomic(out / "config.json", {"model": sae.metadata["model_name"]})
    return folder
