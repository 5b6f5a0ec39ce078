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
