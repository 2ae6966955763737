"""``saex reproduce`` end to end on a tiny llama whose tokenizer knows the IOI templates: every stage runs,
an unchanged rerun skips everything, a changed option reruns only what depends on it, and a run killed
inside a stage resumes to the same outputs as an uninterrupted one."""

from __future__ import annotations

import json

import pytest

from saex.files import tree_hash
from saex.reproduce.pipeline import absolute_in_run, parse_overrides, relative_to_run
from saex.reproduce.plan import plan
from tests._cli import run_cli as _main
from tests.causal._helpers import save_ioi_model

TINY = (
    "tokens=3072,heldout_tokens=1024,context_length=32,fragment_length=16,train_batch=256,train_steps=12,"
    "calibration_batch=64,target_l0_resid=[3,6],target_l0_resid_other=[3],target_l0_mlp=[3],"
    "main_target_l0_resid=3,main_target_l0_mlp=3,ratios_resid=[1,2],main_ratio=2.0,eval_tokens=512,"
    "eval_contexts=2,ica_rows=512,fragments=40,interpret_features=4,ioi_prompts=4,circuit_depth=1,"
    "case_max_density=1.0,mlp_layers=[1]"
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    save_ioi_model(root, docs=200, extra_words=("'", "s"))
    return root


def _reproduce(inputs, out, extra=""):
    return _main(
        "reproduce",
        "--model",
        str(inputs / "model"),
        "--corpus",
        str(inputs / "corpus.jsonl"),
        "--out",
        str(out),
        "--set",
        TINY + extra,
        "--quiet",
        "--device",
        "cpu",
    )


def _state(out) -> dict:
    return json.loads((out / "reproduce.json").read_text())


@pytest.fixture(scope="module")
def full_run(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    rc, stdout, err = _reproduce(inputs, out)
    assert rc == 0, err
    return out, stdout, err


def test_every_stage_runs(full_run):
    out, stdout, err = full_run
    stages = _state(out)["stages"]
    assert {n: r["status"] for n, r in stages.items() if r["status"] != "done"} == {}
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.mlp.hook_post"]
    for hook in hooks:
        for kind in ("train", "baselines", "eval", "features", "interpret"):
            assert f"{kind}:{hook}" in stages
    # the quick plan calibrates the main residual layer for both residual layers, and the MLP on its own
    assert {n for n in stages if n.startswith("calibrate:")} == {f"calibrate:{hooks[1]}", f"calibrate:{hooks[2]}"}
    other = json.loads((out / "dicts" / hooks[0] / "run.json").read_text())["members"]
    main_alpha = {
        c["target_l0"]: c["alpha"]
        for c in json.loads((out / "calibrate" / hooks[1] / "calibration.json").read_text())["chosen"]
    }[3.0]
    assert [m["alpha"] for m in other] == [main_alpha]
    # the sweeps: tied on the residual stream, untied on the MLP, each α the one its hook's calibration chose
    # for a target L0: at the main layer both targets at the main R = 2, and R = 1 at the main target's α
    chosen = {
        c["target_l0"]: c["alpha"]
        for c in json.loads((out / "calibrate" / hooks[1] / "calibration.json").read_text())["chosen"]
    }
    # (a dozen steps barely move this tiny model's L0: both targets may get the same, extrapolated α)
    assert set(chosen) == {3.0, 6.0} and chosen[3.0] >= chosen[6.0] > 0
    assert (
        _state(out)["calibrated"][hooks[1]]
        == json.loads((out / "calibrate" / hooks[1] / "calibration.json").read_text())["chosen"]
    )
    members = [json.loads(p.read_text())["metadata"] for p in (out / "dicts" / hooks[1]).glob("*/cfg.json")]
    assert sorted((m["arch"], m["ratio"], m["alpha"]) for m in members) == sorted(
        {("tied_l1", 1.0, chosen[3.0]), ("tied_l1", 2.0, chosen[3.0]), ("tied_l1", 2.0, chosen[6.0])}
    )
    assert all(m["steps"] == 12 and "convergence" in m for m in members)
    # the report's training section: calibration, every dictionary's convergence verdict, the rows used
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["training"]["calibration"][hooks[1]] == _state(out)["calibrated"][hooks[1]]
    for hook in hooks:
        run = json.loads((out / "dicts" / hook / "run.json").read_text())
        assert results["training"]["convergence"][hook] == run["convergence"]
        assert set(run["convergence"]) == {m["name"] for m in run["members"]}
        assert results["training"]["rows"][hook]["exclude_first"] == 1
    md = (out / "report" / "report.md").read_text()
    assert "Training: α calibration, convergence and the rows used" in md
    # twelve steps converge nothing: the report says so, dictionary by dictionary
    flagged = [
        (h, n) for h in hooks for n, v in results["training"]["convergence"][h].items() if v["converged"] is False
    ]
    assert flagged and all(f"NOT converged: {h} {n}" in md for h, n in flagged)
    total = sum(len(results["training"]["convergence"][h]) for h in hooks)
    assert f"converged; **{len(flagged)} NOT converged**" in md and f"of {total} converged" in md
    mlp = [json.loads(p.read_text())["metadata"] for p in (out / "dicts" / hooks[2]).glob("*/cfg.json")]
    assert [m["arch"] for m in mlp] == ["untied_l1"]
    assert (out / "ioi" / "task.json").exists()
    assert (out / "report" / "report.html").exists() and (out / "report" / "results.json").exists()
    assert "report: " in stdout and "expected time on this machine" in stdout
    # each record's outputs hash is the content of its folder now
    for name, rec in _state(out)["stages"].items():
        folder = {"harvest": "acts", "case_study": "case_studies"}.get(
            name, name.replace(":", "/").replace("train/", "dicts/")
        )
        assert tree_hash(out / folder) == rec["outputs"], name


def test_device_options_reach_every_stage_that_takes_them(full_run):
    """``--device cpu`` (given to every run here) is in the config of every stage with a --device; harvest's
    --device is where its model runs (the command's --lm-device, or --device); --lm-dtype goes to the stages that
    run a model; the resolved placement heads reproduce.json."""
    import dataclasses

    from saex.cli import stage_modules

    out, _, _ = full_run
    state = _state(out)
    assert state["placement"] == {"device": "cpu", "lm_device": "cpu", "lm_dtype": "float32"}
    modules = stage_modules()
    seen = set()
    for name, rec in state["stages"].items():
        command = name.split(":")[0].replace("_", "-")
        fields = {f.name for f in dataclasses.fields(modules[command].CONFIG)}
        cfg = rec["config"]
        assert ("device" in cfg) == ("device" in fields), name
        if "device" in fields:
            assert cfg["device"] == "cpu", name
            seen.add(command)
        if "lm_device" in fields:
            assert cfg["lm_device"] == "", name
        assert cfg.get("lm_dtype") == ("auto" if "lm_dtype" in fields else None), name
    assert {"harvest", "train", "baselines", "eval", "features", "interpret", "ioi", "case-study", "dashboard"} <= seen


def test_a_stage_key_leaves_out_where_it_ran():
    from saex.reproduce.pipeline import stage_key

    key = stage_key("eval:x", {"tokens": 5, "device": "cpu", "lm_device": "", "lm_dtype": "auto"}, {"harvest": "h"})
    assert key == stage_key(
        "eval:x", {"tokens": 5, "device": "cuda:1", "lm_device": "cuda:0", "lm_dtype": "auto"}, {"harvest": "h"}
    )
    assert key != stage_key(
        "eval:x", {"tokens": 5, "device": "cpu", "lm_device": "", "lm_dtype": "bfloat16"}, {"harvest": "h"}
    )


def test_placement_options_by_stage():
    """The dictionaries' stages get --device; those that run a model --lm-device and --lm-dtype too; harvest, whose
    --device is its model's, gets --lm-device there; a stage without the options (the report) is left alone."""
    from saex.reproduce.graph import placed
    from saex.stages.baselines import BaselinesConfig
    from saex.stages.eval import EvalConfig
    from saex.stages.harvest import HarvestConfig
    from saex.stages.report import ReportConfig
    from saex.stages.reproduce import ReproduceConfig

    cfg = ReproduceConfig(device="cpu", lm_device="cuda:1", lm_dtype="bfloat16")
    h = placed(HarvestConfig(), cfg)
    assert (h.device, h.lm_dtype) == ("cuda:1", "bfloat16")
    e = placed(EvalConfig(), cfg)
    assert (e.device, e.lm_device, e.lm_dtype) == ("cpu", "cuda:1", "bfloat16")
    assert placed(BaselinesConfig(hook="blocks.0.hook_resid_post"), cfg).device == "cpu"
    assert placed(HarvestConfig(), ReproduceConfig(device="cuda:0")).device == "cuda:0"
    assert placed(ReportConfig(run="x"), cfg) == ReportConfig(run="x")
    # training from a store runs no model: only --device reaches it (train refuses the model options there)
    from saex.train.config import TrainConfig

    t = placed(TrainConfig(), cfg)
    assert (t.device, t.lm_device, t.lm_dtype) == ("cpu", "", "auto")
    t = placed(TrainConfig(model="m"), cfg)
    assert (t.device, t.lm_device, t.lm_dtype) == ("cpu", "cuda:1", "bfloat16")


def test_corpus_option_overrides_the_presets(full_run, inputs):
    out, _, _ = full_run
    state = _state(out)
    harvest = state["stages"]["harvest"]["config"]
    assert harvest["corpus"] == str(inputs / "corpus.jsonl") == state["plan"]["corpus"]
    assert harvest["heldout_fraction"] == state["plan"]["heldout_fraction"] == 0.1


def test_configs_name_run_folder_paths_relative_to_it(tmp_path):
    root = tmp_path / "run"
    cfg = {
        "dicts": f"{root}/dicts/h,{root}/baselines/h",
        "acts": f"{root}/acts",
        "out": str(root),
        "model": str(tmp_path / "model"),
        "other": f"{root}2/acts",
        "hooks": "blocks.0.x,blocks.1.x",
        "corpus": "default,kjv",
        "n": 3,
        "folders": [f"{root}/dicts/h", str(tmp_path / "x")],
    }
    rel = relative_to_run(cfg, root)
    assert rel == {
        "dicts": "$OUT/dicts/h,$OUT/baselines/h",
        "acts": "$OUT/acts",
        "out": "$OUT",
        "model": str(tmp_path / "model"),
        "other": f"{root}2/acts",
        "hooks": "blocks.0.x,blocks.1.x",
        "corpus": "default,kjv",
        "n": 3,
        "folders": ["$OUT/dicts/h", str(tmp_path / "x")],
    }
    assert absolute_in_run(rel, root) == cfg
    moved = tmp_path / "elsewhere"
    assert absolute_in_run(rel, moved)["dicts"] == f"{moved}/dicts/h,{moved}/baselines/h"


def test_unchanged_rerun_skips_every_stage(full_run, inputs):
    out, _, _ = full_run
    before = _state(out)
    rc, _, err = _reproduce(inputs, out)
    assert rc == 0, err
    n = len(before["stages"])
    assert err.count("unchanged, skipped") == n, err
    assert _state(out)["stages"] == before["stages"]


def test_changed_option_reruns_only_dependants(full_run, inputs):
    out, _, _ = full_run
    before = _state(out)["stages"]
    rc, _, err = _reproduce(inputs, out, ",interpret_features=3")
    assert rc == 0, err
    after = _state(out)["stages"]
    rerun = {n for n in after if after[n]["key"] != before[n]["key"]}
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.mlp.hook_post"]
    assert rerun == {f"interpret:{h}" for h in hooks} | {"dashboard", "report"}
    for n in set(after) - rerun:
        assert after[n]["finished"] == before[n]["finished"], n
    scores = list((out / "interpret" / hooks[1]).rglob("scores.jsonl"))
    assert scores


def test_killed_stage_resumes_to_the_same_outputs(full_run, inputs, tmp_path, monkeypatch):
    import saex.stages.features as fb

    real = fb.run
    calls = []

    def killed(cfg, progress=True):
        calls.append(cfg.out)
        if len(calls) == 2:  # the second hook's feature index: die after it wrote part of its outputs
            real(cfg, progress)
            raise KeyboardInterrupt
        return real(cfg, progress)

    monkeypatch.setattr(fb, "run", killed)
    out = tmp_path / "run"
    rc, _, err = _reproduce(inputs, out)
    assert rc == 130 and "interrupted; run the same command again to resume" in err
    state = _state(out)["stages"]
    assert state["features:blocks.1.hook_resid_post"]["status"] == "running"
    assert "interpret:blocks.0.hook_resid_post" not in state
    monkeypatch.setattr(fb, "run", real)
    rc, _, err = _reproduce(inputs, out)
    assert rc == 0, err
    assert "features:blocks.1.hook_resid_post: resuming an interrupted run" in err
    assert err.count("unchanged, skipped") >= 10  # harvest, 3 trains, 3 baselines, 3 evals, first features
    ref, _, _ = full_run
    for hook in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"):
        mine = sorted(p.relative_to(out) for p in (out / "features" / hook).rglob("*.safetensors"))
        theirs = sorted(p.relative_to(ref) for p in (ref / "features" / hook).rglob("*.safetensors"))
        assert mine == theirs and mine
        for p in mine:
            assert (out / p).read_bytes() == (ref / p).read_bytes(), p


def test_outputs_edited_on_disk_are_recomputed(tmp_path):
    from saex.reproduce.pipeline import Pipeline, Stage

    runs = []

    def run(cfg):
        runs.append(cfg)
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "a" / "x.txt").write_text(str(cfg["v"]))

    stage = Stage("a", "a", (), lambda: {"v": 1}, run)
    Pipeline(tmp_path, {}, [stage], log=lambda m: None).run()
    Pipeline(tmp_path, {}, [stage], log=lambda m: None).run()
    assert len(runs) == 1
    (tmp_path / "a" / "x.txt").write_text("tampered")
    Pipeline(tmp_path, {}, [stage], log=lambda m: None).run()
    assert len(runs) == 2 and (tmp_path / "a" / "x.txt").read_text() == "1"


def test_downstream_of_a_failed_stage_is_not_run(tmp_path):
    from saex.errors import SaexError
    from saex.reproduce.pipeline import Pipeline, Stage

    def fail(cfg):
        raise SaexError("no single-token names")

    def ok(cfg):
        (tmp_path / "b").mkdir(exist_ok=True)

    stages = [
        Stage("a", "a", (), lambda: {}, fail, optional=True),
        Stage("b", "b", ("a",), lambda: {}, ok),
        Stage("c", "c", (), lambda: {}, lambda cfg: (tmp_path / "c").mkdir(), soft=("a",)),
    ]
    state = Pipeline(tmp_path, {}, stages, log=lambda m: None).run()["stages"]
    assert state["a"] == {
        "key": state["a"]["key"],
        "status": "failed",
        "reason": "no single-token names",
        "config": {},
        "folder": "a",
    }
    assert state["b"]["status"] == "not run" and state["c"]["status"] == "done"
    with pytest.raises(SaexError):
        Pipeline(tmp_path, {}, [Stage("a", "a", (), lambda: {}, fail)], log=lambda m: None).run()


def test_plan_and_overrides():
    p = plan("quick", 30)
    assert p.main_layer == 6 and p.resid_layers == [5, 6] and p.mlp_layers == []  # MLPs: standard preset
    paper = plan("paper", 6)  # Pythia-70M: every layer, as the paper
    assert paper.resid_layers == [0, 1, 2, 3, 4, 5] and 0.0 in paper.extra_alphas_resid
    # the standard preset: what issue 13 asks of it, on SmolLM2's 30 layers
    std = plan("standard", 30)
    assert len(std.resid_layers) >= 4 and std.ioi_layer in std.resid_layers and 10 <= std.ioi_layer <= 19
    assert std.extra_alphas_resid == [0.0] and len(std.target_l0_resid) >= 5 and min(std.ratios_resid) < 1
    assert std.heldout_tokens >= 1_000_000 and std.ioi_prompts >= 20 and std.interpret_features == 150
    # the Wikipedia leads hold 1.07M tokens in all: the standard preset adds the KJV and holds out 55% of the
    # documents; the quick one keeps the embedded corpus and a tenth
    assert (std.corpus, std.heldout_fraction) == ("default,kjv", 0.55)
    assert (p.corpus, p.heldout_fraction) == ("default", 0.1)
    assert std.eval_tokens < std.heldout_tokens  # FVU / L0 on a part; alive over every held-out row
    got = parse_overrides("tokens=5,resid_layers=[1,2],main_target_l0_resid=20,ioi_mode=greedy", p)
    assert (got.tokens, got.resid_layers, got.main_target_l0_resid, got.ioi_mode) == (5, [1, 2], 20.0, "greedy")
    assert isinstance(got.main_target_l0_resid, float) and got.context_length == p.context_length


@pytest.mark.parametrize(
    "bad, message",
    [
        ("tokenz=5", "--set key 'tokenz' is not in the plan"),
        ("tokens=many", "--set tokens=many: tokens must be an integer, got 'many'"),
        # checked as the plan declares, before anything runs (a negative count used to start the harvest)
        ("tokens=-5", "--set tokens=-5: tokens must be positive, got -5"),
        ("ioi_mode=fast", "--set ioi_mode=fast: unknown ioi_mode 'fast'; allowed: quick, greedy, both"),
        ("tokens", "--set item 'tokens' is not key=value"),
    ],
)
def test_bad_overrides_are_one_line_errors(inputs, tmp_path, bad, message):
    rc, _, err = _main("reproduce", "--model", str(inputs / "model"), "--out", str(tmp_path), "--set", bad, "--dry-run")
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "reproduce.json").exists()


def test_paper_preset_states_its_time_first(inputs, tmp_path):
    rc, stdout, err = _main(
        "reproduce", "--preset", "paper", "--model", str(inputs / "model"), "--out", str(tmp_path / "r"), "--dry-run"
    )
    assert rc == 0, err
    lines = stdout.splitlines()
    assert lines[2].startswith("expected time on this machine: about ")
    assert "stages: harvest, calibrate:" in stdout and not (tmp_path / "r").exists()


@pytest.mark.parametrize("stage", ["harvest", "train:blocks.1.hook_resid_post", "features:blocks.1.hook_resid_post"])
def test_sigkill_inside_a_stage_resumes(full_run, inputs, tmp_path, stage):
    """A real kill (SIGKILL of a separate process while reproduce.json says a stage is running) at three points
    of the run: the rerun skips what finished, runs the killed stage again, and ends with the uninterrupted run's
    weights and every stage done."""
    import os
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "saex.cli",
        "reproduce",
        "--model",
        str(inputs / "model"),
        "--corpus",
        str(inputs / "corpus.jsonl"),
        "--out",
        str(out),
        "--set",
        TINY,
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ | {"HF_HUB_OFFLINE": "1"}
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "reproduce.json").exists() and _state(out)["stages"].get(stage, {}).get("status") == "running":
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the pipeline ended before the stage to kill started"
    finally:
        proc.kill()
        proc.wait()
    assert _state(out)["stages"][stage]["status"] == "running"
    rc, _, err = _reproduce(inputs, out)
    assert rc == 0, err
    assert f"{stage}: resuming an interrupted run" in err
    if stage != "harvest":
        assert "[1/22] harvest: unchanged, skipped" in err
    assert {r["status"] for r in _state(out)["stages"].values()} == {"done"}
    ref, _, _ = full_run
    for hook in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.mlp.hook_post"):
        mine = sorted(p.relative_to(out) for p in (out / "dicts" / hook).glob("*/sae_weights.safetensors"))
        assert mine == sorted(p.relative_to(ref) for p in (ref / "dicts" / hook).glob("*/sae_weights.safetensors"))
        for p in mine:
            assert (out / p).read_bytes() == (ref / p).read_bytes(), p


def test_stages_dropped_from_the_plan_lose_their_outputs(tmp_path):
    from saex.reproduce.pipeline import Pipeline, Stage

    def make(name):
        return Stage(name, name, (), lambda: {}, lambda cfg: (tmp_path / name).mkdir(exist_ok=True))

    Pipeline(tmp_path, {}, [make("a"), make("b")], log=lambda m: None).run()
    assert (tmp_path / "b").is_dir()
    state = Pipeline(tmp_path, {}, [make("a")], log=lambda m: None).run()
    assert set(state["stages"]) == {"a"} and not (tmp_path / "b").exists() and (tmp_path / "a").is_dir()
