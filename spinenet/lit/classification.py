"""LightningModule for image classification (any net from ``build_classifier``).

Follows :class:`spinenet.lit.segmentation.SegmentationModule`: metrics are torchmetrics states (gathered
across DDP processes) computed in this module's own epoch-end hooks, the loss is a ``MeanMetric``, and
nothing is logged with ``sync_dist=True`` (that deadlocked under DDP).

Logged per epoch for ``train``, ``val`` and ``test``: ``loss``, ``accuracy``, ``balanced_accuracy``,
``f1_macro`` and ``auroc`` (binary: of the positive class; otherwise the macro mean of one-vs-rest AUROCs
over the classes present); the test epoch adds the macro and weighted averages. The full test report
(per class, confusion matrix, patient-level bootstrap 95 % intervals) is left in ``test_results``, which
``train(cfg)`` writes into ``metrics.json`` as ``per_class``. Confusion matrix, ROC and precision-recall
curves are saved under ``<run folder>/plots/`` and logged to W&B when a ``WandbLogger`` is attached; the
predictions of the split tested (test in a training run, any split with ``spinenet eval``) go to
``<run folder>/predictions.csv``.

``aggregate_by`` (manifest columns, e.g. ``[patient_id, ivd_label]`` for one SPIDER disc seen in several
series) also scores the mean prediction of each group: logged as ``{val,test}/agg_<metric>``, reported in
``test_results["aggregated"]`` and written to ``predictions_aggregated.csv``.

``level_prior`` (disc levels, e.g. ``[L5-S1, L4-L5, L3-L4, L2-L3, L1-L2]``) adds a learned logit offset per
level to the net's logits; every other or unknown level shares one more offset. A crop does not show which
disc it is, yet findings depend strongly on the level (SPIDER: 69-72% of L4-L5 and L5-S1 discs bulge, 9% of
T11-T12), and the level is known wherever crops come from (the manifest's ``data.dataset.level_col``; in
``spinenet diagnose``, the level named bottom-up). The offsets train with the net; at fit start they are set
to each level's log-odds in the training split (:func:`~spinenet.metrics.classification.level_log_odds`).

``head: ordinal`` reads the net's outputs as CORN ordinal logits (:mod:`spinenet.ordinal`) for an ordered label
(Pfirrmann 1-5): the net gives K - 1 outputs (``model.net.num_classes``), trained with the CORN loss (the
configured ``loss`` is not used; class weights still apply), and :meth:`forward` returns the log class
probabilities derived from the cumulative ones, so every consumer of class logits (metrics, predictions,
``diagnose``, ``spinenet ensemble``) gets class probabilities from a softmax as before. The level prior's
offsets are then added to the K - 1 CORN logits. The test report adds quadratic-weighted kappa, mean absolute
error, exact and within-one accuracy (``ordinal``, with bootstrap intervals; logged as ``test/qwk`` ...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn
from torchmetrics import CatMetric, MeanMetric
from torchmetrics.utilities import dim_zero_cat

from spinenet.data.datamodule import MISSING_LEVELS_MESSAGE
from spinenet.errors import ConfigError
from spinenet.lit.contract_io import WritesContract
from spinenet.metrics.classification import (
    ORDINAL_METRICS,
    ClassificationMetrics,
    accuracy,
    balanced_accuracy,
    bootstrap_ci,
    classification_report,
    compute_class_weights,
    flatten_report,
    level_log_odds,
    macro_auroc,
    save_classification_plots,
)
from spinenet.ordinal import CornLoss, corn_class_log_probs, corn_level_log_odds

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")
# metrics with a bootstrap interval in test_results["bootstrap"]
BOOTSTRAP_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "auroc": macro_auroc,
}


def _headline(report: dict[str, Any]) -> dict[str, float]:
    """The per-epoch numbers: binary AUROC is the positive class's, otherwise the macro mean."""
    return {
        "accuracy": report["accuracy"],
        "balanced_accuracy": report["balanced_accuracy"],
        "f1_macro": report["f1_macro"],
        "auroc": report.get("auroc", report["auroc_macro"]),
    }


class ClassificationModule(WritesContract, L.LightningModule):
    """Trains ``net`` with ``loss`` on ``batch["image"]`` → ``batch["label"]``.

    ``loss``: a loss module, or a factory (Hydra ``_partial_: true`` of ``spinenet.losses.build_loss``) that
    is called with ``class_weights=``. ``class_weights``: ``"balanced"`` (computed at fit start from
    ``trainer.datamodule.train_labels()``, scikit-learn's formula), a list with one weight per label, or
    None. They need a factory loss, or a loss module with a ``weight`` buffer of one value per class.
    ``optimizer``/``scheduler``: partials that get the trainable parameters / the optimizer.
    ``bootstrap``: resamples for the test intervals (0: none). ``aggregate_by``, ``level_prior``: see the
    module docstring.
    ``run_config`` is stored in checkpoints.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module | Callable[..., nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        label_names: Sequence[str] = (),
        monitor: str = "val/loss",
        class_weights: str | Sequence[float] | None = None,
        bootstrap: int = 1000,
        plots: bool = True,
        aggregate_by: Sequence[str] | None = None,
        level_prior: Sequence[str] | None = None,
        run_config: dict | None = None,
        head: str = "softmax",
    ):
        super().__init__()
        self.label_names = [str(n) for n in label_names]
        k = len(self.label_names)
        if k < 2:
            raise ConfigError(
                f"classification needs data.dataset.label_names with >= 2 labels, got {label_names}"
            )
        if head not in ("softmax", "ordinal"):
            raise ConfigError(f"model.head: 'softmax' or 'ordinal', got {head!r}")
        self.ordinal = head == "ordinal"
        # outputs of the net: one per class, or K - 1 CORN logits
        self.net_outputs = k - 1 if self.ordinal else k
        if self.ordinal:  # the CORN loss replaces the configured one (a factory taking class_weights)
            loss = lambda class_weights=None: CornLoss(k, class_weights)  # noqa: E731
        self.net = net
        self.levels = [str(v) for v in level_prior] if level_prior else []
        if len(set(self.levels)) != len(self.levels) or "" in self.levels:
            raise ConfigError(f"model.level_prior: distinct non-empty level names, got {list(level_prior or [])}")
        # row i: offset of levels[i]; the last row: any other or unknown level
        self.level_offsets = (
            nn.Parameter(torch.zeros(len(self.levels) + 1, self.net_outputs)) if self.levels else None
        )
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.monitor, self.bootstrap, self.plots = monitor, int(bootstrap), bool(plots)
        self.run_config = run_config or {}
        if isinstance(class_weights, str):
            if class_weights not in ("balanced", "none"):
                raise ConfigError(
                    f"model.class_weights: 'balanced', a list of {k} numbers or null; got {class_weights!r}"
                )
            class_weights = None if class_weights == "none" else class_weights
        elif class_weights is not None:
            class_weights = [float(w) for w in class_weights]
            if len(class_weights) != k:
                raise ConfigError(
                    f"model.class_weights: {len(class_weights)} values for {k} labels {self.label_names}"
                )
        self.class_weights_mode = class_weights
        self._loss_factory = None if isinstance(loss, nn.Module) else loss
        if self._loss_factory is not None and not callable(loss):
            raise ConfigError(f"loss: expected a loss module or a factory, got {type(loss).__name__}")
        in_loss = getattr(loss, "keywords", {}).get("class_weights")  # a partial's own weights
        if class_weights is not None and in_loss is not None:
            raise ConfigError(
                "class weights are set twice: in loss.class_weights and model.class_weights; keep one"
            )
        # balanced weights are known only at fit start: build with unit weights now (same state-dict keys,
        # so a checkpoint restores the weights it was trained with)
        self.loss = self._make_loss(class_weights if isinstance(class_weights, list) else None, loss)
        self.class_weight_values: list[float] | None = (
            list(class_weights) if isinstance(class_weights, list) else None
        )
        self.metrics = nn.ModuleDict(
            {f"{s}_metrics": ClassificationMetrics(k, self.label_names) for s in STAGES}
        )
        self.losses = nn.ModuleDict({f"{s}_loss": MeanMetric() for s in STAGES})
        # sample indices of val/test predictions, gathered like them, to average a group's predictions
        self.aggregate_by = [str(c) for c in aggregate_by] if aggregate_by else None
        self.indices = nn.ModuleDict({f"{s}_index": CatMetric() for s in ("val", "test")})
        self._aggregated: dict[str, Any] | None = None
        self._test_index: list[torch.Tensor] = []
        self._test_order: np.ndarray | None = None
        self.test_results: dict[str, Any] | None = None

    averaging_note = (
        "auroc: positive class (binary) or macro mean of one-vs-rest AUROC over classes with positive and "
        "negative samples; other macro averages over all classes, 0/0 counted as 0"
    )

    # -- loss and class weights -----------------------------------------------------------------------
    def _make_loss(self, weights: list[float] | None, given: Any = None) -> nn.Module:
        if self._loss_factory is not None:
            return self._loss_factory() if weights is None else self._loss_factory(class_weights=weights)
        loss = given if given is not None else self.loss
        if weights is not None:
            buf = getattr(loss, "weight", None)
            if not isinstance(buf, torch.Tensor) or buf.numel() != len(weights):
                raise ConfigError(
                    f"model.class_weights needs a loss with per-class weights; "
                    f"{type(loss).__name__} has none (use loss=cls_ce or cls_focal)"
                )
            buf.copy_(torch.as_tensor(weights, dtype=buf.dtype))
        return loss

    def setup(self, stage: str) -> None:
        # fit start: what the training split decides. A resumed run then restores its checkpoint over it.
        balanced, with_prior = self.class_weights_mode == "balanced", self.level_offsets is not None
        if stage != "fit" or not (balanced or with_prior):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "train_labels"):
            raise ConfigError(
                "model.class_weights=balanced and model.level_prior need a DataModule with train_labels() "
                "(spinenet.data.datamodule.ClassificationDataModule)"
            )
        labels = datamodule.train_labels()
        if with_prior:
            self._start_level_offsets(labels, datamodule.train_levels())
        if balanced:
            weights = compute_class_weights(labels, len(self.label_names), "balanced")
            self.class_weight_values = weights
            self.loss = self._make_loss(weights)
            log.info(
                "balanced class weights from the training split: %s",
                {n: round(w, 4) for n, w in zip(self.label_names, weights, strict=True)},
            )

    def _start_level_offsets(self, labels: Sequence[int], levels: Sequence[str]) -> None:
        # Adam moves a parameter by about lr per step: from zero at lr 1e-4, 40 epochs of SPIDER bulging
        # (1,700 steps, cosine-decayed) move an offset by about 0.1, where the levels differ by about 1 in log-odds
        odds = corn_level_log_odds if self.ordinal else level_log_odds
        offsets = odds(labels, levels, self.levels, len(self.label_names))
        with torch.no_grad():
            self.level_offsets.copy_(torch.as_tensor(offsets, dtype=self.level_offsets.dtype))
        log.info("level prior from the training split (level log-odds minus overall; CORN logits if ordinal): %s",
                 {k: [round(v, 3) for v in row] for k, row in self.level_offset_table().items()})

    # -- steps ----------------------------------------------------------------------------------------
    @property
    def needs_levels(self) -> bool:
        """Whether predictions depend on each image's disc level: its own level prior, or an ensemble net
        whose members have one (and apply their offsets themselves)."""
        return self.level_offsets is not None or bool(getattr(self.net, "takes_levels", False))

    def forward(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> torch.Tensor:
        """Logits of images ``x``; with ``level_prior``, plus each image's level offset (``levels``: one
        name per image, "" when unknown; None: the net alone, as exported, see :meth:`level_offset_table`).
        ``head: ordinal``: the log class probabilities of the CORN logits (softmax gives the probabilities)."""
        logits = self.raw_logits(x, levels)
        return corn_class_log_probs(logits) if self.ordinal else logits

    def raw_logits(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> torch.Tensor:
        """The net's outputs plus the level offsets: class logits, or CORN logits with ``head: ordinal``."""
        logits = self.net(x, levels) if getattr(self.net, "takes_levels", False) else self.net(x)
        if self.level_offsets is not None and levels is not None:
            logits = logits + self.level_offsets[self.level_index(levels)].to(logits.dtype)
        return logits

    def level_index(self, levels: Sequence[str]) -> torch.Tensor:
        other = len(self.levels)
        rows = [self.levels.index(v) if v in self.levels else other for v in levels]
        return torch.as_tensor(rows, dtype=torch.long, device=self.level_offsets.device)

    def level_offset_table(self) -> dict[str, list[float]] | None:
        """``{level: offsets}`` and ``"*"`` for any other level: what ``diagnose`` adds to the net's logits."""
        if self.level_offsets is None:
            return None
        rows = self.level_offsets.detach().float().cpu().tolist()
        return {**dict(zip(self.levels, rows[:-1], strict=True)), "*": rows[-1]}

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        if self.needs_levels and "level" not in batch:
            raise ConfigError(MISSING_LEVELS_MESSAGE)
        raw = self.raw_logits(batch["image"], batch.get("level"))
        if raw.ndim != 2 or raw.shape[1] != self.net_outputs:
            what = "the number of labels minus 1 (model.head: ordinal)" if self.ordinal else "the number of labels"
            raise ConfigError(
                f"the model returns {tuple(raw.shape)} logits for {len(self.label_names)} labels "
                f"{self.label_names}: set model.net.num_classes to {what}"
            )
        loss = self.loss(raw, batch["label"])
        logits = corn_class_log_probs(raw) if self.ordinal else raw
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{stage} loss is {loss.item()} at epoch {self.current_epoch}: "
                "lower optimizer.lr or check the data"
            )
        self.metrics[f"{stage}_metrics"].update(logits.detach(), batch["label"])
        if self.aggregate_by and stage != "train" and "index" in batch:
            self.indices[f"{stage}_index"].update(torch.as_tensor(batch["index"]).float().reshape(-1))
        self.losses[f"{stage}_loss"].update(loss.detach(), weight=batch["image"].shape[0])
        if stage == "train":
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")
        if "index" in batch:
            self._test_index.append(torch.as_tensor(batch["index"]).detach().cpu().reshape(-1))

    # -- epoch ends -----------------------------------------------------------------------------------
    def _log_metrics(self, stage: str) -> dict[str, Any]:
        metric = self.metrics[f"{stage}_metrics"]
        report = metric.compute()  # gathers every process's predictions
        flat = {f"{stage}/{k}": float(v) for k, v in _headline(report).items()}
        if stage == "test":  # every scalar (macro/weighted averages); per-class numbers go to test_results
            scalars = {k: v for k, v in report.items() if k not in ("per_class", "num_samples")}
            flat.update({k: v for k, v in flatten_report(scalars, stage).items() if k not in flat})
        if self.ordinal and stage != "train":
            with metric.sync_context():
                target, probs = dim_zero_cat(metric.target).cpu(), dim_zero_cat(metric.probs).cpu()
            flat.update({f"{stage}/{k}": fn(target, probs) for k, fn in ORDINAL_METRICS.items()})
        flat[f"{stage}/loss"] = float(self.losses[f"{stage}_loss"].compute())
        self.losses[f"{stage}_loss"].reset()
        if stage != "train" and self.aggregate_by:
            self._aggregated = self._aggregate(stage)
            if self._aggregated is not None:
                agg = _headline(self._aggregated["report"])
                flat.update({f"{stage}/agg_{k}": float(v) for k, v in agg.items()})
        shown = f"{stage}/accuracy"
        # already synced by the metric's state reduction: no sync_dist
        self.log_dict({k: v for k, v in flat.items() if k != shown}, prog_bar=False, sync_dist=False)
        self.log(shown, flat[shown], prog_bar=stage != "test", sync_dist=False)
        return report

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")
        self.metrics["train_metrics"].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        self.metrics["val_metrics"].reset()

    def on_test_epoch_start(self) -> None:
        self._test_index = []

    def on_test_epoch_end(self) -> None:
        report = self._log_metrics("test")
        metric = self.metrics["test_metrics"]
        probs = dim_zero_cat(metric.probs).cpu().numpy()  # compute() above failed if there were none
        target = dim_zero_cat(metric.target).cpu().numpy()
        metric.reset()
        groups = self._test_groups(len(target))
        weight = getattr(self.loss, "weight", None)  # what the loss used (a checkpoint restores it)
        report["class_weights"] = (
            weight.tolist() if isinstance(weight, torch.Tensor) else self.class_weight_values
        )
        report["bootstrap"] = self._bootstrap(target, probs, groups)
        if self.ordinal:
            report["ordinal"] = {
                "prediction": "arg-max class",
                **{k: fn(target, probs) for k, fn in ORDINAL_METRICS.items()},
                "bootstrap": self._bootstrap(target, probs, groups, ORDINAL_METRICS),
            }
        agg = self._aggregated
        if agg is not None:
            report["aggregated"] = {
                "by": self.aggregate_by,
                "groups": len(agg["target"]),
                **agg["report"],
                "bootstrap": self._bootstrap(agg["target"], agg["probs"], agg["patients"]),
            }
        self.test_results = report
        if self.trainer.is_global_zero and len(target):
            out = Path(self.trainer.default_root_dir)
            self._save_predictions(out, target, probs)
            if agg is not None:
                agg["frame"].to_csv(out / "predictions_aggregated.csv", index=False)
            if self.plots:
                self._save_plots(out, target, probs)

    # -- aggregation and test outputs -----------------------------------------------------------------
    def _test_dataset(self, stage: str = "test") -> Any:
        loaders = self.trainer.test_dataloaders if stage == "test" else self.trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        return getattr(loader, "dataset", None)

    def _test_rows(self, stage: str = "test") -> pd.DataFrame | None:
        """The manifest rows of the stage's data set (patient ids, grouping columns), for spinenet data sets."""
        rows = getattr(self._test_dataset(stage), "rows", None)
        return rows if isinstance(rows, pd.DataFrame) else None

    def _aggregate(self, stage: str) -> dict[str, Any] | None:
        """Predictions averaged over the samples that share ``aggregate_by`` (e.g. one disc seen in several
        series); a group's label is its most frequent one. Runs on every process (collectives inside)."""
        metric, index = self.metrics[f"{stage}_metrics"], self.indices[f"{stage}_index"]
        with metric.sync_context(), index.sync_context():
            probs = dim_zero_cat(metric.probs).cpu().numpy()
            target = dim_zero_cat(metric.target).cpu().numpy()
            idx = (
                dim_zero_cat(index.value).cpu().long().numpy() if len(index.value) else np.zeros(0, np.int64)
            )
        index.reset()
        rows = self._test_rows(stage)
        if rows is None or len(idx) != len(target):
            return None
        absent = [c for c in self.aggregate_by if c not in rows.columns]
        if absent:
            raise ConfigError(
                f"model.aggregate_by names column(s) {absent} that the manifest lacks; its columns: "
                f"{', '.join(c for c in rows.columns if c not in ('image_path', 'mask_path', 'label_idx'))}"
            )
        pcol = getattr(getattr(self._test_dataset(stage), "spec", None), "patient_col", "patient_id")
        keys = list(dict.fromkeys([*self.aggregate_by, *([pcol] if pcol in rows.columns else [])]))
        frame = rows.iloc[idx][keys].astype(str).reset_index(drop=True)
        frame["_index"], frame["_label"] = idx, target
        prob_cols = [f"prob_{n}" for n in self.label_names]
        frame[prob_cols] = probs
        frame = frame.drop_duplicates("_index")  # a DistributedSampler pads the split with repeats
        grouped = frame.groupby(self.aggregate_by, sort=False)
        out = grouped[prob_cols].mean()
        out["_label"] = grouped["_label"].agg(lambda v: v.mode().iloc[0])
        out["crops"] = grouped.size()
        if pcol in keys and pcol not in self.aggregate_by:
            out[pcol] = grouped[pcol].first()
        out = out.reset_index()
        agg_target, agg_probs = out["_label"].to_numpy(), out[prob_cols].to_numpy()
        out.insert(len(self.aggregate_by), "true_label", [self.label_names[t] for t in agg_target])
        out.insert(
            len(self.aggregate_by) + 1, "pred_label", [self.label_names[p] for p in agg_probs.argmax(1)]
        )
        return {
            "report": classification_report(agg_target, agg_probs, self.label_names),
            "target": agg_target,
            "probs": agg_probs,
            "patients": out[pcol].to_numpy() if pcol in out else None,
            "frame": out.drop(columns="_label"),
        }

    def _test_groups(self, n: int) -> np.ndarray | None:
        """Patient id of each test prediction (bootstrap groups), or None when unknown."""
        self._test_order = None
        rows, index = self._test_rows(), self._test_index
        if rows is None or not index:
            return None
        idx = torch.cat(index).numpy()
        pcol = getattr(getattr(self._test_dataset(), "spec", None), "patient_col", "patient_id")
        if len(idx) != n or pcol not in rows.columns:  # several processes: indices are local to each
            return None
        self._test_order = idx
        return rows[pcol].astype(str).to_numpy()[idx]

    def _bootstrap(
        self,
        target: np.ndarray,
        probs: np.ndarray,
        groups: np.ndarray | None,
        metrics: dict[str, Callable[[np.ndarray, np.ndarray], float]] = BOOTSTRAP_METRICS,
    ) -> dict[str, Any]:
        if self.bootstrap <= 0 or len(target) == 0:
            return {}
        out = {
            name: bootstrap_ci(fn, target, probs, n=self.bootstrap, seed=0, groups=groups)
            for name, fn in metrics.items()
        }
        for ci in out.values():
            ci["patients"] = int(len(set(groups.tolist()))) if groups is not None else None
        return out

    def _save_predictions(self, out: Path, target: np.ndarray, probs: np.ndarray) -> None:
        frame = pd.DataFrame(
            {
                "true_label": [self.label_names[t] for t in target],
                "pred_label": [self.label_names[p] for p in probs.argmax(1)],
            }
        )
        for i, name in enumerate(self.label_names):
            frame[f"prob_{name}"] = probs[:, i]
        rows, order = self._test_rows(), self._test_order
        if rows is not None and order is not None and len(order) == len(frame):
            picked = rows.iloc[order].reset_index(drop=True)
            drop = {"image_path", "mask_path", "label_idx", "csv_line", *frame.columns}
            keep = [c for c in picked.columns if c not in drop]
            frame = pd.concat([picked[keep], frame], axis=1)
        out.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out / "predictions.csv", index=False)

    def _save_plots(self, out: Path, target: np.ndarray, probs: np.ndarray) -> None:
        plot_dir = out / "plots"
        figs = save_classification_plots(target, probs, self.label_names, plot_dir, prefix="test")
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                for stem in figs:
                    logger.log_image(
                        key=f"test/{stem.removeprefix('test_')}", images=[str(plot_dir / f"{stem}.png")]
                    )
        log.info("test plots: %s", plot_dir)

    # -- optimisation and checkpoints -----------------------------------------------------------------
    def configure_optimizers(self):
        # only trainable parameters: TwoStageFinetuning adds the backbone's when it unfreezes it
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "interval": "epoch"},
        }



__all__ = ["ClassificationModule"]
