"""The report's own figures: what the stages do not draw (each stage plots one hook; the paper's
autointerp figures compare methods across layers).

* ``grouped_bars``: paper Figs. 2, 9, 10, 18: mean score ± 95% CI, one group per layer, one bar per method;
* ``score_vs_ratio``: paper Fig. 8: mean score ± 95% CI against R at the main α, one line per layer, with
  the best baseline of each layer as a dashed line.

As in ``saex.viz``: matplotlib Agg, a PNG beside a JSON of exactly the plotted numbers.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from saex.viz import save_figure as _save  # noqa: E402


def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) and x == x else 0.0


def grouped_bars(groups: dict[str, dict[str, dict]], path: Path, title: str, ylabel: str) -> Path:
    """``groups``: group label (a layer) -> method -> {"mean", "ci95", "n"}; methods keep their order."""
    methods: list[str] = []
    for per in groups.values():
        methods += [m for m in per if m not in methods]
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(groups) * max(1, len(methods)) * 0.35 + 2), 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i, per in enumerate(groups.values()) if m in per]
        stats = [per[m] for per in groups.values() if m in per]
        ax.bar(
            xs,
            [_num(s.get("mean")) for s in stats],
            width,
            yerr=[_num(s.get("ci95")) for s in stats],
            capsize=2,
            label=m,
            color=colors[j % len(colors)],
        )
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups), fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if methods:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path, {"title": title, "score": ylabel, "groups": groups})


def score_vs_ratio(
    series: dict[str, dict[str, dict]], baselines: dict[str, float], path: Path, title: str, ylabel: str
) -> Path:
    """``series``: layer label -> {R (as text): stat}; ``baselines``: layer label -> best baseline mean."""
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, pts) in enumerate(series.items()):
        rs = sorted(pts, key=float)
        c = colors[i % len(colors)]
        ax.errorbar(
            [float(r) for r in rs],
            [_num(pts[r].get("mean")) for r in rs],
            yerr=[_num(pts[r].get("ci95")) for r in rs],
            fmt="o-",
            capsize=3,
            color=c,
            label=f"SAE {label}",
        )
        if label in baselines:
            ax.axhline(baselines[label], color=c, linestyle="--", linewidth=1, label=f"best baseline {label}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("dictionary ratio R = d_dict / d_in")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    return _save(fig, path, {"title": title, "score": ylabel, "series": series, "best_baseline": baselines})
