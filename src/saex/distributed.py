"""Several processes with torch.distributed, launched by torchrun: data-parallel training and harvesting.

``torchrun --nproc_per_node=N -m saex.cli train ...`` runs N ranks. Every rank reads the same shuffled
batch stream and keeps its own slice of each batch; each group's ensemble is wrapped in
``DistributedDataParallel``, which averages the gradients, so the update equals the single-process one
on the whole batch (up to floating-point summation order). Dead-feature counts are combined across
ranks; rank 0 alone writes run.json, metrics, checkpoints and the dictionaries.

``torchrun --nproc_per_node=N -m saex.cli harvest ...`` splits the shards: in each round rank r computes
the r-th of the next N shards and rank 0 records them in the manifest, so the store is the one a single
process writes. CPU runs use gloo, GPU runs nccl.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from saex.errors import SaexError


@dataclass(frozen=True)
class Ranks:
    world: int = 1
    rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def any_fired(self, fired_KF: torch.Tensor) -> torch.Tensor:
        """A feature fired in the global batch when it fired on any rank's slice."""
        if self.world == 1:
            return fired_KF
        counts = fired_KF.to(torch.int32)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        return counts > 0

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def local_slice(self, x_BD: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return x_BD
        b = x_BD.shape[0] // self.world
        return x_BD[self.rank * b : (self.rank + 1) * b]


def setup(batch_size: int | None = None) -> Ranks:
    """Join the process group torchrun describes in the environment (a no-op for a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if not dist.is_initialized():
        return Ranks()
    ranks = Ranks(dist.get_world_size(), dist.get_rank())
    if batch_size is not None and batch_size % ranks.world:
        raise SaexError(f"--batch-size {batch_size} must be divisible by the number of processes ({ranks.world})")
    return ranks


def wrap(model: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """The module to call for a training step: DDP-wrapped when there are several ranks."""
    if ranks.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def teardown() -> None:
    """Destroy the process group before the interpreter exits: left to interpreter shutdown, gloo's threads
    can be torn down mid-flight and abort the process ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
