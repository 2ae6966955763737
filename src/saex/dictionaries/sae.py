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

Dictionaries imported from other libraries may normalise each input first (``normalize_activations``:
``layer_norm`` as OpenAI's TopK SAEs do, or ``constant_norm_rescale``) and map the reconstruction back with the
same input's statistics, which is why ``decode`` then needs the input. ``from_saelens`` reads any SAELens
folder; ``saex.dictionaries.formats`` reads the other libraries' files.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import load_file

from saex.errors import SaexError
from saex.files import sha256_path, write_json_atomic, write_safetensors_atomic
from saex.naming import foreign_hook


def mapped_hooks(hook: str | None, target: str | None, model: str | None) -> dict:
    """Metadata naming an imported dictionary's hook points as saex does: ``hook_name`` (and a transcoder's
    ``target_hook``) where another library's name maps onto a saex hook point; otherwise the name it had
    (``source_hook_name``, ``source_target_hook``) and why it does not map (``hook_error``), which a stage that
    needs the hook reports."""
    out: dict = {}
    for key, name in (("hook_name", hook), ("target_hook", target)):
        if not name:
            continue
        out[f"source_{key}"] = name
        try:
            out[key] = foreign_hook(name, model)
        except SaexError as e:
            out["hook_error"] = str(e)
            out[key] = None
    return out


CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated", "linear": "identity"}
"""Activation kinds (SAELens's names where SAELens has them) and what each computes."""
NORMALIZATIONS = ("none", "layer_norm", "constant_norm_rescale")
"""Per-token input normalisations (SAELens's ``normalize_activations``): ``layer_norm`` centres each input and
divides it by its standard deviation (OpenAI's TopK SAEs, Gao et al. 2024), ``constant_norm_rescale`` scales it to
norm √d_in; the reconstruction is mapped back with the same input's statistics."""
LN_EPS = 1e-5
"""The ε of ``layer_norm`` (OpenAI's and SAELens's): x ← (x − μ) / (σ + ε)."""
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
        normalize: str = "none",
    ):
        """``W_dec_FD`` is ``[d_sae, d_out]`` and ``b_dec_D`` ``[d_out]`` (d_out = d_in unless a transcoder);
        ``b_enc_F`` is the magnitude path's bias ``b_mag`` of a gated SAE. ``W_skip_OD`` makes a transcoder.
        ``normalize`` is one of ``NORMALIZATIONS``."""
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise SaexError(f"unknown SAE architecture {architecture!r}; allowed: {sorted(ARCHITECTURES)}")
        if normalize not in NORMALIZATIONS:
            raise SaexError(f"unknown input normalisation {normalize!r}; allowed: {list(NORMALIZATIONS)}")
        if architecture == "topk" and not k:
            raise SaexError("a topk SAE needs k")
        tensors = {"W_enc": W_enc_DF, "W_dec": W_dec_FD, "b_enc": b_enc_F, "b_dec": b_dec_D, "threshold": threshold_F}
        tensors |= {"b_gate": b_gate_F, "r_mag": r_mag_F, "W_skip": W_skip_OD}
        for key, t in tensors.items():
            if t is None:
                continue
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                kind = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise SaexError(f"{key} has dtype {kind}: a dictionary's weights are floating-point tensors")
            if t.device.type != "meta" and not bool(torch.isfinite(t).all()):
                raise SaexError(f"{key} holds NaN or Inf values: the dictionary diverged or the file is damaged")
        if W_enc_DF.dim() != 2 or W_dec_FD.dim() != 2:
            raise SaexError(
                f"W_enc and W_dec must be matrices; got shapes {tuple(W_enc_DF.shape)} and {tuple(W_dec_FD.shape)}"
            )
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
        self.normalize = normalize
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

    def norm_stats(self, x_BD: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """(shift μ, scale σ) of each input row under the dictionary's normalisation: it encodes (x − μ) / σ
        (``layer_norm``: σ + ε) and its reconstruction is x̂·σ + μ; (0, 1) without one."""
        if self.normalize == "layer_norm":
            mu = x_BD.mean(-1, keepdim=True)
            return mu, (x_BD - mu).std(-1, keepdim=True)
        if self.normalize == "constant_norm_rescale":
            return 0.0, x_BD.norm(dim=-1, keepdim=True) / math.sqrt(self.d_in)
        return 0.0, 1.0

    def _input(self, x_BD: torch.Tensor) -> torch.Tensor:
        if x_BD.shape[-1] != self.d_in:
            raise SaexError(f"input width {x_BD.shape[-1]} does not match the dictionary's d_in {self.d_in}")
        if self.normalize != "none":
            mu, sigma = self.norm_stats(x_BD)
            x_BD = (x_BD - mu) / (sigma + LN_EPS if self.normalize == "layer_norm" else sigma)
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

    def decode(self, c_BF: torch.Tensor, x_BD: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction from the codes (without a transcoder's skip term: see ``forward``). A dictionary
        that normalises each input maps it back with that input's statistics, so it needs ``x_BD``."""
        out = c_BF @ self.W_dec_FD + self.b_dec_D
        if self.normalize == "none":
            return out
        if x_BD is None:
            raise SaexError(f"this dictionary normalises its inputs ({self.normalize}): decode needs the input too")
        mu, sigma = self.norm_stats(x_BD)
        return out * sigma + mu

    def skip(self, x_BD: torch.Tensor) -> torch.Tensor | float:
        """A skip transcoder's linear term x W_skipᵀ (0 without a skip connection)."""
        return 0.0 if self.W_skip_OD is None else x_BD @ self.W_skip_OD.T

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x_BD), x_BD) + self.skip(x_BD)

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
            "normalize_activations": self.normalize,
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
        digest = write_safetensors_atomic(
            folder / WEIGHTS, {key: t.detach().cpu() for key, t in tensors.items() if t is not None}, {"format": "pt"}
        )
        cfg = self.cfg()
        # safetensors has no checksum of its own: the weights' SHA-256, verified whenever the folder is opened
        cfg["metadata"] = {**cfg["metadata"], "weights_sha256": digest}
        write_json_atomic(folder / CFG, cfg)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SAE:
        """Open a folder in SAELens's layout: saex's own, or one SAELens (any version) wrote."""
        folder = Path(folder)
        if not (folder / CFG).is_file() or not (folder / WEIGHTS).is_file():
            raise SaexError(f"{folder} is not a dictionary folder (needs {CFG} and {WEIGHTS})")
        cfg = read_json_object(folder / CFG)
        meta = cfg.get("metadata")
        recorded = meta.get("weights_sha256") if isinstance(meta, dict) else None
        verify_weights(folder / WEIGHTS, recorded if isinstance(recorded, str) else None)
        d = from_saelens(cfg, read_safetensors(folder / WEIGHTS), str(folder))
        d.metadata.pop("weights_sha256", None)  # the file's, not the dictionary's: a save records its own
        if not isinstance(recorded, str):  # after the checks: a folder that fails them gets its error alone
            note_unverified(folder / WEIGHTS)
        return d


#: weights files checked against their recorded SHA-256 in this process, by (path, size, mtime, sha256): a file
#: that changes afterwards is checked again; and those that record none, noted once
_VERIFIED: set[tuple] = set()
_NOTED: set[str] = set()


def note_unverified(path: Path) -> None:
    """One line on stderr, once per file and process: a dictionary loaded without a checksum to verify."""
    if str(path) not in _NOTED:
        _NOTED.add(str(path))
        print(f"note: {path} records no weights checksum (another library's folder): not verified", file=sys.stderr)


def verify_weights(path: Path, recorded: str | None) -> None:
    """Check a weights file against the SHA-256 its cfg.json records (saex writes it with every dictionary): a
    bit flip or an edited file is one error naming it. A file with none recorded (written by another library or
    an older saex) is not checked (``SAE.load`` notes it once it has loaded)."""
    if recorded is None:
        return
    st = path.stat()
    stamp = (str(path.resolve()), st.st_size, st.st_mtime_ns, recorded)
    if stamp in _VERIFIED:
        return
    actual = sha256_path(path)
    if actual != recorded:
        raise SaexError(
            f"{path} is corrupted or was changed after it was written: its sha256 {actual[:16]}… is not the "
            f"{recorded[:16]}… its {CFG} records; restore it or train it again"
        )
    _VERIFIED.add(stamp)


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object; one clear error otherwise."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SaexError(f"{path} is not readable JSON ({e.__class__.__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise SaexError(f"{path} holds a JSON {type(obj).__name__}, not an object")
    return obj


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (never a pickle); one clear error for a file that is not one."""
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, ValueError, ...
        raise SaexError(f"{path} is not a readable safetensors file ({e.__class__.__name__}: {e})") from e


def tensor(w: dict[str, torch.Tensor], key: str, source: str, *alternatives: str) -> torch.Tensor:
    """``w[key]`` (or the first of ``alternatives`` present), else one error naming the file and what it holds."""
    for k in (key, *alternatives):
        if k in w:
            return w[k]
    names = " or ".join(repr(k) for k in (key, *alternatives))
    raise SaexError(f"{source} has no tensor {names}; it holds {sorted(w)}")


# SAELens normalize_activations values saex does not apply: ``expected_average_only_in`` (and the older ``true``)
# trained on inputs scaled by one constant, which SAELens folds in only for its pretrained directory and otherwise,
# as here, does not apply at inference. (``null`` / ``false``: none.)
_NOT_APPLIED = (True, "expected_average_only_in")
_SAELENS_ARCHITECTURES = (
    {act: (act, False, False) for act in ARCHITECTURES}
    | {
        f"{act}_{'skip_' if skip else ''}transcoder": (act, True, skip)
        for act in ARCHITECTURES
        for skip in (False, True)
    }
    | {"transcoder": ("standard", True, False), "skip_transcoder": ("standard", True, True)}
)
"""SAELens's saved architectures -> (activation, transcoder, skip); saex's ``<act>_[skip_]transcoder`` too."""


_CFG_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("architecture", "activation_fn_str", "activation_fn", "reshape_activations"), (str,)),
    **dict.fromkeys(
        ("hook_name", "hook_point", "hook_name_out", "hf_hook_name", "hf_hook_name_out", "model_name"), (str,)
    ),
    **dict.fromkeys(("d_in", "d_sae", "d_out", "k", "hook_head_index"), (int,)),
    "apply_b_dec_to_input": (bool,),
    "rescale_acts_by_decoder_norm": (bool,),
    "normalize_activations": (str, bool),
    "activation_fn_kwargs": (dict,),
    "metadata": (dict,),
}
"""The types of the cfg.json fields saex reads (``null`` is allowed for each): another type is one error."""


def _check_types(cfg: dict, source: str) -> None:
    for key, types in _CFG_TYPES.items():
        v = cfg.get(key)
        if v is None:
            continue
        if not isinstance(v, types) or (bool not in types and isinstance(v, bool)):
            raise SaexError(
                f"{source}: {CFG} field {key!r} is {json.dumps(v)[:60]}, not a {' or '.join(t.__name__ for t in types)}"
            )
    if isinstance(cfg.get("activation_fn_kwargs"), dict):
        k = cfg["activation_fn_kwargs"].get("k")
        if k is not None and (not isinstance(k, int) or isinstance(k, bool)):
            raise SaexError(f"{source}: {CFG} field 'activation_fn_kwargs.k' is {json.dumps(k)[:60]}, not an int")


def from_saelens(cfg: dict, w: dict[str, torch.Tensor], source: str) -> SAE:
    """The SAE a SAELens ``cfg.json`` and its weights describe, whichever SAELens version wrote them (before 6.0
    the hook was ``hook_point`` and TopK an ``activation_fn``), honouring ``apply_b_dec_to_input``,
    ``normalize_activations``, JumpReLU thresholds and TopK's ``rescale_acts_by_decoder_norm``."""
    _check_types(cfg, source)
    meta: dict = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {}
    saved = cfg.get("architecture") or (
        "topk" if cfg.get("activation_fn_str", cfg.get("activation_fn")) == "topk" else "standard"
    )
    if saved not in _SAELENS_ARCHITECTURES:
        raise SaexError(
            f"{source}: SAELens architecture {saved!r} has no saex equivalent; saex reads {sorted(_SAELENS_ARCHITECTURES)}"
        )
    architecture, transcoder, skip = _SAELENS_ARCHITECTURES[saved]
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if cfg.get("hook_head_index") is not None or cfg.get("reshape_activations", "none") != "none":
        raise SaexError(f"{source}: SAEs of one attention head or of hook_z (reshape_activations) are not supported")
    normalize = cfg.get("normalize_activations") or "none"
    if normalize in _NOT_APPLIED:
        meta = {**meta, "normalize_note": f"{normalize!r} is not applied at inference (as SAELens does)"}
        normalize = "none"
    elif normalize not in NORMALIZATIONS:
        raise SaexError(
            f"{source}: normalize_activations {normalize!r} is not supported; saex reads "
            f"{[*NORMALIZATIONS, 'expected_average_only_in']}"
        )
    scaling = w.pop("scaling_factor", None)
    if scaling is not None and not torch.allclose(scaling, torch.ones_like(scaling)):
        raise SaexError(f"{source}: a finetuning scaling_factor other than 1 is not supported")
    W_enc, W_dec = tensor(w, "W_enc", source), tensor(w, "W_dec", source)
    for key, axis in (("d_in", 0), ("d_sae", 1)):
        if isinstance(cfg.get(key), int) and W_enc.dim() == 2 and cfg[key] != W_enc.shape[axis]:
            raise SaexError(
                f"{source}: {CFG} says {key} = {cfg[key]} but W_enc has shape {tuple(W_enc.shape)} [d_in, d_sae]"
            )
    b_enc = tensor(w, "b_mag", source) if architecture == "gated" else tensor(w, "b_enc", source)
    if architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        # SAELens ranks pre-activations scaled by ‖W_dec_f‖ and decodes with unit rows: the same map as these
        # folded weights, with the same codes.
        norm_F = W_dec.norm(dim=-1)
        W_enc, b_enc, W_dec = W_enc * norm_F, b_enc * norm_F, W_dec / norm_F[:, None]
    metadata = {**meta}
    # saex writes its own metadata object; SAELens 6 stamps its version in its metadata, older SAELens and
    # hand-written folders have none
    native = isinstance(cfg.get("metadata"), dict) and "sae_lens_version" not in meta and "sae_lens_version" not in cfg
    if not native:  # SAELens's top-level fields, and its (TransformerLens) hook names mapped onto saex's
        if "hook_point" in cfg:  # SAELens before 6.0
            cfg = {"hook_name": cfg["hook_point"], **cfg}
        for key in ("model_name", "hook_name", "hook_name_out", "hf_hook_name", "hf_hook_name_out"):
            if cfg.get(key) is not None:
                metadata.setdefault(key, cfg[key])
        metadata |= {"source_format": "saelens", "source": source}
        metadata |= mapped_hooks(
            metadata.get("hf_hook_name") or metadata.get("hook_name"),
            (metadata.get("hf_hook_name_out") or metadata.get("hook_name_out")) if transcoder else None,
            metadata.get("model_name"),
        )
    return SAE(
        W_enc,
        W_dec,
        b_enc,
        tensor(w, "b_dec", source),
        architecture=architecture,
        k=k,
        apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", not transcoder),
        metadata=metadata,
        threshold_F=tensor(w, "threshold", source) if architecture == "jumprelu" else None,
        b_gate_F=tensor(w, "b_gate", source) if architecture == "gated" else None,
        r_mag_F=tensor(w, "r_mag", source) if architecture == "gated" else None,
        W_skip_OD=tensor(w, "W_skip", source) if skip else w.get("W_skip"),
        transcoder=transcoder,
        normalize=normalize,
    )
