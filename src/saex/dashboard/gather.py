"""Summary rows and per-feature payloads of the dashboard, from a feature index and ``saex interpret`` outputs.

The example sections follow what the autointerp protocols sample (paper App. A; Bills et al. 2023; Paulo et
al. 2024): the top-activating fragments, the ranked random sample of activating fragments split into 10
equal-count activation deciles (as ``interpret/protocol.py``'s delphi preset ranks it), and the random
activating fragments themselves. Explanations and scores are read from every ``scores.jsonl`` under the
interpret folder (``<backend>/<preset>/<index>/scores.jsonl``) whose records name this index's identity.

Payloads are produced one feature at a time (a generator), so 50,000 features never hold their examples
in memory at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from saex.dictionaries.folders import find_folders
from saex.errors import SaexError
from saex.features.index import INDEX_JSON, VOCAB_JSON, FeatureIndex
from saex.naming import file_name

ANALYSES = ("histogram", "logit_lens", "output_effect", "upstream")
SCORE_NAMES = {
    "top_random": "top_and_random",
    "top": "top",
    "random": "random",
    "auroc": "auroc",
    "balanced_accuracy": "balanced_accuracy",
}
"""scores.jsonl keys -> payload keys (the scalar scores only; the delphi recall per decile is left out)."""
PRESET_ORDER = ("cunningham2023", "bills2023", "delphi")


def find_index(features: str, name: str | None) -> Path:
    """The index folder that ``--dict`` names among ``features`` (an index folder or a folder of them): a
    folder name, the dictionary's recorded name, or a path; optional when there is only one."""
    if name and (Path(name) / INDEX_JSON).is_file():
        return Path(name)
    if name and (Path(features) / name / INDEX_JSON).is_file():
        return Path(features) / name
    found = find_folders(features, INDEX_JSON, "feature indexes", "--features")
    if name is None:
        if len(found) == 1:
            return next(iter(found.values()))
        raise SaexError(
            f"{features} holds {len(found)} feature indexes; choose one with --dict "
            f"(one of: {', '.join(sorted(found))})"
        )
    for key, folder in found.items():
        recorded = json.loads((folder / INDEX_JSON).read_text()).get("dictionary", {}).get("name")
        if name in (key, folder.name, recorded, recorded and file_name(recorded)):
            return folder
    raise SaexError(
        f"--dict {name!r} is not among the feature indexes in {features}; allowed: {', '.join(sorted(found))}"
    )


def _key_order(key: str) -> tuple:
    """LLM explanations before the offline table's, then the paper's preset first."""
    backend, _, preset = key.rpartition("/")
    rank = PRESET_ORDER.index(preset) if preset in PRESET_ORDER else len(PRESET_ORDER)
    return (backend.startswith("offline"), rank, key)


def load_interpretations(folder: str | Path, identity: dict) -> dict[str, dict[int, dict]]:
    """``"<backend>/<preset>"`` -> feature -> {"explanation", "scores", "skipped"} from every scores.jsonl
    under ``folder`` whose records belong to the index of ``identity``; the last record of a feature wins
    (a resumed run appends). Keys come in display order (LLM first, paper preset first)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SaexError(f"--interpret folder {folder} does not exist")
    found: dict[str, dict[int, dict]] = {}
    for path in sorted(folder.rglob("scores.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except ValueError:  # a line cut by a killed run
                    continue
                if not isinstance(row, dict) or (row.get("identity") or {}).get("index") != identity:
                    continue
                key = (
                    f"{row.get('backend', path.parent.parent.parent.name)}/{row.get('preset', path.parent.parent.name)}"
                )
                scores = row.get("scores") or {}
                found.setdefault(key, {})[int(row["feature"])] = {
                    "explanation": (row.get("explanation") or {}).get("text"),
                    "scores": {SCORE_NAMES[k]: _number(v) for k, v in scores.items() if k in SCORE_NAMES},
                    "skipped": row.get("skipped"),
                }
    if not found:
        raise SaexError(
            f"--interpret folder {folder} holds no saex interpret scores for this feature index "
            "(scores.jsonl records of the same index identity)"
        )
    return {k: found[k] for k in sorted(found, key=_key_order)}


def _number(v):
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _main_score(scores: dict) -> float | None:
    for k in ("top_and_random", "auroc"):
        if k in scores:
            return scores[k]
    return None


def _sig6(a: np.ndarray) -> list:
    """Values rounded to 6 significant digits (float32 holds about 7), so the files stay small; exact zeros
    are written as 0. Works on any shape (nested lists out)."""
    a = np.asarray(a, dtype=np.float64)
    nz = a != 0
    mag = np.zeros_like(a)
    mag[nz] = np.floor(np.log10(np.abs(a[nz])))
    dec = np.clip(5 - mag, -300, 300)
    up, down = 10.0 ** np.maximum(dec, 0), 10.0 ** np.maximum(-dec, 0)
    out = np.where(dec >= 0, np.round(a * up) / up, np.round(a / down) * down).astype(object)
    out[~nz] = 0
    return out.tolist()


def decile_of(maxes: np.ndarray) -> np.ndarray:
    """Equal-count activation decile (0 lowest .. 9 highest) of each example, as the delphi preset ranks
    the random activating sample (``interpret/protocol.py``)."""
    n = len(maxes)
    out = np.empty(n, dtype=np.int64)
    out[np.argsort(maxes, kind="stable")] = np.arange(n) * 10 // max(n, 1)
    return out


def check_analyses(analyses: dict[int, dict]) -> None:
    """Refuse analysis payloads under a name the dashboard does not show (before anything is written)."""
    for f, analysis in analyses.items():
        unknown = sorted(set(analysis or {}) - set(ANALYSES))
        if unknown:
            raise SaexError(f"unknown analysis {unknown[0]!r} for feature {f}; allowed: {', '.join(ANALYSES)}")


class Gatherer:
    """Rows and payloads of one feature index (and its interpretations, when given)."""

    def __init__(
        self,
        index: FeatureIndex,
        interpretations: dict[str, dict[int, dict]] | None = None,
        examples: int = 20,
        decile_examples: int = 2,
        limit: int | None = None,
    ):
        self.index = index
        self.interp = interpretations or {}
        self.examples, self.decile_examples = examples, decile_examples
        n = index.n_features if limit is None else min(limit, index.n_features)
        self.features = list(range(n))
        self.has_text = (index.path / VOCAB_JSON).is_file()
        self.density_F, self.max_F = index.density(), index.t["max"].numpy()
        # the score and explanation of the index table: the first source in display order that explains any
        self.primary = next((k for k, v in self.interp.items() if any(r["explanation"] for r in v.values())), None)

    def meta(self) -> dict:
        m = self.index.meta
        d = m.get("dictionary", {})
        out = {
            "dictionary": d.get("name", self.index.path.name),
            "hook": m.get("hook"),
            "model": m.get("model"),
            "architecture": m.get("architecture"),
            "d_in": m.get("d_in"),
            "d_dict": m.get("d_dict"),
            "alpha": d.get("alpha"),
            "fragments": m.get("n_fragments"),
            "fragment_length": m.get("fragment_length"),
            "features_shown": len(self.features),
            "index": str(self.index.path),
            "interpretations": list(self.interp) or None,
            "score": f"{'top-and-random' if self.primary and not self.primary.endswith('/delphi') else 'AUROC'} "
            f"of {self.primary}"
            if self.primary
            else None,
        }
        if not self.has_text:
            out["note"] = "the index was built with --no-decode: tokens show as [id]"
        return out

    def rows(self) -> list[dict]:
        density, max_F = self.density_F, self.max_F
        prim = self.interp.get(self.primary, {}) if self.primary else {}
        out = []
        for f in self.features:
            r = prim.get(f) or {}
            out.append(
                {
                    "id": f,
                    "density": _finite(density[f]),
                    "max": _finite(max_F[f]),
                    "score": _main_score(r.get("scores") or {}),
                    "explanation": r.get("explanation"),
                }
            )
        return out

    def payloads(
        self, analyses: dict[int, dict] | None = None, computed: Callable[[int], tuple[dict, dict]] | None = None
    ) -> Iterator[dict]:
        """One payload per feature, made when asked for. ``computed(f) -> (panels, not_computed reasons)``
        supplies analysis panels feature by feature (``analyses.Analyses``); ``analyses`` (given panels)
        take precedence over them."""
        analyses = analyses or {}
        for f in self.features:
            panels, notes = computed(f) if computed else ({}, {})
            given = analyses.get(f) or {}
            check_analyses({f: given})
            panels = {**panels, **given}
            yield self.payload(f, panels, {k: v for k, v in notes.items() if panels.get(k) is None})

    def payload(self, f: int, analysis: dict, not_computed: dict | None = None) -> dict:
        """``not_computed``: panel -> why it is empty (shown on the page)."""
        check_analyses({f: analysis})
        idx = self.index
        interp = {k: v[f] for k, v in self.interp.items() if f in v}
        main = interp.get(self.primary or "") or {}
        out = {
            "id": f,
            "dictionary": idx.meta.get("dictionary", {}).get("name", idx.path.name),
            "hook": idx.meta.get("hook"),
            "density": _finite(self.density_F[f]),
            "max": _finite(self.max_F[f]),
            "explanation": main.get("explanation"),
            "scores": {
                k: {"top": None, "random": None, "top_and_random": None, **v["scores"]} for k, v in interp.items()
            },
            "explanations": {k: v["explanation"] for k, v in interp.items()},
            "skipped": {k: v["skipped"] for k, v in interp.items() if v.get("skipped")},
            "sections": self.sections(f),
        }
        for k in ANALYSES:
            out[k] = analysis.get(k)
        out["not_computed"] = dict(not_computed or {})
        return out

    def sections(self, f: int) -> list[dict]:
        idx = self.index
        top_ids, _ = idx.examples(f, "top")
        top_acts = idx.activations(f, "top")
        sections = [
            {
                "title": f"Top activations ({min(len(top_ids), self.examples)} of the {len(top_ids)} "
                "highest-activating fragments)",
                "examples": self._examples(top_ids[: self.examples], top_acts[: self.examples]),
            }
        ]
        rand_ids, _ = idx.examples(f, "random")
        rand_acts = idx.activations(f, "random")
        if len(rand_ids):
            maxes = rand_acts.max(1)
            dec = decile_of(maxes)
            for d in range(9, -1, -1):
                members = np.flatnonzero(dec == d)[: self.decile_examples]  # in the sample's random order
                if not len(members):
                    continue
                lo, hi = maxes[dec == d].min(), maxes[dec == d].max()
                sections.append(
                    {
                        "title": f"Decile {d + 1} of 10{' (highest)' if d == 9 else ' (lowest)' if d == 0 else ''}"
                        f": max activation {lo:.3g} to {hi:.3g}",
                        "examples": self._examples(rand_ids[members], rand_acts[members]),
                    }
                )
        k = min(len(rand_ids), self.examples)
        sections.append(
            {
                "title": f"Random activating fragments ({k} of a sample of {len(rand_ids)})",
                "examples": self._examples(rand_ids[:k], rand_acts[:k]),
            }
        )
        return sections

    def _examples(self, ids: np.ndarray, acts_NL: np.ndarray) -> list[dict]:
        if not len(ids):
            return []
        if self.has_text:
            toks = self.index.token_strings(ids)
        else:
            toks = [[f"[{t}]" for t in row] for row in self.index.tokens(ids).tolist()]
        return [{"tokens": t, "acts": a} for t, a in zip(toks, _sig6(acts_NL[: len(toks)]))]


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
