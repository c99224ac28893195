"""Step 6, the turn: a garment photographed a few degrees off upright is turned back.

Two cues, each searched up to `TURN_LIMIT` degrees either way in half degrees. A garment that is
its own mirror image (tops, trousers, dresses, coats and bags) is turned by its mirror axis' tilt;
any other (a shoe) by the turn that makes its enclosing box smallest, since the dataset's objects
fill an upright box. A turn is made only when it is clear (`TURN_MIN`, `TURN_GAIN`,
`MIRROR_GAIN`: chosen on validation images, docs/experiments.md).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from fmnist.prepare.pixels import Mask, Plane

# 0 pixels on a 28-pixel object, so a dataset image keeps its frame
TURN_LIMIT = 20.0  # degrees: the largest turn looked for


TURN_MIN = 2.0  # degrees: a smaller turn is left alone


TURN_GAIN = 0.95  # a turn is clear when turning back shrinks the object's box to this share of
# its area or less: 0.35% of the first 10000 training images would be turned (their objects
# fill an upright box), a garment turned by 5 degrees shrinks to about 0.85


# its area or less: 0.35% of the first 10000 training images would be turned (their objects
# fill an upright box), a garment turned by 5 degrees shrinks to about 0.85
MIRROR_MIN = 0.9  # an object is its own mirror image when this share of its pixels, reflected
# across its best axis, lands on the object: tops, trousers, dresses, coats and bags score 0.94 to
# 0.97 on average, sandals, sneakers and ankle boots 0.64 to 0.80


# across its best axis, lands on the object: tops, trousers, dresses, coats and bags score 0.94 to
# 0.97 on average, sandals, sneakers and ankle boots 0.64 to 0.80
MIRROR_GAIN = 0.02  # ...and its axis is clearly tilted when the best one beats the upright one by
# this share (chosen on validation images: docs/experiments.md)


# this share (chosen on validation images: docs/experiments.md)
MIRROR_POINTS = 3000  # at most this many of the mask's pixels are reflected (evenly spaced)


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
