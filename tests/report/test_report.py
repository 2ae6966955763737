"""The reproduction report built from a real run folder (the real stages on a tiny llama, tests/report/_run.py):
a self-contained HTML page and its Markdown twin with every section, hostile text escaped, results.json
numbers equal to the stage outputs (read here independently), and "not run" sections for missing stages."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from saex.report.claims import HELD, NOT_HELD, NOT_MEASURED
from saex.report.render import build_report
from tests.report._run import HOSTILE, RESID, build_run, inject_hostile

SCORER = "offline-table-8/cunningham2023"
MAIN = "tied_l1_r2_a0.00086"
HOOK = RESID[0]
EXPLANATION = '<script>alert("explanation")</script> & more'
SECTIONS = {
    "run": "This reproduction",
    "table1": "Table 1",
    "fig2": "Figure 2",
    "fig3": "Figure 3",
    "fig4": "Figure 4",
    "fig5": "Figure 5",
    "fig6": "Figures 6/7",
    "fig8": "Figure 8",
    "fig9": "Figure 9",
    "fig10": "Figure 10",
    "fig16": "Figure 16",
    "fig18": "Figure 18",
    "table2": "Table 2",
    "ppl": "Spliced perplexity",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    run = build_run(tmp_path_factory.mktemp("report"))
    inject_hostile(run)
    # an explanation with markup, as an LLM explainer may write one
    comp_path = run / "interpret" / HOOK / SCORER / "comparison.json"
    comp = json.loads(comp_path.read_text())
    main = next(m for m in comp["methods"] if m["method"] == MAIN)
    main["first_features"][0]["explanation"] = EXPLANATION
    comp_path.write_text(json.dumps(comp))
    paths = build_report(run)
    return run, paths


def test_html_is_self_contained_with_every_section(built):
    run, paths = built
    assert paths == {
        "html": run / "report" / "report.html",
        "md": run / "report" / "report.md",
        "results": run / "report" / "results.json",
    }
    html = paths["html"].read_text()
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html and "@import" not in html
    srcs = re.findall(r"""\bsrc\s*=\s*["']?([^"'\s>]*)""", html)
    assert len(srcs) >= 10 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "url(" not in html
    for sid, title in SECTIONS.items():
        m = re.search(rf'<h2 id="{sid}">([^<]*)</h2>', html)
        assert m and m.group(1).startswith(title), sid
    for sid in SECTIONS:
        if sid != "run":  # every figure section ends with its verdicts and its differences from the paper
            chunk = html.split(f'<h2 id="{sid}">')[1].split("<h2 ")[0]
            assert "Did the claim hold?" in chunk and "How this run differs from the paper" in chunk, sid
    assert "not run in this reproduction" not in html
    assert "lexical predictability" in html


def test_hostile_text_is_escaped(built):
    run, paths = built
    html, md = paths["html"].read_text(), paths["md"].read_text()
    for text in (html, md):
        assert "<script" not in text
        assert "&lt;script&gt;alert(" in text  # the token string of the case study
        assert "&lt;script&gt;alert(" in text and "explanation" in text
    assert "&lt;script&gt;alert(&#34;explanation&#34;)&lt;/script&gt; &amp; more" in html
    assert '&lt;script&gt;alert("explanation")&lt;/script&gt; &amp; more' in md
    assert HOSTILE not in html and HOSTILE not in md


def test_markdown_links_its_figures(built):
    run, paths = built
    md = paths["md"].read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    html_imgs = re.findall(r"<img ", paths["html"].read_text())
    assert len(links) == len(html_imgs) >= 10
    for link in links:
        assert link.startswith("figures/") and (run / "report" / link).is_file()
    for sid, title in SECTIONS.items():
        assert re.search(rf"^## {re.escape(title)}", md, re.M), sid


def test_results_equal_the_stage_outputs(built):
    run, paths = built
    res = json.loads(paths["results"].read_text())
    stages = json.loads((run / "reproduce.json").read_text())["stages"]
    ev = json.loads((run / "eval" / HOOK / "results" / f"{MAIN}.json").read_text())
    main = res["main_sae"][HOOK]
    assert main["name"] == MAIN and main["alpha"] == 8.6e-4 and main["ratio"] == 2.0
    for k in ("fvu", "l0", "alive_fraction"):
        assert main[k] == ev["metrics"][k]
    for k in ("ce_recovered", "kl", "ppl_clean", "ppl_spliced"):
        assert main[k] == ev["spliced"][k] and main[k] is not None
    prov = main["provenance"]
    assert prov["weights_sha256"] == _sha256(run / "dicts" / HOOK / MAIN / "sae_weights.safetensors")
    assert prov["store_hash"] == ev["identity"]["store_hash"] == res["store"]["hashes"][HOOK]
    assert prov["stage_keys"] == {k: stages[k]["key"] for k in ("harvest", f"train:{HOOK}", f"eval:{HOOK}")}
    mlp = res["main_sae"]["blocks.2.mlp.hook_post"]
    assert mlp["name"] == "untied_l1_r2_a0.00032"

    # autointerp: the mean and CI of the top-and-random scores, recomputed from scores.jsonl over every scored
    # feature; an undefined (null) score counts as 0 (issue 13: it used to be left out of the mean and of n)
    ai = res["autointerp"][SCORER][HOOK][MAIN]
    rows = [json.loads(x) for x in (run / "interpret" / HOOK / SCORER / MAIN / "scores.jsonl").read_text().splitlines()]
    raw = [r["scores"]["top_random"] for r in rows if "scores" in r]
    s = np.array([0.0 if v is None else v for v in raw])
    assert (ai["top_random"]["n"], ai["top_random"]["undefined"]) == (len(raw), raw.count(None))
    assert ai["top_random"]["mean"] == pytest.approx(s.mean(), rel=1e-12)
    assert ai["top_random"]["ci95"] == pytest.approx(1.96 * s.std(ddof=1) / np.sqrt(len(s)), rel=1e-9)
    assert ai["provenance"]["weights_sha256"] == prov["weights_sha256"]

    # Table 2: Pearson r over the SAE features at the main α of both residual hooks
    pooled = []
    for hook in RESID:
        for name in ("tied_l1_r0.5_a0.00086", MAIN):
            for line in (run / "interpret" / hook / SCORER / name / "scores.jsonl").read_text().splitlines():
                r = json.loads(line)
                if "scores" in r and r["scores"]["top_random"] is not None:
                    pooled.append((r["scores"]["top_random"], r["skew"], r["kurtosis"]))
    p = np.array(pooled)
    t2 = res["table2"][SCORER]["pooled_sae_main_alpha"]
    assert t2["skew"]["n"] == len(p)  # Table 2 keeps to the defined scores
    assert t2["skew"]["r"] == pytest.approx(np.corrcoef(p[:, 0], p[:, 1])[0, 1], abs=1e-9)
    assert t2["kurtosis"]["r"] == pytest.approx(np.corrcoef(p[:, 0], p[:, 2])[0, 1], abs=1e-9)

    # IOI and the case study
    ioi = json.loads((run / "ioi" / "layer1" / f"{MAIN}.json").read_text())
    got = res["ioi"]["layers"]["1"][MAIN]
    assert got["kl_base"] == ioi["kl_base"] and got["min_kl"] == min(p["kl"] for p in ioi["quick"]["records"])
    assert got["weights_sha256"] == prov["weights_sha256"] and got["ratio"] == 2.0
    cs = json.loads((run / "case_studies" / "case_study.json").read_text())
    assert res["case_study"]["search"]["features"] == [f["feature"] for f in cs["search"]["features"]]
    assert [f["feature"] for f in res["case_study"]["features"]] == [f["feature"] for f in cs["features"]]
    assert res["case_study"]["circuit_root"] == {"hook": cs["circuit"]["hook"], "feature": cs["circuit"]["feature"]}
    assert res["table1"][SCORER]["features"][0]["explanation"] == EXPLANATION


def test_claims_are_judged(built):
    run, paths = built
    res = json.loads(paths["results"].read_text())
    verdicts = {(c["key"], c["scope"]): c["verdict"] for c in res["claims"]}
    assert set(verdicts.values()) <= {HELD, NOT_HELD, NOT_MEASURED}
    keys = {k for k, _ in verdicts}
    assert {
        "fig2_above",
        "fig2_ci",
        "fig2_declines",
        "fig3_features",
        "fig3_edit",
        "fig3_alpha0",
        "fig3_floor",
        "fig4_apostrophe",
        "fig4_s",
        "fig5_effects",
        "fig5_cosine",
        "fig6_tradeoff",
        "fig8_small",
        "fig8_fvu",
        "fig9_above",
        "fig9_smaller",
        "fig10_top_random_above",
        "fig16_overcomplete",
        "fig16_mlp_dead",
        "fig18_above",
        "table1_positive",
        "table2_skew",
        "table2_kurtosis",
        "ppl_spliced",
    } <= keys
    # Fig. 5: the target's strongest drop against its strongest rise (issue 13: the rises are recorded too),
    # read from case_study.json
    cs = json.loads((run / "case_studies" / "case_study.json").read_text())
    drop = max([c["effect"] for c in cs["circuit"]["children"]], default=0.0)
    rise = max([-c["effect"] for c in cs["circuit"]["increases"]], default=0.0)
    assert verdicts[("fig5_effects", "")] == (HELD if drop > rise else NOT_HELD)
    # two residual layers and four α per sweep: too few for the decline (≥ 3 layers) and the trade-off (≥ 5)
    assert verdicts[("fig6_tradeoff", "")] == NOT_MEASURED
    assert {v for (k, _), v in verdicts.items() if k == "fig2_declines"} == {NOT_MEASURED}
    # Fig. 18: the top-K baselines took K from the R = 0.5 SAE (_run.py); a layer whose source is flagged not
    # converged in its cfg.json is left out of the comparison, and one with no record is judged
    flagged = []
    for hook in RESID:
        meta = json.loads((run / "dicts" / hook / "tied_l1_r0.5_a0.00086" / "cfg.json").read_text())["metadata"]
        methods = json.loads((run / "interpret" / hook / SCORER / "comparison.json").read_text())["methods"]
        scored = any(
            m["kind"].endswith("_topk") and (m.get("top_random") or {}).get("mean") is not None for m in methods
        )
        if (meta.get("convergence") or {}).get("converged") is False and scored:
            flagged.append(f"layer {hook.split('.')[1]}")
    fig18 = next(c for c in res["claims"] if c["key"] == "fig18_above" and c["scope"] == SCORER)
    assert sorted(fig18["numbers"].get("topk_left_out") or {}) == flagged
    if len(flagged) == len(RESID):
        assert fig18["verdict"] == NOT_MEASURED and "flagged not converged" in fig18["detail"]
    assert verdicts[("fig16_overcomplete", "")] == NOT_MEASURED  # no R ≥ 4 in this sweep
    # Fig. 2 verdict, recomputed from the comparison of each residual hook
    above = []
    for hook in RESID:
        methods = {
            m["method"]: m
            for m in json.loads((run / "interpret" / hook / SCORER / "comparison.json").read_text())["methods"]
        }
        base = [methods[k]["top_random"]["mean"] for k in ("neurons", "random", "pca", "ica")]
        above.append(methods[MAIN]["top_random"]["mean"] > max(base))
    assert verdicts[("fig2_above", SCORER)] == (HELD if all(above) else NOT_HELD)
    assert res["problems"] == []


def test_missing_stages_give_not_run_sections(built, tmp_path):
    run, _ = built
    partial = tmp_path / "partial"
    shutil.copytree(run, partial, ignore=shutil.ignore_patterns("ioi", "case_studies", "interpret", "report"))
    paths = build_report(partial)
    html = paths["html"].read_text()
    for sid in ("table1", "fig2", "fig3", "fig4", "fig5", "fig8", "fig9", "fig10", "fig18", "table2"):
        chunk = html.split(f'<h2 id="{sid}">')[1].split("<h2 ")[0]
        assert "not run in this reproduction" in chunk, sid
    for sid in ("fig6", "fig16", "ppl"):
        assert "not run in this reproduction" not in html.split(f'<h2 id="{sid}">')[1].split("<h2 ")[0], sid
    res = json.loads(paths["results"].read_text())
    assert res["ioi"] is None and res["case_study"] is None and res["autointerp"] == {}
    assert (
        res["main_sae"][HOOK]["fvu"]
        == json.loads((run / "eval" / HOOK / "results" / f"{MAIN}.json").read_text())["metrics"]["fvu"]
    )
    assert {c["verdict"] for c in res["claims"] if c["figure"] in ("Fig. 3", "Fig. 4", "Fig. 5")} == {NOT_MEASURED}

    empty = build_report(tmp_path / "empty")
    html = empty["html"].read_text()
    assert all(f'<h2 id="{sid}">' in html for sid in SECTIONS)
    assert html.count("not run in this reproduction") >= len(SECTIONS) - 2
    assert json.loads(empty["results"].read_text())["main_sae"] == {}


def test_malformed_output_costs_only_its_section(built, tmp_path):
    run, _ = built
    broken = tmp_path / "broken"
    shutil.copytree(run, broken, ignore=shutil.ignore_patterns("report", "acts"))
    (broken / "case_studies" / "case_study.json").write_text(json.dumps({"search": [], "features": "x"}))
    (broken / "ioi" / "task.json").write_text("{not json")
    paths = build_report(broken)
    res = json.loads(paths["results"].read_text())
    assert any("task.json" in p for p in res["problems"])
    assert any(p.startswith("section fig4") for p in res["problems"])
    html = paths["html"].read_text()
    assert '<h2 id="fig2">' in html and "could not be built" in html
    assert res["main_sae"][HOOK]["fvu"] is not None


def test_density_tables_per_hook(built):
    run, paths = built
    html, md = paths["html"].read_text(), paths["md"].read_text()
    for sid, hooks in (("fig2", RESID), ("fig10", ["blocks.2.mlp.hook_post"])):
        chunk = html.split(f'<h2 id="{sid}">')[1].split("<h2 ")[0]
        for hook in hooks:
            assert f"top-and-random by activation density at {hook} ({SCORER})" in chunk, (sid, hook)
        assert "favours dense features" in chunk
    assert "An undefined correlation — constant simulation — counts as 0" in md
    # the main SAE's cell in each occupied bin is comparison.json's numbers, with its feature count
    comp = json.loads((run / "interpret" / HOOK / SCORER / "comparison.json").read_text())
    bins = comp["by_density"]["methods"][MAIN]
    assert sum(b["n"] for b in bins.values()) == next(m for m in comp["methods"] if m["method"] == MAIN)["scored"]
    table = md.split(f"top-and-random by activation density at {HOOK} ({SCORER})")[1].split("\n\n")[1]
    for label, b in bins.items():
        if b["n"]:
            escaped = label.replace("[", "\\[").replace("]", "\\]")  # the Markdown escapes link syntax
            row = next(x for x in table.splitlines() if x.startswith(f"| {escaped} |"))
            assert f"{b['mean']:.3f}" in row.split(" | ")[1] and f"n={b['n']}" in row.split(" | ")[1]
    assert f"SAE {MAIN}" in table and "SAE − column at matched density" in table
    pairs = comp["density_matched"]["pairs"][MAIN]
    assert set(pairs) == {
        m["method"] for m in comp["methods"] if m["kind"] in ("neurons", "random", "pca", "pca_topk", "ica", "ica_topk")
    }


def test_a_split_the_corpus_ran_out_on_is_announced(built, tmp_path):
    run, paths = built
    assert "corpus ran out" not in paths["md"].read_text()
    assert json.loads(paths["results"].read_text())["store"]["short_splits"] == []
    short = tmp_path / "short"
    shutil.copytree(run, short, ignore=shutil.ignore_patterns("report"))
    manifest_path = short / "acts" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    held = manifest["splits"]["heldout"]
    rows = sum(s["rows"] for s in held["shards"])
    held["exhausted"], held["target_tokens"] = True, rows * 10 + 7
    manifest_path.write_text(json.dumps(manifest))
    out = build_report(short)
    expected = {"split": "heldout", "rows": rows, "target": rows * 10 + 7}
    assert json.loads(out["results"].read_text())["store"]["short_splits"] == [expected]
    for kind in ("md", "html"):
        text = out[kind].read_text()
        assert "corpus ran out" in text and f"holds {rows:,} tokens, fewer than the {rows * 10 + 7:,}" in text, kind
