"""The paper's claims (paper §3.3, §4, §5, §6) as functions of the numbers this run measured.

Each function takes plain numbers (as the report's tables hold them) and returns ``Claim``s whose verdict is
``held``, ``did not hold`` or ``not measured`` (the inputs are absent or too few to decide), with the
numbers the verdict rests on. A verdict is reported as measured, whichever way it went. Where the paper's
claim is qualitative, the test used is stated in ``test`` (docs/report.md lists them all). Every test can
fail as well as hold — one that could only pass would be no test — and needs enough data to decide either
way, else it is "not measured" (tests/report/test_claims_both_ways.py shows each on inputs of every kind).

An autointerp statistic is ``{"mean": float, "ci95": float, "n": int}`` (``interpret.scoring.mean_ci95``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

HELD, NOT_HELD, NOT_MEASURED = "held", "did not hold", "not measured"

MIN_LAYERS = 3
"""Fig. 2's decline needs this many layers with scores."""
MIN_SPARSITY_LEVELS = 5
"""Figs. 6/7's trade-off needs this many points (α values) per sweep: with three, a curve "without a knee" is
nearly any curve."""
PAPER_PPL_RATIO = 40 / 25
"""§6.2: Pythia-70M's Pile perplexity 25 → 40 with the layer-2 residual spliced."""
PPL_BAND = 0.5
"""The spliced/clean perplexity ratio agrees with the paper's when log(ratio) is within ±50% of log(1.6), i.e.
ratio in [1.6^0.5, 1.6^1.5] ≈ [1.26, 2.02]: a log scale because perplexity is exp(CE), so the band is ±50%
of the paper's CE increase (0.47 nats) — wide, as the models, corpora and α differ, yet it excludes a
near-free splice (a dense or barely sparse dictionary) and a splice that breaks the model."""


@dataclass
class Claim:
    key: str
    figure: str
    paper: str
    """The claim as the paper makes it."""
    test: str
    """How this report decides it from the numbers."""
    verdict: str
    detail: str
    numbers: dict = field(default_factory=dict)
    scope: str = ""
    """What the verdict is about when a figure is judged more than once (e.g. per autointerp scorer)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _mean(stat) -> Any:
    """The mean of a ``mean_ci95`` stat, or None where it is missing or not finite (callers that compare means
    have kept only the stats with one: ``Any`` spares them a cast at every comparison)."""
    return stat.get("mean") if isinstance(stat, dict) and _ok(stat.get("mean")) else None


def _bounds(stat) -> Any:
    m = _mean(stat)
    ci = stat.get("ci95") if isinstance(stat, dict) else None
    return (m - ci, m + ci) if m is not None and _ok(ci) else None


def _f(x, fmt="{:.3f}") -> str:
    return fmt.format(x) if _ok(x) else "—"


def _verdict(ok: list[bool]) -> str:
    return NOT_MEASURED if not ok else (HELD if all(ok) else NOT_HELD)


def _topk_dropped(k_source: dict | None) -> str | None:
    """Why a layer's top-K baselines cannot be compared: the SAE their K came from is flagged not converged.
    ``k_source``: {"dictionary": str, "converged": bool | None, "reasons": [str]}; no record (older runs, or
    K given by hand) judges as before."""
    if not isinstance(k_source, dict) or k_source.get("converged") is not False:
        return None
    why = "; ".join(str(r) for r in k_source.get("reasons") or []) or "no reason recorded"
    return f"their K is the mean L0 of {k_source.get('dictionary') or 'an SAE'}, flagged not converged ({why})"


def _usable(baselines: dict, k_source: dict | None) -> tuple[dict, str | None]:
    """The baselines that can be compared at a layer, and why any top-K ones were left out."""
    why = _topk_dropped(k_source)
    if why is None or not any(n.endswith("_topk") for n in baselines):
        return baselines, None
    return {n: s for n, s in baselines.items() if not n.endswith("_topk")}, why


def sae_beats(
    key: str,
    figure: str,
    paper: str,
    score: str,
    layers: dict[str, dict],
    baselines: tuple[str, ...] | None = None,
    k_source: dict[str, dict | None] | None = None,
) -> list[Claim]:
    """SAE mean above every baseline's mean at every layer, and whether the 95% CIs separate.

    ``layers``: label -> {"sae": stat | None, "baselines": {name: stat}}; ``baselines`` restricts the set.
    ``k_source``: label -> the convergence record of the SAE that set the top-K baselines' K (``_topk_dropped``):
    a top-K baseline built from a non-converged SAE's L0 is no fair opponent (its K would be that of a
    dictionary still changing), so it is left out, and a layer left with no baseline is not judged.
    """
    above, separate, nums, dropped = [], [], {}, {}
    for label, row in layers.items():
        sae = row.get("sae")
        base = {
            n: s
            for n, s in (row.get("baselines") or {}).items()
            if (baselines is None or n in baselines) and _mean(s) is not None
        }
        base, why = _usable(base, (k_source or {}).get(label))
        if why:
            dropped[label] = why
        if _mean(sae) is None or not base:
            continue
        best = max(base, key=lambda n: _mean(base[n]))
        nums[label] = {"sae": _mean(sae), "best_baseline": best, "best_baseline_mean": _mean(base[best])}
        above.append(all(_mean(sae) > _mean(s) for s in base.values()))
        sb = _bounds(sae)
        if sb is not None and all(_bounds(s) is not None for s in base.values()):
            separate.append(all(sb[0] > _bounds(s)[1] for s in base.values()))
    lines = [
        f"{label}: SAE {_f(v['sae'])} vs best baseline {v['best_baseline']} {_f(v['best_baseline_mean'])}"
        for label, v in nums.items()
    ]
    left_out = "; ".join(f"{label}: top-K baselines not compared: {why}" for label, why in dropped.items())
    if dropped:
        nums = {**nums, "topk_left_out": dropped}
    if lines:
        extra = f". {left_out}" if left_out else ""
        d_above = f"{sum(above)} of {len(above)} layers. " + "; ".join(lines) + extra
        d_ci = f"CIs separate at {sum(separate)} of {len(separate)} layers" + extra
    else:
        d_above = d_ci = left_out or "no layer has both an SAE score and a baseline score"
    return [
        Claim(
            f"{key}_above",
            figure,
            paper,
            f"the SAE's mean {score} is above every baseline's mean at each layer",
            _verdict(above),
            d_above,
            nums,
        ),
        Claim(
            f"{key}_ci",
            figure,
            "the SAE's advantage is larger than the 95% confidence intervals",
            "the SAE's lower 95% bound is above every baseline's upper bound at each layer",
            _verdict(separate),
            d_ci,
            nums,
        ),
    ]


def advantage_declines(layers: dict[int, dict]) -> Claim:
    """Fig. 2: the SAE's advantage over the best baseline shrinks with depth (least-squares slope < 0).

    Needs ``MIN_LAYERS`` layers: through two points any line fits, so a slope of two would "decline" on noise
    as readily as not."""
    pts = []
    for layer, row in sorted(layers.items()):
        base = [_mean(s) for s in (row.get("baselines") or {}).values() if _mean(s) is not None]
        if _mean(row.get("sae")) is not None and base:
            pts.append((layer, _mean(row["sae"]) - max(base)))
    paper = "the advantage declines through the model (comparable to ICA at layer 4, minimal at the last layer)"
    test = f"least-squares slope of (SAE mean − best baseline mean) against layer is negative (≥ {MIN_LAYERS} layers)"
    if len(pts) < MIN_LAYERS:
        return Claim(
            "fig2_declines",
            "Fig. 2",
            paper,
            test,
            NOT_MEASURED,
            f"needs ≥ {MIN_LAYERS} residual layers with scores, have {len(pts)}",
            {"margins": {str(x): y for x, y in pts}},
        )
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x in xs)
    detail = "margin by layer: " + ", ".join(f"{x}: {_f(y, '{:+.3f}')}" for x, y in pts) + f"; slope {slope:+.4f}"
    return Claim(
        "fig2_declines",
        "Fig. 2",
        paper,
        test,
        HELD if slope < 0 else NOT_HELD,
        detail,
        {"margins": {str(x): y for x, y in pts}, "slope": slope},
    )


def random_below_top(layers: dict[str, dict]) -> Claim:
    """Fig. 9: random-only scores are smaller than top-and-random scores (the SAE's, per layer)."""
    ok, nums = [], {}
    for label, row in layers.items():
        t, r = _mean(row.get("top_random")), _mean(row.get("random"))
        if t is not None and r is not None:
            nums[label] = {"top_random": t, "random": r}
            ok.append(r < t)
    return Claim(
        "fig9_smaller",
        "Fig. 9",
        "random-only scores are significantly smaller than top-and-random scores",
        "the SAE's random-only mean is below its top-and-random mean at each layer",
        _verdict(ok),
        "; ".join(
            f"{k}: random {_f(v['random'])} {'<' if v['random'] < v['top_random'] else '≥'} "
            f"top-and-random {_f(v['top_random'])}"
            for k, v in nums.items()
        )
        or "no layer has both scores",
        nums,
    )


def small_dictionaries(layers: dict[str, dict], k_source: dict[str, dict | None] | None = None) -> Claim:
    """Fig. 8: SAEs with R < 1 still beat every baseline. ``layers``: label -> {"by_ratio": {R: stat},
    "baselines": {name: stat}}; ``k_source`` as in ``sae_beats`` (top-K baselines from a non-converged SAE's
    L0 are left out)."""
    ok, nums, dropped = [], {}, {}
    for label, row in layers.items():
        usable, why = _usable(row.get("baselines") or {}, (k_source or {}).get(label))
        if why:
            dropped[label] = why
        base = [_mean(s) for s in usable.values() if _mean(s) is not None]
        for r, stat in (row.get("by_ratio") or {}).items():
            if float(r) < 1 and _mean(stat) is not None and base:
                nums[f"{label} R={float(r):g}"] = {"sae": _mean(stat), "best_baseline": max(base)}
                ok.append(_mean(stat) > max(base))
    detail = (
        "; ".join(f"{k}: {_f(v['sae'])} vs best baseline {_f(v['best_baseline'])}" for k, v in nums.items())
        or "no dictionary with R < 1 was scored"
    )
    detail += "".join(f". {label}: top-K baselines not compared: {why}" for label, why in dropped.items())
    return Claim(
        "fig8_small",
        "Fig. 8",
        "interpretability gains hold even for dictionaries smaller than the activation space (R < 1)",
        "every SAE with R < 1 (at the main α) has a mean score above every baseline's mean at its layer",
        _verdict(ok),
        detail,
        {**nums, **({"topk_left_out": dropped} if dropped else {})},
    )


def fvu_falls_with_ratio(series: dict[str, dict[float, float]]) -> Claim:
    """Fig. 8 text: larger dictionaries explain more variance. ``series``: label -> {R: FVU} at the main α."""
    ok, nums = [], {}
    for label, pts in series.items():
        rs = sorted(pts)
        if len(rs) >= 2:
            fvus = [pts[r] for r in rs]
            nums[label] = {f"{r:g}": pts[r] for r in rs}
            ok.append(all(b < a for a, b in zip(fvus, fvus[1:])))
    return Claim(
        "fig8_fvu",
        "Fig. 8",
        "larger dictionaries explain more of the variance",
        "FVU falls strictly as R grows at the main α, at each layer",
        _verdict(ok),
        "; ".join(f"{k}: " + ", ".join(f"R={r} FVU {_f(v)}" for r, v in pts.items()) for k, pts in nums.items())
        or "fewer than two ratios evaluated at the main α",
        nums,
    )


def smooth_tradeoff(series: dict[str, list[dict]]) -> Claim:
    """Figs. 6/7: along each α sweep, fewer active features cost reconstruction (FVU non-increasing in L0).
    A sweep is judged only with ``MIN_SPARSITY_LEVELS`` points."""
    ok, nums, short = [], {}, {}
    for label, pts in series.items():
        pts = sorted((p for p in pts if _ok(p.get("l0")) and _ok(p.get("fvu"))), key=lambda p: p["l0"])
        if len(pts) < MIN_SPARSITY_LEVELS:
            short[label] = len(pts)
            continue
        bad = sum(b["fvu"] > a["fvu"] + 1e-9 for a, b in zip(pts, pts[1:]))
        nums[label] = {"points": len(pts), "non_monotone_steps": bad}
        ok.append(bad == 0)
    n = MIN_SPARSITY_LEVELS
    detail = "; ".join(
        f"{k}: {v['non_monotone_steps']} non-monotone steps over {v['points']} points" for k, v in nums.items()
    )
    if short:
        detail += (
            ("; " if detail else "")
            + f"not judged (needs ≥ {n} sparsity levels): "
            + ", ".join(f"{k}: have {m}" for k, m in short.items())
        )
    return Claim(
        "fig6_tradeoff",
        "Figs. 6/7",
        "a smooth trade-off between sparsity and reconstruction, with no knee",
        f"along each α sweep with ≥ {n} sparsity levels, FVU never rises as L0 grows (the absence "
        "of a knee is judged by eye on the figure)",
        _verdict(ok),
        detail or f"no α sweep (needs ≥ {n} sparsity levels)",
        {**nums, **({"too_few_levels": short} if short else {})},
    )


def alive_claims(resid: dict[str, list[dict]], mlp: dict[str, list[dict]]) -> list[Claim]:
    """Fig. 16. ``resid`` / ``mlp``: hook -> [{"alpha", "ratio", "alive_fraction"}] of trained dictionaries."""
    ok4, nums4 = [], {}
    for hook, pts in resid.items():
        big = [p for p in pts if float(p["ratio"]) >= 4 - 1e-9 and _ok(p.get("alive_fraction"))]
        if big:
            best = max(big, key=lambda p: p["alive_fraction"])
            nums4[hook] = {"ratio": best["ratio"], "alpha": best["alpha"], "alive_fraction": best["alive_fraction"]}
            ok4.append(best["alive_fraction"] >= 0.95)
    c1 = Claim(
        "fig16_overcomplete",
        "Fig. 16",
        "residual dictionaries are at least 4× overcomplete before "
        "features start to drop out, with the right hyperparameters",
        "at each residual hook, some α gives a dictionary with R ≥ 4 and ≥ 95% of features alive",
        _verdict(ok4),
        "; ".join(
            f"{h}: best R={v['ratio']:g} at α={v['alpha']:g}: {v['alive_fraction']:.1%} alive" for h, v in nums4.items()
        )
        or "no residual dictionary with R ≥ 4 was evaluated",
        nums4,
    )
    okd, numsd = [], {}
    for hook, pts in mlp.items():
        zero = [p for p in pts if float(p["alpha"]) == 0 and _ok(p.get("alive_fraction"))]
        if zero:
            numsd[hook] = {f"{float(p['ratio']):g}": 1 - p["alive_fraction"] for p in zero}
            okd.append(any(1 - p["alive_fraction"] >= 0.1 for p in zero))
    c2 = Claim(
        "fig16_mlp_dead",
        "Fig. 16",
        "MLP dictionaries have large numbers of dead features even with α = 0",
        "at each MLP hook, an α = 0 dictionary has ≥ 10% dead features",
        _verdict(okd),
        "; ".join(f"{h}: " + ", ".join(f"R={r} {d:.1%} dead" for r, d in v.items()) for h, v in numsd.items())
        or "no α = 0 MLP dictionary was evaluated",
        numsd,
    )
    okm, numsm = [], {}
    for hook, pts in {**resid, **mlp}.items():
        for r in sorted({float(p["ratio"]) for p in pts}):
            s = sorted(
                (p for p in pts if float(p["ratio"]) == r and _ok(p.get("alive_fraction"))), key=lambda p: p["alpha"]
            )
            if len(s) >= 2:
                rises = sum(b["alive_fraction"] > a["alive_fraction"] + 1e-9 for a, b in zip(s, s[1:]))
                numsm[f"{hook} R={r:g}"] = {
                    "first": s[0]["alive_fraction"],
                    "last": s[-1]["alive_fraction"],
                    "rises": rises,
                }
                okm.append(s[-1]["alive_fraction"] <= s[0]["alive_fraction"])
    c3 = Claim(
        "fig16_falls",
        "Fig. 16",
        "the fraction of alive features falls as α grows",
        "for each (hook, R), the fraction alive at the largest α is at most that at the smallest α",
        _verdict(okm),
        "; ".join(f"{k}: {v['first']:.1%} → {v['last']:.1%}" for k, v in numsm.items())
        or "no hook has two α values at one R",
        numsm,
    )
    return [c1, c2, c3]


def fisher_ci(r: float | None, n: int) -> tuple[float, float] | None:
    """95% CI of a Pearson r by Fisher's z (needs n > 3 and |r| < 1)."""
    if r is None or not _ok(r) or n <= 3 or abs(r) >= 1:
        return None
    z, se = math.atanh(r), 1.96 / math.sqrt(n - 3)
    return math.tanh(z - se), math.tanh(z + se)


def table2_claims(corrs: dict[str, dict]) -> list[Claim]:
    """Table 2: score correlates positively with skew (paper 0.19) and kurtosis (0.24).
    ``corrs``: moment -> {"r": float | None, "n": int}."""
    out = []
    for moment, paper_r in (("skew", 0.19), ("kurtosis", 0.24)):
        c = corrs.get(moment) or {}
        r, n = c.get("r"), int(c.get("n") or 0)
        ci = fisher_ci(r, n)
        test = "Pearson r > 0 with its 95% CI (Fisher z) above 0"
        paper = f"top-and-random score correlates with activation {moment} (r = {paper_r})"
        if ci is None:
            out.append(
                Claim(
                    f"table2_{moment}",
                    "Table 2",
                    paper,
                    test,
                    NOT_MEASURED,
                    f"r undefined or too few features (n = {n})",
                    {"r": r, "n": n, "paper": paper_r},
                )
            )
            continue
        out.append(
            Claim(
                f"table2_{moment}",
                "Table 2",
                paper,
                test,
                HELD if ci[0] > 0 else NOT_HELD,
                f"r = {r:.3f} (95% CI {ci[0]:.3f} to {ci[1]:.3f}, n = {n}); paper {paper_r}",
                {"r": r, "n": n, "ci95": list(ci), "paper": paper_r},
            )
        )
    return out


def table1_claim(first: list[dict]) -> Claim:
    """Table 1: the paper's first five layer-1 features mostly score above 0 (4 of 5, recalled values)."""
    scores = [float(f["score"]) for f in first[:5] if _ok(f.get("score"))]
    paper = "the first features of the layer-1 dictionary get explanations that mostly score above zero (4 of 5)"
    test = "at least 3 of the first 5 scored features have a top-and-random score > 0"
    if len(scores) < 5:
        return Claim(
            "table1_positive",
            "Table 1",
            paper,
            test,
            NOT_MEASURED,
            f"only {len(scores)} scored features",
            {"scores": scores},
        )
    pos = sum(s > 0 for s in scores)
    return Claim(
        "table1_positive",
        "Table 1",
        paper,
        test,
        HELD if pos >= 3 else NOT_HELD,
        f"{pos} of 5 above zero; mean {sum(scores) / 5:.3f} (paper, recalled: 0.31)",
        {"scores": scores},
    )


def perplexity_claim(rows: dict[str, dict]) -> Claim:
    """§6.2: splicing the SAE reconstruction in raises perplexity (paper: 25 → 40, ×1.6, layer-2 residual).
    ``rows``: hook -> {"ppl_clean", "ppl_spliced"} of the main SAE. The ratio is judged against the paper's
    (``PPL_BAND``), not merely against 1: a splice that costs almost nothing fails too, since it says the
    dictionary is too dense to be the paper's kind of sparse code."""
    nums = {
        h: {"ppl_clean": r["ppl_clean"], "ppl_spliced": r["ppl_spliced"], "ratio": r["ppl_spliced"] / r["ppl_clean"]}
        for h, r in rows.items()
        if _ok(r.get("ppl_clean")) and _ok(r.get("ppl_spliced")) and r["ppl_clean"] > 0
    }
    lo, hi = PAPER_PPL_RATIO ** (1 - PPL_BAND), PAPER_PPL_RATIO ** (1 + PPL_BAND)
    for v in nums.values():
        v["band"] = [lo, hi]
        v["position"] = "below" if v["ratio"] < lo else "above" if v["ratio"] > hi else "within"
    why = {
        "within": "within the band",
        "below": "below the band: the splice costs much less than the paper's (is the dictionary too dense, "
        "or not sparse enough to compare?)",
        "above": "above the band: the splice costs much more than the paper's (a poor reconstruction)",
    }
    return Claim(
        "ppl_spliced",
        "§6.2",
        "the reconstruction loses information: perplexity rises from 25 to 40 "
        "(×1.6) with the layer-2 residual replaced by the SAE's reconstruction",
        f"spliced / clean perplexity is within [{lo:.2f}, {hi:.2f}] at each evaluated residual hook: the "
        f"paper's ×{PAPER_PPL_RATIO:.1f} with its log within ±{PPL_BAND:.0%}",
        _verdict([v["position"] == "within" for v in nums.values()]),
        "; ".join(
            f"{h}: {v['ppl_clean']:.2f} → {v['ppl_spliced']:.2f} (×{v['ratio']:.2f}, {why[v['position']]})"
            for h, v in nums.items()
        )
        or "no spliced perplexity was measured",
        nums,
    )
