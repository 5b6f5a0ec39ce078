"""Classification metrics against numbers worked out by hand, class weights, bootstrap, PNG plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from spinenet.errors import ConfigError, DataError
from spinenet.metrics.classification import (
    ClassificationMetrics,
    accuracy,
    bootstrap_ci,
    classification_report,
    compute_class_weights,
    flatten_report,
    macro_auroc,
    save_classification_plots,
)

# 7 samples, 3 classes. Predictions (arg-max) 0,0,1,1,1,2,0 against truth 0,0,0,1,1,2,2:
#   confusion matrix (rows true)  [[2,1,0],[0,2,0],[1,0,1]]
Y = [0, 0, 0, 1, 1, 2, 2]
P = [
    [0.8, 0.1, 0.1],
    [0.6, 0.3, 0.1],
    [0.3, 0.5, 0.2],
    [0.2, 0.7, 0.1],
    [0.1, 0.6, 0.3],
    [0.1, 0.2, 0.7],
    [0.5, 0.1, 0.4],
]


def test_multiclass_numbers_match_hand_computation():
    r = classification_report(Y, P, ["healthy", "bulge", "hernia"])
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert r["accuracy"] == pytest.approx(5 / 7)
    pc = r["per_class"]
    # class 0: tp 2, fp 1, fn 1, tn 3; class 1: tp 2, fp 1, fn 0, tn 4; class 2: tp 1, fp 0, fn 1, tn 5
    assert pc["healthy"]["precision"] == pytest.approx(2 / 3)
    assert pc["healthy"]["recall"] == pytest.approx(2 / 3)
    assert pc["healthy"]["specificity"] == pytest.approx(3 / 4)
    assert pc["bulge"]["precision"] == pytest.approx(2 / 3)
    assert pc["bulge"]["sensitivity"] == pytest.approx(1.0)
    assert pc["bulge"]["f1"] == pytest.approx(0.8)
    assert pc["bulge"]["specificity"] == pytest.approx(4 / 5)
    assert pc["hernia"]["precision"] == pytest.approx(1.0)
    assert pc["hernia"]["recall"] == pytest.approx(0.5)
    assert pc["hernia"]["f1"] == pytest.approx(2 / 3)
    assert pc["hernia"]["specificity"] == pytest.approx(1.0)
    assert [pc[n]["support"] for n in ("healthy", "bulge", "hernia")] == [3, 2, 2]
    # macro: plain means; weighted: supports 3, 2, 2 out of 7
    assert r["precision_macro"] == pytest.approx(7 / 9)
    assert r["recall_macro"] == pytest.approx(13 / 18)
    assert r["balanced_accuracy"] == pytest.approx(13 / 18)
    assert r["f1_macro"] == pytest.approx((2 / 3 + 0.8 + 2 / 3) / 3)
    assert r["specificity_macro"] == pytest.approx(0.85)
    assert r["precision_weighted"] == pytest.approx((3 * 2 / 3 + 2 * 2 / 3 + 2 * 1) / 7)
    assert r["recall_weighted"] == pytest.approx(5 / 7)
    assert r["f1_weighted"] == pytest.approx((3 * 2 / 3 + 2 * 0.8 + 2 * 2 / 3) / 7)
    assert r["specificity_weighted"] == pytest.approx((3 * 0.75 + 2 * 0.8 + 2 * 1.0) / 7)
    # one-vs-rest AUROC: class 0 ranks 11 of its 12 positive-negative pairs right, classes 1 and 2 all
    assert pc["healthy"]["auroc"] == pytest.approx(11 / 12)
    assert pc["bulge"]["auroc"] == pytest.approx(1.0)
    assert pc["hernia"]["auroc"] == pytest.approx(1.0)
    assert r["auroc_macro"] == pytest.approx((11 / 12 + 2) / 3)
    flat = flatten_report(r, "test")
    assert flat["test/accuracy"] == pytest.approx(5 / 7) and flat["test/f1/bulge"] == pytest.approx(0.8)


def test_binary_case_from_positive_probability():
    # truth 0,0,1,1; p(positive) 0.1,0.6,0.4,0.9 -> predictions 0,1,0,1
    r = classification_report([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], ["no PLID", "PLID"])
    assert r["accuracy"] == pytest.approx(0.5)
    assert r["auroc"] == pytest.approx(3 / 4)  # pairs (0.4>0.1), (0.9>0.1), (0.9>0.6) of 4
    assert r["auroc_macro"] == pytest.approx(3 / 4)
    assert r["sensitivity"] == pytest.approx(0.5) and r["specificity"] == pytest.approx(0.5)
    assert r["precision"] == pytest.approx(0.5)


def test_perfectly_separable_auroc_is_one_and_undefined_class_is_nan():
    y = [0, 0, 1, 1, 2, 2]
    p = np.eye(3)[y] * 0.7 + 0.1
    assert macro_auroc(y, p) == 1.0
    # class 2 never occurs: its AUROC is undefined, not 0, and the macro mean skips it
    r = classification_report(
        [0, 0, 1, 1], [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]]
    )
    assert math.isnan(r["per_class"]["2"]["auroc"]) and r["auroc_macro"] == 1.0
    assert r["balanced_accuracy"] == 1.0  # recall over the classes present, as scikit-learn


def test_stateful_metric_accumulates_batches_from_logits():
    m = ClassificationMetrics(3, ["a", "b", "c"])
    logits = torch.log(torch.tensor(P))
    m.update(logits[:4], torch.tensor(Y[:4]))
    m.update(logits[4:], torch.tensor(Y[4:]))
    r = m.compute()
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert r["per_class"]["a"]["auroc"] == pytest.approx(11 / 12)
    m.reset()
    with (
        pytest.raises(DataError, match="no predictions"),
        pytest.warns(UserWarning, match="before the ``update``"),
    ):
        m.compute()


def test_class_weights_balanced_formula():
    labels = [0, 0, 0, 1]
    assert compute_class_weights(labels, 2) == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    labels = [0] * 356 + [1] * 144  # Sayed 2025's proportions give their 0.702 / 1.73
    w = compute_class_weights(labels, 2)
    assert w == pytest.approx(compute_class_weight("balanced", classes=np.array([0, 1]), y=np.array(labels)))
    assert w == pytest.approx([0.702, 1.736], abs=1e-3)
    assert compute_class_weights([0, 0, 2], 3) == pytest.approx([3 / 6, 0.0, 3 / 3])
    assert compute_class_weights([0, 1], 2, mode="none") == [1.0, 1.0]
    with pytest.raises(ConfigError, match="unknown mode 'inverse'"):
        compute_class_weights([0, 1], 2, mode="inverse")
    with pytest.raises(DataError, match="labels must be in 0..1"):
        compute_class_weights([0, 3], 2)


def test_bootstrap_resamples_patients_as_units():
    # patient A: 10 samples all right; patient B: 10 samples all wrong
    y = np.array([1] * 20)
    p = np.array([0.9] * 10 + [0.1] * 10)
    groups = ["A"] * 10 + ["B"] * 10
    ci = bootstrap_ci(accuracy, y, p, n=200, seed=1, groups=groups)
    assert ci["value"] == 0.5 and ci["level"] == "group" and ci["n_valid"] == 200
    # only whole patients are drawn: every resample scores 0, 0.5 or 1
    draws = {round(v, 6) for v in _all_draws(y, p, groups)}
    assert draws <= {0.0, 0.5, 1.0}
    assert ci["low"] == 0.0 and ci["high"] == 1.0
    sample_ci = bootstrap_ci(accuracy, y, p, n=200, seed=1)
    assert (
        0.25 < sample_ci["low"] < 0.5 < sample_ci["high"] < 0.75
    )  # far narrower when samples are independent
    again = bootstrap_ci(accuracy, y, p, n=200, seed=1)
    assert again == sample_ci  # seeded


def _all_draws(y, p, groups):
    values = []

    def record(yt, yp):
        values.append(accuracy(yt, yp))
        return values[-1]

    bootstrap_ci(record, y, p, n=50, seed=3, groups=groups)
    return values


def test_bootstrap_skips_undefined_resamples():
    y, p = np.array([0, 1]), np.array([0.2, 0.8])
    ci = bootstrap_ci(macro_auroc, y, p, n=100, seed=0)
    # resamples holding one class only have no AUROC; the others are all 1
    assert 0 < ci["n_valid"] < 100 and ci["low"] == ci["high"] == ci["value"] == 1.0


def test_plots_are_written_as_png(tmp_path):
    figs = save_classification_plots(Y, P, ["healthy", "bulge", "hernia"], tmp_path, prefix="test")
    assert set(figs) == {"test_confusion_matrix", "test_confusion_matrix_normalized", "test_roc", "test_pr"}
    for stem in figs:
        data = (tmp_path / f"{stem}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    roc_lines = figs["test_roc"].axes[0].get_lines()
    assert len(roc_lines) == 4  # three classes and the chance diagonal
    binary = save_classification_plots(
        [0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], ["no", "yes"], tmp_path, prefix="bin"
    )
    assert len(binary["bin_roc"].axes[0].get_lines()) == 2  # the positive class and the diagonal
