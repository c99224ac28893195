"""Step 4, the mask: which pixels are the object, and when none could be found.

The contrast above the background's threshold, opened by a 3x3 square on pictures of 100 pixels
or more (specks of noise or texture go), the largest connected component with every component
whose box lies within `NEAR` of its box (a sandal's straps, a trouser's two legs), holes filled.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import measure

from fmnist.data import SIDE
from fmnist.i18n import Text
from fmnist.prepare.background import ring
from fmnist.prepare.pixels import Mask, Plane, mask_box, slices_box

# threshold (only where the border is not perfectly flat: a clean picture is left exact)
NEAR = 0.15  # components whose box is within this share of the largest one's longest side of
# its box are kept with it


# inside the mask (chosen on validation images with a hard shadow: docs/experiments.md)
WHOLE = 0.95  # a box holding this share of a large picture's area: the object was not found


LARGE = 4 * SIDE  # pixels: a picture this long or longer is "large" (a 28x28 dataset image is
# its object)


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


def failure(mask: Mask, shape: tuple[int, ...]) -> str | None:
    """Why the object was not found, in words; None when it was. Nothing above the threshold,
    or, in a large picture, a box of almost all of it (`WHOLE`) with "object" on over a third of
    its border ring: noise or texture the background's own measure did not cover (a product
    photo cropped tight touches its border in places, not along it)."""
    if not mask.any():
        return Text("doubt.nothing")
    top, left, bottom, right = mask_box(mask)
    share = (bottom - top) * (right - left) / (mask.shape[0] * mask.shape[1])
    on_border = float(mask[ring(mask.shape)].mean())
    if max(shape[:2]) >= LARGE and share >= WHOLE and on_border > 1 / 3:
        return Text("doubt.everything", share=f"{share:.0%}", border=f"{on_border:.0%}")
    return None
