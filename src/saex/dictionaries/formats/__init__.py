"""Dictionaries other libraries wrote, opened as saex ``SAE``s: one reader per format, chosen from the files.

================================  ===============================================  ===================
format                            files                                            module
================================  ===============================================  ===================
SAELens (and saex's own)          ``cfg.json`` + ``sae_weights.safetensors``       ``saex.dictionaries.sae``
sparsify                          ``cfg.json`` + ``sae.safetensors``               ``sparsify``
dictionary_learning               ``ae.pt`` (+ ``config.json``)                    ``dictionary_learning``
Gemma Scope 1 / 2                 ``params.npz`` / ``params.safetensors`` (+ cfg)  ``gemma_scope``
OpenAI ``sparse_autoencoder``     ``<layer>.pt``                                   ``openai``
================================  ===============================================  ===================

Every reader maps the source's hook naming onto saex hook points (``saex.naming.foreign_hook``) and records what
it read in the dictionary's metadata (``source_format``, ``source``, ``source_hook_name``). Weights are read from
safetensors, ``.npz`` without pickles, or ``torch.load(weights_only=True)``: no file runs code. A dictionary
named ``hf://owner/repo/sub/folder`` is downloaded from the Hugging Face hub first (``huggingface_hub``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from saex.dictionaries.formats import dictionary_learning, gemma_scope, openai, sparsify
from saex.dictionaries.sae import CFG, SAE, WEIGHTS
from saex.errors import SaexError
from saex.files import sha256_path

HUB = "hf://"


class Reader(Protocol):
    def detect(self, path: Path) -> bool: ...

    def read(self, path: Path) -> SAE: ...


class _SAELens:
    """SAELens's layout, which saex writes itself."""

    @staticmethod
    def detect(path: Path) -> bool:
        return path.is_dir() and (path / CFG).is_file() and (path / WEIGHTS).is_file()

    @staticmethod
    def read(path: Path) -> SAE:
        return SAE.load(path)


FORMATS: dict[str, Reader] = {
    "saelens": _SAELens(),
    "sparsify": sparsify,
    "dictionary_learning": dictionary_learning,
    "gemma_scope": gemma_scope,
    "openai": openai,
}
"""Format name -> reader (``detect(path) -> bool``, ``read(path) -> SAE``), tried in this order."""


def format_of(path: Path) -> str | None:
    """The format of a dictionary folder or file, None when it is none saex reads."""
    for name, reader in FORMATS.items():
        if reader.detect(path):
            return name
    return None


def from_hub(spec: str) -> Path:
    """The local copy of ``hf://owner/repo[/sub/folder]``, downloaded (only that folder) through the hub cache."""
    parts = spec[len(HUB) :].strip("/").split("/")
    if len(parts) < 2:
        raise SaexError(f"{spec!r}: a hub dictionary is named hf://owner/repo[/folder]")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import snapshot_download  # lazy: only hub users pay for it

    try:
        root = Path(snapshot_download(repo, allow_patterns=[f"{sub}/*", "config.json"] if sub else None))
    except Exception as e:  # offline, unknown repo, gated repo: huggingface_hub has many error classes
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SaexError(
            f"could not download {spec} from the Hugging Face hub ({e.__class__.__name__}: {first[:200]}); "
            "offline, name a local folder instead"
        ) from e
    path = root / sub if sub else root
    if not path.exists():
        raise SaexError(f"{spec}: the repository has no {sub!r}")
    return path


def load(path: str | Path) -> SAE:
    """Open one dictionary, whatever wrote it: a folder or file of one of ``FORMATS``, or ``hf://…``."""
    path = from_hub(str(path)) if str(path).startswith(HUB) else Path(path)
    if not path.exists():
        raise SaexError(f"dictionary {path} does not exist")
    fmt = format_of(path)
    if fmt is None:
        raise SaexError(
            f"{path} is no dictionary saex reads: expected {CFG} + {WEIGHTS} (saex, SAELens), {CFG} + "
            f"{sparsify.WEIGHTS} (sparsify), {dictionary_learning.WEIGHTS} (dictionary_learning), "
            f"{gemma_scope.NPZ} or {gemma_scope.SAFETENSORS} (Gemma Scope) or an OpenAI .pt state dict"
        )
    try:
        return FORMATS[fmt].read(path)
    except SaexError as e:  # name the dictionary in every error about its contents
        if str(path) in str(e):
            raise
        raise SaexError(f"dictionary {path}: {e}") from None


def name_of(path: Path) -> str:
    """A dictionary's name: its folder's, or a file's stem (OpenAI's ``6.pt``: ``6``); a weights file that every
    dictionary of its format calls the same (``ae.pt``, ``params.npz``) is named after its folder."""
    if path.is_file():
        same = (dictionary_learning.WEIGHTS, gemma_scope.NPZ, gemma_scope.SAFETENSORS)
        return path.parent.name if path.name in same else path.stem
    return path.name


def is_dictionary(path: Path) -> bool:
    return format_of(path) is not None


def weights_file(path: str | Path) -> Path:
    """The file that holds a dictionary's weights (what its ``weights_sha256`` identity hashes)."""
    path = Path(path)
    if path.is_file():
        return path
    fmt = format_of(path)
    if fmt == "sparsify":
        return path / sparsify.WEIGHTS
    if fmt == "dictionary_learning":
        return path / dictionary_learning.WEIGHTS
    if fmt == "gemma_scope":
        return path / (gemma_scope.SAFETENSORS if (path / gemma_scope.SAFETENSORS).is_file() else gemma_scope.NPZ)
    return path / WEIGHTS


def weights_sha256(path: str | Path) -> str:
    """SHA-256 of a dictionary's weights file, in any format."""
    return sha256_path(weights_file(path))


__all__ = [
    "FORMATS",
    "HUB",
    "format_of",
    "from_hub",
    "is_dictionary",
    "load",
    "name_of",
    "weights_file",
    "weights_sha256",
]
