"""``saex.files``: which names are temporaries, their removal on the next run (``saex features`` included), and
the modes of the files saex writes (the user's umask, not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from saex.cli import main
from saex.files import (
    LOCK_NAME,
    create_temporary,
    is_temporary,
    remove_stale_temporaries,
    tree_hash,
    write_bytes_atomic,
    write_json_atomic,
    write_safetensors_atomic,
    write_text_atomic,
)
from tests.features._helpers import D, L, T, heldout_data, heldout_docs, heldout_tokens, standard_sae, write_store

TEMPORARIES = [
    ".tmp-index.safetensors.k2x9_q1z",  # saex's own
    ".tmp-shard-00001.safetensors.q1w2e3",
    ".tmpAb3xYz",  # safetensors' Rust writer (tempfile crate)
    ".tmpTQuOdu",
    ".index.json.a1b2c3d4.tmp",  # older saex
    "metrics.tmp",  # older saex's training-log rewrite
]
NOT_TEMPORARIES = [
    "index.safetensors",
    "metrics.jsonl",
    "notes.tmp.txt",
    "my.tmp",
    ".tmp",
    ".tmp-",
    ".tmpfoo_bar",  # not 6 letters and digits
    ".tmpAb3xYz.json",
    ".tmpdir",
    "tmp-index.json.abcd1234",
    LOCK_NAME,
]


@pytest.mark.parametrize("name", TEMPORARIES)
def test_temporary_names(name):
    assert is_temporary(name)


@pytest.mark.parametrize("name", NOT_TEMPORARIES)
def test_names_that_are_not_temporaries(name):
    assert not is_temporary(name)


def test_remove_stale_temporaries_removes_exactly_the_temporaries(tmp_path):
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    kept = [n for n in NOT_TEMPORARIES if n != LOCK_NAME]  # (a lock file would make ``sub`` another writer's)
    for name in TEMPORARIES + kept:
        (sub / name).write_bytes(b"x")
    for name in TEMPORARIES + NOT_TEMPORARIES:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".tmpQwErTy").mkdir()  # a folder of that name is not a temporary file
    assert remove_stale_temporaries(tmp_path) == 2 * len(TEMPORARIES)
    assert sorted(p.name for p in sub.iterdir()) == sorted(kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*NOT_TEMPORARIES, "a", ".tmpQwErTy"])


def test_a_sub_folder_with_a_writer_of_its_own_is_left_alone(tmp_path):
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / LOCK_NAME).write_text("{}")
    (tmp_path / "stage" / ".tmpAb3xYz").write_bytes(b"x")
    (tmp_path / ".tmpAb3xYz").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert (tmp_path / "stage" / ".tmpAb3xYz").is_file()
    assert remove_stale_temporaries(tmp_path / "stage") == 1  # its own writer cleans it


def test_tree_hash_leaves_out_temporaries_and_the_lock(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    before = tree_hash(tmp_path)
    for name in [*TEMPORARIES, LOCK_NAME]:
        (tmp_path / name).write_bytes(b"x")
    assert tree_hash(tmp_path) == before


def test_a_failed_write_leaves_no_temporary(tmp_path):
    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "a.json", {"x": Unserialisable()})
    with pytest.raises(TypeError):
        write_text_atomic(tmp_path / "b.txt", 3)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# -- saex features: the temporaries of a killed run are gone after the next ---------------------------------


def _store(root: Path) -> Path:
    train = torch.from_numpy(np.random.default_rng(9).normal(size=(2 * T, D)).astype(np.float32))
    return write_store(
        root / "acts",
        train,
        torch.from_numpy(heldout_data()),
        T=T,
        shard_rows=4 * T,
        tokens_CT=heldout_tokens(),
        docs_CT=heldout_docs(),
    )


def _features(store: Path, dicts: Path, out: Path) -> int:
    opts = ["--fragment-length", str(L), "--top", "3", "--random", "5", "--zero", "4", "--no-decode", "--quiet"]
    return main(["features", "--acts", str(store), "--dicts", str(dicts), "--out", str(out), *opts])


@pytest.fixture(scope="module")
def features_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("files-features")
    standard_sae().save(root / "dicts" / "std")
    return _store(root), root / "dicts"


def test_a_rerun_of_features_removes_a_killed_runs_temporaries(features_inputs, tmp_path):
    store, dicts = features_inputs
    out = tmp_path / "out"
    assert _features(store, dicts, out) == 0
    index = out / "std"
    left = [
        index / ".tmp-index.safetensors.3kq9_x2a",  # saex's temporary of the index's tensors
        index / ".tmpR4nd0m",  # the one safetensors writes before renaming it onto saex's
        index / ".index.json.ab12cd34.tmp",
        out / ".tmp-features.json.0a1b2c3d",
    ]
    for p in left:
        p.write_bytes(os.urandom(1 << 16))
    before = sorted(p.name for p in index.iterdir())
    assert _features(store, dicts, out) == 0
    assert not any(p.exists() for p in left)
    assert sorted(p.name for p in index.iterdir()) == sorted(set(before) - {p.name for p in left})
    assert not (out / LOCK_NAME).exists()


# -- modes ------------------------------------------------------------------------------------------------------


@pytest.fixture
def umask():
    old = os.umask(0o022)

    def set_to(mask: int) -> None:
        os.umask(mask)

    yield set_to
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_users_umask(tmp_path, umask, mask, mode):
    umask(mask)
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    write_text_atomic(tmp_path / "b.md", "b")
    write_bytes_atomic(tmp_path / "c.bin", b"c")
    write_safetensors_atomic(tmp_path / "d.safetensors", {"w": torch.ones(3)}, {"k": "v"})
    fd, tmp = create_temporary(tmp_path / "e.js")
    os.close(fd)
    for name in ("a.json", "b.md", "c.bin", "d.safetensors", tmp.name):
        assert _mode(tmp_path / name) == mode, name


def test_a_stages_outputs_get_the_users_umask(features_inputs, tmp_path, umask):
    store, dicts = features_inputs
    umask(0o022)
    assert _features(store, dicts, tmp_path / "shared") == 0
    umask(0o077)
    assert _features(store, dicts, tmp_path / "private") == 0
    for folder, mode in (("shared", 0o644), ("private", 0o600)):
        files = [p for p in (tmp_path / folder).rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {"features.json", "index.json", "index.safetensors"}
        assert {p.name: _mode(p) for p in files} == {p.name: mode for p in files}
