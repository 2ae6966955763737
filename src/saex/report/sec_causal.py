"""Report sections from ``saex ioi`` (paper §4, Figs. 3 and 17) and ``saex case-study`` (paper §5, Figs. 4
and 5). The IOI and case-study figures are the stages' own PNGs; the tables are read from their JSON."""

from __future__ import annotations

from pathlib import Path

from saex.report import claims_causal as C
from saex.report.collect import Run
from saex.report.sections import Figure, Section, Table, differences, fmt, not_run


def width(run: Run, hook: str | None) -> int | None:
    if not hook:
        return None
    w = ((run.store or {}).get("hooks") or {}).get(hook, {}).get("width")
    if w:
        return int(w)
    return next((r.get("d_in") for r in (run.eval.get(hook) or {}).get("results") or []), None)


def curve(result: dict) -> list[dict]:
    """The greedy curve where it was run (the paper's method), else the quick one; as viz/ioi.py draws it."""
    if "greedy" in result:
        pts = [p for p in result["greedy"]["records"] if p.get("tau") is not None]
        return sorted(pts, key=lambda p: p["n_patched"])
    return (result.get("quick") or {}).get("records") or []


def ioi_curves(run: Run, layer: int) -> dict[str, dict]:
    out = {}
    for name, r in (run.ioi or {})["layers"][layer].items():
        hook = (r.get("identity") or {}).get("hook")
        w = width(run, hook)
        out[name] = {
            "alpha": r.get("alpha"),
            "kind": r.get("kind") or name,
            "kl_base": r.get("kl_base"),
            "ratio": r["n_features"] / w if r.get("alpha") is not None and w else None,
            "mode": "greedy" if "greedy" in r else "quick",
            "points": curve(r),
            "n_active": r.get("n_active"),
            "n_features": r.get("n_features"),
            "weights_sha256": (r.get("identity") or {}).get("weights_sha256"),
        }
    return out


def fig3(run: Run, fig_dir: Path, results: dict) -> Section:
    s = Section(
        "fig3",
        "Figure 3: IOI activation patching",
        "Patching features from the counterfactual IOI prompt: sparse dictionaries reach a given KL to the "
        "target with fewer patched features (left) and a smaller edit (right) than PCA; the α = 0 dictionary "
        "shows no such benefit; larger α leaves a larger minimum KL.",
    )
    if not run.ioi:
        s.claims = C.ioi_claims({})
        return not_run(s, "the IOI experiment (saex ioi)", run.stage_reason("ioi"))
    for stem, path in run.ioi["figures"].items():
        if stem.startswith(("fig3", "fig17")):
            s.figures.append(Figure(f"KL(patched ‖ target) against features patched and edit magnitude ({stem})", path))
    layers = list(run.ioi["layers"])
    main = run.config.get("ioi_layer") if run.config.get("ioi_layer") in layers else layers[0]
    summary: dict = {}
    for layer in layers:
        curves = ioi_curves(run, layer)
        rows = []
        for name, c in curves.items():
            kls = [p["kl"] for p in c["points"] if p.get("kl") is not None]
            half = [p for p in c["points"] if p.get("kl") is not None and p["kl"] <= 0.5 * (c["kl_base"] or 0)]
            need_n = min((p["n_patched"] for p in half), default=None)
            need_e = min((p["edit"] for p in half), default=None)
            rows.append(
                [
                    name,
                    str(c["kind"]),
                    fmt(c["alpha"], "{:g}"),
                    fmt(c["ratio"], "{:g}"),
                    f"{c['n_active']} of {c['n_features']}",
                    fmt(c["kl_base"], "{:.4g}"),
                    fmt(min(kls) if kls else None, "{:.4g}"),
                    fmt(need_n, "{}"),
                    fmt(need_e, "{:.4g}"),
                    c["mode"],
                ]
            )
            summary.setdefault(str(layer), {})[name] = {
                k: c[k] for k in ("kind", "alpha", "ratio", "kl_base", "n_active", "n_features", "mode")
            } | {
                "min_kl": min(kls) if kls else None,
                "features_to_halve_kl": need_n,
                "edit_to_halve_kl": need_e,
                "weights_sha256": c["weights_sha256"],
            }
        s.tables.append(
            Table(
                f"Layer {layer}: curves of saex ioi",
                [
                    "dictionary",
                    "kind",
                    "α",
                    "R",
                    "features active",
                    "KL unpatched",
                    "min KL",
                    "features to halve KL",
                    "edit to halve KL",
                    "curve",
                ],
                rows,
            )
        )
        if layer == main:
            found = C.ioi_claims(curves)
            for claim in found:
                claim.scope = f"layer {layer}"
            s.claims += found
    task = run.ioi.get("task") or {}
    if task:
        s.notes.append(
            f"Task check: the model prefers the indirect object on {fmt(task.get('accuracy'), '{:.0%}')} of "
            f"{task.get('n_prompts')} prompts (mean logit difference IO − S "
            f"{fmt(task.get('mean_logit_diff'), '{:.2f}')})."
        )
    cfg = run.ioi.get("config") or {}
    s.differences = differences(
        run,
        ioi=True,
        extra=[
            f"{cfg.get('prompts', task.get('n_prompts', '?'))} prompt pairs (the paper: 50); curve: "
            f"{cfg.get('mode', '?')} ("
            + (
                "the paper's ACDC-style greedy search"
                if cfg.get("mode") in ("greedy", "both")
                else "attribution order with exact KL of nested prefixes, not the paper's greedy search"
            )
            + ").",
            "The paper's IOI dictionaries: tied, R = 4, α ∈ {0, 1e-4, 3e-4, 1e-3}, at Pythia-410M layer 11.",
        ],
    )
    results["ioi"] = {
        "main_layer": main,
        "layers": summary,
        "task": {k: task.get(k) for k in ("n_prompts", "accuracy", "mean_logit_diff")},
    }
    return s


def _hist_table(f: dict, key: str = "histogram", what: str = "activation histogram") -> Table | None:
    h = f.get(key)
    if not h:
        return None
    edges = h.get("edges") or []
    head = ["token"] + [f"{edges[i]:.3g}–{edges[i + 1]:.3g}" for i in range(len(edges) - 1)]
    return Table(
        f"Feature {f.get('feature')} ({f.get('dictionary')}): {what}, {h.get('n')} of {h.get('total')} "
        f"activations ({h.get('source')})",
        head,
        [
            [str(s.get("label") or ("[all other tokens]" if s.get("other") else ""))] + [str(c) for c in s["counts"]]
            for s in h.get("series") or []
        ],
    )


def fig4_5(run: Run, fig_dir: Path, results: dict) -> list[Section]:
    s4 = Section(
        "fig4",
        "Figure 4: a feature found by the prompt search",
        'Searching the prompt "… It is now up to Dave\'" finds an apostrophe feature: its activations are '
        'dominated by apostrophes (left), and ablating it mainly lowers the log-probability of "s" (right).',
    )
    s5 = Section(
        "fig5",
        "Figure 5: a circuit of features",
        "Ablating earlier-layer features and ranking them by the drop in a target feature's activation, "
        "recursively, gives a causal tree whose linked features often point in similar directions.",
    )
    if not run.case_study:
        found = C.case_study_claims(None, None)
        s4.claims = [c for c in found if c.figure == "Fig. 4"]
        s5.claims = [c for c in found if c.figure == "Fig. 5"]
        return [
            not_run(s4, "the case study (saex case-study)", run.stage_reason("case_study")),
            not_run(s5, "the case study (saex case-study)", run.stage_reason("case_study")),
        ]
    cs = run.case_study["data"]
    for name, path in run.case_study["figures"].items():
        (s5 if ("circuit" in name or "fig5" in name) else s4).figures.append(Figure(f"case study: {name}", path))
    search = cs.get("search") or {}
    if search:
        toks = search.get("tokens") or []
        pos = search.get("position")
        tok = toks[pos] if isinstance(pos, int) and -len(toks) <= pos < len(toks) else None
        s4.tables.append(
            Table(
                f"Prompt search at {search.get('hook')} ({search.get('dictionary')}): prompt "
                f"{search.get('prompt')!r}, token {tok!r} at position {pos}",
                ["rank", "feature", "activation"],
                [
                    [str(i), str(f.get("feature")), fmt(f.get("activation"))]
                    for i, f in enumerate(search.get("features") or [])
                ],
            )
        )
        dims = [["max", str(d.get("dim")), fmt(d.get("value"))] for d in search.get("resid_max") or []]
        dims += [["min", str(d.get("dim")), fmt(d.get("value"))] for d in search.get("resid_min") or []]
        if dims:
            s4.tables.append(
                Table(
                    "Residual dimensions at that token (paper Fig. 11 contrast)", ["side", "dimension", "value"], dims
                )
            )
    for f in sorted(cs.get("features") or [], key=lambda f: f.get("rank", 0)):
        if (t := _hist_table(f)) is not None:
            s4.tables.append(t)
        if (
            t := _hist_table(
                f,
                "residual_histogram",
                "the histogram of the residual dimension most extreme at the search token (Fig. 11 contrast)",
            )
        ) is not None:
            s4.tables.append(t)
        eff = f.get("output_effect") or {}
        if eff:
            s4.tables.append(
                Table(
                    f"Feature {f.get('feature')}: mean change of log-probability when ablated "
                    f"({eff.get('positions')} positions, {eff.get('contexts')} contexts)",
                    ["direction", "token", "Δ log-prob"],
                    [
                        ["lowered", str(d.get("token")), fmt(d.get("delta"), "{:+.4f}")]
                        for d in eff.get("decreased") or []
                    ]
                    + [
                        ["raised", str(d.get("token")), fmt(d.get("delta"), "{:+.4f}")]
                        for d in eff.get("increased") or []
                    ],
                )
            )
        lens = f.get("logit_lens") or {}
        if lens:
            s4.tables.append(
                Table(
                    f"Feature {f.get('feature')}: logit lens (f · W_U; {lens.get('excluded')} "
                    "high-norm tokens excluded)",
                    ["side", "token", "value"],
                    [["top", str(d.get("token")), fmt(d.get("value"))] for d in lens.get("top") or []]
                    + [["bottom", str(d.get("token")), fmt(d.get("value"))] for d in lens.get("bottom") or []],
                )
            )
    circuit = cs.get("circuit")
    found = C.case_study_claims(cs, width(run, (circuit or {}).get("hook")))
    s4.claims += [c for c in found if c.figure == "Fig. 4"]
    s5.claims += [c for c in found if c.figure == "Fig. 5"]
    if isinstance(circuit, dict):
        rows = []

        def walk(node, depth):
            rows.append(
                [
                    ("  " * depth) + ("↳ " if depth else "") + str(node.get("hook")),
                    str(node.get("feature")),
                    fmt(node.get("effect")),
                    fmt(node.get("cos")),
                ]
            )
            for ch in node.get("children") or []:
                walk(ch, depth + 1)
            # The rises are not expanded; listed so that the tree's drops can be read against them.
            for ch in node.get("increases") or []:
                rows.append(
                    [
                        ("  " * (depth + 1)) + "⇡ raises: " + str(ch.get("hook")),
                        str(ch.get("feature")),
                        fmt(ch.get("effect")),
                        fmt(ch.get("cos")),
                    ]
                )

        walk(circuit, 0)
        s5.tables.append(
            Table(
                f"Upstream tree ({circuit.get('method')}, {circuit.get('contexts')} contexts, target "
                f"max activation {fmt(circuit.get('max_activation'))})",
                ["hook", "feature", "effect (mean drop; < 0: ablation raises the parent)", "cosine to parent"],
                rows,
            )
        )
    else:
        s5.notes.append("The circuit (upstream tree): not run in this reproduction.")
    diff = differences(run, hooks=[search["hook"]] if search.get("hook") else [])
    s4.differences = diff + [
        "The paper's search: Pythia-70M's residual SAEs on \" I don't know about that. It is "
        "now up to Dave'\"; its apostrophe feature (layer 4, feature 556) came third, after "
        "an outlier-dimension feature and an apostrophe-after-O feature; histograms over ≤ 5,000 "
        "pile-10k activations."
    ]
    s5.differences = diff + [
        "The paper's circuit: the layer-5 closing-parenthesis feature 5_2027 of Pythia-70M, "
        "20 contexts with activation in [M/2, M]."
    ]
    results["case_study"] = {
        "search": {k: search.get(k) for k in ("prompt", "position", "hook", "dictionary")}
        | {"features": [f.get("feature") for f in search.get("features") or []]},
        "features": [
            {
                "hook": f.get("hook"),
                "dictionary": f.get("dictionary"),
                "feature": f.get("feature"),
                "rank": f.get("rank"),
            }
            for f in cs.get("features") or []
        ],
        "circuit_root": {k: circuit.get(k) for k in ("hook", "feature")} if isinstance(circuit, dict) else None,
    }
    return [s4, s5]
