"""Atomic file writes, checksums, output folders and their locks, shared by every writer.

A file is written under a temporary name in its final folder, flushed to disk, then renamed over the
final name: a reader (or a resumed harvest) sees either the old file or the complete new one, never a
torn one, whenever the writer is killed. Temporaries are named ``.tmp-<name>.<random>`` and created
with the mode the user's umask gives (as ``open`` would); the next writer of the folder removes those a
killed writer left (``remove_stale_temporaries``).

An output folder is written by one process at a time: ``folder_lock`` holds an exclusive ``flock`` on
``<folder>/.saex.lock`` (which records the holder) while a stage writes it; every stage's ``run`` takes it
through ``locked_output``.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import functools
import hashlib
import json
import math
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import torch
from safetensors.torch import save_file

from saex.errors import SaexError

TMP_PREFIX = ".tmp-"
LOCK_NAME = ".saex.lock"
"""The lock file of an output folder (a dot file: not a foreign file for ``check_output_folder``, and
left out of ``tree_hash``); removed when its holder finishes."""

# Names of temporaries, matched whole: saex's own (``.tmp-<name>.<random>``); safetensors' Rust writer, which
# writes through a file of its own (the tempfile crate's ``.tmp`` + 6 letters and digits) that it renames onto
# saex's temporary, and leaves behind when killed mid-write; older saex's ``.<name>.<random>.tmp`` and the
# training log's ``metrics.tmp``.
_TEMPORARY = re.compile(
    r"\.tmp-.+\.[A-Za-z0-9_]+"
    r"|\.tmp[A-Za-z0-9]{6}"
    r"|\..+\.[a-z0-9_]{8}\.tmp"
    r"|metrics\.tmp"
)


def is_temporary(name: str) -> bool:
    """Whether a file name is one a killed writer (saex's or safetensors') may have left."""
    return _TEMPORARY.fullmatch(name) is not None


def _umask_from_proc() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def _umask_at_import() -> int:
    found = _umask_from_proc()
    if found is None:  # no /proc: read it the only portable way, once (it is process-wide, so briefly 077)
        found = os.umask(0o077)
        os.umask(found)
    return found


_UMASK = _umask_at_import()


def file_mode() -> int:
    """The mode a new file gets from the user's umask (read live where /proc has it), e.g. 0o644 under 022."""
    umask = _umask_from_proc()
    return 0o666 & ~(_UMASK if umask is None else umask)


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def create_temporary(path: Path) -> tuple[int, Path]:
    """A new empty temporary beside ``path`` (``.tmp-<name>.<random>``), open for writing: its descriptor and
    path. Unlike ``tempfile.mkstemp`` (always 0600) it gets the mode the user's umask gives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f"{TMP_PREFIX}{path.name}.{secrets.token_hex(4)}"
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue


def _tmp_for(path: Path) -> Path:
    fd, tmp = create_temporary(path)
    os.close(fd)
    return tmp


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


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = _tmp_for(path)
    try:
        write(tmp)
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _write_atomic(path, lambda tmp: tmp.write_bytes(data))


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
    text = json.dumps(obj, indent=1, sort_keys=False) + "\n"
    _write_atomic(path, lambda tmp: tmp.write_text(text))


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
        os.chmod(tmp, file_mode())  # safetensors renames its own 0600 temporary onto ours
        digest = sha256_path(tmp)
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporaries (``is_temporary``) a killed writer left in ``folder`` and below; returns how many.

    Only the writer holding the folder's lock calls it (``folder_lock`` does on taking it). A sub-folder
    with a lock file of its own is left alone: it is another writer's (or a killed one's, whose next writer
    cleans it)."""
    n = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not os.path.lexists(os.path.join(here, d, LOCK_NAME))]
        for name in files:
            p = Path(here, name)
            if is_temporary(name) and p.is_file() and not p.is_symlink():
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
            and not is_temporary(p.name)
            and p.name != LOCK_NAME
        )
    for p in files:
        h.update(str(p.relative_to(folder)).encode() + b"\0" + sha256_path(p).encode() + b"\n")
    return h.hexdigest()


# -- output-folder locks ----------------------------------------------------------------------------------------


@dataclass
class _Held:
    fd: int
    created: list[Path] = field(default_factory=list)
    depth: int = 1


_HELD: dict[str, _Held] = {}  # resolved folder → this process's lock on it (re-entry is a no-op)
_HELD_GUARD = threading.Lock()

P = ParamSpec("P")
R = TypeVar("R")


def torchrun_main() -> bool:
    """Whether this process is rank 0 of its torchrun job, or not under torchrun (``RANK`` unset): the ranks
    of one job write one folder together, and rank 0 holds its lock for all of them."""
    return os.environ.get("RANK", "0") == "0"


def _holder(fd: int) -> dict:
    try:
        record = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(holder: dict) -> str:
    if "pid" not in holder:
        return "pid unknown"
    where = f"pid {holder['pid']} on {holder.get('host', 'an unknown host')}"
    where += f", since {holder['since']}" if holder.get("since") else ""
    return f"{holder['what']}, {where}" if holder.get("what") else where


def _remove_created(created: list[Path]) -> None:
    for d in created:  # deepest first; only empty folders, stopping at the first that is not
        try:
            d.rmdir()
        except OSError:
            break


def _acquire(folder: Path, what: str) -> _Held | None:
    """Take the folder's lock (creating the folder), or None where the filesystem cannot lock."""
    created = []
    p = folder
    while not os.path.lexists(p) and p != p.parent:
        created.append(p)
        p = p.parent
    path = folder / LOCK_NAME
    for _ in range(100):  # each retry follows a holder that finished (and unlinked) in between
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:  # a finishing holder removed the folder it had made
            continue
        except OSError as e:
            if folder.is_dir() and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return None  # a folder this user cannot write: the stage says so where it writes (or only reads)
            _remove_created(created)
            if folder.is_dir():
                raise SaexError(f"cannot write the lock file {path} of the output folder: {e.strerror}") from None
            raise SaexError(f"cannot create the output folder {folder}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            _remove_created(created)
            raise SaexError(
                f"output folder {folder} is being written by another saex process ({_describe(holder)}); "
                "wait for it to finish or choose another --out"
            ) from None
        except OSError:  # a filesystem without flock: write unlocked, as before
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        try:
            st = os.stat(path)
            ours = (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        except FileNotFoundError:
            ours = False
        if not ours:  # locked a file its holder had just unlinked: lock the one at the path now
            os.close(fd)
            continue
        # A record left here by a holder that was killed (the kernel released its flock) is simply replaced.
        since = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": since, "what": what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return _Held(fd, created)
    raise SaexError(f"could not take the lock of output folder {folder}: it keeps being replaced")


def _release(folder: Path, held: _Held) -> None:
    path = folder / LOCK_NAME
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == (os.fstat(held.fd).st_dev, os.fstat(held.fd).st_ino):
            path.unlink()  # before the flock goes: a waiting writer then retries on a new file
    except FileNotFoundError:
        pass
    finally:
        os.close(held.fd)
    _remove_created(held.created)


@contextlib.contextmanager
def folder_lock(out: str | Path, what: str, enabled: bool = True) -> Iterator[None]:
    """Hold ``out``'s lock while the block writes it: one writer process per output folder.

    ``out`` is created if need be (and removed again if it is still empty at the end). A second process
    gets a ``SaexError`` naming the holder (its pid, host and start, from the lock file). A lock whose holder
    died is free again (the kernel drops a ``flock`` with its process) and is taken over. The same process
    re-entering a folder it holds (``saex reproduce`` running a stage) goes on under the lock it has; a
    sub-folder has a lock of its own. On taking the lock the temporaries a killed writer left are removed
    (``remove_stale_temporaries``). ``enabled=False`` (the ranks of a torchrun job other than 0) takes none.
    A path that exists and is not a folder is left to the stage's own check."""
    out = Path(out)
    if not enabled or (os.path.lexists(out) and not out.is_dir()):
        yield
        return
    key = os.path.realpath(out)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held.depth += 1
        else:
            held = _acquire(out, what)
            if held is not None:
                _HELD[key] = held
    if held is None:  # could not lock here
        yield
        return
    try:
        if held.depth == 1:
            remove_stale_temporaries(out)
        yield
    finally:
        with _HELD_GUARD:
            held.depth -= 1
            if held.depth == 0:
                del _HELD[key]
                _release(out, held)


def _cfg_out(cfg: Any) -> str | Path:
    return cfg.out


def locked_output(
    what: str, folder: Callable[[Any], str | Path] = _cfg_out
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a stage's ``run(cfg, ...)``: it runs holding ``folder(cfg)``'s lock (default ``cfg.out``;
    ``folder_lock``), rank 0 alone under torchrun."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            cfg = args[0] if args else kwargs["cfg"]
            with folder_lock(folder(cfg), what, enabled=torchrun_main()):
                return fn(*args, **kwargs)

        return run

    return wrap
