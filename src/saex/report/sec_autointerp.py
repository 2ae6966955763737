"""Report sections from ``saex interpret`` (paper §3.3, App. C, App. G): Table 1, Figs. 2, 8, 9, 10, 18 and
Table 2, one block per autointerp scorer (backend/preset) found in the run.

The main SAE of each hook is the row at the main α and ratio (``collect.main_method``); the baselines are the
rows whose kind is a baseline kind. Means are over every scored feature, an undefined score counted as no
information (0 for a correlation) with the count of undefined ones in each cell. Table 2 pools the SAE
features at the main α over residual hooks, as the paper's code does (tied R ∈ {0.5, 1, 2, 4}, layers 0-5),
over the defined scores only. Figs. 2 and 10 also show each hook's main score per activation-density bin
(``interpret/density.py``), so that density cannot stand in for interpretability.
"""

from __future__ import annotations

from pathlib import Path

from saex.dictionaries import BASELINE_KINDS
from saex.interpret.report import matched_cell, rule, score_cell
from saex.interpret.summary import moment_correlations
from saex.naming import hook_family, hook_layer
from saex.report import claims as C
from saex.report.collect import Run, is_sae, main_method, main_target, same_alpha
from saex.report.figures import grouped_bars, score_vs_ratio
from saex.report.k_source import k_source_convergence
from saex.report.sections import Figure, Section, Table, autointerp_scale, differences, fmt, layer_label, not_run

FIG2_BASELINES = ("neurons", "random", "pca", "ica")
FIG18_BASELINES = ("neurons", "pca", "pca_topk", "ica", "ica_topk")
SCORE_NAMES = {"top_random": "top-and-random", "random": "random-only", "top": "top-only", "auroc": "AUROC"}


def scorers(run: Run) -> list[str]:
    """LLM scorers first (closest to the paper), then the offline one."""
    return sorted(run.interpret, key=lambda s: (s.startswith("offline"), s))


def primary_score(scorer: str) -> str:
    return "auroc" if scorer.endswith("/delphi") else "top_random"


def _slug(scorer: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in scorer)


def methods(run: Run, scorer: str, hook: str) -> list[dict]:
    return ((run.interpret.get(scorer, {}).get(hook) or {}).get("comparison") or {}).get("methods") or []


def per_layer(run: Run, scorer: str, kind: str, score: str, baselines=BASELINE_KINDS) -> dict[str, dict]:
    """label -> {"hook", "sae_method", "sae": stat, "baselines": {kind: stat}} for hooks of one kind."""
    out = {}
    for hook in run.hooks:
        ms = methods(run, scorer, hook)
        if hook_family(hook) != kind or not ms:
            continue
        main = main_method(ms, main_target(run, hook))
        base = {}
        for m in ms:
            if m.get("kind") in baselines and m.get("kind") not in base:
                base[m["kind"]] = m.get(score)
        out[layer_label(hook)] = {
            "hook": hook,
            "sae_method": main["method"] if main else None,
            "sae": main.get(score) if main else None,
            "baselines": dict(sorted(base.items(), key=lambda kv: baselines.index(kv[0]))),
        }
    return out


def _absent(run: Run, s: Section, what: str) -> None:
    """Say why a section has no autointerp numbers: the stage did not run, or it ran and scored none."""
    if not scorers(run):
        not_run(s, what, run.stage_reason("interpret"))
    elif not s.notes:
        s.notes.append(
            f"{what}: the stage ran, but no feature of the main SAE could be scored (too few activating "
            "fragments per feature for the protocol)."
        )


def preset_of(scorer: str) -> str:
    return scorer.split("/")[-1]


def _cell(stat) -> str:
    """``mean ± ci (n=…, k undefined)``: the undefined count only where there were some."""
    return score_cell(stat, n=True)


def density_table(run: Run, scorer: str, hook: str) -> Table | None:
    """The main score per density bin at one hook: rows = bins, columns = the main SAE and the baselines, and a
    last row with the SAE − baseline difference at matched density (comparison.json's "density_matched")."""
    comp = (run.interpret.get(scorer, {}).get(hook) or {}).get("comparison") or {}
    bd, dm = comp.get("by_density") or {}, comp.get("density_matched") or {}
    per, ms = bd.get("methods") or {}, comp.get("methods") or []
    main = main_method(ms, main_target(run, hook))
    sae = main["method"] if main and main["method"] in per else None
    bases = [m["method"] for m in ms if m.get("kind") in BASELINE_KINDS and m["method"] in per]
    cols = ([sae] if sae else []) + bases
    bins = [b for b in bd.get("bins") or [] if any((per[c].get(b) or {}).get("n") for c in cols)]
    if not bins:  # an interpretation from before the density comparison, or nothing scored
        return None
    rows = [[b] + [_cell(per[c].get(b)) for c in cols] for b in bins]
    pairs = (dm.get("pairs") or {}).get(sae) if sae else None
    if pairs and bases:
        rows.append(
            [
                f"SAE − column at matched density (bins with ≥ {dm.get('min_features')} features each; "
                "after the slash, unmatched)",
                "—",
            ]
            + [matched_cell(pairs.get(b)) for b in bases]
        )
    score = SCORE_NAMES.get(bd.get("score") or "", bd.get("score"))
    return Table(
        f"{score} by activation density at {hook} ({scorer}): mean ± 95% CI (n features, undefined ones "
        "counted as no information). A scorer that rewards activations the current token determines favours "
        "dense features (the offline table scores random directions above PCA, ICA and the neurons), so "
        "compare methods within a row, at matched density; the matched difference weights each bin by the "
        "SAE's features in it.",
        ["density (fraction of tokens non-zero)"] + [f"SAE {c}" if c == sae else c for c in cols],
        rows,
    )


def _density_tables(run: Run, section: Section, scorer: str, kind: str) -> None:
    for hook in run.hooks:
        t = density_table(run, scorer, hook) if hook_family(hook) == kind else None
        if t is not None:
            section.tables.append(t)


def _scored(row: dict) -> bool:
    return (row.get("sae") or {}).get("mean") is not None


def _bars(
    run: Run,
    fig_dir: Path,
    section: Section,
    scorer: str,
    kind: str,
    score: str,
    baselines,
    claim_key: str,
    claim_baselines=None,
) -> dict[str, dict]:
    layers = per_layer(run, scorer, kind, score, baselines)
    if not any(_scored(v) for v in layers.values()):
        where = "MLP" if kind == "mlp" else "residual"
        why = "not run in this reproduction" if not layers else "no feature of the main SAE could be scored"
        section.notes.append(f"{scorer}: no {where} SAE {SCORE_NAMES.get(score, score)} score — {why}.")
        return layers
    groups = {
        label: {"SAE": v["sae"] or {}, **{b: s or {} for b, s in v["baselines"].items()}} for label, v in layers.items()
    }
    name = f"{section.id}_{score}_{_slug(scorer)}.png"
    title = f"{section.title}: {SCORE_NAMES.get(score, score)}, mean ± 95% CI ({scorer})"
    section.figures.append(Figure(title, grouped_bars(groups, fig_dir / name, title, SCORE_NAMES.get(score, score))))
    cols = list(dict.fromkeys(b for v in layers.values() for b in v["baselines"]))
    section.tables.append(
        Table(
            f"{SCORE_NAMES.get(score, score)} scores ({scorer}); mean ± 95% CI (n features) over "
            f"every scored feature. {rule(preset_of(scorer))}",
            ["layer", "SAE", "SAE score"] + cols,
            [
                [label, v["sae_method"] or "—", _cell(v["sae"])] + [_cell(v["baselines"].get(b)) for b in cols]
                for label, v in layers.items()
            ],
        )
    )
    found = C.sae_beats(
        claim_key,
        f"Fig. {section.id[3:]}",
        "sparse-coding features are more interpretable than the baselines",
        SCORE_NAMES.get(score, score),
        layers,
        claim_baselines,
        {label: k_source_convergence(run, v["hook"]) for label, v in layers.items()},
    )
    for c in found:
        c.scope = scorer
    section.claims += found
    return layers


def failure_notes(run: Run, scorer: str) -> list[str]:
    """One note per hook whose interpretation had features the backend never answered (``counts`` of the stage's
    comparison.json): they are left out of every mean, so the reader is told how many."""
    notes = []
    for hook, entry in sorted((run.interpret.get(scorer) or {}).items()):
        counts = (entry.get("comparison") or {}).get("counts") or {}
        if counts.get("failed"):
            notes.append(
                f"{scorer} at {hook}: {counts['failed']} of {counts.get('considered', '?')} features got no usable "
                f"answer from the backend ({counts.get('failed_explanation', 0)} without an explanation, "
                f"{counts.get('failed_scoring', 0)} without a scored simulation) and are left out of every mean here."
            )
    return notes


def table1(run: Run, fig_dir: Path, results: dict) -> Section:
    s = Section(
        "table1",
        "Table 1: the first features of the layer-1 residual SAE",
        "Explanations and top-and-random scores of the first five features of the layer-1 residual "
        "dictionary (the paper's recalled scores: 0.33, −0.11, 0.55, 0.57, 0.19).",
    )
    resid = [h for h in run.hooks if hook_family(h) == "resid"]
    hook = next((h for h in resid if hook_layer(h) == 1), None) or next(
        (h for h in resid if hook_layer(h) == run.config.get("main_layer")), resid[0] if resid else None
    )
    for scorer in scorers(run):
        s.notes += failure_notes(run, scorer)
        main = main_method(methods(run, scorer, hook), main_target(run, hook)) if hook else None
        if not main or hook is None:
            continue
        first = main.get("first_features") or []
        if not first:
            s.notes.append(f"{scorer}: no feature of {main['method']} could be scored.")
        s.tables.append(
            Table(
                f"{main['method']} at {hook} ({scorer}); score: {primary_score(scorer)}",
                ["feature", "explanation", "score"],
                [[str(f["feature"]), str(f["explanation"]), fmt(f.get("score"))] for f in first],
            )
        )
        c = C.table1_claim(first)
        c.scope = scorer
        s.claims.append(c)
        results.setdefault("table1", {})[scorer] = {"hook": hook, "method": main["method"], "features": first}
        s.differences = differences(run, scorer=scorer, hooks=[hook]) + autointerp_scale(run, scorer, [hook])
    if not s.tables:
        s.claims.append(C.table1_claim([]))
        _absent(run, s, "autointerp of a residual SAE")
    return s


def fig2_9_18(run: Run, fig_dir: Path, results: dict) -> list[Section]:
    s2 = Section(
        "fig2",
        "Figure 2: autointerp per residual layer, SAE against baselines",
        "Top-and-random scores of 150 features per method, residual layers 0-5 of Pythia-70M: sparse-coding "
        "features are far more interpretable than neurons (identity ReLU), random directions, PCA and ICA; "
        "the advantage declines through the model.",
    )
    s9 = Section(
        "fig9",
        "Figure 9: random-only autointerp scores",
        "Random-only scores are significantly smaller than top-and-random scores, but the learned features "
        "still consistently outperform the baselines, especially in early layers.",
    )
    s18 = Section(
        "fig18",
        "Figure 18: top-k baselines",
        "Sparse coding against PCA, top-k PCA, ICA, top-k ICA and identity ReLU: top-k sparsity explains "
        "only a small fraction of the improvement.",
    )
    resid = [h for h in run.hooks if hook_family(h) == "resid"]
    for scorer in scorers(run):
        score = primary_score(scorer)
        layers = _bars(run, fig_dir, s2, scorer, "resid", score, FIG2_BASELINES, "fig2")
        ints = {L: v for v in layers.values() if (L := hook_layer(v["hook"])) is not None}
        if any(_scored(v) for v in layers.values()):
            c = C.advantage_declines(ints)
            c.scope = scorer
            s2.claims.append(c)
        if score == "top_random":
            rnd = _bars(run, fig_dir, s9, scorer, "resid", "random", FIG2_BASELINES, "fig9")
            if any(_scored(v) for v in rnd.values()):
                c = C.random_below_top(
                    {k: {"top_random": layers[k]["sae"], "random": v["sae"]} for k, v in rnd.items() if k in layers}
                )
                c.scope = scorer
                s9.claims.append(c)
        _bars(run, fig_dir, s18, scorer, "resid", score, FIG18_BASELINES, "fig18", ("pca_topk", "ica_topk"))
        _density_tables(run, s2, scorer, "resid")
        for s in (s2, s9, s18):
            s.differences = differences(run, scorer=scorer, hooks=resid) + autointerp_scale(run, scorer, resid)
    unmeasured = {
        "fig2": C.sae_beats("fig2", "Fig. 2", s2.paper, "top-and-random", {}) + [C.advantage_declines({})],
        "fig9": C.sae_beats("fig9", "Fig. 9", s9.paper, "random-only", {}) + [C.random_below_top({})],
        "fig18": C.sae_beats("fig18", "Fig. 18", s18.paper, "top-and-random", {}),
    }
    for s in (s2, s9, s18):
        if not s.figures:
            s.claims = s.claims or unmeasured[s.id]
            _absent(run, s, "autointerp of residual dictionaries")
    return [s2, s9, s18]


def fig8(run: Run, fig_dir: Path, results: dict) -> Section:
    s = Section(
        "fig8",
        "Figure 8: autointerp against dictionary size R",
        "At α = 8.6e-4, interpretability gains hold even for R < 1; larger dictionaries explain more of the variance.",
    )
    resid = [h for h in run.hooks if hook_family(h) == "resid"]
    for scorer in scorers(run):
        score = primary_score(scorer)
        series, best, layers = {}, {}, {}
        for hook in resid:
            t = main_target(run, hook)
            ms = methods(run, scorer, hook)
            by_r = {
                f"{m['ratio']:g}": m.get(score) or {} for m in ms if is_sae(m) and same_alpha(m["alpha"], t["alpha"])
            }
            base = [
                m[score]["mean"]
                for m in ms
                if m.get("kind") in BASELINE_KINDS and (m.get(score) or {}).get("mean") is not None
            ]
            if by_r:
                series[layer_label(hook)] = by_r
                layers[layer_label(hook)] = {
                    "by_ratio": {float(r): v for r, v in by_r.items()},
                    "baselines": {m["kind"]: m.get(score) for m in ms if m.get("kind") in BASELINE_KINDS},
                }
                if base:
                    best[layer_label(hook)] = max(base)
        if not series:
            continue
        title = f"{SCORE_NAMES[score]} against R at the main α ({scorer})"
        s.figures.append(
            Figure(
                title, score_vs_ratio(series, best, fig_dir / f"fig8_{_slug(scorer)}.png", title, SCORE_NAMES[score])
            )
        )
        rs = sorted({r for v in series.values() for r in v}, key=float)
        s.tables.append(
            Table(
                title,
                ["layer"] + [f"R={r}" for r in rs] + ["best baseline"],
                [[label] + [_cell(v.get(r)) for r in rs] + [fmt(best.get(label))] for label, v in series.items()],
            )
        )
        c = C.small_dictionaries(
            layers, {label: k_source_convergence(run, h) for h in resid if (label := layer_label(h)) in layers}
        )
        c.scope = scorer
        s.claims.append(c)
        s.differences = differences(run, scorer=scorer, hooks=resid) + autointerp_scale(run, scorer, resid)
    if not s.figures:
        s.claims.append(C.small_dictionaries({}))
        _absent(run, s, "autointerp of residual SAEs at several R")
    fvu: dict[str, dict[float, float]] = {}
    for hook in resid:
        t = main_target(run, hook)
        pts = {
            float(r["ratio"]): r["metrics"]["fvu"]
            for r in (run.eval.get(hook) or {}).get("results") or []
            if is_sae(r) and same_alpha(r["alpha"], t["alpha"])
        }
        if pts:
            fvu[layer_label(hook)] = pts
    if fvu:
        ratios = sorted({r for v in fvu.values() for r in v})
        s.tables.append(
            Table(
                "FVU of the SAEs at the main α (saex eval)",
                ["layer"] + [f"R={r:g}" for r in ratios],
                [[k] + [fmt(v.get(r), "{:.4f}") for r in ratios] for k, v in fvu.items()],
            )
        )
        s.claims.append(C.fvu_falls_with_ratio(fvu))
    if not fvu:
        s.claims.append(C.fvu_falls_with_ratio({}))
        not_run(s, "evaluation of residual SAEs at several R", run.stage_reason("eval"))
    return s


def fig10(run: Run, fig_dir: Path, results: dict) -> Section:
    s = Section(
        "fig10",
        "Figure 10: autointerp of MLP dictionaries",
        "Top-and-random and random-only scores per MLP layer (untied, α = 3.2e-4, R = 1): many features are "
        "more interpretable than the neurons, but many are dead.",
    )
    mlp = [h for h in run.hooks if hook_family(h) == "mlp"]
    for scorer in scorers(run):
        for score in (primary_score(scorer), "random") if primary_score(scorer) == "top_random" else ("auroc",):
            _bars(run, fig_dir, s, scorer, "mlp", score, BASELINE_KINDS, f"fig10_{score}", ("neurons",))
        _density_tables(run, s, scorer, "mlp")
        s.differences = differences(run, scorer=scorer, hooks=mlp) + autointerp_scale(run, scorer, mlp)
    if not s.figures:
        s.claims = s.claims or C.sae_beats("fig10", "Fig. 10", s.paper, "top-and-random", {})
        _absent(run, s, "autointerp of MLP dictionaries")
    return s


def table2(run: Run, fig_dir: Path, results: dict) -> Section:

    s = Section(
        "table2",
        "Table 2: autointerp score against activation skew and kurtosis",
        "The top-and-random score correlates with the positive skew (r = 0.19) and kurtosis (r = 0.24) of "
        "feature activations (pooled over tied SAEs R ∈ {0.5, 1, 2, 4}, α = 8.6e-4, layers 0-5).",
    )
    resid = [h for h in run.hooks if hook_family(h) == "resid"]
    for scorer in scorers(run):
        preset = preset_of(scorer)
        pooled, per_hook = [], {}
        for hook in resid:
            data = run.interpret[scorer].get(hook)
            if not data:
                continue
            t = main_target(run, hook)
            for m in data["comparison"].get("methods") or []:
                if is_sae(m) and same_alpha(m["alpha"], t["alpha"]):
                    pooled += [r for r in data["scores"].get(m["method"], []) if "scores" in r]
            per_hook[hook] = data["comparison"].get("table2_pooled") or {}
        if not per_hook:
            continue
        corr = moment_correlations(pooled, preset)
        rows = [
            [
                "SAEs at the main α, pooled over residual hooks",
                fmt(corr["skew"]["r"]),
                fmt(corr["kurtosis"]["r"]),
                str(corr["skew"]["n"]),
                str(corr["skew"]["undefined"]),
            ]
        ]
        rows += [
            [
                f"every method at {h}",
                fmt((v.get("skew") or {}).get("r")),
                fmt((v.get("kurtosis") or {}).get("r")),
                str((v.get("skew") or {}).get("n", "—")),
                str((v.get("skew") or {}).get("undefined", "—")),
            ]
            for h, v in per_hook.items()
        ]
        s.tables.append(
            Table(
                f"Pearson r with the {corr['skew']['score']} score ({scorer}) over the features whose "
                "score is defined (unlike the means, an undefined score is left out, not counted as "
                "0); the paper: skew 0.19, kurtosis 0.24",
                ["features", "r (skew)", "r (kurtosis)", "n", "undefined (left out)"],
                rows,
            )
        )
        for c in C.table2_claims(corr):
            c.scope = scorer
            s.claims.append(c)
        results.setdefault("table2", {})[scorer] = {"pooled_sae_main_alpha": corr, "per_hook_all_methods": per_hook}
        s.differences = differences(run, scorer=scorer, hooks=resid) + autointerp_scale(run, scorer, resid)
    if not s.tables:
        s.claims = C.table2_claims({})
        _absent(run, s, "autointerp of residual dictionaries")
    return s
