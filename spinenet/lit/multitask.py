"""LightningModule for multi-task disc grading: one shared net, one head per finding (``model.tasks``).

The heads are the column blocks of the net's last layer: the net (any classifier of the registry) is built
with ``num_classes`` = the sum of the tasks' widths (a binary or multiclass task: one output per class; an
ordinal one: K - 1 CORN logits, :mod:`spinenet.ordinal`), so every task shares the whole backbone and has its
own linear head. With ``level_prior`` each task's block gets its own offset per disc level.

**Output layout** (what :meth:`MultiTaskModule.forward` returns, what an ONNX export or an ensemble average
sees): one tensor ``(N, sum_t K_t)``, the tasks' *class logits* side by side in ``model.tasks`` order, task t
in columns ``task_slices()[t]`` (K_t = its number of classes). The softmax of each block is that task's class
probabilities (an ordinal block holds log class probabilities already, so its softmax is the same). An
ensemble averages the per-block softmaxes; ``forward_tasks`` gives the same as ``{name: (N, K_t)}``.

Loss: the sum over tasks of ``loss_weight`` times the task's loss (weighted cross-entropy; CORN for ordinal
tasks) on the images that have that task's label. A missing label (``-1``, from an empty cell) leaves the
image out of that task only; a task with no label in a batch adds nothing.

Logged per epoch for ``train``, ``val``, ``test``: ``loss`` and per task ``<task>/{auroc, balanced_accuracy,
accuracy}`` (binary also ``sensitivity``, ``specificity``; ordinal also ``qwk``, ``mae``,
``exact_accuracy``, ``within1_accuracy``), plus ``mean_auroc`` over the tasks. The test report
(``test_results["tasks"][name]``, written to ``metrics.json`` as ``per_class``) has each task's full report
and patient-level bootstrap 95 % intervals; predictions go to ``predictions.csv`` (``<task>_true``,
``<task>_pred``, ``<task>_prob_<class>``) and plots (ROC, confusion matrices) to ``plots/test_<task>_*``.
The checkpoint's ``spinenet`` entry is the run config with ``model.tasks`` completed (every key set).
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
import torch.nn.functional as F
from torch import nn
from torchmetrics import CatMetric, MeanMetric
from torchmetrics.utilities import dim_zero_cat

from spinenet.data.datamodule import MISSING_LEVELS_MESSAGE
from spinenet.data.multitask import MISSING, GradingTask, parse_tasks
from spinenet.errors import ConfigError
from spinenet.lit.contract_io import WritesContract
from spinenet.metrics.classification import (
    ORDINAL_METRICS,
    accuracy,
    balanced_accuracy,
    bootstrap_ci,
    classification_report,
    compute_class_weights,
    level_log_odds,
    macro_auroc,
    save_classification_plots,
)
from spinenet.ordinal import corn_class_log_probs, corn_level_log_odds, corn_loss

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")


def _sensitivity(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    pos = np.asarray(y_true) == 1
    return float((np.asarray(y_prob).argmax(1)[pos] == 1).mean()) if pos.any() else float("nan")


def _specificity(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    neg = np.asarray(y_true) == 0
    return float((np.asarray(y_prob).argmax(1)[neg] == 0).mean()) if neg.any() else float("nan")


def task_metrics(task: GradingTask) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    """The metrics of a task (each with a bootstrap interval in the test report)."""
    out = {"auroc": macro_auroc, "balanced_accuracy": balanced_accuracy, "accuracy": accuracy}
    if task.kind == "binary":
        out.update(sensitivity=_sensitivity, specificity=_specificity)
    if task.kind == "ordinal":
        out.update(ORDINAL_METRICS)
    return out


def _safe(fn: Callable[[np.ndarray, np.ndarray], float], target: np.ndarray, probs: np.ndarray) -> float:
    try:
        return float(fn(target, probs))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return float("nan")


class MultiTaskModule(WritesContract, L.LightningModule):
    """Trains ``net`` on ``batch["image"]`` -> ``batch["labels"]`` (one class index per task, -1: missing).

    ``tasks``: ``model.tasks`` (see :func:`spinenet.data.multitask.parse_tasks`). ``class_weights``:
    ``"balanced"`` (each task's own, from its labelled training images) or None. ``loss`` and
    ``label_names`` (passed by ``build_module`` to every classifier) are not used: each task's loss follows
    its kind. Other arguments as :class:`spinenet.lit.classification.ClassificationModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        tasks: Any,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        loss: Any = None,
        label_names: Sequence[str] = (),
        monitor: str = "val/loss",
        class_weights: str | None = None,
        bootstrap: int = 1000,
        plots: bool = True,
        level_prior: Sequence[str] | None = None,
        run_config: dict | None = None,
    ):
        super().__init__()
        self.tasks = parse_tasks(tasks)
        self.net = net
        if class_weights not in (None, "balanced", "none"):
            raise ConfigError(f"model.class_weights: 'balanced' or null for model.tasks, got {class_weights!r}")
        self.balanced = class_weights == "balanced"
        widths = [t.width for t in self.tasks]
        self.net_outputs = int(sum(widths))
        self._raw_bounds = np.cumsum([0, *widths]).tolist()
        self._class_bounds = np.cumsum([0, *(len(t.classes) for t in self.tasks)]).tolist()
        self.levels = [str(v) for v in level_prior] if level_prior else []
        if len(set(self.levels)) != len(self.levels) or "" in self.levels:
            raise ConfigError(f"model.level_prior: distinct non-empty level names, got {list(level_prior or [])}")
        self.level_offsets = (
            nn.Parameter(torch.zeros(len(self.levels) + 1, self.net_outputs)) if self.levels else None
        )
        # per task, one weight per class (1 until fit start when balanced); buffers: a checkpoint restores them
        for t in self.tasks:
            self.register_buffer(f"class_weight_{t.name}", torch.ones(len(t.classes)))
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.monitor, self.bootstrap, self.plots = monitor, int(bootstrap), bool(plots)
        self.run_config = run_config or {}
        self.outputs = nn.ModuleDict({f"{s}_logits": CatMetric() for s in STAGES})
        self.targets = nn.ModuleDict({f"{s}_labels": CatMetric() for s in STAGES})
        self.losses = nn.ModuleDict({f"{s}_loss": MeanMetric() for s in STAGES})
        self._test_index: list[torch.Tensor] = []
        self.test_results: dict[str, Any] | None = None

    # -- layout -----------------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task_slices(self) -> list[slice]:
        """Columns of each task's class logits in :meth:`forward`'s output, in ``tasks`` order."""
        b = self._class_bounds
        return [slice(b[i], b[i + 1]) for i in range(len(self.tasks))]

    def task_list(self) -> list[dict[str, Any]]:
        """The tasks as plain dicts (name, column, kind, classes, loss_weight, map)."""
        return [t.as_dict() for t in self.tasks]

    # -- forward ----------------------------------------------------------------------------------------
    @property
    def needs_levels(self) -> bool:
        return self.level_offsets is not None

    def level_index(self, levels: Sequence[str]) -> torch.Tensor:
        other = len(self.levels)
        rows = [self.levels.index(v) if v in self.levels else other for v in levels]
        return torch.as_tensor(rows, dtype=torch.long, device=self.level_offsets.device)

    def raw_logits(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> torch.Tensor:
        """The net's outputs (all heads) plus the level offsets: ``(N, sum of task widths)``."""
        out = self.net(x)
        if out.ndim != 2 or out.shape[1] != self.net_outputs:
            raise ConfigError(
                f"the net returns {tuple(out.shape)} outputs for tasks {self.task_names} that need "
                f"{self.net_outputs} (one per class, K - 1 per ordinal task): set model.net.num_classes"
            )
        if self.level_offsets is not None and levels is not None:
            out = out + self.level_offsets[self.level_index(levels)].to(out.dtype)
        return out

    def _blocks(self, raw: torch.Tensor) -> list[torch.Tensor]:
        b = self._raw_bounds
        return [raw[:, b[i]:b[i + 1]] for i in range(len(self.tasks))]

    def class_logits(self, raw: torch.Tensor) -> torch.Tensor:
        parts = [
            corn_class_log_probs(block) if t.kind == "ordinal" else block.float()
            for t, block in zip(self.tasks, self._blocks(raw), strict=True)
        ]
        return torch.cat(parts, 1)

    def forward(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> torch.Tensor:
        """Every task's class logits side by side (layout: :meth:`task_slices`; see the module docstring)."""
        return self.class_logits(self.raw_logits(x, levels))

    def forward_tasks(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        out = self(x, levels)
        return {t.name: out[:, s] for t, s in zip(self.tasks, self.task_slices(), strict=True)}

    # -- loss -------------------------------------------------------------------------------------------
    def task_losses(self, raw: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each task's loss on the images labelled for it; a task without labels in the batch is absent."""
        out = {}
        for i, (t, block) in enumerate(zip(self.tasks, self._blocks(raw), strict=True)):
            y = labels[:, i]
            seen = y != MISSING
            if not bool(seen.any()):
                continue
            weight = getattr(self, f"class_weight_{t.name}")
            if t.kind == "ordinal":
                out[t.name] = corn_loss(block[seen], y[seen], weight)
            else:
                w = weight[y[seen]]
                nll = F.cross_entropy(block[seen].float(), y[seen], reduction="none")
                out[t.name] = (w * nll).sum() / w.sum().clamp_min(1e-12)
        return out

    def combined_loss(self, raw: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``sum_t loss_weight_t * loss_t`` over the tasks with labels in the batch."""
        losses = self.task_losses(raw, labels)
        weights = {t.name: t.loss_weight for t in self.tasks}
        total = raw.new_zeros(())
        for name, value in losses.items():
            total = total + weights[name] * value
        return total

    # -- fit start --------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit" or not (self.balanced or self.level_offsets is not None):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "train_task_labels"):
            raise ConfigError("model.tasks needs data=... with _target_ spinenet.data.multitask.MultiTaskDataModule")
        labels = datamodule.train_task_labels()
        levels = datamodule.train_levels() if self.level_offsets is not None else None
        for i, t in enumerate(self.tasks):
            y = np.asarray(labels[t.name])
            seen = y != MISSING
            if not seen.any():
                raise ConfigError(f"task {t.name!r}: no training image has a label in column {t.column!r}")
            if self.balanced:
                w = compute_class_weights(y[seen], len(t.classes), "balanced")
                getattr(self, f"class_weight_{t.name}").copy_(torch.as_tensor(w))
            if levels is not None:
                lv = [v for v, s in zip(levels, seen, strict=True) if s]
                odds = corn_level_log_odds if t.kind == "ordinal" else level_log_odds
                start = torch.as_tensor(odds(y[seen].tolist(), lv, self.levels, len(t.classes)))
                with torch.no_grad():
                    b = self._raw_bounds
                    self.level_offsets[:, b[i]:b[i + 1]] = start.to(self.level_offsets.dtype)
        log.info("tasks %s; class weights %s", self.task_names,
                 {t.name: [round(v, 3) for v in getattr(self, f"class_weight_{t.name}").tolist()] for t in self.tasks})

    # -- steps ------------------------------------------------------------------------------------------
    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        if self.needs_levels and "level" not in batch:
            raise ConfigError(MISSING_LEVELS_MESSAGE)
        if "labels" not in batch:
            raise ConfigError("model.tasks needs batches with 'labels' (data: MultiTaskDataModule)")
        labels = batch["labels"].long()
        raw = self.raw_logits(batch["image"], batch.get("level"))
        loss = self.combined_loss(raw, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{stage} loss is {loss.item()} at epoch {self.current_epoch}: lower optimizer.lr or check the data"
            )
        self.outputs[f"{stage}_logits"].update(self.class_logits(raw.detach()))
        self.targets[f"{stage}_labels"].update(labels.float())
        self.losses[f"{stage}_loss"].update(loss.detach(), weight=labels.shape[0])
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

    # -- epoch ends -------------------------------------------------------------------------------------
    def _collected(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """All class logits ``(N, sum K_t)`` and labels ``(N, T)`` of the stage, then reset."""
        logits = dim_zero_cat(self.outputs[f"{stage}_logits"].compute()).reshape(-1, self._class_bounds[-1])
        labels = dim_zero_cat(self.targets[f"{stage}_labels"].compute()).reshape(-1, len(self.tasks))
        self.outputs[f"{stage}_logits"].reset()
        self.targets[f"{stage}_labels"].reset()
        return logits.float().cpu().numpy(), labels.long().cpu().numpy()

    def _per_task(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``{task: (labelled rows, targets, class probabilities)}`` of the labelled images."""
        out = {}
        for i, (t, s) in enumerate(zip(self.tasks, self.task_slices(), strict=True)):
            seen = labels[:, i] != MISSING
            probs = torch.as_tensor(logits[seen, s]).softmax(1).numpy()
            out[t.name] = (np.flatnonzero(seen), labels[seen, i], probs)
        return out

    def _log_stage(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        logits, labels = self._collected(stage)
        flat: dict[str, float] = {f"{stage}/loss": float(self.losses[f"{stage}_loss"].compute())}
        self.losses[f"{stage}_loss"].reset()
        aurocs = []
        for t in self.tasks:
            _, target, probs = self._per_task(logits, labels)[t.name]
            if len(target) == 0:
                continue
            for name, fn in task_metrics(t).items():
                flat[f"{stage}/{t.name}/{name}"] = _safe(fn, target, probs)
            if np.isfinite(flat[f"{stage}/{t.name}/auroc"]):
                aurocs.append(flat[f"{stage}/{t.name}/auroc"])
        flat[f"{stage}/mean_auroc"] = float(np.mean(aurocs)) if aurocs else float("nan")
        self.log_dict(flat, prog_bar=False, sync_dist=False)  # already gathered by the CatMetric states
        return logits, labels

    def on_train_epoch_end(self) -> None:
        self._log_stage("train")

    def on_validation_epoch_end(self) -> None:
        self._log_stage("val")

    def on_test_epoch_start(self) -> None:
        self._test_index = []

    def on_test_epoch_end(self) -> None:
        logits, labels = self._log_stage("test")
        groups, rows = self._test_groups(len(labels))
        results: dict[str, Any] = {}
        per_task = self._per_task(logits, labels)
        for t in self.tasks:
            picked, target, probs = per_task[t.name]
            report: dict[str, Any] = {"kind": t.kind, "column": t.column, "classes": list(t.classes),
                                      "labelled": int(len(target))}
            if len(target):
                report.update(classification_report(target, probs, list(t.classes)))
                report["class_weights"] = getattr(self, f"class_weight_{t.name}").tolist()
                if t.kind == "ordinal":
                    report["ordinal"] = {"prediction": "arg-max class",
                                         **{k: _safe(fn, target, probs) for k, fn in ORDINAL_METRICS.items()}}
                report["bootstrap"] = self._bootstrap(t, target, probs, None if groups is None else groups[picked])
            results[t.name] = report
        self.test_results = {"tasks": results, "layout": self.task_list()}
        if self.trainer.is_global_zero and len(labels):
            out = Path(self.trainer.default_root_dir)
            self._save_predictions(out, logits, labels, rows)
            if self.plots:
                for t in self.tasks:
                    _, target, probs = per_task[t.name]
                    if len(target):
                        figs = save_classification_plots(target, probs, list(t.classes), out / "plots",
                                                         prefix=f"test_{t.name}")
                        for stem, fig in figs.items():  # the task's name on each picture
                            fig.axes[0].set_title(f"{t.name}: {fig.axes[0].get_title()}")
                            fig.savefig(out / "plots" / f"{stem}.png", dpi=120)

    def _test_groups(self, n: int) -> tuple[np.ndarray | None, pd.DataFrame | None]:
        loaders = self.trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        dataset = getattr(loader, "dataset", None)
        rows = getattr(dataset, "rows", None)
        if not isinstance(rows, pd.DataFrame) or not self._test_index:
            return None, None
        idx = torch.cat(self._test_index).numpy()
        pcol = getattr(getattr(dataset, "spec", None), "patient_col", "patient_id")
        if len(idx) != n or pcol not in rows.columns:
            return None, None
        picked = rows.iloc[idx].reset_index(drop=True)
        return picked[pcol].astype(str).to_numpy(), picked

    def _bootstrap(self, task: GradingTask, target: np.ndarray, probs: np.ndarray,
                   groups: np.ndarray | None) -> dict[str, Any]:
        if self.bootstrap <= 0 or len(target) == 0:
            return {}
        out = {}
        for name, fn in task_metrics(task).items():
            ci = bootstrap_ci(lambda a, b, fn=fn: _safe(fn, a, b), target, probs, n=self.bootstrap, seed=0,
                              groups=groups)
            ci["patients"] = int(len(set(groups.tolist()))) if groups is not None else None
            out[name] = ci
        return out

    def _save_predictions(self, out: Path, logits: np.ndarray, labels: np.ndarray, rows: pd.DataFrame | None) -> None:
        frame = pd.DataFrame(index=range(len(labels)))
        for i, (t, s) in enumerate(zip(self.tasks, self.task_slices(), strict=True)):
            probs = torch.as_tensor(logits[:, s]).softmax(1).numpy()
            frame[f"{t.name}_true"] = [t.classes[v] if v != MISSING else "" for v in labels[:, i]]
            frame[f"{t.name}_pred"] = [t.classes[v] for v in probs.argmax(1)]
            for j, c in enumerate(t.classes):
                frame[f"{t.name}_prob_{c}"] = probs[:, j]
        if rows is not None and len(rows) == len(frame):
            keep = [c for c in rows.columns if c not in {"image_path", "mask_path", "label_idx", "csv_line"}
                    and not c.startswith("_task_")]
            frame = pd.concat([rows[keep].reset_index(drop=True), frame], axis=1)
        out.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out / "predictions.csv", index=False)

    # -- optimisation and checkpoints -------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the run config with every task key set, and the model contract with one head per task
        self.run_config = {**self.run_config, "model": {**dict(self.run_config.get("model") or {}),
                                                        "tasks": self.task_list()}}
        super().on_save_checkpoint(checkpoint)


__all__ = ["MultiTaskModule", "task_metrics"]
