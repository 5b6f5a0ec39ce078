"""Segmentation metrics accumulated over a whole data set (DDP-synced by torchmetrics).

:class:`SegmentationMetrics` keeps two kinds of state, both summed across processes:

- the multiclass confusion matrix over every pixel seen (rows: target class, columns: predicted class),
  from which per-class Dice, IoU, precision, recall, their means and pixel accuracy follow
  (Sayed 2025 eq. 7, 8, 11–14);
- per image and class, the Dice of that image, summed with a count, for the per-image mean Dice that
  papers averaging over images (e.g. Šušteršič 2022) report.

Empty classes (:data:`EMPTY_CLASS_POLICY`, also returned by ``compute()`` so it lands in the metrics JSON):

- data set: a score whose denominator is 0 is NaN — Dice and IoU of a class that is neither in the targets
  nor predicted anywhere, precision of a class never predicted, recall of a class absent from the targets.
  NaN classes are left out of the means; a mean with no class left is 1.0 for Dice and IoU (nothing to
  find, nothing found; the rule of :mod:`spinenet.ensemble.objectives`) and NaN for precision and recall.
- per image: a class absent from both the image's target and its prediction is skipped for that image
  (it neither counts as 1 nor as 0); a class predicted in an image whose target lacks it, or missed,
  counts with Dice 0. A class skipped in every image is NaN.

Resolution (:data:`RESOLUTION_NOTE`): the test split (and ``spinenet eval``) is scored at each image's own
size, as nnU-Net reports: the logits are cropped to the image (padding of ``resize_mode: pad`` removed),
resampled bilinearly to the image's size (:func:`to_native_resolution`), and compared with the mask read
from its file. The same figures at the model's resolution keep their names with :data:`MODEL_RES_SUFFIX`.
Validation is scored at the model's resolution only (cheaper; it picks the epoch).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from spinenet.errors import ConfigError

__all__ = ["EMPTY_CLASS_POLICY", "MODEL_RES_SUFFIX", "RESOLUTION_NOTE", "SegmentationMetrics", "flatten_metrics",
           "scores_from_confusion", "to_native_resolution"]

EMPTY_CLASS_POLICY = (
    "data-set scores (dice, iou, precision, recall, miou, dice_mean_fg, accuracy) come from one "
    "confusion matrix summed over all pixels of all images; a score with a zero denominator (e.g. a class "
    "neither in the targets nor predicted) is NaN and left out of the means; a Dice/IoU mean with no "
    "class left is 1.0. "
    "Per-image Dice (dice_per_image, dice_mean_fg_per_image): an image where a class is absent from both "
    "target and prediction is skipped for that class; predicted-but-absent or missed classes count as 0."
)

MODEL_RES_SUFFIX = "_model_res"
RESOLUTION_NOTE = (
    "test metrics are computed at each image's own size: logits cropped to the image (padding removed), "
    "resampled bilinearly to its size, argmax, against the mask file as stored; keys ending in "
    f"'{MODEL_RES_SUFFIX}' are the same metrics at the model's input size (data.image_size). Validation "
    "metrics are at the model's input size."
)

# keys of compute() that are per class (lists) and scalar means, in the order they are logged
_PER_CLASS = ("dice", "iou", "precision", "recall", "dice_per_image")
_SCALARS = ("dice_mean_fg", "miou", "miou_fg", "precision_mean_fg", "recall_mean_fg", "accuracy",
            "dice_mean_fg_per_image")


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, NaN where den == 0."""
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(num, math.nan))


def _nanmean(values: torch.Tensor, empty: float) -> float:
    defined = values[~torch.isnan(values)]
    return float(defined.mean()) if defined.numel() else empty


def scores_from_confusion(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class Dice, IoU, precision, recall from a (C, C) confusion matrix (float64, NaN: undefined)."""
    cm = cm.to(torch.float64)
    tp = torch.diagonal(cm)
    fp = cm.sum(0) - tp  # predicted as c, target another class
    fn = cm.sum(1) - tp  # target c, predicted another class
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }


class SegmentationMetrics(Metric):
    """Dice, IoU, precision, recall per class and averaged, pixel accuracy and per-image Dice.

    ``update(preds, target)``: ``preds`` are class ids ``(B, H, W)`` or logits/probabilities
    ``(B, C, H, W)`` (argmax over C); ``target`` class ids ``(B, H, W)`` (or ``(B, 1, H, W)``).
    ``compute()`` returns a dict: per-class lists ``dice``, ``iou``, ``precision``, ``recall``,
    ``dice_per_image`` (in ``class_names`` order); ``dice_mean_fg`` (mean Dice over the foreground classes
    1..C-1), ``miou`` (mean IoU over all classes, background included, Sayed 2025 eq. 14), ``miou_fg``
    (without background), ``precision_mean_fg``, ``recall_mean_fg``, ``accuracy`` (pixel accuracy),
    ``dice_mean_fg_per_image`` (mean over foreground classes of the per-image Dice), ``num_images``,
    ``num_pixels``, ``confusion_matrix`` (rows target, columns prediction), ``class_names`` and
    ``empty_class_policy`` (see :data:`EMPTY_CLASS_POLICY`).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"segmentation metrics: expected num_classes >= 2 (background included), "
                              f"got {num_classes!r}")
        names = [str(n) for n in class_names] if class_names else [f"class{i}" for i in range(num_classes)]
        if len(names) != num_classes:
            raise ConfigError(f"segmentation metrics: {len(names)} class_names {names} "
                              f"for {num_classes} classes")
        self.num_classes, self.class_names = num_classes, names
        c = num_classes
        self.add_state("confmat", default=torch.zeros(c, c, dtype=torch.long), dist_reduce_fx="sum")
        # float32 states: MPS has no float64
        self.add_state("image_dice_sum", default=torch.zeros(c), dist_reduce_fx="sum")
        self.add_state("image_dice_count", default=torch.zeros(c, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_images", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if target.dim() == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if preds.dim() == 4:
            if preds.shape[1] != self.num_classes:
                raise ValueError(f"preds has {preds.shape[1]} channels for {self.num_classes} classes")
            preds = preds.max(1).indices  # = argmax (first max on ties), much faster on CPU
        if preds.shape != target.shape or target.dim() != 3:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)}: expected "
                             "class ids (B, H, W) of the same shape, or logits (B, C, H, W)")
        preds, target = preds.long(), target.long()
        c, b = self.num_classes, target.shape[0]
        if target.numel() and (target.min() < 0 or target.max() >= c or preds.min() < 0 or preds.max() >= c):
            raise ValueError(f"class ids must lie in 0..{c - 1}; target has {target.min()}..{target.max()}, "
                             f"preds {preds.min()}..{preds.max()}")
        # every image's confusion matrix in one bincount over (image, target, pred): exact integer counts,
        # deterministic, and ~20x faster than one-hot products on CPU (it runs every training step)
        offset = torch.arange(b, device=target.device).view(b, 1, 1) * (c * c)
        codes = (offset + target * c + preds).reshape(-1)
        per_image = torch.bincount(codes, minlength=b * c * c).view(b, c, c)  # (B, C, C): rows target
        self.confmat += per_image.sum(0)

        tp = torch.diagonal(per_image, dim1=1, dim2=2).float()  # (B, C)
        denom = (per_image.sum(1) + per_image.sum(2)).float()  # |pred| + |target| per image and class
        present = denom > 0  # class in the target or the prediction of that image
        dice = torch.where(present, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
        self.image_dice_sum += dice.sum(0)
        self.image_dice_count += present.sum(0)
        self.num_images += b

    def compute(self) -> dict[str, Any]:
        confmat = self.confmat.cpu()  # float64 from here on, which MPS lacks
        scores = scores_from_confusion(confmat)
        per_image = _ratio(self.image_dice_sum.cpu().double(), self.image_dice_count.cpu().double())
        total = confmat.sum()
        out: dict[str, Any] = {k: v.tolist() for k, v in scores.items()}
        out["dice_per_image"] = per_image.tolist()
        out.update(
            dice_mean_fg=_nanmean(scores["dice"][1:], 1.0),
            miou=_nanmean(scores["iou"], 1.0),
            miou_fg=_nanmean(scores["iou"][1:], 1.0),
            precision_mean_fg=_nanmean(scores["precision"][1:], math.nan),
            recall_mean_fg=_nanmean(scores["recall"][1:], math.nan),
            accuracy=float(torch.diagonal(confmat).sum() / total) if total > 0 else math.nan,
            dice_mean_fg_per_image=_nanmean(per_image[1:], 1.0) if self.num_images > 0 else math.nan,
            num_images=int(self.num_images),
            num_pixels=int(total),
            confusion_matrix=confmat.tolist(),
            class_names=list(self.class_names),
            empty_class_policy=EMPTY_CLASS_POLICY,
        )
        return out


def to_native_resolution(logits: torch.Tensor, box: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """One image's logits ``(C, h, w)`` at the model's size back at the image's own ``size`` ``(H, W)``.

    ``box`` is ``(top, left, height, width)`` of the image inside the model-size array (see
    :func:`spinenet.data.transforms.content_box`): what lies outside it is padding and is cut away first;
    the rest is resampled bilinearly (half-pixel centres, as OpenCV resized the image). Logits, not the
    argmax, are resampled, so class borders fall between pixels where the scores cross.
    """
    top, left, height, width = (int(v) for v in box)
    crop = logits[:, top:top + height, left:left + width]
    out_size = (int(size[0]), int(size[1]))
    if tuple(crop.shape[-2:]) == out_size:
        return crop
    return F.interpolate(crop[None].float(), size=out_size, mode="bilinear", align_corners=False)[0]


def _slug(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", str(name)).strip("_").lower() or "class"


def flatten_metrics(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Loggable scalars from :meth:`SegmentationMetrics.compute`: ``{prefix}/{metric}[_{class}]``.

    Per-class lists become one entry per class named by ``class_names`` (e.g. ``val/dice_disc``,
    ``val/iou_background``); means keep their key (``val/dice_mean_fg``, ``val/miou``, ``val/accuracy``).
    Strings, the confusion matrix and counts are left out. NaN stays NaN (the metrics JSON writes null).
    """
    names = [_slug(n) for n in d.get("class_names", [])]
    head = f"{prefix}/" if prefix else ""
    flat: dict[str, float] = {}
    for key in _PER_CLASS:
        values = d.get(key)
        if values is None:
            continue
        labels = names if len(names) == len(values) else [f"class{i}" for i in range(len(values))]
        for label, v in zip(labels, values, strict=True):
            flat[f"{head}{key}_{label}"] = float(v)
    for key in _SCALARS:
        if key in d:
            flat[f"{head}{key}"] = float(d[key])
    return flat
