"""Report sections from ``saex eval`` (paper App. B Figs. 6/7, App. E Fig. 16, §6.2 perplexity) and the
run overview. The figures are the ones ``saex eval`` drew for each hook (``viz/sweeps.py``), reused as is."""

from __future__ import annotations

from pathlib import Path

from saex.naming import hook_family
from saex.report import claims as C
from saex.report.collect import SPLICED, Run, is_sae, main_result
from saex.report.sections import Figure, Section, Table, differences, fmt, not_run


def counted(metrics: dict) -> int | None:
    """Held-out rows a result's firing counts (alive, never fired) cover: every kept row since the encoder-only
    pass (``n_counted``), the reconstruction metrics' rows in older results."""
    return metrics.get("n_counted", metrics.get("n_activations"))


def overview(run: Run, fig_dir: Path, results: dict) -> Section:
    s = Section(
        "run",
        "This reproduction",
        "Cunningham et al. (2023), Sparse Autoencoders Find Highly "
        "Interpretable Features in Language Models: every figure and table below is recomputed from this "
        "run folder's stage outputs.",
    )
    s.differences = differences(run)
    if run.reproduce:
        s.tables.append(
            Table(
                f"Pipeline stages (reproduce.json, preset {run.reproduce.get('preset', '—')})",
                ["stage", "status", "seconds", "key"],
                [
                    [
                        n,
                        str(v.get("status", "—")) + (f" ({v['reason']})" if v.get("reason") else ""),
                        fmt(v.get("seconds"), "{:.0f}"),
                        str(v.get("key", "—")),
                    ]
                    for n, v in run.stages.items()
                    if isinstance(v, dict) and n != "report"
                ],
            )
        )
    else:
        s.notes.append(
            "reproduce.json is missing: the stage keys are unknown and the paper's α and R name the main SAEs."
        )
    if run.store:
        s.tables.append(
            Table(
                "Activation store (acts/)",
                ["hook", "width", "store hash"],
                [
                    [
                        h,
                        str((run.store.get("hooks") or {}).get(h, {}).get("width", "—")),
                        run.store["hashes"].get(h, "—"),
                    ]
                    for h in sorted(run.store.get("hooks") or {})
                ],
            )
        )
    else:
        s.notes.append("Activation store (acts/): not run in this reproduction.")
    if run.dashboard:
        s.notes.append("The main SAE's feature dashboard is in dashboard/index.html.")
    return s


def _series(run: Run) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for hook, ev in run.eval.items():
        for r in ev["results"]:
            if is_sae(r):
                out.setdefault(f"{hook} {r['kind']} R={float(r['ratio']):g}", []).append(
                    {
                        "alpha": float(r["alpha"]),
                        "ratio": float(r["ratio"]),
                        "l0": r["metrics"]["l0"],
                        "fvu": r["metrics"]["fvu"],
                        "alive_fraction": r["metrics"]["alive_fraction"],
                        "alive": r["metrics"].get("alive"),
                        "never_fired": r["metrics"].get("never_fired"),
                        "n": counted(r["metrics"]),
                        "d_dict": r.get("d_dict"),
                        "hook": hook,
                    }
                )
    for pts in out.values():
        pts.sort(key=lambda p: p["alpha"])
    return out


def fig6_7(run: Run, fig_dir: Path, results: dict) -> Section:
    s = Section(
        "fig6",
        "Figures 6/7: sparsity against reconstruction (FVU–L0)",
        "Each α sweep traces a smooth trade-off between the mean number of active features and the fraction "
        "of variance unexplained, with no bump or knee.",
    )
    for hook, ev in run.eval.items():
        if "fvu_vs_l0" in ev["plots"]:
            s.figures.append(Figure(f"FVU against L0 at {hook} (saex eval)", ev["plots"]["fvu_vs_l0"]))
    series = _series(run)
    s.tables += [
        Table(
            label,
            ["α", "L0", "FVU"],
            [[f"{p['alpha']:g}", fmt(p["l0"], "{:.2f}"), fmt(p["fvu"], "{:.4f}")] for p in pts],
        )
        for label, pts in series.items()
    ]
    base = [
        [h, r["name"], fmt(r["metrics"]["l0"], "{:.2f}"), fmt(r["metrics"]["fvu"], "{:.4f}")]
        for h, ev in run.eval.items()
        for r in ev["results"]
        if not is_sae(r)
    ]
    if base:
        s.tables.append(Table("Baselines (single points)", ["hook", "dictionary", "L0", "FVU"], base))
    s.claims.append(C.smooth_tradeoff(series))
    if not series:
        return not_run(s, "evaluation of trained dictionaries", run.stage_reason("eval"))
    s.differences = differences(
        run,
        extra=[
            "The paper's Fig. 6 is the layer-0 MLP; Fig. 7 repeats the sweep after "
            "several epochs. This run shows every evaluated hook after one training "
            "run."
        ],
    )
    return s


def fig16(run: Run, fig_dir: Path, results: dict) -> Section:
    s = Section(
        "fig16",
        "Figure 16: alive features against α",
        "A feature is alive when it fires more than 10 times over ≈ 10M activations. Residual dictionaries "
        "are at least 4× overcomplete before features drop out; MLP dictionaries have many dead features "
        "even at α = 0.",
    )
    for hook, ev in run.eval.items():
        if "alive_vs_alpha" in ev["plots"]:
            s.figures.append(Figure(f"Alive fraction against α at {hook} (saex eval)", ev["plots"]["alive_vs_alpha"]))
    series = _series(run)
    if not series:
        s.claims = C.alive_claims({}, {})
        return not_run(s, "evaluation of trained dictionaries", run.stage_reason("eval"))
    s.tables.append(
        Table(
            "Alive features (saex eval: alive = more than the threshold's activations on the "
            "held-out rows counted; never fired = none)",
            ["dictionaries", "α", "alive", "fraction alive", "never fired", "held-out rows"],
            [
                [
                    label,
                    f"{p['alpha']:g}",
                    f"{p['alive']} of {p['d_dict']}",
                    fmt(p["alive_fraction"], "{:.1%}"),
                    fmt(p.get("never_fired"), "{:d}"),
                    fmt(p.get("n"), "{:,}"),
                ]
                for label, pts in series.items()
                for p in pts
            ],
        )
    )
    by_hook: dict[str, list[dict]] = {}
    for pts in series.values():
        for p in pts:
            by_hook.setdefault(p["hook"], []).append(p)
    s.claims += C.alive_claims(
        {h: v for h, v in by_hook.items() if hook_family(h) == "resid"},
        {h: v for h, v in by_hook.items() if hook_family(h) == "mlp"},
    )
    threshold = next((r["metrics"].get("alive_threshold") for ev in run.eval.values() for r in ev["results"]), None)
    n = next((counted(r["metrics"]) for ev in run.eval.values() for r in ev["results"]), None)
    s.differences = differences(
        run,
        extra=[
            f"Alive: more than {threshold} activations over {n:,} held-out activations "
            "(the paper: more than 10 over ≈ 2.1-10M)."
            if n
            else ""
        ],
    )
    s.differences = [d for d in s.differences if d]
    return s


def perplexity(run: Run, fig_dir: Path, results: dict) -> Section:
    s = Section(
        "ppl",
        "Spliced perplexity (§6.2)",
        "Replacing the layer-2 residual of Pythia-70M by its SAE reconstruction raises the Pile perplexity "
        "from 25 to 40.",
    )
    rows, spliced = [], {}
    for hook in run.hooks:
        r = main_result(run, hook)
        sp = (r or {}).get("spliced") or {}
        if r is None or not sp:
            continue
        rows.append([hook, r["name"]] + [fmt(sp.get(k), "{:.3f}") for k in SPLICED])
        if hook_family(hook) == "resid":
            spliced[hook] = sp
    if not rows:
        s.claims.append(C.perplexity_claim({}))
        return not_run(s, "spliced evaluation (saex eval with --contexts > 0)", run.stage_reason("eval"))
    s.tables.append(
        Table(
            "The main SAE spliced into the model (saex eval, held-out contexts)",
            [
                "hook",
                "dictionary",
                "CE clean",
                "CE spliced",
                "CE zero-ablated",
                "CE recovered",
                "KL",
                "ppl clean",
                "ppl spliced",
            ],
            rows,
        )
    )
    s.claims.append(C.perplexity_claim(spliced))
    contexts = next(
        (
            r["identity"]["options"].get("contexts")
            for ev in run.eval.values()
            for r in ev["results"]
            if (r.get("identity") or {}).get("options")
        ),
        None,
    )
    s.differences = differences(
        run,
        extra=[
            f"Spliced losses over {contexts} held-out contexts (the paper: pile-10k "
            "documents longer than 256 tokens, truncated to 256)."
            if contexts
            else ""
        ],
    )
    s.differences = [d for d in s.differences if d]
    return s
