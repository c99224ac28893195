"""The "Your picture" tab: a picture read, prepared and predicted as `scripts/predict.py` does it,
and, against a chosen true class, its cross-entropy worked out as `predict.py target=` does.

A picture comes as an uploaded file (read by fmnist.predict.read_picture: any format Pillow
reads, decompression bombs refused), a webcam shot or a drawing (decoded by the browser and
Gradio), or a test image by its index. fmnist.prepare makes it Fashion-MNIST-like, the
checkpoint's model predicts it (fmnist.predict), and fmnist.snapshot works out the loss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor

from fmnist import data
from fmnist.errors import UserError
from fmnist.predict import Prediction, Predictor, picture_of, predict_pictures, read_picture
from fmnist.prepare import grayscale, image_of
from fmnist.report import figures
from fmnist.script_configs import PrepareConfig
from fmnist.snapshot import report

SHOWN = 280  # pixels: a 28x28 input is shown 10 times as large, each pixel a square
THUMBNAIL = 280  # pixels: the longest edge of the picture as given, in the steps shown


@dataclass
class Result:
    """A picture's prediction and what it is shown with."""

    prediction: Prediction
    classes: list[str]
    source: str  # the picture, in words

    @property
    def top(self) -> dict[str, float]:
        """Every class and its probability, for a label showing the top ones."""
        return dict(zip(self.classes, self.prediction.q, strict=True))

    def steps(self) -> list[tuple[Image.Image, str]]:
        """The picture as given, then the picture after each step of preparation that changed it
        (`Prepared.steps`, in order, as predictions.png shows them), captioned."""
        shown = [(self.prediction.picture.thumbnail, f"{self.source}, as given")]
        for number, (name, pixels) in enumerate(self.prediction.picture.prepared.steps, start=1):
            shown.append((displayed(pixels), f"{number}. {STEP_CAPTIONS.get(name, name)}"))
        return shown

    def details(self) -> str:
        """What preparation found (its numbers; its pictures are the steps), and the doubts, as
        Markdown."""
        lines = [
            f"- `{name}`: {value}"
            for name, value in _fields(self.prediction.picture.prepared)
            if name not in ("pixels", "steps")
        ]
        doubts = self.prediction.doubts
        lines.append(
            "- doubts: " + ("; ".join(doubts) if doubts else "none (the flag is not raised)")
        )
        return "\n".join(lines)

    def lesson(self) -> str:
        """The loss against the chosen true class, term by term (fmnist.snapshot.report)."""
        if self.prediction.lesson is None:
            return "Choose the true class to see p and the loss worked out term by term."
        return report(self.prediction.lesson)

    def figure(self) -> Any:
        """The input the model saw beside its q (a matplotlib Figure)."""
        p = self.prediction
        top = p.top[0]
        target = p.lesson.target if p.lesson else None
        title = f"top class: {self.classes[top]} (q = {p.q[top]:.4f})"
        return figures.image_and_probabilities(
            p.picture.prepared.pixels, "what the model sees", p.q, self.classes, target, title
        )

    def as_dict(self) -> dict[str, Any]:
        """What predictions.json says of one picture."""
        return self.prediction.as_dict(self.classes)


class Pictures:
    """Predicts pictures with one model; reads the test images once, when first asked."""

    def __init__(self, predictor: Predictor, data_root: str | None) -> None:
        self.predictor, self.data_root = predictor, data_root
        self._test: tuple[Tensor, Tensor] | None = None

    def file(self, path: str, settings: PrepareConfig, target: int | None) -> Result:
        """An uploaded file, by its path in Gradio's upload folder; named by its file name."""
        where = Path(path)
        try:
            picture = read_picture(where)
        except UserError as e:  # the upload folder's path means nothing to the user
            raise UserError(str(e).replace(str(where), where.name)) from None
        return self.predict(picture, where.name, settings, target)

    def image(
        self, image: Image.Image | None, what: str, settings: PrepareConfig, target: int | None
    ) -> Result:
        """A webcam shot or a drawing (already decoded); none, or one flat colour (an untouched
        canvas), is a `UserError`."""
        if image is None or flat(grayscale(image)):  # a transparent canvas is shown on white
            raise UserError(EMPTY[what])
        return self.predict(image, what, settings, target)

    def test_image(
        self, index: int, settings: PrepareConfig, target: int | None = None
    ) -> tuple[Result, int]:
        """Test image `index`, predicted against `target` (default: its own class); and its
        class."""
        images, labels = self.test_split()
        if not 0 <= index < len(labels):
            raise UserError(
                f"test image {index} does not exist: the test split has {len(labels)} images "
                f"(0..{len(labels) - 1})"
            )
        label = int(labels[index])
        picture = image_of(images[index])
        chosen = label if target is None else target
        return self.predict(picture, f"test image #{index}", settings, chosen), label

    def test_split(self) -> tuple[Tensor, Tensor]:
        if self._test is None:
            self._test = data.load_split("test", self.data_root)
        return self._test

    def predict(
        self, image: Image.Image, source: str, settings: PrepareConfig, target: int | None
    ) -> Result:
        picture = picture_of(image, Path(source), settings, THUMBNAIL)
        (prediction,) = predict_pictures(self.predictor, [picture], target)
        return Result(prediction, self.predictor.classes, source)


EMPTY = {
    "drawing": "the drawing is empty: draw a piece of clothing first",
    "webcam shot": "there is no webcam shot (or it is one flat colour): take one first",
}


def flat(pixels: Tensor) -> bool:
    """One grey level everywhere: nothing drawn, nothing seen."""
    return bool((pixels == pixels.flatten()[0]).all())


STEP_CAPTIONS = {  # fmnist.prepare's step names, as the page captions them
    "grayscale": "grayscale",
    "evened": "uneven light evened",
    "inverted": "inverted: each pixel's distance from the background",
    "contrast": "each pixel's distance from the background",
    "mask": "the object found (mask)",
    "crop": "cropped to the object",
    "turned and cropped": "turned upright and cropped",
    "input": "what the model sees (28x28)",
}


def displayed(pixels: NDArray[np.uint8]) -> Image.Image:
    """A step's uint8 (H, W) or (H, W, 3) picture `SHOWN` pixels on its longest side: a small one
    enlarged with each pixel a square (no smoothing), a large one shrunk."""
    image = Image.fromarray(pixels)
    scale = SHOWN / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    return image.resize(size, resample)


def _fields(value: Any) -> list[tuple[str, Any]]:
    return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
