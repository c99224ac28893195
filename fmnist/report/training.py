"""What a training run shows as it goes: TensorBoard events, tqdm bars and train.log lines.

`TrainingReport` wraps the loop's iterators (epochs, steps) to draw bars and log every step's
loss, accuracy and learning rate, and takes the results of each validation and of the final test.
Under torchrun only rank 0 reports; the others stay silent.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from fmnist.engine import Metrics, Position, Step, Training
from fmnist.report.board import TensorBoard

log = logging.getLogger("fmnist")


def progress(iterable: Iterable, enabled: bool, **kwargs: Any) -> tqdm:
    """A tqdm bar, silent when disabled or when stderr is not a terminal (logs, CI, pipes)."""
    return tqdm(
        iterable, disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, **kwargs
    )


class TrainingReport:
    """A run's events, bars and log lines; `enabled=False` (ranks > 0) shows and writes nothing.

    `resumed_at`: the step a resumed run continues after. TensorBoard drops the events written
    after it by the interrupted process, which no checkpoint holds.
    """

    def __init__(
        self, run_dir: Path, show_bars: bool, enabled: bool, resumed_at: int | None = None
    ) -> None:
        purge_step = None if resumed_at is None else resumed_at + 1
        self.board = TensorBoard(run_dir, purge_step, enabled)
        self.show_bars = show_bars and enabled
        if not enabled:
            log.setLevel(logging.WARNING)

    def __enter__(self) -> TrainingReport:
        self._redirect = logging_redirect_tqdm()  # log lines print above the bars
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._redirect.__exit__(*exc)
        self.board.close()

    def start(self, training: Training, resumed_from: Path | None, position: Position) -> None:
        model, compute = training.model, training.compute
        if resumed_from:
            log.info(
                "Resuming %s at step %d (epoch %d)", resumed_from, position.step, position.epoch + 1
            )
        log.info(
            "Data: %s; %d training batches per epoch",
            training.data.origin,
            len(training.data.train),
        )
        log.info(
            "Model: %s, %d parameters, on %s, %s",
            type(model).__name__,
            sum(p.numel() for p in model.parameters()),
            compute.device,
            "bf16 autocast" if compute.bf16 else "float32",
        )

    def epochs(self, position: Position, total: int) -> Iterator[int]:
        """The epochs still to train, under an "epochs" bar."""
        epochs = range(position.epoch, total)
        yield from progress(
            epochs, self.show_bars, initial=position.epoch, total=total, desc="epochs"
        )

    def steps(self, steps: Iterator[Step], position: Position, batches: int) -> Iterator[Step]:
        """Pass the loop's steps through, logging each to TensorBoard, under an epoch bar."""
        bar = progress(
            steps,
            self.show_bars,
            initial=position.batch,
            total=batches,
            leave=False,
            desc=f"epoch {position.epoch + 1}",
        )
        for step in bar:
            self.board.scalars(
                step.number, train_loss=step.loss, train_acc=step.accuracy, train_lr=step.lr
            )
            bar.set_postfix(loss=f"{step.loss:.4f}", acc=f"{step.accuracy:.3f}", refresh=False)
            yield step

    def validation(
        self, position: Position, epochs: int, val: Metrics | None, seconds: float
    ) -> None:
        if val:
            self.board.scalars(position.step, **val.as_dict("val"))
            self.board.confusion("val/confusion", val.confusion, position.step)
        log.info(
            "epoch %d/%d  step %d  %s  %.1fs",
            position.epoch,
            epochs,
            position.step,
            f"val loss {val.loss:.4f} acc {val.accuracy:.4f}" if val else "(no validation split)",
            seconds,
        )

    def test(self, step: int, test: Metrics, hparams: dict[str, Any], metrics: dict) -> None:
        """The final test of the run's model, and the hyper-parameters against its metrics."""
        self.board.scalars(step, **test.as_dict("test"))
        self.board.confusion("test/confusion", test.confusion, step)
        reported = {k: v for k, v in metrics.items() if k.startswith(("val_", "test_"))}
        self.board.hyperparameters(hparams, reported)
