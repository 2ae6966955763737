"""The architecture comparison of ``saex compare`` (docs/architectures.md): which SAE to train on a model.

Reads a comparison run folder (``saex.reproduce.architectures``: ``eval/``, ``interpret/``, ``dicts/``) and
writes, under ``comparison/``:

* ``fvu_vs_l0.png``, ``ce_recovered_vs_l0.png``, ``dead_vs_l0.png``: one curve per architecture over its
  sparsity levels, held-out L0 on a log axis (each PNG beside a JSON of exactly the plotted numbers);
* ``autointerp.png``: the offline autointerp score (``top_random``, mean ± 95% CI over the scored features)
  of each architecture's dictionary nearest the matched L0;
* ``comparison.json`` (every number above, per dictionary) and ``comparison.md`` (the same as tables).

Dead fraction here is the share of features that fired on at most ``alive_threshold`` held-out activations
(``saex eval``); CE recovered is (CE_zero − CE_spliced) / (CE_zero − CE_clean) with the reconstruction spliced
in at every position (docs/evaluation.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402

from saex.files import write_json_atomic  # noqa: E402
from saex.report.collect import Run  # noqa: E402
from saex.report.sections import Figure, Section, Table, fmt  # noqa: E402
from saex.viz import save_figure  # noqa: E402

PLOTS = {
    "fvu": ("fvu_vs_l0.png", "FVU (held-out)"),
    "ce_recovered": ("ce_recovered_vs_l0.png", "CE recovered (spliced)"),
    "dead_fraction": ("dead_vs_l0.png", "dead fraction (held-out)"),
}


def collect(root: Path) -> dict:
    """Per architecture, its dictionaries' held-out numbers (sorted by L0), and the autointerp rows."""
    rows: dict[str, list[dict]] = {}
    for path in sorted((root / "eval" / "results").glob("*.json")):
        r = json.loads(path.read_text())
        arch = Path(r["path"]).parent.name
        m, s = r["metrics"], r.get("spliced") or {}
        rows.setdefault(arch, []).append(
            {
                "dictionary": r["name"],
                "path": r["path"],
                "l0": m["l0"],
                "fvu": m["fvu"],
                "dead_fraction": m["dead"] / r["d_dict"],
                "never_fired": m["never_fired"],
                "ce_recovered": s.get("ce_recovered"),
                "kl": s.get("kl"),
                "alpha": r.get("alpha"),
                "k": r.get("k"),
                "d_dict": r["d_dict"],
                "n_activations": m["n_activations"],
                "n_contexts": s.get("n_contexts"),
            }
        )
    for series in rows.values():
        series.sort(key=lambda x: x["l0"])
    by_name = {row["dictionary"]: (arch, row) for arch, series in rows.items() for row in series}
    autointerp = []
    for path in sorted((root / "interpret").glob("*/*/comparison.json")):
        for method in json.loads(path.read_text())["methods"]:
            score = method.get("top_random") or {}
            autointerp.append(
                {
                    "arch": by_name[method["method"]][0] if method["method"] in by_name else method.get("kind"),
                    "dictionary": method["method"],
                    "l0": by_name[method["method"]][1]["l0"] if method["method"] in by_name else None,
                    "mean": score.get("mean"),
                    "ci95": score.get("ci95"),
                    "n": score.get("n"),
                    "considered": method.get("considered"),
                    "skipped": method.get("skipped"),
                    "undefined": score.get("undefined"),
                    "null_mean": (method.get("null_top_random") or {}).get("mean"),
                    "failed": method.get("failed") or 0,
                    # Features with too few activating fragments (dead or very rare ones) are skipped, not
                    # scored: the mean over all considered features, counting each skipped one as 0 (no
                    # information), does not reward an architecture for its dead features. Features the backend
                    # never answered (failed) say nothing about the architecture: they are left out, and counted.
                    "mean_all": None
                    if score.get("mean") is None or not (method.get("considered") or 0) - (method.get("failed") or 0)
                    else score["mean"] * score["n"] / (method["considered"] - (method.get("failed") or 0)),
                }
            )
    return {"architectures": rows, "autointerp": autointerp}


def _curves(data: dict, key: str, path: Path, ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    plotted = {}
    for arch, series in data["architectures"].items():
        pts = [(r["l0"], r[key]) for r in series if r[key] is not None and not math.isnan(r[key])]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=arch)
            plotted[arch] = [{"l0": x, key: y} for x, y in pts]
    ax.set_xscale("log")
    ax.set_xlabel("L0 (mean active features per token, held-out)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, plotted)


def _autointerp(rows: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    shown = [r for r in rows if r["mean"] is not None]
    ax.bar(range(len(shown)), [r["mean"] for r in shown], yerr=[r["ci95"] or 0 for r in shown], capsize=4)
    ax.set_xticks(range(len(shown)), [f"{r['arch']}\nL0 {r['l0']:.0f}" if r["l0"] else r["arch"] for r in shown])
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("offline autointerp, top-and-random r (mean ± 95% CI)")
    ax.axhline(0, color="black", lw=0.5)
    return save_figure(fig, path, shown)


def _fmt(v, f: str) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v)


def markdown(data: dict) -> str:
    lines = [
        "| architecture | dictionary | L0 | FVU | CE recovered | KL | dead |",
        "|---|---|---|---|---|---|---|",
    ]
    for arch, series in data["architectures"].items():
        for r in series:
            lines.append(
                f"| {arch} | {r['dictionary']} | {r['l0']:.1f} | {r['fvu']:.4f} | {_fmt(r['ce_recovered'], '{:.3f}')} "
                f"| {_fmt(r['kl'], '{:.4f}')} | {r['dead_fraction']:.1%} |"
            )
    lines += [
        "",
        "| architecture | dictionary | L0 | autointerp r (mean ± 95% CI) | n scored | of | skipped as 0 | undefined "
        "| failed (no answer) | null mean |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["autointerp"]:
        lines.append(
            f"| {r['arch']} | {r['dictionary']} | {_fmt(r['l0'], '{:.1f}')} | {_fmt(r['mean'], '{:.3f}')} ± "
            f"{_fmt(r['ci95'], '{:.3f}')} | {r['n']} | {r['considered']} | {_fmt(r['mean_all'], '{:.3f}')} | "
            f"{r['undefined']} | {r.get('failed', 0)} | {_fmt(r['null_mean'], '{:.3f}')} |"
        )
    return "\n".join(lines) + "\n"


def write(root: Path, out: Path) -> Path:
    """Collect, plot and tabulate a comparison run folder into ``out``."""
    data = collect(root)
    out.mkdir(parents=True, exist_ok=True)
    for key, (name, ylabel) in PLOTS.items():
        _curves(data, key, out / name, ylabel)
    _autointerp(data["autointerp"], out / "autointerp.png")
    write_json_atomic(out / "comparison.json", data)
    (out / "comparison.md").write_text(markdown(data))
    return out


def section(run: Run, fig_dir: Path, extra: dict) -> Section:
    """The report's "Which architecture?" section: from ``<run>/architectures/comparison/`` (``saex compare
    --out RUN/architectures``) or, for a report of a comparison run folder itself, ``<run>/comparison/``."""
    s = Section(
        "architectures",
        "Which architecture? (beyond the paper)",
        "The paper trains tied ReLU + L1 SAEs only. Here every architecture saex trains was given the same store, "
        "steps and batch at matched target L0s, then evaluated on the same held-out rows (docs/architectures.md).",
    )
    folder = next((f for f in (run.root / "architectures" / "comparison", run.root / "comparison") if f.is_dir()), None)
    if folder is None or not (folder / "comparison.json").is_file():
        s.notes.append("Not run for this folder: `saex compare --out RUN/architectures` adds it.")
        return s
    data = json.loads((folder / "comparison.json").read_text())
    for name, caption in (
        ("fvu_vs_l0", "FVU against L0, one curve per architecture (held-out)"),
        ("ce_recovered_vs_l0", "CE recovered against L0 (the reconstruction spliced into the model)"),
        ("dead_vs_l0", "Dead fraction against L0"),
        ("autointerp", "Offline autointerp at the matched L0 (mean ± 95% CI)"),
    ):
        if (folder / f"{name}.png").is_file():
            s.figures.append(Figure(caption, folder / f"{name}.png"))
    s.tables.append(
        Table(
            "Every dictionary of the comparison (held-out; dead: fired on at most the alive threshold's rows)",
            ["architecture", "dictionary", "L0", "FVU", "CE recovered", "KL", "dead"],
            [
                [
                    arch,
                    r["dictionary"],
                    fmt(r["l0"], "{:.1f}"),
                    fmt(r["fvu"], "{:.4f}"),
                    fmt(r["ce_recovered"]),
                    fmt(r["kl"], "{:.4f}"),
                    fmt(r["dead_fraction"], "{:.1%}"),
                ]
                for arch, series in data["architectures"].items()
                for r in series
            ],  # fmt: skip
        )
    )
    s.tables.append(
        Table(
            "Offline autointerp (top-and-random r) of each architecture's dictionary nearest the matched L0",
            ["architecture", "dictionary", "L0", "mean", "± 95% CI", "scored", "of"],
            [
                [
                    r["arch"],
                    r["dictionary"],
                    fmt(r["l0"], "{:.1f}"),
                    fmt(r["mean"]),
                    fmt(r["ci95"]),
                    fmt(r["n"], "{:d}"),
                    fmt(r["considered"], "{:d}"),
                ]
                for r in data["autointerp"]
            ],  # fmt: skip
        )
    )
    extra["architectures"] = data
    return s
