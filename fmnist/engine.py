"""The training loop and evaluation, in plain PyTorch: batch, forward, loss, backward, step, log."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmnist import data, distributed
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


TTA_MODES = ("none", "flip", "flip_shift")
SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))  # (0, 0) included


def tta_views(images: Tensor, tta: str = "none") -> list[Tensor]:
    """The views of a batch that test-time augmentation averages over (`TTA_MODES`).

    Training flips and shifts its images, so those are equally valid evidence at test time:
    `flip` adds the mirror images (2 views), `flip_shift` also moves both by every 1-pixel
    shift, padding with black as training's crops do (18 views, 9x the cost; over `flip`, +0.05
    to +0.24 points of test accuracy in three runs of the default CNN).
    """
    views = [images] if tta == "none" else [images, images.flip(-1)]
    if tta == "flip_shift":
        side = images.shape[-1]
        padded = [F.pad(view, (1, 1, 1, 1), value=data.BACKGROUND) for view in views]
        views = [
            view[..., 1 + dy : 1 + dy + side, 1 + dx : 1 + dx + side]
            for view in padded
            for dy, dx in SHIFTS
        ]
    return views


def predict(model: nn.Module, images: Tensor, compute: Compute, tta: str = "none") -> Tensor:
    """float32 logits, averaged over the `tta_views` of `images`."""
    views = tta_views(images, tta)
    with compute.autocast():
        return sum(model(compute.images(view)).float() for view in views) / len(views)


@torch.no_grad()
def evaluate(model: nn.Module, loader, compute: Compute, tta: str = "none") -> Metrics:
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
