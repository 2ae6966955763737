"""``saex harvest``: run a causal LM over a corpus and store activations at several hook points.

Implements the paper's activation harvesting (Cunningham et al. 2023, §2 "we run the model ... while
caching and saving the activations"; details in docs/activation-store.md): one forward pass captures every
requested hook point and stops after the deepest one; all positions are kept. The store is crash-safe:
shards are written atomically and the manifest is rewritten after each one, so a harvest killed at any
moment and started again with the same arguments recomputes only the shard it was writing. Contexts are
a deterministic function of the config, which is what makes that resume exact.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

import saex
from saex import distributed
from saex.config import config_dict, opt, recorded_identity
from saex.data.corpora import resolve_corpus
from saex.data.packing import SPLITS, ContextOptions, pack, resolve_packing
from saex.devices import resolve_device, resolve_lm_dtype
from saex.errors import SaexError
from saex.files import (
    check_output_folder,
    check_same_identity,
    locked_output,
    sha256_path,
    write_json_atomic,
    write_safetensors_atomic,
)
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model, tokenizer_sha256
from saex.store.reader import FORMAT, FORMAT_VERSION, MANIFEST, read_manifest, shard_name
from saex.store.summary import summarize

NAME = "harvest"
HELP = "run a model over a corpus and store activations at hook points"

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class HarvestConfig(ContextOptions):
    """What ``saex harvest`` does; saved in the store's manifest."""

    out: str = "runs/acts"
    """Folder of the activation store. Re-running with the same arguments resumes an interrupted harvest."""
    model: str = "smollm2-135m"
    """Embedded model (smollm2-135m, gemma3-270m), a local Hugging Face checkpoint folder, or a hub id."""
    hooks: list[str] = opt(["blocks.6.hook_resid_post"], nonempty=True)
    """Hook points (comma-separated on the command line), e.g. blocks.6.hook_resid_post,blocks.6.mlp.hook_post."""
    tokens: int = opt(1_000_000, gt=0)
    """Tokens (activation rows per hook) to harvest for the train split."""
    heldout_tokens: int | None = opt(None, ge=0)
    """Tokens for the held-out split (default: a tenth of --tokens, at least one context)."""
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    """Storage dtype of activations: float16, bfloat16 or float32."""
    device: str = "auto"
    """Where the model runs: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N, mps."""
    lm_dtype: str = "auto"
    """The model's precision: auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16, float16; recorded
    in the manifest (the store's identity: another precision gives other activations)."""
    batch_size: int = opt(16, gt=0)
    """Contexts per forward pass."""
    shard_tokens: int = opt(65_536, gt=0)
    """Rows per shard file (rounded down to whole contexts): the unit of atomic writes and of resume."""
    seed: int = opt(0, ge=0)
    """Seed of document order and of the train / held-out split."""


CONFIG = HarvestConfig


def summary(out: Path) -> str:
    return summarize(out)


# Fields that may differ between the run that started a store and one that continues it.
_MUTABLE = {"out", "tokens", "heldout_tokens", "device"}


def _check_existing(out: Path, identity: dict) -> dict | None:
    """The existing manifest when it describes the same store; a clear error when it does not."""
    if not (out / MANIFEST).is_file():
        return None
    manifest = read_manifest(out / MANIFEST)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise SaexError(f"output folder {out} holds something other than a saex v{FORMAT_VERSION} activation store")
    if manifest.get("status") != "complete" and not any(
        (manifest.get("splits") or {}).get(split, {}).get("shards") for split in SPLITS
    ):
        return None  # an attempt that failed before its first shard: nothing to keep, nothing to protect
    recorded = recorded_identity(HarvestConfig, manifest["identity"], identity)
    if "lm_dtype" not in manifest["identity"]:  # stores written before --lm-dtype: the model ran in float32
        recorded["lm_dtype"] = "float32"
    check_same_identity(out, recorded, identity, "activation store", "store")
    return manifest


def _usable_shards(
    out: Path, split: str, shards: list[dict], shard_contexts: int, target_contexts: int, T: int
) -> list[dict]:
    """Shards to keep on resume: intact ones, up to the first that is not. A short last shard is kept only
    when nothing more is asked of the split; otherwise it is recomputed so that shards stay full-size."""
    keep: list[dict] = []
    for s in shards:
        path = out / split / s["file"]
        short = s["contexts"] != shard_contexts and sum(k["contexts"] for k in keep) + s["contexts"] < target_contexts
        edited = s.get("rows") != s.get("contexts", 0) * T  # a count changed by hand: rebuild from here
        if short or edited or not path.is_file() or path.stat().st_size != s["bytes"]:
            break
        if sha256_path(path) != s["sha256"]:
            warnings.warn(f"shard {path} is corrupted; it and the shards after it will be recomputed", stacklevel=2)
            break
        keep.append(s)
    return keep


@locked_output("saex harvest")
def run(cfg: HarvestConfig, progress: bool = True) -> Path:
    """Harvest activations into ``cfg.out``; resumes when the folder holds the same store unfinished."""
    hooks = cfg.hooks
    if len(set(hooks)) != len(hooks):
        raise SaexError(f"--hooks names a hook point twice: {hooks}")
    ranks = distributed.setup()
    out = Path(cfg.out)
    check_output_folder(out, MANIFEST, "activation store")  # refuse a wrong --out before the slow model load
    device = resolve_device(cfg.device)
    lm_dtype = resolve_lm_dtype(cfg.lm_dtype, device)
    lm = load_model(cfg.model)
    lm.model.to(device=device, dtype=lm_dtype)
    hooked = HookedLM(lm.model)
    points = [hooked.resolve(h) for h in hooks]
    packing = resolve_packing(lm.tokenizer, cfg.context_length, cfg.bos_policy, cfg.separator, hooked.max_context)
    corpus = resolve_corpus(cfg.corpus, cfg.text_field, cfg.hub_split, cfg.hub_config)
    T = cfg.context_length
    shard_contexts = max(1, cfg.shard_tokens // T)
    identity = {k: v for k, v in config_dict(cfg).items() if k not in _MUTABLE}
    identity["lm_dtype"] = str(lm_dtype).removeprefix("torch.")  # resolved: "auto" means different things
    identity |= {
        "weights_sha256": lm.weights_sha256,
        "corpus_fingerprint": corpus.fingerprint,
        "tokenizer_sha256": tokenizer_sha256(lm.tokenizer),
        "packing": packing.describe(),
    }
    manifest = _check_existing(out, identity)
    n_tokens = {
        "train": cfg.tokens,
        "heldout": cfg.heldout_tokens if cfg.heldout_tokens is not None else max(T, cfg.tokens // 10),
    }
    if manifest is None:
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "saex_version": saex.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "status": "in_progress",
            "identity": identity,
            "config": config_dict(cfg),
            "model": {
                "name": lm.name,
                "source": lm.source,
                "weights_sha256": lm.weights_sha256,
                # where a local checkpoint was, so that later stages find it from any working folder
                "path": str(Path(lm.name).expanduser().resolve()) if lm.source == "local" else None,
                "model_type": lm.model.config.model_type,
                "family": hooked.family.name,
                "n_layers": hooked.n_layers,
                "d_model": hooked.d_model,
                "d_mlp": hooked.d_mlp,
                "max_context": hooked.max_context,
            },
            "tokenizer": {
                "name_or_path": str(lm.tokenizer.name_or_path),
                "class": type(lm.tokenizer).__name__,
                "vocab_size": len(lm.tokenizer),
                "sha256": identity["tokenizer_sha256"],
            },
            "corpus": corpus.describe(),
            "split": {
                "method": "sha256(seed:document key) < heldout_fraction",
                "seed": cfg.seed,
                "heldout_fraction": cfg.heldout_fraction,
            },
            "packing": packing.describe(),
            "dtype": cfg.dtype,
            "lm_dtype": identity["lm_dtype"],
            "hooks": {p.name: p.describe() for p in points},
            "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
            "splits": {s: {"shards": []} for s in SPLITS},
        }
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)  # its stale temporaries went when the folder lock was taken
    ranks.barrier()
    manifest["config"] = config_dict(cfg)
    manifest["device"] = str(device)  # where this (last) run computed; not part of the store's identity
    manifest["status"] = "in_progress"
    for split in SPLITS:
        entry = manifest["splits"][split]
        entry["shards"] = _usable_shards(out, split, entry["shards"], shard_contexts, math.ceil(n_tokens[split] / T), T)
        entry["contexts"] = sum(x["contexts"] for x in entry["shards"])
        entry["rows"] = entry["contexts"] * T
        entry["target_tokens"] = n_tokens[split]
        entry.pop("exhausted", None)
    if ranks.main:
        write_json_atomic(out / MANIFEST, manifest)

    totals = {s: math.ceil(n_tokens[s] / T) * T for s in SPLITS}
    done = {s: sum(x["rows"] for x in manifest["splits"][s]["shards"]) for s in SPLITS}
    bar = tqdm(
        total=sum(totals.values()),
        initial=min(sum(done.values()), sum(totals.values())),
        unit="tok",
        unit_scale=True,
        disable=not (progress and ranks.main),
        desc="harvest",
        dynamic_ncols=True,
    )
    with hooked.capture(hooks) as run:
        for split in SPLITS:
            _harvest_split(
                cfg,
                out,
                manifest,
                split,
                run,
                lm.tokenizer,
                packing,
                corpus,
                points,
                math.ceil(n_tokens[split] / T),
                shard_contexts,
                bar,
                ranks,
            )
    bar.close()
    manifest["status"] = "complete"
    manifest["completed"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if ranks.main:
        write_json_atomic(out / MANIFEST, manifest)
    ranks.barrier()
    return out


def _harvest_split(
    cfg, out, manifest, split, run, tokenizer, packing, corpus, points, target_contexts, shard_contexts, bar, ranks
) -> None:
    entry = manifest["splits"][split]
    shards = entry["shards"]
    done_contexts = sum(s["contexts"] for s in shards)
    if done_contexts >= target_contexts:
        return
    T = packing.context_length
    contexts = pack(corpus.documents(cfg.seed), tokenizer, packing, split, cfg.seed, cfg.heldout_fraction)
    # Replay the contexts already stored and check they are the ones this config produces.
    for s in shards:
        h = hashlib.sha256()
        for _ in range(s["contexts"]):
            c = next(contexts, None)
            if c is None:
                raise SaexError(
                    f"the corpus now yields fewer contexts than {out} holds; it changed since the harvest began"
                )
            h.update(c.tokens_T.tobytes())
        if h.hexdigest() != s["tokens_sha256"]:
            raise SaexError(
                f"the contexts of {out / split / s['file']} differ from what this corpus and tokenizer "
                "produce now; the inputs changed since the harvest began: harvest into a new folder"
            )
    position = done_contexts  # contexts taken from the stream so far
    while done_contexts < target_contexts:
        # One round: rank r computes the r-th of the next `world` shards (every earlier shard is full), so
        # the shards and their order are those of a single process.
        start = done_contexts + ranks.rank * shard_contexts
        n = max(0, min(shard_contexts, target_contexts - start))
        new = None
        if n:
            for _ in range(start - position):
                next(contexts, None)
            filled, tensors = _compute_shard(cfg, run, contexts, n, T, points, bar, split)
            position = start + filled
            if filled:
                index = len(shards) + ranks.rank
                path = out / split / shard_name(index)
                digest = write_safetensors_atomic(
                    path, tensors, {"split": split, "index": str(index), "format": FORMAT}
                )
                new = {
                    "file": path.name,
                    "contexts": filled,
                    "rows": filled * T,
                    "bytes": path.stat().st_size,
                    "sha256": digest,
                    "tokens_sha256": hashlib.sha256(tensors["tokens"].numpy().tobytes()).hexdigest(),
                }
        exhausted = False
        for e in ranks.gather(new):
            if e is not new:
                bar.update(0 if e is None else e["rows"])
            if e is None:
                exhausted = done_contexts < target_contexts
                break
            shards.append(e)
            done_contexts += e["contexts"]
            if e["contexts"] < shard_contexts and done_contexts < target_contexts:
                exhausted = True
                break
        entry["rows"] = done_contexts * T
        entry["contexts"] = done_contexts
        if ranks.main:
            write_json_atomic(out / MANIFEST, manifest)
        if exhausted:
            entry["exhausted"] = True
            warnings.warn(
                f"the corpus ran out: split {split!r} has {done_contexts * T} tokens, "
                f"fewer than the {target_contexts * T} asked for",
                stacklevel=2,
            )
            break


def _compute_shard(cfg, run, contexts, n, T, points, bar, split) -> tuple[int, dict[str, torch.Tensor]]:
    """Activations of up to n contexts from the stream: (contexts filled, the shard's tensors, on the CPU)."""
    dtype = DTYPES[cfg.dtype]
    tok_CT = np.zeros((n, T), dtype=np.int32)
    doc_CT = np.zeros((n, T), dtype=np.int32)
    acts = {p.name: torch.empty(n * T, p.width, dtype=dtype) for p in points}
    filled = 0
    while filled < n:
        batch = []
        for _ in range(min(cfg.batch_size, n - filled)):
            c = next(contexts, None)
            if c is None:
                break
            batch.append(c)
        if not batch:
            break
        b = len(batch)
        tok_CT[filled : filled + b] = np.stack([c.tokens_T for c in batch])
        doc_CT[filled : filled + b] = np.stack([c.doc_ids_T for c in batch])
        got = run(torch.from_numpy(tok_CT[filled : filled + b]).long())
        for name, x_BTD in got.items():
            x = x_BTD.reshape(b * T, -1).to(dtype)
            if not torch.isfinite(x).all():
                kind = "is not finite" if not torch.isfinite(x_BTD).all() else f"overflows {cfg.dtype}"
                raise SaexError(
                    f"activation at {name} {kind} (max |x| = {x_BTD.abs().max().item():.4g}); "
                    "use --dtype float32 or bfloat16"
                )
            acts[name][filled * T : (filled + b) * T] = x
        filled += b
        bar.update(b * T)
        bar.set_postfix_str(split)
    tensors = {k: v[: filled * T] for k, v in acts.items()}
    tensors["tokens"] = torch.from_numpy(tok_CT[:filled])
    tensors["doc_ids"] = torch.from_numpy(doc_CT[:filled])
    return filled, tensors
