"""torch.distributed for ponder's trainers: one process per rank under torchrun, nothing in a single process.

    torchrun --nproc-per-node 2 -m ponder.trainers.pretrain --out runs/m --threads 1

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without WORLD_SIZE the trainer is one plain process
and torch.distributed is never initialised. gloo on CPU, nccl on GPU (one GPU per local rank).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def sum(self, x: float) -> float:
        """x summed over the ranks (x itself in a single process)."""
        if not self.distributed:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def check_same(self, name: str, value: int) -> None:
        """Raise on every rank unless all ranks hold the same value (e.g. the step they resume from)."""
        if not self.distributed:
            return
        t = torch.tensor([value, -value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if int(t[0]) != value or int(-t[1]) != value:
            raise RuntimeError(f"ranks disagree on {name} (this rank: {value}); does every node see the same --out?")

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite the tensors in place with rank 0's."""
        if self.distributed:
            for t in tensors:
                dist.broadcast(t, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup(device: str) -> Rank:
    """Join the process group torchrun describes; a single process (no WORLD_SIZE) joins nothing."""
    if "WORLD_SIZE" not in os.environ:
        return Rank(device=device)
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(local)  # "cuda" now means this rank's GPU
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo")
    return Rank(rank=rank, world=world, local=local, device=device)


def close() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
