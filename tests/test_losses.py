"""Losses against their formulas (Sayed 2025 eq. 2–4) on a hand-computed 2×2, 3-class case."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import FocalLoss

from spinenet.errors import ConfigError
from spinenet.losses import LOSS_NAMES, build_loss

# Softmax probabilities per pixel (rows; pixels in row-major order of the 2×2 image) and the true classes.
# Logits = log(p) make softmax(logits) = p exactly, so every number below can be worked out by hand.
P = torch.tensor([[0.7, 0.2, 0.1],
                  [0.1, 0.8, 0.1],
                  [0.2, 0.3, 0.5],
                  [0.6, 0.3, 0.1]], dtype=torch.float64)
LOGITS = P.log().T.reshape(1, 3, 2, 2).float()
TARGET = torch.tensor([[[0, 1], [2, 1]]])

# Dice per class with smooth s = 1 (eq. 2), D_c = (2 Σ p·q + 1) / (Σ p + Σ q + 1):
#   class 0: Σp·q = 0.7,       Σp = 0.7+0.1+0.2+0.6 = 1.6, Σq = 1  ->  2.4 / 3.6
#   class 1: Σp·q = 0.8+0.3,   Σp = 0.2+0.8+0.3+0.3 = 1.6, Σq = 2  ->  3.2 / 4.6
#   class 2: Σp·q = 0.5,       Σp = 0.1+0.1+0.5+0.1 = 0.8, Σq = 1  ->  2.0 / 2.8
DICE = [2.4 / 3.6, 3.2 / 4.6, 2.0 / 2.8]
# Focal terms (eq. 3, γ = 2) per pixel, p_t = 0.7, 0.8, 0.5, 0.3 for true classes 0, 1, 2, 1
FOCAL = [0.3**2 * -math.log(0.7), 0.2**2 * -math.log(0.8), 0.5**2 * -math.log(0.5), 0.7**2 * -math.log(0.3)]
PIXEL_CLASS = [0, 1, 2, 1]


def test_dice_focal_matches_the_formula():
    loss_d = sum(1 - d for d in DICE) / 3  # 0.307798
    loss_f = sum(FOCAL) / 4  # 0.201065
    assert loss_d == pytest.approx(0.307798, abs=1e-6) and loss_f == pytest.approx(0.201065, abs=1e-6)
    assert float(build_loss("dice_focal", 3)(LOGITS, TARGET)) == pytest.approx(0.508863, abs=1e-5)
    assert float(build_loss("dice_focal", 3, lambda_focal=0.5)(LOGITS, TARGET)) == pytest.approx(
        loss_d + 0.5 * loss_f, abs=1e-5)
    assert float(build_loss("dice", 3)(LOGITS, TARGET)) == pytest.approx(loss_d, abs=1e-6)
    assert float(build_loss("focal", 3)(LOGITS, TARGET)) == pytest.approx(loss_f, abs=1e-6)
    # γ = 0: the focal term is cross-entropy; ce is −mean log p_t
    ce = (-math.log(0.7) - math.log(0.8) - math.log(0.5) - math.log(0.3)) / 4
    assert float(build_loss("focal", 3, gamma=0.0)(LOGITS, TARGET)) == pytest.approx(ce, abs=1e-6)
    assert float(build_loss("ce", 3)(LOGITS, TARGET)) == pytest.approx(ce, abs=1e-6)


def test_class_weights_change_the_value_as_the_formula_says():
    w = [0.5, 1.0, 2.0]
    loss_d = sum(wc * (1 - d) for wc, d in zip(w, DICE, strict=True)) / 3
    loss_f = sum(w[c] * f for c, f in zip(PIXEL_CLASS, FOCAL, strict=True)) / 4
    got = float(build_loss("dice_focal", 3, class_weights=w)(LOGITS, TARGET))
    assert got == pytest.approx(loss_d + loss_f, abs=1e-5)
    # Sayed 2025: 0.25 for every class scales the whole loss by 0.25
    unweighted = float(build_loss("dice_focal", 3)(LOGITS, TARGET))
    quarter = float(build_loss("dice_focal", 3, class_weights=[0.25] * 3)(LOGITS, TARGET))
    assert quarter == pytest.approx(0.25 * unweighted, rel=1e-6)
    assert float(build_loss("dice_focal", 3, class_weights=0.25)(LOGITS, TARGET)) == pytest.approx(quarter)
    # a zero weight removes that class: focal keeps only pixel 0 (class 0)
    only_bg = float(build_loss("focal", 3, class_weights=[1.0, 0.0, 0.0])(LOGITS, TARGET))
    assert only_bg == pytest.approx(FOCAL[0] / 4, abs=1e-6)
    # weighted cross-entropy: Σ w_y ℓ / Σ w_y
    ce_w = (0.5 * -math.log(0.7) + 1 * -math.log(0.8) + 2 * -math.log(0.5) + 1 * -math.log(0.3)) / 4.5
    assert float(build_loss("ce", 3, class_weights=w)(LOGITS, TARGET)) == pytest.approx(ce_w, abs=1e-6)


def test_without_background():
    loss_d = ((1 - DICE[1]) + (1 - DICE[2])) / 2
    loss_f = (FOCAL[1] + FOCAL[2] + FOCAL[3]) / 4  # background pixels weigh 0 but still count in N
    got = float(build_loss("dice_focal", 3, include_background=False)(LOGITS, TARGET))
    assert got == pytest.approx(loss_d + loss_f, abs=1e-5)


def test_focal_is_the_softmax_focal_term_of_monai():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    ours = build_loss("focal", 4, gamma=2.0, class_weights=[0.1, 0.2, 0.3, 0.4])(logits, target)
    monai = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0, weight=[0.1, 0.2, 0.3, 0.4],
                      reduction="none")(logits, target.unsqueeze(1))
    # MONAI's "mean" would also divide by the 4 classes; summing over the class axis gives L_F per pixel
    assert torch.allclose(ours, monai.sum(1).mean(), atol=1e-6)


def test_gradients_flow_and_descent_lowers_the_loss():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 16, 16))
    for name in LOSS_NAMES:
        logits = torch.randn(2, 4, 16, 16, requires_grad=True)
        loss_fn = build_loss(name, 4, class_weights=[0.25] * 4)
        loss = loss_fn(logits, target)
        loss.backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
        with torch.no_grad():
            stepped = logits - 50.0 * logits.grad
        assert loss_fn(stepped, target).item() < loss.item(), name


def test_target_with_channel_axis_and_perfect_prediction():
    target = torch.randint(0, 3, (2, 8, 8))
    logits = 20.0 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    loss_fn = build_loss("dice_focal", 3)
    assert float(loss_fn(logits, target.unsqueeze(1))) == pytest.approx(float(loss_fn(logits, target)))
    assert float(loss_fn(logits, target)) < 1e-6


def test_build_loss_errors():
    with pytest.raises(ConfigError, match="dice_focal, dice, focal, ce"):
        build_loss("tversky", 3)
    with pytest.raises(ConfigError, match="expected 3 values"):
        build_loss("dice_focal", 3, class_weights=[0.25] * 4)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['gamma'\] for ce"):
        build_loss("ce", 3, gamma=2.0)
    with pytest.raises(ConfigError, match=">= 0"):
        build_loss("focal", 3, class_weights=[1.0, -1.0, 1.0])
    # null options from the config groups mean the defaults
    assert build_loss("dice_focal", 3, class_weights=None, lambda_focal=None).lambda_focal == 1.0
