"""Boxes around discs and the crops cut from them (Šušteršič 2022, steps 1-3 of :mod:`spinenet.roi`).

Boxes are half-open (``image[y0:y1, x0:x1]``); the margin grows width and height each by ``margin``, rounded
outwards to whole pixels and clipped at the image edge; a crop is resized and then enhanced with CLAHE.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from spinenet.contract import clahe_setting, margin_pair
from spinenet.errors import ConfigError, DataError

DEFAULT_CLAHE: dict[str, Any] = {"clip": 2.0, "tiles": (4, 4)}


@dataclass(frozen=True)
class Box:
    """Pixel box, half-open: ``image[y0:y1, x0:x1]``; ``area`` = disc pixels, ``(cx, cy)`` their centroid."""

    x0: int
    y0: int
    x1: int
    y1: int
    area: float = 0.0
    cx: float = field(default=math.nan)
    cy: float = field(default=math.nan)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)



# ---------------------------------------------------------------------------------------------------------
# boxes
# ---------------------------------------------------------------------------------------------------------
def disc_boxes(mask: np.ndarray, disc_class: int = 1, min_area: int = 20) -> list[Box]:
    """One box per outer contour of ``mask == disc_class``, top → bottom (by centroid row).

    ``area`` counts the component's disc pixels (holes excluded); contours with fewer than ``min_area``
    pixels (segmentation specks) are dropped. ``cv2.contourArea`` is not used for this: it measures the
    polygon through the boundary pixel centres, which for a 4-pixel-thin sagittal disc is half its pixels.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise DataError(f"disc_boxes: expected a 2-D class-id mask, got shape {m.shape}")
    binary = (m == disc_class).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for c in contours:
        x, y, w, h = cv2.boundingRect(c)
        filled = np.zeros((h, w), np.uint8)
        cv2.drawContours(filled, [c], -1, 1, thickness=cv2.FILLED, offset=(-x, -y))
        component = filled & binary[y : y + h, x : x + w]
        moments = cv2.moments(component, binaryImage=True)
        area = moments["m00"]
        if area < min_area:
            continue
        boxes.append(
            Box(x, y, x + w, y + h, float(area), x + moments["m10"] / area, y + moments["m01"] / area)
        )
    return sorted(boxes, key=lambda b: (b.cy, b.cx))


def _edge(value: float, up: bool) -> int:
    value = round(value, 6)  # 0.1 * 40 / 2 must be 2, not 2.0000000000000004 rounded up to 3
    return math.ceil(value) if up else math.floor(value)


def enlarge_box(box: Box, margin: float | Sequence[float] = 0.10, image_shape: Sequence[int] | None = None) -> Box:
    """Grow width and height by ``margin`` each (``margin/2`` per side), outwards to whole pixels, clipped.

    ``margin`` is one number or ``[width, height]`` (e.g. third-party crops that show more above and below
    the disc than beside it). ``image_shape`` is ``(H, W, ...)``; without it the box is not clipped.
    """
    mx, my = margin_pair(margin)
    dx, dy = mx * box.width / 2, my * box.height / 2
    x0, y0 = _edge(box.x0 - dx, up=False), _edge(box.y0 - dy, up=False)
    x1, y1 = _edge(box.x1 + dx, up=True), _edge(box.y1 + dy, up=True)
    if image_shape is not None:
        h, w = int(image_shape[0]), int(image_shape[1])
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    return Box(x0, y0, x1, y1, box.area, box.cx, box.cy)


def square_box(box: Box, image_shape: Sequence[int] | None = None) -> Box:
    """Extend the shorter side symmetrically to a square (keeps the disc's aspect at resize), clipped."""
    side = max(box.width, box.height)
    x0 = box.x0 - (side - box.width) // 2
    y0 = box.y0 - (side - box.height) // 2
    x1, y1 = x0 + side, y0 + side
    if image_shape is not None:
        h, w = int(image_shape[0]), int(image_shape[1])
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    return Box(x0, y0, x1, y1, box.area, box.cx, box.cy)


# ---------------------------------------------------------------------------------------------------------
# crops
# ---------------------------------------------------------------------------------------------------------
def _as_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.floating):
        return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise DataError(f"crop_roi: expected a float image in [0, 1] or uint8, got {img.dtype}")


def crop_roi(
    image: np.ndarray,
    box: Box | Sequence[int],
    size: Sequence[int] | None = (64, 64),
    clahe: Mapping[str, Any] | None = DEFAULT_CLAHE,
    as_float: bool = False,
) -> np.ndarray:
    """Crop ``image[y0:y1, x0:x1]``, resize to ``size`` = (height, width) and apply CLAHE.

    ``image``: float in [0, 1] (as ``read_image`` returns it) or uint8, gray ``(H, W)`` or ``(H, W, 3)``
    (CLAHE then works on each channel alike, :func:`spinenet.data.transforms.clahe_uint8`). Returns uint8, or
    float32 in [0, 1] with ``as_float``.
    ``size=None`` keeps the crop's size; ``clahe=None`` skips the enhancement.
    """
    x0, y0, x1, y1 = box.as_tuple() if isinstance(box, Box) else tuple(int(v) for v in box)
    img = _as_uint8(image)
    crop = img[max(0, y0) : y1, max(0, x0) : x1]
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise DataError(f"crop_roi: box {(x0, y0, x1, y1)} is empty inside an image of shape {img.shape[:2]}")
    if size is not None:
        h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        shrink = crop.shape[0] * crop.shape[1] >= h * w
        crop = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if clahe is not None:
        from spinenet.data.transforms import clahe_uint8  # lazy: start-up (albumentations)

        setting = clahe_setting(clahe, "roi.clahe") or clahe_setting(DEFAULT_CLAHE, "roi.clahe")
        crop = clahe_uint8(crop, **setting)
    return crop.astype(np.float32) / 255.0 if as_float else crop


def size_pair(size: Sequence[int] | int) -> tuple[int, int]:
    s = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)
    if len(s) != 2 or min(s) < 1:
        raise ConfigError(f"roi.size: expected [height, width] >= 1, got {size!r}")
    return s  # type: ignore[return-value]

