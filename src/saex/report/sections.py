"""The report's building blocks: a ``Section`` per paper figure or table, number formatting, and the
"How this run differs from the paper" lines (paper §2, §3.3, §4, App. C: Pythia-70M-deduped on the
Pile, ≈ 20M activations per layer, 150 features scored by GPT-4 + text-davinci-003; IOI on Pythia-410M).

Sections hold text and numbers only (never markup): the templates escape everything they print.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from saex.naming import hook_family, hook_layer
from saex.report.claims import Claim
from saex.report.collect import Run, main_target, store_rows

NOT_RUN = "not run in this reproduction"


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    caption: str
    path: Path


@dataclass
class Section:
    id: str
    title: str
    paper: str
    """What the paper shows and claims here."""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """"not run" notes and caveats."""


def fmt(x, spec: str = "{:.3f}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return spec.format(x)
    return str(x)


def layer_label(hook: str) -> str:

    L = hook_layer(hook)
    return f"layer {L}" if L is not None else hook


def not_run(section: Section, what: str, reason: str | None = None) -> Section:
    section.notes.append(f"{what}: {NOT_RUN}" + (f" — {reason}." if reason else "."))
    return section


def differences(
    run: Run,
    *,
    ioi: bool = False,
    scorer: str | None = None,
    hooks: list[str] | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """How this run differs from the paper, for one section."""
    out = []
    store = run.store or {}
    model = store.get("model") or run.reproduce.get("model") or {}
    name = model.get("name") or run.config.get("model") or "unknown"
    size = (
        (
            f" ({model['n_layers']} layers, d_model {model['d_model']}"
            + (f", d_mlp {model['d_mlp']}" if model.get("d_mlp") else "")
            + ")"
        )
        if model.get("n_layers")
        else ""
    )
    paper_model = (
        "Pythia-410M-deduped (24 layers, d_model 1024), layer 11"
        if ioi
        else "Pythia-70M-deduped (6 layers, d_model 512, d_mlp 2048)"
    )
    out.append(f"Model: {name}{size}; the paper: {paper_model}.")
    corpus = (store.get("corpus") or {}).get("spec") or run.config.get("corpus") or "unknown"
    out.append(
        f"Corpus: {corpus}; the paper: "
        + (
            "NeelNanda/pile-10k (≈ 7M activations)."
            if ioi
            else "the Pile (train shard 00), ≈ 20M activations per layer."
        )
    )
    tr, he = store_rows(store, "train"), store_rows(store, "heldout")
    if tr is not None:
        out.append(
            f"Activations per hook: {tr:,} training rows, {he or 0:,} held-out rows "
            "(the paper: ≈ 2.1M per 2 GB chunk, 10 chunks for Fig. 2)."
        )
    hooks = hooks if hooks is not None else run.hooks
    if run.given:  # saex reproduce --dicts: nothing was trained here
        out.append(
            "Dictionaries: given (saex reproduce --dicts), not trained in this run: "
            + "; ".join(f"{h}: {', '.join(names)}" for h, names in run.given.items())
            + f" (main: {run.reproduce.get('main_dict')}); the paper trains tied ReLU SAEs with an L1 penalty "
            "(α = 8.6e-4, R = 2 residual; α = 3.2e-4, R = 1 MLP)."
        )
        hooks = []
    for kind, paper in (("resid", "α = 8.6e-4, R = 2"), ("mlp", "α = 3.2e-4, R = 1")):
        hs = [h for h in hooks if hook_family(h) == kind]
        if hs:
            t = main_target(run, hs[0])
            out.append(
                f"Main {'residual' if kind == 'resid' else 'MLP'} SAE: α = {t['alpha']:g}, R = {t['ratio']:g} "
                f"at {', '.join(hs)}; the paper: {paper}"
                + (" at layers 0-5." if kind == "resid" else " at MLP layers 0-5.")
            )
    cfg = {} if run.given else run.config
    for label, kind in (("residual", "resid"), ("MLP", "mlp")):
        targets, ratios = cfg.get(f"target_l0_{kind}"), cfg.get(f"ratios_{kind}")
        extra = cfg.get(f"extra_alphas_{kind}") or []
        if targets or ratios:
            t_text, r_text = ", ".join(f"{t:g}" for t in targets or []), ", ".join(f"{r:g}" for r in ratios or [])
            out.append(
                f"{label} sweep: α calibrated per hook for target L0 ∈ {{{t_text}}}"
                + (f" plus α ∈ {{{', '.join(f'{a:g}' for a in extra)}}}" if extra else "")
                + f", R ∈ {{{r_text}}}; the paper: α ∈ logspace(−4, −2, 16) with 8.6e-4 (residual) and 3.2e-4 "
                "(MLP), R ∈ {0.5, 1, 2, 4, 8, 16, 32}."
            )
    if cfg.get("train_steps"):
        out.append(
            f"Training: {cfg['train_steps']:,} Adam steps of {cfg.get('train_batch')} activations per "
            "dictionary, learning rate decayed over the last 20%; the paper: 5-50M activations, 1-3 epochs."
        )
    if scorer is not None:
        if scorer.startswith("offline"):
            out.append(
                f"Autointerp scorer: {scorer}, the offline token/bigram table. Its scores measure how well "
                "a lexical table of the top examples predicts activations (lexical predictability), not "
                "GPT-4 explanations simulated by text-davinci-003 as in the paper: compare methods within "
                "this run, not these numbers with the paper's."
            )
        else:
            out.append(f"Autointerp scorer: {scorer}; the paper: GPT-4 explainer, text-davinci-003 simulator.")
    out += extra or []
    return out


def autointerp_scale(run: Run, scorer: str, hooks: list[str]) -> list[str]:
    """The number of features scored and fragments indexed, against the paper's 150 and 50,000."""
    scored, frags = set(), set()
    for h in hooks:
        comp = (run.interpret.get(scorer, {}).get(h) or {}).get("comparison") or {}
        scored |= {m.get("scored") for m in comp.get("methods") or []}
        frags |= {(m.get("n_fragments"), m.get("fragment_length")) for m in (run.features.get(h) or {}).values()}
    out = []
    if scored - {None}:
        out.append(
            f"Features scored per dictionary: {', '.join(str(s) for s in sorted(scored - {None}))} (the paper: 150)."
        )
    if frags - {(None, None)}:
        out.append(
            "Fragments indexed: "
            + ", ".join(f"{n:,} of {L} tokens" for n, L in sorted(frags - {(None, None)}))
            + " (the paper: 50,000 OpenWebText fragments of 64 tokens)."
        )
    return out
