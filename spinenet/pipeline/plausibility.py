"""Does a segmentation look like the declared view? Checked before ``diagnose`` names any level.

Levels are counted from the bottom disc, so a segmentation that is not a sagittal spine (an axial slice
given as sagittal, noise, another body part) would still get levels and findings. These checks say "I don't
know" instead: the image is reported as ``implausible for <view>`` with the reason, and no level is named.

Sagittal (discs as found by :func:`spinenet.roi.geometry.disc_boxes`, components that cannot be discs and
discs off the spine's curve already left out, by :func:`sagittal_discs`):

- 1 to :data:`SAGITTAL_MAX_DISCS` discs (a lumbar field of view shows L5-S1 up to the lower thoracic spine);
- stacked along one axis: consecutive discs (by centroid row) are apart vertically by at least half the
  thinner one's height, and shifted sideways by at most :data:`MAX_STEP_SLOPE` times their vertical distance (lordosis
  tilts the column, it does not lay it down);
- a vertebra between consecutive discs (on the segment joining their centroids), or above and below a single
  disc;
- a spinal canal (when the segmenter has a ``canal`` class).

Axial: exactly one disc region (components under a fifth of the largest are specks and not counted) and a
canal (when the segmenter has a ``canal`` class).

Thresholds were checked on the ground-truth masks of SPIDER's T2-SPACE slices (all plausible) and the
phantom's (sagittal plausible; axial given as sagittal implausible); see tests/test_diagnose.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from spinenet.roi.geometry import Box
from spinenet.roi.levels import off_the_spine, plausible_sagittal_discs

SAGITTAL_MAX_DISCS = 10  # SPIDER's T2-SPACE ground truth shows up to 10 (T8-T9 .. L5-S1, the top ones cut)
MAX_STEP_SLOPE = 1.5  # sideways shift / vertical distance between consecutive discs (up to 0.96 in SPIDER, 1.2 in the phantom)
MIN_VERTEBRA_BETWEEN = 0.25  # fraction of the centroid-to-centroid segment that is vertebra
MIN_CANAL_PIXELS = 20
# the canal runs behind the discs: on one side of the stack at every disc's height (all 175 plausible SPIDER
# ground-truth slices agree at >= 6 of 7 discs, where the band of an end disc can catch a curve of the canal)
MIN_CANAL_SIDE_AGREEMENT = 0.8
# how far from a disc's centre its canal is looked for, in disc widths (the canal touches the disc's back)
CANAL_REACH = 1.5
SPECK_FRACTION = 0.2


def merge_fragments(boxes: Sequence[Box]) -> list[Box]:
    """Side-by-side pieces of one sagittal disc as one box (top to bottom).

    On parasagittal slices the canal can cut a disc in two (SPIDER's own masks do); two components whose boxes
    overlap or touch vertically and lie side by side (gap under the taller height, little horizontal overlap) are one
    disc: counted as two, every level above them would be misnamed. Consecutive discs never overlap vertically
    (a vertebral body lies between them).
    """
    out = sorted(boxes, key=lambda b: b.cx)
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                a, b = out[i], out[j]
                overlap = min(a.y1, b.y1) - max(a.y0, b.y0)
                gap = max(a.x0, b.x0) - min(a.x1, b.x1)
                if overlap > -0.5 * min(a.height, b.height) and -0.25 * min(a.width, b.width) <= gap <= max(a.height, b.height):
                    area = a.area + b.area
                    out[i] = Box(min(a.x0, b.x0), min(a.y0, b.y0), max(a.x1, b.x1), max(a.y1, b.y1), area,
                                 (a.cx * a.area + b.cx * b.area) / area, (a.cy * a.area + b.cy * b.area) / area)
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(out, key=lambda b: (b.cy, b.cx))


def sagittal_discs(
    components: Sequence[Box], mask: np.ndarray, classes: Sequence[str]
) -> tuple[list[Box], list[dict[str, Any]], str | None]:
    """The discs levels are named on, from the disc class's ``components``
    (:func:`~spinenet.roi.geometry.disc_boxes`), with the components left out and why, and why ``mask`` is no
    plausible sagittal spine (None when it is): components that cannot be discs left out
    (:func:`~spinenet.roi.levels.plausible_sagittal_discs`), pieces of one disc merged
    (:func:`merge_fragments`), then discs off the curve of the others left out
    (:func:`~spinenet.roi.levels.off_the_spine`): a false disc beside the column (bright fat or bowel on
    another MRI contrast) would otherwise make the whole slice implausible, or rename every level below it."""
    boxes, rejected = plausible_sagittal_discs(components)
    boxes = merge_fragments(boxes)
    off = off_the_spine(boxes)
    rejected += [{"box": list(b.as_tuple()), "area": float(b.area), "reason": off[i]}
                 for i, b in enumerate(boxes) if i in off]
    boxes = [b for i, b in enumerate(boxes) if i not in off]
    return boxes, rejected, sagittal_implausibility(mask, boxes, classes)


def _class_id(classes: Sequence[str], name: str) -> int | None:
    return list(classes).index(name) if name in classes else None


def _vertebra_between(mask: np.ndarray, a: Box, b: Box, vertebra: int) -> float:
    """Fraction of points on the segment between two disc centroids that are vertebra (3 px wide band)."""
    n = max(int(abs(b.cy - a.cy)), 2)
    ys = np.linspace(a.cy, b.cy, n).round().astype(int)
    xs = np.linspace(a.cx, b.cx, n).round().astype(int)
    h, w = mask.shape
    hit = np.zeros(n, bool)
    for dx in (-1, 0, 1):
        hit |= mask[np.clip(ys, 0, h - 1), np.clip(xs + dx, 0, w - 1)] == vertebra
    return float(hit.mean())


def _vertebra_beside(mask: np.ndarray, box: Box, vertebra: int, above: bool) -> bool:
    """Vertebra pixels in the band of the disc's columns, two disc heights above (or below) it."""
    reach = 2 * max(box.height, 2)
    rows = slice(max(0, box.y0 - reach), box.y0) if above else slice(box.y1, min(mask.shape[0], box.y1 + reach))
    band = mask[rows, box.x0 : box.x1]
    return band.size > 0 and float((band == vertebra).mean()) >= 0.1


def sagittal_implausibility(mask: np.ndarray, discs: Sequence[Box], classes: Sequence[str]) -> str | None:
    """Why ``mask`` with these ``discs`` cannot be a sagittal lumbar slice, or None when it can."""
    n = len(discs)
    if n == 0:
        return None  # reported as "no disc found"
    if n > SAGITTAL_MAX_DISCS:
        return f"{n} disc regions; a sagittal lumbar slice shows 1-{SAGITTAL_MAX_DISCS}"
    order = sorted(discs, key=lambda b: b.cy)
    for a, b in zip(order, order[1:], strict=False):
        dy, dx = b.cy - a.cy, abs(b.cx - a.cx)
        if dy < 0.5 * min(a.height, b.height):
            return (f"discs side by side, not stacked (centroids ({a.cx:.0f}, {a.cy:.0f}) and ({b.cx:.0f}, "
                    f"{b.cy:.0f}) px are {dy:.0f} px apart vertically)")
        if dx > MAX_STEP_SLOPE * dy:
            return (f"discs not stacked along the spine (consecutive centroids shifted {dx:.0f} px sideways over "
                    f"{dy:.0f} px vertically)")
    vertebra = _class_id(classes, "vertebra")
    if vertebra is not None:
        for a, b in zip(order, order[1:], strict=False):
            if _vertebra_between(mask, a, b, vertebra) < MIN_VERTEBRA_BETWEEN:
                return (f"no vertebra between the discs at rows {a.cy:.0f} and {b.cy:.0f} px")
        if n == 1 and not (_vertebra_beside(mask, order[0], vertebra, True)
                           and _vertebra_beside(mask, order[0], vertebra, False)):
            return "a single disc without a vertebra above and below it"
    canal = _class_id(classes, "canal")
    if canal is not None and int((mask == canal).sum()) < MIN_CANAL_PIXELS:
        return "no spinal canal segmented"
    if canal is not None:
        sides = canal_sides(mask, order, canal)
        if len(sides) >= 2 and max(sides.count(1), sides.count(-1)) < MIN_CANAL_SIDE_AGREEMENT * len(sides):
            return (f"the canal is not on one side of the discs (on one side at {sides.count(1)} discs, on the "
                    f"other at {sides.count(-1)})")
    return None


def canal_sides(mask: np.ndarray, discs: Sequence[Box], canal: int) -> list[int]:
    """For each disc with canal pixels beside it: +1 if the canal lies to its right, -1 to its left.

    Only the canal pixels in the disc's row band (one disc height above and below its centre) and within
    :data:`CANAL_REACH` disc widths of its centre count: the canal runs right behind the disc, while a
    U-Net trained on one MRI contrast can mark the bright edge of the body or bowel far in front of the spine
    as canal on another."""
    sides = []
    w = mask.shape[1]
    for b in discs:
        reach = CANAL_REACH * max(b.width, 1)
        x0 = max(0, int(b.cx - reach))
        band = mask[max(0, int(b.cy - b.height)):int(b.cy + b.height) + 1, x0:min(w, int(b.cx + reach) + 1)] == canal
        xs = np.nonzero(band)[1] + x0
        if xs.size >= 5:
            sides.append(1 if xs.mean() > b.cx else -1)
    return sides


def axial_implausibility(mask: np.ndarray, boxes: Sequence[Box], classes: Sequence[str]) -> str | None:
    """Why ``mask`` with these disc ``boxes`` cannot be an axial slice through one disc, or None when it can."""
    if not boxes:
        return None  # reported as "no disc found"
    largest = max(b.area for b in boxes)
    regions = [b for b in boxes if b.area >= SPECK_FRACTION * largest]
    if len(regions) != 1:
        return f"{len(regions)} separate disc regions; an axial slice through a disc shows one"
    canal = _class_id(classes, "canal")
    if canal is not None and int((mask == canal).sum()) < MIN_CANAL_PIXELS:
        return "no spinal canal segmented"
    return None
