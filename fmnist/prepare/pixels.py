"""Pixels in and out of preparation: a picture's colour planes and luminance, uint8 conversions,
the smaller working copy the background and mask are found on, and boxes.

Transparent pixels are shown on white (as a product photo's cut-out background would be on a
page, the white the dataset's photos had); a 16-bit grayscale PNG is scaled to 8 bits, not
clipped. The working copy is at most `WORK_SIDE` pixels long: area-averaging it also averages
sensor noise, and the steps on it take milliseconds whatever the photo's size.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor

Plane = NDArray[np.float32]  # (H, W) or (H, W, C) values in 0..255


Mask = NDArray[np.bool_]


Box = tuple[int, int, int, int]  # (top, left, bottom, right), ends exclusive


# 5 robust standard deviations a Gaussian background gives one false pixel in 1.7 million
WORK_SIDE = 512  # the mask is found on a copy whose longest side is at most this


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # how Pillow opens a 16-bit grayscale PNG


def planes(image: Image.Image) -> tuple[Plane, NDArray[np.uint8]]:
    """The picture's colours (float32 (H, W, C), C = 1 for a grayscale picture, 3 otherwise) and
    its luminance (uint8 (H, W), Pillow's "L": 0.299 R + 0.587 G + 0.114 B).

    Transparent pixels are shown on white first, as a product photo with a transparent
    background would be on a page: a cut-out object then gets the white background that the
    dataset's own photos had. A 16-bit grayscale picture (PNG) is scaled to 8 bits, 0..65535 to
    0..255, rounded; Pillow's own conversion would clip it at 255.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        image = image.convert("I").point(lambda v: v / 257 + 0.5).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode not in ("L", "RGB"):
        image = image.convert("L" if image.mode in ("1", "I", "F") else "RGB")
    gray = np.asarray(image.convert("L"), dtype=np.uint8)
    colours = np.asarray(image, dtype=np.float32)
    return (colours if colours.ndim == 3 else colours[..., None]), gray


def grayscale(image: Image.Image) -> Tensor:
    """The picture's luminance as a uint8 (H, W) tensor (`planes`)."""
    return torch.from_numpy(planes(image)[1].copy())


def as_uint8(values: NDArray[np.floating] | NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Values in 0..255 rounded to uint8 (a single channel squeezed)."""
    rounded = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return rounded[..., 0] if rounded.ndim == 3 and rounded.shape[2] == 1 else rounded


def image_of(pixels: Tensor | NDArray[np.uint8]) -> Image.Image:
    """uint8 (H, W) as a Pillow "L" image."""
    array = pixels.numpy() if isinstance(pixels, Tensor) else pixels
    return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), "L")


def shrunk(colours: Plane, side: int = WORK_SIDE) -> tuple[Plane, float]:
    """A copy whose longest side is at most `side` (area-averaged, which also averages noise),
    and the scale from it back to `colours` (1.0 when it was small enough already)."""
    height, width = colours.shape[:2]
    scale = max(height, width) / side
    if scale <= 1:
        return colours, 1.0
    size = (max(1, round(width / scale)), max(1, round(height / scale)))
    channels = [
        np.asarray(
            Image.fromarray(colours[..., c], "F").resize(size, Image.Resampling.BOX),
            dtype=np.float32,
        )
        for c in range(colours.shape[2])
    ]
    small = np.stack(channels, axis=-1)
    return small, max(height / small.shape[0], width / small.shape[1])


def mask_box(mask: Mask) -> Box:
    """(top, left, bottom, right) of the mask's pixels (the whole picture for an empty mask)."""
    if not mask.any():
        return 0, 0, mask.shape[0], mask.shape[1]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def slice_of(box: Box) -> tuple[slice, slice]:
    return slice(box[0], box[2]), slice(box[1], box[3])


def slices_box(found: tuple[slice, ...] | None) -> Box:
    """A box from ndimage.find_objects' slices."""
    assert found is not None  # every label from 1 to the count has pixels
    rows, cols = found[0], found[1]
    return int(rows.start), int(cols.start), int(rows.stop), int(cols.stop)
