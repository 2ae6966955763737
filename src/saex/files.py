"""Atomic file writes and checksums shared by every writer of a store.

A file is written under a temporary name in its final folder, flushed to disk, then renamed over the
final name: a reader (or a resumed harvest) sees either the old file or the complete new one, never a
torn one, whenever the writer is killed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from saex.errors import SaexError

TMP_PREFIX = ".tmp-"


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _tmp_for(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
    os.close(fd)
    return Path(tmp)


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The rename itself must reach the disk before the manifest that points at the file.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = _tmp_for(path)
    tmp.write_text(text, encoding="utf-8")
    _commit(tmp, path)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = _tmp_for(path)
    tmp.write_bytes(data)
    _commit(tmp, path)


def json_ready(x):
    """JSON-ready: NaN and infinities become null, numpy scalars and arrays (and tensors) plain numbers / lists."""
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return json_ready(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json_atomic(path: Path, obj) -> None:
    tmp = _tmp_for(path)
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    _commit(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines log; a line a kill cut short is skipped (the writers append line by line)."""
    rows = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def write_safetensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Write tensors atomically and return the sha256 of the file's bytes.

    The metadata goes in as one JSON string with sorted keys: safetensors writes several metadata keys
    in arbitrary order, which would make identical contents hash differently.
    """
    tmp = _tmp_for(path)
    try:
        meta = {"saex": json.dumps(metadata, sort_keys=True)} if metadata else None
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        digest = sha256_path(tmp)
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temp files left by a killed writer; returns how many.

    Two kinds: saex's own (``.tmp-<name>.<random>``), and those of safetensors' Rust writer, which
    writes through a temporary file of its own in the same folder (``.tmp<random>``, the Rust tempfile
    crate's naming) and leaves it behind when killed mid-write.
    """
    n = 0
    if folder.is_dir():
        for p in folder.rglob(".tmp*"):
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
    return n


def check_output_folder(out: Path, marker: str, what: str) -> bool:
    """Whether ``out`` already holds a ``what`` (its ``marker`` file exists). A path that is not a folder,
    or a non-empty folder without the marker, is refused: writing there could clobber someone's files."""
    if out.exists() and not out.is_dir():
        raise SaexError(f"--out {out} exists and is not a folder")
    if (out / marker).is_file():
        return True
    if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise SaexError(f"output folder {out} is not empty and holds no {what}; choose another --out")
    return False


def open_output_folder(
    out: Path,
    marker: str,
    what: str,
    identity: dict | None = None,
    differs: str | None = None,
    typed: Callable[[dict], dict] | None = None,
) -> dict | None:
    """A stage's output folder: None when it is new (or empty), else its ``marker`` JSON, after checking
    (``check_output_folder``) that it holds a ``what`` and, given an ``identity``, that the one recorded in
    the marker is the same (``check_same_identity``; ``differs`` names it there, default ``what``; ``typed``
    converts the recorded one to the current field types first), so that a rerun continues only its own
    work."""
    if not check_output_folder(out, marker, what):
        return None
    saved = json.loads((out / marker).read_text())
    if identity is not None:
        recorded = saved.get("identity") or {}
        check_same_identity(out, typed(recorded) if typed else recorded, identity, differs or what, "folder")
    return saved


def check_same_identity(out: Path, saved: dict, asked: dict, what: str, holder: str) -> None:
    """Refuse to continue a ``what`` in ``out`` whose recorded identity differs, naming every difference."""
    differ = sorted(k for k in asked.keys() | saved.keys() if asked.get(k) != saved.get(k))
    if differ:
        details = "; ".join(f"{k}: {holder} has {saved.get(k)!r}, asked {asked.get(k)!r}" for k in differ)
        raise SaexError(
            f"output folder {out} holds a different {what} ({details}). "
            "Choose another --out, or delete that folder to start over."
        )


def tree_hash(folder: Path) -> str:
    """Content hash of what a stage wrote: every file's path and sha256, except resume state and temporaries.

    An activation store is hashed through its manifest, which holds every shard's checksum (verified on read).
    """
    h = hashlib.sha256()
    if (folder / "manifest.json").exists() and (folder / "train").is_dir():
        files = [folder / "manifest.json"]
    else:
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file()
            and "checkpoint" not in p.relative_to(folder).parts
            and not p.name.endswith(".tmp")
            and ".tmp-" not in p.name
        )
    for p in files:
        h.update(str(p.relative_to(folder)).encode() + b"\0" + sha256_path(p).encode() + b"\n")
    return h.hexdigest()
