"""Calibrated probabilities and chosen decision thresholds for classifiers, fitted after training.

A classifier trained with balanced class weights (as the rare findings are) ranks well but its softmax is not a
probability: on SPIDER mid-sagittal slices the herniation classifier's arg-max called L4-L5 herniated in more
than half of them. After training, :func:`calibrate_checkpoints` fits on the **validation** split, for each
checkpoint the run keeps:

- a **temperature** ``T`` (Guo et al. 2017, "On calibration of modern neural networks"): the one number that
  minimises the negative log-likelihood of ``softmax(logits / T)``; it changes no ranking (AUROC stays) and no
  arg-max, only how sure the probabilities are;
- for a binary head, a **decision threshold** on the calibrated probability of the positive class, by Youden's
  rule: the threshold of the validation ROC point that maximises sensitivity + specificity - 1 (ties: the one
  nearest 0.5). A validation split without both classes keeps the arg-max (threshold ``None``, with the reason).

Both go into the checkpoint's model contract (``heads[i].temperature`` / ``threshold`` and ``calibration``), so
``diagnose`` (and every export of the checkpoint) reports calibrated probabilities and uses the threshold
(:meth:`spinenet.contract.ModelContract.probabilities`, :meth:`~spinenet.contract.ModelContract.decide`). The
test split then measures it: expected calibration error before and after (``metrics.json``: ``calibration``)
and a reliability diagram (``plots/reliability_test.png``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinenet.contract import CONTRACT_KEY
from spinenet.errors import ConfigError

log = logging.getLogger(__name__)

THRESHOLD_RULE = "youden"  # maximise sensitivity + specificity - 1 on the validation split
# a threshold chosen on a handful of positives is noise: on SPIDER herniation crops (2-3 positives in a 7-patient
# validation split) Youden's threshold called 48% of one test split positive and 1% of another's. Below this
# many validation examples of either class the arg-max is kept, and the note says why.
MIN_PER_CLASS = 10
ECE_BINS = 10


# ------------------------------------------------------------------------------------------------ fitting
def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature ``T > 0`` minimising the NLL of ``softmax(logits / T)`` (LBFGS over ``log T``)."""
    logits, labels = logits.detach().double(), labels.detach().long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    # a separable validation split pushes T towards 0 (ever surer): keep it in a sane range
    return float(min(max(t, 0.05), 20.0))


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels.long()))


def choose_threshold(
    p_positive: np.ndarray, labels: np.ndarray, min_per_class: int = MIN_PER_CLASS
) -> tuple[float | None, str | None]:
    """Youden's threshold on the positive class's probability, or ``(None, why)`` when the validation split
    holds fewer than ``min_per_class`` examples of either class."""
    p, y = np.asarray(p_positive, float), np.asarray(labels, int)
    counts = (int((y == 0).sum()), int((y == 1).sum()))
    if min(counts) < max(1, min_per_class):
        return None, (f"the validation split holds {counts[1]} positive and {counts[0]} negative example(s), "
                      f"fewer than {max(1, min_per_class)} of one class: arg-max kept")
    candidates = np.unique(p)
    pos, neg = y == 1, y == 0
    best, best_j = 0.5, -np.inf
    for t in candidates:
        called = p >= t
        j = called[pos].mean() + (~called[neg]).mean() - 1.0
        if j > best_j + 1e-12 or (abs(j - best_j) <= 1e-12 and abs(t - 0.5) < abs(best - 0.5)):
            best, best_j = float(t), j
    return best, None


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error (torchmetrics), in [0, 1]."""
    from torchmetrics.functional.classification import multiclass_calibration_error  # lazy: start-up

    return float(multiclass_calibration_error(probs.float(), labels.long(), num_classes=probs.shape[1],
                                              n_bins=bins, norm="l1"))


# ------------------------------------------------------------------------------------------------ results
@dataclass
class HeadCalibration:
    """What was fitted for one head on the validation split."""

    temperature: float
    threshold: float | None
    threshold_rule: str
    note: str | None
    val: dict[str, Any] = field(default_factory=dict)


def calibrate_head(logits: torch.Tensor, labels: torch.Tensor) -> HeadCalibration:
    """Temperature (and, for 2 classes, Youden's threshold) fitted on validation ``logits`` / ``labels``."""
    t = fit_temperature(logits, labels)
    probs = torch.softmax(logits.double() / t, dim=1)
    threshold, note = (choose_threshold(probs[:, 1].numpy(), labels.numpy()) if logits.shape[1] == 2
                       else (None, None))
    val = {"images": int(len(labels)), "nll": nll(logits, labels), "nll_calibrated": nll(logits, labels, t),
           "ece": expected_calibration_error(torch.softmax(logits.double(), 1), labels),
           "ece_calibrated": expected_calibration_error(probs, labels)}
    return HeadCalibration(t, threshold, THRESHOLD_RULE, note, val)


def given_calibration(setting: dict[str, Any]) -> HeadCalibration:
    """``calibrate={temperature: T, threshold: t}``: values chosen elsewhere (the folds of a cross-validation),
    checked like fitted ones."""
    unknown = sorted(set(setting) - {"temperature", "threshold"})
    if unknown or "temperature" not in setting:
        raise ConfigError(f"calibrate: true, false or {{temperature: T, threshold: t}}; got {setting!r}")
    t, threshold = setting["temperature"], setting.get("threshold")
    if not isinstance(t, int | float) or not t > 0:
        raise ConfigError(f"calibrate.temperature must be a number > 0, got {t!r}")
    if threshold is not None and (not isinstance(threshold, int | float) or not 0 <= threshold <= 1):
        raise ConfigError(f"calibrate.threshold must be in [0, 1] or null, got {threshold!r}")
    return HeadCalibration(float(t), None if threshold is None else float(threshold), "given", None,
                           {"images": 0})


def decisions(probs: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Class index per row: positive (1) when its probability reaches ``threshold`` (binary), else arg-max."""
    if threshold is None or probs.shape[1] != 2:
        return probs.argmax(1)
    return (probs[:, 1] >= threshold).long()


def test_report(logits: torch.Tensor, labels: torch.Tensor, fit: HeadCalibration) -> dict[str, Any]:
    """How the fitted calibration does on the test split: ECE before/after and, with a threshold, the
    sensitivity and specificity of the thresholded calls next to the arg-max's."""
    raw = torch.softmax(logits.double(), 1)
    cal = torch.softmax(logits.double() / fit.temperature, 1)
    out: dict[str, Any] = {"images": int(len(labels)), "ece": expected_calibration_error(raw, labels),
                           "ece_calibrated": expected_calibration_error(cal, labels),
                           "nll": nll(logits, labels), "nll_calibrated": nll(logits, labels, fit.temperature)}
    if cal.shape[1] == 2:
        y = labels.numpy()
        for name, called in (("argmax", raw.argmax(1).numpy()), ("threshold", decisions(cal, fit.threshold).numpy())):
            out[name] = {"sensitivity": float(called[y == 1].mean()) if (y == 1).any() else None,
                         "specificity": float(1 - called[y == 0].mean()) if (y == 0).any() else None,
                         "positive_calls": int(called.sum())}
    return out


def reliability_diagram(probs_raw: torch.Tensor, probs_cal: torch.Tensor, labels: torch.Tensor, path: Path,
                        title: str, bins: int = ECE_BINS) -> Path:
    """Observed accuracy against confidence (top label), before and after calibration, with bin counts."""
    import matplotlib  # lazy: start-up (only the plot needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.6), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfectly calibrated")
    edges = np.linspace(0, 1, bins + 1)
    for probs, name, colour in ((probs_raw, "softmax", "tab:orange"), (probs_cal, "calibrated", "tab:blue")):
        conf, pred = probs.max(1)
        conf, correct = conf.numpy(), (pred == labels).numpy()
        which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
        xs, ys, ns = [], [], []
        for b in range(bins):
            inside = which == b
            if inside.any():
                xs.append(conf[inside].mean())
                ys.append(correct[inside].mean())
                ns.append(int(inside.sum()))
        ece = expected_calibration_error(probs, labels, bins)
        ax.plot(xs, ys, marker="o", color=colour, label=f"{name} (ECE {ece:.3f})")
        for x, y, n in zip(xs, ys, ns, strict=True):
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(3, -10), fontsize=6, color=colour)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence (top class)", ylabel="observed accuracy", title=title)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ in a run
@torch.no_grad()
def predict_logits(module: Any, loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a classifier module over a loader (levels passed where its prior needs them);
    a multi-task module's labels are ``(N, tasks)``, ``-1`` where a grade is missing."""
    module.eval()
    outs, labels = [], []
    for batch in loader:
        levels = batch.get("level") if getattr(module, "needs_levels", False) else None
        outs.append(module(batch["image"], levels).float().cpu())
        labels.append((batch["labels"] if "labels" in batch else batch["label"]).cpu())
    return torch.cat(outs), torch.cat(labels)


def _head_columns(contract: Any, logits: torch.Tensor, labels: torch.Tensor):
    """Per head: its name, logits and labels over the rows graded for it."""
    slices = contract.head_slices() if contract.heads else [(None, slice(0, logits.shape[1]))]
    for i, (head, cols) in enumerate(slices):
        y = labels[:, i] if labels.ndim == 2 else labels
        seen = y >= 0
        yield (head.name if head is not None else "label"), logits[seen][:, cols], y[seen].long()


def write_into_checkpoint(path: Path, fits: Sequence[HeadCalibration | None]) -> None:
    """Store each head's fit (None: left as it is) in the checkpoint's model contract (atomically: the file
    is replaced whole)."""
    from spinenet.checkpoints import load_run_checkpoint  # lazy: lightning, hydra

    ckpt = load_run_checkpoint(path)
    contract = ckpt.get(CONTRACT_KEY)
    if not contract or len(contract.get("heads") or []) != len(fits):
        raise ValueError(f"{path}: no model contract with {len(fits)} head(s) to calibrate")
    details = {}
    for head, fit in zip(contract["heads"], fits, strict=True):
        if fit is None:
            continue
        head.update(temperature=fit.temperature, threshold=fit.threshold)
        details[head["name"]] = {"threshold_rule": fit.threshold_rule, "note": fit.note, **fit.val}
    given = all(f is None or f.threshold_rule == "given" for f in fits)
    contract["calibration"] = {"split": None if given else "val", "method": "temperature scaling",
                               "heads": details}
    tmp = path.with_name(path.name + ".calibrating")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def _entry(fit: HeadCalibration) -> dict[str, Any]:
    return {"temperature": fit.temperature, "threshold": fit.threshold, "threshold_rule": fit.threshold_rule,
            "note": fit.note, "val": fit.val}


def calibrate_checkpoints(
    checkpoints: Sequence[str | Path], val_loader: Any, test_loader: Any | None, plot_dir: Path
) -> dict[str, Any]:
    """Fit and store a calibration per head in each classifier checkpoint (the run's best and last); the
    first one's fits are reported on the test split (ECE, thresholded calls, reliability diagram). A
    single-head checkpoint's entry holds its fit; a multi-task one's has ``heads: {name: fit}``."""
    from spinenet.loading import load_model  # lazy: lightning, hydra

    report: dict[str, Any] = {}
    for i, path in enumerate(dict.fromkeys(Path(c) for c in checkpoints if c)):
        model, contract = load_model(path)
        logits, labels = predict_logits(model.module, val_loader)
        fits, entries = [], {}
        for name, head_logits, y in _head_columns(contract, logits, labels):
            fit = calibrate_head(head_logits, y) if len(y) and y.min() != y.max() else None
            fits.append(fit)
            entries[name] = _entry(fit) if fit is not None else {"note": "the validation split holds one "
                                                                          "class of it only: not calibrated"}
        write_into_checkpoint(path, fits)
        if i == 0 and test_loader is not None:
            t_logits, t_labels = predict_logits(model.module, test_loader)
            single = len(fits) == 1
            for (name, head_logits, y), fit in zip(_head_columns(contract, t_logits, t_labels), fits, strict=True):
                if fit is None or not len(y):
                    continue
                entries[name]["test"] = test_report(head_logits, y, fit)
                png = reliability_diagram(torch.softmax(head_logits.double(), 1),
                                          torch.softmax(head_logits.double() / fit.temperature, 1), y,
                                          plot_dir / ("reliability_test.png" if single else f"reliability_test_{name}.png"),
                                          f"{'' if single else name + ', '}test split, T = {fit.temperature:.2f}")
                entries[name]["reliability_diagram"] = str(png)
        report[path.name] = next(iter(entries.values())) if len(entries) == 1 else {"heads": entries}
        for name, fit in zip(entries, fits, strict=True):
            if fit is not None:
                log.info("calibrated %s %s: temperature %.3f, threshold %s (validation NLL %.3f -> %.3f)",
                         path.name, name, fit.temperature,
                         "arg-max" if fit.threshold is None else f"{fit.threshold:.3f}",
                         fit.val["nll"], fit.val["nll_calibrated"])
    return report
