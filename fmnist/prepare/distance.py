"""Step 3, the distance from the background: the object made light on black, whatever its colour
and its background's.

Each pixel's colour distance from the background's colour: a dark shirt on white, a light one on
black and a blue one on a grey table of the same luminance all come out light on black, and a
dataset image (grey on exact black) is its own distance. `prepare.invert=true|false` forces the
grayscale way instead (inverted or not, a dark background stretched to black).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from fmnist.prepare.background import Background
from fmnist.prepare.pixels import Plane

MID_GREY = 127.5


def distance(colours: Plane, colour: NDArray[np.floating]) -> Plane:
    """Each pixel's colour distance from `colour`, scaled so that a grey pixel's is its
    difference in grey levels: ||pixel - colour|| / sqrt(channels)."""
    difference = colours - colour.astype(np.float32)
    return np.asarray(np.sqrt((difference * difference).mean(axis=-1)), dtype=np.float32)


def contrast(colours: Plane, background: Background, invert: str) -> Plane:
    """A light-on-black picture of the object (float32 (H, W), 0..255).

    `invert="auto"`: each pixel's colour distance from the background's colour, so a dark object
    on white, a light one on black and a blue one on a grey table of the same luminance all come
    out light on black (a dataset image, black around a grey object, is its own distance).
    `"true"` / `"false"`: the luminance inverted or not, its background level made black (the
    levels above it stretched onto 0..255) when that level is dark, left as is when it is light.
    """
    if invert == "auto":
        return distance(colours, np.asarray(background.colour))
    gray = colours.mean(axis=-1) if colours.shape[2] == 1 else colours @ _LUMA
    level = background.level
    if invert == "true":
        gray, level = 255 - gray, 255 - level
    if level == 0 or level > MID_GREY:
        return np.asarray(gray, dtype=np.float32)
    return np.asarray(np.clip(gray - level, 0, None) * (255 / (255 - level)), dtype=np.float32)


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
