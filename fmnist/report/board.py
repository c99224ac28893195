"""A run's TensorBoard events: one `SummaryWriter`, and the few things fmnist writes to it.

All TensorBoard data of a run goes into one events file in the run directory, the
hyper-parameters included (written through the same writer, not `add_hparams`, which would
scatter an extra run folder per call).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from fmnist.report.figures import confusion_figure


class TensorBoard:
    """The run's one SummaryWriter; a disabled one (under torchrun, ranks > 0) writes nothing."""

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
