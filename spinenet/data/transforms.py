"""Augmentation and preprocessing, built from the data config with albumentations.

Training: resize (or pad + resize) to the model's size, horizontal flip, brightness, rotation and shift
(Sayed 2025: rotation 0-30 deg, brightness, horizontal flip, shift 0-20%). Validation and test: resize only.
CLAHE (Šušteršič 2022: clip 2.0, tiles 4x4) is an enhancement, applied to every split when configured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import albumentations as A
import cv2
import numpy as np

from spinenet.errors import ConfigError

RESIZE_MODES = ("resize", "pad")


def clahe_uint8(image: np.ndarray, clip: float = 2.0, tiles: Sequence[int] = (4, 4)) -> np.ndarray:
    """CLAHE on a uint8 image, gray or each channel alike (gray repeated to 3 channels stays gray, and gets
    what the gray image gets): the one CLAHE, for whole images (:func:`apply_clahe`) and disc crops
    (:func:`spinenet.roi.geometry.crop_roi`)."""
    op = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(int(tiles[0]), int(tiles[1])))
    image = np.ascontiguousarray(image)
    if image.ndim == 2:
        return op.apply(image)
    return np.stack([op.apply(np.ascontiguousarray(image[..., c])) for c in range(image.shape[-1])], axis=-1)


def apply_clahe(image: np.ndarray, clip: float = 2.0, tiles: Sequence[int] = (4, 4)) -> np.ndarray:
    """CLAHE on a float image in [0, 1] (gray or 3-channel); returns float32 in [0, 1]."""
    as_uint8 = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return clahe_uint8(as_uint8, clip, tiles).astype(np.float32) / 255.0


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """A float image with ``channels`` (1: gray ``(H, W)``; 3: ``(H, W, 3)``): gray repeated, color to gray."""
    if channels == 3 and image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=-1)
    if channels == 1 and image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.shape[-1] == 3 else image[..., 0]
    return image


def _size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or min(image_size) < 8:
        raise ConfigError(f"data.image_size must be [height, width] with both >= 8, got {list(image_size)}")
    return int(image_size[0]), int(image_size[1])


def _geometry(image_size: Sequence[int], resize_mode: str) -> list[A.BasicTransform]:
    h, w = _size(image_size)
    if resize_mode == "resize":
        return [A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)]
    if resize_mode == "pad":
        # keep the aspect ratio: scale the longer side to fit, then pad with zeros (background)
        return [
            A.LongestMaxSize(
                max_size_hw=(h, w), interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST
            ),
            A.PadIfNeeded(min_height=h, min_width=w, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
        ]
    raise ConfigError(f"data.resize_mode must be one of {list(RESIZE_MODES)}, got {resize_mode!r}")


@lru_cache(maxsize=256)
def _content_box(size_hw: tuple[int, int], image_size: tuple[int, int], resize_mode: str) -> tuple[int, ...]:
    ones = np.ones(size_hw, dtype=np.uint8)
    placed = A.Compose(_geometry(image_size, resize_mode))(image=ones, mask=ones)["mask"]
    rows, cols = np.flatnonzero(placed.any(1)), np.flatnonzero(placed.any(0))
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def content_box(size_hw: Sequence[int], image_size: Sequence[int], resize_mode: str = "resize") -> tuple[int, ...]:
    """``(top, left, height, width)``: where an image of ``size_hw`` lies in the model-size array that the
    evaluation transforms make of it (``resize``: all of it; ``pad``: the part that is not padding).

    Found by passing an all-ones mask of that size through the same transforms, so it is exact whatever
    rounding albumentations does.
    """
    h, w = _size(image_size)
    return _content_box((int(size_hw[0]), int(size_hw[1])), (h, w), resize_mode)


def build_transforms(
    image_size: Sequence[int], train: bool, augment: Mapping | None = None, resize_mode: str = "resize"
) -> A.Compose:
    """The albumentations pipeline for one split (augmentation only when ``train``)."""
    ops: list[A.BasicTransform] = list(_geometry(image_size, resize_mode))
    if train and augment:
        unknown = set(augment) - set(AUGMENT_KEYS)
        if unknown:
            raise ConfigError(f"data.augment: unknown keys {sorted(unknown)}; valid keys: {sorted(AUGMENT_KEYS)}")
        ops += _crop(augment, image_size) + _geometric(augment) + _photometric(augment)
    return A.Compose(ops)


# data.augment's keys, each 0 or null for off (what each does: conf/data/phantom_sagittal.yaml); the
# photometric ones apply each with probability 0.5
AUGMENT_KEYS = ("crop", "hflip", "rotate", "shift", "scale", "p_affine",
                "brightness", "contrast", "gamma", "intensity_curve", "blur")


def _crop(augment: Mapping, image_size: Sequence[int]) -> list[A.BasicTransform]:
    if not augment.get("crop"):
        return []
    # patch training: a random window of the resized image, so a finer resolution costs no more per step;
    # validation and test still see the whole image (the networks are fully convolutional)
    ch, cw = _size(augment["crop"])
    h, w = _size(image_size)
    if ch > h or cw > w:
        raise ConfigError(f"data.augment.crop {[ch, cw]} must fit inside data.image_size {[h, w]} (height, width)")
    return [A.RandomCrop(ch, cw)]


def _geometric(augment: Mapping) -> list[A.BasicTransform]:
    ops: list[A.BasicTransform] = []
    if augment.get("hflip"):
        ops.append(A.HorizontalFlip(p=float(augment["hflip"])))
    rotate, shift = float(augment.get("rotate") or 0), float(augment.get("shift") or 0)
    scale = float(augment.get("scale") or 0)
    if rotate > 0 or shift > 0 or scale > 0:
        ops.append(
            A.Affine(
                rotate=(-rotate, rotate),
                translate_percent=(-shift, shift),
                scale=(1 - scale, 1 + scale),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=float(augment.get("p_affine", 0.5)),
            )
        )
    return ops


def _photometric(augment: Mapping) -> list[A.BasicTransform]:
    ops: list[A.BasicTransform] = []
    brightness = float(augment.get("brightness") or 0)
    contrast = float(augment["contrast"]) if augment.get("contrast") is not None else brightness / 2
    if brightness > 0 or contrast > 0:
        ops.append(A.RandomBrightnessContrast(brightness_limit=brightness, contrast_limit=contrast, p=0.5))
    if augment.get("gamma"):
        g = float(augment["gamma"])
        if not 0 < g < 1:
            raise ConfigError(f"data.augment.gamma must be in (0, 1), got {g}")
        ops.append(A.RandomGamma(gamma_limit=(100 * (1 - g), 100 * (1 + g)), p=0.5))
    if augment.get("intensity_curve"):
        ops.append(RandomIntensityCurve(float(augment["intensity_curve"]), p=0.5))
    if augment.get("blur"):
        ops.append(A.GaussianBlur(sigma_limit=(0.1, float(augment["blur"])), p=0.5))
    return ops


class RandomIntensityCurve(A.ImageOnlyTransform):
    """A random monotone piecewise-linear intensity curve through ``knots`` evenly spaced points, each moved
    by up to ``jitter`` of the spacing (0 and 1 stay): what one MRI sequence shows bright another shows mid-gray
    (fat in T2 TSE against T2-SPACE), so a segmenter trained on one contrast learns shapes, not gray levels.
    The idea of MONAI's RandHistogramShift, drawn from albumentations' seeded generator. Float images in [0, 1]."""

    def __init__(self, jitter: float = 0.5, knots: int = 4, p: float = 0.5):
        super().__init__(p=p)
        if not 0 < jitter <= 1:
            raise ConfigError(f"data.augment.intensity_curve must be in (0, 1], got {jitter}")
        self.jitter, self.knots = float(jitter), int(knots)

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        x = np.linspace(0.0, 1.0, self.knots + 2)
        step = x[1] - x[0]
        moved = x[1:-1] + self.random_generator.uniform(-self.jitter, self.jitter, self.knots) * step
        return {"x": x, "y": np.concatenate([[0.0], np.sort(moved), [1.0]])}

    def apply(self, img: np.ndarray, x: np.ndarray, y: np.ndarray, **params) -> np.ndarray:
        return np.interp(img, x, y).astype(img.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("jitter", "knots")

