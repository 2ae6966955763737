"""OpenAI's ``sparse_autoencoder`` state dicts (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

One ``torch.save``d state dict per SAE (``…/resid_post_mlp_v5_32k/autoencoders/6.pt``), read with
``weights_only=True``::

    pre_bias [D], encoder.weight [F, D], latent_bias [F], decoder.weight [D, F],
    activation ("TopK" or "ReLU"), activation_state_dict {"k": k, "postact_fn": "ReLU"}, stats_* buffers

computing ``c = act((x' − pre_bias) Wᵀ + latent_bias)``, ``x̂ = (c W_decᵀ + pre_bias)·σ + μ``, where TopK SAEs
layer-normalise their input first (``x' = (x − μ) / (σ + 1e-5)``, σ the unbiased standard deviation: their
``normalize`` flag is set exactly when the activation is TopK). The location in the path names the hook point:
``resid_post_mlp`` (residual stream after block L), ``resid_delta_mlp``/``resid_delta_attn`` (MLP and attention
outputs), ``mlp_post_act`` (MLP neurons); the file name is the layer.
"""

from __future__ import annotations

import re
from pathlib import Path

from saex.dictionaries.formats.torch_state import load_state_dict
from saex.dictionaries.sae import SAE, mapped_hooks, tensor
from saex.errors import SaexError

LOCATIONS = {
    "resid_post_mlp": "hook_resid_post",
    "resid_delta_mlp": "hook_mlp_out",
    "resid_delta_attn": "hook_attn_out",
    "mlp_post_act": "mlp.hook_post",
    "resid_post_attn": "hook_resid_mid",
}


def detect(path: Path) -> bool:
    """A ``.pt`` file holding OpenAI's keys (other ``.pt`` files are left to dictionary_learning)."""
    if not (path.is_file() and path.suffix == ".pt" and path.name != "ae.pt"):
        return False
    return {"pre_bias", "latent_bias", "encoder.weight"} <= set(load_state_dict(path, keys_only=True))


def _hook(path: Path) -> tuple[str | None, str | None]:
    text = str(path.resolve())
    loc = re.search("|".join(LOCATIONS), text)
    model = "gpt2" if "gpt2" in text else None
    if not loc or not path.stem.isdigit():
        return None, model
    return f"blocks.{path.stem}.{LOCATIONS[loc.group(0)]}", model


def read(path: Path) -> SAE:
    w = load_state_dict(path)
    source = str(path)
    activation = w.get("activation", "ReLU")
    if activation not in ("TopK", "ReLU"):
        raise SaexError(f"{path}: activation {activation!r} is not supported; saex reads 'TopK' and 'ReLU'")
    k = None
    if activation == "TopK":
        state = w.get("activation_state_dict") or {}
        if "k" not in state or state.get("postact_fn", "ReLU") != "ReLU":
            raise SaexError(
                f"{path}: a TopK activation needs activation_state_dict k and a ReLU postact_fn; got {state}"
            )
        k = int(state["k"])
    hook, model = _hook(path)
    return SAE(
        tensor(w, "encoder.weight", source).T,
        tensor(w, "decoder.weight", source).T,
        tensor(w, "latent_bias", source),
        tensor(w, "pre_bias", source),
        architecture="topk" if k else "standard",
        k=k,
        apply_b_dec_to_input=True,
        normalize="layer_norm" if activation == "TopK" else "none",
        metadata={"source_format": "openai", "source": source, "model_name": model, **mapped_hooks(hook, None, model)},
    )
