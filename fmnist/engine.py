"""The training loop and evaluation, in plain PyTorch: batch, forward, loss, backward, step, log."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

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


@torch.no_grad()
def evaluate(model: nn.Module, loader, compute: Compute) -> Metrics:
    """Loss, accuracy and confusion matrix of `model` over one pass of `loader`."""
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=compute.device)
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long, device=compute.device)
    for images, labels in loader.epoch():
        with compute.autocast():
            logits = model(compute.images(images))
        total_loss += cross_entropy(logits.float(), labels, reduction="sum")
        confusion += confusion_matrix(labels, logits.argmax(1))
    count = confusion.sum().item()
    return Metrics(total_loss.item() / count, confusion.trace().item() / count, confusion.cpu())


def train_epoch(
    model: nn.Module,
    loader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    compute: Compute,
    tensorboard: TensorBoard,
    epoch: int,
    step: int,
    show_progress: bool,
) -> int:
    """Train one epoch, logging loss, accuracy and learning rate per step; return the step count."""
    model.train()
    batches = progress(
        loader.epoch(epoch),
        show_progress,
        total=len(loader),
        leave=False,
        desc=f"epoch {epoch + 1}",
    )
    for images, labels in batches:
        with compute.autocast():
            logits = model(compute.images(images))
        loss = loss_fn(logits.float(), labels)

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        step += 1

        loss_value, accuracy = loss.item(), (logits.argmax(1) == labels).float().mean().item()
        tensorboard.scalars(step, train_loss=loss_value, train_acc=accuracy, train_lr=lr)
        batches.set_postfix(loss=f"{loss_value:.4f}", acc=f"{accuracy:.3f}", refresh=False)
    return step
