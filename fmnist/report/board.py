"""A run's TensorBoard events: one `SummaryWriter`, what fmnist writes to it, and its scalars read
back (`read_scalars`, for fmnist.app).

All TensorBoard data of a run goes into its run directory: one events file (the hyper-parameters
included: written through the same writer, not `add_hparams`, which would scatter an extra run
folder per call), and the embedding projector's files. Each method is one SummaryWriter call on
data fmnist already has; a disabled board (torchrun ranks > 0) writes nothing.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from fmnist.errors import UserError
from fmnist.files import cannot_write
from fmnist.report.figures import confusion_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class TensorBoard:
    """The run's one SummaryWriter (or, when disabled, nothing at all)."""

    def __init__(self, run_dir: Path, purge_step: int | None = None, enabled: bool = True) -> None:
        self.run_dir = run_dir
        self.writer = (
            SummaryWriter(log_dir=str(run_dir), purge_step=purge_step) if enabled else None
        )

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def scalars(self, step: int, **values: float) -> None:
        """`train_loss=0.5` is written as the tag `train/loss`."""
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(name.replace("_", "/", 1), value, step)

    def confusion(self, tag: str, matrix: Tensor, step: int) -> None:
        if self.writer is not None:
            self.writer.add_figure(tag, confusion_figure(matrix, f"{tag} (step {step})"), step)

    def figure(self, tag: str, figure: Figure, step: int, close: bool = True) -> None:
        """`close=False` leaves the figure open, to be saved as a file too."""
        if self.writer is not None:
            self.writer.add_figure(tag, figure, step, close=close)

    def image(self, tag: str, image: Tensor, step: int = 0) -> None:
        """A (3, H, W) or (1, H, W) image with values in [0, 1]."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step)

    def text(self, tag: str, markdown: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, markdown)

    def graph(self, model: nn.Module, example: Tensor) -> None:
        """The model's graph, traced on `example` in eval mode: no dropout draws from the RNG,
        no BatchNorm statistics change, so training goes on exactly as without it."""
        if self.writer is None:
            return
        was_training = model.training
        model.eval()
        try:
            with warnings.catch_warnings():  # add_graph traces with torch.jit, now deprecated
                warnings.simplefilter("ignore", FutureWarning)
                self.writer.add_graph(model, example)
        finally:
            model.train(was_training)

    def pr_curves(
        self, prefix: str, probabilities: Tensor, labels: Tensor, classes: list[str], step: int
    ) -> None:
        """One precision-recall curve per class: that class against all others."""
        if self.writer is None:
            return
        for k, name in enumerate(classes):
            tag = f"{prefix}/{name.replace('/', '-')}"
            self.writer.add_pr_curve(tag, labels == k, probabilities[:, k], step)

    def embedding(
        self, tag: str, features: Tensor, labels: list[str], images: Tensor, step: int
    ) -> None:
        """Points for the projector, labelled, each with its 28x28 thumbnail (values in [0, 1])."""
        if self.writer is not None:
            self.writer.add_embedding(
                features, metadata=labels, label_img=images, global_step=step, tag=tag
            )

    def histograms(self, model: nn.Module, step: int) -> None:
        """Every parameter's values, and its gradient from the last step."""
        if self.writer is None:
            return
        for name, parameter in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", parameter, step)
            if parameter.grad is not None:
                self.writer.add_histogram(f"gradients/{name}", parameter.grad, step)

    def hyperparameters_start(
        self, params: dict[str, Any], metric_tags: list[str], varied: list[str]
    ) -> None:
        """The run's row in the HPARAMS tab: its settings, and which logged scalar tags are its
        metrics (the plugin shows each tag's last value). Written once, when a run starts.

        `varied`: the settings its sweep varies. They are marked as differing between runs,
        which the tab shows as its first columns, ticked (it ticks the first five).
        """
        if self.writer is None:
            return
        experiment, start, _ = hparams(params, dict.fromkeys(metric_tags, 0.0))
        content = experiment.value[0].metadata.plugin_data
        data = HParamsPluginData.FromString(content.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in varied
        content.content = data.SerializeToString()
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, start):
            file_writer.add_summary(summary)

    def hyperparameters_end(self) -> None:
        """Mark the run's HPARAMS session as finished."""
        if self.writer is not None:
            _, _, end = hparams({}, {})
            self.writer._get_file_writer().add_summary(end)

    def close(self, failing: bool = False) -> None:
        """Flush and close. An events file that could not be written (its writer's thread found
        the disk full) is one line naming the fix, as a checkpoint is; `failing`: the run already
        stopped with its own error, which is the one to report (a full disk stops both)."""
        if self.writer is None:
            return
        try:
            self.writer.close()
        except OSError as e:
            if not failing:
                raise UserError(cannot_write(self.run_dir, e, "TensorBoard events in")) from None

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        self.close(failing=kind is not None)


def read_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one scalar tag, read back from every events file of the run directory
    (a resumed run's events after its checkpoint are dropped, as TensorBoard shows them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return []
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]
