"""Masks from a trained segmenter, as a ``mask_source`` of :func:`spinenet.roi.mask_crops.crop_dataset`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from spinenet.errors import ConfigError
from spinenet.roi.mask_crops import MaskSource


def segmenter_mask_source(checkpoint: str | Path, device: str = "cpu") -> tuple[MaskSource, list[str]]:
    """A ``mask_source`` for :func:`crop_dataset` that predicts masks with a trained segmenter.

    The checkpoint's own data settings are applied (channels, CLAHE, ``image_size``, ``resize_mode``); the
    logits are mapped back onto the source image (undoing the padding of ``resize_mode=pad``) and upsampled
    bilinearly before the arg-max. Returns the source and the segmenter's class names.
    """
    import torch  # lazy: start-up (spinenet roi without --segmenter needs no torch)
    import torch.nn.functional as F

    from spinenet.data.transforms import apply_clahe, build_transforms  # lazy: start-up (albumentations)
    from spinenet.tasks.evaluate import model_from_checkpoint  # lazy: start-up (lightning, hydra)

    module, saved = model_from_checkpoint(checkpoint)
    if saved.get("task", "segmentation") != "segmentation":
        raise ConfigError(f"--segmenter {checkpoint}: a {saved.get('task')} checkpoint, not a segmenter")
    module = module.to(device)
    data = saved.data
    size = tuple(int(v) for v in data.image_size)
    in_channels, enhance = int(data.get("in_channels", 1)), data.get("clahe")
    transform = build_transforms(size, train=False, resize_mode=data.get("resize_mode", "resize"))
    class_names = [str(c) for c in data.dataset.get("class_names") or []]

    def predict(image: np.ndarray, row: Mapping[str, Any]) -> np.ndarray:
        img = np.asarray(image, np.float32)
        if in_channels == 3 and img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        elif in_channels == 1 and img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        if enhance:
            img = apply_clahe(img, **enhance)
        h, w = img.shape[:2]
        # a mask of ones marks where the image lands after resizing (and padding)
        out = transform(image=img, mask=np.ones((h, w), np.uint8))
        x = np.asarray(out["image"], np.float32)
        x = x[None, None] if x.ndim == 2 else x.transpose(2, 0, 1)[None]
        with torch.no_grad():
            logits = module(torch.from_numpy(np.ascontiguousarray(x)).to(device)).float()
        ys, xs = np.nonzero(np.asarray(out["mask"]))
        logits = logits[..., ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return logits.argmax(1)[0].cpu().numpy()

    return predict, class_names
