"""The reproduction report (docs/report.md): ``report/report.html`` (one self-contained page: the
figures inlined as base64 ``data:`` URIs, no external CSS or JavaScript), ``report/report.md`` (the same
content, its figures copied to ``report/figures/`` and linked) and ``report/results.json``.

Sections follow the paper: Table 1, Figs. 2-10, 16, 18, Table 2 and the spliced perplexity. Each shows its
figures, the numbers behind them, how this run differs from the paper, and whether the paper's claim held
(``claims.py``). A stage that did not run gives a "not run in this reproduction" note; a section that
cannot be built from malformed outputs says so instead of failing the report. Every piece of text is
escaped by the templates (jinja2 autoescape): explanations and token strings are arbitrary text.
"""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import jinja2

from saex.files import write_json_atomic, write_text_atomic
from saex.report import architectures, sec_autointerp, sec_causal, sec_eval, sec_train
from saex.report.claims import HELD, NOT_HELD, NOT_MEASURED
from saex.report.collect import collect, short_splits
from saex.report.results import build_results
from saex.report.sections import Section

# The sections in paper order: (id, title when it cannot be built, builder). A builder that makes several
# sections (Figs. 2/9/18, Figs. 4/5) is named at each and called once, at the first.
SECTIONS: list[tuple[str, str, Callable[..., Section | list[Section]]]] = [
    ("run", "This reproduction", sec_eval.overview),
    ("train", "Training", sec_train.training),
    ("table1", "Table 1", sec_autointerp.table1),
    ("fig2", "Figure 2", sec_autointerp.fig2_9_18),
    ("fig3", "Figure 3", sec_causal.fig3),
    ("fig4", "Figure 4", sec_causal.fig4_5),
    ("fig5", "Figure 5", sec_causal.fig4_5),
    ("fig6", "Figures 6/7", sec_eval.fig6_7),
    ("fig8", "Figure 8", sec_autointerp.fig8),
    ("fig9", "Figure 9", sec_autointerp.fig2_9_18),
    ("fig10", "Figure 10", sec_autointerp.fig10),
    ("fig16", "Figure 16", sec_eval.fig16),
    ("fig18", "Figure 18", sec_autointerp.fig2_9_18),
    ("table2", "Table 2", sec_autointerp.table2),
    ("ppl", "Spliced perplexity (§6.2)", sec_eval.perplexity),
    ("architectures", "Which architecture?", architectures.section),
]


def _md_cell(value) -> str:
    """One Markdown table cell: no line breaks, pipes escaped (the template then HTML-escapes it)."""
    return re.sub(r"\s*\n\s*", " ", str(value)).replace("|", "\\|")


def _md_escape(value) -> str:
    """Markdown output: the characters that could open HTML (a viewer may render raw HTML) as entities;
    quotes stay readable."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # and link / code syntax, so an explanation cannot make a live link in a lenient viewer
    return text.replace("[", "\\[").replace("]", "\\]").replace("`", "\\`")


def _environment(markdown: bool) -> jinja2.Environment:
    """HTML: jinja2 autoescape. Markdown: every printed value passes through ``_md_escape``."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("saex.report", "templates"),
        autoescape=not markdown,
        finalize=_md_escape if markdown else None,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md_cell"] = _md_cell
    return env


def build_sections(run) -> tuple[list[Section], dict]:
    extra: dict = {}
    built: dict[str, Section] = {}
    fig_dir = run.root / "report" / "figures"
    done: set[Callable] = set()
    for _, _, builder in SECTIONS:
        if builder in done:
            continue
        done.add(builder)
        built_here = [(sid, title) for sid, title, b in SECTIONS if b is builder]
        try:
            out = builder(run, fig_dir, extra)
        except Exception as e:  # a malformed stage output costs its sections, not the report
            why = f"{e.__class__.__name__}: {e}"
            run.problems += [f"section {sid}: could not be built ({why})" for sid, _ in built_here]
            out = [
                Section(sid, title, "", notes=[f"This section could not be built from the stage outputs ({why})."])
                for sid, title in built_here
            ]
        for s in out if isinstance(out, list) else [out]:
            built[s.id] = s
    return [built[sid] for sid, _, _ in SECTIONS if sid in built], extra


def _place_figures(sections: list[Section], fig_dir: Path) -> dict[Path, str]:
    """Copy each figure (and the JSON of its numbers beside it) into report/figures/; name -> relative link."""
    links: dict[Path, str] = {}
    for s in sections:
        for i, f in enumerate(s.figures):
            src = Path(f.path)
            if src.parent.resolve() == fig_dir.resolve():
                dst = src
            else:
                dst = fig_dir / (re.sub(r"[^A-Za-z0-9._-]+", "_", f"{s.id}_{i}_{src.stem}") + ".png")
                shutil.copyfile(src, dst)
                if src.with_suffix(".json").is_file():
                    shutil.copyfile(src.with_suffix(".json"), dst.with_suffix(".json"))
            links[src] = f"figures/{dst.name}"
            f.path = dst
    return links


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def build_report(run_dir: Path) -> dict[str, Path]:
    """Write report/report.html, report/report.md and report/results.json for a run folder."""
    run = collect(Path(run_dir))
    out = run.root / "report"
    fig_dir = out / "figures"
    shutil.rmtree(fig_dir, ignore_errors=True)  # figures of an earlier report of this run folder
    fig_dir.mkdir(parents=True, exist_ok=True)
    sections, extra = build_sections(run)
    _place_figures(sections, fig_dir)
    claims = [c for s in sections for c in s.claims]
    counts = {v: sum(c.verdict == v for c in claims) for v in (HELD, NOT_HELD, NOT_MEASURED)}
    verdicts = [v.get("converged") for tr in run.training.values() for v in (tr.get("convergence") or {}).values()]
    converged = {"converged": verdicts.count(True), "of": len(verdicts), "not": verdicts.count(False)}
    ctx = {
        "sections": sections,
        "claims": claims,
        "counts": counts,
        "problems": run.problems,
        "converged": converged,
        "short_splits": short_splits(run.store),
        "title": "Reproduction report: Sparse Autoencoders Find Highly Interpretable Features in Language Models",
        "run_dir": str(run.root),
        "preset": run.reproduce.get("preset"),
    }
    html = _environment(False).get_template("report.html.j2").render(**ctx, image=lambda f: _data_uri(f.path))
    md = _environment(True).get_template("report.md.j2").render(**ctx, image=lambda f: f"figures/{Path(f.path).name}")
    paths = {"html": out / "report.html", "md": out / "report.md", "results": out / "results.json"}
    write_text_atomic(paths["html"], html)
    write_text_atomic(paths["md"], md)
    write_json_atomic(paths["results"], build_results(run, extra, [c.to_dict() for c in claims]))
    for p in [*paths.values(), *fig_dir.iterdir()]:
        p.chmod(0o644)  # temporary files are created private; a report is meant to be shared
    return paths
