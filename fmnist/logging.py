"""What a run reports: TensorBoard scalars and images, tqdm bars, and the plain log file.

All TensorBoard data of a run goes into one events file in the run directory, the
hyper-parameters included (written through the same writer, not `add_hparams`, which would
scatter an extra run folder per call).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from fmnist.data import CLASSES

log = logging.getLogger("fmnist")


def progress(iterable: Iterable, enabled: bool, **kwargs: Any) -> tqdm:
    """A tqdm bar, silent when disabled or when stderr is not a terminal (logs, CI, pipes)."""
    return tqdm(
        iterable, disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, **kwargs
    )


def confusion_figure(matrix: torch.Tensor, title: str):
    """A matplotlib figure of a 10x10 confusion matrix (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    counts = matrix.cpu().numpy()
    ax.imshow(counts, cmap="Blues")
    ax.set(
        xticks=range(len(CLASSES)),
        yticks=range(len(CLASSES)),
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    ax.set_xticklabels(CLASSES, rotation=45, ha="right")
    ax.set_yticklabels(CLASSES)
    threshold = counts.max() / 2
    for (i, j), count in np.ndenumerate(counts):
        ax.text(
            j,
            i,
            int(count),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if count > threshold else "black",
        )
    fig.tight_layout()
    return fig


class TensorBoard:
    """The run's one SummaryWriter, with the few things fmnist writes to it."""

    def __init__(self, run_dir: Path, purge_step: int | None = None, enabled: bool = True) -> None:
        self.writer = (
            SummaryWriter(log_dir=str(run_dir), purge_step=purge_step) if enabled else None
        )

    def scalars(self, step: int, **values: float) -> None:
        """`train_loss=0.5` is written as the tag `train/loss`."""
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(name.replace("_", "/", 1), value, step)

    def confusion(self, tag: str, matrix: torch.Tensor, step: int) -> None:
        if self.writer is None:
            return
        self.writer.add_figure(tag, confusion_figure(matrix, f"{tag} (step {step})"), step)

    def hyperparameters(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """The hparams-plugin entry: `params` against final `metrics` (tags already logged)."""
        if self.writer is None:
            return
        experiment, start, end = hparams(params, metrics)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """('optimizer.lr', 0.05), ... for a nested config, lists as strings (hparams wants scalars)."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield (
                f"{prefix}{key}",
                value if isinstance(value, (int, float, str, bool)) else str(value),
            )
