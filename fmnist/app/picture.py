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
import pandas as pd
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor

from fmnist import data
from fmnist.errors import UserError
from fmnist.i18n import Text, class_name, in_language, say
from fmnist.predict import Prediction, Predictor, picture_of, predict_pictures, read_picture
from fmnist.prepare import grayscale, image_of
from fmnist.script_configs import PrepareConfig
from fmnist.snapshot import report

KINDS = ("top", "true", "both", "other")  # what a class's bar is (picture.bars.<kind>)
SHOWN = 192  # pixels: the longest edge of a step's picture at most (the browser enlarges a
# smaller one, a 28x28 input, each pixel a square: `picture_tab.CSS`)
THUMBNAIL = 192  # pixels: the longest edge of the picture as given, in the steps shown


@dataclass
class Result:
    """A picture's prediction and what it is shown with, in either language (`lang`: en, zh)."""

    prediction: Prediction
    classes: list[str]
    source: str  # the picture, in words (a `Text` when it is not a file's name)

    def top(self, lang: str = "en") -> dict[str, float]:
        """Every class and its probability, for a label showing the top ones."""
        names = [class_name(c, self.classes, lang) for c in range(len(self.classes))]
        return dict(zip(names, self.prediction.q, strict=True))

    def steps(self, lang: str = "en") -> list[tuple[Image.Image, str]]:
        """The picture as given, then the picture after each step of preparation that changed it
        (`Prepared.steps`, in order, as predictions.png shows them), captioned."""
        shown = [
            (self.prediction.picture.thumbnail, say(lang, "picture.given", source=self.source))
        ]
        for number, (name, pixels) in enumerate(self.prediction.picture.prepared.steps, start=1):
            shown.append((displayed(pixels), f"{number}. {say(lang, f'picture.step.{name}')}"))
        return shown

    def details(self, lang: str = "en") -> str:
        """What preparation found (its numbers; its pictures are the steps), and the doubts, as
        Markdown."""
        lines = [
            f"- `{name}`: {in_language(value, lang)}"
            for name, value in _fields(self.prediction.picture.prepared)
            if name not in ("pixels", "steps")
        ]
        doubts = [in_language(doubt, lang) for doubt in self.prediction.doubts]
        shown = "; ".join(doubts) if doubts else say(lang, "picture.no_doubts")
        lines.append(say(lang, "picture.doubts", doubts=shown))
        return "\n".join(lines)

    def lesson(self, lang: str = "en") -> str:
        """The loss against the chosen true class, term by term (fmnist.snapshot.report)."""
        if self.prediction.lesson is None:
            return say(lang, "picture.lesson_hint")
        named = dataclasses.replace(self.prediction.lesson, picture=in_language(self.source, lang))
        return report(named, lang)

    def bars(self, lang: str = "en") -> pd.DataFrame:
        """q per class, for a bar plot drawn in the browser: each bar says whether its class is
        the top one, the true one (when chosen), both, or another. Every kind is in the data,
        those without a bar as a bar of height 0: the browser's plot fixes its colours to the
        kinds of the first data it draws, and would not draw a kind that came later."""
        p = self.prediction
        target = p.lesson.target if p.lesson else None

        def kind(c: int) -> str:
            top, true = c == p.top[0], c == target
            return "both" if top and true else "top" if top else "true" if true else "other"

        names = list(self.top(lang))
        kinds = [kind(c) for c in range(len(names))]
        absent = [k for k in KINDS if k not in kinds]
        return pd.DataFrame(
            {
                "class": names + [names[0]] * len(absent),
                "q": p.q + [0.0] * len(absent),
                "kind": [say(lang, f"picture.bars.{k}") for k in kinds + absent],
            }
        )

    def as_dict(self) -> dict[str, Any]:
        """What predictions.json says of one picture (in English whatever the page's language)."""
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
            problem = e.args[0]
            if isinstance(problem, Text):
                raise UserError(
                    Text(problem.key, **{**problem.values, "path": where.name})
                ) from None
            raise UserError(str(e).replace(str(where), where.name)) from None
        return self.predict(picture, where.name, settings, target)

    def image(
        self, image: Image.Image | None, what: str, settings: PrepareConfig, target: int | None
    ) -> Result:
        """A webcam shot or a drawing (`what`: webcam or drawing; already decoded); none, or one
        flat colour (an untouched canvas), is a `UserError`."""
        if image is None or flat(grayscale(image)):  # a transparent canvas is shown on white
            raise UserError(Text(EMPTY[what]))
        return self.predict(image, Text(f"picture.source.{what}"), settings, target)

    def test_image(
        self, index: int, settings: PrepareConfig, target: int | None = None
    ) -> tuple[Result, int]:
        """Test image `index`, predicted against `target` (default: its own class); and its
        class."""
        images, labels = self.test_split()
        if not 0 <= index < len(labels):
            count = len(labels)
            raise UserError(Text("picture.error.index", index=index, count=count, last=count - 1))
        label = int(labels[index])
        picture = image_of(images[index])
        chosen = label if target is None else target
        source = Text("picture.source.test", index=index)
        return self.predict(picture, source, settings, chosen), label

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


EMPTY = {"drawing": "picture.error.empty_drawing", "webcam": "picture.error.no_shot"}


def flat(pixels: Tensor) -> bool:
    """One grey level everywhere: nothing drawn, nothing seen."""
    return bool((pixels == pixels.flatten()[0]).all())


def displayed(pixels: NDArray[np.uint8]) -> Image.Image:
    """A step's uint8 (H, W) or (H, W, 3) picture, at most `SHOWN` pixels on its longest side (a
    larger one shrunk; a smaller one sent as it is: a few hundred bytes, which the browser
    enlarges)."""
    image = Image.fromarray(pixels)
    image.thumbnail((SHOWN, SHOWN), Image.Resampling.BILINEAR)
    return image


def _fields(value: Any) -> list[tuple[str, Any]]:
    return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
