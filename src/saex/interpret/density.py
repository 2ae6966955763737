"""Autointerp scores at matched activation density (issue 13, item 5).

Cunningham et al. (2023, §3.3, Fig. 2) compare methods by their mean autointerp score. A scorer that
rewards activations the current token determines also rewards dense features: the offline table scores
random directions above PCA, ICA and the neurons, and a method whose features are denser can win on
density alone. So each method's main score is also reported per activation-density bin, and an SAE is
compared with a baseline within the bins where both have features, so that density cannot stand in for
interpretability.

Density is the fraction of indexed tokens on which a feature is non-zero (``FeatureIndex.density``). Bins
are fixed decades, so that every method and every run is binned alike: ``[1e-5, 1e-4)``, ...,
``[1e-1, 1]`` (the top bin closed: a feature non-zero on every token, as a signed direction is, goes there),
``< 1e-5`` below them, and ``never fired`` for density 0 or a record without one. A scored feature needs 20
activating fragments, so the last two are empty in practice; they exist so that no feature is dropped.
Undefined scores count as ``NO_INFORMATION`` (0 for a correlation), as in the headline means.
"""

from __future__ import annotations

import math

from saex.interpret.scoring import NO_INFORMATION, mean_ci95

EDGES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
NEVER, BELOW = "never fired", "< 1e-5"
MIN_FEATURES = 5
"""A bin enters the matched difference only when both methods have at least this many features in it."""


def _decade(x: float) -> str:
    return "1" if x == 1 else f"1e{round(math.log10(x))}"


def bin_labels() -> list[str]:
    """Every bin, sparsest first."""
    spans = [f"[{_decade(lo)}, {_decade(hi)})" for lo, hi in zip(EDGES[:-2], EDGES[1:-1])]
    return [NEVER, BELOW, *spans, f"[{_decade(EDGES[-2])}, {_decade(EDGES[-1])}]"]


def density_bin(density) -> str:
    """The label of the bin a density falls in."""
    if density is None or not math.isfinite(density) or density <= 0:
        return NEVER
    if density < EDGES[0]:
        return BELOW
    labels = bin_labels()[2:]
    for label, hi in zip(labels, EDGES[1:]):
        if density < hi:
            return label
    return labels[-1]  # density 1 (and, defensively, above)


def _score(row: dict, score: str):
    return (row.get("scores") or {}).get(score)


def by_density(rows: list[dict], score: str) -> dict[str, dict]:
    """Bin label -> ``mean_ci95`` of the score over the scored rows in it (undefined as no information)."""
    groups: dict[str, list] = {label: [] for label in bin_labels()}
    for r in rows:
        if "scores" in r:
            groups[density_bin(r.get("density"))].append(_score(r, score))
    return {label: mean_ci95(v, undefined_as=NO_INFORMATION[score]) for label, v in groups.items()}


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def matched_difference(sae: dict[str, dict], baseline: dict[str, dict], min_features: int = MIN_FEATURES) -> dict:
    """The SAE's mean score minus the baseline's, within the density bins where both have ``min_features``.

    ``sae`` / ``baseline``: bin label -> {"mean", "ci95", "n"} (a ``by_density`` result, or its JSON).
    The per-bin differences are averaged with weights proportional to the SAE's features in each bin: the
    baseline re-weighted to the SAE's density distribution (direct standardisation), so the result is "how
    much better the SAE's features are than baseline features as dense as they are". Its 95% CI is
    1.96·√Σ w²(se_sae² + se_baseline²) with se = ci95 / 1.96 per bin. ``diff`` is None without such a bin.
    """
    bins, variances = [], []
    for label in bin_labels():
        s, b = sae.get(label) or {}, baseline.get(label) or {}
        if min(s.get("n") or 0, b.get("n") or 0) < min_features or not (_ok(s.get("mean")) and _ok(b.get("mean"))):
            continue
        bins.append(
            {
                "bin": label,
                "sae": s["mean"],
                "baseline": b["mean"],
                "diff": s["mean"] - b["mean"],
                "n_sae": s["n"],
                "n_baseline": b["n"],
            }
        )
        variances.append(sum((x["ci95"] / 1.96) ** 2 if _ok(x.get("ci95")) else math.nan for x in (s, b)))
    out = {
        "diff": None,
        "ci95": None,
        "bins": bins,
        "n_sae": sum(x["n_sae"] for x in bins),
        "n_baseline": sum(x["n_baseline"] for x in bins),
        "min_features": min_features,
    }
    if bins:
        w = [x["n_sae"] / out["n_sae"] for x in bins]
        out["diff"] = sum(wi * x["diff"] for wi, x in zip(w, bins))
        var = sum(wi * wi * v for wi, v in zip(w, variances))
        out["ci95"] = 1.96 * math.sqrt(var) if math.isfinite(var) else None
    return out


def density_comparison(rows: dict[str, list[dict]], baselines: set[str], score: str) -> dict:
    """``comparison.json``'s "by_density" and "density_matched" entries.

    ``rows``: method -> its scores.jsonl records; ``baselines``: the methods that are baselines (the others
    are compared with each of them). "density_matched" also gives the plain (unmatched) difference of the
    means, so the part of a gap that density accounts for can be read off.
    """
    binned = {name: by_density(rs, score) for name, rs in rows.items()}
    overall = {
        name: mean_ci95([_score(r, score) for r in rs if "scores" in r], undefined_as=NO_INFORMATION[score])
        for name, rs in rows.items()
    }
    pairs: dict[str, dict] = {}
    for sae in (n for n in rows if n not in baselines):
        for base in (n for n in rows if n in baselines):
            d = matched_difference(binned[sae], binned[base])
            a, b = overall[sae]["mean"], overall[base]["mean"]
            d["unmatched_diff"] = a - b if _ok(a) and _ok(b) else None
            pairs.setdefault(sae, {})[base] = d
    return {
        "by_density": {
            "score": score,
            "undefined_as": NO_INFORMATION[score],
            "edges": list(EDGES),
            "bins": bin_labels(),
            "methods": binned,
        },
        "density_matched": {
            "score": score,
            "min_features": MIN_FEATURES,
            "weights": "the SAE's features per bin",
            "pairs": pairs,
        },
    }
