"""Two-stage transfer learning in one run (Šušteršič 2022, Sayed 2025), as a Lightning callback.

Stage 1 (epochs ``0 .. freeze_epochs-1``): the backbone is frozen and only the new head trains, at the
optimizer's own learning rate (Sayed 2025: Adam 1e-3). Stage 2 (from epoch ``freeze_epochs``): the backbone
is unfrozen and the whole network continues at a low learning rate ``finetune_lr`` (Šušteršič 2022: 1e-5,
Sayed 2025: 1e-4); the head's groups go to ``head_lr`` (default: ``finetune_lr``, as both papers recompiled
the whole model at the low rate).

Mechanics, and why:

- The backbone is found at ``pl_module.net.backbone``, ``pl_module.model.backbone`` or ``pl_module.backbone``
  (or the dotted ``backbone_attr``); every :func:`~spinenet.models.classification.build_classifier` model has
  one.
- The LightningModule's ``configure_optimizers`` may pass only trainable parameters
  (``filter(lambda p: p.requires_grad, ...)``, Lightning's recommendation) or all of them: frozen parameters
  get no gradient, and torch optimizers skip parameters without gradient entirely (no weight decay either).
- In stage 2 the backbone's parameters move into one new param group named ``"backbone"`` with
  ``lr=finetune_lr`` (LearningRateMonitor logs it under that name). Membership is tested by identity:
  Lightning's ``BaseFinetuning.filter_on_optimizer`` compares tensors by *value* (``torch.equal``), which
  skips a backbone parameter that happens to equal a head parameter (e.g. zero biases of the same shape).
- LR schedulers created in ``configure_optimizers`` keep one base LR per group; they are extended for the
  new group (``zip(..., strict=True)`` in torch would fail otherwise), ReduceLROnPlateau's ``min_lrs`` too.
- Frozen batch norms run in eval mode (moving statistics fixed), as Keras does for ``trainable=False``;
  ``train_bn=True`` keeps Lightning's default instead (BN affine parameters train in stage 1).
- EarlyStopping's patience counter is reset at the switch, so fine-tuning gets its full patience after the
  loss jump that unfreezing often causes. EarlyStopping can still end the run during stage 1 if its
  patience is shorter than ``freeze_epochs``.
- Resuming from a checkpoint: the "backbone" group is restored by ``BaseFinetuning``; stage 2 is re-entered
  without adding it twice.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from spinenet.errors import ConfigError

BACKBONE_GROUP = "backbone"
_SEARCH = ("net.backbone", "model.backbone", "backbone")


def _resolve(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


class TwoStageFinetuning(BaseFinetuning):
    """Freeze the backbone for ``freeze_epochs`` epochs, then train everything at ``finetune_lr``."""

    def __init__(
        self,
        freeze_epochs: int = 10,
        finetune_lr: float = 1e-5,
        head_lr: float | None = None,
        train_bn: bool = False,
        backbone_attr: str | None = None,
        reset_early_stopping: bool = True,
    ):
        super().__init__()
        if int(freeze_epochs) < 0:
            raise ConfigError(f"finetune.freeze_epochs: expected >= 0, got {freeze_epochs}")
        if float(finetune_lr) <= 0:
            raise ConfigError(f"finetune.finetune_lr: expected > 0, got {finetune_lr}")
        self.freeze_epochs = int(freeze_epochs)
        self.finetune_lr = float(finetune_lr)
        self.head_lr = self.finetune_lr if head_lr is None else float(head_lr)
        self.train_bn = bool(train_bn)
        self.backbone_attr = backbone_attr
        self.reset_early_stopping = bool(reset_early_stopping)

    # -- helpers ---------------------------------------------------------------------------------------
    def backbone(self, pl_module: L.LightningModule) -> nn.Module:
        paths = (self.backbone_attr,) if self.backbone_attr else _SEARCH
        for path in paths:
            found = _resolve(pl_module, path)
            if isinstance(found, nn.Module):
                return found
        raise ConfigError(
            f"finetune: {type(pl_module).__name__} has no backbone module at "
            f"{' / '.join(paths)}; set finetune.backbone_attr"
        )

    def _set_bn_mode(self, backbone: nn.Module, train: bool) -> None:
        for m in backbone.modules():
            if isinstance(m, _BatchNorm):
                m.train(train)

    @staticmethod
    def in_stage2(optimizer: torch.optim.Optimizer) -> bool:
        return any(g.get("name") == BACKBONE_GROUP for g in optimizer.param_groups)

    # -- BaseFinetuning hooks --------------------------------------------------------------------------
    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        if self.freeze_epochs > 0:
            self.freeze(self.backbone(pl_module), train_bn=self.train_bn)

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: torch.optim.Optimizer
    ) -> None:
        backbone = self.backbone(pl_module)
        if epoch < self.freeze_epochs:
            if not self.train_bn:
                self._set_bn_mode(backbone, False)
            return
        resumed = self.in_stage2(optimizer)
        if resumed and all(p.requires_grad for p in backbone.parameters()):
            return  # already switched in this run
        self.make_trainable(backbone)
        self._set_bn_mode(backbone, pl_module.training)
        if resumed:  # param groups restored from a checkpoint; only the requires_grad flags were lost
            return
        ids = {id(p) for p in backbone.parameters()}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
            group["lr"] = group["initial_lr"] = self.head_lr
        params = [p for p in backbone.parameters() if p.requires_grad]
        optimizer.add_param_group(
            {"params": params, "lr": self.finetune_lr, "initial_lr": self.finetune_lr, "name": BACKBONE_GROUP}
        )
        trainer = pl_module.trainer
        self._sync_schedulers(trainer, optimizer)
        if self.reset_early_stopping:
            for cb in trainer.early_stopping_callbacks:
                cb.wait_count = 0

    @staticmethod
    def _sync_schedulers(trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> None:
        groups = optimizer.param_groups
        for config in trainer.lr_scheduler_configs:
            sched = config.scheduler
            if getattr(sched, "optimizer", None) is not optimizer:
                continue
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                default = sched.min_lrs[0] if sched.min_lrs else 0.0
                sched.min_lrs = list(sched.min_lrs) + [default] * (len(groups) - len(sched.min_lrs))
            if hasattr(sched, "base_lrs"):
                sched.base_lrs = [g.get("initial_lr", g["lr"]) for g in groups]
            if hasattr(sched, "_last_lr"):
                sched._last_lr = [g["lr"] for g in groups]


__all__ = ["BACKBONE_GROUP", "TwoStageFinetuning"]
