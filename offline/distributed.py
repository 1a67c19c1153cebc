"""Training on several GPUs or machines: one process per GPU, started by torchrun (DistributedDataParallel).

    torchrun --nproc_per_node 4 -m rgbd_fusion_seg.offline.cli train --config ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `setup()` reads them and joins
the process group (NCCL on CUDA, Gloo on the CPU). Without them (a plain `rgbd-fusion-seg train`) it is a
single process and nothing changes. The trainer (train.py) uses the `Distributed` object for:

- data: every global batch of the epoch's permutation is split between the ranks (train.EpochBatchSampler),
  so `train.batch_size` is the GLOBAL batch size, the step count and the resume position do not depend on
  the number of processes, and it must be divisible by WORLD_SIZE;
- sums over ranks (`all_reduce_sum`): the validation confusion matrix, the epoch's loss sum and count;
- per-rank state (`gather`): each rank's RNG state goes into last.pt, so a resumed run continues every
  rank's augmentation exactly;
- `barrier`: around checkpoint writes and the cached dataset validation (rank 0 validates first).
Checkpoints, TensorBoard logs and console lines come from rank 0 only (`is_main`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; the default is the single-process job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # setup() created the process group, so teardown() destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _collective_device(self) -> torch.device:
        # NCCL reduces CUDA tensors only; Gloo takes CPU tensors.
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over all ranks (a new tensor on the input's device)."""
        if not self.enabled:
            return tensor
        reduced = tensor.detach().to(self._collective_device(), copy=True)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.to(tensor.device)

    def copy_buffers_from_main(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP sends them at the start of
        each training forward, but each rank's forward then updates its own copy: validation and the
        checkpoint must all see rank 0's."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=0)

    def gather(self, value) -> list:
        """Every rank's `value` (any picklable object), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def agree(self, flag: bool, what: str) -> None:
        """Raise unless every rank sees the same `flag` (e.g. whether last.pt exists: out_dir not shared)."""
        if not self.enabled:
            return
        count = int(self.all_reduce_sum(torch.tensor([int(bool(flag))]))[0])
        if count not in (0, self.world_size):
            raise RuntimeError(f"ranks disagree on {what} ({count} of {self.world_size} say yes); "
                               "out_dir must be on a file system that every machine shares")


def from_environment() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun's variables, or None when not started by torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return None
    missing = [name for name in ENV_VARS if name not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE is set but {', '.join(missing)} are not: start the job with torchrun")
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    except ValueError as error:
        raise RuntimeError(f"torchrun's RANK / WORLD_SIZE / LOCAL_RANK must be integers: {error}") from None


def is_main_process() -> bool:
    """Rank 0, or not started by torchrun (for output outside `train()`, e.g. the command line's last line)."""
    return os.environ.get("RANK", "0") == "0"


def setup(device: torch.device, timeout_s: float = 1800.0) -> tuple[Distributed, torch.device]:
    """Join torchrun's process group (if any); returns the job description and this process's device
    (cuda:LOCAL_RANK when `device` is CUDA)."""
    if dist.is_available() and dist.is_initialized():  # started by a caller that manages the group
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        owns = False
    else:
        found = from_environment()
        if found is None or found[1] == 1:
            return Distributed(), device
        rank, world, local = found
        owns = True
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return Distributed(rank=rank, world_size=world, local_rank=local, owns_group=owns), device


def teardown(context: Distributed) -> None:
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()
