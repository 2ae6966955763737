"""The inference form of every sparse autoencoder, in SAELens's on-disk layout.

Whatever trained it (tied or untied L1, TopK), a dictionary is stored as one folder::

    cfg.json                   d_in, d_sae, architecture, ... and saex's own fields under "metadata"
    sae_weights.safetensors    W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in]

and computes ``c = act((x - b_dec·[apply_b_dec_to_input]) @ W_enc + b_enc)``, ``x̂ = c @ W_dec + b_dec``,
with ``act`` ReLU (SAELens ``standard``), ReLU of the K largest pre-activations (SAELens ``topk``), ReLU where
the pre-activation exceeds a per-feature threshold θ (SAELens ``jumprelu``, weights key ``threshold``), or the
identity (``linear``, saex's own: the signed PCA and ICA baselines of paper §3.2, whose codes keep their
sign). SAELens's ``SAE.load_from_disk`` opens ``standard`` and ``topk`` folders (see
docs/training.md, "Output"); it has no identity-activation SAE, so it cannot open ``linear``
ones. The paper's tied SAE is the special case ``W_enc = W_decᵀ``, ``b_dec = 0``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from saex.errors import SaexError
from saex.files import write_json_atomic, write_safetensors_atomic

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "linear": "identity"}


def topk_relu(pre_BF: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU of the k largest entries of each row, zero elsewhere (Gao et al. 2024, §2.3)."""
    vals, idx = pre_BF.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre_BF).scatter_(-1, idx, vals.relu())


class SAE(torch.nn.Module):
    """A trained sparse autoencoder: implements the Dictionary protocol."""

    def __init__(
        self,
        W_enc_DF: torch.Tensor,
        W_dec_FD: torch.Tensor,
        b_enc_F: torch.Tensor,
        b_dec_D: torch.Tensor,
        architecture: str = "standard",
        k: int | None = None,
        apply_b_dec_to_input: bool = False,
        metadata: dict | None = None,
        threshold_F: torch.Tensor | None = None,
    ):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise SaexError(f"unknown SAE architecture {architecture!r}; allowed: {sorted(ARCHITECTURES)}")
        if architecture == "topk" and not k:
            raise SaexError("a topk SAE needs k")
        D, F = W_enc_DF.shape
        if architecture == "topk" and not 0 < (k or 0) <= F:
            raise SaexError(f"a topk SAE needs 0 < k <= d_sae = {F}, got k = {k}")
        if architecture == "jumprelu" and (threshold_F is None or threshold_F.shape != (F,)):
            got = None if threshold_F is None else tuple(threshold_F.shape)
            raise SaexError(f"a jumprelu SAE needs a threshold per feature, shape ({F},); got {got}")
        if W_dec_FD.shape != (F, D) or b_enc_F.shape != (F,) or b_dec_D.shape != (D,):
            raise SaexError(
                f"inconsistent SAE shapes: W_enc {tuple(W_enc_DF.shape)}, W_dec {tuple(W_dec_FD.shape)}, "
                f"b_enc {tuple(b_enc_F.shape)}, b_dec {tuple(b_dec_D.shape)}"
            )
        self.W_enc_DF = torch.nn.Parameter(W_enc_DF.float().contiguous(), requires_grad=False)
        self.W_dec_FD = torch.nn.Parameter(W_dec_FD.float().contiguous(), requires_grad=False)
        self.b_enc_F = torch.nn.Parameter(b_enc_F.float().contiguous(), requires_grad=False)
        self.b_dec_D = torch.nn.Parameter(b_dec_D.float().contiguous(), requires_grad=False)
        self.threshold_F = (
            torch.nn.Parameter(threshold_F.float().contiguous(), requires_grad=False)
            if architecture == "jumprelu" and threshold_F is not None
            else None
        )
        self.architecture = architecture
        self.k = k
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.metadata = dict(metadata or {})

    @property
    def d_in(self) -> int:
        return self.W_enc_DF.shape[0]

    @property
    def d_dict(self) -> int:
        return self.W_enc_DF.shape[1]

    def pre_acts(self, x_BD: torch.Tensor) -> torch.Tensor:
        if self.apply_b_dec_to_input:
            x_BD = x_BD - self.b_dec_D
        return x_BD @ self.W_enc_DF + self.b_enc_F

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        if x_BD.shape[-1] != self.d_in:
            raise SaexError(f"input width {x_BD.shape[-1]} does not match the dictionary's d_in {self.d_in}")
        pre = self.pre_acts(x_BD)
        if self.architecture == "standard":
            return pre.relu()
        if self.architecture == "topk":
            assert self.k is not None  # checked in __init__
            return topk_relu(pre, self.k)
        if self.architecture == "jumprelu":
            # JumpReLU (Rajamanoharan et al. 2024; SAELens ``jumprelu``): ReLU(pre) where pre > θ, else 0
            assert self.threshold_F is not None  # checked in __init__
            return pre.relu() * (pre > self.threshold_F)
        return pre

    def decode(self, c_BF: torch.Tensor) -> torch.Tensor:
        return c_BF @ self.W_dec_FD + self.b_dec_D

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x_BD))

    # -- files -----------------------------------------------------------------------------------------
    def cfg(self) -> dict:
        cfg = {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_dict,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
        }
        if self.k:
            cfg["k"] = self.k
        for key in ("model_name", "hook_name"):
            if key in self.metadata:
                cfg[key] = self.metadata[key]
        cfg["metadata"] = self.metadata
        return cfg

    def save(self, folder: str | Path) -> Path:
        """Write the SAELens-layout folder; weights first, so a folder with cfg.json is always complete."""
        folder = Path(folder)
        write_safetensors_atomic(
            folder / WEIGHTS,
            {
                "W_enc": self.W_enc_DF.detach(),
                "W_dec": self.W_dec_FD.detach(),
                "b_enc": self.b_enc_F.detach(),
                "b_dec": self.b_dec_D.detach(),
                **({"threshold": self.threshold_F.detach()} if self.threshold_F is not None else {}),
            },
            {"format": "pt"},
        )
        write_json_atomic(folder / CFG, self.cfg())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SAE:
        folder = Path(folder)
        if not (folder / CFG).is_file() or not (folder / WEIGHTS).is_file():
            raise SaexError(f"{folder} is not a dictionary folder (needs {CFG} and {WEIGHTS})")
        cfg = json.loads((folder / CFG).read_text())
        w = load_file(str(folder / WEIGHTS))
        return cls(
            w["W_enc"],
            w["W_dec"],
            w["b_enc"],
            w["b_dec"],
            architecture=cfg.get("architecture", "standard"),
            k=cfg.get("k"),
            apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", True),
            metadata=cfg.get("metadata", {}),
            threshold_F=w.get("threshold"),
        )
