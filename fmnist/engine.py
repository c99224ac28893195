"""The training loop and evaluation, in plain PyTorch: batch, forward, loss, backward, step, log."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fmnist import distributed
from fmnist.errors import UserError
from fmnist.logging import TensorBoard, progress
from fmnist.losses import cross_entropy
from fmnist.models import NUM_CLASSES


@dataclass
class Compute:
    """Where and how the model runs."""

    device: torch.device
    bf16: bool  # autocast the model to bfloat16 (the loss always runs in float32)
    channels_last: bool

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def images(self, images: Tensor) -> Tensor:
        return (
            images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        )


@dataclass
class Metrics:
    loss: float  # mean cross-entropy (no label smoothing)
    accuracy: float
    confusion: Tensor  # (10, 10) counts, rows: true class, columns: predicted

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_loss": self.loss, f"{prefix}_acc": self.accuracy}


def confusion_matrix(labels: Tensor, predictions: Tensor) -> Tensor:
    return torch.bincount(labels * NUM_CLASSES + predictions, minlength=NUM_CLASSES**2).view(
        NUM_CLASSES, NUM_CLASSES
    )


def predict(model: nn.Module, images: Tensor, compute: Compute, tta: bool = False) -> Tensor:
    """float32 logits; with `tta`, averaged with those of the mirrored images (flips are a
    symmetry of the training data, so the two views are equally valid evidence)."""
    with compute.autocast():
        logits = model(compute.images(images)).float()
        if tta:
            logits = (logits + model(compute.images(images.flip(-1))).float()) / 2
    return logits


@torch.no_grad()
def evaluate(model: nn.Module, loader, compute: Compute, tta: bool = False) -> Metrics:
    """Loss, accuracy and confusion matrix of `model` over one pass of `loader`."""
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=compute.device)
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long, device=compute.device)
    for images, labels in loader.epoch():
        logits = predict(model, images, compute, tta)
        total_loss += cross_entropy(logits, labels, reduction="sum")
        confusion += confusion_matrix(labels, logits.argmax(1))
    distributed.sum_(total_loss), distributed.sum_(confusion)  # over the whole split
    count = confusion.sum().item()
    return Metrics(total_loss.item() / count, confusion.trace().item() / count, confusion.cpu())


@dataclass
class Training:
    """What a run trains with, built from its config."""

    compute: Compute
    data: Any  # fmnist.loaders.FashionMNIST: .train, .val and .test loaders
    model: nn.Module  # what checkpoints save
    trained: nn.Module  # `model`, or its torch.compile wrapper
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


@dataclass
class Position:
    """How far training has got; with the RNG states, enough to resume exactly."""

    step: int = 0  # optimizer steps so far (the TensorBoard global step)
    epoch: int = 0  # the epoch in progress (0-based)
    batch: int = 0  # batches of that epoch already used
    skipped: int = 0  # steps skipped for a non-finite loss (trainer.skip_nonfinite)


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite: training diverged."""


def train_epoch(
    t: Training,
    position: Position,
    tensorboard: TensorBoard,
    show_progress: bool,
    skip_nonfinite: bool,
) -> Iterator[Position]:
    """Train the rest of `position.epoch`, logging loss, accuracy and learning rate every step.

    Yields `position` after every optimizer step, so the caller can checkpoint or stop there.
    """
    t.trained.train()
    loader = t.data.train
    batches = progress(
        loader.epoch(position.epoch, position.batch),
        show_progress,
        initial=position.batch,
        total=len(loader),
        leave=False,
        desc=f"epoch {position.epoch + 1}",
    )
    for images, labels in batches:
        with t.compute.autocast():
            logits = t.trained(t.compute.images(images))
        loss = t.loss_fn(logits.float(), labels)
        correct = (logits.argmax(1) == labels).sum()
        loss_value, accuracy = distributed.batch_means(loss.detach(), correct, len(labels))
        position.batch += 1
        if not math.isfinite(loss_value):
            if not skip_nonfinite:
                raise NonFiniteLoss(
                    f"the loss is {loss_value} at step {position.step + 1} (epoch "
                    f"{position.epoch + 1}, batch {position.batch}): lower optimizer.lr, or skip "
                    "such steps with trainer.skip_nonfinite=true"
                )
            position.skipped += 1
            continue

        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = t.optimizer.param_groups[0]["lr"]
        t.optimizer.step()
        t.scheduler.step()
        position.step += 1

        tensorboard.scalars(position.step, train_loss=loss_value, train_acc=accuracy, train_lr=lr)
        batches.set_postfix(loss=f"{loss_value:.4f}", acc=f"{accuracy:.3f}", refresh=False)
        yield position
    position.epoch, position.batch = position.epoch + 1, 0
