"""Pictures people look at: masks drawn over images (used in training overlays and diagnosis)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# one colour per class id (RGB); class 0 (background) is not drawn
PALETTE = np.array([[0, 0, 0], [255, 80, 80], [80, 200, 255], [255, 220, 60], [120, 255, 120],
                    [220, 120, 255], [255, 150, 40], [40, 160, 120]], dtype=np.uint8)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 3) or (C, H, W) float in [0, 1] or uint8 -> (H, W, 3) uint8."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.dtype != np.uint8:
        img = np.clip(img.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.stack([img] * 3, axis=-1) if img.ndim == 2 else img


def overlay_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.4, outline: bool = True) -> np.ndarray:
    """Class colours blended over the image, with class outlines so small structures stay visible."""
    rgb = to_rgb_uint8(image).copy()
    colours = PALETTE[np.asarray(mask, dtype=np.int64) % len(PALETTE)]
    fg = np.asarray(mask) > 0
    rgb[fg] = (rgb[fg] * (1 - alpha) + colours[fg] * alpha).astype(np.uint8)
    if outline:
        for c in np.unique(mask):
            if c == 0:
                continue
            contours, _ = cv2.findContours((mask == c).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(rgb, contours, -1, tuple(int(v) for v in PALETTE[int(c) % len(PALETTE)]), 1)
    return rgb


def comparison_grid(images: Sequence[np.ndarray], truths: Sequence[np.ndarray], preds: Sequence[np.ndarray]) -> np.ndarray:
    """Rows of [image | ground truth overlay | prediction overlay], stacked vertically."""
    rows = []
    for img, gt, pr in zip(images, truths, preds, strict=True):
        base = to_rgb_uint8(img)
        sep = np.full((base.shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([base, sep, overlay_mask(img, gt), sep, overlay_mask(img, pr)], axis=1))
    return np.concatenate(rows, axis=0)


def save_png(rgb: np.ndarray, path) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
