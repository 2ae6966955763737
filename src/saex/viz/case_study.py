"""Case-study figures (Cunningham et al. 2023 §5): Fig. 4 left (token histogram, also Figs. 11-15), Fig. 4
right (output effect of ablating the feature), Fig. 5 (upstream circuit tree).

* ``plot_histogram``: one stacked bar per activation bin, the 5 most common tokens plus "[All Other Tokens]";
* ``plot_output_effect``: the mean Δ log-prob of the tokens whose |Δ| reaches ``threshold`` (the paper shows
  0.1 "for visual clarity"), most decreased first, then the most increased; when none does, the 10 largest
  |Δ| are drawn and the title says so;
* ``plot_circuit``: the tree with the target on the right and each upstream level further left; edge
  width ∝ effect (the largest edge is 6 pt), each edge labelled with the cosine of the two directions.

Every PNG has a JSON of the same name beside it holding exactly the plotted numbers.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from saex.viz import save_figure as _save  # noqa: E402


def _show(token: str) -> str:
    """A token as a plot label: whitespace made visible, mathtext's '$' neutralised."""
    return repr(token)[1:-1].replace("$", r"\$") or "''"


def plot_histogram(hist: dict, path: Path, title: str) -> Path:
    edges = hist["edges"]
    n_bins = len(edges) - 1
    width = (edges[-1] - edges[0]) / n_bins if n_bins and edges[-1] > edges[0] else 1.0
    centres = [(edges[i] + edges[i + 1]) / 2 for i in range(n_bins)]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    bottom = [0] * n_bins
    for s in hist["series"]:
        label = s["label"] if s["other"] else _show(s["label"])
        ax.bar(
            centres,
            s["counts"],
            width=width * 0.95,
            bottom=bottom,
            label=label,
            color="lightgrey" if s["other"] else None,
        )
        bottom = [b + c for b, c in zip(bottom, s["counts"])]
    ax.set_xlabel("activation")
    ax.set_ylabel("token count")
    ax.set_title(f"{title}\n{hist['n']} of {hist['total']} active positions ({hist['source']})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path, {"title": title, "histogram": hist})


def effect_rows(effect: dict, threshold: float, fallback: int = 10) -> tuple[list[dict], bool]:
    """The tokens drawn: every |Δ| ≥ threshold (decreased first, then increased); with none, the
    ``fallback`` largest |Δ|. Returns (rows, whether the threshold selected them)."""
    rows = [r for r in effect["decreased"] if r["delta"] <= -threshold]
    rows += [r for r in effect["increased"] if r["delta"] >= threshold][::-1]
    if rows:
        return rows, True
    both = {r["id"]: r for r in effect["decreased"] + effect["increased"]}.values()
    return sorted(sorted(both, key=lambda r: -abs(r["delta"]))[:fallback], key=lambda r: r["delta"]), False


def plot_output_effect(effect: dict, path: Path, title: str, threshold: float = 0.1) -> Path:
    rows, by_threshold = effect_rows(effect, threshold)
    fig, ax = plt.subplots(figsize=(6.5, max(2.5, 0.3 * len(rows) + 1.2)))
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, [r["delta"] for r in rows], color=["tab:red" if r["delta"] < 0 else "tab:blue" for r in rows])
    ax.set_yticks(ys, [_show(r["token"]) for r in rows], fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("mean Δ log-prob when the feature is ablated")
    note = f"|Δ| ≥ {threshold:g}" if by_threshold else f"no token reaches |Δ| {threshold:g}: the largest shown"
    ax.set_title(f"{title}\n{effect['positions']} positions in {effect['contexts']} contexts; {note}", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return _save(
        fig,
        path,
        {
            "title": title,
            "threshold": threshold,
            "by_threshold": by_threshold,
            "rows": rows,
            "positions": effect["positions"],
            "contexts": effect["contexts"],
        },
    )


def _layout(node: dict, depth: int, pos: dict, counter: list, key: tuple) -> float:
    """y of each node: leaves in order, parents at their children's mean; x = -depth."""
    ys = [_layout(c, depth + 1, pos, counter, key + (i,)) for i, c in enumerate(node["children"])]
    if ys:
        y = sum(ys) / len(ys)
    else:
        y = float(counter[0])
        counter[0] += 1
    pos[key] = (-depth, -y)
    return y


def _short(hook: str) -> str:
    parts = hook.split(".")
    return f"L{parts[1]} {'.'.join(parts[2:]).replace('hook_', '')}" if len(parts) > 2 else hook


def plot_circuit(tree: dict, path: Path, title: str) -> Path:
    pos: dict[tuple, tuple[float, float]] = {}
    leaves = [0]
    _layout(tree, 0, pos, leaves, ())
    edges = []

    def walk(node, key):
        for i, c in enumerate(node["children"]):
            edges.append((key, key + (i,), c))
            walk(c, key + (i,))

    walk(tree, ())
    top = max([e[2]["effect"] for e in edges] or [1.0])
    n_leaves = max(1, leaves[0])
    depth = max(-x for x, _ in pos.values()) + 1
    fig, ax = plt.subplots(figsize=(2.6 * depth + 1.5, 0.7 * n_leaves + 1.5))
    for a, b, child in edges:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        ax.plot([x0, x1], [y0, y1], color="tab:blue", lw=0.5 + 5.5 * child["effect"] / top, alpha=0.7, zorder=1)
        cos = "" if child["cos"] is None else f"cos {child['cos']:.2f}"
        ax.text(
            (x0 + x1) / 2,
            (y0 + y1) / 2,
            f"{child['effect']:.3g}\n{cos}",
            fontsize=7,
            ha="center",
            va="center",
            color="dimgray",
            bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0.5),
        )
    nodes = {(): tree}
    for _, b, child in edges:
        nodes[b] = child
    for key, node in nodes.items():
        x, y = pos[key]
        ax.text(
            x,
            y,
            f"{_short(node['hook'])}\n#{node['feature']}",
            fontsize=8,
            ha="center",
            va="center",
            bbox=dict(boxstyle="round", facecolor="lightyellow" if key else "gold", edgecolor="gray"),
            zorder=2,
        )
    ax.set_xlim(-depth + 0.5, 0.5)
    ax.set_ylim(-n_leaves + 0.3, 0.7)
    ax.axis("off")
    ax.set_title(
        f"{title}\n{tree.get('contexts')} contexts, M = {tree.get('max_activation', 0):.3g}; edge width ∝ "
        "mean drop of the downstream activation when the upstream feature is ablated",
        fontsize=9,
    )
    return _save(fig, path, {"title": title, "tree": tree})
