"""Step 7, the frame: the object cut out at the picture's own resolution, then fitted
into 28x28 as Zalando fitted the dataset's photos.

The crop keeps the mask's box plus `MARGIN` of its longest side; off a noisy or textured
background, or after a shadow was cut off, what lies outside the mask is made black. The longest
edge is then fitted into 28 pixels (Lanczos), the other padded with black, the object centred (an
odd extra pixel before it, as in the dataset), and a faint result stretched so its brightest pixel
is white (`FULL_CONTRAST`: every dataset image reaches 250).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage
from torch import Tensor

from fmnist.data import SIDE
from fmnist.prepare.background import Background, even_light
from fmnist.prepare.distance import contrast
from fmnist.prepare.pixels import Box, Mask, Plane, image_of, mask_box, slice_of
from fmnist.prepare.turn import turn_of, turned
from fmnist.script_configs import PrepareConfig

MARGIN = 0.02  # of the object's longest side, kept around its box (soft outlines, JPEG fringes);
# 0 pixels on a 28-pixel object, so a dataset image keeps its frame


# its object)
FULL_CONTRAST = 250  # every one of the 70000 dataset images has a brightest pixel of 250 or more


def with_margin(box: Box, shape: tuple[int, ...]) -> Box:
    """`box` widened by `MARGIN` of its longest side, kept inside the picture."""
    top, left, bottom, right = box
    margin = int(MARGIN * max(bottom - top, right - left))
    return (
        max(top - margin, 0),
        max(left - margin, 0),
        min(bottom + margin, shape[0]),
        min(right + margin, shape[1]),
    )


def cut_out(
    colours: Plane,
    mask: Mask,
    background: Background,
    light: NDArray[np.float64] | None,
    settings: PrepareConfig,
    clean: bool,
) -> tuple[Plane, Box, float]:
    """The object's contrast picture at the picture's own resolution, turned upright when it is
    clearly turned, cropped to its box plus `MARGIN`; that box in the picture's coordinates
    (before any turn) and the turn. With `clean` (a noisy or textured background, a shadow cut
    off), what lies outside the (slightly widened) mask is made black: it is not the object."""
    height, width = colours.shape[:2]
    down, across = height / mask.shape[0], width / mask.shape[1]
    top, left, bottom, right = mask_box(mask)
    box = with_margin(
        (
            int(top * down),
            int(left * across),
            min(height, round(bottom * down + 0.4999)),
            min(width, round(right * across + 0.4999)),
        ),
        colours.shape,
    )
    region = colours[box[0] : box[2], box[1] : box[3]]
    if light is not None:
        region = even_light(region, light, colours.shape, box)
    values = contrast(region, background, settings.invert)
    inside = region_mask(mask, box, (height, width))
    if clean:
        values = np.where(ndimage.binary_dilation(inside, iterations=2), values, 0)
    angle = turn_of(mask)
    if angle:
        values = turned(values, angle)
        inside = turned(inside.astype(np.float32), angle) > 0.5
        values = values[slice_of(with_margin(mask_box(inside), values.shape))]
    return values.astype(np.float32), box, angle


def region_mask(mask: Mask, box: Box, shape: tuple[int, int]) -> Mask:
    """The working copy's mask over `box` of the picture (of `shape`), at the picture's
    resolution (nearest neighbour)."""
    if mask.shape == shape:
        return mask[slice_of(box)]
    image = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    down, across = mask.shape[0] / shape[0], mask.shape[1] / shape[1]
    area = (box[1] * across, box[0] * down, box[3] * across, box[2] * down)
    size = (box[3] - box[1], box[2] - box[0])
    return np.asarray(image.resize(size, Image.Resampling.NEAREST, box=area)) > 127


def fit(pixels: Tensor) -> Tensor:
    """Resize so the longest edge is 28 pixels, the other in proportion, with Lanczos
    antialiasing (a picture whose longest edge is 28 already is kept as is)."""
    height, width = pixels.shape
    longest = max(height, width)
    if longest == SIDE:
        return pixels
    size = (max(1, round(width * SIDE / longest)), max(1, round(height * SIDE / longest)))
    resized = image_of(pixels).resize(size, Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy())


def pad_to_square(pixels: Tensor) -> Tensor:
    """Pad the shorter edge with black to 28 pixels, the picture centred. An odd difference puts
    the extra pixel before it, as in the dataset (where a third of the objects have one column
    more on the left than on the right, and almost none the opposite). Padding after the resize,
    on the 28-pixel grid, as Zalando did, keeps a dataset image's pixels where they were."""
    height, width = pixels.shape
    top, left = (SIDE - height + 1) // 2, (SIDE - width + 1) // 2
    square = torch.zeros(SIDE, SIDE, dtype=torch.uint8)
    square[top : top + height, left : left + width] = pixels
    return square


def full_contrast(pixels: Tensor) -> Tensor:
    """A faint input (brightest pixel under `FULL_CONTRAST`) stretched so that pixel is white:
    every dataset image has one of 250 or more, and is left as it is."""
    brightest = int(pixels.max().item())
    if brightest >= FULL_CONTRAST or brightest == 0:
        return pixels
    return (pixels.float() * (255 / brightest)).round().clamp(0, 255).to(torch.uint8)
