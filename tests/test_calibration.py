"""Calibration after training: a temperature and a decision threshold fitted on validation, stored in the
checkpoint's contract, used by diagnose, measured on test."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spinenet.calibration import (
    calibrate_head,
    choose_threshold,
    decisions,
    expected_calibration_error,
    fit_temperature,
)
from spinenet.contract import CONTRACT_KEY, CropRecipe, Head, InputSpec, ModelContract


def _sampled(temperature: float, n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(logits / temperature): that temperature is the right one."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 3, generator=g) * 3
    labels = torch.multinomial(torch.softmax(logits / temperature, 1), 1, generator=g).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_temperature_recovers_the_one_that_generated_the_labels(true_t):
    logits, labels = _sampled(true_t)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.1)
    raw, fitted = torch.softmax(logits, 1), torch.softmax(logits / t, 1)
    assert expected_calibration_error(fitted, labels) < expected_calibration_error(raw, labels)


def test_youden_threshold_and_one_class_validation():
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7, 0.9])
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    assert choose_threshold(p, y, min_per_class=1) == (0.35, None)  # every positive called, no negative
    threshold, why = choose_threshold(p, np.zeros(7, int), min_per_class=1)
    assert threshold is None and "holds 0 positive and 7 negative" in why
    # with the default minimum, 4 positives are too few to choose a threshold on
    threshold, why = choose_threshold(p, y)
    assert threshold is None and "fewer than 10 of one class: arg-max kept" in why
    called = decisions(torch.tensor([[0.7, 0.3], [0.6, 0.4]]), 0.35)
    assert called.tolist() == [0, 1]


def test_a_rare_positive_class_gets_a_threshold_that_fits_its_rate():
    """Balanced class weights inflate the rare class: its arg-max over-calls; the chosen threshold does not."""
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(2000, generator=g) < 0.08).long()
    score = torch.randn(2000, generator=g) + 2.0 * y  # ranks positives higher, as a trained classifier does
    logits = torch.stack([torch.zeros(2000), score + 1.0], 1)  # a +1 shift: what balanced weights do
    fit = calibrate_head(logits, y)
    argmax_calls = int(logits.argmax(1).sum())
    thresholded = int(decisions(torch.softmax(logits / fit.temperature, 1), fit.threshold).sum())
    assert fit.threshold is not None and thresholded < argmax_calls
    assert fit.val["nll_calibrated"] <= fit.val["nll"]


def test_contract_applies_temperature_and_threshold():
    crop = CropRecipe(size=(32, 32))
    contract = ModelContract("classification", ("0", "1"), InputSpec((32, 32)), crop=crop,
                             heads=(Head("herniation", "binary", ("0", "1"), temperature=2.0, threshold=0.2),))
    p = contract.probabilities(torch.tensor([[0.0, 2.0]]))
    torch.testing.assert_close(p, torch.softmax(torch.tensor([[0.0, 1.0]]), 1))
    assert contract.decide([0.75, 0.25]) == 1 and contract.decide([0.85, 0.15]) == 0
    assert contract.without_calibration().heads[0].temperature == 1.0
    with pytest.raises(Exception, match="threshold must be in"):
        Head("h", "binary", ("0", "1"), threshold=1.5)


@pytest.mark.slow
def test_training_calibrates_the_checkpoints_it_keeps(compose_cfg, tmp_path):
    from spinenet.loading import load_model
    from spinenet.tasks.train import train
    from tests.test_cls_train import tiny_cls_overrides

    cfg = compose_cfg(["experiment=cls/sayed2025", *tiny_cls_overrides(tmp_path / "data"),
                       "data.synthesize.patients=16", "debug=limit", "trainer.max_epochs=2"])
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    tested = Path(metrics["tested_checkpoint"])
    cal = metrics["calibration"][tested.name]
    assert cal["temperature"] > 0 and cal["threshold_rule"] == "youden"
    assert {"ece", "ece_calibrated", "nll", "nll_calibrated"} <= set(cal["test"])
    assert (run / "plots" / "reliability_test.png").is_file()
    # the fit is in the checkpoint (and the SHA-256 recorded is the calibrated file's)
    saved = torch.load(tested, map_location="cpu", weights_only=True)
    head = saved[CONTRACT_KEY]["heads"][0]
    assert head["temperature"] == pytest.approx(cal["temperature"]) and head["threshold"] == cal["threshold"]
    assert saved[CONTRACT_KEY]["calibration"]["split"] == "val"
    assert metrics["checkpoint_sha256"][tested.name] == hashlib.sha256(tested.read_bytes()).hexdigest()
    _, contract = load_model(tested)
    assert contract.heads[0].temperature == pytest.approx(cal["temperature"])
    assert json.loads((run / "metrics.json").read_text())["calibration"][tested.name]["temperature"] == cal["temperature"]


@pytest.mark.slow
def test_release_model_trains_on_every_patient_with_the_given_calibration(compose_cfg, tmp_path):
    """release=all_patients: no validation or test split, the cross-validated calibration written in."""
    from spinenet.tasks.train import train
    from tests.test_cls_train import tiny_cls_overrides

    cfg = compose_cfg(["experiment=cls/sayed2025", *tiny_cls_overrides(tmp_path / "data"), "release=all_patients", "debug=limit",
                       "trainer.max_epochs=2", "calibrate={temperature: 1.7, threshold: 0.3}"])
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    splits = json.loads((run / "splits.json").read_text())["splits"]
    import pandas as pd

    patients = pd.read_csv(Path(cfg.data.dataset.root) / "manifest.csv")["patient_id"].astype(str)
    assert splits["val"] == [] and splits["test"] == [] and splits["train"] == sorted(set(patients))
    assert metrics["test"] == {} and metrics["best_checkpoint"] is None and metrics["epochs"] == 2
    last = run / "checkpoints" / "last.ckpt"
    head = torch.load(last, map_location="cpu", weights_only=True)[CONTRACT_KEY]["heads"][0]
    assert head["temperature"] == 1.7 and head["threshold"] == 0.3
    assert metrics["calibration"]["last.ckpt"]["threshold_rule"] == "given"


def test_a_bad_given_calibration_is_named():
    from spinenet.calibration import given_calibration
    from spinenet.errors import ConfigError

    with pytest.raises(ConfigError, match="calibrate.temperature must be a number > 0, got -1"):
        given_calibration({"temperature": -1})
    with pytest.raises(ConfigError, match=r"calibrate: true, false or \{temperature: T, threshold: t\}"):
        given_calibration({"temp": 1.0})
