"""The paper's sweep plots, drawn from ``saex eval`` results (paper App. B Figs. 6-7, App. E Fig. 16).

* ``fvu_vs_l0.png``: mean number of active features against FVU, one series per (method, R) over its α
  sweep (Fig. 6/7: "a smooth tradeoff"); baselines appear as single labelled points.
* ``alive_vs_alpha.png``: fraction of alive features against α, one line per (method, R) (Fig. 16). α = 0
  sits on a linear stretch of a symmetric-log axis.
* ``density/<name>.png``: each dictionary's histogram of log10 feature density; never-fired features are
  counted in the title.

Every PNG has a JSON of the same name holding exactly the plotted numbers.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402

from saex.naming import file_name
from saex.viz import save_figure  # noqa: E402


def _series(results: list[dict]) -> dict[str, list[dict]]:
    """(method, R) -> its dictionaries sorted by α; only dictionaries with an α (trained sweeps)."""
    out: dict[str, list[dict]] = {}
    for r in results:
        if r.get("alpha") is None:
            continue
        out.setdefault(f"{r['kind']} R={r['ratio']:g}", []).append(
            {
                "name": r["name"],
                "alpha": r["alpha"],
                "l0": r["metrics"]["l0"],
                "fvu": r["metrics"]["fvu"],
                "alive_fraction": r["metrics"]["alive_fraction"],
            }
        )
    for pts in out.values():
        pts.sort(key=lambda p: p["alpha"])
    return dict(sorted(out.items()))


def plot_fvu_vs_l0(results: list[dict], path: Path) -> None:
    series = _series(results)
    points = [
        {"name": r["name"], "kind": r["kind"], "l0": r["metrics"]["l0"], "fvu": r["metrics"]["fvu"]}
        for r in results
        if r.get("alpha") is None
    ]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, pts in series.items():
        ax.plot([p["l0"] for p in pts], [p["fvu"] for p in pts], "o-", label=label, markersize=4)
    for p in points:
        ax.plot(p["l0"], p["fvu"], "x", color="black")
        ax.annotate(p["name"], (p["l0"], p["fvu"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("mean number of active features (L0)")
    ax.set_ylabel("fraction of variance unexplained (FVU)")
    ax.set_title("Sparsity against reconstruction (paper Fig. 6/7)")
    if series:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path, {"series": series, "points": points}, dpi=120)


def plot_alive_vs_alpha(results: list[dict], path: Path) -> None:
    series = _series(results)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, pts in series.items():
        ax.plot([p["alpha"] for p in pts], [p["alive_fraction"] for p in pts], "o-", label=label, markersize=4)
    positive = [p["alpha"] for pts in series.values() for p in pts if p["alpha"] > 0]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("sparsity coefficient α")
    ax.set_ylabel("fraction of features alive")
    threshold = results[0]["metrics"]["alive_threshold"] if results else 10
    ax.set_title(f"Alive features (> {threshold} activations) against α (paper Fig. 16)")
    if series:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path, {"alive_threshold": threshold, "series": series}, dpi=120)


def plot_density(result: dict, path: Path) -> None:
    h = result["metrics"]["density_histogram"]
    edges, counts = h["log10_density_edges"], h["counts"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.stairs(counts, edges, fill=True, alpha=0.7)
    ax.set_xlabel("log10 feature density")
    ax.set_ylabel("features")
    ax.set_title(f"{result['name']}: {h['never_fired']} of {result['d_dict']} never fired", fontsize=9)
    save_figure(fig, path, {"name": result["name"], **h}, dpi=120)


def plot_all(results: list[dict], folder: Path) -> list[Path]:
    paths = [folder / "fvu_vs_l0.png", folder / "alive_vs_alpha.png"]
    plot_fvu_vs_l0(results, paths[0])
    plot_alive_vs_alpha(results, paths[1])
    for r in results:
        p = folder / "density" / (file_name(r["name"]) + ".png")
        plot_density(r, p)
        paths.append(p)
    return paths
