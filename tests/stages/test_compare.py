"""``saex compare`` end to end on a tiny model: every architecture at matched targets, evaluated, the matched
dictionary of each scored, the comparison's numbers equal to the stages' own files; a rerun skips every stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from saex.cli import main
from saex.dictionaries import architecture_names
from tests._support import write_corpus

ARCHS = ["tied_l1", "untied_l1", "gated", "topk", "batchtopk", "matryoshka", "jumprelu"]
HOOK = "blocks.1.hook_resid_post"


def _args(root: Path, model: Path, corpus: Path) -> list[str]:
    return [
        "compare", "--out", str(root / "run"), "--model", str(model), "--hook", HOOK, "--tokens", "1024",
        "--heldout-tokens", "512", "--l0", "3,8", "--ratio", "2", "--steps", "80", "--batch-size", "32",
        "--grid-l1", "0.001,0.1", "--grid-gated", "0.001,0.3", "--contexts", "2", "--interpret-l0", "5",
        "--interpret-features", "4", "--fragments", "16", "--fragment-length", "8", "--quiet",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("compare")
    corpus = write_corpus(root / "corpus.jsonl")
    # the harvest reads the default corpus unless told otherwise: point it at the test corpus via --acts
    from saex.stages.harvest import HarvestConfig
    from saex.stages.harvest import run as harvest

    harvest(
        HarvestConfig(out=str(root / "acts"), model=str(tiny_llama), corpus=str(corpus), hooks=[HOOK], tokens=1024,
                      heldout_tokens=512, context_length=16),
        progress=False,
    )  # fmt: skip
    args = [*_args(root, tiny_llama, corpus), "--acts", str(root / "acts")]
    assert main(args) == 0
    return root / "run", args


def test_every_architecture_is_compared(compared):
    run, _ = compared
    assert set(ARCHS) == set(architecture_names())
    state = json.loads((run / "reproduce.json").read_text())
    assert all(r["status"] == "done" for r in state["stages"].values()), state["stages"]
    assert set(state["stages"]) == {
        *(f"calibrate:{a}" for a in ("tied_l1", "untied_l1", "gated")),
        *(f"train:{a}" for a in ARCHS),
        "eval",
        "features",
        "interpret",
        "comparison",
    }
    data = json.loads((run / "comparison" / "comparison.json").read_text())
    assert set(data["architectures"]) == set(ARCHS)
    for arch in ARCHS:
        members = json.loads((run / "dicts" / arch / "run.json").read_text())["members"]
        assert len(data["architectures"][arch]) == len(members), arch
        if arch in ("topk", "batchtopk", "matryoshka"):
            assert [m["k"] for m in members] == [3, 8]
        elif arch == "jumprelu":
            assert [m["target_l0"] for m in members] == [3.0, 8.0]
        else:  # the calibrated α of each target (one member when both targets calibrate to the same α)
            chosen = json.loads((run / "calibrate" / arch / "calibration.json").read_text())["chosen"]
            assert [c["target_l0"] for c in chosen] == [3.0, 8.0]
            assert sorted(m["alpha"] for m in members) == sorted({c["alpha"] for c in chosen})


def test_numbers_are_the_evaluations_and_the_matched_dictionaries_are_nearest(compared):
    run, _ = compared
    data = json.loads((run / "comparison" / "comparison.json").read_text())
    results = {}
    for path in (run / "eval" / "results").glob("*.json"):
        r = json.loads(path.read_text())
        results[r["name"]] = r
    for arch, series in data["architectures"].items():
        for row in series:
            r = results[row["dictionary"]]
            assert Path(r["path"]).parent.name == arch
            assert row["l0"] == r["metrics"]["l0"] and row["fvu"] == r["metrics"]["fvu"]
            assert row["dead_fraction"] == r["metrics"]["dead"] / r["d_dict"]
            assert row["ce_recovered"] == r["spliced"]["ce_recovered"]
        assert [x["l0"] for x in series] == sorted(x["l0"] for x in series)
    # autointerp: one dictionary per architecture, the one whose held-out L0 is nearest 5 on a log scale
    picked = {row["arch"]: row["dictionary"] for row in data["autointerp"]}
    assert set(picked) == set(ARCHS)
    for arch, name in picked.items():
        mine = [r for r in results.values() if Path(r["path"]).parent.name == arch]
        best = min(mine, key=lambda r: abs(math.log(r["metrics"]["l0"] / 5)))
        assert name == best["name"]
    (scored,) = (run / "interpret").glob("*/*/comparison.json")
    methods = {m["method"]: m for m in json.loads(scored.read_text())["methods"]}
    for row in data["autointerp"]:
        m = methods[row["dictionary"]]
        assert row["considered"] == m["considered"] == 4 and row["n"] == m["scored"]
        assert row["mean"] == (m["top_random"] or {}).get("mean")
    for png in ("fvu_vs_l0", "ce_recovered_vs_l0", "dead_vs_l0", "autointerp"):
        assert (run / "comparison" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (run / "comparison" / f"{png}.json").is_file()
    plotted = json.loads((run / "comparison" / "fvu_vs_l0.json").read_text())
    assert plotted["topk"] == [{"l0": r["l0"], "fvu": r["fvu"]} for r in data["architectures"]["topk"]]


def test_rerun_skips_every_stage(compared, capsys):
    run, args = compared
    before = (run / "comparison" / "comparison.json").read_text()
    assert main([a for a in args if a != "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("unchanged, skipped") == 14 and ": running" not in out
    assert (run / "comparison" / "comparison.json").read_text() == before


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    for extra, message in (
        (["--archs", "tied_l1,crosscoder"], "unknown --archs 'crosscoder'"),
        (["--l0", "0"], "--l0 must be positive"),
        (["--ratio", "-1"], "--ratio must be positive"),
    ):
        assert main(["compare", "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and err[0].startswith("saex compare: error: "), err
    assert not (tmp_path / "o").exists()


def test_the_report_gets_a_section_with_the_numbers(compared):
    from saex.report.render import build_report

    run, _ = compared
    paths = build_report(run)
    html = paths["html"].read_text()
    chunk = html.split('<h2 id="architectures">')[1].split("<h2 ")[0]
    data = json.loads((run / "comparison" / "comparison.json").read_text())
    for series in data["architectures"].values():
        for r in series:
            assert r["dictionary"] in chunk and f"{r['fvu']:.4f}" in chunk, r
    assert chunk.count("data:image/png;base64,") == 4
    assert json.loads(paths["results"].read_text())["architectures"] == data
