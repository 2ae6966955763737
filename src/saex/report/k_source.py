"""Where the top-K baselines' K came from, and whether that SAE converged (paper App. G, Fig. 18).

The paper sets K of top-k PCA / ICA to the mean L0 of its main SAE. ``saex baselines --k-from`` measures it on
a dictionary folder and records that folder in ``baselines.json`` (``config.k_from``); the training run
records per member whether it converged: ``cfg.json`` → ``metadata.convergence`` =
``{"converged": bool, "reasons": [str], ...}``, and ``run.json`` beside the members → ``convergence`` →
``{member: the same}``. A K read off a dictionary that was still changing is not the paper's K, so the claims
that compare against top-K baselines are not judged on it (``claims._usable``).

Older runs have no convergence record: the answer is then "unknown" and the claims judge as before.
"""

from __future__ import annotations

import json
from pathlib import Path

from saex.report.collect import Run


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _baselines_json(run: Run, hook: str) -> dict | None:
    """The baselines.json of the hook's top-K baselines: the reproduce layout first, then the folder that
    evaluation recorded for a top-K dictionary (a run assembled by hand)."""
    places = [run.root / "baselines" / hook / "baselines.json"]
    places += [Path(r["path"]).parent / "baselines.json" for r in (run.eval.get(hook) or {}).get("results") or []
               if str(r.get("kind") or "").endswith("_topk") and r.get("path")]
    for p in places:
        if (data := _read(p)) is not None:
            return data
    return None


def k_source_convergence(run: Run, hook: str) -> dict | None:
    """{"dictionary": folder name, "converged": bool | None, "reasons": [str]} of the SAE whose L0 set K at
    ``hook``; None when K was not taken from a dictionary (or no baselines.json is found)."""
    k_from = ((_baselines_json(run, hook) or {}).get("config") or {}).get("k_from")
    if not k_from:
        return None
    folder = Path(k_from)
    if not folder.is_dir():  # the run folder was moved after the baselines were built
        folder = run.root / "dicts" / hook / folder.name
    record = ((_read(folder / "cfg.json") or {}).get("metadata") or {}).get("convergence")
    if not isinstance(record, dict):
        record = ((_read(folder.parent / "run.json") or {}).get("convergence") or {}).get(folder.name)
    if not isinstance(record, dict) or not isinstance(record.get("converged"), bool):
        return {"dictionary": folder.name, "converged": None, "reasons": []}
    return {"dictionary": folder.name, "converged": record["converged"],
            "reasons": [str(r) for r in record.get("reasons") or []]}
