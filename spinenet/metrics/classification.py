"""Classification metrics on torchmetrics: per class, macro and weighted; AUROC; bootstrap intervals; plots.

Conventions (all from ``torchmetrics.functional.classification`` unless said otherwise):

- ``y_true``: class ids ``(N,)``; ``y_prob``: class probabilities ``(N, C)``, or ``(N,)`` = probability of
  class 1 for a binary task. The predicted class is the arg-max (binary: probability > 0.5).
- ``accuracy`` is the share of correct predictions; ``balanced_accuracy`` the macro mean of per-class recall
  (sensitivity), as scikit-learn's ``balanced_accuracy_score``.
- Per class: precision, recall (= sensitivity), specificity, F1, AUROC (one-vs-rest), support.
  ``*_macro`` is the unweighted mean over classes, ``*_weighted`` weights each class by its support
  (torchmetrics' ``average="weighted"``); a 0/0 ratio counts as 0 (torchmetrics' ``zero_division=0``).
- AUROC of a class is undefined (NaN, not 0 as torchmetrics would report) when that class has no positive
  or no negative sample; ``auroc_macro`` averages the defined ones.
- Binary tasks (2 classes) also get ``precision``, ``recall``, ``sensitivity``, ``specificity``, ``f1`` and
  ``auroc`` of the positive class (class 1), the numbers Sayed 2025 reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchmetrics.functional.classification as tmf
from matplotlib.figure import Figure
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from spinenet.errors import ConfigError, DataError

ArrayLike = np.ndarray | torch.Tensor | Sequence[float] | Sequence[int]


def _targets(y_true: ArrayLike) -> torch.Tensor:
    return (
        torch.as_tensor(np.asarray(y_true) if not isinstance(y_true, torch.Tensor) else y_true)
        .long()
        .reshape(-1)
    )


def as_probabilities(y_prob: ArrayLike, num_classes: int | None = None) -> torch.Tensor:
    """``(N, C)`` float probabilities; a binary ``(N,)`` vector p becomes the columns ``[1 - p, p]``."""
    p = torch.as_tensor(np.asarray(y_prob) if not isinstance(y_prob, torch.Tensor) else y_prob).float()
    if p.ndim == 1 or (p.ndim == 2 and p.shape[1] == 1):
        p = p.reshape(-1)
        p = torch.stack([1 - p, p], dim=1)
    if p.ndim != 2:
        raise DataError(f"class probabilities must have shape (N, C) or (N,), got {tuple(p.shape)}")
    if num_classes is not None and p.shape[1] != num_classes:
        raise DataError(f"class probabilities have {p.shape[1]} columns but there are {num_classes} classes")
    return p


def _names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ConfigError(
            f"class_names has {len(class_names)} names for {num_classes} classes: {list(class_names)}"
        )
    return [str(n) for n in class_names]


def per_class_auroc(y_true: ArrayLike, y_prob: ArrayLike) -> list[float]:
    """One-vs-rest AUROC of each class; NaN where the class has no positive or no negative sample."""
    target, prob = _targets(y_true), as_probabilities(y_prob)
    out = []
    for c in range(prob.shape[1]):
        pos = target == c
        if pos.all() or not pos.any():
            out.append(float("nan"))
        else:
            out.append(float(tmf.binary_auroc(prob[:, c], pos.long())))
    return out


def macro_auroc(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Mean of the defined per-class AUROCs (binary: the AUROC of the positive class)."""
    values = [v for v in per_class_auroc(y_true, y_prob) if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def balanced_accuracy(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Macro mean of per-class recall over the classes present in ``y_true`` (scikit-learn's definition)."""
    target, prob = _targets(y_true), as_probabilities(y_prob)
    recall = tmf.multiclass_recall(prob.argmax(1), target, num_classes=prob.shape[1], average="none")
    present = torch.bincount(target, minlength=prob.shape[1]) > 0
    return float(recall[present].mean())


def accuracy(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    target, prob = _targets(y_true), as_probabilities(y_prob)
    return float((prob.argmax(1) == target).float().mean())


def _predicted(y_prob: ArrayLike) -> torch.Tensor:
    return as_probabilities(y_prob).argmax(1)


def quadratic_kappa(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Cohen's kappa with quadratic weights of the arg-max class against ``y_true`` (ordinal labels)."""
    p = as_probabilities(y_prob)
    value = tmf.multiclass_cohen_kappa(_predicted(p), _targets(y_true), p.shape[1], weights="quadratic")
    return float(value)


def mean_absolute_error(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Mean |predicted class - true class| in class steps (ordinal labels), of the arg-max class."""
    return float((_predicted(y_prob) - _targets(y_true)).abs().float().mean())


def within_one_accuracy(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Share of predictions at most one class from the truth (ordinal labels)."""
    return float(((_predicted(y_prob) - _targets(y_true)).abs() <= 1).float().mean())


# ordinal labels (Pfirrmann): metrics on the arg-max class, with bootstrap intervals
ORDINAL_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "qwk": quadratic_kappa,
    "mae": mean_absolute_error,
    "exact_accuracy": accuracy,
    "within1_accuracy": within_one_accuracy,
}


def classification_report(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Every number of the classification issue for one set of predictions (a JSON-able dict).

    Keys: ``accuracy``, ``balanced_accuracy``, ``{precision,recall,specificity,f1}_{macro,weighted}``,
    ``auroc_macro``, ``per_class`` (name → precision, recall, sensitivity, specificity, f1, auroc,
    support), ``confusion_matrix`` (rows: true class, columns: predicted), ``class_names``,
    ``num_samples``; binary tasks add the positive class's numbers at the top level.
    """
    target = _targets(y_true)
    prob = as_probabilities(y_prob, num_classes)
    k = prob.shape[1]
    names = _names(class_names, k)
    if target.numel() != prob.shape[0]:
        raise DataError(f"{target.numel()} labels but {prob.shape[0]} predictions")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= k):
        raise DataError(f"labels must be class ids in 0..{k - 1}, got {sorted(set(target.tolist()))}")
    pred = prob.argmax(1)
    kw: dict[str, Any] = dict(num_classes=k)
    report: dict[str, Any] = {
        "num_samples": int(target.numel()),
        "class_names": names,
        "accuracy": float(tmf.multiclass_accuracy(pred, target, average="micro", **kw)),
        "balanced_accuracy": balanced_accuracy(target, prob),
    }
    per: dict[str, torch.Tensor] = {}
    for metric, fn in (
        ("precision", tmf.multiclass_precision),
        ("recall", tmf.multiclass_recall),
        ("specificity", tmf.multiclass_specificity),
        ("f1", tmf.multiclass_f1_score),
    ):
        per[metric] = fn(pred, target, average="none", **kw)
        for avg in ("macro", "weighted"):
            report[f"{metric}_{avg}"] = float(fn(pred, target, average=avg, **kw))
    aurocs = per_class_auroc(target, prob)
    defined = [a for a in aurocs if not math.isnan(a)]
    report["auroc_macro"] = float(np.mean(defined)) if defined else float("nan")
    support = torch.bincount(target, minlength=k)
    report["per_class"] = {
        name: {
            "precision": float(per["precision"][i]),
            "recall": float(per["recall"][i]),
            "sensitivity": float(per["recall"][i]),
            "specificity": float(per["specificity"][i]),
            "f1": float(per["f1"][i]),
            "auroc": aurocs[i],
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    report["confusion_matrix"] = tmf.multiclass_confusion_matrix(pred, target, **kw).tolist()
    if k == 2:
        pos = report["per_class"][names[1]]
        report.update(
            {m: pos[m] for m in ("precision", "recall", "sensitivity", "specificity", "f1", "auroc")}
        )
    return report


def flatten_report(report: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Scalars of a report as ``{prefix}/{name}`` and ``{prefix}/{metric}/{class}`` (for loggers)."""
    head = f"{prefix}/" if prefix else ""
    flat = {
        f"{head}{k}": float(v) for k, v in report.items() if isinstance(v, int | float) and k != "num_samples"
    }
    for name, values in report.get("per_class", {}).items():
        for metric, v in values.items():
            if metric != "support":
                flat[f"{head}{metric}/{name}"] = float(v)
    return flat


class ClassificationMetrics(Metric):
    """Accumulates probabilities and targets (gathered across DDP processes) and computes the report.

    ``update(scores, target)``: ``scores`` are logits (``from_logits=True``, softmax applied here) or
    probabilities ``(N, C)``. ``compute()`` returns :func:`classification_report`'s dict.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        from_logits: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.class_names = _names(class_names, self.num_classes)
        self.from_logits = from_logits
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        scores = scores.detach().float()
        self.probs.append(scores.softmax(1) if self.from_logits else scores)
        self.target.append(target.detach().long().reshape(-1))

    def compute(self) -> dict[str, Any]:
        # after a DDP sync the list states are already concatenated into one tensor
        if (isinstance(self.probs, list) and not self.probs) or (
            isinstance(self.probs, torch.Tensor) and self.probs.numel() == 0
        ):
            raise DataError("no predictions were collected: the data split is empty")
        probs, target = dim_zero_cat(self.probs), dim_zero_cat(self.target)
        return classification_report(target.cpu(), probs.cpu(), self.class_names, self.num_classes)


def compute_class_weights(labels: ArrayLike, num_classes: int, mode: str = "balanced") -> list[float]:
    """Loss weights per class from the training labels.

    ``"balanced"``: ``n / (k · count_c)``, scikit-learn's ``compute_class_weight("balanced")`` (Al-Ajaj 2024;
    Sayed 2025's 0.702 / 1.73 are these weights for a 71 % / 29 % split). A class absent from the labels
    gets 0 (it contributes no loss terms anyway). ``"none"``: all 1.
    """
    y = _targets(labels)
    if mode == "none":
        return [1.0] * num_classes
    if mode != "balanced":
        raise ConfigError(f"class_weights: unknown mode {mode!r}; choose balanced, none, or give a list")
    if y.numel() == 0:
        raise DataError("class weights: the training split has no labels")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise DataError(
            f"class weights: labels must be in 0..{num_classes - 1}, got {sorted(set(y.tolist()))}"
        )
    counts = torch.bincount(y, minlength=num_classes).double()
    n = float(y.numel())
    return [n / (num_classes * float(c)) if c > 0 else 0.0 for c in counts]


def level_log_odds(
    labels: ArrayLike, levels: Sequence[str], level_names: Sequence[str], num_classes: int, alpha: float = 1.0
) -> list[list[float]]:
    """Per level, how much more likely each class is there than overall: ``log p(c | level) - log p(c)``.

    One row per name in ``level_names`` and a last row for every other level (``""``: unknown), from the
    training labels with ``alpha`` added to each count (a level seen rarely stays near 0). These start
    ``model.level_prior``'s offsets: a loss balanced by class weights leaves the net an even prior, and
    adding them gives it each level's own (SPIDER bulging: L1-L2 -0.6, L4-L5 +0.5 for "bulging").
    """
    y = _targets(labels)
    if y.numel() != len(levels):
        raise DataError(f"level prior: {y.numel()} labels but {len(levels)} levels")
    names = [str(v) for v in level_names]
    rows = torch.as_tensor([names.index(str(v)) if str(v) in names else len(names) for v in levels])
    counts = torch.zeros(len(names) + 1, num_classes, dtype=torch.float64)
    counts.index_put_((rows, y), torch.ones(len(y), dtype=torch.float64), accumulate=True)
    counts += alpha
    per_level = counts / counts.sum(1, keepdim=True)
    overall = counts.sum(0) / counts.sum()
    return (per_level.log() - overall.log()).tolist()


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true: ArrayLike,
    y_prob: ArrayLike,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> dict[str, Any]:
    """Percentile bootstrap interval of ``metric_fn(y_true, y_prob)``.

    ``groups`` (e.g. patient ids) resamples whole groups with replacement, keeping every sample of a drawn
    patient together (patient-level bootstrap: samples of one patient are not independent); without it,
    samples are resampled. Resamples where the metric is undefined (NaN or an error, e.g. AUROC of a
    resample with one class only) are skipped and counted in ``n_valid``.
    Returns ``{"value", "low", "high", "alpha", "n", "n_valid", "level"}``.
    """
    yt = np.asarray(y_true.cpu() if isinstance(y_true, torch.Tensor) else y_true)
    yp = np.asarray(y_prob.cpu() if isinstance(y_prob, torch.Tensor) else y_prob)
    if len(yt) != len(yp):
        raise DataError(f"bootstrap: {len(yt)} labels but {len(yp)} predictions")
    rng = np.random.default_rng(seed)
    if groups is not None:
        g = np.asarray(groups)
        if len(g) != len(yt):
            raise DataError(f"bootstrap: {len(g)} group ids for {len(yt)} samples")
        uniq, inverse = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(inverse == i) for i in range(len(uniq))]
    else:
        members = [np.array([i]) for i in range(len(yt))]
    values = []
    for _ in range(int(n)):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        try:
            v = float(metric_fn(yt[idx], yp[idx]))
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue
        if not math.isnan(v):
            values.append(v)
    value = float(metric_fn(yt, yp))
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2]).tolist() if values else (math.nan, math.nan)
    return {
        "value": value,
        "low": float(low),
        "high": float(high),
        "alpha": alpha,
        "n": int(n),
        "n_valid": len(values),
        "level": "group" if groups is not None else "sample",
    }


# -- pictures -----------------------------------------------------------------------------------------


def plot_confusion_matrix(
    cm: ArrayLike,
    class_names: Sequence[str],
    path: str | Path | None = None,
    normalize: bool = False,
    title: str = "Confusion matrix",
) -> Figure:
    """Counts (and row-normalised shares with ``normalize``) with true classes as rows."""
    m = np.asarray(cm, dtype=float)
    shown = m / np.maximum(m.sum(1, keepdims=True), 1) if normalize else m
    k = len(class_names)
    fig = Figure(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(shown.max(), 1))
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set(
        xticks=range(k),
        yticks=range(k),
        xticklabels=class_names,
        yticklabels=class_names,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    ax.tick_params(axis="x", labelrotation=45)
    for i in range(k):
        for j in range(k):
            text = f"{shown[i, j]:.2f}\n({int(m[i, j])})" if normalize else f"{int(m[i, j])}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8,
                color="white" if shown[i, j] > 0.6 * (shown.max() or 1) else "black",
            )
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _curve_classes(prob: torch.Tensor) -> list[int]:
    return [1] if prob.shape[1] == 2 else list(range(prob.shape[1]))  # binary: the positive class only


def plot_roc_curves(
    y_true: ArrayLike, y_prob: ArrayLike, class_names: Sequence[str], path: str | Path | None = None
) -> Figure:
    """One-vs-rest ROC curve per class (binary: the positive class), AUROC in the legend."""
    target, prob = _targets(y_true), as_probabilities(y_prob)
    aurocs = per_class_auroc(target, prob)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for c in _curve_classes(prob):
        if math.isnan(aurocs[c]):
            continue
        fpr, tpr, _ = tmf.binary_roc(prob[:, c], (target == c).long())
        ax.plot(fpr.numpy(), tpr.numpy(), label=f"{class_names[c]} (AUROC {aurocs[c]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(
        xlabel="false positive rate (1 - specificity)",
        ylabel="true positive rate (sensitivity)",
        title="ROC",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_pr_curves(
    y_true: ArrayLike, y_prob: ArrayLike, class_names: Sequence[str], path: str | Path | None = None
) -> Figure:
    """One-vs-rest precision-recall curve per class, average precision in the legend."""
    target, prob = _targets(y_true), as_probabilities(y_prob)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for c in _curve_classes(prob):
        pos = (target == c).long()
        if not pos.any():
            continue
        precision, recall, _ = tmf.binary_precision_recall_curve(prob[:, c], pos)
        ap = float(tmf.binary_average_precision(prob[:, c], pos))
        ax.plot(
            recall.numpy(),
            precision.numpy(),
            label=f"{class_names[c]} (AP {ap:.3f}, prevalence {float(pos.float().mean()):.2f})",
        )
    ax.set(
        xlabel="recall (sensitivity)",
        ylabel="precision",
        title="Precision-recall",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def save_classification_plots(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    class_names: Sequence[str],
    out_dir: str | Path,
    prefix: str = "test",
) -> dict[str, Figure]:
    """Write ``{prefix}_confusion_matrix.png``, ``..._confusion_matrix_normalized.png``, ``..._roc.png`` and
    ``..._pr.png`` to ``out_dir``; return the figures by those stems (``wandb.Image(fig)`` logs one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = classification_report(y_true, y_prob, class_names)
    figs = {
        f"{prefix}_confusion_matrix": plot_confusion_matrix(
            report["confusion_matrix"], report["class_names"]
        ),
        f"{prefix}_confusion_matrix_normalized": plot_confusion_matrix(
            report["confusion_matrix"],
            report["class_names"],
            normalize=True,
            title="Confusion matrix (recall)",
        ),
        f"{prefix}_roc": plot_roc_curves(y_true, y_prob, report["class_names"]),
        f"{prefix}_pr": plot_pr_curves(y_true, y_prob, report["class_names"]),
    }
    for stem, fig in figs.items():
        fig.savefig(out / f"{stem}.png", dpi=120)
    return figs


__all__ = [
    "ClassificationMetrics",
    "accuracy",
    "as_probabilities",
    "balanced_accuracy",
    "bootstrap_ci",
    "classification_report",
    "compute_class_weights",
    "flatten_report",
    "macro_auroc",
    "per_class_auroc",
    "plot_confusion_matrix",
    "plot_pr_curves",
    "plot_roc_curves",
    "save_classification_plots",
]
