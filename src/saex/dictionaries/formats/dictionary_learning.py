"""dictionary_learning (Marks, Karvonen, Mueller et al.) dictionaries: ``ae.pt`` beside ``config.json``.

``ae.pt`` is a ``torch.save``d state dict (read with ``weights_only=True``: never unpickled code); ``config.json``
names the class under ``trainer.dict_class``, the layer, the model and the submodule. The saved weights are in
the model's units (training's activation normalisation is folded back into the biases before saving). Each
class and the SAELens-layout SAE it is:

=========================  ====================================================  ==========================
class                      encode                                                 saex
=========================  ====================================================  ==========================
``AutoEncoder``            ReLU(encoder(x − bias)); decoder(f) + bias             standard, b_dec = ``bias``
``AutoEncoderNew``         ReLU(encoder(x)); decoder(f) (with its bias)           standard, no b_dec input
``GatedAutoEncoder``       1[enc(x−b)+gate_bias>0]·ReLU(e^r_mag enc(x−b)+mag_bias) gated
``JumpReluAutoEncoder``    ReLU(pre·1[pre > θ]), pre = x W_enc + b_enc            jumprelu, no b_dec input
``AutoEncoderTopK``        TopK(ReLU(encoder(x − b_dec)))                          topk
``BatchTopKSAE``           ReLU(encoder(x − b_dec)) kept above the threshold      jumprelu, θ = threshold
``MatryoshkaBatchTopKSAE`` the same with W_enc/W_dec                               jumprelu, θ = threshold
=========================  ====================================================  ==========================

BatchTopK's inference threshold is one number (a running minimum of the kept activations): it becomes
every feature's JumpReLU θ, which gives the same codes (ReLU(p)·1[ReLU(p) > θ] = ReLU(p)·1[p > θ] for θ ≥ 0).
"""

from __future__ import annotations

from pathlib import Path

from saex.dictionaries.formats.torch_state import load_state_dict
from saex.dictionaries.sae import SAE, mapped_hooks, read_json_object, tensor
from saex.errors import SaexError

WEIGHTS = "ae.pt"
CONFIG = "config.json"
CLASSES = (
    "AutoEncoder",
    "AutoEncoderNew",
    "GatedAutoEncoder",
    "JumpReluAutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
)


def detect(path: Path) -> bool:
    return (path.is_dir() and (path / WEIGHTS).is_file()) or (path.is_file() and path.name == WEIGHTS)


def guess_class(w: dict) -> str:
    """The dictionary class a state dict without its config.json comes from, by its keys."""
    if "gate_bias" in w:
        return "GatedAutoEncoder"
    if "group_sizes" in w:
        return "MatryoshkaBatchTopKSAE"
    if "W_enc" in w:
        return "JumpReluAutoEncoder"
    if "k" in w:
        return "AutoEncoderTopK"  # BatchTopKSAE has the same keys; its config.json tells them apart
    return "AutoEncoderNew" if "decoder.bias" in w else "AutoEncoder"


def _hook(trainer: dict) -> str | None:
    """The TransformerLens name of the trainer's submodule (dictionary_learning's scripts name them
    ``resid_post_layer_L``, ``mlp_out_layer_L``, ``attn_out_layer_L``); the residual stream when unnamed."""
    layer, sub = trainer.get("layer"), str(trainer.get("submodule_name") or "")
    if layer is None:
        return None
    for key, kind in (("mlp", "hook_mlp_out"), ("attn", "hook_attn_out"), ("resid_pre", "hook_resid_pre")):
        if key in sub:
            return f"blocks.{layer}.{kind}"
    if "embed" in sub:
        return sub
    return f"blocks.{layer}.hook_resid_post"


def read(path: Path) -> SAE:
    weights = path / WEIGHTS if path.is_dir() else path
    config = weights.parent / CONFIG
    trainer = read_json_object(config).get("trainer", {}) if config.is_file() else {}
    w = load_state_dict(weights)
    source = str(weights)
    cls = trainer.get("dict_class") or guess_class(w)
    if cls not in CLASSES:
        raise SaexError(f"{config}: dictionary class {cls!r} is not supported; saex reads {list(CLASSES)}")
    if cls in ("AutoEncoder", "AutoEncoderNew", "GatedAutoEncoder", "AutoEncoderTopK", "BatchTopKSAE"):
        W_enc = tensor(w, "encoder.weight", source).T
        W_dec = tensor(w, "decoder.weight", source).T
    else:
        W_enc, W_dec = tensor(w, "W_enc", source), tensor(w, "W_dec", source)
    F = W_enc.shape[1]
    kw: dict = {}
    if cls == "AutoEncoder":
        b_enc, b_dec, arch, apply = tensor(w, "encoder.bias", source), tensor(w, "bias", source), "standard", True
    elif cls == "AutoEncoderNew":
        b_enc, b_dec, arch, apply = (
            tensor(w, "encoder.bias", source),
            tensor(w, "decoder.bias", source),
            "standard",
            False,
        )
    elif cls == "GatedAutoEncoder":
        b_enc, b_dec, arch, apply = tensor(w, "mag_bias", source), tensor(w, "decoder_bias", source), "gated", True
        kw = {"b_gate_F": tensor(w, "gate_bias", source), "r_mag_F": tensor(w, "r_mag", source)}
    elif cls == "JumpReluAutoEncoder":
        b_enc, b_dec, arch, apply = tensor(w, "b_enc", source), tensor(w, "b_dec", source), "jumprelu", False
        kw = {"threshold_F": tensor(w, "threshold", source)}
    elif cls == "AutoEncoderTopK":
        b_enc, b_dec, arch, apply = tensor(w, "encoder.bias", source), tensor(w, "b_dec", source), "topk", True
        kw = {"k": int(tensor(w, "k", source))}
    else:  # BatchTopKSAE, MatryoshkaBatchTopKSAE: the inference threshold
        key = "encoder.bias" if cls == "BatchTopKSAE" else "b_enc"
        b_enc, b_dec, arch, apply = tensor(w, key, source), tensor(w, "b_dec", source), "jumprelu", True
        theta = tensor(w, "threshold", source).float()
        if float(theta.min()) < 0:
            raise SaexError(
                f"{source}: BatchTopK threshold {float(theta.min())} < 0: the dictionary was saved before training set it"
            )
        kw = {"threshold_F": theta.expand(F).clone() if theta.ndim == 0 else theta}
    hooks = mapped_hooks(_hook(trainer), None, trainer.get("lm_name"))
    meta = {
        "source_format": "dictionary_learning",
        "source": str(path),
        "dict_class": cls,
        "model_name": trainer.get("lm_name"),
        **hooks,
    }
    return SAE(
        W_enc,
        W_dec,
        b_enc,
        b_dec,
        architecture=arch,
        apply_b_dec_to_input=apply,
        metadata=meta,
        **kw,
    )
