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
        # Lightning skips this hook for the first epoch after a resume; the training sampler
        # (spinenet.data.datamodule.EpochShuffleSampler) reseeds then, through set_epoch
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
