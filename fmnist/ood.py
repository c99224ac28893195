"""A model-based "don't trust this" flag: how far a picture's features lie from the training set's.

The score is the Mahalanobis distance (Lee et al., 2018) of what the model's last layer sees
(`model.embed`: the pooled features) to the nearest class mean, under one covariance shared by
the classes: squared, in units of the training features' own spread. A garment the model has
learnt sits near its class's mean; a digit, a cat, a face or noise sits far from all ten, even
where the softmax is sure (softmax only compares the classes with each other).

`fit` measures the class means and the covariance on `FIT_IMAGES` of the run's training images
when the run ends, and sets the threshold at the `QUANTILE` of their distances; train.py stores the
result in best.pt (`ood` entry) and export.py carries it into the exported file. Chosen over the
energy score (Liu et al., 2020) and the maximum softmax probability on AUROC (docs/predict.md;
the rejected ones in docs/experiments.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from fmnist import data
from fmnist.engine import Compute
from fmnist.errors import UserError
from fmnist.loaders import split_train_val

FIT_IMAGES = 10000  # training images the statistics are measured on (1000 a class on average)
QUANTILE = 0.99  # the threshold: the distance that 99% of those training images stay within
RIDGE = 1e-6  # added to the covariance's diagonal, as a share of its mean variance: invertible
BATCH = 512
UNAVAILABLE = (
    "The model-based flag is unavailable: this model has no fitted statistics (trained or "
    "exported before they were added); retrain it to get them."
)


@dataclass
class Statistics:
    """What the flag needs: the class means of the features, the inverse of their shared
    covariance, and the threshold on the squared distance."""

    means: Tensor  # float32 (classes, features)
    precision: Tensor  # float32 (features, features): the shared covariance's inverse
    threshold: float  # a distance above this is flagged
    images: int  # training images measured

    def as_dict(self) -> dict[str, Any]:
        """As a checkpoint stores it."""
        return {
            "score": "mahalanobis",
            "means": self.means,
            "precision": self.precision,
            "threshold": self.threshold,
            "quantile": QUANTILE,
            "images": self.images,
        }

    def distances(self, features: Tensor) -> Tensor:
        """The squared Mahalanobis distance of each row of `features` (N, F) to the nearest
        class mean (N,)."""
        return nearest_mean_distance(features.float(), self.means, self.precision)


def rule(threshold: float | None) -> str:
    """The flag in one sentence, or why a model has none."""
    if threshold is None:
        return UNAVAILABLE
    return (
        "The model's own flag: a picture whose features lie further from every class than "
        f"{threshold:.0f} (squared Mahalanobis distance; {QUANTILE:.0%} of the training images "
        "are within it) is unlike anything it was trained on."
    )


def doubt(distance: float, threshold: float) -> str | None:
    """The flag's words for one picture, or None when its distance is within the threshold."""
    if distance <= threshold:
        return None
    return (
        f"unlike the training images to the model: feature distance {distance:.0f} > "
        f"{threshold:.0f} (Mahalanobis; {QUANTILE:.0%} of training images are within it)"
    )


def nearest_mean_distance(features: Tensor, means: Tensor, precision: Tensor) -> Tensor:
    """min over the classes' `means` of (x - m)ᵀ P (x - m) for each row x of `features`, as
    xᵀPx - 2 xᵀPm + mᵀPm for every class at once (also inside an exported model's graph)."""
    projected = features @ precision
    own = (projected * features).sum(1, keepdim=True)
    centres = ((means @ precision) * means).sum(1)
    return (own - 2 * (projected @ means.T) + centres).min(1).values.clamp(min=0)


def from_checkpoint(checkpoint: dict[str, Any]) -> Statistics | None:
    """The statistics a checkpoint holds; None for one trained before they existed."""
    stored = checkpoint.get("ood")
    if stored is None:
        return None
    try:
        means, precision = stored["means"], stored["precision"]
        threshold, images = float(stored["threshold"]), int(stored["images"])
    except (KeyError, TypeError, ValueError):
        raise UserError("the checkpoint's ood statistics are damaged: retrain it") from None
    if (
        not isinstance(means, Tensor)
        or not isinstance(precision, Tensor)
        or means.ndim != 2
        or precision.shape != (means.shape[1], means.shape[1])
    ):
        raise UserError("the checkpoint's ood statistics have the wrong shapes: retrain it")
    return Statistics(means.float(), precision.float(), threshold, images)


def features_of(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """`model.embed`, typed (nn.Module's __getattr__ types it as Tensor | Module)."""
    return cast(Callable[[Tensor], Tensor], model.embed)


@torch.no_grad()
def features(model: nn.Module, images: Tensor, compute: Compute) -> Tensor:
    """float32 features (N, F) on the CPU of normalised `images` (N, 1, 28, 28), in batches."""
    model.eval()
    embed = features_of(model)
    out = []
    for start in range(0, len(images), BATCH):
        with compute.autocast():
            batch = compute.images(images[start : start + BATCH].to(compute.device))
            out.append(embed(batch).float().cpu())
    return torch.cat(out)


def fit(
    model: nn.Module, images: Tensor, labels: Tensor, mean: float, std: float, compute: Compute
) -> Statistics:
    """Class means, shared covariance and threshold from uint8 `images` (N, 28, 28)."""
    x = data.normalise(images, mean, std).unsqueeze(1)
    found = features(model, x, compute).double()
    classes = int(labels.max().item()) + 1
    means = torch.stack([found[labels == c].mean(0) for c in range(classes)])
    centred = found - means[labels]
    covariance = centred.T @ centred / len(found)
    covariance += torch.eye(len(covariance), dtype=torch.float64) * (
        RIDGE * covariance.diagonal().mean()
    )
    precision = torch.linalg.inv(covariance)
    statistics = Statistics(means.float(), precision.float(), 0.0, len(found))
    distances = statistics.distances(found.float())
    statistics.threshold = round(torch.quantile(distances, QUANTILE).item(), 3)
    return statistics


def fit_run(model: nn.Module, config: dict[str, Any], compute: Compute) -> Statistics:
    """`fit` on `FIT_IMAGES` of a run's own training images (its `data` settings: root, split,
    subset), drawn with its seed, unaugmented, normalised as its checkpoints say."""
    settings = config["data"]
    images, labels = data.load_split("train", settings["root"])
    train_index, _ = split_train_val(config["seed"], settings["val_size"], settings["subset"])
    generator = torch.Generator().manual_seed(config["seed"])
    chosen = train_index[torch.randperm(len(train_index), generator=generator)[:FIT_IMAGES]]
    return fit(model, images[chosen], labels[chosen], data.MEAN, data.STD, compute)
