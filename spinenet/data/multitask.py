"""Several labels per image (multi-task grading): the task list and a DataModule that reads one label per task.

``model.tasks`` (shared with ``data.tasks``) is a list of findings, each
``{name, column, kind, classes, loss_weight, map}``: ``kind`` is ``binary`` (2 classes), ``multiclass`` or
``ordinal`` (classes in order, e.g. Pfirrmann 1-5); ``classes`` are the column's values in class-index order;
``map`` (optional) renames values first (Modic any vs none: ``{"2": "1", "3": "1"}``). A missing value (empty
cell, NaN) is label ``-1``: that image trains the other tasks only (the masked loss of
:class:`spinenet.lit.multitask.MultiTaskModule`).

``data.gradings`` (optional) joins a per-disc grading table (SPIDER's ``radiological_gradings.csv`` layout,
read by :func:`spinenet.data.gradings.read_gradings`) to the manifest by ``patient_id`` and ``ivd_label``; a
column the manifest already has is kept from the manifest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from spinenet.data.datamodule import ClassificationDataModule, _ImageSet, _to_dict
from spinenet.errors import ConfigError, DataError

TASK_KINDS = ("binary", "multiclass", "ordinal")
TASK_KEYS = ("name", "column", "kind", "classes", "loss_weight", "map")
MISSING = -1


@dataclass(frozen=True)
class GradingTask:
    name: str
    column: str
    kind: str
    classes: tuple[str, ...]
    loss_weight: float = 1.0
    map: dict[str, str] = field(default_factory=dict)

    @property
    def width(self) -> int:
        """The net's outputs for this task: one per class, or K - 1 CORN logits (ordinal)."""
        return len(self.classes) - 1 if self.kind == "ordinal" else len(self.classes)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "column": self.column, "kind": self.kind, "classes": list(self.classes),
                "loss_weight": self.loss_weight, "map": dict(self.map)}


def parse_tasks(tasks: Any) -> list[GradingTask]:
    """``model.tasks`` -> checked :class:`GradingTask` list (a ConfigError names the bad entry)."""
    tasks = _to_dict(tasks)
    if tasks is None:
        raise ConfigError("model.tasks is not set: a multi-task data set labels one task per entry of model.tasks; "
                          "use experiment=cls/spider_grading, or model=multitask with model.tasks=[...]")
    if not isinstance(tasks, list | tuple) or not tasks:
        raise ConfigError(f"model.tasks: a non-empty list of {{name, column, kind, classes}}, got {tasks!r}")
    out: list[GradingTask] = []
    for i, t in enumerate(tasks):
        where = f"model.tasks[{i}]"
        if not isinstance(t, Mapping):
            raise ConfigError(f"{where}: a mapping with {', '.join(TASK_KEYS)}, got {t!r}")
        unknown = sorted(set(t) - set(TASK_KEYS))
        missing = [k for k in ("name", "column", "kind", "classes") if k not in t]
        if unknown or missing:
            raise ConfigError(f"{where}: unknown key(s) {unknown} / missing {missing}; keys: {', '.join(TASK_KEYS)}")
        name, kind, classes = str(t["name"]), str(t["kind"]), tuple(str(c) for c in t["classes"])
        if not name or "/" in name:
            raise ConfigError(f"{where}: name must be non-empty without '/', got {name!r}")
        if kind not in TASK_KINDS:
            raise ConfigError(f"{where} ({name}): kind must be one of {', '.join(TASK_KINDS)}, got {kind!r}")
        if len(classes) < 2 or len(set(classes)) != len(classes) or (kind == "binary" and len(classes) != 2):
            raise ConfigError(f"{where} ({name}): {kind} needs distinct classes (binary: 2), got {list(classes)}")
        weight = float(t.get("loss_weight", 1.0))
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"{where} ({name}): loss_weight must be a number >= 0, got {t.get('loss_weight')}")
        mapping = {str(k): str(v) for k, v in (t.get("map") or {}).items()}
        out.append(GradingTask(name, str(t["column"]), kind, classes, weight, mapping))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"model.tasks: task names must be distinct, got {names}")
    return out


def _value(v: Any) -> str | None:
    """A cell as a class name: 3.0 -> "3"; empty / NaN -> None."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    s = str(v).strip()
    return s or None


def label_column(task: GradingTask) -> str:
    return f"_task_{task.name}"


def add_task_labels(rows: pd.DataFrame, tasks: Sequence[GradingTask], source: str) -> pd.DataFrame:
    """Adds one class-index column per task (``-1``: missing); a value outside ``classes`` is a DataError."""
    rows = rows.copy()
    for task in tasks:
        if task.column not in rows.columns:
            raise DataError(f"{source}: no column {task.column!r} for task {task.name!r} (model.tasks); "
                            "set data.gradings to join a grading table")
        index = {c: i for i, c in enumerate(task.classes)}
        values = [_value(v) for v in rows[task.column]]
        values = [task.map.get(v, v) if v is not None else None for v in values]
        bad = [(i, v) for i, v in enumerate(values) if v is not None and v not in index]
        if bad:
            line = int(rows["csv_line"].iloc[bad[0][0]]) if "csv_line" in rows.columns else bad[0][0]
            raise DataError(f"{source}: row {line}: {task.column}={bad[0][1]!r} is not a class of task "
                            f"{task.name!r} {list(task.classes)} ({len(bad)} such row(s)); add it to classes or map")
        rows[label_column(task)] = [MISSING if v is None else index[v] for v in values]
    return rows


def join_gradings(rows: pd.DataFrame, gradings: str | Path, source: str) -> pd.DataFrame:
    """``rows`` with the grading table's finding columns that they lack, by (patient_id, ivd_label)."""
    from spinenet.data.gradings import read_gradings

    table = read_gradings(gradings)
    keys = ["patient_id", "ivd_label"]
    missing = [k for k in keys if k not in rows.columns]
    if missing:
        raise DataError(f"{source}: data.gradings needs the columns {keys} in the manifest; missing {missing}")
    new = [c for c in table.columns if c not in rows.columns]
    joined = rows.copy()
    joined["_ivd"] = pd.to_numeric(joined["ivd_label"], errors="coerce")
    right = table[keys + new].rename(columns={"ivd_label": "_ivd"})
    joined = joined.merge(right, on=["patient_id", "_ivd"], how="left", validate="many_to_one")
    joined.index = rows.index
    joined.attrs = dict(rows.attrs)
    return joined.drop(columns="_ivd")


class _MultiLabelSet(_ImageSet):
    """An image set whose samples also carry ``labels``: one class index per task (``-1``: missing)."""

    def __init__(self, *args: Any, label_cols: Sequence[str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.label_cols = list(label_cols)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = super().__getitem__(index)
        row = self.rows.iloc[index]
        sample["labels"] = torch.tensor([int(row[c]) for c in self.label_cols], dtype=torch.long)
        return sample


class MultiTaskDataModule(ClassificationDataModule):
    """Disc crops with one label per task (``tasks``, usually ``${model.tasks}``).

    ``data.dataset.label_col`` stays the one label that stratifies the patient split (e.g. herniation with
    ``split.stratify: most_severe``) and fills ``batch["label"]``; ``batch["labels"]`` holds every task's.
    """

    def __init__(self, dataset: Mapping, tasks: Any = None, gradings: str | None = None, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        self.tasks = parse_tasks(tasks)
        self.gradings = Path(gradings) if gradings else None
        if self.gradings is not None and not self.gradings.is_file():
            raise ConfigError(f"data.gradings: file not found: {self.gradings}")

    def _with_labels(self, rows: pd.DataFrame, source: str) -> pd.DataFrame:
        if self.gradings is not None:
            rows = join_gradings(rows, self.gradings, source)
        return add_task_labels(rows, self.tasks, source)

    def load_frame(self) -> pd.DataFrame:
        frame = super().load_frame()
        if label_column(self.tasks[0]) in frame.columns:  # already joined (load_frame caches)
            return frame
        out = self._with_labels(frame, str(self.spec.manifest_path))
        self.frame = out
        return out

    def load_extra_train(self, frame: pd.DataFrame) -> pd.DataFrame | None:
        extra = super().load_extra_train(frame)
        return None if extra is None else self._with_labels(extra, "data.extra_train")

    def make_dataset(self, rows: pd.DataFrame, train: bool, native: bool = False) -> _ImageSet:
        base = super().make_dataset(rows, train, native)
        return _MultiLabelSet(
            base.rows, base.spec, base.input_spec, base.transform, with_mask=False,
            label_swap_on_flip=base.label_swap_on_flip, label_cols=[label_column(t) for t in self.tasks],
        )

    def train_task_labels(self) -> dict[str, list[int]]:
        """Each task's training labels (``-1``: missing), in the training split's order."""
        self.setup()
        rows = self.datasets["train"].rows
        return {t.name: [int(v) for v in rows[label_column(t)]] for t in self.tasks}


__all__ = ["TASK_KINDS", "GradingTask", "MultiTaskDataModule", "add_task_labels", "join_gradings", "parse_tasks"]
