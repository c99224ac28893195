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

import pandas as pd
import torch
from omegaconf import OmegaConf
from PIL import Image

from fmnist.errors import UserError
from fmnist.i18n import Text, class_name, say
from fmnist.report import val_predictions
from fmnist.report.board import read_scalars
from fmnist.report.val_predictions import Epoch, ValPredictions

DECIMALS = 4
NO_VALIDATION = Text("learning.no_validation")


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
        raise UserError(Text("learning.error.no_epoch", run=run_dir))
    return Run(run_dir, record, read_scalars(run_dir, "train/loss"))


def _why_none(run_dir: Path) -> Text:
    if not run_dir.is_dir():
        return Text("learning.error.gone", run=run_dir)
    saved = run_dir / ".hydra" / "config.yaml"
    try:
        val_size = OmegaConf.load(saved).data.val_size if saved.is_file() else None
    except Exception:  # a damaged or foreign config: say what is known
        val_size = None
    if val_size == 0:
        return NO_VALIDATION
    return Text("learning.error.old", run=run_dir, file=val_predictions.FILE)


@dataclass
class EpochView:
    """What the tab shows at one epoch."""

    summary: str  # Markdown
    headers: list[str]
    rows: list[list[Any]]  # one per image
    images: list[tuple[Image.Image, str]]  # each image, captioned with its prediction and loss
    curve: pd.DataFrame  # train/loss and the images' mean loss by step, this epoch marked


def view(run: Run, epoch: int, lang: str = "en") -> EpochView:
    """The followed images after `epoch` epochs (0: untrained), in `lang` (en, zh)."""
    record, at = run.record, run.at(epoch)
    classes, n = record.classes, len(record.labels)
    names = [class_name(k, classes, lang) for k in range(len(classes))]
    predicted = torch.tensor(at.q).argmax(1).tolist()
    right = sum(p == y for p, y in zip(predicted, record.labels, strict=True))
    c = len(classes)
    state = (
        say(lang, "learning.state.untrained")
        if at.epoch == 0
        else say(lang, "learning.state.after", epoch=at.epoch, last=run.epochs[-1])
    )
    summary = say(
        lang,
        "learning.summary",
        epoch=at.epoch,
        state=state,
        step=at.step,
        right=right,
        n=n,
        loss=f"{at.mean_loss:.{DECIMALS}f}",
        c=c,
        ln=f"{math.log(c):.{DECIMALS}f}",
    )
    columns = ("image", "true", "predicted", "q_predicted", "q_true", "loss")
    headers = [say(lang, f"learning.column.{column}") for column in columns]
    rows = [
        [
            k,
            names[y],
            names[predicted[k]],
            round(at.q[k][predicted[k]], DECIMALS),
            round(at.q[k][y], DECIMALS),
            round(at.loss[k], DECIMALS),
        ]
        for k, y in enumerate(record.labels)
    ]
    images = [
        (
            Image.fromarray(record.pixels[k].numpy()),  # the browser enlarges it (pixelated)
            say(
                lang,
                "learning.caption",
                true=names[y],
                predicted=names[predicted[k]],
                loss=f"{at.loss[k]:.{DECIMALS}f}",
            ),
        )
        for k, y in enumerate(record.labels)
    ]
    return EpochView(summary, headers, rows, images, curve(run, at.step, c, lang))


def curve(run: Run, step: int, classes: int, lang: str) -> pd.DataFrame:
    """A line plot's rows (step, loss, series): the run's train/loss at every step, the mean loss
    of the followed images after each epoch (from ln C, untrained), ln C itself, and the epoch
    shown, a vertical line."""
    series = {
        name: say(lang, f"learning.series.{name}", c=classes)
        for name in ("train", "images", "untrained", "now")
    }
    followed = [(e.step, e.mean_loss) for e in run.record.epochs]
    last = max([s for s, _ in [*run.train_loss, *followed]] or [1])
    top = max([v for _, v in [*run.train_loss, *followed]] + [math.log(classes)])
    rows = [(s, v, series["train"]) for s, v in run.train_loss]
    rows += [(s, v, series["images"]) for s, v in followed]
    rows += [
        (0, math.log(classes), series["untrained"]),
        (last, math.log(classes), series["untrained"]),
    ]
    rows += [(step, 0.0, series["now"]), (step, top, series["now"])]
    return pd.DataFrame(rows, columns=["step", "loss", "series"])
