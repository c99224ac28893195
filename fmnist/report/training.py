"""What a training run shows as it goes: TensorBoard, tqdm bars and train.log lines.

`TrainingReport` wraps the loop's iterators (epochs, steps) to draw bars and log every step's
loss, accuracy and learning rate, and takes what the run found at its start, at each epoch's
end and at its end. What PyTorch's Fashion-MNIST TensorBoard tutorial shows is all here, written
only at those moments, never inside the step loop: the resolved config and the model's graph and
a training batch once at the start; each validation pass's metrics, confusion matrix and
predictions on a fixed set of validation images; and at the end the test metrics, one
precision-recall curve per class and the embedding projector. The fixed validation images'
predictions are also kept as numbers, from the untrained model on (`val_predictions.json`, see
fmnist.report.val_predictions). Under torchrun only rank 0 reports; the others stay silent.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from fmnist import data
from fmnist.config import option_name
from fmnist.engine import Metrics, Position, Step, Training, embed, predict
from fmnist.errors import UserError
from fmnist.losses import softmax
from fmnist.report import val_predictions
from fmnist.report.board import TensorBoard
from fmnist.report.figures import validation_predictions

log = logging.getLogger("fmnist")

SHOWN_PREDICTIONS = 16  # the fixed validation images whose predictions are drawn each epoch
EMBEDDED = 2000  # test images in the projector
METRICS = (
    "val/acc",
    "val/loss",
    "test/acc",
    "test/loss",
    "train/seconds",
    "train/images_per_second",
)


def progress(iterable: Iterable[object], enabled: bool, **kwargs: Any) -> tqdm:
    """A tqdm bar, silent when disabled or when stderr is not a terminal (logs, CI, pipes)."""
    return tqdm(
        iterable, disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, **kwargs
    )


def hparams(config: dict[str, Any], varied: Sequence[str] = ()) -> dict[str, Any]:
    """The settings that tell runs apart, for the HPARAMS tab: not paths, `_target_` strings or
    display switches; first those in `varied` (what a sweep varies). Values are numbers,
    strings or booleans (lists and None as text)."""
    params: dict[str, Any] = {"seed": config["seed"]}
    for group in ("loss", "model", "optimizer", "scheduler"):
        params[group] = option_name(group, config[group])
        for key, value in config[group].items():
            if not key.startswith("_"):
                params[f"{group}.{key}"] = value
    data_cfg, trainer = config["data"], config["trainer"]
    for key in ("batch_size", "crop_padding", "flip", "val_size", "subset"):
        params[f"data.{key}"] = data_cfg[key]
    for key in ("max_epochs", "precision", "tta"):
        params[f"trainer.{key}"] = trainer[key]
    first = [key for key in varied if key in params]
    return {
        key: value if isinstance(value, int | float | str | bool) else str(value)
        for key, value in sorted(params.items(), key=lambda item: item[0] not in first)
    }


def metric_tags(config: dict[str, Any]) -> list[str]:
    """The scalar tags a run logs that the HPARAMS tab shows as its metrics."""
    data_cfg = config["data"]
    return [
        tag
        for tag in METRICS
        if not (tag.startswith("val/") and not data_cfg["val_size"])
        and not (tag.startswith("test/") and not data_cfg.get("test", True))
    ]


def pixels(images: Tensor) -> Tensor:
    """Normalised images back to [0, 1] pixels, for display."""
    return (images.float().cpu() * data.STD + data.MEAN).clamp(0, 1)


class TrainingReport:
    """A run's TensorBoard events, bars and log lines; `enabled=False` (ranks > 0) is silent.

    `resumed_at`: the step a resumed run continues after. TensorBoard drops the events written
    after it by the interrupted process, which no checkpoint holds; what a run writes once at
    its start is not written again.
    """

    def __init__(
        self,
        run_dir: Path,
        settings: Any,
        enabled: bool,
        resumed_at: int | None = None,
    ) -> None:
        purge_step = None if resumed_at is None else resumed_at + 1
        self.board = TensorBoard(run_dir, purge_step, enabled)
        self.run_dir = run_dir
        self.show_bars = settings.progress and enabled
        self.histograms_every = settings.histograms_every
        self.tta = settings.tta
        self.resumed = resumed_at is not None
        self.shown: tuple[Tensor, Tensor] | None = None  # the fixed validation images
        self.followed: val_predictions.ValPredictions | None = None  # their q, epoch by epoch
        if not enabled:
            log.setLevel(logging.WARNING)

    def __enter__(self) -> TrainingReport:
        self._redirect = logging_redirect_tqdm()  # log lines print above the bars
        self._redirect.__enter__()
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        self._redirect.__exit__(kind, *rest)
        self.board.close(failing=kind is not None)

    def start(
        self,
        training: Training,
        config: dict[str, Any],
        resumed_from: Path | None,
        position: Position,
        varied: list[str],
    ) -> None:
        """What a run shows once, at its start. `varied`: the settings its sweep varies, which
        the HPARAMS tab shows first."""
        model, compute, splits = training.model, training.compute, training.data
        if resumed_from:
            at = (position.step, position.epoch + 1)
            log.info("Resuming %s at step %d (epoch %d)", resumed_from, *at)
        log.info("Data: %s; %d training batches per epoch", splits.origin, len(splits.train))
        log.info(
            "Model: %s, %d parameters, on %s, %s",
            type(model).__name__,
            sum(p.numel() for p in model.parameters()),
            compute.device,
            "bf16 autocast" if compute.bf16 else "float32",
        )
        if splits.val is not None:
            images, labels = next(splits.val.epoch())
            images, labels = images[:SHOWN_PREDICTIONS], labels[:SHOWN_PREDICTIONS].cpu()
            self.shown = (pixels(images), labels)
            if self.board.enabled:
                self.follow(training, images, labels, position)
        if self.resumed or not self.board.enabled:
            return
        yaml = OmegaConf.to_yaml(config)
        self.board.text("config", "\n".join("    " + line for line in yaml.splitlines()))
        params = hparams(config, varied)
        self.board.hyperparameters_start(
            params, metric_tags(config), [k for k in varied if k in params]
        )
        images, _ = next(splits.train.epoch(0))  # augmented, as the model sees them
        self.board.image("train/batch", grid(pixels(images[:64])))
        self.board.graph(model, compute.images(images[:1]))

    def follow(
        self, training: Training, images: Tensor, labels: Tensor, position: Position
    ) -> None:
        """Start val_predictions.json with the untrained model's predictions of the fixed
        validation images (epoch 0), or, when resuming, keep the epochs the checkpoint had
        finished."""
        if self.resumed:
            try:
                self.followed = val_predictions.load(self.run_dir)
            except UserError as e:
                log.warning("%s; its earlier epochs are lost", e)
            if self.followed is not None:
                self.followed.keep_until(position.epoch)
                return
        self.followed = val_predictions.from_pixels(pixels(images), labels, list(data.CLASSES))
        if self.resumed:  # a run from before the file existed: its later epochs only
            return
        # One forward pass of the plain model in eval mode, as validation runs it: it draws no
        # random numbers, so training goes on exactly as without it.
        model = training.evaluated_module
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = predict(model, images, training.compute, self.tta)
        model.train(was_training)
        self.followed.add(0, position.step, logits)
        self.followed.save(self.run_dir)

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
        self,
        training: Training,
        position: Position,
        epochs: int,
        val: Metrics | None,
        seconds: float,
    ) -> None:
        step = position.step
        if val:
            self.board.scalars(step, **val.as_dict("val"))
            self.board.confusion("val/confusion", val.confusion, step)
            if self.shown is not None and self.board.enabled:
                images, labels = self.shown
                q = softmax(val.logits[: len(labels)].double(), dim=1)
                figure = validation_predictions(images, labels, q, list(data.CLASSES), step)
                self.board.figure("val/predictions", figure, step)
            if self.followed is not None:
                self.followed.add(position.epoch, step, val.logits[: len(self.followed.labels)])
                self.followed.save(self.run_dir)
        if self.histograms_every and position.epoch % self.histograms_every == 0:
            self.board.histograms(training.model, step)
        log.info(
            "epoch %d/%d  step %d  %s  %.1fs",
            position.epoch,
            epochs,
            step,
            f"val loss {val.loss:.4f} acc {val.accuracy:.4f}" if val else "(no validation split)",
            seconds,
        )

    def end(
        self, training: Training, step: int, test: Metrics | None, metrics: dict[str, Any]
    ) -> None:
        """The run's timings and, when it was tested (`data.test`), the test of its model, with
        its curves and embedding."""
        self.board.scalars(
            step,
            train_seconds=metrics["train_seconds"],
            train_images_per_second=metrics["train_images_per_second"],
        )
        if test is not None:
            self.board.scalars(step, **test.as_dict("test"))
            self.board.confusion("test/confusion", test.confusion, step)
        if not self.board.enabled:
            return
        if test is not None:
            classes = list(data.CLASSES)
            probabilities = softmax(test.logits.double(), dim=1).float()
            self.board.pr_curves("test/pr", probabilities, test.labels, classes, step)
            features, images, labels = embed(
                training.evaluated_module, training.data.test, training.compute, EMBEDDED
            )
            names = [classes[k] for k in labels.tolist()]
            self.board.embedding("test_features", features, names, pixels(images), step)
        self.board.hyperparameters_end()


def grid(images: Tensor, columns: int = 8) -> Tensor:
    """(N, 1, 28, 28) images in [0, 1] as one image (torchvision's make_grid)."""
    from torchvision.utils import make_grid

    return make_grid(images, nrow=columns, padding=2, pad_value=1.0)
