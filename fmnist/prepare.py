"""Turn a real picture into a Fashion-MNIST-like input, and say when the result is still unlike one.

Zalando made Fashion-MNIST from product photos on white: trim the edges that are the colour of the
background (within 5% of the range), fit the longest edge into 28 pixels, pad the other edge to
28 with the object centred, negate, 8-bit grayscale. So a dataset image is a light object on a
black background that fills the frame, and a photo that was not prepared that way (a dark shirt
on a grey table, small in a noisy frame) is outside everything the model has seen. `prepare`
redoes the dataset's recipe on a real background, with scikit-image for the image operations:

1. `planes`: the picture's colours and its luminance; a transparent background is shown on
   white, as product photos are, and a 16-bit grayscale picture is scaled to 8 bits;
2. `find_background` on a copy at most `WORK_SIDE` pixels long: the background's colour and noise
   from the picture's border (median, and MAD or how far the border reaches if that is less:
   robust to an object that reaches the border, and not overstated by a table's texture), and
   uneven light (a gradient, a vignette) evened out by subtracting a quadratic surface fitted to
   the border (`even_light`);
3. `contrast`: each pixel's colour distance from the background's colour, so the object becomes
   light on black whether it is darker, lighter or only of another hue than its background (a
   light background is thereby inverted; `PrepareConfig.invert` forces the grayscale way);
4. `object_mask`: the pixels whose contrast is above `background noise * NOISE_K` (at least
   `OBJECT_LEVEL`), opened to drop specks, the largest connected component and those near it (a
   sandal's straps, a trouser's two legs), holes filled; then `without_shadow`: a shadow beside
   the object cut off (a part beyond the object's core that fades in, or that a moved copy of
   the object covers), a garment's own dim parts kept;
5. `turn_of`: a garment turned by a few degrees is turned back when its mirror axis is clearly
   tilted (the dataset's tops, trousers, dresses, coats and bags are mirror images of themselves
   about an upright axis) or, for one that is not (a shoe), when its mask's smallest enclosing
   rectangle is clearly turned (the dataset's objects fill an upright box);
6. `crop` to the mask's box plus a small margin, the background outside the mask made black;
7. `fit` the longest edge into 28 pixels (Lanczos), `pad_to_square` with black, and
   `full_contrast`: a faint object stretched so its brightest pixel is white, as in the dataset.

Normalisation with the checkpoint's statistics follows in fmnist.predict (an exported model does
it inside its graph). A picture already in the dataset's form (`in_dataset_form`: 28x28
grayscale, light on a dark background) passes through unchanged. Every step that changed the
picture is kept in `Prepared.steps` (for predictions.png and a web page). `doubts` is the pixel
rule that flags a prediction as unreliable: an unsure answer, a failed preparation, or prepared
pixels unlike the training images'; fmnist.ood adds the model's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage
from skimage import filters, measure
from torch import Tensor

from fmnist.data import SIDE
from fmnist.script_configs import PrepareConfig

Plane = NDArray[np.float32]  # (H, W) or (H, W, C) values in 0..255
Mask = NDArray[np.bool_]

MID_GREY = 127.5
OBJECT_LEVEL = 13  # the least contrast that is "clearly the object": 5% of the range, the
# closeness within which Zalando's trimming took a pixel for background
NOISE_K = 5.0  # a pixel is the object when its contrast exceeds this many background noises: at
# 5 robust standard deviations a Gaussian background gives one false pixel in 1.7 million
WORK_SIDE = 512  # the mask is found on a copy whose longest side is at most this
BLUR = 1.0  # pixels of the working copy: a Gaussian that averages sensor noise before the
# threshold (only where the border is not perfectly flat: a clean picture is left exact)
NEAR = 0.15  # components whose box is within this share of the largest one's longest side of
# its box are kept with it
TAIL = 0.999  # the border's distances from its median: this quantile of them is how far the
TAIL_SIGMAS = 3.29  # background reaches, and a Gaussian's is this many standard deviations
# (chosen on validation images: a textured table's threshold comes down by a third,
# docs/experiments.md)
TAIL_COUNT = round(1 / (1 - TAIL))  # border pixels needed for that quantile to be more than
# its largest value (a 28x28 picture of uniform noise would otherwise find an "object" in it)
EVEN_MIN = 8.0  # grey levels: uneven light is evened out when the fitted surface varies more
# across the frame than this and than 3 background noises
RING = 0.03  # of the shorter side: the border ring the background is measured on
MARGIN = 0.02  # of the object's longest side, kept around its box (soft outlines, JPEG fringes);
# 0 pixels on a 28-pixel object, so a dataset image keeps its frame
TURN_LIMIT = 20.0  # degrees: the largest turn looked for
TURN_MIN = 2.0  # degrees: a smaller turn is left alone
TURN_GAIN = 0.95  # a turn is clear when turning back shrinks the object's box to this share of
# its area or less: 0.35% of the first 10000 training images would be turned (their objects
# fill an upright box), a garment turned by 5 degrees shrinks to about 0.85
MIRROR_MIN = 0.9  # an object is its own mirror image when this share of its pixels, reflected
# across its best axis, lands on the object: tops, trousers, dresses, coats and bags score 0.94 to
# 0.97 on average, sandals, sneakers and ankle boots 0.64 to 0.80
MIRROR_GAIN = 0.02  # ...and its axis is clearly tilted when the best one beats the upright one by
# this share (chosen on validation images: docs/experiments.md)
MIRROR_POINTS = 3000  # at most this many of the mask's pixels are reflected (evenly spaced)
CORE_SHARE = 0.35  # of the object's brightest contrast: its core, which no soft shadow reaches
CORE_REACH = 0.02  # of the core's longest side: how far beyond it the object's faint edges go,
# and how far in from its edge an object's own part has reached its level
SOFT = 0.5  # a part beyond that reach is a shadow when its contrast, `CORE_REACH` in from its
# edge, has risen less than this share of the way from its edge to its peak (validation images:
# a shadow's parts 0.23-0.47, a garment's dim parts 0.44-1.1; docs/experiments.md)
CAST_COVER = 0.7  # ...or, a hard shadow, when this share of it is covered by a copy of the object
CAST_SPILL = 0.1  # moved by as far as the mask reaches past it, that copy all but this share
# inside the mask (chosen on validation images with a hard shadow: docs/experiments.md)
WHOLE = 0.95  # a box holding this share of a large picture's area: the object was not found
LARGE = 4 * SIDE  # pixels: a picture this long or longer is "large" (a 28x28 dataset image is
# its object)
FULL_CONTRAST = 250  # every one of the 70000 dataset images has a brightest pixel of 250 or more

# Per-image mean and standard deviation of the pixels (scaled to [0, 1]) of the 60000 training
# images: their 0.5th and 99.5th percentiles, measured once with data.load_split("train") and
# torch.quantile over images.float().div(255).mean((1, 2)) and .std((1, 2), unbiased=False).
TYPICAL_MEAN = (0.0567, 0.6033)
TYPICAL_STD = (0.1222, 0.4497)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # how Pillow opens a 16-bit grayscale PNG
UNSURE_BELOW = 0.5  # a top probability under this: the model is unsure
DOUBT_RULE = (
    f"A prediction is flagged when its top probability is under {UNSURE_BELOW}, when no object "
    "could be told from the background, or when the prepared picture's pixel mean (in [0, 1]) is "
    f"outside {TYPICAL_MEAN[0]}..{TYPICAL_MEAN[1]} or their standard deviation outside "
    f"{TYPICAL_STD[0]}..{TYPICAL_STD[1]}, the range of 99% of the training images. The flag "
    "never blocks the prediction."
)

Box = tuple[int, int, int, int]  # (top, left, bottom, right), ends exclusive


@dataclass
class Background:
    """What preparation found out about a picture's background (grey levels, 0..255)."""

    colour: list[float]  # its colour (one value for a grayscale picture), after evening
    level: float  # its luminance
    noise: float  # the border's robust standard deviation (`border_noise`), as thresholded (on
    # the smoothed working copy)
    threshold: float  # contrast above which a pixel is the object
    evened: bool  # uneven light was evened out


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


# --------------------------------------------------------------------------------------------
# Pixels in and out
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The background: its colour, its noise, its light
# --------------------------------------------------------------------------------------------


def ring(shape: tuple[int, ...]) -> Mask:
    """The outermost `RING` of the shorter side (at least one row and column) on each side."""
    height, width = shape[:2]
    depth = max(1, round(RING * min(height, width)))
    inside = np.zeros((height, width), dtype=bool)
    inside[depth : height - depth, depth : width - depth] = True
    return ~inside


def robust_noise(values: NDArray[np.floating]) -> float:
    """1.4826 times the median absolute deviation: the standard deviation of Gaussian values,
    unmoved by the few that are not (an object reaching the border)."""
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def coordinates(size: int) -> NDArray[np.float64]:
    """Pixel centres along a side of `size` pixels, from -1 to 1."""
    return np.linspace(-1, 1, size) if size > 1 else np.zeros(1)


def surface_terms(y: NDArray[np.float64], x: NDArray[np.float64]) -> NDArray[np.float64]:
    """1, x, y, x², y², xy for points (y, x) in -1..1: a quadratic light field's terms (N, 6)."""
    return np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=-1)


def fit_surface(colours: Plane) -> NDArray[np.float64]:
    """The coefficients (6, C) of a quadratic surface fitted to the border ring of each channel,
    robustly: each fit only to the pixels the previous one (at first, the border's median) missed
    by at most 3 robust noises (at least 2 grey levels), so an object reaching the border does
    not bend the surface."""
    rows, cols = np.nonzero(ring(colours.shape))
    terms = surface_terms(coordinates(colours.shape[0])[rows], coordinates(colours.shape[1])[cols])
    values = colours[rows, cols].astype(np.float64)
    guess = np.broadcast_to(np.median(values, axis=0), values.shape)
    coefficients = np.zeros((terms.shape[1], values.shape[1]))
    coefficients[0] = guess[0]
    for _ in range(2):
        residual = np.abs(values - guess).max(axis=1)
        keep = residual <= max(3 * robust_noise(residual), 2.0)
        if keep.sum() < terms.shape[1] * 4:
            break
        # the 6x6 normal equations, summed without BLAS (its threads cost more than the sums)
        a, b = terms[keep], values[keep]
        coefficients = np.linalg.solve(
            np.einsum("ni,nj->ij", a, a) + 1e-9 * np.eye(6), np.einsum("ni,nc->ic", a, b)
        )
        guess = np.einsum("ni,ic->nc", terms, coefficients)
    return np.asarray(coefficients, dtype=np.float64)


def light_field(
    coefficients: NDArray[np.float64], shape: tuple[int, ...], box: Box | None = None
) -> NDArray[np.float64]:
    """The fitted field (H, W, C) over `box` (default: all) of a picture of `shape`."""
    height, width = shape[:2]
    top, left, bottom, right = box or (0, 0, height, width)
    y = coordinates(height)[top:bottom, None, None]
    x = coordinates(width)[None, left:right, None]
    a, bx, by, bxx, byy, bxy = coefficients
    return np.asarray(a + bx * x + by * y + bxx * x * x + byy * y * y + bxy * x * y, np.float64)


def even_light(
    colours: Plane,
    coefficients: NDArray[np.float64],
    shape: tuple[int, ...] | None = None,
    box: Box | None = None,
) -> Plane:
    """`colours` with the fitted light field replaced by its mean: a gradient or a vignette
    across the frame flattened to one background colour. `colours` may be the part `box` of a
    picture of `shape`."""
    field_ = light_field(coefficients, shape or colours.shape, box)
    level = coefficients[0] + (coefficients[3] + coefficients[4]) / 3  # the field's mean
    return np.asarray(np.clip(colours - field_ + level, 0, 255), dtype=np.float32)


def distance(colours: Plane, colour: NDArray[np.floating]) -> Plane:
    """Each pixel's colour distance from `colour`, scaled so that a grey pixel's is its
    difference in grey levels: ||pixel - colour|| / sqrt(channels)."""
    difference = colours - colour.astype(np.float32)
    return np.asarray(np.sqrt((difference * difference).mean(axis=-1)), dtype=np.float32)


def smooth(colours: Plane) -> Plane:
    return np.asarray(
        filters.gaussian(colours, sigma=BLUR, channel_axis=-1, preserve_range=True),
        dtype=np.float32,
    )


def border_noise(colours: Plane) -> float:
    """The background's noise: for each channel of the border ring, the smaller of two robust
    standard deviations, `robust_noise` and `tail_noise`; their root mean square (so a grey
    picture's is its grey levels')."""
    border = colours[ring(colours.shape)]
    per_channel = [min(robust_noise(b), tail_noise(b)) for b in border.T]
    return float(np.sqrt(np.mean(np.square(per_channel))))


def tail_noise(values: NDArray[np.floating]) -> float:
    """How far `values` reach from their median, as a standard deviation: the `TAIL` quantile of
    the distances over what a Gaussian's would be. A Gaussian's is its standard deviation, as
    `robust_noise` is; a table's grain and weave are bounded, so `robust_noise` overstates how far
    they reach and this does not (an object reaching the border raises this, not the other).
    Infinite (no say) on fewer than `TAIL_COUNT` values, a ring of a picture under about 90 pixels
    a side, where the quantile would be their single largest value."""
    if len(values) < TAIL_COUNT:
        return float("inf")
    return float(np.quantile(np.abs(values - np.median(values)), TAIL) / TAIL_SIGMAS)


def find_background(small: Plane) -> tuple[Background, NDArray[np.float64] | None]:
    """The background of the working copy `small`, and the light field's coefficients when
    uneven light was evened (None when it was left alone)."""
    keep, evened, noise = False, small, border_noise(small)
    if noise > 0:  # half the border or more one colour: nothing to even out
        coefficients = fit_surface(small)
        coarse = light_field(coefficients, (17, 17))  # the field's range, on a coarse grid
        variation = float(np.ptp(coarse @ luma_weights(small.shape[2])))
        flattened = even_light(small, coefficients)
        flattened_noise = border_noise(flattened)
        keep = variation > max(EVEN_MIN, 3 * flattened_noise)
        if keep:
            evened, noise = flattened, flattened_noise
    colour = np.median(evened[ring(small.shape)], axis=0)
    if noise > 0:  # the threshold is applied to the smoothed picture: measure its noise
        noise = border_noise(smooth(evened))
    return (
        Background(
            [round(float(c), 2) for c in colour],
            round(luminance(colour), 2),
            round(noise, 3),
            round(max(float(OBJECT_LEVEL), NOISE_K * noise), 2),
            keep,
        ),
        coefficients if keep else None,
    )


def luma_weights(channels: int) -> NDArray[np.float64]:
    """Pillow's luminance weights for 3 channels (1 for one)."""
    return np.array([0.299, 0.587, 0.114]) if channels == 3 else np.ones(1)


def luminance(colour: NDArray[np.floating]) -> float:
    """Pillow's luminance of one colour (its value, for one channel)."""
    if len(colour) == 1:
        return float(colour[0])
    return float(0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2])


# --------------------------------------------------------------------------------------------
# The object: contrast, mask, turn, box
# --------------------------------------------------------------------------------------------


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


def object_mask(seen: Plane, threshold: float) -> Mask:
    """The object in a contrast picture: the pixels above `threshold`, opened (a 3x3 square) on
    pictures of 100 pixels or more to drop specks of noise or texture, then the largest connected
    component with every component whose box lies within `NEAR` of its box, holes filled. Empty
    when no pixel is above the threshold."""
    mask = seen > threshold
    if min(mask.shape) >= 100:
        mask = ndimage.binary_opening(mask, np.ones((3, 3), dtype=bool))
    labels, count = measure.label(mask, connectivity=2, return_num=True)
    if count == 0:
        return mask
    boxes = ndimage.find_objects(labels)  # (rows, columns) slices, one per label 1..count
    main = slices_box(boxes[int(np.bincount(labels.ravel())[1:].argmax())])
    top, left, bottom, right = main
    gap = NEAR * max(bottom - top, right - left)
    kept = [
        label
        for label, found in enumerate(map(slices_box, boxes), start=1)
        if found[0] <= bottom + gap
        and found[2] >= top - gap
        and found[1] <= right + gap
        and found[3] >= left - gap
    ]
    return filled(np.isin(labels, kept))


def filled(mask: Mask) -> Mask:
    """`mask` with its holes filled: the background's components that do not reach the
    picture's edge (one labelling, where ndimage.binary_fill_holes dilates again and again)."""
    outside, _ = ndimage.label(~mask)
    edges = np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]])
    return ~np.isin(outside, edges[edges > 0])


def slices_box(found: tuple[slice, ...] | None) -> Box:
    """A box from ndimage.find_objects' slices."""
    assert found is not None  # every label from 1 to the count has pixels
    rows, cols = found[0], found[1]
    return int(rows.start), int(cols.start), int(rows.stop), int(cols.stop)


def without_shadow(mask: Mask, seen: Plane) -> Mask:
    """`mask` less a soft shadow beside the object. The object's core (the pixels above
    `CORE_SHARE` of its brightest (99th percentile) contrast, holes filled) and what lies within
    `CORE_REACH` of it are the object; a part of the rest that reaches beyond their box is a
    shadow when it fades in softly (`soft`) or lies where a moved copy of the object falls (a
    hard shadow: `cast_copy`), and is cut off with the band of that reach next to it (the shadow
    goes on up to the object); any other part is the object's own (a dark garment's dim body
    below its bright collar). Faint parts inside that box stay: they are enclosed by the object.
    Left as it is when the core touches the picture's edge: a picture cropped tight to its object,
    as the dataset's are, has no room for a shadow (a shadow may still run off the edge of a
    picture whose object does not)."""
    if not mask.any():
        return mask
    core = mask & (seen > CORE_SHARE * float(np.percentile(seen[mask], 99)))
    top, left, bottom, right = mask_box(core)
    if min(top, left) == 0 or bottom == mask.shape[0] or right == mask.shape[1]:
        return mask
    reach = max(1, round(CORE_REACH * max(bottom - top, right - left)))
    body, square = filled(core), np.ones((3, 3), dtype=bool)
    near = ndimage.binary_dilation(body, square, iterations=reach)
    kept = mask & near
    parts, _ = ndimage.label(mask & ~near, square)
    beyond = parts.copy()
    beyond[slice_of(mask_box(kept))] = 0
    candidates = np.unique(beyond[beyond > 0])
    if not len(candidates):
        return mask
    depth = ndimage.distance_transform_cdt(mask, metric="chessboard")  # 1 on the mask's edge
    copy = cast_copy(kept, np.isin(parts, candidates), mask)

    def cast_or_faded(part: Mask) -> bool:
        cast = copy is not None and (copy & part).sum() >= CAST_COVER * part.sum()
        return bool(cast) or soft(seen, depth, part, reach)

    faded = [label for label in candidates if cast_or_faded(parts == label)]
    shadow = np.isin(parts, faded)
    if shadow.any():
        shadow |= ndimage.binary_dilation(shadow, square, iterations=reach) & ~body
    return np.asarray(mask & ~shadow, dtype=bool)


def cast_copy(kept: Mask, beyond: Mask, mask: Mask) -> Mask | None:
    """The object `kept` moved by as far as the mask reaches past its box (down or up, right or
    left: where a shadow it casts would fall), when that copy lies within the mask (all but
    `CAST_SPILL` of it). None when the mask reaches past the box on opposite sides (not one
    shadow) or the copy does not fit."""
    top, left, bottom, right = mask_box(kept)
    top_, left_, bottom_, right_ = mask_box(kept | beyond)
    if (top_ < top and bottom_ > bottom) or (left_ < left and right_ > right):
        return None
    down = bottom_ - bottom if bottom_ > bottom else top_ - top
    across = right_ - right if right_ > right else left_ - left
    copy = ndimage.shift(kept, (down, across), order=0, mode="constant", cval=False)
    return copy if (copy & ~mask).sum() <= CAST_SPILL * copy.sum() else None


def soft(seen: Plane, depth: NDArray[np.int32], part: Mask, reach: int) -> bool:
    """Whether `part` of the mask fades in like a shadow: `reach` pixels in from its edge
    (`depth`: pixels from the mask's outside), its contrast has risen less than `SOFT` of the way
    from its edge's to its peak (90th percentile). A garment's own part, its outline sharp, is at
    its level there already. A part too thin to have that depth is cut off; one whose edge is at
    its peak already (flat, sharp edged) is kept."""
    edge, inner = part & (depth == 1), part & (depth == reach + 1)
    if not inner.any() or not edge.any():
        return True
    rim, peak = float(seen[edge].mean()), float(np.percentile(seen[part], 90))
    if peak <= rim:
        return False
    return (float(seen[inner].mean()) - rim) / (peak - rim) < SOFT


def mask_box(mask: Mask) -> Box:
    """(top, left, bottom, right) of the mask's pixels (the whole picture for an empty mask)."""
    if not mask.any():
        return 0, 0, mask.shape[0], mask.shape[1]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


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


_ANGLES = np.radians(np.arange(-TURN_LIMIT, TURN_LIMIT + 0.25, 0.5))


def turn_of(mask: Mask) -> float:
    """The turn (degrees, counter-clockwise positive) that makes the object upright when it is
    clearly turned, else 0: `mirror_turn` for an object that is its own mirror image, else
    `box_turn`."""
    mirrored = mirror_turn(mask)
    return box_turn(mask) if mirrored is None else mirrored


def mirror_turn(mask: Mask) -> float | None:
    """For an object that is its own mirror image (`MIRROR_MIN`): the turn that makes its mirror
    axis upright when that is clear (at least `TURN_MIN`, the tilted axis beating the upright one
    by `MIRROR_GAIN`), else 0; None for an object that is not, or of under 8 pixels. The axis is
    the line through the object's centroid, tilted by one of `_ANGLES`, across which the most of
    its pixels land on the object again. A symmetric garment's axis is upright in the dataset
    whatever its outline (sleeves spread or not), so its tilt is the photo's turn, even when its
    box barely shows it."""
    rows, cols = np.nonzero(mask)
    if len(rows) < 8:
        return None
    step = max(1, len(rows) // MIRROR_POINTS)
    y, x = rows[::step].astype(np.float64), cols[::step].astype(np.float64)
    centre_y, centre_x = y.mean(), x.mean()
    y, x = y[None] - centre_y, x[None] - centre_x
    down, across = np.cos(_ANGLES)[:, None], np.sin(_ANGLES)[:, None]  # the axis' direction
    along = y * down + x * across  # reflecting p across the axis: 2 (p . axis) axis - p
    hit_y = np.rint(2 * along * down - y + centre_y).astype(np.int64)
    hit_x = np.rint(2 * along * across - x + centre_x).astype(np.int64)
    # A reflected point lies as far from the centroid as the point: on a mask padded by that much
    # (False), every one is a pixel, read in one flat gather.
    pad = int(np.ceil(np.sqrt(float((y * y + x * x).max())))) + 1
    width = mask.shape[1] + 2 * pad
    padded = np.pad(mask, pad).ravel()
    shares = padded[(hit_y + pad) * width + hit_x + pad].mean(axis=1)
    best, upright = int(shares.argmax()), len(_ANGLES) // 2
    if shares[best] < MIRROR_MIN:
        return None
    angle = -float(np.degrees(_ANGLES[best]))
    if abs(angle) < TURN_MIN or shares[best] < shares[upright] + MIRROR_GAIN:
        return 0.0
    return angle


def box_turn(mask: Mask) -> float:
    """The turn that makes the object's enclosing box smallest, when that is clear: at least
    `TURN_MIN` and shrinking the box's area to `TURN_GAIN` of the upright box's or less; else 0.
    The dataset's objects fill an upright box (their smallest box is upright for over 90% of
    every class), so a clear turn is a turned photo."""
    edge = mask & ~ndimage.binary_erosion(mask)
    rows, cols = np.nonzero(edge)
    if len(rows) < 8:
        return 0.0
    cos, sin = np.cos(_ANGLES)[:, None], np.sin(_ANGLES)[:, None]
    across = cols[None] * cos + rows[None] * sin
    down = rows[None] * cos - cols[None] * sin
    areas = (np.ptp(across, axis=1) + 1) * (np.ptp(down, axis=1) + 1)
    best, upright = int(areas.argmin()), len(_ANGLES) // 2
    angle = float(np.degrees(_ANGLES[best]))
    if abs(angle) < TURN_MIN or areas[best] > TURN_GAIN * areas[upright]:
        return 0.0
    return angle


def turned(values: Plane, angle: float) -> Plane:
    """`values` (H, W) turned by `angle` degrees about its centre, the canvas grown to hold it
    all, the new corners black (bilinear)."""
    image = Image.fromarray(values.astype(np.float32), "F")
    return np.asarray(
        image.rotate(angle, Image.Resampling.BILINEAR, expand=True, fillcolor=0.0),
        dtype=np.float32,
    )


def crop(pixels: Tensor, box: Box) -> Tensor:
    top, left, bottom, right = box
    return pixels[top:bottom, left:right]


# --------------------------------------------------------------------------------------------
# Into 28x28
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The whole preparation
# --------------------------------------------------------------------------------------------


def prepare(image: Image.Image, settings: PrepareConfig) -> Prepared:
    """The steps above, in order. `settings.invert`: auto (colour distance from the
    background), true or false (the grayscale inverted or not); `settings.crop`: find the object
    and trim to it (false: fit the whole picture)."""
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


def smooth1(values: Plane) -> Plane:
    """`smooth` for one plane (H, W)."""
    return smooth(values[..., None])[..., 0]


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


def slice_of(box: Box) -> tuple[slice, slice]:
    return slice(box[0], box[2]), slice(box[1], box[3])


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


def failure(mask: Mask, shape: tuple[int, ...]) -> str | None:
    """Why the object was not found, in words; None when it was. Nothing above the threshold,
    or, in a large picture, a box of almost all of it (`WHOLE`) with "object" on over a third of
    its border ring: noise or texture the background's own measure did not cover (a product
    photo cropped tight touches its border in places, not along it)."""
    if not mask.any():
        return "no object found: nothing stands out from the background"
    top, left, bottom, right = mask_box(mask)
    share = (bottom - top) * (right - left) / (mask.shape[0] * mask.shape[1])
    on_border = float(mask[ring(mask.shape)].mean())
    if max(shape[:2]) >= LARGE and share >= WHOLE and on_border > 1 / 3:
        return (
            f"no object found: the object's box is {share:.0%} of the picture and it covers "
            f"{on_border:.0%} of the border (the background could not be told from it)"
        )
    return None


def doubts(pixels: Tensor, top_probability: float, failed: str | None = None) -> list[str]:
    """Why a prediction may not be trusted, in words (empty: no reason found); `DOUBT_RULE`.

    An unsure answer (top probability under `UNSURE_BELOW`), a preparation that found no object,
    or a prepared picture whose mean or standard deviation of pixels lies outside the range of 99%
    of the training images (`TYPICAL_MEAN`, `TYPICAL_STD`): a picture that bright, that dark or
    that flat is unlike anything the model was trained on, whatever probability it gives. Never
    blocks a prediction.
    """
    found = []
    if top_probability < UNSURE_BELOW:
        found.append(f"unsure: top probability {top_probability:.2f} < {UNSURE_BELOW}")
    if failed:
        found.append(failed)
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
