"""Per-feature scores and per-method summaries of automated interpretability (used by ``saex interpret`` and the
report): the scores of one sample under one explanation, the method's mean ± 95% CI of each score, and the
score's correlation with activation skew and kurtosis (paper Table 2)."""

from __future__ import annotations

import math

import numpy as np

from saex.features.index import FeatureIndex
from saex.features.records import Explanation
from saex.interpret.protocol import FeatureSample
from saex.interpret.scoring import NO_INFORMATION, auroc, balanced_accuracy, mean_ci95, pooled_pearson


def score_sample(sample: FeatureSample, explanation: Explanation, simulator, detector, preset: str) -> dict:
    """The scores of one feature's sample under one explanation."""
    if preset != "delphi":
        records = sample.score_top + sample.score_random
        pred = simulator.simulate(explanation, records)
        true = [r.activations for r in records]
        k = len(sample.score_top)
        return {
            "top_random": pooled_pearson(true, pred),
            "top": pooled_pearson(true[:k], pred[:k]),
            "random": pooled_pearson(true[k:], pred[k:]),
        }
    records = sample.activating + sample.non_activating
    if detector is not None:
        window = np.asarray(detector.detect(explanation, records), dtype=np.float64)
        called = window >= 0.5
    else:  # a window is called active when the simulation predicts activation 1 or more on some token
        window = np.array([float(np.max(p)) if len(p) else 0.0 for p in simulator.simulate(explanation, records)])
        called = window >= 1.0
    n = len(sample.activating)
    dec = np.asarray(sample.decile)
    return {
        "auroc": auroc(window[:n], window[n:]),
        "balanced_accuracy": balanced_accuracy(called[:n], called[n:]),
        "recall_by_decile": [float(called[:n][dec == d].mean()) if (dec == d).any() else None for d in range(10)],
    }


def clean(x):
    """JSON-ready: NaN becomes null (reported as undefined), numpy scalars become floats."""
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def summarize_method(name: str, index: FeatureIndex, rows: list[dict], nulls: list[dict], preset: str) -> dict:
    meta = index.meta["dictionary"]
    keys = ("top_random", "top", "random") if preset != "delphi" else ("auroc", "balanced_accuracy")
    scored = [r for r in rows if "scores" in r]
    out = {
        "method": name,
        "kind": meta.get("baseline") or meta.get("arch") or index.meta.get("architecture"),
        "hook": index.meta["hook"],
        "d_dict": index.meta["d_dict"],
        "alpha": meta.get("alpha"),
        "ratio": index.meta["d_dict"] / index.meta["d_in"],
        "considered": len(rows),
        "scored": len(scored),
        "skipped": len(rows) - len(scored),
        "failed": sum(1 for r in rows if r.get("failed")),  # of the skipped: the backend gave no answer
    }
    for k in keys:  # over every scored feature: an undefined score counts as no information (0 for r)
        out[k] = mean_ci95([r["scores"][k] for r in scored], undefined_as=NO_INFORMATION[k])
        if nulls:
            out[f"null_{k}"] = mean_ci95([r["scores"][k] for r in nulls], undefined_as=NO_INFORMATION[k])
    # an entropy is undefined only where a record lacks it: missing data, left out rather than counted as 0
    out["token_entropy"] = mean_ci95([r.get("token_entropy") for r in scored])
    first = keys[0]
    out |= {f"corr_{first}_{m}": v["r"] for m, v in moment_correlations(scored, preset).items()}
    out["first_features"] = [
        {"feature": r["feature"], "explanation": r["explanation"]["text"], "score": r["scores"][first]}
        for r in scored[:5]
    ]
    return clean(out)


def count_rows(rows: list[dict]) -> dict[str, int]:
    """How the considered features of a run ended: scored; failed (the backend gave no explanation, or no usable
    simulation of any record: left out of every mean, asked again by the next run); or skipped for too few
    activating fragments. ``considered = scored + failed + too_few_fragments``."""
    failed = [r["failed"] for r in rows if r.get("failed")]
    scored = sum(1 for r in rows if "scores" in r)
    return {
        "considered": len(rows),
        "scored": scored,
        "failed": len(failed),
        "failed_explanation": failed.count("explanation"),
        "failed_scoring": len(failed) - failed.count("explanation"),
        "too_few_fragments": len(rows) - scored - len(failed),
    }


def failure_message(counts: dict[str, int], last_error: str | None, stopped: bool = False) -> str:
    """The one-line error of a run in which no feature was scored because every one asked for failed (``stopped``:
    the run gave up early, ``counts`` are those of the features asked)."""
    fe, fs, few = counts["failed_explanation"], counts["failed_scoring"], counts["too_few_fragments"]
    parts = [f"{fe} got no explanation"] if fe else []
    parts += [f"{fs} no usable simulation"] if fs else []
    parts += [f"{few} had too few activating fragments"] if few else []
    what, why = (
        ("explained and scored", "the backend gave no usable answer") if fs else ("explained", "every request failed")
    )
    of = f"the {counts['considered']} features asked" if stopped else f"{counts['considered']} features"
    tail = "; the run stopped early: run the same command again once the endpoint answers" if stopped else ""
    return f"0 of {of} were {what}: {why} ({'; '.join(parts)}; last error: {last_error or 'none recorded'}){tail}"


def failure_line(counts: dict[str, int]) -> str | None:
    """comparison.md's sentence on the features that failed, or None when none did."""
    if not counts.get("failed"):
        return None
    return (
        f"Failed: {counts['failed']} of {counts['considered']} features got no answer from the backend "
        f"({counts['failed_explanation']} no explanation, {counts['failed_scoring']} no usable simulation); they are "
        "left out of every mean (see the Backend counts), and the same command run again asks for them again."
    )


def main_score(preset: str) -> str:
    return "top_random" if preset != "delphi" else "auroc"


def moment_correlations(scored: list[dict], preset: str) -> dict[str, dict]:
    """Paper Table 2: Pearson r between the main score and the activation skew / kurtosis over features.

    Unlike the headline means, only defined scores enter (``undefined`` counts those left out): a
    correlation asks how the score varies with the moment, and a block of features put at 0 because the
    simulation was constant would add a cluster whose position is set by the convention, not by a measured
    score, moving r in whichever direction those features' skew happens to lie."""
    first = main_score(preset)
    out = {}
    for moment in ("skew", "kurtosis"):
        pairs = [
            (r["scores"][first], r[moment])
            for r in scored
            if r["scores"][first] is not None and r.get(moment) is not None
        ]
        r = (
            pooled_pearson([np.array([p[0] for p in pairs])], [np.array([p[1] for p in pairs])])
            if len(pairs) > 2
            else None
        )
        out[moment] = clean(
            {"r": r, "n": len(pairs), "score": first, "undefined": sum(row["scores"][first] is None for row in scored)}
        )
    return out
