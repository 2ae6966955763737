"""The inference form of every sparse autoencoder and transcoder, in SAELens's on-disk layout.

Whatever trained it (tied or untied L1, TopK, BatchTopK, JumpReLU, Gated, Matryoshka), a dictionary is
stored as one folder::

    cfg.json                   d_in, d_sae, architecture, ... and saex's own fields under "metadata"
    sae_weights.safetensors    W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc [d_sae], b_dec [d_out]

and computes ``c = act((x - b_dec·[apply_b_dec_to_input]) @ W_enc + b_enc)``, ``x̂ = c @ W_dec + b_dec``,
with ``act`` one of

=============  ==============================================================  ==========================
architecture   activation                                                      extra weights
=============  ==============================================================  ==========================
``standard``   ReLU                                                            —
``topk``       ReLU of the k largest pre-activations (Gao et al. 2024)         — (``k`` in cfg.json)
``jumprelu``   ReLU where the pre-activation exceeds θ_i (Rajamanoharan 2024)  ``threshold`` [d_sae]
``gated``      1[x' W_enc + b_gate > 0] · ReLU(x' (W_enc ⊙ e^r_mag) + b_mag)    ``b_gate``, ``r_mag``,
                                                                               ``b_mag`` (no ``b_enc``)
``linear``     the identity (saex's own: the signed PCA / ICA baselines)       —
=============  ==============================================================  ==========================

These are SAELens's architecture names and weight keys; BatchTopK and Matryoshka dictionaries are saved as
``jumprelu`` (their inference form), as SAELens saves them. A **transcoder** (Dunefsky et al. 2024) reads one
hook point and reconstructs another (``d_out`` and ``hook_name_out`` in cfg.json), never subtracts b_dec from
its input, and may add a linear skip ``x @ W_skip.T`` (``W_skip [d_out, d_in]``); it is saved as SAELens's
``transcoder``, ``skip_transcoder`` or ``jumprelu_transcoder`` where SAELens has the combination and as
``<activation>_transcoder`` / ``<activation>_skip_transcoder`` (saex's own names) where it has not.
SAELens's ``SAE.load_from_disk`` opens every SAELens-named folder; it has no identity-activation SAE, so it
cannot open ``linear`` ones. The paper's tied SAE is the special case ``W_enc = W_decᵀ``, ``b_dec = 0``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import load_file

from saex.errors import SaexError
from saex.files import write_json_atomic, write_safetensors_atomic

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated", "linear": "identity"}
"""Activation kinds (SAELens's names where SAELens has them) and what each computes."""
# SAELens's own names for transcoders: (activation, skip) -> architecture in cfg.json.
TRANSCODER_NAMES = {
    ("standard", False): "transcoder",
    ("standard", True): "skip_transcoder",
    ("jumprelu", False): "jumprelu_transcoder",
}


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
        b_gate_F: torch.Tensor | None = None,
        r_mag_F: torch.Tensor | None = None,
        W_skip_OD: torch.Tensor | None = None,
        transcoder: bool = False,
    ):
        """``W_dec_FD`` is ``[d_sae, d_out]`` and ``b_dec_D`` ``[d_out]`` (d_out = d_in unless a transcoder);
        ``b_enc_F`` is the magnitude path's bias ``b_mag`` of a gated SAE. ``W_skip_OD`` makes a transcoder."""
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise SaexError(f"unknown SAE architecture {architecture!r}; allowed: {sorted(ARCHITECTURES)}")
        if architecture == "topk" and not k:
            raise SaexError("a topk SAE needs k")
        D, F = W_enc_DF.shape
        D_out = W_dec_FD.shape[-1]
        if architecture == "topk" and not 0 < (k or 0) <= F:
            raise SaexError(f"a topk SAE needs 0 < k <= d_sae = {F}, got k = {k}")
        needs = {"jumprelu": {"threshold": threshold_F}, "gated": {"b_gate": b_gate_F, "r_mag": r_mag_F}}
        for key, t in needs.get(architecture, {}).items():
            if t is None or t.shape != (F,):
                got = None if t is None else tuple(t.shape)
                raise SaexError(f"a {architecture} SAE needs a {key} per feature, shape ({F},); got {got}")
        transcoder = transcoder or W_skip_OD is not None or D_out != D
        if (
            W_dec_FD.shape != (F, D_out)
            or b_enc_F.shape != (F,)
            or b_dec_D.shape != (D_out,)
            or (W_skip_OD is not None and W_skip_OD.shape != (D_out, D))
        ):
            raise SaexError(
                f"inconsistent SAE shapes: W_enc {tuple(W_enc_DF.shape)}, W_dec {tuple(W_dec_FD.shape)}, "
                f"b_enc {tuple(b_enc_F.shape)}, b_dec {tuple(b_dec_D.shape)}"
                + ("" if W_skip_OD is None else f", W_skip {tuple(W_skip_OD.shape)}")
            )
        if transcoder and apply_b_dec_to_input:
            raise SaexError("a transcoder cannot subtract its output bias b_dec from its input")

        def frozen(t: torch.Tensor | None) -> torch.nn.Parameter | None:
            return None if t is None else torch.nn.Parameter(t.float().contiguous(), requires_grad=False)

        self.W_enc_DF = cast(torch.nn.Parameter, frozen(W_enc_DF))
        self.W_dec_FD = cast(torch.nn.Parameter, frozen(W_dec_FD))
        self.b_enc_F = cast(torch.nn.Parameter, frozen(b_enc_F))
        self.b_dec_D = cast(torch.nn.Parameter, frozen(b_dec_D))
        self.threshold_F = frozen(threshold_F) if architecture == "jumprelu" else None
        self.b_gate_F = frozen(b_gate_F) if architecture == "gated" else None
        self.r_mag_F = frozen(r_mag_F) if architecture == "gated" else None
        self.W_skip_OD = frozen(W_skip_OD)
        self.architecture = architecture
        self.transcoder = transcoder
        self.k = k
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.metadata = dict(metadata or {})

    @property
    def d_in(self) -> int:
        return self.W_enc_DF.shape[0]

    @property
    def d_dict(self) -> int:
        return self.W_enc_DF.shape[1]

    @property
    def d_out(self) -> int:
        """Width of the reconstruction: d_in, or a transcoder's target width."""
        return self.W_dec_FD.shape[1]

    def _input(self, x_BD: torch.Tensor) -> torch.Tensor:
        if x_BD.shape[-1] != self.d_in:
            raise SaexError(f"input width {x_BD.shape[-1]} does not match the dictionary's d_in {self.d_in}")
        return x_BD - self.b_dec_D if self.apply_b_dec_to_input else x_BD

    def pre_acts(self, x_BD: torch.Tensor) -> torch.Tensor:
        """The pre-activations (a gated SAE's magnitude path)."""
        x_BD = self._input(x_BD)
        W = self.W_enc_DF if self.r_mag_F is None else self.W_enc_DF * self.r_mag_F.exp()
        return x_BD @ W + self.b_enc_F

    def _activate(self, x_BD: torch.Tensor, pre: torch.Tensor, cols: slice | int = slice(None)) -> torch.Tensor:
        """The codes from the pre-activations of features ``cols`` (all but TopK act per feature)."""
        if self.architecture == "standard":
            return pre.relu()
        if self.architecture == "topk":
            assert self.k is not None  # checked in __init__
            return topk_relu(pre, self.k)
        if self.architecture == "jumprelu":
            # JumpReLU (Rajamanoharan et al. 2024; SAELens ``jumprelu``): ReLU(pre) where pre > θ, else 0
            assert self.threshold_F is not None  # checked in __init__
            return pre.relu() * (pre > self.threshold_F[cols])
        if self.architecture == "gated":
            # Gated (Rajamanoharan et al. 2024a, eq. 6; SAELens ``gated``): the gate path decides which
            # features are on (the sign of x' W_enc + b_gate), the magnitude path how strongly.
            assert self.b_gate_F is not None  # checked in __init__
            gate = (self._input(x_BD) @ self.W_enc_DF[:, cols] + self.b_gate_F[cols]) > 0
            return pre.relu() * gate
        return pre

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self._activate(x_BD, self.pre_acts(x_BD))

    def code_of(self, x_ND: torch.Tensor, f: int, chunk: int = 4096) -> torch.Tensor:
        """Code of feature f at every row of ``x [..., d_in]`` without forming all codes where the activation
        allows it (every one but TopK, which needs all pre-activations: those are taken in chunks)."""
        shape = x_ND.shape[:-1]
        x = x_ND.reshape(-1, x_ND.shape[-1])
        if self.architecture == "topk":
            return torch.cat([self.encode(x[i : i + chunk])[:, f] for i in range(0, len(x), chunk)]).reshape(shape)
        W = self.W_enc_DF[:, f] if self.r_mag_F is None else self.W_enc_DF[:, f] * self.r_mag_F[f].exp()
        pre = self._input(x) @ W + self.b_enc_F[f]
        return self._activate(x, pre, f).reshape(shape)

    def decode(self, c_BF: torch.Tensor) -> torch.Tensor:
        """The reconstruction from the codes alone (without a transcoder's skip term: see ``forward``)."""
        return c_BF @ self.W_dec_FD + self.b_dec_D

    def skip(self, x_BD: torch.Tensor) -> torch.Tensor | float:
        """A skip transcoder's linear term x W_skipᵀ (0 without a skip connection)."""
        return 0.0 if self.W_skip_OD is None else x_BD @ self.W_skip_OD.T

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x_BD)) + self.skip(x_BD)

    # -- files -----------------------------------------------------------------------------------------
    def saved_architecture(self) -> str:
        """The ``architecture`` of cfg.json: the activation's name, or for a transcoder SAELens's
        transcoder name where it has one (``<activation>_[skip_]transcoder``, saex's own, otherwise)."""
        if not self.transcoder:
            return self.architecture
        skip = self.W_skip_OD is not None
        return TRANSCODER_NAMES.get((self.architecture, skip)) or (
            f"{self.architecture}_{'skip_' if skip else ''}transcoder"
        )

    def cfg(self) -> dict:
        cfg: dict = {
            "architecture": self.saved_architecture(),
            "d_in": self.d_in,
            "d_sae": self.d_dict,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
        }
        if self.transcoder:
            cfg["d_out"] = self.d_out
        if self.k:
            cfg["k"] = self.k
        for key, meta in (("model_name", "model_name"), ("hook_name", "hook_name"), ("hook_name_out", "target_hook")):
            if meta in self.metadata:
                cfg[key] = self.metadata[meta]
        cfg["metadata"] = self.metadata
        return cfg

    def save(self, folder: str | Path) -> Path:
        """Write the SAELens-layout folder; weights first, so a folder with cfg.json is always complete."""
        folder = Path(folder)
        tensors: dict[str, torch.Tensor | None] = {
            "W_enc": self.W_enc_DF,
            "W_dec": self.W_dec_FD,
            "b_enc": self.b_enc_F,
            "b_dec": self.b_dec_D,
        }
        if self.architecture == "gated":
            # SAELens's gated SAE has no b_enc: its magnitude path's bias is b_mag.
            tensors["b_mag"] = tensors.pop("b_enc")
        tensors |= {"threshold": self.threshold_F, "b_gate": self.b_gate_F, "r_mag": self.r_mag_F}
        tensors["W_skip"] = self.W_skip_OD
        write_safetensors_atomic(
            folder / WEIGHTS, {key: t.detach() for key, t in tensors.items() if t is not None}, {"format": "pt"}
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
        saved = cfg.get("architecture", "standard")
        architecture, transcoder = saved, False
        if saved.endswith("transcoder"):
            architecture = {"transcoder": "standard", "skip_transcoder": "standard"}.get(
                saved, saved.removesuffix("transcoder").removesuffix("_").removesuffix("_skip")
            )
            transcoder = True
        return cls(
            w["W_enc"],
            w["W_dec"],
            w["b_mag"] if "b_mag" in w else w["b_enc"],
            w["b_dec"],
            architecture=architecture,
            k=cfg.get("k"),
            apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", not transcoder),
            metadata=cfg.get("metadata", {}),
            threshold_F=w.get("threshold"),
            b_gate_F=w.get("b_gate"),
            r_mag_F=w.get("r_mag"),
            W_skip_OD=w.get("W_skip"),
            transcoder=transcoder,
        )
