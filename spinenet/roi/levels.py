"""Disc levels on sagittal slices, counted bottom-up from the sacrum (step 4 of :mod:`spinenet.roi`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from spinenet.errors import ConfigError
from spinenet.roi.geometry import Box

LUMBAR_LEVELS: tuple[str, ...] = ("L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2")  # bottom-up
THORACIC_LEVELS: tuple[str, ...] = ("T12-L1",) + tuple(f"T{i}-T{i + 1}" for i in range(11, 0, -1))


def level_names(n: int, upper: str = "thoracic") -> list[str]:
    """Names of ``n`` discs counted from the bottom (index 0 = lowest = L5-S1)."""
    if upper not in ("thoracic", "index"):
        raise ConfigError(f"roi.upper_levels: choose thoracic or index, got {upper!r}")
    named = LUMBAR_LEVELS + (THORACIC_LEVELS if upper == "thoracic" else ())
    return [named[k] if k < len(named) else f"disc_{k + 1}" for k in range(n)]


def plausible_sagittal_discs(
    boxes: Sequence[Box], min_aspect: float = 1.0, min_area_fraction: float = 0.2
) -> tuple[list[Box], list[dict[str, Any]]]:
    """Segmented components that can be discs on a sagittal slice, and the others with the reason.

    Levels are counted from the bottom, so one false component below L5-S1 renames every disc. A disc seen
    from the side is wider than tall: components with ``width / height < min_aspect`` go (on SPIDER's
    mid-sagittal slices a U-Net trained on T2-SPACE marked tall strips behind the canal as disc), and so do
    specks under ``min_area_fraction`` of the median area of the wide ones.
    """
    wide = [b for b in boxes if b.width >= min_aspect * b.height]
    typical = float(np.median([b.area for b in wide])) if wide else 0.0
    kept, rejected = [], []
    for b in boxes:
        if b.width < min_aspect * b.height:
            why = f"taller than wide ({b.width}x{b.height} px)"
        elif b.area < min_area_fraction * typical:
            why = f"area {b.area:.0f} px < {min_area_fraction:g} x the median disc ({typical:.0f} px)"
        else:
            kept.append(b)
            continue
        rejected.append({"box": list(b.as_tuple()), "area": float(b.area), "reason": why})
    return kept, rejected


def assign_levels(boxes: Sequence[Box], upper: str = "thoracic") -> list[str]:
    """Level of each box (same order as ``boxes``), bottom-up: the lowest centroid is L5-S1."""
    order = sorted(range(len(boxes)), key=lambda i: -boxes[i].cy)  # bottom first
    names = level_names(len(boxes), upper)
    out = [""] * len(boxes)
    for rank, i in enumerate(order):
        out[i] = names[rank]
    return out


# Numbering discs by position when their count differs from the graded discs (``spinenet data grade-crops``).
# Distances are in units of the slice's own disc spacing; thresholds checked on the 67 SPIDER mid-sagittal
# slices whose true disc positions are known (their discs are in disc_crops/).
OFF_AXIS = 0.4  # sideways from the curve through the other discs (true discs: at most 0.17)
SAME_DISC = 0.6  # closer detections are pieces of one disc or a false one (true neighbours: at least 0.74 apart)
SAME_ROW = 0.35  # ... and so are detections side by side (true neighbours: at least 0.7 apart vertically)
STEP_TOLERANCE = 0.3  # a gap is a whole number of spacings within this, else a missed disc there is uncertain
# SPIDER grades the discs whose centre is about inside the image: its top graded disc lies 0.25-0.92 spacings
# below the top edge on those 67 slices, but a disc about at the edge can be graded or not (one slice looked at) (and spacing shrinks
# up the spine), so a disc that would lie within EDGE_TOLERANCE spacings of the edge leaves the count uncertain,
# and so do more than MAX_ABOVE discs missed above the top one found (too far to count by extrapolated spacing)
EDGE_TOLERANCE = 0.4
MAX_ABOVE = 1
MIN_DISCS_FOR_SPACING = 3


def off_the_spine(boxes: Sequence[Box]) -> dict[int, str]:
    """Boxes (by index) that lie sideways off the spine, with the reason: a curve x(y) (quadratic, for the
    lordosis) is fitted through the centres and the one furthest from it dropped, until every one left lies
    within :data:`OFF_AXIS` disc spacings of it (the median centre-to-centre step). Needs four boxes: with
    fewer, no curve tells the spine from an outlier."""
    n = len(boxes)
    if n < 4:
        return {}
    order = sorted(range(n), key=lambda i: -boxes[i].cy)  # bottom first
    xy = np.array([[boxes[i].cx, boxes[i].cy] for i in order], float)
    spacing = float(np.median(np.hypot(*np.diff(xy, axis=0).T)))
    out: dict[int, str] = {}
    on = list(range(n))
    while len(on) >= 4:
        fit = np.polyfit(xy[on, 1], xy[on, 0], 2)
        off = np.abs(np.polyval(fit, xy[on, 1]) - xy[on, 0])
        worst = int(np.argmax(off))
        if off[worst] <= OFF_AXIS * spacing:
            break
        out[order[on[worst]]] = (f"{off[worst]:.0f} px sideways from the curve of the other discs "
                                 f"(spacing {spacing:.0f} px): not on the spine")
        del on[worst]
    return out


def number_discs(boxes: Sequence[Box], n_graded: int) -> tuple[list[int | None], list[str]]:
    """Disc number (1 = L5-S1, SPIDER's ``IVD label``) of each sagittal disc box, given that the slice's
    discs ``1..n_graded`` were graded; ``None`` with the reason where the number is uncertain.

    :func:`assign_levels` ranks the discs from the bottom, right only when none is missed or extra. This
    places them by position instead: a detection off the curve of the others is not a disc; detections
    closer than a disc spacing are one disc in pieces (or a false one): left out, but they hold one place; a
    gap of two or three spacings holds missed discs; and the image's top edge says how many graded discs lie
    above the top one found (a disc whose centre is in the image is graded), so the discs missed below it
    (L5-S1 missed, say) are ``n_graded`` minus those found and those above. A gap that is no whole number of
    spacings, a disc that would lie about at the top edge, or more than :data:`MAX_ABOVE` discs above the top
    one leave the whole slice unnumbered. Numbers below 1 (an extra disc under L5-S1) are left out.
    """
    n = len(boxes)
    if n == 0:
        return [], []
    order = sorted(range(n), key=lambda i: -boxes[i].cy)  # bottom first
    if n < MIN_DISCS_FOR_SPACING:
        if n == n_graded:
            return [order.index(i) + 1 for i in range(n)], [""] * n
        return [None] * n, [f"{n} disc(s) found, {n_graded} graded: too few to place by their spacing"] * n
    xy = np.array([[boxes[i].cx, boxes[i].cy] for i in order], float)
    spacing = float(np.median(np.hypot(*np.diff(xy, axis=0).T)))
    reasons = [""] * n
    off_spine = off_the_spine(boxes)
    for i, why in off_spine.items():
        reasons[i] = why
    on = [j for j in range(n) if order[j] not in off_spine]  # positions in `order` still taken for discs

    slots: list[list[int]] = []  # detections holding one disc place each, bottom-up
    for j in on:
        step = xy[j] - xy[slots[-1][-1]] if slots else None
        if step is not None and (np.hypot(*step) < SAME_DISC * spacing or abs(step[1]) < SAME_ROW * spacing):
            slots[-1].append(j)
        else:
            slots.append([j])
    areas = np.array([max(boxes[i].area, 1.0) for i in order])
    centres = np.array([np.average(xy[s], axis=0, weights=areas[s]) for s in slots])
    for s in slots:
        if len(s) > 1:
            for j in s:
                reasons[order[j]] = (f"{len(s)} detections closer than a disc spacing ({spacing:.0f} px): one "
                                     "disc in pieces or a false one")

    def unnumbered(why: str) -> tuple[list[int | None], list[str]]:
        return [None] * n, [r or why for r in reasons]

    if len(centres) < 2:
        return unnumbered("fewer than two disc places left: no spacing to place them by")
    gaps = np.hypot(*np.diff(centres, axis=0).T)
    mids = (centres[1:, 1] + centres[:-1, 1]) / 2
    per_step = gaps / np.maximum(np.round(gaps / spacing), 1)
    # spacing shrinks up the spine (thoracic discs are closer): a straight line through the per-step gaps
    local = np.polyfit(mids, per_step, 1) if len(gaps) >= 3 else np.array([0.0, float(np.median(per_step))])
    ratio = gaps / np.polyval(local, mids)
    steps = np.round(ratio)
    for r, g, (a, b) in zip(ratio, gaps, zip(centres[:-1, 1], centres[1:, 1], strict=True), strict=True):
        if round(r) < 1 or abs(r - round(r)) > STEP_TOLERANCE:
            return unnumbered(f"the gap of {g:.0f} px between the discs at rows {a:.0f} and {b:.0f} is {r:.2f} "
                              "disc spacings: whether a disc was missed there is uncertain")
    place = np.concatenate([[0], np.cumsum(steps)]).astype(int)  # bottom slot = 0
    places = int(place[-1]) + 1
    top_room = centres[-1, 1] / float(np.polyval(local, centres[-1, 1]))  # top edge, in spacings above the top disc
    top_unsure = round(top_room) >= 1 and abs(top_room - round(top_room)) < EDGE_TOLERANCE
    above = max(int(np.ceil(top_room - EDGE_TOLERANCE)) - 1, 0)  # discs whose centre would lie clearly inside
    if top_unsure or above > MAX_ABOVE:
        return unnumbered(f"the top disc is {top_room:.2f} disc spacings below the image's top edge: how many "
                          "graded discs lie above it is uncertain")
    missed_below = n_graded - places - above
    if missed_below < 0 and places <= n_graded:
        return unnumbered(f"{places} disc places found and room for {above} more above the top one, "
                          f"but {n_graded} graded")
    numbers: list[int | None] = [None] * n
    for s, p in zip(slots, place, strict=True):
        number = int(p) + 1 + missed_below
        for j in s:
            if number < 1:
                reasons[order[j]] = reasons[order[j]] or (
                    f"below L5-S1: disc {n_graded - above} of {n_graded} is the top one found")
            elif len(s) == 1:
                numbers[order[j]] = number
    return numbers, reasons
