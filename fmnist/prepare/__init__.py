"""A real picture made Fashion-MNIST-like, step by step, one module a step; and the rule that says
when the result is still unlike the training images.

Zalando made Fashion-MNIST from product photos on white: trim the edges that are the colour of the
background (within 5% of the range), fit the longest edge into 28 pixels, pad the other edge to
28 with the object centred, negate, 8-bit grayscale. So a dataset image is a light object on a
black background that fills the frame, and a photo that was not prepared that way (a dark shirt
on a grey table, small in a noisy frame) is outside everything the model has seen. `prepare`
finds the object on its real background first, then redoes the dataset's recipe:

1. `pixels`: the picture's colours and luminance, and a working copy at most 512 pixels long;
2. `background`: its colour and noise from the border ring, uneven light evened out;
3. `distance`: each pixel's colour distance from the background's colour, light on black;
4. `mask`: the pixels above the background's threshold, cleaned, the object's components;
5. `shadow`: a shadow beside the object cut off, a garment's own dim parts kept;
6. `turn`: a garment turned by a few degrees turned back upright;
7. `frame`: cropped to the object at full resolution, fitted into 28x28, padded, stretched.

A picture already in the dataset's form (28x28 grayscale, light on a dark background: 9999 of
the 10000 test images) passes through unchanged. Every step that changed the picture is kept in
`Prepared.steps` (predictions.png and the page show them). Normalisation with the checkpoint's
statistics follows in fmnist.predict. `flags` holds the pixel rule that flags a prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor

from fmnist.data import SIDE
from fmnist.prepare.background import Background, even_light, find_background, smooth1
from fmnist.prepare.distance import MID_GREY, contrast
from fmnist.prepare.flags import DOUBT_RULE, doubts
from fmnist.prepare.frame import cut_out, fit, full_contrast, pad_to_square
from fmnist.prepare.mask import failure, object_mask
from fmnist.prepare.pixels import Box, Plane, as_uint8, grayscale, image_of, planes, shrunk
from fmnist.prepare.shadow import without_shadow
from fmnist.script_configs import PrepareConfig

__all__ = ["DOUBT_RULE", "Background", "Prepared", "doubts", "grayscale", "image_of", "prepare"]


@dataclass
class Prepared:
    """A picture as the model sees it, and what preparation did to it."""

    pixels: Tensor  # uint8 (28, 28), light object on black, before normalisation
    inverted: bool  # the picture's light background was turned black (the object made light)
    box: Box | None  # kept of the picture given to `prepare`; None when cropping was off
    background: Background
    turned: float = 0.0  # degrees the object was turned back (counter-clockwise positive)
    failed: str | None = None  # why the object could not be found; None when it was
    steps: list[tuple[str, NDArray[np.uint8]]] = field(default_factory=list)  # each step that
    # changed the picture, in order: (name, uint8 (H, W) or (H, W, 3)), for predictions.png


def prepare(image: Image.Image, settings: PrepareConfig) -> Prepared:
    """The steps, in order. `settings.invert`: auto (colour distance from the background), true
    or false (the grayscale inverted or not); `settings.crop`: find the object and trim to it
    (false: fit the whole picture)."""
    colours, gray = planes(image)
    small, _ = shrunk(colours)
    background, light = find_background(small)
    if in_dataset_form(colours, background, settings):
        pixels = full_contrast(torch.from_numpy(gray.copy()))
        whole = (0, 0, SIDE, SIDE) if settings.crop else None
        return Prepared(pixels, False, whole, background, steps=[("input", pixels.numpy())])
    steps: list[tuple[str, NDArray[np.uint8]]] = []
    if colours.shape[2] == 3:
        steps.append(("grayscale", as_uint8(shrunk(gray[..., None].astype(np.float32))[0])))
    if light is not None:
        small = even_light(small, light)
        steps.append(("evened", as_uint8(small)))
    inverted = settings.invert == "true" or (
        settings.invert == "auto" and background.level > MID_GREY
    )
    values = contrast(small, background, settings.invert)
    if not np.array_equal(values, small[..., 0]):
        steps.append(("inverted" if inverted else "contrast", as_uint8(values)))
    seen = values if background.noise == 0 else smooth1(values)
    found = object_mask(seen, background.threshold)
    mask = without_shadow(found, seen)
    clean = background.noise > 0 or not np.array_equal(mask, found)  # black outside the mask
    failed = failure(mask, colours.shape)
    box: Box | None = None
    angle = 0.0
    if settings.crop:
        if failed is None:
            values, box, angle = cut_out(colours, mask, background, light, settings, clean)
            if angle or box != (0, 0, colours.shape[0], colours.shape[1]):
                steps.append(("mask", (mask * np.uint8(255)).astype(np.uint8)))
                steps.append(("turned and cropped" if angle else "crop", as_uint8(values)))
        else:
            box = (0, 0, colours.shape[0], colours.shape[1])
    pixels = full_contrast(pad_to_square(fit(torch.from_numpy(as_uint8(values)))))
    steps.append(("input", pixels.numpy()))
    return Prepared(pixels, inverted, box, background, angle, failed, steps)


def in_dataset_form(colours: Plane, background: Background, settings: PrepareConfig) -> bool:
    """A 28x28 grayscale picture on a dark background is already what the model takes: it passes
    through unchanged, not cropped and fitted again (9999 of the 10000 test images: the other is
    a bag that fills the frame, its border light)."""
    return (
        colours.shape == (SIDE, SIDE, 1)
        and background.level <= MID_GREY
        and settings.invert != "true"
    )
