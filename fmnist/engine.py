"""The training loop and evaluation, in plain PyTorch: batch, forward, loss, backward, step.

`train_epoch` yields what each optimizer step did (`Step`) and `evaluate` returns what a pass over
a split found (`Metrics`); neither knows how results are shown or saved (fmnist.report does that).
`Compute` says where and how the model runs: device, bf16 autocast, memory layout.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fmnist import data, distributed
from fmnist.errors import SettingsError, UserError
from fmnist.losses import cross_entropy
from fmnist.models import NUM_CLASSES

# --------------------------------------------------------------------------------------------
# Where and how the model runs
# --------------------------------------------------------------------------------------------


def device(name: str, key: str = "trainer.device") -> torch.device:
    """`auto`: a CUDA GPU when one is visible (under torchrun, this rank's own), else Apple's GPU
    (MPS), else the CPU."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "cuda" and not cuda:
        raise UserError(f"{key}=cuda but no CUDA GPU is visible: use {key}=auto or cpu")
    if name == "mps" and not mps:
        raise UserError(f"{key}=mps but no Apple GPU (MPS) is available: use {key}=auto or cpu")
    if name == "cuda" or (name == "auto" and cuda):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name == "mps" or (name == "auto" and mps):
        return torch.device("mps")
    return torch.device("cpu")


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 pays off on GPUs that support it and on CPUs with AVX-512-BF16 or AMX; on Apple's
    GPUs float32 is used (bf16 there depends on the macOS version, and is untested here)."""
    if device.type == "mps":
        return False
    if device.type == "cuda":
        supported: bool = torch.cuda.is_bf16_supported()
        return supported
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class Compute:
    """Where and how the model runs."""

    device: torch.device
    bf16: bool  # autocast the model to bfloat16 (the loss always runs in float32)
    channels_last: bool

    @classmethod
    def choose(cls, device_name: str, precision: str, channels_last: bool) -> Compute:
        """From the trainer's settings: `precision=auto` is bf16 where `bf16_is_fast`."""
        chosen = device(device_name)
        bf16 = precision == "bf16" or (precision == "auto" and bf16_is_fast(chosen))
        return cls(chosen, bf16, channels_last)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def images(self, images: Tensor) -> Tensor:
        return (
            images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        )

    def place(self, model: nn.Module) -> nn.Module:
        """`model` on the device, in the memory layout the images will have."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


# --------------------------------------------------------------------------------------------
# Prediction and evaluation
# --------------------------------------------------------------------------------------------

TTA_MODES = ("none", "flip", "flip_shift")
SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))  # (0, 0) included


def tta_views(
    images: Tensor, tta: str = "none", background: float = data.BACKGROUND
) -> list[Tensor]:
    """The views of a batch that test-time augmentation averages over (`TTA_MODES`).

    Training flips and shifts its images, so those are equally valid evidence at test time:
    `flip` adds the mirror images (2 views), `flip_shift` also moves both by every 1-pixel
    shift, padding with black as training's crops do (18 views, 9x the cost; over `flip`, +0.05
    to +0.24 points of test accuracy in three runs of the default CNN). `background` is black
    as the images hold it: normalised by default, 0.0 for the [0, 1] input of an exported model.
    """
    views = [images] if tta == "none" else [images, images.flip(-1)]
    if tta == "flip_shift":
        side = images.shape[-1]
        padded = [F.pad(view, (1, 1, 1, 1), value=background) for view in views]
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
        logits: Tensor = sum(model(compute.images(view)).float() for view in views) / len(views)
        return logits


def confusion_matrix(labels: Tensor, predictions: Tensor) -> Tensor:
    return torch.bincount(labels * NUM_CLASSES + predictions, minlength=NUM_CLASSES**2).view(
        NUM_CLASSES, NUM_CLASSES
    )


@dataclass
class Metrics:
    """What one pass over a split found."""

    loss: float  # mean cross-entropy (no label smoothing), over all ranks
    accuracy: float  # over all ranks
    confusion: Tensor  # (10, 10) counts over all ranks; rows: true class, columns: predicted
    logits: Tensor  # float32 (N, 10) on the CPU: rank 0's images in loader order, then rank 1's...
    labels: Tensor  # int64 (N,), the same images'

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_loss": self.loss, f"{prefix}_acc": self.accuracy}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, compute: Compute, tta: str = "none") -> Metrics:
    """Loss, accuracy, confusion matrix and logits of `model` over one pass of `loader`."""
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=compute.device)
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long, device=compute.device)
    all_logits: list[Tensor] = []
    all_labels: list[Tensor] = []
    for images, labels in loader.epoch():
        logits = predict(model, images, compute, tta)
        total_loss += cross_entropy(logits, labels, reduction="sum")
        confusion += confusion_matrix(labels, logits.argmax(1))
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    distributed.sum_(total_loss), distributed.sum_(confusion)  # over the whole split
    count = confusion.sum().item()
    every_rank = distributed.gather((torch.cat(all_logits), torch.cat(all_labels)))
    return Metrics(
        total_loss.item() / count,
        confusion.trace().item() / count,
        confusion.cpu(),
        torch.cat([logits for logits, _ in every_rank]),
        torch.cat([labels for _, labels in every_rank]),
    )


@torch.no_grad()
def embed(
    model: nn.Module, loader: Any, compute: Compute, limit: int
) -> tuple[Tensor, Tensor, Tensor]:
    """What the model's last layer sees (`model.embed`) for the first `limit` images of one pass
    of `loader`: float32 features, those images (normalised) and their labels, on the CPU."""
    model.eval()
    # nn.Module's __getattr__ types any attribute it does not declare as Tensor | Module.
    features_of = cast(Callable[[Tensor], Tensor], model.embed)
    features: list[Tensor] = []
    images: list[Tensor] = []
    labels: list[Tensor] = []
    for batch, batch_labels in loader.epoch():
        with compute.autocast():
            features.append(features_of(compute.images(batch)).float().cpu())
        images.append(batch.cpu())
        labels.append(batch_labels.cpu())
        if sum(map(len, labels)) >= limit:
            break
    return torch.cat(features)[:limit], torch.cat(images)[:limit], torch.cat(labels)[:limit]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class Training:
    """What a run trains with, built from its config."""

    compute: Compute
    data: Any  # fmnist.loaders.FashionMNIST: .train, .val and .test loaders
    model: nn.Module  # what checkpoints save
    trained: nn.Module  # `model`, or its DDP / torch.compile wrapper
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None = None  # an exponential moving average of the weights

    @property
    def evaluated(self) -> nn.Module:
        """What validation and test run: the average of the weights when there is one, else the
        trained model (through its DDP or compiled wrapper)."""
        return self.ema.module if self.ema is not None else self.trained

    @property
    def evaluated_module(self) -> nn.Module:
        """The plain nn.Module behind `evaluated`, for what only one rank does (TensorBoard)."""
        return self.ema.module if self.ema is not None else self.model


@dataclass
class Position:
    """How far training has got; with the RNG states, enough to resume exactly."""

    step: int = 0  # optimizer steps so far (the TensorBoard global step)
    epoch: int = 0  # the epoch in progress (0-based)
    batch: int = 0  # batches of that epoch already used
    skipped: int = 0  # steps skipped for a non-finite loss (trainer.skip_nonfinite)
    skipped_in_a_row: int = 0  # of those, how many came last, one after another


@dataclass
class Step:
    """What one optimizer step did."""

    number: int  # the step count after it (the TensorBoard global step)
    loss: float  # mean training loss of the global batch
    accuracy: float  # its accuracy
    lr: float  # the learning rate it used


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of `model`'s weights and BatchNorm statistics, updated
    after each step: average <- decay * average + (1 - decay) * weights (PyTorch's own
    AveragedModel; the first update copies the weights)."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class NonFiniteLoss(SettingsError):
    """The loss became NaN or infinite: training diverged."""


def train_epoch(training: Training, position: Position, max_skipped: int = 0) -> Iterator[Step]:
    """Train the rest of epoch `position.epoch`, one optimizer step per batch.

    `position` moves on with every batch and each step is yielded as it is taken, so the caller
    can report, checkpoint or stop after any of them. A batch whose loss is NaN or infinite
    stops training, or, up to `max_skipped` such batches in a row, is skipped: no update, the
    BatchNorm statistics it touched restored, the learning-rate schedule moved on as if it had
    been taken.
    """
    model, loss_fn, compute = training.trained, training.loss_fn, training.compute
    model.train()
    for images, labels in training.data.train.epoch(position.epoch, position.batch):
        buffers = [b.clone() for b in training.model.buffers()] if max_skipped else []
        with compute.autocast():
            logits = model(compute.images(images))
        loss = _share_loss(loss_fn, logits, labels)
        correct = (logits.argmax(1) == labels).sum()
        loss, loss_value, accuracy = distributed.global_batch(
            loss, correct, len(labels), _denominator(loss_fn, labels)
        )
        position.batch += 1
        if not math.isfinite(loss_value):
            _skip(training, position, buffers, loss_value, max_skipped)
            continue

        training.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = training.optimizer.param_groups[0]["lr"]
        training.optimizer.step()
        training.scheduler.step()
        if training.ema is not None:
            training.ema.update_parameters(training.model)
        position.step += 1
        position.skipped_in_a_row = 0
        yield Step(position.step, loss_value, accuracy, lr)
    position.epoch, position.batch = position.epoch + 1, 0


def _share_loss(loss_fn: nn.Module, logits: Tensor, labels: Tensor) -> Tensor:
    """The mean loss of this rank's share of the batch (in float32); an empty share, which
    torchrun gives a rank when a batch has fewer images than ranks, adds a zero."""
    if not len(labels):
        return logits.float().sum() * 0.0
    loss: Tensor = loss_fn(logits.float(), labels)
    return loss


def _denominator(loss_fn: nn.Module, labels: Tensor) -> Tensor | int:
    """What the loss's mean divides by: the sample count, or its targets' class weights."""
    weight = getattr(loss_fn, "weight", None)
    return len(labels) if weight is None else weight[labels].sum()


def _skip(
    training: Training, position: Position, buffers: list[Tensor], loss: float, max_skipped: int
) -> None:
    """Skip the batch just taken, undoing what its forward pass changed, or stop training."""
    where = f"step {position.step + 1} (epoch {position.epoch + 1}, batch {position.batch})"
    if not max_skipped:
        raise NonFiniteLoss(
            f"the loss is {loss} at {where}: lower optimizer.lr, or skip such steps with "
            "trainer.skip_nonfinite=true"
        )
    position.skipped += 1
    position.skipped_in_a_row += 1
    if position.skipped_in_a_row > max_skipped:
        raise NonFiniteLoss(
            f"the loss is {loss} at {where}, the {position.skipped_in_a_row}th non-finite loss "
            f"in a row (trainer.max_skipped_in_a_row={max_skipped}): training has diverged; "
            "lower optimizer.lr"
        )
    for buffer, saved in zip(training.model.buffers(), buffers, strict=True):
        buffer.copy_(saved)  # BatchNorm's running statistics, as before the bad batch
    training.scheduler.step()  # the schedule follows the batches, taken or skipped
