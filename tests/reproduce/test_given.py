"""``saex reproduce --dicts`` on a tiny llama: dictionaries of other libraries (a sparsify coder at layer 2, a
SAELens folder at layer 1) analysed without training: the stages that run, what they read, the report's account
of the run, resuming, and bad input refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saex.dictionaries import SAE
from tests._cli import run_cli
from tests.causal._helpers import save_ioi_model
from tests.dictionaries._formats import weights, write_sparsify

TINY = (
    "tokens=3072,heldout_tokens=1024,context_length=32,fragment_length=16,eval_tokens=512,eval_contexts=2,"
    "ica_rows=512,fragments=40,interpret_features=4,ioi_prompts=4,circuit_depth=1,case_max_density=1.0"
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("given")
    save_ioi_model(root, docs=200, extra_words=("'", "s"))
    # the tiny model's residual stream has norm ~0.1: encoders scaled so that features fire on some tokens
    w = weights(32, 128, 1)
    w["W_enc"] *= 50
    write_sparsify(root / "sp", "layers.2", w, 4)
    w = weights(32, 128, 2)
    w["W_enc"] *= 50
    # a saex dictionary trained on another store: the run keeps that as a record, not as a reason to refuse it
    meta = {"hook_name": "blocks.1.hook_resid_post", "store_hash": "0" * 64}
    SAE(w["W_enc"], w["W_dec"], w["b_enc"] - 0.7, w["b_dec"], metadata=meta).save(root / "sl1")
    return root


def _reproduce(inputs: Path, out: Path, dicts: str):
    return run_cli(
        "reproduce",
        "--model",
        inputs / "model",
        "--corpus",
        inputs / "corpus.jsonl",
        "--out",
        out,
        "--set",
        TINY,
        "--dicts",
        dicts,
        "--quiet",
        "--device",
        "cpu",
    )


@pytest.fixture(scope="module")
def run(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("given-run") / "run"
    rc, _, err = _reproduce(inputs, out, f"{inputs / 'sp' / 'layers.2'},{inputs / 'sl1'}")
    assert rc == 0, err
    return out


def test_stages_and_what_they_read(run):
    state = json.loads((run / "reproduce.json").read_text())
    stages = state["stages"]
    assert not any(n.startswith(("calibrate", "train")) for n in stages)
    assert {n: s["status"] for n, s in stages.items()} == dict.fromkeys(stages, "done")
    assert state["given"] == {"blocks.1.hook_resid_post": ["sl1"], "blocks.2.hook_resid_post": ["layers.2"]}
    assert state["main_dict"] == "layers.2"
    # the given dictionaries, copied into the run folder in saex's layout, their source recorded
    copy = SAE.load(run / "given" / "blocks.2.hook_resid_post" / "layers.2")
    assert copy.metadata["source_format"] == "sparsify" and copy.architecture == "topk" and copy.k == 4
    up = SAE.load(run / "given" / "blocks.1.hook_resid_post" / "sl1")
    assert "store_hash" not in up.metadata and up.metadata["trained_store_hash"] == "0" * 64
    manifest = json.loads((run / "acts" / "manifest.json").read_text())
    assert sorted(manifest["hooks"]) == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    for hook, name in (("blocks.1.hook_resid_post", "sl1"), ("blocks.2.hook_resid_post", "layers.2")):
        results = {p.stem for p in (run / "eval" / hook / "results").iterdir()}
        assert name in results and "pca" in results and "neurons" in results
        assert (run / "features" / hook / name / "index.json").is_file()
    case = json.loads((run / "case_studies" / "config.json").read_text())
    assert case["config"]["dict"].endswith("given/blocks.2.hook_resid_post/layers.2")
    assert case["config"]["upstream"][0].endswith("given/blocks.1.hook_resid_post/sl1")
    # the top-k baselines take K from the given dictionary's held-out L0 (the sparsify coder's k = 4)
    meta = json.loads((run / "baselines" / "blocks.2.hook_resid_post" / "pca_topk" / "cfg.json").read_text())
    assert meta["k"] == 4


def test_report_says_the_dictionaries_were_given(run):
    md = (run / "report" / "report.md").read_text()
    assert "Dictionaries: given (saex reproduce --dicts), not trained in this run" in md
    assert "nothing was calibrated or trained in this run" in md
    assert "| layer 2 | layers.2 |" in md and "| layer 1 | sl1 |" in md  # Fig. 2 rows name the given main SAEs
    assert "α calibrated per hook for target L0" not in md


def test_unchanged_rerun_skips_and_an_edited_source_reruns(inputs, run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    src = tmp_path / "sl1"
    shutil.copytree(inputs / "sl1", src)
    dicts = f"{inputs / 'sp' / 'layers.2'},{src}"
    # the copy's stage keys name the original source paths: point them at the copies first
    rc, _, err = _reproduce(inputs, out, dicts)
    assert rc == 0, err
    before = json.loads((out / "reproduce.json").read_text())["stages"]
    rc, _, err = _reproduce(inputs, out, dicts)
    assert rc == 0, err
    again = json.loads((out / "reproduce.json").read_text())["stages"]
    assert {n: s["key"] for n, s in again.items()} == {n: s["key"] for n, s in before.items()}
    d = SAE.load(src)
    d.b_enc_F.data -= 0.1
    d.save(src)
    rc, _, err = _reproduce(inputs, out, dicts)
    assert rc == 0, err
    after = json.loads((out / "reproduce.json").read_text())["stages"]
    changed = {n for n in after if after[n]["key"] != again[n]["key"]}
    assert {"given", "eval:blocks.1.hook_resid_post", "eval:blocks.2.hook_resid_post", "report"} <= changed
    assert "harvest" not in changed


def test_bad_dictionaries_are_refused_before_any_work(inputs, tmp_path):
    w = weights(16, 64, 3)
    SAE(w["W_enc"], w["W_dec"], w["b_enc"], w["b_dec"], metadata={"hook_name": "blocks.1.hook_resid_post"}).save(
        tmp_path / "narrow"
    )
    tc = SAE(
        *(torch.zeros(s) for s in ((32, 64), (64, 32), (64,), (32,))),
        W_skip_OD=torch.zeros(32, 32),
        metadata={"hook_name": "blocks.1.ln2.hook_normalized", "target_hook": "blocks.1.hook_mlp_out"},
    )
    tc.save(tmp_path / "tc")
    for dicts, pattern in (
        (tmp_path / "narrow", "width 16 does not match blocks.1.hook_resid_post's 32"),
        (tmp_path / "tc", "only transcoders"),
        (tmp_path / "missing", "does not exist"),
    ):
        out = tmp_path / f"out-{Path(dicts).name}"
        rc, _, err = _reproduce(inputs, out, str(dicts))
        lines = err.strip().splitlines()
        assert rc == 2 and pattern in lines[-1] and "Traceback" not in err, err
        assert not out.exists() or not any(out.iterdir())
