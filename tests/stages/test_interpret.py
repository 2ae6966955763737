"""``saex interpret`` end to end with the offline backend: outputs, resume, the delphi preset, one-line errors.

The store is synthetic (``tests/features/_helpers.write_store``) but its tokens are ids of the tiny
word-level tokenizer of ``tests/_support.py``, and each index gets that tokenizer's text of every token
(``vocab.json`` written after a ``--no-decode`` build, in ``FeatureIndex.token_strings``'s format). Two
dictionaries are indexed:

* ``onehot`` (standard SAE): feature 0 is 1.0 exactly on the token "river", feature 1 on "city" and
  "water", feature 2 is 0.5 on every token (constant: every correlation is undefined), feature 3 never
  fires (skipped);
* ``random``: random directions (paper §3.2 baseline) over activations that are dense Gaussian noise
  apart from those three columns.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from saex.features.index import FeatureIndex
from saex.features.records import Explanation
from saex.interpret.density import density_bin
from saex.interpret.offline import LABEL, TableExplainer, TableSimulator
from saex.interpret.protocol import sample_feature
from saex.interpret.scoring import pooled_pearson
from tests._cli import run_cli as _main
from tests.features._helpers import HOOK
from tests.interpret._fixtures import write_vocab
from tests.stages._interpret import C, D, L, T, interpret_cli, results_folder

PNG = b"\x89PNG\r\n\x1a\n"
TAG = "offline-table-8"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("saex interpret: error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def run(features, tmp_path_factory) -> tuple[Path, Path]:
    """(--out, the results folder) of one offline cunningham2023 run over both indexes."""
    out = tmp_path_factory.mktemp("interpret-run") / "out"
    rc, stdout, err = interpret_cli(features, out, "--device", "cpu")
    assert rc == 0, err
    return out, results_folder(stdout)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folders(run):
    out, res = run
    # results live under the backend tag: offline scores never share a folder with LLM ones
    assert res.is_relative_to(out / TAG)
    assert sorted(p.name for p in out.iterdir()) == ["interpret.json", TAG]
    assert sorted(p.name for p in res.iterdir()) == [
        "comparison.json",
        "comparison.md",
        "onehot",
        "plots",
        "random",
        "table1.md",
    ]
    assert sorted(p.name for p in (res / "onehot").iterdir()) == ["null.jsonl", "scores.jsonl"]
    cfg = json.loads((out / "interpret.json").read_text())["config"]
    assert cfg["backend"] == "offline" and cfg["preset"] == "cunningham2023" and cfg["budget"] == 8


def test_scores_records(run, features):
    _, res = run
    rows = _rows(res / "onehot" / "scores.jsonl")
    assert [r["feature"] for r in rows] == [0, 1, 2, 3]
    identity = {
        "index": FeatureIndex(features / "onehot").meta["identity"],
        "preset": "cunningham2023",
        "backend": TAG,
        "seed": 0,
        "selection": "index",
        "simulator_mode": "auto",
    }
    for r in rows:
        assert r["identity"] == identity
        assert r["backend"] == TAG and r["preset"] == "cunningham2023"
        assert r["scorer"] == LABEL and "lexical predictability" in r["scorer"]
    # feature 0 fires on "river" only: one table entry, and the table predicts it on held-out fragments
    r0 = rows[0]
    assert r0["explanation"]["backend"] == "offline"
    assert [t for t, _ in r0["explanation"]["rule"]["unigrams"]] == ["river"]
    assert all(pair[1] == "river" for pair, _ in r0["explanation"]["rule"]["bigrams"])
    assert "'river'" in r0["explanation"]["text"]
    assert r0["scores"]["top_random"] > 0.95 and r0["scores"]["top"] > 0.9 and r0["scores"]["random"] > 0.9
    assert r0["token_entropy"] == 0.0
    density = (FeatureIndex(features / "onehot").t["nonzero"][0].item()) / (C * T)
    assert r0["density"] == pytest.approx(density)
    # feature 1: two tokens
    assert {t for t, _ in rows[1]["explanation"]["rule"]["unigrams"]} == {"city", "water"}
    assert 0.9 < rows[1]["token_entropy"] <= 1.0
    # feature 2 is constant: every correlation undefined, stored as null (not 0, not NaN)
    assert rows[2]["scores"] == {"top_random": None, "top": None, "random": None}
    line2 = (res / "onehot" / "scores.jsonl").read_text().splitlines()[2]
    assert '"top_random": null' in line2 and "NaN" not in line2
    # feature 3 never fires: skipped, with the reason
    assert rows[3]["skipped"] == "fewer than 20 activating fragments (0)"
    assert "scores" not in rows[3] and "explanation" not in rows[3]
    # every score is the offline explainer and simulator run on the preset's fragments, recomputed here
    for name in ("onehot", "random"):
        ix = FeatureIndex(features / name)
        for r in _rows(res / name / "scores.jsonl"):
            if "scores" not in r:
                continue
            s = sample_feature(ix, r["feature"], "cunningham2023", seed=0)
            e = TableExplainer(8).explain(s.explain)
            assert r["explanation"]["text"] == e.text
            assert r["explanation"]["rule"] == json.loads(json.dumps(e.rule))
            records = s.score_top + s.score_random
            pred, true = TableSimulator().simulate(e, records), [x.activations for x in records]
            want = pooled_pearson(true, pred)
            assert (
                r["scores"]["top_random"] is None
                if math.isnan(want)
                else r["scores"]["top_random"] == pytest.approx(want)
            )
    # random directions: dense, all scored, low on average
    rand = _rows(res / "random" / "scores.jsonl")
    assert [r["feature"] for r in rand] == list(range(12)) and all("scores" in r for r in rand)
    rmean = np.mean([r["scores"]["top_random"] for r in rand])
    assert rmean < 0.5 and rmean < r0["scores"]["top_random"] - 0.4


def test_null_uses_another_features_explanation(run, features):
    _, res = run
    for name, scored in (("onehot", [0, 1, 2]), ("random", list(range(12)))):
        null = _rows(res / name / "null.jsonl")
        assert [r["feature"] for r in null] == scored
        assert all(r["explanation_of"] != r["feature"] for r in null)
        assert sorted(r["explanation_of"] for r in null) == scored  # a permutation of the scored features
    # each null score is the donor's rule simulated on the feature's own scoring fragments
    ix = FeatureIndex(features / "onehot")
    rules = {r["feature"]: r["explanation"] for r in _rows(res / "onehot" / "scores.jsonl") if "scores" in r}
    for r in _rows(res / "onehot" / "null.jsonl"):
        donor = rules[r["explanation_of"]]
        s = sample_feature(ix, r["feature"], "cunningham2023", seed=0)
        records = s.score_top + s.score_random
        pred = TableSimulator().simulate(Explanation(donor["text"], donor["backend"], donor["rule"]), records)
        true = [x.activations for x in records]
        for key, sl in (("top_random", slice(0, 10)), ("top", slice(0, 5)), ("random", slice(5, 10))):
            want = pooled_pearson(true[sl], pred[sl])
            assert r["scores"][key] is None if math.isnan(want) else r["scores"][key] == pytest.approx(want)


def test_comparison_tables_and_plots(run):
    _, res = run
    comp = json.loads((res / "comparison.json").read_text())
    assert comp["scorer"] == LABEL and comp["preset"] == "cunningham2023"
    m = {x["method"]: x for x in comp["methods"]}
    assert set(m) == {"onehot", "random"}
    oh, rd = m["onehot"], m["random"]
    assert (oh["considered"], oh["scored"], oh["skipped"]) == (4, 3, 1)
    assert (rd["considered"], rd["scored"], rd["skipped"]) == (12, 12, 0)
    assert oh["kind"] == "standard" and rd["kind"] == "random" and oh["hook"] == HOOK
    assert oh["d_dict"] == 4 and oh["ratio"] == 4 / D
    rows = _rows(res / "onehot" / "scores.jsonl")
    # the mean is over all 3 scored features, an undefined (null) correlation counted as 0 (issue 13; it used to
    # be left out: for feature 2, constant, that gave n = 2 and the mean of features 0 and 1 alone)
    raw = {k: [r["scores"][k] for r in rows[:3]] for k in ("top_random", "top", "random")}
    for k, values in raw.items():
        counted = [0.0 if v is None else v for v in values]
        assert (oh[k]["n"], oh[k]["undefined"]) == (3, values.count(None))
        assert oh[k]["mean"] == pytest.approx(np.mean(counted))
        assert oh[k]["ci95"] == pytest.approx(1.96 * np.std(counted, ddof=1) / math.sqrt(3))
    rand = [r["scores"]["top_random"] for r in _rows(res / "random" / "scores.jsonl")]
    assert rd["top_random"]["mean"] == pytest.approx(np.mean(rand))
    assert rd["top_random"]["ci95"] == pytest.approx(1.96 * np.std(rand, ddof=1) / math.sqrt(12))
    assert rd["top_random"]["mean"] < oh["top_random"]["mean"]
    for k in ("top_random", "top", "random"):
        assert f"null_{k}" in oh and f"null_{k}" in rd
    assert [f["feature"] for f in oh["first_features"]] == [0, 1, 2]
    md = (res / "comparison.md").read_text()
    assert LABEL in md and "| onehot |" in md and "| random |" in md and "cunningham2023" in md
    assert "An undefined correlation — constant simulation — counts as 0" in md
    k = oh["top_random"]["undefined"]
    cell = f"{oh['top_random']['mean']:.3f} ± {oh['top_random']['ci95']:.3f}" + (f" ({k} undefined)" if k else "")
    assert f"| {HOOK} | 3 | 1 | {cell} |" in md
    t1 = (res / "table1.md").read_text()
    assert "### onehot" in t1 and "### random" in t1 and "'river'" in t1 and LABEL in t1
    plots = res / "plots"
    assert sorted(p.name for p in plots.iterdir()) == sorted(
        f"{k}.{e}" for k in ("top_random", "top", "random") for e in ("png", "json")
    )
    for k in ("top_random", "top", "random"):
        assert (plots / f"{k}.png").read_bytes()[:8] == PNG
        data = json.loads((plots / f"{k}.json").read_text())
        assert data["score"] == k and data["scorer"] == LABEL
        assert {d["method"]: d["mean"] for d in data["methods"]} == pytest.approx(
            {"onehot": oh[k]["mean"], "random": rd[k]["mean"]}
        )


def test_rerun_appends_nothing(features, run):
    out, res = run
    files = {p: p.read_text() for p in sorted(res.glob("*/*.jsonl"))}
    assert len(files) == 4
    comparison = (res / "comparison.json").read_text()
    rc, stdout, _ = interpret_cli(features, out)
    assert rc == 0 and results_folder(stdout) == res
    for p, text in files.items():
        assert p.read_text() == text, p
    assert (res / "comparison.json").read_text() == comparison
    assert (res / "comparison.md").read_text() in stdout


def test_resume_scores_only_the_missing_features(features, tmp_path):
    out = tmp_path / "out"
    rc, stdout, _ = interpret_cli(features, out, "--n-features", "2", "--no-null")
    assert rc == 0
    res = results_folder(stdout)
    path = res / "onehot" / "scores.jsonl"
    first = path.read_text().splitlines()
    assert [json.loads(x)["feature"] for x in first] == [0, 1]
    assert not (res / "onehot" / "null.jsonl").exists()
    # a kill in the middle of writing a line leaves it cut, without its newline
    with open(path, "a") as fh:
        fh.write('{"feature": 2, "identity": {"ind')
    assert interpret_cli(features, out, "--n-features", "4", "--no-null")[0] == 0
    lines = path.read_text().splitlines()
    assert lines[:2] == first and [json.loads(x)["feature"] for x in lines] == [0, 1, 2, 3]
    # another seed is another identity: its rows are added beside, not mixed with, the first ones
    rc, stdout, _ = interpret_cli(features, out, "--n-features", "4", "--no-null", "--seed", "1")
    assert rc == 0 and results_folder(stdout) == res
    assert [r["identity"]["seed"] for r in _rows(path)] == [0] * 4 + [1] * 4


def test_delphi_preset(features, tmp_path):
    out = tmp_path / "out"
    rc, stdout, err = interpret_cli(features, out, "--preset", "delphi")
    assert rc == 0, err
    res = results_folder(stdout)
    assert res.is_relative_to(out / TAG)
    rows = _rows(res / "onehot" / "scores.jsonl")
    for r in rows[:3]:
        assert set(r["scores"]) == {"auroc", "balanced_accuracy", "recall_by_decile"}
        assert r["preset"] == "delphi" and r["identity"]["preset"] == "delphi"
    # "river": called on every activating window (it holds a river) and on no non-activating one
    assert rows[0]["scores"]["auroc"] == 1.0 and rows[0]["scores"]["balanced_accuracy"] == 1.0
    assert len(rows[0]["scores"]["recall_by_decile"]) == 10
    assert all(v in (None, 1.0) for v in rows[0]["scores"]["recall_by_decile"])
    # feature 2 fires on every fragment: no non-activating windows, detection undefined
    assert rows[2]["scores"]["auroc"] is None and rows[2]["scores"]["balanced_accuracy"] is None
    comp = json.loads((res / "comparison.json").read_text())
    assert comp["preset"] == "delphi"
    for m in comp["methods"]:
        assert {"auroc", "balanced_accuracy", "null_auroc"} <= set(m) and "top_random" not in m
    assert sorted(p.name for p in (res / "plots").glob("*.png")) == ["auroc.png", "balanced_accuracy.png"]
    assert all((res / "plots" / n).read_bytes()[:8] == PNG for n in ("auroc.png", "balanced_accuracy.png"))


def test_an_index_without_token_text_is_refused(features, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(features / "onehot", bare / "onehot")
    (bare / "onehot" / "vocab.json").unlink()
    rc, _, err = interpret_cli(bare, tmp_path / "out")
    assert rc == 2 and "--no-decode" in _one_error_line(err)


def test_an_index_with_too_few_top_fragments_is_refused(features, tmp_path):
    root = features.parent
    small = tmp_path / "small"
    rc, _, err = _main(
        "features",
        "--acts",
        str(root / "acts"),
        "--dicts",
        str(root / "dicts" / "onehot"),
        "--out",
        str(small),
        "--fragment-length",
        str(L),
        "--no-one-per-document",
        "--top",
        "10",
        "--no-decode",
        "--quiet",
    )
    assert rc == 0, err
    write_vocab(small / "onehot", json.loads((features / "onehot" / "vocab.json").read_text()))
    rc, _, err = interpret_cli(small, tmp_path / "out")
    assert rc == 2 and "--top >= 20" in _one_error_line(err)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--preset", "paper"], "unknown --preset 'paper'"),
        (["--backend", "claude"], "unknown --backend 'claude'"),
        (["--backend", "openai"], "--backend openai needs --model"),
        (["--n-features", "0"], "--n-features must be positive, got 0"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--selection", "best"], "unknown --selection 'best'"),
        (["--budget", "0"], "--budget must be positive"),
    ],
)
def test_errors_are_one_line(features, tmp_path, args, message):
    out = tmp_path / "out"
    rc, _, err = interpret_cli(features, out, *args)
    assert rc == 2 and message in _one_error_line(err)
    assert not out.exists()


def test_missing_features_path_is_one_line(tmp_path):
    out = tmp_path / "out"
    rc, _, err = interpret_cli(tmp_path / "nowhere", out)
    assert rc == 2 and "does not exist" in _one_error_line(err)
    assert not out.exists()
    (tmp_path / "empty").mkdir()
    rc, _, err = interpret_cli(tmp_path / "empty", out)
    assert rc == 2 and "holds no feature indexes" in _one_error_line(err)


def test_comparison_by_density(run, features):
    _, res = run
    comp = json.loads((res / "comparison.json").read_text())
    bd, dm = comp["by_density"], comp["density_matched"]
    assert bd["score"] == "top_random" and bd["undefined_as"] == 0.0
    assert bd["edges"] == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    # every scored feature lands in the bin of its recorded density; skipped ones (feature 3) in none
    for name in ("onehot", "random"):
        rows = [r for r in _rows(res / name / "scores.jsonl") if "scores" in r]
        bins = bd["methods"][name]
        assert sum(b["n"] for b in bins.values()) == len(rows)
        for label, stat in bins.items():
            inside = [r["scores"]["top_random"] for r in rows if density_bin(r["density"]) == label]
            assert stat["n"] == len(inside)
            assert stat["undefined"] == sum(v is None for v in inside)
            if inside:
                assert stat["mean"] == pytest.approx(np.mean([0.0 if v is None else v for v in inside]))
    # feature 2 (0.5 on every token) and the random directions (signed, non-zero everywhere) are in the top bin
    assert bd["methods"]["onehot"]["[1e-1, 1]"]["n"] >= 1
    assert bd["methods"]["random"]["[1e-1, 1]"]["n"] == 12
    # onehot is the SAE, random the baseline; onehot has fewer than 5 features in any bin: no matched difference
    pair = dm["pairs"]["onehot"]["random"]
    assert list(dm["pairs"]) == ["onehot"] and pair["diff"] is None and pair["bins"] == []
    m = {x["method"]: x for x in comp["methods"]}
    want = m["onehot"]["top_random"]["mean"] - m["random"]["top_random"]["mean"]
    assert pair["unmatched_diff"] == pytest.approx(want)
    md = (res / "comparison.md").read_text()
    used = [b for b in bd["bins"] if any(bd["methods"][x][b]["n"] for x in ("onehot", "random"))]
    assert "top_random by activation density" in md and "| method | " + " | ".join(used) + " |" in md
    assert f"| onehot | no matched bin / {pair['unmatched_diff']:+.3f} |" in md
