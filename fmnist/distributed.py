"""Multi-process training under torchrun, on PyTorch's own engine (torch.distributed + DDP).

`torchrun --nproc_per_node=N scripts/train.py ...` starts N processes with RANK, LOCAL_RANK and
WORLD_SIZE set. Each process (rank) trains on its share of every global batch; DDP averages the
gradients, so together the ranks take the step one process would take on the whole batch.
Rank 0 alone writes files and shows progress. Without torchrun, everything here is a no-op.
(Which device a rank uses is fmnist.engine's choice: `engine.device`.)
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from fmnist.errors import UserError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0: the process that writes checkpoints, events, metrics and shows progress."""
    return rank() == 0


def init() -> None:
    """Join the torchrun job, once: NCCL between GPUs, gloo between CPU processes."""
    if world_size() == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def agree(value: str) -> str:
    """Rank 0's `value` on every rank (e.g. the run directory, which contains a timestamp)."""
    init()
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def per_rank_batch(global_batch: int, key: str) -> None:
    """The configured batch size is global; each rank takes global / world size of it."""
    if global_batch % world_size():
        raise UserError(
            f"{key}={global_batch} does not split over {world_size()} processes: "
            f"use a multiple of {world_size()}"
        )


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def batch_means(loss: torch.Tensor, correct: torch.Tensor, count: int) -> tuple[float, float]:
    """Mean loss and accuracy of the whole global batch, the same on every rank."""
    if not dist.is_initialized():
        return loss.item(), correct.item() / count
    totals = torch.stack(
        [
            loss.double() * count,
            correct.double(),
            torch.tensor(count, dtype=torch.float64, device=loss.device),
        ]
    )
    dist.all_reduce(totals)
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def any_(flag: bool) -> bool:
    """True on every rank if `flag` is true on any (so all ranks stop at the same step)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor(float(flag))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of a global batch (parts differ by at most one sample)."""
    return tensor.tensor_split(world_size())[rank()] if world_size() > 1 else tensor
