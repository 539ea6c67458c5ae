"""Data-parallel training: the processes ``torchrun`` starts, and the few collectives training needs.

``torchrun --standalone --nproc-per-node N qgen train ...`` starts N copies of the training command
with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set. Each copy trains the same model on its slice of
every global batch (:class:`qgen.data.Batching`) under ``DistributedDataParallel``, which averages the
gradients, so N processes take the same steps as one process on the whole batch (up to BatchNorm
statistics, which stay per process, and floating-point summation order). Only rank 0 writes files.
Without ``torchrun`` (``WORLD_SIZE`` unset) everything here is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Replicas:
    """This process's place among the data-parallel copies of one training run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Replicas:
        """The layout ``torchrun`` exported (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), else one process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def parallel(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Whether this process writes checkpoints and outputs (rank 0 only)."""
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """Each process's own GPU (``cuda:LOCAL_RANK``) when ``requested`` is CUDA, else ``requested``."""
        if self.parallel and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def start(self, device: torch.device) -> None:
        """Join the process group: NCCL between GPUs, gloo on CPU."""
        if self.parallel and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def stop(self) -> None:
        if self.parallel and dist.is_initialized():
            dist.destroy_process_group()

    def sum(self, values: Tensor) -> Tensor:
        """``values`` summed over all processes (in place); ``values`` itself for a single process."""
        if self.parallel:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is set in any process, so that all of them take the same branch."""
        if not self.parallel:
            return flag
        return bool(self.sum(torch.tensor([int(flag)], device=device)).item())

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()
