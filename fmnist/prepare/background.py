"""Step 2, the background, measured on the picture's border ring (the outer `RING` of its shorter
side): its colour (the median), its noise, and uneven light evened out.

The noise is the smaller of two robust standard deviations per channel: the median absolute
deviation (unmoved by an object that reaches the border) and how far the border reaches (its
`TAIL` quantile over a Gaussian's), which is less for a table's bounded grain and weave (chosen on
validation images: a textured table's threshold comes down by a third, docs/experiments.md).
Uneven light (a gradient, a vignette) is a quadratic surface fitted robustly to the border and
subtracted when it varies across the frame by more than `EVEN_MIN` grey levels and 3 noises. A
pixel is the object when its contrast is above `NOISE_K` noises (at 5 robust standard deviations a
Gaussian background gives one false pixel in 1.7 million), and at least `OBJECT_LEVEL`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from skimage import filters

from fmnist.prepare.pixels import Box, Mask, Plane

OBJECT_LEVEL = 13  # the least contrast that is "clearly the object": 5% of the range, the
# closeness within which Zalando's trimming took a pixel for background


# closeness within which Zalando's trimming took a pixel for background
NOISE_K = 5.0  # a pixel is the object when its contrast exceeds this many background noises: at
# 5 robust standard deviations a Gaussian background gives one false pixel in 1.7 million


BLUR = 1.0  # pixels of the working copy: a Gaussian that averages sensor noise before the
# threshold (only where the border is not perfectly flat: a clean picture is left exact)


# its box are kept with it
TAIL = 0.999  # the border's distances from its median: this quantile of them is how far the


TAIL_SIGMAS = 3.29  # background reaches, and a Gaussian's is this many standard deviations
# (chosen on validation images: a textured table's threshold comes down by a third,
# docs/experiments.md)


# (chosen on validation images: a textured table's threshold comes down by a third,
# docs/experiments.md)
TAIL_COUNT = round(1 / (1 - TAIL))  # border pixels needed for that quantile to be more than
# its largest value (a 28x28 picture of uniform noise would otherwise find an "object" in it)


# its largest value (a 28x28 picture of uniform noise would otherwise find an "object" in it)
EVEN_MIN = 8.0  # grey levels: uneven light is evened out when the fitted surface varies more
# across the frame than this and than 3 background noises


# across the frame than this and than 3 background noises
RING = 0.03  # of the shorter side: the border ring the background is measured on


@dataclass
class Background:
    """What preparation found out about a picture's background (grey levels, 0..255)."""

    colour: list[float]  # its colour (one value for a grayscale picture), after evening
    level: float  # its luminance
    noise: float  # the border's robust standard deviation (`border_noise`), as thresholded (on
    # the smoothed working copy)
    threshold: float  # contrast above which a pixel is the object
    evened: bool  # uneven light was evened out


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


def border_noise(colours: Plane) -> float:
    """The background's noise: for each channel of the border ring, the smaller of two robust
    standard deviations, `robust_noise` and `tail_noise`; their root mean square (so a grey
    picture's is its grey levels')."""
    border = colours[ring(colours.shape)]
    per_channel = [min(robust_noise(b), tail_noise(b)) for b in border.T]
    return float(np.sqrt(np.mean(np.square(per_channel))))


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


def smooth(colours: Plane) -> Plane:
    return np.asarray(
        filters.gaussian(colours, sigma=BLUR, channel_axis=-1, preserve_range=True),
        dtype=np.float32,
    )


def smooth1(values: Plane) -> Plane:
    """`smooth` for one plane (H, W)."""
    return smooth(values[..., None])[..., 0]


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
