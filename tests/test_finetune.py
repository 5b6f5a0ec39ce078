"""Two-stage fine-tuning: the backbone is really frozen in stage 1 and trains at finetune_lr in stage 2."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spinenet.errors import ConfigError
from spinenet.lit.finetune import BACKBONE_GROUP, TwoStageFinetuning
from spinenet.models.classification import Classifier


class TinyModule(L.LightningModule):
    """A classifier with a batch-normed backbone; ``all_params`` mimics an optimizer built on every param."""

    def __init__(self, lr: float = 0.05, all_params: bool = False, scheduler: str | None = None):
        super().__init__()
        backbone = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.net = Classifier(backbone, nn.Linear(8, 2), 8)
        self.lr, self.all_params, self.scheduler = lr, all_params, scheduler

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        params = self.parameters() if self.all_params else [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.1)
        if self.scheduler == "step":
            return {
                "optimizer": opt,
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
            }
        if self.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}
        return opt


class Probe(Callback):
    """Snapshots of weights, BN statistics, gradients and learning rates at the end of every epoch."""

    def __init__(self):
        self.epochs: list[dict] = []
        self._grad_none: list[bool] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        # Lightning sets gradients to None after each step, so they are looked at right before it
        self._grad_none.append(all(p.grad is None for p in pl_module.net.backbone.parameters()))

    def on_train_epoch_end(self, trainer, pl_module):
        bb = pl_module.net.backbone
        opt = trainer.optimizers[0]
        self.epochs.append(
            {
                "backbone": [p.detach().clone() for p in bb.parameters()],
                "running_mean": bb[1].running_mean.clone(),
                "head": [p.detach().clone() for p in pl_module.net.head.parameters()],
                "grad_none": all(self._grad_none),
                "grad_some": not any(self._grad_none),
                "requires_grad": [p.requires_grad for p in bb.parameters()],
                "bn_training": bb[1].training,
                "groups": [(g.get("name"), g["lr"], {id(p) for p in g["params"]}) for g in opt.param_groups],
            }
        )
        self._grad_none = []


def _data(n: int = 24) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=4)


def _fit(module: L.LightningModule, callbacks: list, epochs: int = 3, **trainer_kwargs) -> L.Trainer:
    torch.manual_seed(0)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **trainer_kwargs,
    )
    trainer.fit(module, _data(), _data(8))
    return trainer


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("all_params", [False, True])
def test_backbone_frozen_in_stage1_and_finetuned_in_stage2(all_params):
    module = TinyModule(all_params=all_params)
    start = [p.detach().clone() for p in module.net.backbone.parameters()]
    start_mean = module.net.backbone[1].running_mean.clone()
    probe = Probe()
    _fit(module, [TwoStageFinetuning(freeze_epochs=2, finetune_lr=1e-4), probe])
    e0, e1, e2 = probe.epochs
    # stage 1: no gradient and no change in the backbone (even with weight decay), BN statistics fixed
    for e in (e0, e1):
        assert e["grad_none"] and not any(e["requires_grad"])
        assert _same(e["backbone"], start)
        assert torch.equal(e["running_mean"], start_mean) and not e["bn_training"]
    assert not _same(e0["head"], e1["head"])  # the head does train
    assert [lr for _, lr, _ in e1["groups"]] == [0.05]
    # stage 2: the backbone trains, in its own group at finetune_lr; the head continues at the low rate too
    assert all(e2["requires_grad"]) and e2["grad_some"] and e2["bn_training"]
    assert not _same(e2["backbone"], start)
    names = [name for name, _, _ in e2["groups"]]
    assert names == [None, BACKBONE_GROUP]
    backbone_ids = {id(p) for p in module.net.backbone.parameters()}
    (_, head_lr, head_ids), (_, bb_lr, bb_ids) = e2["groups"]
    assert bb_lr == pytest.approx(1e-4) and bb_ids == backbone_ids
    assert head_lr == pytest.approx(1e-4) and head_ids == {id(p) for p in module.net.head.parameters()}


def test_head_lr_and_schedulers_follow_the_new_group():
    module = TinyModule(scheduler="step")
    probe = Probe()
    trainer = _fit(
        module, [TwoStageFinetuning(freeze_epochs=1, finetune_lr=1e-3, head_lr=2e-3), probe], epochs=3
    )
    # StepLR halves every epoch (Lightning steps it before on_train_epoch_end); the groups were set to
    # 2e-3 / 1e-3 at the start of epoch 1 and the new backbone group is scheduled like the head's
    assert [lr for _, lr, _ in probe.epochs[1]["groups"]] == pytest.approx([1e-3, 5e-4])
    assert [lr for _, lr, _ in probe.epochs[2]["groups"]] == pytest.approx([5e-4, 2.5e-4])
    assert len(trainer.lr_scheduler_configs[0].scheduler.base_lrs) == 2


def test_plateau_scheduler_and_early_stopping_survive_the_switch():
    module = TinyModule(scheduler="plateau")
    stop = EarlyStopping(monitor="val_loss", patience=5)
    probe = Probe()
    trainer = _fit(module, [TwoStageFinetuning(freeze_epochs=1, finetune_lr=1e-4), stop, probe], epochs=3)
    assert len(trainer.lr_scheduler_configs[0].scheduler.min_lrs) == 2
    assert probe.epochs[-1]["groups"][1][0] == BACKBONE_GROUP


def test_resume_in_stage2_does_not_add_the_group_twice(tmp_path):
    module = TinyModule()
    trainer = _fit(module, [TwoStageFinetuning(freeze_epochs=1, finetune_lr=1e-4)], epochs=2)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    probe = Probe()
    resumed = TinyModule()
    torch.manual_seed(0)
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[TwoStageFinetuning(freeze_epochs=1, finetune_lr=1e-4), probe],
    )
    trainer.fit(resumed, _data(), _data(8), ckpt_path=ckpt)
    (epoch,) = probe.epochs
    assert [name for name, _, _ in epoch["groups"]] == [None, BACKBONE_GROUP]
    assert all(epoch["requires_grad"]) and epoch["grad_some"]


def test_missing_backbone_is_a_config_error():
    class NoBackbone(TinyModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(6, 2)

    with pytest.raises(ConfigError, match="no backbone module at net.backbone / model.backbone / backbone"):
        _fit(NoBackbone(), [TwoStageFinetuning(freeze_epochs=1)], epochs=1)
    with pytest.raises(ConfigError, match="freeze_epochs"):
        TwoStageFinetuning(freeze_epochs=-1)
