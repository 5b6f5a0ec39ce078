"""Small Lightning callbacks the configs use."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


class EpochSeed(L.Callback):
    """Reseed every RNG at the start of each training epoch from (seed, epoch).

    Shuffling, augmentation and dropout of epoch k then depend only on the seed and k, not on what ran
    before, so a run killed mid-epoch and resumed from its last checkpoint replays that epoch exactly and
    ends with the same metrics as an uninterrupted run (with ``trainer.deterministic=true``).
    """

    def __init__(self, seed: int = 42) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning skips this hook on a restart from a mid-epoch checkpoint; the training sampler
        # (spinenet.data.datamodule.EpochShuffleSampler) reseeds then, through set_epoch. Nothing may draw from
        # the global RNGs between here and the first batch that differs between a straight and a resumed run:
        # the DataLoaders therefore draw their iterator seeds from their own generator (SpineDataModule._loader)
        seed_everything_for_epoch(self.seed, trainer.current_epoch, trainer.global_rank)
        datamodule = getattr(trainer, "datamodule", None)
        train_set = getattr(datamodule, "datasets", {}).get("train") if datamodule is not None else None
        if train_set is not None:
            train_set.epoch = trainer.current_epoch


def seed_everything_for_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Python, NumPy and torch RNGs from (seed, epoch, rank) only."""
    epoch_seed = (int(seed) * 1_000_003 + int(epoch) + 1000 * int(rank)) % 2**32
    random.seed(epoch_seed)
    np.random.seed(epoch_seed)
    torch.manual_seed(epoch_seed)


class PlateauResume(L.Callback):
    """A resumed run makes the ``ReduceLROnPlateau`` step of the epoch its checkpoint ended.

    Lightning steps plateau schedulers after ``on_train_epoch_end``, so after ``ModelCheckpoint``
    (``save_on_train_epoch_end``) has written that epoch's checkpoint, and a run resumed from it skips the step
    (the monitored value is not in the checkpoint): from then on its learning rate lags the uninterrupted
    run's. This callback stores in the checkpoint the values that step would use, and makes it on resuming.
    Other schedulers need nothing: Lightning steps them before validation, so before the checkpoint.
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._at_epoch_end = False  # between on_train_epoch_end and Lightning's plateau step
        self._pending: list[dict] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._at_epoch_end = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._at_epoch_end = True  # checkpoint callbacks run after this one

    def state_dict(self) -> dict:
        trainer, steps = self._trainer, []
        if self._at_epoch_end and trainer is not None and trainer.lightning_module.automatic_optimization:
            for index, config in enumerate(trainer.lr_scheduler_configs):
                # the same conditions as Lightning's own step (fit loop, end of epoch)
                if not config.reduce_on_plateau or config.interval != "epoch":
                    continue
                if (trainer.current_epoch + 1) % config.frequency:
                    continue
                value = trainer.callback_metrics.get(config.monitor)
                if value is not None:
                    steps.append({"index": index, "value": float(value)})
        return {"plateau_steps": steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = list(state_dict.get("plateau_steps") or [])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pending, self._pending = self._pending, None
        configs = trainer.lr_scheduler_configs
        for step in pending or []:
            if step["index"] < len(configs) and configs[step["index"]].reduce_on_plateau:
                pl_module.lr_scheduler_step(configs[step["index"]].scheduler, step["value"])


class TrainSpeed(L.Callback):
    """CPU/GPU speed options with no place in Lightning's Trainer (``spinenet bench train --setting`` measures them).

    channels_last: the module's weights and every batch's ``image`` in channels-last (NHWC) memory format,
    which oneDNN/cuDNN convolutions can run without reordering. compile: ``nn.Module.compile`` on the
    module's ``net`` in place (state-dict keys unchanged, so checkpoints stay loadable without it).
    """

    def __init__(self, channels_last: bool = False, compile: bool = False) -> None:
        self.channels_last, self.compile = bool(channels_last), bool(compile)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)
        if self.compile and getattr(pl_module.net, "_compiled_call_impl", None) is None:  # setup runs per stage
            pl_module.net.compile()

    def _to_channels_last(self, batch) -> None:
        # in place: the batch dict is the one the step receives
        if self.channels_last and isinstance(batch, dict) and getattr(batch.get("image"), "dim", lambda: 0)() == 4:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._to_channels_last(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._to_channels_last(batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._to_channels_last(batch)
