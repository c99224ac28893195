"""A model-based "don't trust this" flag: the energy score (Liu et al., 2020) of a prediction.

The energy of a picture is -log(sum(exp(logits))), the negative log of softmax's denominator:
low where the model's logits are large for some class (it has seen such pictures), high where
all ten are small. Unlike the top probability it does not only compare the classes with each
other, so a picture that is nothing the model knows stands out even when one class wins. It
needs nothing but the logits, so an exported ONNX or TorchScript model gives it too.

`fit` measures the energies of `FIT_IMAGES` of the run's training images when the run ends and
sets the threshold at their `QUANTILE`; train.py stores it in best.pt (`ood` entry) and
export.py carries it into the exported file's metadata. Chosen over the Mahalanobis distance of
the features (Lee et al., 2018) and the maximum softmax probability on AUROC against offline
pictures that are not clothing (docs/predict.md; the rejected ones in docs/experiments.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fmnist import data, engine
from fmnist.engine import Compute
from fmnist.errors import UserError
from fmnist.i18n import Text
from fmnist.loaders import split_train_val

FIT_IMAGES = 10000  # training images the threshold is measured on (1000 a class on average)
QUANTILE = 0.975  # the threshold: the energy that 97.5% of those training images stay below;
# on experiment=fast's model it flags 2.8% of the test images (0.95 flagged 5.6%)
BATCH = 512
UNAVAILABLE = "The model-based flag is unavailable: this model has no fitted threshold"


@dataclass
class Threshold:
    """The flag's threshold on the energy, and how it was set."""

    value: float  # an energy above this is flagged
    images: int  # training images measured

    def as_dict(self) -> dict[str, Any]:
        """As a checkpoint stores it."""
        return {
            "score": "energy",
            "threshold": self.value,
            "quantile": QUANTILE,
            "images": self.images,
        }


def energy(logits: Tensor) -> Tensor:
    """-logsumexp(logits) per row (N,): float64 for the sums' sake."""
    return -torch.logsumexp(logits.double(), dim=1)


def from_checkpoint(checkpoint: dict[str, Any]) -> Threshold | None:
    """The threshold a checkpoint holds; None for one trained before it existed."""
    stored = checkpoint.get("ood")
    if stored is None:
        return None
    try:
        return Threshold(float(stored["threshold"]), int(stored["images"]))
    except (KeyError, TypeError, ValueError):
        raise UserError("the checkpoint's ood entry is damaged: retrain it") from None


def rule(threshold: float | None, checkpoint: str | None = None) -> str:
    """The flag in one sentence, or why a model has none: a run fits it for its best.pt alone
    (the weights it tested), once it finishes; a model trained before the flag existed has
    none at all. `checkpoint`: the model's checkpoint file, if it is one."""
    if threshold is not None:
        return (
            f"The model's own flag: a picture whose energy (-logsumexp of the logits) is above "
            f"{threshold:.2f}, where {QUANTILE:.1%} of the training images stay, is unlike "
            "anything it was trained on."
        )
    path = Path(checkpoint) if checkpoint else None
    if path is not None and path.name == "last.pt":
        run_dir = path.parent.parent
        if (path.parent / "best.pt").is_file() and (run_dir / "metrics.json").is_file():
            return (
                f"{UNAVAILABLE} (a run fits it for its best.pt, the weights it tested, not for "
                f"last.pt): give ckpt_path={run_dir} to use best.pt with its flag."
            )
        return f"{UNAVAILABLE} yet: the run fits it when it finishes (trainer.resume=auto)."
    return f"{UNAVAILABLE} (trained or exported before it was added): retrain it to get one."


def doubt(score: float, threshold: float) -> str | None:
    """The flag's words for one picture, or None when its energy is within the threshold."""
    if score <= threshold:
        return None
    return Text(
        "doubt.energy", score=f"{score:.2f}", threshold=f"{threshold:.2f}", share=f"{QUANTILE:.1%}"
    )


@torch.no_grad()
def fit(
    model: nn.Module, images: Tensor, mean: float, std: float, compute: Compute, tta: str
) -> Threshold:
    """The `QUANTILE` of the energies of uint8 `images` (N, 28, 28), predicted as evaluate and
    predict do (the run's precision and test-time augmentation)."""
    model.eval()
    x = data.normalise(images, mean, std).unsqueeze(1)
    logits = torch.cat(
        [
            engine.predict(model, x[start : start + BATCH].to(compute.device), compute, tta).cpu()
            for start in range(0, len(x), BATCH)
        ]
    )
    return Threshold(round(torch.quantile(energy(logits), QUANTILE).item(), 4), len(images))


def fit_run(model: nn.Module, config: dict[str, Any], compute: Compute) -> Threshold:
    """`fit` on `FIT_IMAGES` of a run's own training images (its `data` settings: root, split,
    subset), drawn with its seed, unaugmented, normalised as its checkpoints say."""
    settings = config["data"]
    images, _ = data.load_split("train", settings["root"])
    train_index, _ = split_train_val(config["seed"], settings["val_size"], settings["subset"])
    generator = torch.Generator().manual_seed(config["seed"])
    chosen = train_index[torch.randperm(len(train_index), generator=generator)[:FIT_IMAGES]]
    tta = config["trainer"]["tta"]
    return fit(model, images[chosen], data.MEAN, data.STD, compute, tta)
