"""Multi-process training under torchrun, on PyTorch's own engine (torch.distributed + DDP).

`torchrun --nproc_per_node=N scripts/train.py ...` starts N processes with RANK, LOCAL_RANK and
WORLD_SIZE set. Each process (rank) trains on its share of every global batch (shares differ by
at most one sample, and may be empty); `global_batch` scales each rank's loss so that DDP's
average of the gradients is the gradient of the whole batch's mean loss, exactly as one process
computes it. Rank 0 alone writes files and shows progress. Without torchrun, everything here is
a no-op. (Which device a rank uses is fmnist.engine's choice: `engine.device`.)
"""

from __future__ import annotations

import atexit
import gc
import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from fmnist.errors import UserError

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0: the process that writes checkpoints, events, metrics and shows progress."""
    return rank() == 0


_groups_joined = 0  # process groups this process has joined (a sweep's jobs each join one)


def init() -> None:
    """Join the torchrun job, once until `leave`: NCCL for CUDA tensors, gloo for CPU tensors.

    The store's keys carry torchrun's restart count and this process's group count: a
    restarted group, or a sweep's next job, must not read the addresses an earlier group left
    in the same store, or it fails to connect (pytorch/pytorch#167288).
    """
    global _groups_joined
    if world_size() == 1 or dist.is_initialized():
        return
    # Imported before the group exists, on purpose. Its functions take `group=group.WORLD` as
    # a default argument, evaluated once, on import; DDP imports it (through torch._dynamo)
    # after the group exists, so the group would stay referenced by those defaults for the
    # life of the process: destroy_process_group could not free it, and gloo's threads would
    # still run while the interpreter exits (the abort at exit, tests/test_distributed.py).
    import torch.distributed.nn.functional

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    store, rank, size = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    _groups_joined += 1
    dist.init_process_group(
        "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo",
        store=dist.PrefixStore(f"fmnist/attempt_{attempt}/group_{_groups_joined}", store),
        rank=rank,
        world_size=size,
    )
    if _groups_joined == 1:  # a failed run leaves without waiting for the others
        atexit.register(_destroy)


def leave() -> None:
    """Leave the torchrun job at the end of a run: wait until every rank is here (rank 0 may
    still be writing its report), then destroy the group, which joins gloo's threads.

    So no rank leaves while another still talks to it, and no collective is in flight or still
    being released by a gloo thread when the interpreter exits: a gloo thread that drops the last
    reference to a Python tensor during interpreter finalization takes the GIL there, and the
    process aborts ("terminate called without an active exception"). The run's own objects
    (its DDP model) must be gone: `gc.collect` frees the cycles they sit in.
    """
    if dist.is_initialized():
        dist.barrier()
        _destroy()


def _destroy() -> None:
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def seed_per_rank(seed: int) -> None:
    """Give this rank its own stream of the global RNG (dropout masks), after the model is built.

    Every rank seeds alike and so builds the same initial weights; from then on each draws its
    own masks, as the ranks' shares of a batch are different images. One process: unchanged.
    """
    if world_size() > 1:
        torch.manual_seed(seed + 1_000_003 * (rank() + 1))


def gather(value: T) -> list[T]:
    """Every rank's `value`, in rank order, on every rank (e.g. the ranks' RNG states)."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * world_size()  # all_gather_object fills in every rank's value
    dist.all_gather_object(values, value)
    return values


def agree(value: T) -> T:
    """Rank 0's `value` on every rank (e.g. the run directory it chose and created)."""
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


def global_batch(
    loss: torch.Tensor, correct: torch.Tensor, count: int, denominator: torch.Tensor | float
) -> tuple[torch.Tensor, float, float]:
    """Combine the ranks' shares of one global batch.

    `loss` is this rank's mean loss over its `count` samples: a sum divided by `denominator`
    (the count, or with class weights the sum of its targets' weights; 0 for an empty share,
    whose loss must then be a zero connected to the graph). Returns the loss to backpropagate,
    scaled by world size * denominator / global denominator, so that DDP's average over the
    ranks is the gradient of the global batch's mean loss; and that mean loss and the global
    accuracy, the same on every rank. One process: the loss as it is, and its own figures.
    """
    if not dist.is_initialized():
        return loss, loss.item(), correct.item() / count
    double, device = torch.float64, loss.device
    denominator = torch.as_tensor(denominator, dtype=double, device=device)
    totals = torch.stack(
        [
            loss.detach().double() * denominator,
            correct.double(),
            torch.tensor(count, dtype=double, device=device),
            denominator,
        ]
    )
    dist.all_reduce(totals)
    total_loss, total_correct, total_count, total_denominator = totals.tolist()
    scale = (world_size() * denominator / total_denominator).to(loss.dtype)
    return loss * scale, total_loss / total_denominator, total_correct / total_count


def any_(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any (so all ranks stop at the same step)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of a global batch (parts differ by at most one sample)."""
    return tensor.tensor_split(world_size())[rank()] if world_size() > 1 else tensor
