"""The comparison outputs of ``saex interpret``: tables (paper Tables 1 and 2), the scores at matched
activation density (``interpret/density.py``) and plots (Figs. 2, 9, 18)."""

from __future__ import annotations

from pathlib import Path

from saex.files import write_json_atomic
from saex.interpret.summary import failure_line
from saex.viz.autointerp import plot_scores


def score_cell(stat, n: bool = False) -> str:
    """``mean ± ci``, then the feature count (``n``) and how many scores were undefined, where there were any."""
    if not stat or stat.get("mean") is None:
        return "—"
    ci = stat.get("ci95")
    text = f"{stat['mean']:.3f} ± {ci:.3f}" if ci is not None else f"{stat['mean']:.3f}"
    extra = [f"n={stat.get('n')}"] if n else []
    extra += [f"{stat['undefined']} undefined"] if stat.get("undefined") else []
    return text + (f" ({', '.join(extra)})" if extra else "")


def rule(preset: str) -> str:
    """The sentence that states how undefined scores enter the means."""
    if preset == "delphi":
        return (
            "An undefined AUROC or balanced accuracy (a sample without non-activating windows) counts as 0.5, "
            "chance; the count of undefined ones follows each mean."
        )
    return (
        "An undefined correlation — constant simulation — counts as 0 (the simulator predicted nothing); the "
        "count of undefined ones follows each mean, and each feature's record keeps it undefined."
    )


def density_lines(density: dict) -> list[str]:
    """comparison.md's tables of the main score per density bin and of the SAE − baseline matched differences."""
    bd, dm = density.get("by_density") or {}, density.get("density_matched") or {}
    methods = bd.get("methods") or {}
    used = [b for b in bd.get("bins") or [] if any((m.get(b) or {}).get("n") for m in methods.values())]
    if not used:
        return []
    lines = [
        "",
        f"{bd['score']} by activation density (fraction of tokens where the feature is non-zero; "
        "decade bins): mean ± 95% CI (n features, undefined ones). Dense features are easier for a scorer that "
        "rewards token-determined activations, so compare methods within a column.",
        "",
        "| method | " + " | ".join(used) + " |",
        "|" + "---|" * (len(used) + 1),
    ]
    lines += [
        "| " + " | ".join([name] + [score_cell(bins.get(b), n=True) for b in used]) + " |"
        for name, bins in methods.items()
    ]
    pairs = dm.get("pairs") or {}
    bases = list(dict.fromkeys(b for v in pairs.values() for b in v))
    if pairs and bases:
        lines += [
            "",
            f"SAE − baseline {dm['score']} at matched density: the per-bin differences over the bins where "
            f"both have ≥ {dm['min_features']} features, weighted by {dm['weights']}; ± 95% CI (bins used); "
            "after the slash, the unmatched difference of the means.",
            "",
            "| SAE | " + " | ".join(bases) + " |",
            "|" + "---|" * (len(bases) + 1),
        ]
        for sae, row in pairs.items():
            lines.append("| " + " | ".join([sae] + [matched_cell(row.get(b)) for b in bases]) + " |")
    return lines


def matched_cell(d) -> str:
    """A ``density.matched_difference`` result as ``+0.120 ± 0.050 (2 bins) / +0.300``."""
    if not d:
        return "—"
    unmatched = "—" if d.get("unmatched_diff") is None else f"{d['unmatched_diff']:+.3f}"
    if d.get("diff") is None:
        return f"no matched bin / {unmatched}"
    ci = "" if d.get("ci95") is None else f" ± {d['ci95']:.3f}"
    k = len(d["bins"])
    return f"{d['diff']:+.3f}{ci} ({k} bin{'s' if k != 1 else ''}) / {unmatched}"


def write_report(
    out: Path,
    methods: list[dict],
    cfg,
    label: str,
    backend_stats: dict | None = None,
    table2: dict | None = None,
    density: dict | None = None,
    counts: dict | None = None,
) -> None:
    """``density``: ``density.density_comparison``'s "by_density" and "density_matched" entries; ``counts``:
    ``summary.count_rows`` over every method's considered features (how many were scored, failed, skipped)."""
    keys = ("top_random", "top", "random") if cfg.preset != "delphi" else ("auroc", "balanced_accuracy")
    write_json_atomic(
        out / "comparison.json",
        {
            "scorer": label,
            "preset": cfg.preset,
            "methods": methods,
            "table2_pooled": table2 or {},
            "backend_stats": backend_stats or {},
            "counts": counts or {},
            **(density or {}),
        },
    )
    head = (
        ["method", "kind", "hook", "scored", "skipped"]
        + list(keys)
        + [f"null {keys[0]}", "token entropy", f"r({keys[0]}, skew)", f"r({keys[0]}, kurtosis)"]
    )
    lines = [
        f"Scorer: {label}; preset {cfg.preset}; mean ± 95% CI (1.96·sd/√n) over every scored feature. "
        + rule(cfg.preset),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m in methods:
        corr = [m.get(f"corr_{keys[0]}_{x}") for x in ("skew", "kurtosis")]
        cells = [m["method"], str(m["kind"]), m["hook"], str(m["scored"]), str(m["skipped"])]
        cells += [score_cell(m.get(k)) for k in (*keys, f"null_{keys[0]}", "token_entropy")]
        cells += ["—" if c is None else f"{c:.3f}" for c in corr]
        lines.append("| " + " | ".join(cells) + " |")
    if table2:
        cells = [
            f"{m} r = {v['r']:.3f} (n = {v['n']})" if v["r"] is not None else f"{m} undefined"
            for m, v in table2.items()
        ]
        lines += [
            "",
            f"Paper Table 2, pooled over every method's scored features with a defined {keys[0]} (undefined "
            f"ones left out): correlation of {keys[0]} with " + "; ".join(cells) + ".",
        ]
    failed = failure_line(counts or {})
    if failed:
        lines += ["", failed]
    lines += density_lines(density or {})
    if backend_stats:  # requests, tokens, retries and failures of this run (cache hits cost nothing)
        lines += ["", "Backend: " + ", ".join(f"{k} {v}" for k, v in sorted(backend_stats.items()))]
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    t1 = [f"First scored features of each method ({label}); score: {keys[0]}.", ""]
    for m in methods:
        t1 += [f"### {m['method']}", "", "| feature | explanation | score |", "|---|---|---|"]
        for r in m["first_features"]:
            text = str(r["explanation"]).replace("|", "\\|").replace("\n", " ")
            score = "—" if r["score"] is None else f"{r['score']:.3f}"
            t1.append(f"| {r['feature']} | {text} | {score} |")
        t1.append("")
    (out / "table1.md").write_text("\n".join(t1))

    plot_scores(methods, keys, out / "plots", label)
