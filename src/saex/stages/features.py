"""``saex features``: build the feature example index of one or more dictionaries (see ``features/index.py``).

Two streaming passes over the held-out fragments per dictionary, each with a progress bar and memory
bounded by the number of features: the first keeps the examples and statistics, the second records the
per-token activations of the kept fragments. Each dictionary's index is written atomically when done; a
killed run resumes by running the same command (finished indexes are kept).

Each index records how many of its features activated on at least one fragment (``active_features`` in
index.json, and per index in features.json's ``counts``); a run in which no feature of any dictionary activated
built nothing to explain and ends with an error giving the counts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import saex
from saex.config import opt
from saex.devices import DeviceOptions, device_of, placement
from saex.dictionaries.folders import open_for_store
from saex.dictionaries.formats import weights_sha256
from saex.errors import SaexError
from saex.features.fragments import Fragments, make_fragments
from saex.features.index import INDEX_JSON, INDEX_TENSORS, KINDS, VOCAB_JSON, IndexBuilder, sparse_token_values
from saex.files import check_output_folder, locked_output, write_json_atomic, write_safetensors_atomic
from saex.lm.loading import load_store_model
from saex.naming import file_name
from saex.store.reader import ActivationStore, RowFilter, RowOptions, store_hash, within_norm

NAME = "features"
HELP = "index each feature's top, random and non-activating fragments over held-out text"
MARKER = "features.json"


@dataclass
class FeaturesConfig(RowOptions, DeviceOptions):
    """What ``saex features`` indexes; saved in features.json and in every index.json."""

    acts: str = "runs/acts"
    """Activation store whose held-out split supplies the fragments."""
    dicts: list[str] = opt(["runs/dicts"], nonempty=True)
    """Dictionary folders, or folders of them (SAEs and baselines alike)."""
    out: str = "runs/features"
    """Output folder: one index folder per dictionary."""
    hook: str | None = None
    """Hook point; by default each dictionary's own (its metadata hook_name)."""
    fragment_length: int = opt(64, gt=0)
    """Tokens per fragment (the paper: 64)."""
    one_per_document: bool = True
    """Keep one fragment per document, as the paper did (--no-one-per-document keeps every window)."""
    fragments: int | None = opt(None, gt=0)
    """At most this many fragments (default: all the held-out split gives; the paper used 50,000)."""
    top: int = opt(50, gt=0)
    """Top fragments kept per feature (the protocol uses 20)."""
    random: int = opt(100, ge=0)
    """Random activating fragments kept per feature (20 for the protocol; ranked, they give the deciles)."""
    zero: int = opt(50, ge=0)
    """Random non-activating fragments kept per feature (for detection scoring)."""
    chunk: int = opt(128, gt=0)
    """Fragments per step of the streaming passes (memory ~ chunk · fragment_length · features · 8 bytes)."""
    seed: int = opt(0, ge=0)
    """Seed of the fragment choice and of the random samples."""
    decode: bool = True
    """Store the text of every token (loads the store's model for its tokenizer); --no-decode for a store
    whose model is not at hand."""
    model: str | None = None
    """Model whose tokenizer decodes the tokens (default: the store's; its weights must match)."""


CONFIG = FeaturesConfig


def summary(out: Path) -> str:
    return f"feature indexes in {out}"


@locked_output("saex features")
def run(cfg: FeaturesConfig, progress: bool = True) -> Path:
    device = placement(cfg).device  # the dictionaries encode there; the index is the same on every device
    store = ActivationStore(cfg.acts)
    if store.n_rows("heldout") == 0:
        raise SaexError(f"the store {store.path} has no held-out rows to index")
    dicts = open_for_store(cfg.dicts, store, cfg.hook)
    out = Path(cfg.out)
    check_output_folder(out, MARKER, "set of saex feature indexes")
    shards = [store.load_tokens("heldout", i) for i in range(len(store.shards("heldout")))]
    tokens_CT, docs_CT = torch.cat([t for t, _ in shards]), torch.cat([d for _, d in shards])
    frags = make_fragments(tokens_CT, docs_CT, cfg.fragment_length, cfg.one_per_document, cfg.fragments, cfg.seed)
    rows = RowFilter.of(cfg)
    rows.check(store.context_length)
    # the kept rows of every fragment token by position and token, [N, L] (the norm limit is applied where the
    # activations are read): excluded tokens get code 0 for every feature
    keep_NL = rows.keep(tokens_CT, store.special_token_ids())[torch.from_numpy(frags.rows_NL)]
    vocab = _vocab(store, frags, cfg.model) if cfg.decode else None
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / MARKER, {"saex_version": saex.__version__, "config": asdict(cfg)})
    # --chunk stays in the identity: the random samples' keys are drawn per chunk; the kind of device too (as
    # resolved: auto and cpu on a CPU machine are one index): another kind may break ties between equal codes
    options = {k: v for k, v in asdict(cfg).items() if k not in ("acts", "dicts", "out", "model")}
    options["device"] = device.type
    counts: dict[str, dict[str, int | None]] = {}
    for name, (folder, d, hook) in dicts.items():
        target = out / file_name(name)
        identity = {
            "weights_sha256": weights_sha256(folder),
            "store_hash": store_hash(store, hook),
            "hook": hook,
            "options": options,
        }
        if (target / INDEX_JSON).is_file() and (old := json.loads((target / INDEX_JSON).read_text())).get(
            "identity"
        ) == identity:
            counts[name] = {"features": d.d_dict, "active": old.get("active_features")}
            continue
        limit = store.norm_limit(hook, rows)
        tensors = _index_one(store, hook, d.to(device), frags, keep_NL, limit, cfg, progress, name)
        tensors |= {
            "tokens": frags.tokens_NL,
            "fragment_rows": torch.from_numpy(frags.rows_NL[:, 0].copy()),
            "fragment_docs": torch.from_numpy(frags.doc_N.copy()),
        }
        active = int((tensors["active_fragments"] > 0).sum())
        counts[name] = {"features": d.d_dict, "active": active}
        write_safetensors_atomic(target / INDEX_TENSORS, tensors, {"format": "saex.feature_index"})
        meta = {
            "format": "saex.feature_index",
            "format_version": 1,
            "saex_version": saex.__version__,
            "identity": identity,
            "dictionary": {"name": name, "path": str(folder), **d.metadata},
            "architecture": d.architecture,
            "d_in": d.d_in,
            "d_dict": d.d_dict,
            "hook": hook,
            "store": str(store.path),
            "model": store.manifest["model"]["name"],
            "n_fragments": frags.n,
            "fragment_length": cfg.fragment_length,
            "active_features": active,
            "config": asdict(cfg),
        }
        if vocab is not None:
            write_json_atomic(target / VOCAB_JSON, vocab)
        else:  # text from an earlier build would not match these fragments
            (target / VOCAB_JSON).unlink(missing_ok=True)
        write_json_atomic(target / INDEX_JSON, meta)
        if progress:
            print(f"{name}: {d.d_dict} features over {frags.n} fragments -> {target}")
    write_json_atomic(out / MARKER, {"saex_version": saex.__version__, "config": asdict(cfg), "counts": counts})
    known = [c for c in counts.values() if c["active"] is not None]
    if known and len(known) == len(counts) and not any(c["active"] for c in known):
        total = sum(int(c["features"] or 0) for c in known)
        raise SaexError(
            f"0 of {total} features{f' of {len(known)} dictionaries' if len(known) > 1 else ''} activated on any of "
            f"the {frags.n} held-out fragments: the feature index has no feature to show or explain (a dead "
            "dictionary, or a store or hook it was not trained on?)"
        )
    return out


def _vocab(store: ActivationStore, frags: Fragments, model: str | None) -> dict[str, str]:
    """Text of every token id that occurs in the fragments, decoded one token at a time (as Bills et al.)."""

    tok = load_store_model(store.manifest["model"], model).tokenizer
    return {str(i): tok.decode([i]) for i in torch.unique(frags.tokens_NL).tolist()}


def _codes(
    store, hook, d, frags: Fragments, keep_NL: torch.Tensor, limit: float | None, sel: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [len(sel), L, F] of the selected fragments (rows read from the store, encoded; 0 at excluded
    tokens), and which tokens count [len(sel), L]: ``keep_NL`` and, with a norm ``limit``, not above it; both
    on the dictionary's device."""
    rows = frags.rows_NL[sel]
    x = store.rows("heldout", hook, rows.reshape(-1))
    if not torch.isfinite(x).all():
        raise SaexError(
            f"the store {store.path} holds NaN or Inf activations at {hook}; re-harvest with --dtype float32"
        )
    return encode_fragments(d, x, keep_NL[torch.from_numpy(sel)], limit)


def encode_fragments(
    d, x_ND: torch.Tensor, keep_CL: torch.Tensor, limit: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-chunk computation of ``_codes`` on rows ``x [C·L, D]`` read from the store: moved to the
    dictionary's device, encoded, and 0 where a token does not count."""
    device = device_of(d)
    x_ND, keep_CL = x_ND.to(device, torch.float32), keep_CL.to(device)
    with torch.inference_mode():
        c_CLF = d.encode(x_ND).reshape(*keep_CL.shape, -1)
        if limit is not None:
            keep_CL = keep_CL & within_norm(x_ND, limit).reshape(keep_CL.shape)
        c_CLF[~keep_CL] = 0
        return c_CLF, keep_CL


def _index_one(
    store,
    hook,
    d,
    frags: Fragments,
    keep_NL: torch.Tensor,
    limit: float | None,
    cfg: FeaturesConfig,
    progress: bool,
    name: str,
) -> dict:
    F, N = d.d_dict, frags.n
    device = device_of(d)
    builder = IndexBuilder(F, cfg.top, cfg.random, cfg.zero, cfg.seed, device)
    bar = tqdm(total=N, desc=f"{name}: examples", unit="frag", disable=not progress)
    for chunk, start in enumerate(range(0, N, cfg.chunk)):
        sel = np.arange(start, min(N, start + cfg.chunk))
        c_CLF, keep_CL = _codes(store, hook, d, frags, keep_NL, limit, sel)
        builder.update(c_CLF, torch.from_numpy(sel), chunk, keep_CL)
        bar.update(len(sel))
    bar.close()
    ex = builder.examples()
    # every kept (feature, slot, fragment), in slot order top | random | zero
    ids_FE = torch.cat([ex[f"{k}_ids"] for k in KINDS], 1)
    f_P, slot_P = (ids_FE >= 0).nonzero(as_tuple=True)
    frag_P = ids_FE[f_P, slot_P]
    order = frag_P.argsort(stable=True)
    f_P, slot_P, frag_P = f_P[order], slot_P[order], frag_P[order]
    needed = torch.unique(frag_P).numpy()
    parts = []
    bar = tqdm(total=len(needed), desc=f"{name}: token values", unit="frag", disable=not progress)
    for start in range(0, len(needed), cfg.chunk):
        sel = needed[start : start + cfg.chunk]
        c_CLF, _ = _codes(store, hook, d, frags, keep_NL, limit, sel)
        lo, hi = np.searchsorted(frag_P.numpy(), [sel[0], sel[-1] + 1])
        local = torch.from_numpy(np.searchsorted(sel, frag_P[lo:hi].numpy())).to(device)
        feat, slot = f_P[lo:hi].to(device), slot_P[lo:hi].to(device)
        vals_PL = c_CLF[local, :, feat]
        parts.append(tuple(t.cpu() for t in sparse_token_values(vals_PL, feat, slot)))
        bar.update(len(sel))
    bar.close()
    feat = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, dtype=torch.int64)
    idx = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, dtype=torch.int64)
    val = torch.cat([p[2] for p in parts]) if parts else torch.zeros(0)
    order = torch.from_numpy(np.lexsort((idx.numpy(), feat.numpy())))
    feat, idx, val = feat[order], idx[order], val[order]
    ptr = torch.zeros(F + 1, dtype=torch.int64)
    ptr[1:] = torch.bincount(feat, minlength=F).cumsum(0)
    return {**ex, **builder.stats(), "tok_ptr": ptr, "tok_idx": idx.to(torch.int32), "tok_val": val.float()}
