"""The pixel rule that flags a prediction as unreliable (`DOUBT_RULE`): an unsure answer, a
preparation that found no object, or prepared pixels unlike the training images'. fmnist.ood adds
the model's own flag. A flag never blocks a prediction.
"""

from __future__ import annotations

from torch import Tensor

from fmnist.i18n import Text

# Per-image mean and standard deviation of the pixels (scaled to [0, 1]) of the 60000 training
# images: their 0.5th and 99.5th percentiles, measured once with data.load_split("train") and
# torch.quantile over images.float().div(255).mean((1, 2)) and .std((1, 2), unbiased=False).
TYPICAL_MEAN = (0.0567, 0.6033)


TYPICAL_STD = (0.1222, 0.4497)


UNSURE_BELOW = 0.5  # a top probability under this: the model is unsure


DOUBT_RULE = (
    f"A prediction is flagged when its top probability is under {UNSURE_BELOW}, when no object "
    "could be told from the background, or when the prepared picture's pixel mean (in [0, 1]) is "
    f"outside {TYPICAL_MEAN[0]}..{TYPICAL_MEAN[1]} or their standard deviation outside "
    f"{TYPICAL_STD[0]}..{TYPICAL_STD[1]}, the range of 99% of the training images. The flag "
    "never blocks the prediction."
)


def doubts(pixels: Tensor, top_probability: float, failed: str | None = None) -> list[str]:
    """Why a prediction may not be trusted, in words (empty: no reason found); `DOUBT_RULE`.

    An unsure answer (top probability under `UNSURE_BELOW`), a preparation that found no object,
    or a prepared picture whose mean or standard deviation of pixels lies outside the range of 99%
    of the training images (`TYPICAL_MEAN`, `TYPICAL_STD`): a picture that bright, that dark or
    that flat is unlike anything the model was trained on, whatever probability it gives. Never
    blocks a prediction.
    """
    found: list[str] = []
    if top_probability < UNSURE_BELOW:
        found.append(Text("doubt.unsure", p=f"{top_probability:.2f}", limit=UNSURE_BELOW))
    if failed:
        found.append(failed)
    scaled = pixels.float() / 255
    for name, value, (low, high) in (
        ("mean", scaled.mean().item(), TYPICAL_MEAN),
        ("std", scaled.std(unbiased=False).item(), TYPICAL_STD),
    ):
        if not low <= value <= high:
            found.append(Text("doubt.pixels", name=name, value=f"{value:.3f}", low=low, high=high))
    return found
