"""The matplotlib figures fmnist draws: confusion matrices, image grids, probability bars, the loss
against q, a run's learning curve.

matplotlib is imported on first use (Agg, no screen), so commands that draw nothing never pay
for it. `save_figure` writes a PNG atomically and closes the figure.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fmnist.data import CLASSES
from fmnist.files import write_atomically

if TYPE_CHECKING:  # matplotlib is imported on first use
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def use_agg() -> None:
    """Select matplotlib's Agg backend: call it before each import of matplotlib.pyplot. A
    notebook's inline backend (it too draws without a screen, into the page) is kept."""
    import matplotlib

    if "matplotlib_inline.backend_inline" not in sys.modules:
        matplotlib.use("Agg")


def save_figure(fig: Figure, path: Path) -> None:
    try:
        write_atomically(path, lambda f: fig.savefig(f, format="png"), "figure")
    finally:
        use_agg()
        import matplotlib.pyplot as plt

        plt.close(fig)


def confusion_figure(
    matrix: Tensor, title: str, classes: list[str] | tuple[str, ...] = CLASSES
) -> Figure:
    """A 10x10 confusion matrix with its counts (rows: true class, columns: predicted)."""
    import numpy as np

    use_agg()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    counts = matrix.cpu().numpy()
    ax.imshow(counts, cmap="Blues")
    ax.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    threshold = counts.max() / 2
    for (i, j), count in np.ndenumerate(counts):
        ax.text(
            j,
            i,
            str(int(count)),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if count > threshold else "black",
        )
    fig.tight_layout()
    return fig


def evaluation_confusion(r: dict[str, Any]) -> Figure:
    """The confusion matrix of an evaluation (eval.json's dict), with the checkpoint's classes."""
    title = f"{r['model']} on {r['split']}: accuracy {r['accuracy']:.4f}"
    return confusion_figure(torch.tensor(r["confusion"]), title, r["classes"])


def wrong_grid(r: dict[str, Any], images: Tensor) -> Figure:
    """A grid of the most confidently wrong images: index, true label, predicted label and q."""
    wrong = r["confidently_wrong"]
    columns = min(4, len(wrong))
    rows = math.ceil(len(wrong) / columns)
    use_agg()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        rows, columns, figsize=(2.3 * columns, 2.6 * rows + 0.5), dpi=100, squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, w in zip(axes.flat, wrong, strict=False):
        ax.imshow(images[w["position"]].numpy(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(
            f"#{w['index']}  true: {w['true_name']}\n"
            f"pred: {w['predicted_name']} ({w['confidence']:.0%})",
            fontsize=8,
        )
    fig.suptitle(f"Most confidently wrong {r['split']} images ({r['model']})", fontsize=10)
    fig.tight_layout()
    return fig


def probability_bars(
    ax: Axes, q: list[float], classes: list[str], target: int | None, decimals: int
) -> None:
    """The 10 probabilities as bars, the true class (if known) highlighted, 1/10 dotted."""
    colors = ["tab:orange" if c == target else "tab:blue" for c in range(len(q))]
    bars = ax.bar(range(len(q)), q, color=colors)
    ax.bar_label(bars, labels=[f"{v:.{decimals}f}" for v in q], fontsize=7)
    ax.axhline(1 / len(q), color="gray", linestyle=":", linewidth=1, label="1/10 (untrained)")
    if target is not None:
        ax.bar(0, 0, color="tab:orange", label="true class")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(range(len(q)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, max(max(q) * 1.2, 0.15))
    ax.set_ylabel("q")


def image_and_probabilities(
    image: Tensor,
    image_title: str,
    q: list[float],
    classes: list[str],
    target: int | None,
    title: str,
    decimals: int = 4,
) -> Figure:
    """One image (uint8, 28x28) beside the probabilities q a model gives it."""
    use_agg()
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(
        1, 2, figsize=(9, 3.6), dpi=100, gridspec_kw={"width_ratios": [1, 2]}
    )
    left.imshow(image.numpy(), cmap="gray", vmin=0, vmax=255)
    left.set_title(image_title, fontsize=10)
    left.axis("off")
    probability_bars(right, q, classes, target, decimals)
    right.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


FIGURE_PICTURES = 20  # predictions.png shows at most this many pictures (all are in the json)
STEP_COLUMNS = 7  # the thumbnail and up to 6 preparation steps per row (the last is the input)


def predictions_figure(
    rows: list[tuple[str, Any, list[tuple[str, Any]], list[float], list[str]]],
    classes: list[str],
    target: int | None,
) -> Figure:
    """A row per picture: its thumbnail, each preparation step that changed it (grayscale,
    evened, inverted, mask, crop, ...: fmnist.prepare's `Prepared.steps`, the last being the 28x28
    input the model saw) and the 10 probabilities (the target class, if given, highlighted),
    with the reasons not to trust it on a line of their own beneath. `rows`: (name, thumbnail (a
    Pillow image), steps [(name, uint8 array)], q, doubts)."""
    import textwrap

    shown = rows[:FIGURE_PICTURES]
    use_agg()
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(17, 2.9 * len(shown) + 0.6), dpi=70)
    outer = fig.add_gridspec(len(shown), 1, hspace=0.55)
    for row, (name, thumbnail, steps, q, doubts) in enumerate(shown):
        inner = outer[row].subgridspec(
            2, STEP_COLUMNS + 1, height_ratios=[5, 1], width_ratios=[1] * STEP_COLUMNS + [4]
        )
        pictures = [(name, thumbnail), *steps[-(STEP_COLUMNS - 1) :]]
        for column, (caption, picture) in enumerate(pictures):
            ax = fig.add_subplot(inner[0, column])
            last = column == len(pictures) - 1
            if getattr(picture, "ndim", 3) == 2:
                ax.imshow(picture, cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(picture)
            ax.set_title("input (what the model saw)" if last else caption, fontsize=8)
            ax.axis("off")
        bars = fig.add_subplot(inner[0, STEP_COLUMNS])
        probability_bars(bars, q, classes, target, 2)
        top = max(range(len(q)), key=q.__getitem__)
        bars.set_title(f"{classes[top]} {q[top]:.3f}", fontsize=9)
        note = fig.add_subplot(inner[1, :])
        note.axis("off")
        if doubts:
            wrapped = textwrap.fill("! " + "; ".join(doubts), 190)
            note.text(0, 0.2, wrapped, fontsize=8, color="tab:red", va="center", ha="left")
    more = f" (the first {len(shown)} of {len(rows)})" if len(rows) > len(shown) else ""
    fig.suptitle(f"Predictions{more}: each picture, the steps that prepared it, the model's q")
    return fig


def validation_predictions(
    images: Tensor,
    labels: Tensor,
    q: Tensor,
    classes: list[str],
    step: int,
    columns: int = 8,
) -> Figure:
    """Fixed validation images, each titled with the predicted class and its probability and
    the true class; wrong predictions in red. Drawn at every validation pass, it shows the model
    learning."""
    rows = math.ceil(len(images) / columns)
    use_agg()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        rows, columns, figsize=(1.6 * columns, 1.9 * rows + 0.4), dpi=80, squeeze=False
    )
    confidence, predicted = q.max(1)
    for ax in axes.flat:
        ax.axis("off")
    for k, ax in enumerate(axes.flat[: len(images)]):
        right = int(predicted[k]) == int(labels[k])
        ax.imshow(images[k, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(
            f"{classes[int(predicted[k])]} {confidence[k]:.0%}\n(true: {classes[int(labels[k])]})",
            fontsize=7,
            color="green" if right else "red",
        )
    correct = int((predicted == labels).sum())
    fig.suptitle(f"step {step}: {correct} of {len(images)} right", fontsize=9)
    fig.tight_layout()
    return fig


def loss_against_q(points: list[tuple[str, float]], num_classes: int) -> Figure:
    """The loss of one sample, -log q[true class], against q[true class]: 0 for a sure right
    answer, ln C for an unsure one (q = 1/C), without bound for a sure wrong one. `points`:
    (name, q[true class]) of the samples to mark."""
    import numpy as np

    use_agg()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    q = np.linspace(0.005, 1, 400)
    ax.plot(q, -np.log(q), color="tab:blue")
    uniform = 1 / num_classes
    ax.axvline(uniform, color="gray", linestyle=":", linewidth=1)
    ax.annotate(
        f"q = 1/{num_classes} (unsure): ln {num_classes} = {math.log(num_classes):.4f}",
        (uniform, 5.0),
        xytext=(6, 0),
        textcoords="offset points",
        fontsize=8,
        color="gray",
    )
    for name, qy in points:
        loss = -math.log(qy) if qy > 0 else math.inf
        shown = min(loss, -math.log(0.005))  # a q of 0 is drawn at the edge
        ax.plot([qy], [shown], "o", color="tab:orange")
        ax.annotate(
            f"{name}: {loss:.4f}",
            (qy, shown),
            xytext=(6, 4),
            textcoords="offset points",
            fontsize=8,
        )
    ax.set(title="loss = -log q[true class]", xlabel="q[true class]", ylabel="loss", ylim=(0, 5.5))
    ax.set_xlim(0, 1.02)
    fig.tight_layout()
    return fig
