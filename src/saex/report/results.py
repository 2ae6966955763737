"""``report/results.json``: the headline numbers of a reproduction, machine-readable, each with the hashes of
what produced it (the activation store's content hash, the dictionary's weights sha256, and the keys of the
pipeline stages in reproduce.json), plus every claim's verdict.

Numbers are copied from the stage outputs, never recomputed, so they equal what ``saex eval``,
``saex interpret``, ``saex ioi`` and ``saex case-study`` wrote.
"""

from __future__ import annotations

from typing import Any

import saex
from saex.files import json_ready
from saex.report.collect import SPLICED, Run, main_result, short_splits, stage_keys, store_rows

FORMAT = "saex.report.results"
MAIN_METRICS = ("fvu", "mse", "l0", "alive", "dead", "alive_fraction", "cosine")
SCORES = ("top_random", "top", "random", "auroc", "balanced_accuracy")


def main_saes(run: Run) -> dict[str, dict]:
    out = {}
    for hook in run.hooks:
        r = main_result(run, hook)
        if r is None:
            continue
        m, sp = r.get("metrics") or {}, r.get("spliced") or {}
        out[hook] = {
            "name": r["name"],
            "kind": r.get("kind"),
            "alpha": r.get("alpha"),
            "ratio": r.get("ratio"),
            "d_dict": r.get("d_dict"),
            **{k: m.get(k) for k in MAIN_METRICS},
            **{k: sp.get(k) for k in SPLICED},
            "provenance": {
                "store_hash": (r.get("identity") or {}).get("store_hash"),
                "weights_sha256": r.get("weights_sha256"),
                "stage_keys": stage_keys(run, ("harvest", "train", "eval"), hook),
            },
        }
    return out


def autointerp(run: Run) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for scorer, per_hook in run.interpret.items():
        for hook, data in per_hook.items():
            for m in data["comparison"].get("methods") or []:
                out.setdefault(scorer, {}).setdefault(hook, {})[m["method"]] = {
                    "kind": m.get("kind"),
                    "alpha": m.get("alpha"),
                    "ratio": m.get("ratio"),
                    "considered": m.get("considered"),
                    "scored": m.get("scored"),
                    **{k: m[k] for k in SCORES if k in m},
                    "provenance": {
                        "weights_sha256": data["hashes"].get(m["method"]),
                        "store_hash": ((run.features.get(hook) or {}).get(m["method"]) or {})
                        .get("identity", {})
                        .get("store_hash"),
                        "stage_keys": stage_keys(run, ("harvest", "train", "baselines", "features", "interpret"), hook),
                    },
                }
    return out


def build_results(run: Run, extra: dict, claims: list[dict]) -> dict:
    """The results.json object; ``extra`` holds what the sections gathered (table1, table2, ioi, case_study,
    the architecture comparison)."""
    store = run.store or {}
    model = store.get("model") or run.reproduce.get("model") or {}
    out: dict[str, Any] = {
        "format": FORMAT,
        "format_version": 1,
        "saex_version": saex.__version__,
        "run": {
            "preset": run.reproduce.get("preset"),
            "config": run.config,
            "stage_keys": {n: s.get("key") for n, s in run.stages.items() if isinstance(s, dict)},
            "stage_status": {n: s.get("status") for n, s in run.stages.items() if isinstance(s, dict)},
        },
        "store": {
            "model": model.get("name") or run.config.get("model"),
            "model_weights_sha256": model.get("weights_sha256"),
            "corpus": (store.get("corpus") or {}).get("spec") or run.config.get("corpus"),
            "rows": {"train": store_rows(store, "train"), "heldout": store_rows(store, "heldout")},
            "short_splits": short_splits(store),
            "hashes": store.get("hashes") or {},
        }
        if store or run.reproduce
        else None,
        "main_sae": main_saes(run),
        "autointerp": autointerp(run),
    }
    for key in ("training", "table1", "table2", "ioi", "case_study", "architectures"):
        out[key] = extra.get(key)
    if out["ioi"]:
        out["ioi"]["stage_keys"] = stage_keys(run, ("harvest", "train", "ioi"))
    if out["case_study"]:
        out["case_study"]["stage_keys"] = stage_keys(run, ("harvest", "train", "features", "case_study"))
    out["claims"] = claims
    out["problems"] = list(run.problems)
    return json_ready(out)
