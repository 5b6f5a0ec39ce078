"""Scores of one weighting of the ensemble's members on each split, from their cached probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spinenet.contract import TaskKind
from spinenet.ensemble import objectives as O
from spinenet.ensemble.members import SplitPredictions
from spinenet.ensemble.search import SearchResult

# metrics shown for every model, by task (the objective is always among them)
TASK_METRICS = {
    TaskKind.SEGMENTATION: ("dice", "miou", "accuracy"),
    TaskKind.CLASSIFICATION: ("accuracy", "balanced_accuracy", "macro_f1", "auroc"),
}


def _confusion(
    P: torch.Tensor, y: torch.Tensor, counts: Sequence[int], chunk: int = 16
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Confusion counts (C, C) of the WAEM with integer weights ``counts`` (and its scores for classification).

    S = sum_i c_i P_i in float64 without dividing by sum c (the argmax is the same): exact for float16 caches,
    so decisions and ties match the exhaustive search. Segmentation runs over chunks of images to bound memory.
    """
    c = P.shape[2]
    cm = torch.zeros(c * c, dtype=torch.int64)
    total = float(sum(counts))
    seg = P.dim() == 5
    kept = []
    for s in range(0, P.shape[1], chunk if seg else P.shape[1]):
        S = None
        for ci, Pi in zip(counts, P[:, s : s + chunk if seg else None], strict=True):
            if ci:
                t = float(ci) * Pi.to(torch.float64)
                S = t if S is None else S + t
        assert S is not None
        pred = S.argmax(1)
        cm += torch.bincount((y[s : s + chunk if seg else None] * c + pred).reshape(-1), minlength=c * c)
        if not seg:
            kept.append(S / total)
    return cm.view(c, c), (torch.cat(kept) if kept else None)


def _metrics(
    P: torch.Tensor, y: torch.Tensor, counts: Sequence[int], task: str, classes: Sequence[str]
) -> tuple[dict, dict]:
    """(scalar metrics, per-class metrics) of one weighting on one split."""
    cm, scores = _confusion(P, y, counts)
    out: dict[str, float | None] = {}
    for name in TASK_METRICS[task]:
        if name == "auroc":
            try:
                out[name] = float(O.auroc(scores.unsqueeze(0), y)[0])
            except Exception:  # noqa: BLE001 - undefined (a class lacks positives or negatives): not a failure
                out[name] = None
        else:
            out[name] = float(O.OBJECTIVES[name].from_confusion(cm.unsqueeze(0))[0])
    cmf = cm.to(torch.float64)
    tp = cmf.diagonal()
    fp, fn = cmf.sum(0) - tp, cmf.sum(1) - tp

    def ratio(a: torch.Tensor, b: torch.Tensor) -> list[float | None]:
        return [float(x / z) if z > 0 else None for x, z in zip(a, b, strict=True)]

    if TaskKind(task).per_pixel:
        per = {"dice": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn)}
    else:
        per = {
            "recall": ratio(tp, tp + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "support": (tp + fn).long().tolist(),
        }
    return out, {k: dict(zip(classes, v, strict=True)) for k, v in per.items()}


def counts_of(result: SearchResult) -> list[int]:
    return [int(c) for c in result.counts.tolist()]


def score_entry(
    name: str,
    kind: str,
    counts: Sequence[int],
    preds: dict[str, SplitPredictions],
    task: str,
    classes: Sequence[str],
    **extra: Any,
) -> dict[str, Any]:
    """A report entry: the normalised weights, and the metrics and per-class metrics on every split."""
    total = sum(counts)
    entry: dict[str, Any] = {"name": name, "kind": kind, "weights": [c / total for c in counts], **extra}
    for split, pred in preds.items():
        entry[split], per = _metrics(pred.probs, pred.targets, counts, task, classes)
        entry.setdefault("per_class", {})[split] = per
    return entry
