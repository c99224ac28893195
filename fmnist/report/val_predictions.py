"""The fixed validation images' predictions, epoch by epoch, as numbers: val_predictions.json.

TensorBoard's `val/predictions` draws 16 fixed validation images with their predicted class at
every validation pass; this file keeps the same predictions as numbers, so that a page can replay
the model learning (fmnist.app's "Watch it learn" tab): each image's q (the 10 probabilities) and
its loss -log q[true class] after each epoch, from epoch 0, the untrained model, whose loss is
about ln 10. The images themselves are in the file too (uint8 pixels, base64), so it is all a
reader needs.

Rank 0 rewrites the file whole, atomically, after each epoch. A resumed run keeps the epochs its
checkpoint had finished and writes the later ones again, as TensorBoard drops their events.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fmnist.data import SIDE
from fmnist.errors import UserError
from fmnist.files import write_text_atomically
from fmnist.losses import cross_entropy, softmax

FILE = "val_predictions.json"


@dataclass
class Epoch:
    """What the model predicted for the images after `epoch` epochs (0: untrained)."""

    epoch: int
    step: int  # optimizer steps so far: where this epoch ends on the train/loss curve
    q: list[list[float]]  # per image, the 10 probabilities
    loss: list[float]  # per image, -log q[true class]

    @property
    def mean_loss(self) -> float:
        return math.fsum(self.loss) / len(self.loss)


@dataclass
class ValPredictions:
    """The followed images (uint8 (N, 28, 28)), their true classes, and each epoch's q and loss."""

    pixels: Tensor
    labels: list[int]
    classes: list[str]
    epochs: list[Epoch] = field(default_factory=list)

    def add(self, epoch: int, step: int, logits: Tensor) -> None:
        """The model's float32 logits (N, 10) for the images after `epoch` epochs; replaces that
        epoch and any later one (written by an interrupted process before a resume)."""
        x = logits.detach().cpu().double()
        target = torch.tensor(self.labels)
        q = softmax(x, dim=1).tolist()
        loss = cross_entropy(x, target, reduction="none").tolist()
        self.keep_until(epoch - 1)
        self.epochs.append(Epoch(epoch, step, q, loss))

    def keep_until(self, epoch: int) -> None:
        """Forget the epochs after `epoch`."""
        self.epochs = [e for e in self.epochs if e.epoch <= epoch]

    def as_dict(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "labels": self.labels,
            "pixels": "uint8, 28x28 per image, row by row, base64",
            "images": [base64.b64encode(bytes(p.flatten().tolist())).decode() for p in self.pixels],
            "epochs": [vars(e) for e in self.epochs],
        }

    def save(self, run_dir: Path) -> None:
        write_text_atomically(run_dir / FILE, json.dumps(self.as_dict()) + "\n")


def from_pixels(images: Tensor, labels: Tensor, classes: list[str]) -> ValPredictions:
    """A record of these images ((N, 1, 28, 28) in [0, 1], as fmnist.report.training.pixels
    turns the loader's back) with no epoch yet."""
    pixels = images.squeeze(1).mul(255).round().to(torch.uint8).cpu()
    return ValPredictions(pixels, [int(v) for v in labels.tolist()], classes)


def load(run_dir: Path) -> ValPredictions | None:
    """The run's record; None when it has none (no validation split, or an older run). A file
    that is not one is a `UserError` naming it."""
    path = run_dir / FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        images = [base64.b64decode(image, validate=True) for image in saved["images"]]
        pixels = torch.tensor([list(image) for image in images], dtype=torch.uint8)
        record = ValPredictions(
            pixels.view(len(images), SIDE, SIDE),
            [int(v) for v in saved["labels"]],
            [str(c) for c in saved["classes"]],
            [Epoch(**e) for e in saved["epochs"]],
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} is damaged ({reason}): train the run again") from None
    n = len(record.labels)
    if any(len(e.q) != n or len(e.loss) != n for e in record.epochs):
        raise UserError(f"{path} is damaged (an epoch without every image): train the run again")
    return record
