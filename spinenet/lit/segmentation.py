"""LightningModule for semantic segmentation (any net from ``build_segmenter``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from spinenet.lit.contract_io import WritesContract
from spinenet.metrics.segmentation import (
    EMPTY_CLASS_POLICY,
    MODEL_RES_SUFFIX,
    RESOLUTION_NOTE,
    SegmentationMetrics,
    flatten_metrics,
    to_native_resolution,
)
from spinenet.utils.overlay import comparison_grid, save_image

log = logging.getLogger(__name__)


class SegmentationModule(WritesContract, L.LightningModule):
    """Trains ``net`` with ``loss``; logs loss and per-class Dice/IoU on train, val and test.

    ``optimizer`` and ``scheduler`` are partials (Hydra ``_partial_: true``) that get the parameters /
    optimizer. ``run_config`` (a plain dict) is stored in every checkpoint so ``spinenet eval`` can
    rebuild the model from the checkpoint alone, loading it with ``weights_only=True``.
    """

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, class_names: Sequence[str] = (),
                 monitor: str = "val/dice_mean_fg", num_overlays: int = 4, run_config: dict | None = None):
        super().__init__()
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.class_names = list(class_names)
        self.monitor, self.num_overlays = monitor, int(num_overlays)
        self.run_config = run_config or {}
        n = len(self.class_names)
        # keys get a suffix: "train" would clash with nn.Module.train. test_native: the test split at each
        # image's own size, when its batches carry the masks as stored (SpineDataModule's test loaders do)
        self.metrics = nn.ModuleDict(
            {f"{s}_metrics": SegmentationMetrics(n, self.class_names)
             for s in ("train", "val", "test", "test_native")}
        )
        # epoch losses as metrics too: they sync across DDP processes in our own hooks, at the same point on
        # every rank (a sync_dist log would sync inside rank 0's progress bar only, and deadlock)
        self.losses = nn.ModuleDict({f"{s}_loss": MeanMetric() for s in ("train", "val", "test")})
        self._overlay_batch: dict[str, torch.Tensor] | None = None

    # stated in metrics.json: how classes absent from an image or the data set are averaged
    averaging_note = EMPTY_CLASS_POLICY

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss(logits, batch["mask"])
        aux = getattr(self.net, "aux_logits", None)
        if stage == "train" and aux:  # deep supervision: the coarser decoder levels' logits, upsampled
            size = batch["mask"].shape[-2:]
            extra = [self.loss(F.interpolate(a, size=size, mode="bilinear", align_corners=False), batch["mask"])
                     for a in aux]
            loss = loss + self.net.deep_supervision * torch.stack(extra).mean()
            self.net.aux_logits = []
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage} loss is {loss.item()} at epoch {self.current_epoch}: "
                                     "lower optimizer.lr or check the data")
        self.metrics[f"{stage}_metrics"].update(logits.detach().max(1).indices, batch["mask"])
        self.losses[f"{stage}_loss"].update(loss.detach(), weight=batch["image"].shape[0])
        if stage == "train":
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss if stage == "train" else logits

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        logits = self._step(batch, "val")
        if batch_idx == 0 and self.num_overlays > 0:
            k = self.num_overlays
            self._overlay_batch = {"image": batch["image"][:k].cpu(), "mask": batch["mask"][:k].cpu(),
                                   "pred": logits[:k].max(1).indices.cpu()}

    def test_step(self, batch, batch_idx):
        logits = self._step(batch, "test")
        if "native_mask" in batch:
            for i, target in enumerate(batch["native_mask"]):
                native = to_native_resolution(logits[i], batch["native_box"][i], target.shape[-2:])
                self.metrics["test_native_metrics"].update(native[None].detach(), target[None])

    def _log_metrics(self, stage: str, metrics: str | None = None, suffix: str = "") -> dict[str, Any]:
        """Compute, log and reset ``metrics`` (default: the stage's) as ``{stage}/{name}{suffix}``."""
        metric = self.metrics[metrics or f"{stage}_metrics"]
        result = metric.compute()
        flat = {f"{k}{suffix}": v for k, v in flatten_metrics(result, prefix=stage).items()}
        self.log_dict(flat, prog_bar=False, sync_dist=False)  # already synced by the metric's state reduction
        if not suffix and f"{stage}/dice_mean_fg" in flat:
            self.log(f"{stage}/dice", flat[f"{stage}/dice_mean_fg"], prog_bar=True)
        metric.reset()
        return result

    def _log_loss(self, stage: str) -> None:
        self.log(f"{stage}/loss", float(self.losses[f"{stage}_loss"].compute()), prog_bar=False, sync_dist=False)
        self.losses[f"{stage}_loss"].reset()

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")
        self._log_loss("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        self._log_loss("val")
        if self._overlay_batch is not None and not self.trainer.sanity_checking:
            self._save_overlays()
        self._overlay_batch = None

    def on_test_epoch_end(self) -> None:
        self._log_loss("test")
        if not self.metrics["test_native_metrics"].update_called:  # batches without the stored masks
            self.test_results = {**self._log_metrics("test"), "resolution": "model input size (data.image_size)"}
            return
        model_res = self._log_metrics("test", suffix=MODEL_RES_SUFFIX)
        self.test_results = {**self._log_metrics("test", "test_native_metrics"), "resolution": RESOLUTION_NOTE,
                             "model_res": model_res}

    def _save_overlays(self) -> None:
        """Validation images with ground truth and prediction, as PNG in the run folder and in W&B."""
        if not self.trainer.is_global_zero:
            return
        b = self._overlay_batch
        grid = comparison_grid([im.numpy() for im in b["image"]], [m.numpy() for m in b["mask"]],
                               [p.numpy() for p in b["pred"]])
        out = Path(self.trainer.default_root_dir) / "overlays"
        out.mkdir(parents=True, exist_ok=True)
        save_image(grid, out / f"val_epoch{self.current_epoch:03d}.png")
        for logger in self.loggers:
            if hasattr(logger, "log_image"):  # W&B
                logger.log_image(key="val/overlay", images=[grid],
                                 caption=[f"epoch {self.current_epoch}: image | truth | prediction"])

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "interval": "epoch"}}

