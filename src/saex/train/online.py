"""Training from the model, no store: activations computed on the fly into a bounded shuffle buffer.

A store of 1B tokens × 2304 dims in fp16 is 4.6 TB, so at scale SAELens and sparsify compute activations while
training; ``saex train --model M --corpus C --hooks ...`` does the same. The train split's contexts are the
ones ``saex harvest`` would store (``saex.data.packing``: same documents, split, packing), run through the
model ``lm_batch_size`` contexts at a time with one forward pass capturing every hook (it stops after the
deepest), so several layers train from one pass, each hook feeding its own sweep (as sparsify does).

Rows are filtered as a store's readers filter them (``RowFilter``: attention-sink positions, separator tokens,
rows above ``max_norm_ratio`` × the median norm), a row kept when it is kept at every hook read. The norm limit
and the ``--normalize`` input scale come from the first ``calibration_tokens`` of the stream, as a store's come
from its first shard. Kept rows fill a buffer of ``buffer_tokens`` rows (whole batches), shuffled with a seeded
permutation and read batch by batch; a buffer's leftover rows start the next one.

Resume is exact without writing activations to disk: a ``Position`` names the forward batch and row where the
current buffer starts, the buffer's ordinal (its permutation's seed) and the batches already taken from it;
on resume the buffer is recomputed from there (forward batches always cover the same contexts, so the model
computes the same numbers) and the taken batches skipped.

Under torchrun each rank computes every ``world``-th forward batch of the stream into its own buffer and trains
on its own batches of ``batch_size / world`` rows; DDP averages the gradients.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from saex.data.corpora import Corpus, resolve_corpus
from saex.data.packing import Context, Packing, pack, resolve_packing
from saex.devices import Placement, dtype_name
from saex.distributed import Ranks
from saex.errors import SaexError
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model, tokenizer_sha256
from saex.store.reader import RowFilter, within_norm


@dataclass(frozen=True)
class Position:
    """Where one rank's training stream stands: what a checkpoint records to resume exactly."""

    epoch: int = 0
    """Passes over the train split completed."""
    forward: int = 0
    """This rank's forward batch (counted from the epoch's start) holding the current buffer's first row."""
    skip: int = 0
    """Kept rows of that forward batch taken by earlier buffers."""
    ordinal: int = 0
    """The current buffer's index in the epoch (seeds its permutation)."""
    taken: int = 0
    """Batches already taken from the current buffer."""


class Source:
    """A model over a corpus, captured at the hooks a run trains on (and a transcoder's target)."""

    def __init__(self, cfg, hooks: list[str], place: Placement, ranks: Ranks):
        self.cfg, self.hooks, self.place, self.ranks = cfg, hooks, place, ranks
        with torch.device("cpu"):  # loaded on the CPU whatever torch's default device, then moved
            lm = load_model(cfg.model)
        lm.model.to(device=place.lm_device, dtype=place.lm_dtype)
        lm.model.eval()
        self.lm, self.hooked = lm, HookedLM(lm.model)
        self.points = [self.hooked.resolve(h) for h in hooks]
        self.widths = [p.width for p in self.points]
        self.packing: Packing = resolve_packing(
            lm.tokenizer, cfg.context_length, cfg.bos_policy, cfg.separator, self.hooked.max_context
        )
        self.corpus: Corpus = resolve_corpus(cfg.corpus, cfg.text_field, cfg.hub_split, cfg.hub_config)
        self.rows = RowFilter.of(cfg)
        self.rows.check(cfg.context_length)
        self.special = sorted({i for i in (self.packing.separator_id, self.packing.bos_id) if i is not None})
        self.identity = {
            "model": lm.name,
            "weights_sha256": lm.weights_sha256,
            "lm_dtype": dtype_name(place.lm_dtype),
            "corpus_fingerprint": self.corpus.fingerprint,
            "tokenizer_sha256": tokenizer_sha256(lm.tokenizer),
            "packing": self.packing.describe(),
            "heldout_fraction": cfg.heldout_fraction,
            "seed": cfg.seed,
        }
        self.limits: list[float | None] = [None] * len(hooks)
        self.scales: list[float] = [1.0] * len(hooks)
        self._capture = self.hooked.capture(hooks)
        self._run = self._capture.__enter__()

    def close(self) -> None:
        self._capture.__exit__(None, None, None)

    def source_hash(self, hooks: list[str]) -> str:
        """What a sweep reads, as ``store_hash`` names a store's rows: the source's identity and the hooks."""
        h = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode())
        h.update("+".join(hooks).encode())
        return h.hexdigest()

    def describe(self) -> dict:
        return {
            "source": "model",
            **self.identity,
            "corpus": self.corpus.describe(),
            "hooks": {p.name: p.describe() for p in self.points},
            "model_type": self.lm.model.config.model_type,
            "lm_device": str(self.place.lm_device),
            "norm_limits": dict(zip(self.hooks, self.limits, strict=True)),
        }

    # -- the context stream ------------------------------------------------------------------------
    def _forward_batches(self, split: str, every: int = 1, offset: int = 0) -> Iterator[list[Context]]:
        """The split's contexts in forward batches of ``lm_batch_size`` (always the same grid, so a batch's numbers
        do not depend on where a run resumed), the ``offset``-th of every ``every`` batches."""
        contexts = pack(
            self.corpus.documents(self.cfg.seed),
            self.lm.tokenizer,
            self.packing,
            split,
            self.cfg.seed,
            self.cfg.heldout_fraction,
        )
        batch: list[Context] = []
        index = 0
        for c in contexts:
            batch.append(c)
            if len(batch) == self.cfg.lm_batch_size:
                if index % every == offset:
                    yield batch
                batch, index = [], index + 1
        if batch and index % every == offset:
            yield batch

    def _activations(self, batch: list[Context]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(tokens ``[C*T]``, every hook's activations ``[C*T, width]`` in float32, on the model's device)."""
        tokens_CT = torch.from_numpy(np.stack([c.tokens_T for c in batch])).long()
        got = self._run(tokens_CT)
        xs = []
        for name, x_CTD in got.items():
            x = x_CTD.reshape(-1, x_CTD.shape[-1]).float()
            if not torch.isfinite(x).all():
                raise SaexError(
                    f"the model's activation at {name} is not finite (max |x| = {x_CTD.abs().max().item():.4g}); "
                    "use --lm-dtype float32"
                )
            xs.append(x)
        return tokens_CT, xs

    def _kept(self, tokens_CT: torch.Tensor, xs: list[torch.Tensor]) -> torch.Tensor:
        """The rows kept at every hook, side by side ``[kept, Σ widths]`` in float32 on the dictionaries' device."""
        keep = self.rows.keep(tokens_CT, self.special).to(xs[0].device)
        for x, limit in zip(xs, self.limits, strict=True):
            if limit is not None:
                keep &= within_norm(x, limit)
        x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
        return x[keep].to(self.place.device)

    def calibrate(self) -> None:
        """Norm limits and input scales from the first ``calibration_tokens`` of the train stream (every rank
        computes the same: the whole stream's first contexts, not its own share)."""
        n_contexts = max(1, self.cfg.calibration_tokens // self.cfg.context_length)
        norms: list[list[torch.Tensor]] = [[] for _ in self.hooks]
        keeps = []
        seen = 0
        for batch in self._forward_batches("train"):
            batch = batch[: n_contexts - seen]
            tokens_CT, xs = self._activations(batch)
            keeps.append(self.rows.keep(tokens_CT, self.special))
            for i, x in enumerate(xs):
                norms[i].append(x.norm(dim=1).cpu())
            seen += len(batch)
            if seen >= n_contexts:
                break
        if not keeps:
            raise SaexError(
                f"the corpus {self.cfg.corpus!r} gives no train context of {self.cfg.context_length} tokens"
            )
        keep = torch.cat(keeps)
        for i in range(len(self.hooks)):
            n_N = torch.cat(norms[i])
            token_kept = n_N[keep]
            if self.rows.max_norm_ratio:
                # the median of the rows the position / token rules keep, as ActivationStore.norm_limit
                median = float(token_kept.median()) if len(token_kept) else math.inf
                self.limits[i] = self.rows.max_norm_ratio * median
            if self.cfg.normalize != "none":
                limit = self.limits[i]
                kept = token_kept if limit is None else token_kept[token_kept <= limit]
                self.scales[i] = math.sqrt(self.widths[i]) / kept.mean().item()

    def heldout(self, n: int) -> torch.Tensor:
        """The first ``n`` kept held-out rows, side by side ``[n, Σ widths]`` (on the dictionaries' device)."""
        parts, got = [], 0
        for batch in self._forward_batches("heldout"):
            x = self._kept(*self._activations(batch))
            parts.append(x[: n - got])
            got += len(parts[-1])
            if got >= n:
                break
        if not got:
            raise SaexError(
                f"the corpus {self.cfg.corpus!r} has no held-out context to evaluate on (--heldout-fraction "
                f"{self.cfg.heldout_fraction}); raise it or give --heldout-acts"
            )
        return torch.cat(parts)

    # -- the training stream -----------------------------------------------------------------------
    def _chunks(self, epoch: int, forward: int, skip: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(forward batch, first row, kept rows from there)`` of this rank's share, from ``forward`` on, the first
        ``skip`` rows of that batch left out."""
        share = self._forward_batches("train", self.ranks.world, self.ranks.rank)
        for j, batch in enumerate(share):
            if j < forward:
                continue  # packed (tokenised) but not run: resuming costs no forward pass
            x = self._kept(*self._activations(batch))
            off = skip if j == forward else 0
            yield j, off, x[off:]

    def batches(self, start: Position, local_batch: int) -> Iterator[tuple[torch.Tensor, Position]]:
        """This rank's batches from ``start`` on, each with the position to record after it (endless: the stream
        is read again, in new permutations, at its end)."""
        buffer_rows = max(1, self.cfg.buffer_tokens // self.cfg.batch_size) * local_batch
        pos = start
        while True:
            chunks = self._chunks(pos.epoch, pos.forward, pos.skip)
            head: tuple[int, int, torch.Tensor] | None = None
            ordinal, taken, ended, yielded = pos.ordinal, pos.taken, False, False
            while not ended:
                # Filled in place and read by gathering permuted rows: memory stays at one buffer (no permuted
                # copy), and the batches handed out are copies, so the buffer is freed when the next one starts.
                buf: torch.Tensor | None = None
                n, begin = 0, None
                while n < buffer_rows:
                    if head is None:
                        head = next(chunks, None)
                        if head is None:
                            ended = True
                            break
                    j, off, rows = head
                    begin = begin or (j, off)
                    take = min(len(rows), buffer_rows - n)
                    if buf is None:
                        buf = torch.empty(buffer_rows, rows.shape[1], device=rows.device)
                    buf[n : n + take] = rows[:take]
                    n += take
                    head = (j, off + take, rows[take:]) if take < len(rows) else None
                n_batches = n // local_batch
                if n_batches:
                    assert begin is not None and buf is not None
                    order = None
                    if self.cfg.shuffle:
                        key = [self.cfg.seed, self.ranks.rank, pos.epoch, ordinal]
                        gen = torch.Generator().manual_seed(int(np.random.default_rng(key).integers(2**62)))
                        order = torch.randperm(n, generator=gen, device="cpu").to(buf.device)
                    for b in range(taken, n_batches):
                        yielded = True
                        after = Position(pos.epoch, begin[0], begin[1], ordinal, b + 1)
                        rows_b = slice(b * local_batch, (b + 1) * local_batch)
                        yield (buf[rows_b].clone() if order is None else buf[order[rows_b]]), after
                buf = None
                ordinal, taken = ordinal + 1, 0
            if not yielded and pos.ordinal == 0 and pos.taken == 0:
                raise SaexError(
                    f"the train split of {self.cfg.corpus!r} gives not one batch of {local_batch} rows per process; "
                    "lower --batch-size or use a larger corpus"
                )
            pos = Position(pos.epoch + 1)


def positions_of(scalars: dict, world: int) -> list[Position]:
    """Every rank's position from a checkpoint's scalars (the run must resume with as many processes)."""
    saved = scalars.get("positions")
    if saved is None or len(saved) != world:
        raise SaexError(
            f"the checkpoint was written by {0 if saved is None else len(saved)} process(es) training on the fly; "
            f"resume it with as many (torchrun --nproc_per_node), not {world}"
        )
    return [Position(**p) for p in saved]


def position_dicts(positions: list[Position]) -> list[dict]:
    return [asdict(p) for p in positions]
