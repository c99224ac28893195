"""Step 5, shadows: a shadow beside the object cut off, a garment's own dim parts kept.

A part of the mask beyond the reach of the object's bright core is a shadow when it fades in (a
soft shadow: `soft`) or lies where a copy of the object moved by as far as the mask reaches past it
falls (a hard shadow: `cast_copy`). Both rules were chosen on validation images of shadows and of
clean pictures (docs/experiments.md): a shadow's parts rise 0.23-0.47 of the way to their peak
within the reach, a garment's dim parts 0.44-1.1.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from fmnist.prepare.mask import filled
from fmnist.prepare.pixels import Mask, Plane, mask_box, slice_of

CORE_SHARE = 0.35  # of the object's brightest contrast: its core, which no soft shadow reaches


CORE_REACH = 0.02  # of the core's longest side: how far beyond it the object's faint edges go,
# and how far in from its edge an object's own part has reached its level


# and how far in from its edge an object's own part has reached its level
SOFT = 0.5  # a part beyond that reach is a shadow when its contrast, `CORE_REACH` in from its
# edge, has risen less than this share of the way from its edge to its peak (validation images:
# a shadow's parts 0.23-0.47, a garment's dim parts 0.44-1.1; docs/experiments.md)


# edge, has risen less than this share of the way from its edge to its peak (validation images:
# a shadow's parts 0.23-0.47, a garment's dim parts 0.44-1.1; docs/experiments.md)
CAST_COVER = 0.7  # ...or, a hard shadow, when this share of it is covered by a copy of the object


CAST_SPILL = 0.1  # moved by as far as the mask reaches past it, that copy all but this share
# inside the mask (chosen on validation images with a hard shadow: docs/experiments.md)


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
