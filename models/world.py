"""Where this process stands among data-parallel ranks, and the few collectives training needs.

Training code takes a `World` instead of reading `torch.distributed` state itself: `World()` is one
process alone (every collective is then a no-op, so the one-process path runs no distributed code),
and `models.distributed.init_world()` builds the world a torchrun worker belongs to.

Usage::

    world = World()                        # or init_world() inside a torchrun worker
    rows = world.shard(rng.permutation(train_rows))
    ddp_model = world.wrap(model)          # DistributedDataParallel when world.size > 1
    stop = world.broadcast(stop_flag)      # rank 0 decides, every rank follows
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's rank among `size` data-parallel ranks, and the device its model trains on."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.size}")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that evaluates, prints progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, perm: np.ndarray) -> np.ndarray:
        """This rank's rows of an epoch's permutation, as `DistributedSampler` picks them: padded by
        repeating its head to a multiple of the world size (every rank must take as many steps, or DDP
        waits forever), then every `size`-th row from `rank`."""
        if self.size == 1:
            return perm
        padded = np.resize(perm, -(-len(perm) // self.size) * self.size)  # repeats perm from its head
        return padded[self.rank::self.size]

    def local_batch(self, batch_size: int) -> int:
        """Rows per rank per step, so the global batch stays `batch_size` whatever the world size."""
        if batch_size % self.size:
            raise ValueError(f"batch size {batch_size} does not split evenly over {self.size} processes")
        return batch_size // self.size

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module as a training step should call it: under DistributedDataParallel when distributed,
        so backward averages gradients across ranks; the module itself otherwise."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def broadcast(self, value: float) -> float:
        """Rank 0's `value` on every rank: decisions taken on rank 0 (early stopping on its validation
        NE) must be taken by all, or the ranks' step counts part and the next all-reduce hangs."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return float(t.item())

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def replica_check(self, modules: Iterable[nn.Module]) -> dict:
        """Gathers every rank's flattened parameters and compares them with rank 0's bit for bit
        (`torch.equal`): DDP keeps replicas identical only if every rank ran the same steps on the same
        averaged gradients, so this is the check that the training really was data-parallel.

        Returns {"world_size", "identical", "weights_sha256"} (the digest of rank 0's weights)."""
        flat = torch.cat([p.detach().reshape(-1).to(torch.float32) for m in modules for p in m.parameters()])
        digest = hashlib.sha256(flat.cpu().numpy().tobytes()).hexdigest()
        identical = True
        if self.distributed:
            import torch.distributed as dist

            gathered = [torch.empty_like(flat) for _ in range(self.size)]
            dist.all_gather(gathered, flat)
            identical = all(torch.equal(gathered[0], g) for g in gathered[1:])
        return {"world_size": self.size, "identical": identical, "weights_sha256": digest}
