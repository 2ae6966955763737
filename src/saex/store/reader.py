"""Reading an activation store: verified shards, random access and a shuffled batch stream.

Layout of a store folder::

    manifest.json                      what produced it, row counts, shard checksums
    train/shard-00000.safetensors      one tensor per hook point [rows, width], plus
    heldout/shard-00000.safetensors    ``tokens`` and ``doc_ids`` [contexts, context_length] (int32)

Row ``r`` of a shard is position ``r % T`` of context ``r // T``, so every activation traces back to its
token and document. Checksums are verified the first time this process reads a shard.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from saex.config import Config, opt
from saex.errors import SaexError
from saex.files import sha256_path

MANIFEST = "manifest.json"
FORMAT = "saex.activation_store"
FORMAT_VERSION = 1


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def read_manifest(path: Path) -> dict:
    """A manifest's JSON object, or a clear error when the file is not one."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise SaexError(f"{path} is not valid JSON ({e}); the folder does not hold a usable activation store") from e
    if not isinstance(data, dict):
        raise SaexError(f"{path} does not hold a JSON object; the folder does not hold a usable activation store")
    return data


def check_manifest(m: dict, path: Path) -> None:
    """The manifest's own consistency, before any shard is read: the fields readers use, with their types, and
    every shard's rows = contexts × context length (an edited count would otherwise surface as a crash deep in a
    later stage). The shards' contents are checked against it when they are opened (``ActivationStore._open``)."""
    rebuild = "re-run the same `saex harvest` to rebuild it"

    def bad(what: str) -> SaexError:
        return SaexError(f"{path} is damaged: {what}; {rebuild}")

    try:
        T = m["packing"]["context_length"]
        hooks, splits = m["hooks"], m["splits"]
    except (KeyError, TypeError) as e:
        raise bad(f"it lacks {e}") from None
    if not isinstance(T, int) or T <= 0 or not isinstance(hooks, dict) or not isinstance(splits, dict):
        raise bad("its packing, hooks or splits are not what saex writes")
    for h, info in hooks.items():
        if not isinstance(info, dict) or not isinstance(info.get("width"), int) or info["width"] <= 0:
            raise bad(f"hook {h!r} has no positive integer width")
    for split, entry in splits.items():
        shards = entry.get("shards") if isinstance(entry, dict) else None
        if not isinstance(shards, list):
            raise bad(f"split {split!r} has no list of shards")
        for s in shards:
            ok = isinstance(s, dict) and all(isinstance(s.get(k), int) for k in ("contexts", "rows", "bytes"))
            if not ok or not isinstance(s.get("file"), str) or not isinstance(s.get("sha256"), str):
                raise bad(f"a shard entry of split {split!r} lacks file, contexts, rows, bytes or sha256: {s!r}")
            if s["contexts"] <= 0 or s["rows"] != s["contexts"] * T:
                raise bad(
                    f"shard {split}/{s['file']} records {s['rows']} rows and {s['contexts']} contexts of {T} tokens "
                    f"({s['contexts'] * T} rows)"
                )


@dataclass
class RowOptions(Config):
    """The options of every stage that reads activation rows: which rows count (see ``RowFilter``). Stage
    configs inherit these fields, so they are documented and checked in one place."""

    exclude_first: int = opt(1, ge=0)
    """Leave out positions 0 .. exclude_first-1 of every context (attention sinks) from training, the input
    scale, the reconstruction / sparsity metrics and feature indexes; 0 keeps them. Spliced CE / KL always
    replace every position."""
    exclude_special_tokens: bool = True
    """Leave out the separator / BOS tokens wherever they occur, likewise."""
    max_norm_ratio: float = opt(20.0, ge=0)
    """Leave out rows whose norm exceeds this multiple of the hook's median row norm (massive activations,
    Sun et al. 2024: attention sinks away from position 0), likewise; 0 keeps them."""


def row_options(cfg: RowOptions) -> dict:
    """The row options of a stage's config, to hand on to the config of a stage it runs."""
    return {f.name: getattr(cfg, f.name) for f in fields(RowOptions)}


def within_norm(x_ND: torch.Tensor, limit: float) -> torch.Tensor:
    """Bool ``[N]``: rows whose norm is at most ``limit``. NaN / Inf rows count as within, so that the readers'
    finiteness checks still see and report them."""
    n_N = x_ND.float().norm(dim=1)
    return (n_N <= limit) | ~torch.isfinite(n_N)


@dataclass(frozen=True)
class RowFilter:
    """Which activation rows count (``RowOptions`` documents the fields).

    Why: at such rows many models park an attention sink, an activation many times the norm of the rest
    (SmolLM2-135M layer 6: context position 0 has mean norm 746 against a median of 103, so 0.8% of the rows
    carry 23% of the variance; at layer 14 position 0 is 150× the median, and so are positions 1-2 when a
    context opens with a repeated token). Left in, they dominate the MSE, the input scale and FVU's
    denominator, and a feature that fires on "the start of a context" fills every index. SAELens and SAEBench
    exclude special tokens for the same reason. Rows are only filtered, never changed.

    The norm limit is ``max_norm_ratio`` × the median norm of the token-kept rows of the hook's first train
    shard (``ActivationStore.norm_limit``), so every stage computes the same limit from the same rows.
    """

    exclude_first: int = 1
    exclude_special_tokens: bool = True
    max_norm_ratio: float = 20.0

    @classmethod
    def of(cls, cfg: RowOptions) -> RowFilter:
        """The filter a stage's config names."""
        return cls(cfg.exclude_first, cfg.exclude_special_tokens, cfg.max_norm_ratio)

    @property
    def active(self) -> bool:
        return self.exclude_first > 0 or self.exclude_special_tokens or self.max_norm_ratio > 0

    def check(self, context_length: int) -> None:
        if not 0 <= self.exclude_first < context_length:
            raise SaexError(
                f"--exclude-first must be in 0..{context_length - 1} (the store's context length is "
                f"{context_length}), got {self.exclude_first}"
            )
        if not (math.isfinite(self.max_norm_ratio) and (self.max_norm_ratio == 0 or self.max_norm_ratio > 1)):
            raise SaexError(f"--max-norm-ratio must be 0 (off) or a number above 1, got {self.max_norm_ratio}")

    def keep(self, tokens_CT: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
        """Bool ``[C*T]`` by position and token only, True for the rows kept, in store row order (position
        r % T of context r // T); ``ActivationStore.keep_mask`` adds the norm limit."""
        C, T = tokens_CT.shape
        keep_CT = torch.ones(C, T, dtype=torch.bool, device=tokens_CT.device)
        keep_CT[:, : self.exclude_first] = False
        if self.exclude_special_tokens and special_ids:
            keep_CT &= ~torch.isin(tokens_CT, torch.tensor(special_ids, dtype=tokens_CT.dtype, device=tokens_CT.device))
        return keep_CT.reshape(-1)


#: every row counts
ALL_ROWS = RowFilter(0, False, 0.0)


#: shards this process has checked, by (path, size, mtime, expected sha256): a file that changes afterwards
#: is checked again. Process-wide, because one ``saex reproduce`` opens the same store in every stage and
#: hashing a large store's held-out shards each time cost more than the stage's own work.
_VERIFIED: set[tuple] = set()
#: shards whose tensor shapes were checked against the manifest (same keys: a changed entry is checked again)
_SHAPED: set[tuple] = set()


def _stamp(path: Path, sha256: str) -> tuple:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns, sha256


def store_hash(store: ActivationStore, hook: str) -> str:
    """Content hash of what a stage reads at one hook: the store's identity and its shards' checksums."""
    h = hashlib.sha256(json.dumps(store.manifest["identity"], sort_keys=True).encode())
    h.update(hook.encode())
    for split in ("train", "heldout"):
        for s in store.shards(split):
            h.update(s["sha256"].encode())
    return h.hexdigest()


class ActivationStore:
    """Read access to a store written by ``saex harvest``."""

    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise SaexError(f"{self.path} is not an activation store (no {MANIFEST}); create one with `saex harvest`")
        self.manifest = read_manifest(mpath)
        if self.manifest.get("format") != FORMAT:
            raise SaexError(f"{mpath} is not a saex activation-store manifest")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise SaexError(
                f"{mpath} has store format version {self.manifest.get('format_version')}; "
                f"this saex reads version {FORMAT_VERSION}"
            )
        check_manifest(self.manifest, mpath)
        self.verify = verify
        self._median_norms: dict[tuple, float] = {}
        self.context_length: int = self.manifest["packing"]["context_length"]

    # -- description -------------------------------------------------------------------------------
    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def complete(self) -> bool:
        return self.manifest["status"] == "complete"

    def width(self, hook: str) -> int:
        self._check_hook(hook)
        return self.manifest["hooks"][hook]["width"]

    def shards(self, split: str) -> list[dict]:
        if split not in self.manifest["splits"]:
            raise SaexError(f"unknown split {split!r}; this store has {sorted(self.manifest['splits'])}")
        return self.manifest["splits"][split]["shards"]

    def n_rows(self, split: str) -> int:
        return sum(s["rows"] for s in self.shards(split))

    def special_token_ids(self) -> list[int]:
        """The separator and BOS token ids the store was packed with."""
        p = self.manifest["packing"]
        return sorted({i for i in (p.get("separator_id"), p.get("bos_id")) if i is not None})

    def norm_limit(self, hook: str, rows: RowFilter) -> float | None:
        """The row-norm limit of ``rows`` at a hook: ``max_norm_ratio`` × the median norm of the rows of the
        first train shard that the position / token rules keep (None when the ratio is 0)."""
        if not rows.max_norm_ratio:
            return None
        key = (hook, rows.exclude_first, rows.exclude_special_tokens)
        if key not in self._median_norms:
            x = self.load_shard("train", 0, hook)
            keep = rows.keep(self.load_tokens("train", 0)[0], self.special_token_ids())
            n_N = x[keep].norm(dim=1)
            n_N = n_N[torch.isfinite(n_N)]  # a non-finite row is the readers' error to report, not a norm
            self._median_norms[key] = float(n_N.median()) if len(n_N) else math.inf
        return rows.max_norm_ratio * self._median_norms[key]

    def keep_mask(
        self, split: str, index: int, rows: RowFilter, hook: str, x_ND: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Bool ``[rows of the shard]``: which rows of one shard ``rows`` keeps at ``hook`` (the norm limit
        reads the shard's activations: pass them as ``x_ND`` when they are loaded already)."""
        if not rows.active:
            return torch.ones(self.shards(split)[index]["rows"], dtype=torch.bool, device="cpu")
        keep = rows.keep(self.load_tokens(split, index)[0], self.special_token_ids())
        limit = self.norm_limit(hook, rows)
        if limit is not None:
            x_ND = self.load_shard(split, index, hook) if x_ND is None else x_ND
            keep &= within_norm(x_ND, limit)
        return keep

    def load_kept(
        self, split: str, index: int, hook: str, rows: RowFilter, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The rows of one shard that ``rows`` keeps at ``hook``, ``[kept, width]``."""
        x = self.load_shard(split, index, hook, dtype)
        return x[self.keep_mask(split, index, rows, hook, x)]

    def kept_rows(self, split: str, rows: RowFilter, hook: str) -> np.ndarray:
        """Global indices (int64, ascending) of the rows of a split that ``rows`` keeps at ``hook``."""
        if not rows.active:
            return np.arange(self.n_rows(split), dtype=np.int64)
        rows.check(self.context_length)
        keep = torch.cat([self.keep_mask(split, i, rows, hook) for i in range(len(self.shards(split)))])
        return keep.nonzero().flatten().numpy()

    def _check_hook(self, hook: str) -> None:
        if hook not in self.manifest["hooks"]:
            raise SaexError(f"hook {hook!r} is not in the store {self.path}; it has {self.hooks}")

    # -- shards --------------------------------------------------------------------------------------
    def shard_path(self, split: str, index: int) -> Path:
        return self.path / split / self.shards(split)[index]["file"]

    def _open(self, split: str, index: int):
        entry = self.shards(split)[index]
        path = self.path / split / entry["file"]
        if not path.is_file():
            raise SaexError(f"shard {path} is missing; re-run the same `saex harvest` to rebuild it")
        if path.stat().st_size != entry["bytes"]:
            raise SaexError(
                f"shard {path} is truncated or corrupted: {path.stat().st_size} bytes, the manifest "
                f"says {entry['bytes']}; re-run the same `saex harvest` to rebuild it"
            )
        stamp = _stamp(path, entry["sha256"])
        if self.verify and stamp not in _VERIFIED:
            digest = sha256_path(path)
            if digest != entry["sha256"]:
                raise SaexError(
                    f"shard {path} is corrupted or truncated: sha256 {digest[:16]}… does not match the manifest's "
                    f"{entry['sha256'][:16]}…; re-run the same `saex harvest` to rebuild it"
                )
            _VERIFIED.add(stamp)
        try:
            f = safe_open(str(path), framework="pt")
        except Exception as e:  # safetensors raises its own error types for unreadable headers
            raise SaexError(f"shard {path} is corrupted: {e}; re-run the same `saex harvest` to rebuild it") from e
        shaped = (*stamp, entry["rows"], entry["contexts"])
        if shaped not in _SHAPED:
            self._check_shapes(f, entry, path)
            _SHAPED.add(shaped)
        return f

    def _check_shapes(self, f, entry: dict, path: Path) -> None:
        """A shard's tensors against its manifest entry: [rows, width] per hook, [contexts, T] token ids."""
        expect = {h: (entry["rows"], info["width"]) for h, info in self.manifest["hooks"].items()}
        expect |= {
            "tokens": (entry["contexts"], self.context_length),
            "doc_ids": (entry["contexts"], self.context_length),
        }
        keys = set(f.keys())
        for key, shape in expect.items():
            got = tuple(f.get_slice(key).get_shape()) if key in keys else None
            if got != shape:
                raise SaexError(
                    f"shard {path} does not match its manifest entry: {key} is {got}, the manifest implies {shape}; "
                    "re-run the same `saex harvest` to rebuild it"
                )

    def verify_all(self) -> int:
        """Check every shard's sha256 against the manifest; returns how many were checked."""
        verify, self.verify = self.verify, True
        try:
            n = 0
            for split in self.manifest["splits"]:
                for i in range(len(self.shards(split))):
                    with self._open(split, i):
                        n += 1
            return n
        finally:
            self.verify = verify

    def load_shard(self, split: str, index: int, hook: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """All rows of one shard for one hook, ``[rows, width]``."""
        self._check_hook(hook)
        with self._open(split, index) as f:
            x = f.get_tensor(hook)
        return x if dtype is None else x.to(dtype)

    def load_tokens(self, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, doc_ids)`` of one shard, each ``[contexts, T]`` int32."""
        with self._open(split, index) as f:
            return f.get_tensor("tokens"), f.get_tensor("doc_ids")

    def tokens(self, split: str) -> torch.Tensor:
        """Token ids of every context of a split, ``[contexts, T]``; row r is ``tokens.view(-1)[r]``."""
        return torch.cat([self.load_tokens(split, i)[0] for i in range(len(self.shards(split)))])

    def rows(self, split: str, hook: str, index: np.ndarray | list[int], dtype=torch.float32) -> torch.Tensor:
        """Random access: activations of the given global row indices, in the order given."""
        idx = np.asarray(index, dtype=np.int64)
        n = self.n_rows(split)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise SaexError(f"row index out of range: split {split!r} has {n} rows")
        starts = np.cumsum([0] + [s["rows"] for s in self.shards(split)])
        which = np.searchsorted(starts, idx, side="right") - 1
        out = torch.empty(len(idx), self.width(hook), dtype=dtype, device="cpu")
        for s in np.unique(which):
            sel = np.nonzero(which == s)[0]
            # safetensors makes slices on torch's default device: read them on the CPU whatever it is
            with self._open(split, int(s)) as f, torch.device("cpu"):
                x = f.get_slice(hook)
                local = idx[sel] - starts[s]
                # safetensors slices are contiguous ranges; read the covering range once per shard.
                lo, hi = int(local.min()), int(local.max()) + 1
                block = x[lo:hi]
                out[torch.from_numpy(sel)] = block[torch.from_numpy(local - lo)].to(dtype)
        return out

    # -- training stream -----------------------------------------------------------------------------
    def batches(
        self,
        split: str,
        hook: str | list[str],
        batch_size: int,
        seed: int = 0,
        epoch: int = 0,
        shards_in_buffer: int = 4,
        skip_batches: int = 0,
        drop_last: bool = True,
        dtype: torch.dtype = torch.float32,
        rows: RowFilter = ALL_ROWS,
        shuffle: bool = True,
    ) -> Iterator[torch.Tensor]:
        """One shuffled pass over a split, deterministic in ``(seed, epoch)``.

        Shards are visited in a seeded order, ``shards_in_buffer`` at a time; the rows of a buffer (those
        ``rows`` keeps) are permuted together, so memory stays bounded while batches mix several shards.
        ``skip_batches`` resumes a pass without reading the skipped buffers' activations. Given several hook
        points, a batch holds each row's activations at all of them side by side (``[B, Σ widths]``, in the
        order given; a transcoder's input and target), and a row is kept when ``rows`` keeps it at every one.
        """
        hooks = [hook] if isinstance(hook, str) else list(hook)
        for h in hooks:
            self._check_hook(h)
        if batch_size <= 0:
            raise SaexError(f"batch size must be positive, got {batch_size}")
        if shards_in_buffer < 1:
            raise SaexError(f"shards_in_buffer must be at least 1, got {shards_in_buffer}")
        if skip_batches < 0:
            raise SaexError(f"skip_batches must be >= 0, got {skip_batches}")
        shards = self.shards(split)
        if not shards:
            raise SaexError(f"split {split!r} of {self.path} has no rows")
        if rows.active:
            rows.check(self.context_length)
        if not shuffle:
            yield from self._in_order(split, hooks, batch_size, skip_batches, drop_last, dtype, rows)
            return
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(shards))
        groups = [order[i : i + shards_in_buffer] for i in range(0, len(order), shards_in_buffer)]
        # Each buffer's leftover rows (fewer than a batch) are dropped rather than carried into the next
        # buffer: then a buffer's batches depend on it alone, and resuming can skip buffers unread.
        # A different permutation each epoch drops different rows.
        for g, group in enumerate(groups):
            keep = (
                [_all([self.keep_mask(split, int(i), rows, h) for h in hooks]) for i in group] if rows.active else None
            )
            n = sum(int(k.sum()) for k in keep) if keep else sum(shards[i]["rows"] for i in group)
            n_batches = n // batch_size + (0 if drop_last or n % batch_size == 0 else 1)
            if skip_batches >= n_batches:
                skip_batches -= n_batches
                continue
            buf = torch.cat([_side_by_side([self.load_shard(split, int(i), h, dtype) for h in hooks]) for i in group])
            if keep:
                buf = buf[torch.cat(keep)]
            gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, epoch, g]).integers(2**62)))
            # Batches gathered through the permutation, not a permuted copy of the buffer: one buffer in memory.
            perm = torch.randperm(len(buf), generator=gen, device="cpu")
            for b in range(skip_batches, n_batches):
                yield buf[perm[b * batch_size : (b + 1) * batch_size]]
            skip_batches = 0
            del buf  # before the next buffer is read

    def _in_order(self, split, hooks, batch_size, skip_batches, drop_last, dtype, rows) -> Iterator[torch.Tensor]:
        """The kept rows of a split in store order, in batches that run across shard boundaries."""
        skip_rows = skip_batches * batch_size
        carry: torch.Tensor | None = None
        for i in range(len(self.shards(split))):
            xs = [self.load_shard(split, i, h, dtype) for h in hooks]
            x = _side_by_side(xs)
            if rows.active:
                x = x[_all([self.keep_mask(split, i, rows, h, x_h) for h, x_h in zip(hooks, xs, strict=True)])]
            if skip_rows >= len(x):
                skip_rows -= len(x)
                continue
            x = x[skip_rows:]
            skip_rows = 0
            x = x if carry is None else torch.cat([carry, x])
            n = len(x) // batch_size
            for b in range(n):
                yield x[b * batch_size : (b + 1) * batch_size]
            carry = x[n * batch_size :]
        if carry is not None and len(carry) and not drop_last:
            yield carry


def _all(masks: list[torch.Tensor]) -> torch.Tensor:
    out = masks[0]
    for m in masks[1:]:
        out = out & m
    return out


def _side_by_side(xs: list[torch.Tensor]) -> torch.Tensor:
    return xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
