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

from saex.devices import Placement
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

    def all_rows(self, x_bD: torch.Tensor) -> torch.Tensor:
        """Every rank's rows stacked in rank order (the global batch, from each rank's slice of it)."""
        if self.world == 1:
            return x_bD
        parts = [torch.empty_like(x_bD) for _ in range(self.world)]
        dist.all_gather(parts, x_bD.contiguous())
        return torch.cat(parts)

    def local_slice(self, x_BD: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return x_BD
        b = x_BD.shape[0] // self.world
        return x_BD[self.rank * b : (self.rank + 1) * b]


def setup(batch_size: int | None = None) -> Ranks:
    """Join the process group torchrun describes in the environment (a no-op for a single process): NCCL when
    there are GPUs (each rank on the one ``LOCAL_RANK`` names), gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if not dist.is_initialized():
        return Ranks()
    ranks = Ranks(dist.get_world_size(), dist.get_rank())
    if batch_size is not None and batch_size % ranks.world:
        raise SaexError(f"--batch-size {batch_size} must be divisible by the number of processes ({ranks.world})")
    return ranks


def local_placement(place: Placement, ranks: Ranks) -> Placement:
    """Each rank's own GPU under torchrun: a CUDA device becomes ``cuda:LOCAL_RANK`` (the model's too, when it
    shares the dictionaries' device); anything else is left as given."""
    if ranks.world == 1 or place.device.type != "cuda":
        return place
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", str(ranks.rank))))
    lm_device = local if place.lm_device == place.device else place.lm_device
    return Placement(local, lm_device, place.lm_dtype)


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
