"""A run's place in a torchrun job: ranks that only coordinate (barriers, small objects, over
gloo on every device) and the shards each rank embeds.

    dist = init_dist()                       # rank 0 of 1 without torchrun
    mine = deal(done_per_target, dist)       # this rank's shards, dealt round-robin
    message = dist.from_rank0(value)         # rank 0's value on every rank
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch

BARRIER_TIMEOUT = datetime.timedelta(days=7)  # a rank may wait long for the slowest one


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def from_rank0(self, value):
        """Rank 0's `value`, on every rank."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def init_dist() -> Dist:
    """Join the torchrun job described by the environment, if any. Ranks only coordinate
    (barriers, small objects), so gloo serves on every device, with a timeout long enough
    for a rank with little work to wait for the others."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return Dist(torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def deal(done: list[np.ndarray], dist: Dist) -> list[int]:
    """This rank's shards: those some target has not done, dealt round-robin over the ranks, so
    a resumed job spreads what is left evenly whatever was finished before."""
    todo = [i for i in range(len(done[0])) if not all(d[i] for d in done)]
    return todo[dist.rank :: dist.world]
