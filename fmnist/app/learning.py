"""The "Watch it learn" tab: a run's fixed validation images epoch by epoch, from its
val_predictions.json (fmnist.report.val_predictions), beside its train/loss curve (its
TensorBoard events).

Only run directories are read: the page's own run and those under outputs/, listed by the
server (`find_runs`); a name from the page that is not one of them is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from fmnist.errors import UserError
from fmnist.report import figures, val_predictions
from fmnist.report.board import read_scalars
from fmnist.report.val_predictions import Epoch, ValPredictions

DECIMALS = 4
NO_VALIDATION = (
    "This run has no validation split (data.val_size=0), so it followed no validation images: "
    "train with one (the default) to watch a model learn."
)


@dataclass
class Run:
    """A run's followed images and its train/loss curve."""

    directory: Path
    record: ValPredictions
    train_loss: list[tuple[int, float]]

    @property
    def epochs(self) -> list[int]:
        return [e.epoch for e in self.record.epochs]

    def at(self, epoch: int) -> Epoch:
        """The record of `epoch`, or of the last one before it that was recorded."""
        before = [e for e in self.record.epochs if e.epoch <= epoch]
        return before[-1] if before else self.record.epochs[0]


def find_runs(outputs: Path, own: Path | None) -> list[Path]:
    """The runs the page may show: its own, then every training run under `outputs` (a directory
    with checkpoints/last.pt: outputs/runs/<time>, outputs/multirun/<time>/<job>), newest first."""
    found = sorted(
        (last.parent.parent for last in outputs.glob("**/checkpoints/last.pt")),
        key=lambda run: (run / "checkpoints" / "last.pt").stat().st_mtime,
        reverse=True,
    )
    runs = [own] if own is not None else []
    return runs + [run for run in found if own is None or run.resolve() != own.resolve()]


def load(run_dir: Path) -> Run:
    """The run's record and curve; a run without a record is a `UserError` saying why."""
    record = val_predictions.load(run_dir)
    if record is None:
        raise UserError(_why_none(run_dir))
    if not record.epochs:
        raise UserError(f"{run_dir} has not finished an epoch yet: wait for one, then reload")
    return Run(run_dir, record, read_scalars(run_dir, "train/loss"))


def _why_none(run_dir: Path) -> str:
    if not run_dir.is_dir():
        return (
            f"{run_dir} no longer exists (deleted or moved since the page started): choose "
            "another run, or restart the page to list the runs there are now"
        )
    saved = run_dir / ".hydra" / "config.yaml"
    try:
        val_size = OmegaConf.load(saved).data.val_size if saved.is_file() else None
    except Exception:  # a damaged or foreign config: say what is known
        val_size = None
    if val_size == 0:
        return NO_VALIDATION
    return (
        f"{run_dir} has no {val_predictions.FILE}: it was trained before fmnist kept one; "
        "train it again to watch it learn."
    )


@dataclass
class EpochView:
    """What the tab shows at one epoch."""

    summary: str  # Markdown
    headers: list[str]
    rows: list[list[Any]]  # one per image
    grid: Any  # matplotlib Figure: the images, each with its prediction and loss
    curve: Any  # matplotlib Figure: train/loss and the images' mean loss, this epoch marked


def view(run: Run, epoch: int) -> EpochView:
    """The followed images after `epoch` epochs (0: untrained)."""
    record, at = run.record, run.at(epoch)
    classes, n = record.classes, len(record.labels)
    q = torch.tensor(at.q)
    predicted = q.argmax(1).tolist()
    right = sum(p == y for p, y in zip(predicted, record.labels, strict=True))
    c = len(classes)
    state = "untrained" if at.epoch == 0 else f"after epoch {at.epoch} of {run.epochs[-1]}"
    summary = (
        f"**Epoch {at.epoch}** ({state}, step {at.step}): **{right} of {n}** right; mean loss "
        f"of the {n} images **{at.mean_loss:.{DECIMALS}f}** (ln {c} = {math.log(c):.{DECIMALS}f}"
        f": q = 1/{c} for every class, what an untrained model gives)."
    )
    headers = ["image", "true class", "predicted", "q[predicted]", "q[true class]", "loss"]
    rows = [
        [
            k,
            classes[y],
            classes[predicted[k]],
            round(at.q[k][predicted[k]], DECIMALS),
            round(at.q[k][y], DECIMALS),
            round(at.loss[k], DECIMALS),
        ]
        for k, y in enumerate(record.labels)
    ]
    images = record.pixels.float().div(255).unsqueeze(1)
    grid = figures.validation_predictions(
        images, torch.tensor(record.labels), q, classes, at.step, losses=at.loss
    )
    followed = [(e.step, e.mean_loss) for e in record.epochs]
    curve = figures.training_curve(run.train_loss, followed, at.step, len(classes))
    return EpochView(summary, headers, rows, grid, curve)
