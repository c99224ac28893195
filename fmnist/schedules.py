"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class OneCycle:
    """Multiplier of the base learning rate: 0 -> 1 over the warm-up, then 1 -> 0 at the end."""

    def __init__(self, total_steps: int, warmup: float) -> None:
        self.total_steps, self.warmup_steps = total_steps, max(1, round(warmup * total_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps))


def one_cycle(optimizer: Optimizer, total_steps: int, warmup: float) -> LambdaLR:
    """Linear warm-up then linear decay to zero: the triangle of fast CIFAR/MNIST training runs."""
    return LambdaLR(optimizer, OneCycle(total_steps, warmup))


def constant(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    """The optimizer's own learning rate at every step."""
    return LambdaLR(optimizer, lambda step: 1.0)
