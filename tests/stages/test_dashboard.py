"""``saex dashboard`` end to end on a real feature index (``saex features`` of an identity dictionary, with
token text) and real offline ``saex interpret`` outputs (two presets): rows, payload sections checked
against the index, scores against scores.jsonl, resumable rebuilds, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saex.dashboard.gather import load_interpretations
from saex.dashboard.site import feature_path
from saex.errors import SaexError
from saex.features.index import FeatureIndex
from saex.stages.dashboard import DashboardConfig
from saex.stages.dashboard import run as build_dashboard
from tests._cli import run_cli as _main
from tests.interpret._fixtures import build_protocol_index

TAG = "offline-table-8"


def _call_args(path: Path, callback: str) -> list:
    text = path.read_text(encoding="utf-8")
    return json.loads("[" + text[len(callback) + 1 : -3] + "]")


def _scores(path: Path) -> dict[int, dict]:
    return {r["feature"]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(features folder holding the indexes ``ident`` and ``twin``, the ``ident`` index, interpret folder)."""
    root = tmp_path_factory.mktemp("dashboard-cli")
    index = build_protocol_index(root, name="ident")
    build_protocol_index(root, name="twin")
    interp = root / "interpret"
    for preset in ("cunningham2023", "delphi"):
        rc, _, err = _main(
            "interpret", "--features", str(index), "--out", str(interp), "--preset", preset, "--no-null", "--quiet"
        )
        assert rc == 0, err
    return index.parent, index, interp


@pytest.fixture(scope="module")
def site(inputs, tmp_path_factory):
    features, _, interp = inputs
    out = tmp_path_factory.mktemp("dashboard-site") / "dash"
    rc, stdout, err = _main(
        "dashboard",
        "--features",
        str(features),
        "--dict",
        "ident",
        "--interpret",
        str(interp),
        "--out",
        str(out),
        "--examples",
        "5",
        "--decile-examples",
        "3",
        "--analyses",
        "histogram",
        "--quiet",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    assert stdout.strip() == f"dashboard in {out}: open {out / 'index.html'} in a browser"
    return out


def test_rows_match_the_index_and_the_scores(inputs, site):
    _, index_dir, interp = inputs
    index = FeatureIndex(index_dir)
    (data,) = _call_args(site / "data" / "index.js", "saexIndex")
    rows = data["rows"]
    assert [r["id"] for r in rows] == list(range(index.n_features))
    scores = _scores(interp / TAG / "cunningham2023" / "ident" / "scores.jsonl")
    for r in rows:
        f = r["id"]
        assert r["density"] == pytest.approx(float(index.density()[f]))
        assert r["max"] == pytest.approx(float(index.t["max"][f]))
        if "scores" in scores[f]:  # the table shows the paper preset's top-and-random score
            assert r["score"] == pytest.approx(scores[f]["scores"]["top_random"])
            assert r["explanation"] == scores[f]["explanation"]["text"]
        else:
            assert r["score"] is None and r["explanation"] is None
    assert rows[1]["score"] is None  # feature 1 has 19 activating fragments: skipped by the protocol
    assert data["meta"]["dictionary"] == "ident" and data["meta"]["score"] == f"top-and-random of {TAG}/cunningham2023"


def test_payload_scores_from_every_preset(inputs, site):
    _, _, interp = inputs
    cunn = _scores(interp / TAG / "cunningham2023" / "ident" / "scores.jsonl")
    delphi = _scores(interp / TAG / "delphi" / "ident" / "scores.jsonl")
    p, nav = _call_args(site / feature_path(0), "saexFeature")
    assert nav == {"prev": None, "next": 1}
    assert list(p["scores"]) == [f"{TAG}/cunningham2023", f"{TAG}/delphi"]
    s = p["scores"][f"{TAG}/cunningham2023"]
    want = cunn[0]["scores"]
    assert s == pytest.approx({"top_and_random": want["top_random"], "top": want["top"], "random": want["random"]})
    d = p["scores"][f"{TAG}/delphi"]
    assert d["auroc"] == pytest.approx(delphi[0]["scores"]["auroc"]) and d["top_and_random"] is None
    assert p["explanations"][f"{TAG}/delphi"] == delphi[0]["explanation"]["text"]
    assert p["explanation"] == cunn[0]["explanation"]["text"]
    # the synthetic store has no model: --analyses histogram only (tests/dashboard/test_analyses.py
    # checks the panels' numbers)
    assert p["histogram"]["source"].startswith("index random sample")
    for k in ("logit_lens", "output_effect", "upstream"):
        assert p[k] is None
    assert p["not_computed"]["logit_lens"] == "not requested (--analyses)"
    assert all("saex case-study" in p["not_computed"][k] for k in ("output_effect", "upstream"))
    p1, _ = _call_args(site / feature_path(1), "saexFeature")
    assert p1["skipped"][f"{TAG}/cunningham2023"].startswith("fewer than 20 activating fragments")


def test_sections_are_the_index_examples(inputs, site):
    _, index_dir, _ = inputs
    index = FeatureIndex(index_dir)
    p, _ = _call_args(site / feature_path(0), "saexFeature")
    sections = p["sections"]
    top_ids, _ = index.examples(0, "top")
    top_acts = index.activations(0, "top")
    assert sections[0]["title"].startswith("Top activations")
    assert [e["tokens"] for e in sections[0]["examples"]] == index.token_strings(top_ids[:5])
    for e, a in zip(sections[0]["examples"], top_acts[:5]):
        np.testing.assert_allclose(e["acts"], a, rtol=1e-5)
    # deciles of the random activating sample (100 kept of feature 0's 140): ranked by fragment max,
    # 10 per decile, highest decile first, the first 3 of each in the sample's order
    rand_ids, _ = index.examples(0, "random")
    rand_acts = index.activations(0, "random")
    rank = np.empty(len(rand_ids), dtype=int)
    rank[np.argsort(rand_acts.max(1), kind="stable")] = np.arange(len(rand_ids))
    deciles = sections[1:11]
    assert [s["title"].split(":")[0] for s in deciles] == (
        ["Decile 10 of 10 (highest)"] + [f"Decile {d} of 10" for d in range(9, 1, -1)] + ["Decile 1 of 10 (lowest)"]
    )
    for d, s in zip(range(9, -1, -1), deciles):
        members = [i for i in range(len(rand_ids)) if rank[i] // 10 == d][:3]
        assert [e["tokens"] for e in s["examples"]] == index.token_strings(rand_ids[members])
        for e, i in zip(s["examples"], members):
            assert max(e["acts"]) == pytest.approx(float(rand_acts[i].max()), rel=1e-5)
    assert sections[11]["title"].startswith("Random activating fragments (5 of a sample of 100)")
    assert [e["tokens"] for e in sections[11]["examples"]] == index.token_strings(rand_ids[:5])
    assert len(sections) == 12


def test_rebuild_rewrites_nothing(inputs, site):
    features, _, interp = inputs
    args = [
        "dashboard",
        "--features",
        str(features),
        "--dict",
        "ident",
        "--interpret",
        str(interp),
        "--out",
        str(site),
        "--examples",
        "5",
        "--decile-examples",
        "3",
        "--analyses",
        "histogram",
        "--quiet",
    ]
    assert _main(*args)[0] == 0
    m = json.loads((site / "dashboard.json").read_text())
    assert (m["status"], m["written"], m["unchanged"]) == ("complete", 0, 4)


def test_analyses_are_merged_and_limit_applies(inputs, tmp_path):
    features, _, _ = inputs
    hist = {
        "edges": [0.1 * k for k in range(11)],
        "series": [{"label": "t1", "other": False, "counts": [1] * 10}],
        "n": 10,
        "total": 10,
        "source": "test",
    }
    cfg = DashboardConfig(
        features=str(features), dict=str(features / "twin"), out=str(tmp_path / "d"), limit=2, analyses=""
    )
    out = build_dashboard(cfg, progress=False, analyses={1: {"histogram": hist}})
    (data,) = _call_args(out / "data" / "index.js", "saexIndex")
    assert [r["id"] for r in data["rows"]] == [0, 1] and data["rows"][0]["score"] is None
    p, nav = _call_args(out / feature_path(1), "saexFeature")
    assert p["histogram"] == hist and p["logit_lens"] is None and nav == {"prev": 0, "next": None}
    assert "histogram" not in p["not_computed"] and p["not_computed"]["logit_lens"] == "not requested (--analyses)"
    assert p["scores"] == {} and p["explanation"] is None
    with pytest.raises(SaexError, match="unknown analysis 'histo'"):
        build_dashboard(cfg, progress=False, analyses={0: {"histo": hist}})
    # refused before the build began (a begun build marks itself in progress)
    assert json.loads((out / "dashboard.json").read_text())["status"] == "complete"


def test_interpretations_of_another_index_are_refused(inputs):
    _, _, interp = inputs
    with pytest.raises(SaexError, match="holds no saex interpret scores"):
        load_interpretations(interp, {"weights_sha256": "other"})


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dict", "nope"], "--dict 'nope' is not among the feature indexes in"),
        ([], "holds 2 feature indexes; choose one with --dict (one of: ident, twin)"),
        (["--dict", "ident", "--examples", "-1"], "--examples must be >= 0, got -1"),
        (["--dict", "ident", "--limit", "0"], "--limit must be positive, got 0"),
        (["--dict", "ident", "--interpret", "/nonexistent/x"], "--interpret folder /nonexistent/x does not exist"),
        (["--dict", "ident"], "the logit lens needs the store's model: could not load model 'synthetic'"),
        (
            ["--dict", "ident", "--analyses", "histogram,output_effect"],
            "unknown --analyses 'output_effect'; allowed: histogram, logit_lens, comma-separated, or '' for none "
            "(output_effect and upstream come from --case-study)",
        ),
        (["--dict", "ident", "--analyses", "lens"], "unknown --analyses 'lens'; allowed: histogram, logit_lens"),
        (["--dict", "ident", "--case-study", "/nonexistent/c"], "--case-study folder /nonexistent/c does not exist"),
    ],
)
def test_errors_are_one_line(inputs, tmp_path, args, message):
    features, _, _ = inputs
    rc, _, err = _main("dashboard", "--features", str(features), "--out", str(tmp_path / "o"), "--quiet", *args)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saex dashboard: error: ") and "Traceback" not in err
    assert message in lines[0], lines[0]


def test_non_dashboard_output_folder_is_refused(inputs, tmp_path):
    features, _, _ = inputs
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "mine.txt").write_text("keep")
    rc, _, err = _main("dashboard", "--features", str(features), "--dict", "ident", "--out", str(tmp_path / "o"))
    assert rc == 2 and "is not empty and holds no saex dashboard" in err
    assert (tmp_path / "o" / "mine.txt").read_text() == "keep"
