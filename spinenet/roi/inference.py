"""Masks from a trained segmenter, as a ``mask_source`` of :func:`spinenet.roi.mask_crops.crop_dataset`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from spinenet.errors import ConfigError
from spinenet.roi.mask_crops import MaskSource


def segmenter_mask_source(checkpoint: str | Path, device: str = "cpu") -> tuple[MaskSource, list[str]]:
    """A ``mask_source`` for :func:`crop_dataset` that predicts masks with a trained segmenter.

    Any model file :func:`spinenet.loading.load_model` opens (checkpoint, ensemble, export). Its contract's
    preprocessing is applied (channels, CLAHE, image size, resize mode); the logits are mapped back onto the
    source image (undoing the padding of ``resize_mode=pad``) and upsampled bilinearly before the arg-max
    (:func:`spinenet.contract.masks_from_logits`). Returns the source and the segmenter's class names.
    """
    import torch  # lazy: start-up (spinenet roi without --segmenter needs no torch)

    from spinenet.contract import TaskKind, masks_from_logits
    from spinenet.loading import load_model  # lazy: start-up (lightning, hydra)

    model, contract = load_model(checkpoint, device)
    if contract.task is not TaskKind.SEGMENTATION:
        raise ConfigError(f"--segmenter {checkpoint}: a {contract.task} model, not a segmenter")
    class_names = list(contract.classes)

    def predict(image: np.ndarray, row: Mapping[str, Any]) -> np.ndarray:
        x, regions = contract.preprocess([image])
        with torch.no_grad():
            return masks_from_logits(model(x), [image], regions)[0]

    return predict, class_names
