"""Objectives for the ensemble weight search, each evaluated for a batch of V weight vectors at once.

Label objectives (accuracy, balanced accuracy, macro F1, Dice, mIoU) are functions of the data-set-accumulated
confusion matrix, so the search only has to produce per-vector confusion counts `cm` of shape (V, C, C)
(rows = target class, columns = predicted class). AUROC needs the ensemble's scores themselves: (V, N, C).

Every score is computed in float64 from integer counts, so two weight vectors with the same confusion matrix get
bit-identical scores; the exhaustive search and the naive reference loop share these functions, which is what
makes "same optimum, ties broken by enumeration order" a well-defined, testable claim.

Conventions (say them in reports):
- `dice`: mean over foreground classes 1..C-1 of 2TP / (2TP + FP + FN), counts summed over the whole data set
  (not per image). A class absent from the targets and never predicted has no defined Dice and is left out of
  the mean; if every foreground class is left out the score is 1.0 (nothing to find, nothing found).
- `miou`: mean over all classes, background included (as Sayed 2025 eq. 12-14 report mIoU), of
  TP / (TP + FP + FN), with the same rule for undefined classes.
- `macro_f1`: F1 averaged over classes that occur in the targets or the predictions (as scikit-learn and
  torchmetrics do); `balanced_accuracy`: recall averaged over classes that occur in the targets.
- `auroc`: one-vs-rest AUROC averaged over classes that have both positive and negative samples; ties count 1/2
  (Mann-Whitney). With two classes it is the AUROC of class 1, as scikit-learn's binary AUROC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from spinenet.errors import ConfigError, DataError

__all__ = [
    "OBJECTIVES",
    "Objective",
    "accuracy",
    "auroc",
    "balanced_accuracy",
    "confusion_from_labels",
    "dice",
    "get_objective",
    "macro_f1",
    "miou",
]


def confusion_from_labels(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-vector confusion counts (V, C, C) from predicted labels (V, N) and targets (N,)."""
    if pred.dim() == 1:
        pred = pred.unsqueeze(0)
    v = pred.shape[0]
    idx = y.to(pred.device, torch.int64).unsqueeze(0) * num_classes + pred.to(torch.int64)
    cm = torch.zeros(v, num_classes * num_classes, dtype=torch.int64, device=pred.device)
    cm.scatter_add_(1, idx, torch.ones_like(idx))
    return cm.view(v, num_classes, num_classes)


def _mean_defined(values: torch.Tensor, defined: torch.Tensor, empty: float) -> torch.Tensor:
    """Mean over the last axis of `values` where `defined`; `empty` where nothing is defined."""
    n = defined.sum(-1)
    total = torch.where(defined, values, torch.zeros_like(values)).sum(-1)
    return torch.where(n > 0, total / n.clamp(min=1), torch.full_like(total, empty))


def _counts(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cm = cm.to(torch.float64)
    tp = torch.diagonal(cm, dim1=-2, dim2=-1)
    fp = cm.sum(-2) - tp  # predicted as c, target another class
    fn = cm.sum(-1) - tp  # target c, predicted another class
    return tp, fp, fn


def accuracy(cm: torch.Tensor) -> torch.Tensor:
    cm = cm.to(torch.float64)
    return torch.diagonal(cm, dim1=-2, dim2=-1).sum(-1) / cm.sum((-2, -1)).clamp(min=1)


def balanced_accuracy(cm: torch.Tensor) -> torch.Tensor:
    tp, _, fn = _counts(cm)
    support = tp + fn
    return _mean_defined(tp / support.clamp(min=1), support > 0, 0.0)


def macro_f1(cm: torch.Tensor) -> torch.Tensor:
    tp, fp, fn = _counts(cm)
    denom = 2 * tp + fp + fn
    return _mean_defined(2 * tp / denom.clamp(min=1), denom > 0, 0.0)


def dice(cm: torch.Tensor) -> torch.Tensor:
    tp, fp, fn = _counts(cm)
    tp, fp, fn = tp[..., 1:], fp[..., 1:], fn[..., 1:]  # foreground only
    denom = 2 * tp + fp + fn
    return _mean_defined(2 * tp / denom.clamp(min=1), denom > 0, 1.0)


def miou(cm: torch.Tensor) -> torch.Tensor:
    tp, fp, fn = _counts(cm)
    denom = tp + fp + fn
    return _mean_defined(tp / denom.clamp(min=1), denom > 0, 1.0)


def auroc(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Macro one-vs-rest AUROC for a batch of score tensors (V, N, C) against targets (N,) -> (V,).

    For each class: sort the negatives' scores once per vector, then for every positive count the negatives
    below it (and half those equal) with two searchsorted calls; the sum is an integer, so equal rankings give
    bit-identical AUROCs.
    """
    if scores.dim() == 2:
        scores = scores.unsqueeze(0)
    v, _, c = scores.shape
    y = y.to(scores.device)
    classes = [1] if c == 2 else list(range(c))
    total = torch.zeros(v, dtype=torch.float64, device=scores.device)
    used = 0
    for cls in classes:
        is_pos = y == cls
        n_pos = int(is_pos.sum())
        n_neg = y.numel() - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        neg = torch.sort(scores[:, ~is_pos, cls].contiguous(), dim=1).values
        pos = scores[:, is_pos, cls].contiguous()
        below = torch.searchsorted(neg, pos, right=False).sum(1)
        below_or_equal = torch.searchsorted(neg, pos, right=True).sum(1)
        total += (below + below_or_equal).to(torch.float64) / (2.0 * n_pos * n_neg)
        used += 1
    if used == 0:
        raise DataError("auroc: no class has both positive and negative samples in the targets")
    return total / used


@dataclass(frozen=True)
class Objective:
    """A search objective (higher is better).

    `needs` is "confusion" (fn: cm (V, C, C) -> (V,)) or "scores" (fn: scores (V, N, C), y (N,) -> (V,)).
    `segmentation` says whether it may be used on (k, N, C, H, W) caches.
    """

    name: str
    needs: str
    fn: Callable[..., torch.Tensor]
    segmentation: bool = True

    def from_confusion(self, cm: torch.Tensor) -> torch.Tensor:
        if self.needs != "confusion":
            raise ConfigError(f"objective '{self.name}' needs scores, not confusion counts")
        return self.fn(cm)

    def from_labels(self, pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return self.from_confusion(confusion_from_labels(pred, y, num_classes))

    def from_scores(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Any objective from scores (V, N, C): label objectives take the argmax (first maximal class)."""
        if scores.dim() == 2:
            scores = scores.unsqueeze(0)
        if self.needs == "scores":
            return self.fn(scores, y)
        return self.from_labels(scores.argmax(-1), y, scores.shape[-1])


OBJECTIVES: dict[str, Objective] = {
    "accuracy": Objective("accuracy", "confusion", accuracy),
    "balanced_accuracy": Objective("balanced_accuracy", "confusion", balanced_accuracy),
    "macro_f1": Objective("macro_f1", "confusion", macro_f1),
    "auroc": Objective("auroc", "scores", auroc, segmentation=False),
    "dice": Objective("dice", "confusion", dice),
    "miou": Objective("miou", "confusion", miou),
}


def get_objective(objective: str | Objective) -> Objective:
    """Look an objective up by name; unknown names raise ConfigError listing the valid ones."""
    if isinstance(objective, Objective):
        return objective
    try:
        return OBJECTIVES[objective]
    except KeyError:
        raise ConfigError(
            f"unknown ensemble objective '{objective}'; choose one of: {', '.join(OBJECTIVES)}"
        ) from None
