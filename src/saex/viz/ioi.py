"""IOI patching curves (paper Fig. 3; with several layers, Fig. 17): KL(patched ‖ target) against the
number of features patched (left) and against the mean edit magnitude (right), one line per dictionary."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from saex.viz import save_figure  # noqa: E402


def _curve(r: dict, mode: str) -> list[dict]:
    if mode == "greedy":
        pts = [p for p in r["greedy"]["records"] if p["tau"] is not None]
        return sorted(pts, key=lambda p: p["n_patched"])
    return r["quick"]["records"]


def _label(r: dict) -> str:
    return r["name"] + (f" (α={r['alpha']:g})" if r.get("alpha") is not None else "")


def plot_ioi(results: dict[int, dict[str, dict]], out: Path, mode: str) -> list[Path]:
    modes = ["quick", "greedy"] if mode == "both" else [mode]
    layers = sorted(results)
    paths = []
    for m in modes:
        fig, axes = plt.subplots(len(layers), 2, figsize=(11, 4 * len(layers)), squeeze=False)
        data: dict = {}
        for row, layer in enumerate(layers):
            left, right = axes[row]
            data[layer] = {}
            for name, r in results[layer].items():
                pts = _curve(r, m)
                data[layer][name] = {"label": _label(r), "kl_base": r["kl_base"], "points": pts}
                left.plot([max(p["n_patched"], 0.8) for p in pts], [p["kl"] for p in pts], "-", label=_label(r))
                right.plot([p["edit"] for p in pts], [p["kl"] for p in pts], "-", label=_label(r))
            left.set_xscale("log")
            left.set_xlabel("features patched")
            right.set_xlabel("mean edit magnitude ‖x′ − x‖")
            for ax in (left, right):
                ax.set_ylabel("KL(patched ‖ target)")
                ax.set_title(f"layer {layer} ({m})", fontsize=9)
                ax.grid(alpha=0.3)
            left.legend(fontsize=7)
        name = ("fig3" if len(layers) == 1 else "fig17") + f"_{m}"
        fig.tight_layout()
        paths.append(save_figure(fig, out / f"{name}.png", {"mode": m, "layers": data}, tight=False))
    return paths
