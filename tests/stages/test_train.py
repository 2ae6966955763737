"""``saex train`` on the command line: output, exit codes, config files and replay."""

from __future__ import annotations

import json

import pytest

from saex.cli import main
from tests.train._synth import HOOK, assert_same_weights, snapshot


def args(store, out, *extra):
    from saex.dictionaries.ensemble import architectures

    arch = architectures().get(extra[extra.index("--arch") + 1] if "--arch" in extra else "tied_l1")
    alpha = ["--alpha", "0.01,0.02"] if arch is None or "alpha" in arch.reads else []  # refused where not read
    return [
        "train",
        "--acts",
        str(store),
        "--hook",
        HOOK,
        "--out",
        str(out),
        "--ratio",
        "2",
        *alpha,
        "--steps",
        "50",
        "--batch-size",
        "64",
        "--exclude-first",
        "0",
        "--no-exclude-special-tokens",
        "--eval-every",
        "25",
        "--eval-tokens",
        "256",
        "--quiet",
        *extra,
    ]


def test_train_prints_the_dictionaries(small_store, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(args(small_store, out)) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    run = json.loads((out / "run.json").read_text())
    # 50 steps of 64 over the store's train rows (every row kept: the filter is off for synthetic data)
    passes = round(50 * 64 / json.loads((small_store / "manifest.json").read_text())["splits"]["train"]["rows"], 2)
    assert run["passes"] == passes
    assert lines[0] == (
        f"2 dictionaries on {HOOK} of {json.loads((small_store / 'manifest.json').read_text())['model']['name']} "
        f"in {out} (50 steps, {passes:g} passes over the store)"
    )
    last = {}
    for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()):
        last[row["dictionary"]] = row
    for line, name in zip(lines[2:], ["tied_l1_r2_a0.01", "tied_l1_r2_a0.02"]):
        cells = line.split()
        assert cells[0] == name and float(cells[2]) == round(last[name]["fvu"], 4)
        assert float(cells[3]) == round(last[name]["l0"], 1)
        verdict = run["convergence"][name]["converged"]
        assert line.endswith({True: "ok", False: "NOT CONVERGED", None: "not checked"}[verdict])
    # one warning per unconverged dictionary, after the table and its legend
    warned = [name for name, v in run["convergence"].items() if v["converged"] is False]
    assert lines[4].startswith("  (held-out sample") and len(lines) == 5 + len(warned)
    for line, name in zip(lines[5:], warned):
        v = run["convergence"][name]
        assert line.startswith(f"warning: {name} is NOT converged: ")
        assert ("--steps" in line) == v["still_changing"] and (("larger α" in line) == (not v["still_changing"]))
    assert captured.err == ""  # --quiet: no progress bar
    assert run["status"] == "complete" and run["steps"] == 50 and run["config"]["alpha"] == [0.01, 0.02]
    # again: a no-op that prints the same
    before = snapshot(out)
    assert main(args(small_store, out)) == 0
    assert capsys.readouterr().out == captured.out and snapshot(out) == before


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--alpha=-1"], "α must be >= 0, got -1"),
        (["--ratio", "0"], "dictionary ratio R must be positive, got 0.0"),
        (["--arch", "crosscoder"], "unknown --arch 'crosscoder'"),
        (["--arch", "topk", "--k", "100"], "--k 100 must be an integer in 1..32"),
        (["--steps", "0"], "--steps must be positive, got 0"),
        (["--hook", "blocks.3.hook_mlp_out"], "hook 'blocks.3.hook_mlp_out' is not in the store"),
    ],
)
def test_bad_input_exits_2_with_one_line(small_store, tmp_path, capsys, extra, fragment):
    assert main(args(small_store, tmp_path / "out", *extra)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saex train: error: ") and fragment in lines[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not (tmp_path / "out").exists()


def test_different_config_into_a_finished_out_exits_2_naming_the_field(small_store, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(args(small_store, out)) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main(args(small_store, out, "--lr", "0.01")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saex train: error: ") and "\n" not in err
    assert "lr: folder has 0.001, asked 0.01" in err
    assert snapshot(out) == before


def test_config_files_toml_and_json(small_store, tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text(
        f'acts = "{small_store}"\nhook = "{HOOK}"\nratio = "2"\nalpha = "0.03"\nsteps = 20\n'
        "batch_size = 64\neval_every = 0\ndecay_fraction = 0.5\n"
    )
    jsn = tmp_path / "c.json"
    jsn.write_text(
        json.dumps(
            {
                "acts": str(small_store),
                "hook": HOOK,
                "ratio": "2",
                "alpha": "0.03",
                "steps": 20,
                "batch_size": 64,
                "eval_every": 0,
                "decay_fraction": 0.5,
            }
        )
    )
    for f in (toml, jsn):
        assert main(["train", "--config", str(f), "--out", str(tmp_path / f.suffix[1:]), "--quiet"]) == 0
        assert capsys.readouterr().out.strip().splitlines()[2].split()[0] == "tied_l1_r2_a0.03"
        cfg = json.loads((tmp_path / f.suffix[1:] / "run.json").read_text())["config"]
        assert (cfg["alpha"], cfg["steps"], cfg["decay_fraction"], cfg["out"]) == (
            [0.03],
            20,
            0.5,
            str(tmp_path / f.suffix[1:]),
        )
    assert_same_weights(tmp_path / "toml", tmp_path / "json")
    # the command line overrides the file
    assert main(["train", "--config", str(toml), "--alpha", "0.04", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[2].split()[0] == "tied_l1_r2_a0.04"


def test_config_file_with_an_unknown_key_exits_2(small_store, tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_text(f'acts = "{small_store}"\nhook = "{HOOK}"\nalhpa = "0.03"\n')
    assert main(["train", "--config", str(f), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saex train: error: ") and "\n" not in err and "unknown option 'alhpa'" in err
    assert not (tmp_path / "out").exists()


def test_from_replays_a_run(small_store, tmp_path, capsys):
    a = tmp_path / "a"
    assert main(args(small_store, a, "--arch", "topk", "--k", "3,5", "--normalize", "mean_norm")) == 0
    capsys.readouterr()
    assert main(["train", "--from", str(a / "run.json"), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"in {tmp_path / 'b'}" in printed and "topk_r2_k3" in printed and "topk_r2_k5" in printed
    assert_same_weights(a, tmp_path / "b")
    # --from without a new --out names the same folder: the finished run, a no-op
    before = snapshot(a)
    assert main(["train", "--from", str(a / "run.json"), "--quiet"]) == 0
    assert snapshot(a) == before
