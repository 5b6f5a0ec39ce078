"""Pictures people look at: masks drawn over images (used in training overlays and diagnosis)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# one colour per class id (RGB); class 0 (background) is not drawn
PALETTE = np.array([[0, 0, 0], [255, 80, 80], [80, 200, 255], [255, 220, 60], [120, 255, 120],
                    [220, 120, 255], [255, 150, 40], [40, 160, 120]], dtype=np.uint8)

_CHANNEL_LUTS = [np.ascontiguousarray(PALETTE[np.arange(256) % len(PALETTE), c]) for c in range(3)]


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
    mask = np.asarray(mask)
    if mask.dtype != np.uint8 and mask.size and mask.min() >= 0 and mask.max() < 256:
        mask = mask.astype(np.uint8)  # OpenCV's look-up, blend and masked copy below work on bytes
    fg = (mask > 0).view(np.uint8)
    # only the classes' bounding box is blended and traced: a spine is a fraction of a slice
    x0, y0, w, h = cv2.boundingRect(fg)
    if w == 0:
        return rgb
    y1, x1 = y0 + h, x0 + w
    mask, fg, box = mask[y0:y1, x0:x1], fg[y0:y1, x0:x1], rgb[y0:y1, x0:x1]
    if mask.dtype == np.uint8:
        mask = np.ascontiguousarray(mask)
        present = np.flatnonzero(cv2.calcHist([mask], [0], None, [256], [0, 256]).ravel())  # np.bincount: 10x
        # one look-up per channel: twice as fast as a 3-channel look-up of the mask merged three times
        colours = cv2.merge([cv2.LUT(mask, lut) for lut in _CHANNEL_LUTS])
    else:  # class ids beyond a byte
        present = np.unique(mask)
        colours = PALETTE[mask.astype(np.int64) % len(PALETTE)]
    blended = cv2.addWeighted(box, 1 - alpha, colours, alpha, 0)
    done = cv2.copyTo(blended, fg, box)  # into the view (np.copyto with where= takes 40x as long)
    if done is not box:  # had OpenCV copied the view instead of writing into it
        box[...] = done
    if outline:
        for c in present:
            if c == 0:
                continue
            contours, _ = cv2.findContours((mask == c).view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE,
                                           offset=(x0, y0))
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


def label_style(height: int) -> tuple[float, int]:
    """OpenCV font scale and stroke thickness that read well on an image ``height`` px tall (0.5 and 1 at
    512 px, growing with the image so that labels keep their share of it)."""
    return max(0.5, height / 1024), max(1, round(height / 512))


def draw_labels(
    rgb: np.ndarray, labels: Sequence[tuple[Sequence[int], str, tuple[int, int, int]]], gap: int = 2
) -> list[tuple[int, int, int, int]]:
    """Draw each ``(anchor box (x0, y0, x1, y1), text, RGB colour)`` as text on a dark box beside its anchor
    (right of it, left when there is no room), moved down where needed so that no two label boxes overlap;
    a moved label gets a line to its anchor. Returns the label boxes drawn (x0, y0, x1, y1)."""
    h, w = rgb.shape[:2]
    scale, thick = label_style(h)
    font = cv2.FONT_HERSHEY_SIMPLEX
    pad = 2 * thick
    placed: list[tuple[int, int, int, int]] = []
    for (ax0, ay0, ax1, ay1), text, colour in sorted(labels, key=lambda lb: (lb[0][1] + lb[0][3]) / 2):
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
        bw, bh = tw + 2 * pad, th + base + 2 * pad
        x0 = ax1 + 4 if ax1 + 4 + bw <= w else max(0, ax0 - 4 - bw)
        x0 = min(x0, max(0, w - bw))
        want = int(round((ay0 + ay1) / 2 - bh / 2))
        y0 = min(max(0, want), max(0, h - bh))
        moved = True
        while moved:  # push below every label box it would overlap (labels come top to bottom)
            moved = False
            for px0, py0, px1, py1 in placed:
                if x0 < px1 and px0 < x0 + bw and y0 < py1 + gap and py0 < y0 + bh + gap:
                    y0, moved = py1 + gap, True
        box = (x0, y0, x0 + bw, y0 + bh)
        cv2.rectangle(rgb, box[:2], (box[2] - 1, box[3] - 1), (0, 0, 0), cv2.FILLED)
        if abs(y0 - want) > bh // 2:  # moved away from its disc: a line says which disc it names
            anchor_x = ax1 if x0 >= ax1 else ax0
            cv2.line(rgb, (x0 if x0 >= ax1 else x0 + bw, y0 + bh // 2), (anchor_x, (ay0 + ay1) // 2), colour,
                     thick, cv2.LINE_AA)
        cv2.putText(rgb, text, (x0 + pad, y0 + pad + th), font, scale, colour, thick, cv2.LINE_AA)
        placed.append(box)
    return placed


# zlib level 1 with the "up" filter: measured on diagnose overlays (512x512 and 512x640 RGB), about 30% faster
# to encode and 35-45% smaller than OpenCV's default (level 1, run-length strategy, "sub" filter)
PNG_PARAMS = (cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP)


# JPEG quality 90 with full-resolution colour (4:4:4; 4:2:0 smears 1-px coloured outlines and box edges):
# on 512x512 diagnose overlays about 6x faster to encode than the PNG above (0.8 vs 5 ms) and a third of its
# size, with outlines, lines and labels looking the same at 3x zoom
JPEG_PARAMS = (cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)
# file formats of pictures people look at: lossy and fast, or lossless
IMAGE_FORMATS = ("jpg", "png")


def save_image(rgb: np.ndarray, path) -> None:
    """``rgb`` (uint8) as a JPEG (``.jpg``, :data:`JPEG_PARAMS`) or PNG (``.png``), by ``path``'s suffix."""
    suffix = str(path).rsplit(".", 1)[-1].lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"{path}: save as one of {', '.join('.' + f for f in IMAGE_FORMATS)}")
    params = JPEG_PARAMS if suffix == "jpg" else PNG_PARAMS
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"{path}: could not be written")
