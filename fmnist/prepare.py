"""Turn a real picture into a Fashion-MNIST-like input, and say when the result is still unlike one.

Zalando made Fashion-MNIST from product photos on white: trim the edges that are the colour of the
background (within 5% of the range), fit the longest edge into 28 pixels, pad the other edge to
28 with the object centred, negate, 8-bit grayscale. So a dataset image is a light object on a
black background that fills the frame, and a photo that was not prepared that way (a dark shirt
on a white table, small in a large frame) is outside everything the model has seen; that is why
raw photos come out as one class, often "Bag". `prepare` redoes the dataset's recipe, one step per
function below, each working on uint8 (H, W) grayscale tensors:

1. `grayscale`: luminance; a transparent background is shown on white, as product photos are;
2. `light_background` / `invert`: invert when the border is light (the median of the outermost
   rows and columns above mid-grey), so the object is light on dark (`PrepareConfig.invert`);
3. `black_background`: a dark grey background becomes black, as in the dataset;
4. `object_box` / `crop`: trim to the pixels clearly brighter than the background, plus a small
   margin (`PrepareConfig.crop`);
5. `fit`: resize with Lanczos antialiasing so the longest edge is 28 pixels;
6. `pad_to_square`: pad the other edge with black to 28, the object centred.

Normalisation with the checkpoint's statistics follows in fmnist.predict (an exported model does
it inside its graph). A dataset image passes through unchanged, or nearly: one whose object stops
a pixel short of the frame is fitted to it again. `doubts` is the rule that flags a prediction
as unreliable: an unsure answer, or prepared pixels unlike the training images'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from fmnist.data import SIDE
from fmnist.script_configs import PrepareConfig

MID_GREY = 127.5
OBJECT_LEVEL = 13  # "clearly brighter" than the black background: above 5% of the range,
# the closeness within which Zalando's trimming took a pixel for background
MARGIN = 0.02  # of the object's longest side, kept around its box (soft outlines, JPEG fringes);
# 0 pixels on a 28-pixel object, so a dataset image keeps its frame

# Per-image mean and standard deviation of the pixels (scaled to [0, 1]) of the 60000 training
# images: their 0.5th and 99.5th percentiles, measured once with data.load_split("train") and
# torch.quantile over images.float().div(255).mean((1, 2)) and .std((1, 2), unbiased=False).
TYPICAL_MEAN = (0.0567, 0.6033)
TYPICAL_STD = (0.1222, 0.4497)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # how Pillow opens a 16-bit grayscale PNG
UNSURE_BELOW = 0.5  # a top probability under this: the model is unsure
DOUBT_RULE = (
    f"A prediction is flagged when its top probability is under {UNSURE_BELOW}, or when the "
    f"prepared picture's pixel mean (in [0, 1]) is outside {TYPICAL_MEAN[0]}..{TYPICAL_MEAN[1]} "
    f"or their standard deviation outside {TYPICAL_STD[0]}..{TYPICAL_STD[1]}, the range of 99% "
    "of the training images. The flag never blocks the prediction."
)


@dataclass
class Prepared:
    """A picture as the model sees it, and what preparation did to it."""

    pixels: Tensor  # uint8 (28, 28), light object on black, before normalisation
    inverted: bool  # the picture's light background was inverted to black
    box: tuple[int, int, int, int] | None  # (top, left, bottom, right) kept of the grayscale
    # picture (ends exclusive); None when cropping was off


def grayscale(image: Image.Image) -> Tensor:
    """The picture's luminance (Pillow's "L": 0.299 R + 0.587 G + 0.114 B) as uint8 (H, W).

    Transparent pixels are shown on white first, as a product photo with a transparent
    background would be on a page: a cut-out object then gets the white background that the
    dataset's own photos had (and `invert` turns it black). A 16-bit grayscale picture (PNG) is
    scaled to 8 bits, 0..65535 to 0..255, rounded; Pillow's own conversion would clip it at 255.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        return pixels_of(image.convert("I").point(lambda v: v / 257 + 0.5).convert("L"))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return pixels_of(image.convert("L"))


def pixels_of(image: Image.Image) -> Tensor:
    """A Pillow "L" image as uint8 (H, W)."""
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(
        image.height, image.width
    )


def image_of(pixels: Tensor) -> Image.Image:
    """uint8 (H, W) as a Pillow "L" image."""
    return Image.frombytes("L", (pixels.shape[1], pixels.shape[0]), pixels.numpy().tobytes())


def border(pixels: Tensor) -> Tensor:
    """The outermost rows and columns, each pixel once."""
    if min(pixels.shape) <= 2:
        return pixels.flatten()
    return torch.cat([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def background_level(pixels: Tensor) -> float:
    """The background's grey level: the median of the border, where an object rarely reaches."""
    return border(pixels).float().median().item()


def light_background(pixels: Tensor) -> bool:
    """Whether the background is light (border median above mid-grey): then the object is dark on
    light, the opposite of Fashion-MNIST, and needs `invert`. Of the 60000 training images, 2
    have a border that the object mostly covers and would be judged light."""
    return background_level(pixels) > MID_GREY


def invert(pixels: Tensor) -> Tensor:
    """255 - pixels: dark on light becomes light on dark."""
    return 255 - pixels


def black_background(pixels: Tensor) -> Tensor:
    """A dark background made black, as the dataset's is: the levels from the background's to
    white are stretched onto 0..255 (a black background leaves the picture unchanged, and a
    light one, kept by `invert=false`, is left alone)."""
    level = background_level(pixels)
    if level == 0 or level > MID_GREY:
        return pixels
    stretched = (pixels.float() - level).clamp(min=0) * (255 / (255 - level))
    return stretched.round().to(torch.uint8)


def object_box(pixels: Tensor) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the pixels above `OBJECT_LEVEL`, widened by `MARGIN` and kept
    inside the picture; the whole picture when nothing is that bright (a blank picture)."""
    bright = pixels > OBJECT_LEVEL
    if not bright.any():
        return 0, 0, pixels.shape[0], pixels.shape[1]
    rows, cols = bright.any(1).nonzero().flatten(), bright.any(0).nonzero().flatten()
    top, bottom, left, right = (
        int(rows[0].item()),
        int(rows[-1].item()) + 1,
        int(cols[0].item()),
        int(cols[-1].item()) + 1,
    )
    margin = int(MARGIN * max(bottom - top, right - left))
    height, width = pixels.shape
    return (
        max(top - margin, 0),
        max(left - margin, 0),
        min(bottom + margin, height),
        min(right + margin, width),
    )


def crop(pixels: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    top, left, bottom, right = box
    return pixels[top:bottom, left:right]


def fit(pixels: Tensor) -> Tensor:
    """Resize so the longest edge is 28 pixels, the other in proportion, with Lanczos
    antialiasing (a picture whose longest edge is 28 already is kept as is)."""
    height, width = pixels.shape
    longest = max(height, width)
    if longest == SIDE:
        return pixels
    size = (max(1, round(width * SIDE / longest)), max(1, round(height * SIDE / longest)))
    return pixels_of(image_of(pixels).resize(size, Image.Resampling.LANCZOS))


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


def prepare(image: Image.Image, settings: PrepareConfig) -> Prepared:
    """The steps above, in order. `settings.invert`: auto (when `light_background`), true or
    false; `settings.crop`: trim to the object first (false: fit the whole picture)."""
    pixels = grayscale(image)
    inverted = settings.invert == "true" or (settings.invert == "auto" and light_background(pixels))
    if inverted:
        pixels = invert(pixels)
    pixels = black_background(pixels)
    box = object_box(pixels) if settings.crop else None
    if box is not None:
        pixels = crop(pixels, box)
    return Prepared(pad_to_square(fit(pixels)), inverted, box)


def doubts(pixels: Tensor, top_probability: float) -> list[str]:
    """Why a prediction may not be trusted, in words (empty: no reason found); `DOUBT_RULE`.

    An unsure answer (top probability under `UNSURE_BELOW`), or a prepared picture whose mean
    or standard deviation of pixels lies outside the range of 99% of the training images
    (`TYPICAL_MEAN`, `TYPICAL_STD`): a picture that bright, that dark or that flat is unlike
    anything the model was trained on, whatever probability it gives. Never blocks a prediction.
    """
    found = []
    if top_probability < UNSURE_BELOW:
        found.append(f"unsure: top probability {top_probability:.2f} < {UNSURE_BELOW}")
    scaled = pixels.float() / 255
    for name, value, (low, high) in (
        ("mean", scaled.mean().item(), TYPICAL_MEAN),
        ("std", scaled.std(unbiased=False).item(), TYPICAL_STD),
    ):
        if not low <= value <= high:
            found.append(
                f"unlike the training images: pixel {name} {value:.3f} outside {low}..{high}"
            )
    return found
