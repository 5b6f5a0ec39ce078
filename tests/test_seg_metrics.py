"""Segmentation metrics against hand-computed values on small masks, and against torchmetrics / MONAI."""

from __future__ import annotations

import math

import pytest
import torch
from monai.metrics import DiceMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
)

from spinenet.errors import ConfigError
from spinenet.metrics.segmentation import SegmentationMetrics, flatten_metrics

NAMES = ["background", "disc", "canal", "vertebra"]  # "vertebra" (3) is in no target and no prediction

# image A: a little of everything
TARGET_A = torch.tensor([[0, 1, 1],
                         [0, 1, 2],
                         [0, 0, 2]])
PRED_A = torch.tensor([[0, 1, 0],
                       [0, 1, 2],
                       [0, 2, 2]])
# image B: all background, one pixel wrongly called disc
TARGET_B = torch.zeros(3, 3, dtype=torch.long)
PRED_B = torch.tensor([[0, 0, 0],
                       [0, 1, 0],
                       [0, 0, 0]])
# Confusion over both images (rows target, columns prediction):
#   background: 3+8 correct, 1 -> disc (B), 1 -> canal (A)   [11, 1, 1, 0]
#   disc:       2 correct, 1 -> background (A)                [ 1, 2, 0, 0]
#   canal:      2 correct                                     [ 0, 0, 2, 0]
#   vertebra:   none                                          [ 0, 0, 0, 0]
CM = [[11, 1, 1, 0], [1, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]]


def _both() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([PRED_A, PRED_B]), torch.stack([TARGET_A, TARGET_B])


def _close(got: list[float], expected: list[float], tol: float = 1e-9) -> None:
    """Equal lists, NaN where expected is NaN (tol 1e-6 against the float32 libraries)."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e, abs=tol), (got, expected)


def test_hand_computed_values():
    metric = SegmentationMetrics(4, NAMES)
    metric.update(*_both())
    r = metric.compute()
    nan = math.nan
    assert r["confusion_matrix"] == CM
    # background: TP 11, FP 1, FN 2; disc: TP 2, FP 1, FN 1; canal: TP 2, FP 1, FN 0; vertebra: undefined
    _close(r["dice"], [22 / 25, 4 / 6, 4 / 5, nan])
    _close(r["iou"], [11 / 14, 2 / 4, 2 / 3, nan])
    _close(r["precision"], [11 / 12, 2 / 3, 2 / 3, nan])
    _close(r["recall"], [11 / 13, 2 / 3, 1.0, nan])
    assert r["dice_mean_fg"] == pytest.approx((4 / 6 + 4 / 5) / 2)
    assert r["miou"] == pytest.approx((11 / 14 + 1 / 2 + 2 / 3) / 3)  # Sayed eq. 14, background included
    assert r["miou_fg"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r["precision_mean_fg"] == pytest.approx(2 / 3)
    assert r["recall_mean_fg"] == pytest.approx((2 / 3 + 1) / 2)
    assert r["accuracy"] == pytest.approx(15 / 18)
    # per image: A: background 2·3/(4+4), disc 2·2/(2+3), canal 2·2/(3+2), vertebra skipped;
    #            B: background 2·8/(8+9), disc 0 (predicted, not there), canal and vertebra skipped
    _close(r["dice_per_image"], [(6 / 8 + 16 / 17) / 2, (4 / 5 + 0) / 2, 4 / 5, nan], 1e-6)  # float32 sums
    assert r["dice_mean_fg_per_image"] == pytest.approx((0.4 + 0.8) / 2)
    assert r["num_images"] == 2 and r["num_pixels"] == 18
    assert "NaN" in r["empty_class_policy"] and "skipped" in r["empty_class_policy"]


def test_logits_batches_and_merged_processes_agree():
    preds, target = _both()
    reference = SegmentationMetrics(4, NAMES)
    reference.update(preds, target)
    expected = reference.compute()

    from_logits = SegmentationMetrics(4, NAMES)
    from_logits.update(torch.nn.functional.one_hot(preds, 4).permute(0, 3, 1, 2).float(), target.unsqueeze(1))
    # two "processes", one image each, reduced with the states' dist_reduce_fx (what DDP sync does)
    rank0, rank1 = SegmentationMetrics(4, NAMES), SegmentationMetrics(4, NAMES)
    rank0.update(preds[:1], target[:1])
    rank1.update(preds[1:], target[1:])
    rank0.merge_state(rank1)
    for other in (from_logits.compute(), rank0.compute()):
        assert other["confusion_matrix"] == expected["confusion_matrix"]
        _close(other["dice_per_image"], expected["dice_per_image"])
        assert other["dice_mean_fg"] == expected["dice_mean_fg"]
    reference.reset()
    reference.update(preds[:1], target[:1])
    assert reference.compute()["num_images"] == 1


def test_all_background_image_predicted_right():
    metric = SegmentationMetrics(3, ["background", "disc", "canal"])
    metric.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
    r = metric.compute()
    _close(r["dice"], [1.0, math.nan, math.nan])
    _close(r["dice_per_image"], [1.0, math.nan, math.nan], 1e-6)
    # nothing to find, nothing found
    assert r["dice_mean_fg"] == 1.0 and r["miou"] == 1.0 and r["accuracy"] == 1.0
    assert math.isnan(r["precision_mean_fg"]) and math.isnan(r["recall_mean_fg"])
    # a missed class: Dice 0, not skipped
    metric.reset()
    metric.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(1, 4, 4, dtype=torch.long))
    r = metric.compute()
    _close(r["dice"], [0.0, 0.0, math.nan])
    assert r["dice_mean_fg"] == 0.0 and r["dice_mean_fg_per_image"] == 0.0 and r["accuracy"] == 0.0


def test_agrees_with_torchmetrics_and_monai():
    torch.manual_seed(0)
    c = 4
    target = torch.randint(0, c, (3, 16, 16))
    preds = torch.where(torch.rand(3, 16, 16) < 0.6, target, torch.randint(0, c, (3, 16, 16)))
    target[2][target[2] == 3] = 0  # image 2: class 3 absent from the target ...
    preds[2][preds[2] == 3] = 1  # ... and from the prediction: skipped there per image
    metric = SegmentationMetrics(c, NAMES)
    metric.update(preds[:2], target[:2])
    metric.update(preds[2:], target[2:])
    r = metric.compute()

    p, t = preds.reshape(-1), target.reshape(-1)
    kw = dict(num_classes=c, average="none")
    _close(r["dice"], MulticlassF1Score(**kw)(p, t).tolist(), 1e-6)
    _close(r["iou"], MulticlassJaccardIndex(**kw)(p, t).tolist(), 1e-6)
    _close(r["precision"], MulticlassPrecision(**kw)(p, t).tolist(), 1e-6)
    _close(r["recall"], MulticlassRecall(**kw)(p, t).tolist(), 1e-6)
    assert r["accuracy"] == pytest.approx(float(MulticlassAccuracy(num_classes=c, average="micro")(p, t)))
    assert r["miou"] == pytest.approx(float(MulticlassJaccardIndex(num_classes=c, average="macro")(p, t)))

    # per image: MONAI gives 1.0 where a class is absent from both; the policy here skips those
    onehot = lambda x: torch.nn.functional.one_hot(x, c).permute(0, 3, 1, 2)  # noqa: E731
    monai_dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    per_image = monai_dice(onehot(preds), onehot(target))
    both_empty = (onehot(preds).sum((2, 3)) == 0) & (onehot(target).sum((2, 3)) == 0)
    assert both_empty[2, 3] and both_empty.sum() == 1
    expected = torch.where(both_empty, torch.nan, per_image.double()).nanmean(0)
    _close(r["dice_per_image"], expected.tolist(), 1e-6)


def test_flatten_metrics_names():
    metric = SegmentationMetrics(4, ["Background", "disc", "spinal canal", "vertebra"])
    metric.update(*_both())
    flat = flatten_metrics(metric.compute(), prefix="val")
    assert flat["val/dice_disc"] == pytest.approx(4 / 6)
    assert flat["val/iou_spinal_canal"] == pytest.approx(2 / 3)
    assert flat["val/dice_mean_fg"] == pytest.approx((4 / 6 + 4 / 5) / 2)
    assert flat["val/miou"] == pytest.approx((11 / 14 + 1 / 2 + 2 / 3) / 3)
    assert "val/accuracy" in flat and "val/miou_fg" in flat and "val/dice_per_image_disc" in flat
    assert math.isnan(flat["val/dice_vertebra"])
    assert all(isinstance(v, float) for v in flat.values())
    assert not any("policy" in k or "confusion" in k or "class_names" in k for k in flat)
    assert set(flatten_metrics(metric.compute())) >= {"dice_background", "miou"}


def test_invalid_input():
    with pytest.raises(ConfigError, match="class_names"):
        SegmentationMetrics(3, ["background", "disc"])
    metric = SegmentationMetrics(3)
    with pytest.raises(ValueError, match="0..2"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 3))
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 3, 3, dtype=torch.long))
