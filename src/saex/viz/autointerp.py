"""Autointerp score plots with 95% CIs, one bar per method (paper Figs. 2, 9, 10, 18 analogues).

One panel per score (top-and-random, top-only, random-only; or AUROC and balanced accuracy for the delphi
preset), methods grouped by hook point; the null (shuffled-explanation) level is drawn as a marker on each
bar. Means are over every scored feature, an undefined score counted as no information (0 for a
correlation); a method's label gives how many were undefined. Every PNG is written beside a JSON of the
plotted numbers.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from saex.viz import save_figure  # noqa: E402

TITLES = {
    "top_random": "top-and-random",
    "top": "top-only",
    "random": "random-only",
    "auroc": "detection AUROC",
    "balanced_accuracy": "detection balanced accuracy",
}


def plot_scores(methods: list[dict], keys, folder: Path, label: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    methods = sorted(methods, key=lambda m: (m["hook"], m["method"]))
    paths = []
    for k in keys:
        data = [
            {
                "method": m["method"],
                "hook": m["hook"],
                "kind": m["kind"],
                **(m.get(k) or {}),
                "null": (m.get(f"null_{k}") or {}).get("mean"),
            }
            for m in methods
        ]
        fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(data) + 2), 4))
        xs = range(len(data))
        means = [float(d.get("mean") or 0.0) for d in data]
        errs = [float(d.get("ci95") or 0.0) for d in data]
        ax.bar(xs, means, yerr=errs, capsize=3, color="#4c72b0")
        nulls = [(x, d["null"]) for x, d in zip(xs, data) if d["null"] is not None]
        if nulls:
            ax.plot(
                [x for x, _ in nulls],
                [v for _, v in nulls],
                "_",
                color="red",
                markersize=18,
                label="shuffled-explanation null",
            )
            ax.legend(fontsize=8)
        ax.set_xticks(list(xs))
        names = [
            f"{d['method']}\n{d['hook']}" + (f"\n{d['undefined']} undefined" if d.get("undefined") else "")
            for d in data
        ]
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(TITLES.get(k, k))
        ax.set_title(f"{TITLES.get(k, k)}, mean ± 95% CI, undefined counted as no information\n{label}", fontsize=9)
        ax.axhline(0, color="black", linewidth=0.5)
        paths.append(save_figure(fig, folder / f"{k}.png", {"score": k, "scorer": label, "methods": data}, dpi=120))
    return paths
