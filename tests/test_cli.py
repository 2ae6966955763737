"""The ``saex`` command: harvest, store and hooks subcommands, in-process and as the installed console script."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saex.cli import main
from saex.lm.hooks import HOOK_KINDS
from tests._support import write_corpus
from tests.store._helpers import HOOKS, MLP, RESID, manifest, read_shard, snapshot

HARVEST = [
    "--hooks",
    HOOKS,
    "--tokens",
    "1990",
    "--context-length",
    "16",
    "--shard-tokens",
    "256",
    "--batch-size",
    "4",
    "--quiet",
]


@pytest.fixture(scope="module")
def harvested(tmp_path_factory, tiny_llama):
    """(store path, corpus path, stdout, exit code) of one in-process `saex harvest`."""
    root = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(root / "corpus.jsonl")
    out = root / "acts"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            code = main(["harvest", "--out", str(out), "--model", str(tiny_llama), "--corpus", str(corpus), *HARVEST])
    finally:
        torch.set_num_threads(before)
    return out, corpus, stdout.getvalue(), code


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith(f"saex {command}: error: ") and "Traceback" not in err
    return lines[0]


def test_harvest_prints_the_summary(harvested):
    out, _, text, code = harvested
    assert code == 0
    m = manifest(out)
    assert m["status"] == "complete" and m["splits"]["train"]["rows"] == 2000 and m["splits"]["heldout"]["rows"] == 208
    assert f"activation store {out} (complete)" in text
    assert re.search(r"^\s+train\s+2,000 rows in 8 shard\(s\)", text, re.M)
    assert re.search(r"^\s+heldout\s+208 rows in 1 shard\(s\)", text, re.M)
    assert re.search(rf"^\s+{re.escape(RESID)}\s+width 32\b.*model\.layers\.1\b", text, re.M)
    assert re.search(rf"^\s+{re.escape(MLP)}\s+width 48\b.*model\.layers\.2\.mlp\.down_proj", text, re.M)
    assert "dtype float16" in text and "context 16 tokens" in text


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--hooks", f"{RESID},blocks.7.hook_resid_post"], "'blocks.7.hook_resid_post'"),
        (["--dtype", "int8"], "'int8'"),
        (["--hooks", RESID], "different activation store (hooks"),
        (["--context-length", "100"], "context length 100"),
        (["--tokens", "0"], "--tokens must be positive, got 0"),
    ],
)
def test_harvest_bad_input_exits_2_with_one_line(harvested, tiny_llama, capsys, args, fragment):
    out, corpus, _, _ = harvested
    before = snapshot(out)
    capsys.readouterr()
    argv = ["harvest", "--out", str(out), "--model", str(tiny_llama), "--corpus", str(corpus), *HARVEST, *args]
    assert main(argv) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err, "harvest")
    assert fragment in line
    assert captured.out == ""
    assert snapshot(out) == before


def test_store_summary_verify_and_json(harvested, capsys):
    out = harvested[0]
    capsys.readouterr()
    assert main(["store", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "checksums verified" in text and re.search(r"train\s+2,000 rows in 8 shard", text)

    assert main(["store", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["verified"] is False and d["status"] == "complete" and d["dtype"] == "float16"
    assert {s: (v["rows"], v["shards"], v["exhausted"]) for s, v in d["splits"].items()} == {
        "train": (2000, 8, False),
        "heldout": (208, 1, False),
    }
    assert d["splits"]["train"]["bytes"] == sum((out / "train" / f).stat().st_size for f in os.listdir(out / "train"))
    assert {h: v["width"] for h, v in d["hooks"].items()} == {RESID: 32, MLP: 48}
    x = read_shard(out / "train" / "shard-00000.safetensors")[MLP].float()
    assert d["hooks"][MLP]["max_abs"] == pytest.approx(x.abs().max().item())
    assert d["hooks"][MLP]["mean_norm"] == pytest.approx(x.norm(dim=1).mean().item(), rel=1e-5)

    assert main(["store", str(out), "--verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True


def test_store_verify_reports_corruption(harvested, tmp_path, capsys):
    out = shutil.copytree(harvested[0], tmp_path / "acts")
    path = out / "train" / "shard-00004.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["store", str(out), "--verify"]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err, "store")
    assert "corrupted" in line and "shard-00004" in line and captured.out == ""


def test_store_on_a_folder_that_is_not_a_store(tmp_path, capsys):
    assert main(["store", str(tmp_path)]) == 2
    assert "not an activation store" in _one_error_line(capsys.readouterr().err, "store")


def test_store_without_verify_on_a_truncated_first_shard(harvested, tmp_path, capsys):
    out = shutil.copytree(harvested[0], tmp_path / "acts")
    path = out / "train" / "shard-00000.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    assert main(["store", str(out)]) == 2
    assert "shard-00000" in _one_error_line(capsys.readouterr().err, "store")


def test_hooks_lists_every_hook_point(tiny_llama, capsys):
    assert main(["hooks", "--model", str(tiny_llama)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 * len(HOOK_KINDS) == 4 * 6
    names = [f"blocks.{L}.{k}" for L in range(4) for k in HOOK_KINDS]
    for line, name in zip(lines, names):
        assert line.split()[0] == name
        assert line.endswith(f"width {48 if name.endswith('mlp.hook_post') else 32}")
    assert "input of model.layers.2.mlp.down_proj" in " ".join(lines[2 * 6 + 3].split())
    assert "input of model.layers.2.mlp " in " ".join(lines[2 * 6 + 2].split()) + " "  # ln2.hook_normalized

    assert main(["hooks", "--model", str(tiny_llama), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert list(d) == names
    assert {n: v["width"] for n, v in d.items()} == {n: 48 if "mlp.hook_post" in n else 32 for n in names}
    assert d["blocks.3.hook_resid_post"] == {"module": "model.layers.3", "capture": "output", "width": 32, "layer": 3}


def test_hooks_on_a_missing_model(tmp_path, capsys):
    assert main(["hooks", "--model", str(tmp_path)]) == 2
    assert "config.json" in _one_error_line(capsys.readouterr().err, "hooks")


def test_harvest_help_shows_the_config_docstrings(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["harvest", "--help"]) == 0  # argparse's exit becomes main's status
    text = " ".join(capsys.readouterr().out.split())
    for phrase in (
        "Storage dtype of activations: float16, bfloat16 or float32. (default: float16)",
        "Rows per shard file (rounded down to whole contexts)",
        "Fraction of documents assigned to the held-out split",
        "--context-length CONTEXT_LENGTH",
        "--heldout-tokens HELDOUT_TOKENS",
        "--quiet",
        "What ``saex harvest`` does",
    ):
        assert phrase in text, phrase


def test_console_script_error_is_one_line_without_traceback(harvested, tiny_llama, tmp_path):
    exe = Path(sys.executable).parent / "saex"
    assert exe.is_file()
    out, corpus, _, _ = harvested
    before = snapshot(out)
    env = dict(os.environ, HF_HUB_OFFLINE="1", SAEX_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    argv = [
        str(exe),
        "harvest",
        "--out",
        str(out),
        "--model",
        str(tiny_llama),
        "--corpus",
        str(corpus),
        *HARVEST,
        "--hooks",
        "blocks.1.hook_resid_post,blocks.4.mlp.hook_post",
    ]
    proc = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr, "harvest")
    assert "'blocks.4.mlp.hook_post'" in line and "0..3" in line
    assert proc.stdout == ""
    assert snapshot(out) == before


def _closed_reader(argv: list[str], tmp_path) -> subprocess.CompletedProcess:
    """Run ``argv`` with stdout a pipe whose reader is already gone (``… | head`` once head has exited)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", SAEX_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(argv, env=env, cwd=tmp_path, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)


def test_a_closed_pipe_ends_quietly(harvested, tmp_path):
    """`saex store … | head`: the reader closed early; the command ends with status 141 (128 + SIGPIPE), as a
    command the signal killed, and writes nothing on stderr (no BrokenPipeError traceback)."""
    exe = Path(sys.executable).parent / "saex"
    proc = _closed_reader([str(exe), "store", str(harvested[0]), "--json"], tmp_path)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr
    # python -m saex.cli the same way
    proc = _closed_reader([sys.executable, "-m", "saex.cli", "store", str(harvested[0])], tmp_path)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_a_reader_that_stops_reading_ends_quietly(tiny_llama, tmp_path):
    """A reader that takes the first line and closes (head -n 1) while the command is still writing."""
    exe = Path(sys.executable).parent / "saex"
    env = dict(os.environ, HF_HUB_OFFLINE="1", SAEX_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    script = f'{exe} hooks --model {tiny_llama} --json | head -n 1; echo "status ${{PIPESTATUS[0]}}" >&2'
    proc = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.stdout == "{\n"
    # the whole JSON may fit in the pipe before head exits (status 0); if not, the command ends quietly (141)
    assert proc.stderr.strip() in ("status 0", "status 141"), proc.stderr


def test_a_broken_pipe_elsewhere_is_not_hidden(monkeypatch):
    """Only a closed stdout ends the command quietly: a BrokenPipeError from another pipe keeps its traceback."""
    import saex.cli

    def broken(args):
        raise BrokenPipeError("a socket")

    monkeypatch.setattr(saex.cli, "run_command", broken)
    with pytest.raises(BrokenPipeError):
        main(["store", "x"])
