"""Output-folder locks (``saex.files.folder_lock``): one writer process per folder, stale locks taken over,
released on every way out, re-entry and nesting within one process, rank 0 alone under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from saex.cli import stage_modules
from saex.config import Config
from saex.errors import SaexError
from saex.files import LOCK_NAME, check_output_folder, folder_lock, locked_output, tree_hash
from saex.train import trainer
from saex.train.config import TrainConfig
from tests._cli import run_cli

# Takes the lock of argv[1], says so, and holds it until its stdin closes (or it is killed).
HOLD = """
import sys
from saex.files import folder_lock
with folder_lock(sys.argv[1], "saex test-holder"):
    print("locked", flush=True)
    sys.stdin.read()
print("released", flush=True)
"""

# Tries the lock of argv[1] once: prints "took" or the error.
TRY = """
import sys
from saex.errors import SaexError
from saex.files import folder_lock
try:
    with folder_lock(sys.argv[1], "saex test-try"):
        print("took", flush=True)
except SaexError as e:
    print(e, flush=True)
"""


class Holder:
    """A separate process holding a folder's lock."""

    def __init__(self, folder: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "locked", self.proc.stderr.read()  # type: ignore[union-attr]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def finish(self) -> str:
        out, _ = self.proc.communicate("", timeout=60)
        return out

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.communicate(timeout=60)
        assert self.proc.returncode == -signal.SIGKILL

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=60)  # waits, and closes the pipes


@pytest.fixture
def holder():
    made: list[Holder] = []

    def hold(folder: Path) -> Holder:
        made.append(Holder(folder))
        return made[-1]

    yield hold
    for h in made:
        h.cleanup()


def _try_elsewhere(folder: Path) -> str:
    return subprocess.run(
        [sys.executable, "-c", TRY, str(folder)], capture_output=True, text=True, timeout=120, check=True
    ).stdout.strip()


def test_a_second_writer_gets_one_error_naming_the_holder(tmp_path, holder):
    out = tmp_path / "out"
    h = holder(out)
    record = json.loads((out / LOCK_NAME).read_text())
    assert record["pid"] == h.pid and record["what"] == "saex test-holder" and record["host"] and record["since"]
    with pytest.raises(SaexError) as err, folder_lock(out, "saex test"):
        pytest.fail("took a lock another process holds")
    msg = str(err.value)
    assert msg.startswith(f"output folder {out} is being written by another saex process (saex test-holder, ")
    assert f"pid {h.pid} on {record['host']}, since {record['since']}" in msg
    assert msg.endswith("wait for it to finish or choose another --out")
    # the refused writer changed nothing: the holder's record stands, and it still holds the lock
    assert json.loads((out / LOCK_NAME).read_text()) == record
    assert _try_elsewhere(out).startswith(f"output folder {out} is being written")
    assert h.finish().strip() == "released"
    assert not (out / LOCK_NAME).exists()


def test_the_cli_prints_the_one_line_error(tmp_path, holder):
    out = tmp_path / "feats"
    h = holder(out)
    rc, _, err = run_cli("features", "--acts", tmp_path / "no-store", "--out", out, "--quiet")
    assert rc == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert f"output folder {out} is being written by another saex process" in line and f"pid {h.pid} " in line


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, holder):
    out = tmp_path / "out"
    h = holder(out)
    h.kill()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == h.pid  # the file stays; its flock went
    with folder_lock(out, "saex test"):
        record = json.loads((out / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["what"] == "saex test"
        assert _try_elsewhere(out).startswith(f"output folder {out} is being written")
    assert not (out / LOCK_NAME).exists()


def test_released_on_normal_exit_and_on_exception(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out, "saex test"):
        assert (out / LOCK_NAME).is_file()
    assert not (out / LOCK_NAME).exists() and out.is_dir()
    assert _try_elsewhere(out) == "took"
    with pytest.raises(RuntimeError, match="boom"), folder_lock(out, "saex test"):
        raise RuntimeError("boom")
    assert not (out / LOCK_NAME).exists()
    assert _try_elsewhere(out) == "took"


def test_reentry_is_a_no_op_and_nested_folders_have_their_own_lock(tmp_path):
    run = tmp_path / "run"
    with folder_lock(run, "saex reproduce"):
        first = (run / LOCK_NAME).read_text()
        with folder_lock(run, "saex report"):  # the same process, the same folder: goes on under the lock
            assert (run / LOCK_NAME).read_text() == first
            with folder_lock(run / "train" / "h", "saex train"):  # a stage's folder inside the run folder
                assert json.loads((run / "train" / "h" / LOCK_NAME).read_text())["what"] == "saex train"
                assert _try_elsewhere(run / "train" / "h").startswith("output folder")
            assert not (run / "train").exists()  # made for the lock, left empty: removed
        assert (run / LOCK_NAME).read_text() == first  # the inner exit did not release the outer lock
        assert _try_elsewhere(run).startswith(f"output folder {run} is being written")
        # another name for the same folder is the same lock
        with folder_lock(tmp_path / "." / "run", "saex test"):
            pass
        assert (run / LOCK_NAME).is_file()
    assert not run.exists()


def test_threads_of_one_process_share_its_lock(tmp_path):
    out = tmp_path / "out"
    errors = []

    def work():
        try:
            with folder_lock(out, "saex test"):
                pass
        except Exception as e:  # pragma: no cover - the failure being tested for
            errors.append(e)

    with folder_lock(out, "saex test"):
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (out / LOCK_NAME).is_file()
    assert not errors and not out.exists()


def test_folder_made_for_the_lock_is_removed_only_when_left_empty(tmp_path):
    made = tmp_path / "a" / "b"
    with folder_lock(made, "saex test"):
        assert made.is_dir()
    assert not (tmp_path / "a").exists()
    with folder_lock(made, "saex test"):
        (made / "result.json").write_text("{}")
    assert sorted(p.name for p in made.iterdir()) == ["result.json"]
    mine = tmp_path / "mine"
    mine.mkdir()
    with folder_lock(mine, "saex test"):
        pass
    assert mine.is_dir()


def test_the_lock_file_is_not_a_foreign_file_nor_part_of_the_tree_hash(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text("{}")
    before = tree_hash(out)
    with folder_lock(out, "saex test"):
        assert tree_hash(out) == before
    empty = tmp_path / "empty"
    with folder_lock(empty, "saex test"):
        assert check_output_folder(empty, "marker.json", "thing") is False  # no "not empty" refusal


def test_no_lock_when_disabled_or_when_the_path_is_a_file(tmp_path):
    out = tmp_path / "out"
    with folder_lock(out, "saex test", enabled=False):
        assert not out.exists()
    f = tmp_path / "file"
    f.write_text("x")
    with folder_lock(f, "saex test"):  # the stage's own check says what is wrong
        assert f.read_text() == "x"


def test_a_folder_that_cannot_be_made_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SaexError, match="cannot create the output folder"), folder_lock(tmp_path / "file" / "out", "t"):
        pass


def test_only_rank_0_of_a_torchrun_job_locks(tmp_path, monkeypatch, holder):
    out = tmp_path / "out"
    holder(out)  # rank 0's lock, as far as the other ranks can tell

    @locked_output("saex test")
    def run(cfg, progress: bool = True) -> Path:
        return Path(cfg.out)

    cfg = TrainConfig(out=str(out))
    monkeypatch.setenv("RANK", "1")
    assert run(cfg) == out  # rank 1 writes under rank 0's lock
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SaexError, match="being written by another saex process"):
        run(cfg)


def _minimal_config(config: type[Config], out: Path) -> Config:
    """The stage's config with its output where ``out`` is and placeholder inputs (never read: the lock is
    refused first)."""
    names = {f.name for f in fields(config)}
    kw: dict = {"out": str(out)} if "out" in names else {"run": str(out.parent)}
    for f in fields(config):
        if f.name not in kw and f.default is MISSING and f.default_factory is MISSING:
            kw[f.name] = "placeholder"
    if "to" in names:
        kw["to"] = {"ConvertConfig": "saelens", "ExportConfig": "neuronpedia"}[config.__name__]
    return config(**kw)


LOCKED = [
    "harvest",
    "calibrate",
    "baselines",
    "eval",
    "features",
    "interpret",
    "ioi",
    "case-study",
    "dashboard",
    "export",
    "convert",
    "compare",
    "reproduce",
    "report",
]


@pytest.mark.parametrize("name", LOCKED)
def test_every_writing_stage_takes_its_folders_lock(tmp_path, holder, name):
    stage = stage_modules()[name]
    out = tmp_path / ("report" if name == "report" else "out")
    h = holder(out)
    with pytest.raises(SaexError, match=f"output folder {out} is being written by another saex process") as err:
        stage.run(_minimal_config(stage.CONFIG, out), progress=False)
    assert f"pid {h.pid} " in str(err.value)


def test_training_takes_its_folders_lock(tmp_path, holder):
    out = tmp_path / "out"
    h = holder(out)
    with pytest.raises(SaexError, match=f"pid {h.pid} ") as err:
        trainer.train(TrainConfig(out=str(out), acts=str(tmp_path / "no-store")), progress=False)
    assert str(err.value).startswith(f"output folder {out} is being written by another saex process")
