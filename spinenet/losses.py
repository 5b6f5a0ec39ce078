"""Segmentation losses by name: Dice + λ·focal (Sayed 2025), Dice, categorical focal, cross-entropy.

Every loss takes **logits** ``(B, C, H, W)`` and an integer target ``(B, H, W)`` (or ``(B, 1, H, W)``) with
class ids ``0..C-1`` (class 0 is background), and returns a scalar.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from spinenet.errors import ConfigError

__all__ = ["LOSS_NAMES", "CategoricalFocalLoss", "DiceFocalLoss", "SoftDiceLoss", "WeightedCrossEntropy",
           "build_loss"]


def _target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Integer target (B, H, W) that matches ``logits`` (B, C, H, W)."""
    if target.dim() == logits.dim() and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not fit logits {tuple(logits.shape)}: "
                         "expected (B, H, W) class ids")
    return target.long()


def _weights(class_weights: Sequence[float] | float | None, num_classes: int) -> torch.Tensor:
    """Per-class weights: None -> 1 for every class; one number -> that weight for every class."""
    if class_weights is None:
        return torch.ones(num_classes)
    if isinstance(class_weights, int | float):
        class_weights = [float(class_weights)] * num_classes
    w = torch.as_tensor([float(v) for v in class_weights], dtype=torch.float32)
    if w.numel() != num_classes:
        raise ConfigError(f"loss.class_weights: expected {num_classes} values (one per class, background "
                          f"first), got {w.numel()}")
    if (w < 0).any() or not torch.isfinite(w).all():
        raise ConfigError(f"loss.class_weights: expected finite values >= 0, got {w.tolist()}")
    return w


class CategoricalFocalLoss(nn.Module):
    """Softmax (categorical) focal loss with per-class weights (Lin et al. 2017; Sayed 2025 eq. 3).

        L_F = (1/N) Σ_i w_{y_i} · (1 − p_{i,y_i})^γ · (−log p_{i,y_i})

    over the N pixels of the batch, where p_i = softmax(logits_i) over **all** classes and y_i is the true
    class. γ = 0 and unit weights give cross-entropy. ``include_background=False`` gives background pixels
    weight 0 (they still count in N, and the softmax still includes the background logit).

    MONAI's ``FocalLoss(use_softmax=True)`` computes the same per-pixel term, but its "mean" also divides by
    C, and with ``include_background=False`` it drops the background logit *before* the softmax; hence
    this small module on ``F.cross_entropy`` (−log p_t, computed stably from the logits).
    """

    def __init__(self, num_classes: int, gamma: float = 2.0,
                 class_weights: Sequence[float] | float | None = None, include_background: bool = True):
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"loss.gamma: expected a value >= 0, got {gamma}")
        self.num_classes, self.gamma = int(num_classes), float(gamma)
        w = _weights(class_weights, self.num_classes)
        if not include_background:
            w[0] = 0.0
        self.register_buffer("weight", w)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _target(logits, target)
        ce = F.cross_entropy(logits.float(), target, reduction="none")  # −log p_t per pixel
        p_t = torch.exp(-ce)
        return (self.weight[target] * (1.0 - p_t).pow(self.gamma) * ce).mean()


class SoftDiceLoss(nn.Module):
    """Soft Dice loss on softmax outputs with per-class weights (Sayed 2025 eq. 2), MONAI's ``DiceLoss``.

        L_D = (1/C') Σ_c w_c · (1 − (2 Σ_i p_ic q_ic + s) / (Σ_i p_ic + Σ_i q_ic + s))

    with sums over every pixel of the batch (``batch=True``, as Keras ``segmentation_models`` with
    ``per_image=False``), q the one-hot target, s = ``smooth`` (eq. 2 uses 1) and C' the classes included.
    """

    def __init__(self, num_classes: int, class_weights: Sequence[float] | float | None = None,
                 include_background: bool = True, smooth: float = 1.0):
        super().__init__()
        w = _weights(class_weights, int(num_classes))
        self.dice = DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True,
                             batch=True, smooth_nr=float(smooth), smooth_dr=float(smooth),
                             weight=w if include_background else w[1:])

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # MONAI wants a (B, 1, H, W) target; spinenet's masks are (B, H, W)
        return self.dice(logits.float(), _target(logits, target).unsqueeze(1))


class DiceFocalLoss(nn.Module):
    """Dice + λ·focal for softmax outputs with per-class weights (Sayed et al. 2025, eq. 2–4).

        L = L_D + λ · L_F

        L_D = (1/C') Σ_c w_c · (1 − (2 Σ_i p_ic q_ic + s) / (Σ_i p_ic + Σ_i q_ic + s))       (eq. 2)
        L_F = (1/N)  Σ_i w_{y_i} · (−(1 − p_{i,y_i})^γ · log p_{i,y_i})                          (eq. 3)

    p = softmax(logits) over the C classes, q the one-hot target, y_i the true class of pixel i, N the
    pixels in the batch, s = ``smooth`` (1 in eq. 2), sums over every pixel of the batch. C' = C, or C − 1
    with ``include_background=False`` (background left out of L_D and background pixels weighted 0 in L_F).

    Sayed 2025 used class weights 0.25 for each of their 4 classes with Keras ``segmentation_models``'
    ``DiceLoss(class_weights) + CategoricalFocalLoss()``. Its Dice loss, 1 − Σ_c w_c D_c / C, differs from
    L_D only by the constant 1 − mean(w) (same gradients). Its focal loss also averages over the class axis,
    i.e. is L_F / C with a fixed α = 0.25: ``lambda_focal = 1 / C`` reproduces that balance. Uniform weights
    w scale L by w, which Adam (their optimizer) is insensitive to.
    """

    def __init__(self, num_classes: int, lambda_focal: float = 1.0, gamma: float = 2.0,
                 class_weights: Sequence[float] | float | None = None, include_background: bool = True,
                 smooth: float = 1.0):
        super().__init__()
        if lambda_focal < 0:
            raise ConfigError(f"loss.lambda_focal: expected a value >= 0, got {lambda_focal}")
        self.lambda_focal = float(lambda_focal)
        self.dice = SoftDiceLoss(num_classes, class_weights, include_background, smooth)
        self.focal = CategoricalFocalLoss(num_classes, gamma, class_weights, include_background)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target) + self.lambda_focal * self.focal(logits, target)


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with class weights: Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}, as ``nn.CrossEntropyLoss(weight)``.

    Reduced here rather than by ``F.cross_entropy``: its CUDA mean reduction has no deterministic
    implementation, which ``trainer.deterministic=true`` would turn into an error.
    """

    def __init__(self, num_classes: int, class_weights: Sequence[float] | float | None = None):
        super().__init__()
        self.register_buffer("weight", _weights(class_weights, int(num_classes)))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _target(logits, target)
        w = self.weight[target]
        nll = F.cross_entropy(logits.float(), target, reduction="none")
        return (w * nll).sum() / w.sum().clamp(min=1e-12)


_BUILDERS: dict[str, Any] = {
    "dice_focal": DiceFocalLoss,
    "dice": SoftDiceLoss,
    "focal": CategoricalFocalLoss,
    "ce": WeightedCrossEntropy,
}
_OPTIONS: dict[str, tuple[str, ...]] = {
    "dice_focal": ("lambda_focal", "gamma", "class_weights", "include_background", "smooth"),
    "dice": ("class_weights", "include_background", "smooth"),
    "focal": ("gamma", "class_weights", "include_background"),
    "ce": ("class_weights",),
}
LOSS_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_loss(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Loss ``name`` (one of :data:`LOSS_NAMES`) for ``num_classes`` classes, background included.

    ``class_weights``: one weight per class (background first) or one number for every class (Sayed 2025:
    0.25). Options (None means the default): ``dice_focal``: lambda_focal (1.0), gamma (2.0), class_weights,
    include_background (True), smooth (1.0); ``dice``: class_weights, include_background, smooth; ``focal``:
    gamma, class_weights, include_background; ``ce``: class_weights.
    """
    key = str(name).strip().lower().replace("-", "_").replace("+", "_")
    aliases = {"dicefocal": "dice_focal", "focal_dice": "dice_focal", "cross_entropy": "ce",
               "crossentropy": "ce"}
    key = aliases.get(key, key)
    if key not in _BUILDERS:
        raise ConfigError(f"loss.name: unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError("loss.num_classes: expected an integer >= 2 (background included), "
                          f"got {num_classes!r}")
    options = {k: v for k, v in kwargs.items() if v is not None}
    unknown = sorted(set(options) - set(_OPTIONS[key]))
    if unknown:
        raise ConfigError(f"loss: unknown option(s) {unknown} for {key}; valid: {', '.join(_OPTIONS[key])}")
    if "class_weights" in options and not isinstance(options["class_weights"], int | float):
        options["class_weights"] = list(options["class_weights"])  # OmegaConf ListConfig -> list
    return _BUILDERS[key](num_classes, **options)
