"""The report's training section: how α was chosen (``saex calibrate``), whether every dictionary converged
(``saex train``'s convergence check), and which activation rows training and the metrics used.

The paper trains on 5-50M activations for 1-3 epochs (paper §2, App. B) and chose α = 8.6e-4 on Pythia-70M;
an α carried to another model buys another L0, and a dictionary stopped early looks like a finding and is
not one. This section comes before the figures so that a reader sees both before any result.
"""

from __future__ import annotations

from pathlib import Path

from saex.report.collect import Run, hook_sort_key, main_result
from saex.report.sections import Section, Table, fmt
from saex.train.convergence import advice, describe

VERDICT = {True: "converged", False: "NOT converged", None: "not checked"}


def training(run: Run, fig_dir: Path, results: dict) -> Section:
    s = Section(
        "train",
        "Training: α calibration, convergence and the rows used",
        "The paper trains each dictionary on 5-50M activations for 1-3 epochs with Adam (lr 1e-3) and "
        "picks α = 8.6e-4 (residual) and 3.2e-4 (MLP) on Pythia-70M. Here α is calibrated per hook for "
        "target L0s, and every dictionary's held-out L0, loss and dense-feature share are checked at the "
        "end of its run: a dictionary still changing, or with many features firing on more than 10% of "
        "tokens, is marked NOT converged, and its features should not be read as findings.",
    )
    hooks = sorted(set(run.training) | set(run.calibration), key=hook_sort_key)
    if run.given:
        s.notes.append(
            "The dictionaries were given (saex reproduce --dicts): nothing was calibrated or trained in this run, "
            "and whether they converged is their trainer's record, not this report's."
        )
        return s
    if not hooks:
        s.notes.append(
            "No training run or calibration was found (dicts/<hook>/run.json, calibrate/<hook>/calibration.json)."
        )
        return s
    cal_rows = []
    for hook in hooks:
        cal = run.calibration.get(hook)
        if not cal:
            continue
        grid = ", ".join(f"{p['alpha']:.3g} → {p['l0']:.1f}" for p in cal.get("grid") or [])
        for c in cal.get("chosen") or []:
            cal_rows.append(
                [
                    hook,
                    fmt(c.get("target_l0"), "{:g}"),
                    fmt(c.get("alpha"), "{:.3g}"),
                    "yes" if c.get("extrapolated") else "no",
                    grid,
                ]
            )
    if cal_rows:
        steps = {c["config"]["steps"] for c in run.calibration.values() if c.get("config")}
        batch = {c["config"]["batch_size"] for c in run.calibration.values() if c.get("config")}
        s.tables.append(
            Table(
                f"α calibration (saex calibrate: a sweep of {', '.join(map(str, sorted(steps)))} steps "
                f"at batch {', '.join(map(str, sorted(batch)))}, held-out L0 at its end; log α "
                "interpolated against log L0)",
                ["hook", "target L0", "α", "extrapolated", "grid: α → L0"],
                cal_rows,
            )
        )
        ratios = {c["config"]["ratio"] for c in run.calibration.values() if c.get("config")}
        s.notes.append(
            f"The calibration sweeps run at R = {', '.join(f'{r:g}' for r in sorted(ratios))} for the "
            "training's steps; L0 at a given α depends little on R (measured on SmolLM2-135M layer 6: "
            "about 10% lower at R = 1 than at R = 4). The target only chose α: the trained "
            "dictionaries' L0 (below, and in Figs. 6/7) is what was achieved."
        )
    conv_rows, warnings = [], []
    for hook in hooks:
        tr = run.training.get(hook)
        if not tr:
            continue
        main = (main_result(run, hook) or {}).get("name")
        for name, v in (tr.get("convergence") or {}).items():
            conv_rows.append(
                [
                    hook,
                    name + (" (main)" if name == main else ""),
                    str(tr.get("steps", "—")),
                    fmt(tr.get("passes"), "{:g}"),
                    fmt(v.get("l0_end"), "{:.1f}"),
                    fmt(v.get("l0_drop"), "{:.1%}"),
                    fmt(v.get("loss_drop"), "{:.1%}"),
                    fmt(v.get("dense_fraction"), "{:.1%}"),
                    VERDICT.get(v.get("converged"), "—"),
                ]
            )
            if v.get("converged") is False:
                warnings.append(
                    f"{hook} {name}{' — the main SAE' if name == main else ''}: {describe(v)}; {advice(v)}."
                )
    if conv_rows:
        s.tables.append(
            Table(
                "Convergence (saex train; held-out sample; drops over the last 20% of the run; "
                "dense: share of features firing on more than 10% of held-out inputs)",
                [
                    "hook",
                    "dictionary",
                    "steps",
                    "passes over the store",
                    "L0",
                    "L0 drop",
                    "loss drop",
                    "dense",
                    "verdict",
                ],
                conv_rows,
            )
        )
    s.notes += [f"NOT converged: {w}" for w in warnings]
    row_rows = []
    for hook in hooks:
        rows = (run.training.get(hook) or {}).get("rows")
        if rows:
            limit = rows.get("norm_limit")
            row_rows.append(
                [
                    hook,
                    str(rows.get("exclude_first")),
                    "yes" if rows.get("exclude_special_tokens") else "no",
                    "—" if limit is None else f"{limit:.4g} ({rows.get('max_norm_ratio'):g}× the median)",
                    f"{rows.get('kept_train_rows', 0):,} of {rows.get('train_rows', 0):,}",
                ]
            )
    if row_rows:
        s.tables.append(
            Table(
                "Rows used for training (the same filter applies to the input scale, the FVU / L0 / "
                "density metrics and the feature index)",
                ["hook", "first positions left out", "separator / BOS left out", "norm limit", "train rows kept"],
                row_rows,
            )
        )
        s.notes.append(
            "Left-out rows are attention sinks: the first position, separators, and rows of massive norm "
            "(SmolLM2-135M layer 6: position 0 has ≈ 7× the norm of other positions; layer 14: 150×). "
            "Spliced CE / KL replace the activation at every position, those included."
        )
    results["training"] = {
        "calibration": {h: c.get("chosen") for h, c in run.calibration.items()},
        "convergence": {h: tr.get("convergence") for h, tr in run.training.items()},
        "rows": {h: tr.get("rows") for h, tr in run.training.items()},
    }
    return s
