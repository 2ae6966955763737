"""Where tensors live and in which precision: ``--device`` and ``--lm-dtype``, resolved once, checked against the
machine with one clear error naming what it has.

``auto`` takes the first of CUDA, MPS and the CPU that this machine has. A language model runs in float32 on
the CPU (bfloat16 matmul is hundreds of times slower on CPUs without native support) and in bfloat16 on CUDA,
unless ``--lm-dtype`` says otherwise; dictionaries are always float32.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from saex.config import Config
from saex.errors import SaexError

LM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``--lm-dtype`` values."""


def _mps() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available() -> list[str]:
    """The devices of this machine, as ``--device`` names them."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps():
        out.append("mps")
    return out


def resolve_device(spec: str | torch.device | None = "auto", option: str = "--device") -> torch.device:
    """The device ``spec`` names: ``auto`` (CUDA, then MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if m:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(m.group(1) or 0)
        if index >= n:
            raise SaexError(
                f"{option} {spec}: this machine has {'no CUDA GPU' if n == 0 else f'{n} CUDA GPU(s), cuda:0..cuda:{n - 1}'}; "
                f"available: {', '.join(available())}"
            )
        return torch.device("cuda", index)
    if text == "mps":
        if not _mps():
            raise SaexError(f"{option} mps: this machine has no MPS device; available: {', '.join(available())}")
        return torch.device("mps")
    raise SaexError(
        f"unknown {option} {spec!r}; allowed: auto, cpu, cuda, cuda:N, mps (here: {', '.join(available())})"
    )


def resolve_lm_dtype(spec: str | None, device: torch.device) -> torch.dtype:
    """The language model's dtype: ``spec`` (one of ``LM_DTYPES``), or by default bfloat16 on CUDA and float32
    elsewhere."""
    if spec is None or spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if spec not in LM_DTYPES:
        raise SaexError(f"unknown --lm-dtype {spec!r}; allowed: auto, {', '.join(LM_DTYPES)}")
    return LM_DTYPES[spec]


@dataclass(kw_only=True)
class DeviceOptions(Config):
    """``--device`` of a stage that runs dictionaries (and a model, unless ``LMOptions.lm_device`` says otherwise).
    Keyword-only, so that a config with positional fields (no default) can inherit it."""

    device: str = "auto"
    """Where the stage computes: its dictionaries, and its language model if it runs one (unless --lm-device):
    auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N, mps."""


@dataclass(kw_only=True)
class LMOptions(DeviceOptions):
    """``--lm-device`` and ``--lm-dtype`` of a stage that also runs a language model."""

    lm_device: str = ""
    """Where the language model runs, when not on --device (e.g. the model on cuda:1, the dictionaries on
    cuda:0); empty: --device."""
    lm_dtype: str = "auto"
    """The language model's precision: auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16, float16.
    Dictionaries always compute in float32 (activations are cast to it)."""


@dataclass(frozen=True)
class Placement:
    """Resolved devices and the model's dtype."""

    device: torch.device
    lm_device: torch.device
    lm_dtype: torch.dtype

    def describe(self) -> dict:
        return {"device": str(self.device), "lm_device": str(self.lm_device), "lm_dtype": dtype_name(self.lm_dtype)}

    def identity(self) -> dict:
        """What of the placement changes a stage's results, for its resume identity: the model's dtype where it
        is not float32 (results from before --lm-dtype are the float32 ones); where things ran never does."""
        return {} if self.lm_dtype == torch.float32 else {"lm_dtype": dtype_name(self.lm_dtype)}


def placement(cfg: DeviceOptions) -> Placement:
    """Where a stage's config puts its dictionaries and model (one clear error for what the machine lacks)."""
    device = resolve_device(cfg.device)
    lm_spec = getattr(cfg, "lm_device", "") or ""
    lm_device = resolve_device(lm_spec, "--lm-device") if lm_spec else device
    return Placement(device, lm_device, resolve_lm_dtype(getattr(cfg, "lm_dtype", None), lm_device))


PLACEMENT_FIELDS = ("device", "lm_device", "lm_dtype")
"""The config fields of ``DeviceOptions`` / ``LMOptions``: where a stage runs, not what it computes (resume
identities leave them out, or take ``Placement.identity``)."""


def device_of(module) -> torch.device:
    """The device of a module's (a dictionary's, a model's) first parameter; the CPU for one without any."""
    p = next(iter(module.parameters()), None)
    return torch.device("cpu") if p is None else p.device


def wide_dtype(device: torch.device) -> torch.dtype:
    """The dtype of sums accumulated on ``device``: float64, except on MPS, which has none (float32 there)."""
    return torch.float32 if device.type == "mps" else torch.float64


def accumulator_device(device: torch.device) -> torch.device:
    """Where float64 running sums of per-batch results on ``device`` live: there, or on the CPU for MPS (its
    per-batch float32 partial sums are moved there)."""
    return torch.device("cpu") if device.type == "mps" else device


def dtype_name(dtype: torch.dtype) -> str:
    """``float32`` for ``torch.float32``: how manifests record a dtype."""
    return str(dtype).removeprefix("torch.")
