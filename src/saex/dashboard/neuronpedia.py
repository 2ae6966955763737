"""A Neuronpedia export of one dictionary's features: the layout Neuronpedia's importer reads (its
``utils/neuronpedia-utils`` scripts write the same), so that a source is uploaded in one step::

    <out>/<modelId>/<layer>-<sourceSet>/
        release.jsonl  model.jsonl  sourceset.jsonl  source.jsonl      one record each
        features/batch-<n>.jsonl.gz       one Feature per line: pos/neg logits (the logit lens), activation
                                          density (frac_nonzero), the activation histogram (freq_hist_*), the
                                          logit histogram (logits_hist_*), the decoder row as a steering vector
        activations/batch-<n>.jsonl.gz    one Activation per example: tokens, per-token values, max and argmax

Field names are Neuronpedia's (its ``db_models``). Everything comes from saex's feature index (top and random
examples, density, the activation histogram of the random sample: ``saex.features.histogram``) and from the
decoder and the model's unembedding (the logit lens: ``saex.features.logit_lens``); nothing is recomputed from
activations. Record ids are derived from (source, feature, example) so a rerun writes the same files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from saex.dashboard.analyses import load_decoder, load_unembedding
from saex.features.histogram import histogram_from_index
from saex.features.index import VOCAB_JSON, FeatureIndex
from saex.features.logit_lens import excluded_tokens, logit_lens_all
from saex.files import write_bytes_atomic
from saex.naming import hook_layer, hook_suffix

LOGITS = 10
"""Positive and negative logits per feature (Neuronpedia shows 10 of each)."""
LOGIT_BINS = 40
"""Bars of the logit histogram."""


@dataclass(frozen=True)
class Source:
    """Who and what the export describes (Neuronpedia's release / model / source set / source records)."""

    model_id: str
    source_set: str
    description: str
    creator: str
    release: str
    release_title: str
    url: str = ""
    hf_repo_id: str | None = None
    hf_folder_id: str | None = None


def record_id(*parts) -> str:
    """A 25-character id (the length of Neuronpedia's cuids), the same on every rerun."""
    return "sx" + hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:23]


def _jsonl_gz(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_bytes_atomic(path, gzip.compress(text.encode("utf-8"), compresslevel=5, mtime=0))


def _jsonl(path: Path, row: dict) -> None:
    write_bytes_atomic(path, (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))


def source_id(index: FeatureIndex, source_set: str) -> str:
    layer = hook_layer(index.meta.get("hook"))
    return f"{layer if layer is not None else 0}-{source_set}"


def export(
    index: FeatureIndex,
    out: Path,
    src: Source,
    features: list[int],
    model: str | None = None,
    logit_lens: bool = True,
    batch: int = 128,
    progress: bool = False,
) -> Path:
    """Write the export of ``features`` of the index's dictionary; returns the source folder."""
    sid = source_id(index, src.source_set)
    folder = out / src.model_id / sid
    now = datetime.now(UTC).isoformat()
    hook = index.meta.get("hook")
    W_dec_FD = load_decoder(index, max(features) + 1) if features else torch.zeros(0, 0)
    lens, decode = None, None
    # MLP neurons are not in the residual stream the unembedding reads: no logit lens there
    if logit_lens and features and hook_suffix(hook) != "mlp.hook_post":
        W_U_VD, decode, _ = load_unembedding(index, model)
        lens = (W_U_VD, excluded_tokens(W_U_VD, "5x"))
    text = (index.path / VOCAB_JSON).is_file()
    token_text: Callable[[np.ndarray], list[list[str]]] = (
        index.token_strings if text else (lambda ids: [[f"[{t}]" for t in row] for row in index.tokens(ids).tolist()])
    )
    density = index.density()
    _jsonl(
        folder / "release.jsonl",
        {
            "name": src.release,
            "description": src.release_title,
            "descriptionShort": src.release_title,
            "creatorName": src.creator,
            "creatorNameShort": src.creator,
            "creatorId": src.creator,
            "visibility": "PUBLIC",
            "urls": [src.url] if src.url else [],
            "createdAt": now,
        },
    )
    _jsonl(
        folder / "model.jsonl",
        {
            "id": src.model_id,
            "instruct": src.model_id.endswith("-it"),
            "creatorId": src.creator,
            "displayNameShort": src.model_id,
            "displayName": src.model_id,
            "dimension": int(W_dec_FD.shape[-1]) or None,
            "visibility": "PUBLIC",
            "createdAt": now,
            "updatedAt": now,
        },
    )
    _jsonl(
        folder / "sourceset.jsonl",
        {
            "modelId": src.model_id,
            "name": src.source_set,
            "creatorId": src.creator,
            "creatorName": src.creator,
            "hasDashboards": True,
            "visibility": "PUBLIC",
            "description": src.description,
            "releaseName": src.release,
            "urls": [src.url] if src.url else [],
            "createdAt": now,
        },
    )
    _jsonl(
        folder / "source.jsonl",
        {
            "id": sid,
            "modelId": src.model_id,
            "setName": src.source_set,
            "creatorId": src.creator,
            "hasDashboards": True,
            "inferenceEnabled": False,
            "hfRepoId": src.hf_repo_id,
            "hfFolderId": src.hf_folder_id,
            "visibility": "PUBLIC",
            "num_prompts": int(index.meta.get("n_fragments") or 0) or None,
            "num_tokens_in_prompt": index.fragment_length,
            "dataset": index.meta.get("store"),
            "notes": f"exported by saex from {index.path}",
            "createdAt": now,
        },
    )
    bar = tqdm(total=len(features), desc="export: neuronpedia", unit="feature", disable=not progress)
    for b, lo in enumerate(range(0, len(features), batch)):
        chunk = features[lo : lo + batch]
        feats, acts = [], []
        W = W_dec_FD[torch.as_tensor(chunk)]
        if lens is not None:
            logits_CV = W @ lens[0].T
            tv, ti, bv, bi = logit_lens_all(W, lens[0], LOGITS, lens[1])
        for j, f in enumerate(chunk):
            row = {
                "modelId": src.model_id,
                "layer": sid,
                "index": str(f),
                "creatorId": src.creator,
                "createdAt": now,
                "hasVector": True,
                "vector": [float(v) for v in W[j].tolist()],
                "hookName": hook,
                "frac_nonzero": float(density[f]),
                "pos_str": [],
                "pos_values": [],
                "neg_str": [],
                "neg_values": [],
                "logits_hist_data_bar_heights": [],
                "logits_hist_data_bar_values": [],
            }
            if lens is not None:
                assert decode is not None
                row |= {
                    "pos_str": [decode(int(i)) for i in ti[j]],
                    "pos_values": [float(v) for v in tv[j]],
                    "neg_str": [decode(int(i)) for i in bi[j]],
                    "neg_values": [float(v) for v in bv[j]],
                }
                counts, edges = np.histogram(logits_CV[j][~lens[1]].numpy(), bins=LOGIT_BINS)
                row |= {
                    "logits_hist_data_bar_heights": counts.astype(int).tolist(),
                    "logits_hist_data_bar_values": ((edges[:-1] + edges[1:]) / 2).tolist(),
                }
            hist = histogram_from_index(index, f, None if text else (lambda i: f"[{i}]"))
            heights = np.sum([s["counts"] for s in hist["series"]], axis=0) if hist["series"] else []
            edges = np.asarray(hist["edges"])
            row |= {
                "freq_hist_data_bar_heights": [int(h) for h in heights],
                "freq_hist_data_bar_values": ((edges[:-1] + edges[1:]) / 2).tolist() if len(edges) > 1 else [],
            }
            max_act = 0.0
            for kind in ("top", "random"):
                ids, _ = index.examples(f, kind)
                if not len(ids):
                    continue
                values = index.activations(f, kind)
                for k, (toks, vals) in enumerate(zip(token_text(ids), values)):
                    top = int(np.argmax(vals))
                    max_act = max(max_act, float(vals[top]))
                    acts.append(
                        {
                            "id": record_id(src.model_id, sid, f, kind, k),
                            "tokens": toks,
                            "index": str(f),
                            "layer": sid,
                            "modelId": src.model_id,
                            "maxValue": float(vals[top]),
                            "maxValueTokenIndex": top,
                            "minValue": float(vals.min()),
                            "values": [float(v) for v in vals],
                            "creatorId": src.creator,
                            "createdAt": now,
                            "qualifyingTokenIndex": top,
                            "dataSource": f"saex {kind} example",
                        }
                    )
            row |= {"maxActApprox": max_act, "vectorDefaultSteerStrength": max_act}
            feats.append(row)
        _jsonl_gz(folder / "features" / f"batch-{b}.jsonl.gz", feats)
        _jsonl_gz(folder / "activations" / f"batch-{b}.jsonl.gz", acts)
        bar.update(len(chunk))
    bar.close()
    return folder
