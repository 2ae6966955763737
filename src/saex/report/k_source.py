"""Where the top-K baselines' K came from, and whether that SAE converged (paper App. G, Fig. 18).

The paper sets K of top-k PCA / ICA to the mean L0 of its main SAE. ``saex baselines --k-from`` measures it on
a dictionary folder and records, in each top-K baseline's ``cfg.json`` metadata, that folder (``k_from``) and
the convergence verdict its training wrote (``k_from_convergence``: ``{"converged": bool, "reasons": [str],
...}``). A K read off a dictionary that was still changing is not the paper's K, so the claims that compare
against top-K baselines are not judged on it (``claims._usable``).

Older runs have no such record: the answer is then "unknown" and the claims judge as before.
"""

from __future__ import annotations

import json
from pathlib import Path

from saex.report.collect import Run


def _metadata(folder: Path) -> dict:
    try:
        data = json.loads((folder / "cfg.json").read_text())
    except (OSError, ValueError):
        return {}
    return (data.get("metadata") or {}) if isinstance(data, dict) else {}


def k_source_convergence(run: Run, hook: str) -> dict | None:
    """{"dictionary": folder name, "converged": bool | None, "reasons": [str]} of the SAE whose L0 set K at
    ``hook``; None when no top-K baseline there took K from a dictionary."""
    folders = sorted((run.root / "baselines" / hook).glob("*_topk"))
    folders += [
        Path(r["path"])
        for r in (run.eval.get(hook) or {}).get("results") or []
        if str(r.get("kind") or "").endswith("_topk") and r.get("path")
    ]
    for folder in folders:
        meta = _metadata(folder)
        if not meta.get("k_from"):
            continue
        record = meta.get("k_from_convergence")
        converged = record.get("converged") if isinstance(record, dict) else None
        return {
            "dictionary": Path(meta["k_from"]).name,
            "converged": converged if isinstance(converged, bool) else None,
            "reasons": [str(r) for r in (record or {}).get("reasons") or []] if converged is False else [],
        }
    return None
