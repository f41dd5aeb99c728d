"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``.

Every process builds the same loader (same seed), so all see the same global
batch; each takes its own contiguous shard of it. DDP averages gradients over
the processes, and the loss is scaled so the average equals the gradient of the
mean over the whole global batch, even when the last batch does not split
evenly. Only rank 0 evaluates, logs and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def is_main_process() -> bool:
    """False in the processes of rank > 0 that torchrun starts (before or after they join)."""
    return os.environ.get("RANK", "0") == "0"


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collective tensors live (nccl needs CUDA)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: torch.device) -> Processes:
        """Join the process group that torchrun describes in the environment, if any."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":  # one GPU per process: NCCL works on the current device
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(
            dist.get_rank(), dist.get_world_size(), local_rank, f"cuda:{local_rank}" if device.type == "cuda" else "cpu"
        )

    def shard(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This process's contiguous share of the global batch."""
        n = tensors[0].shape[0]
        begin, end = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return tuple(t[begin:end] for t in tensors)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def max(self, value: int) -> int:
        """The largest ``value`` over all processes."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
