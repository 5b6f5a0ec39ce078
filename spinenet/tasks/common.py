"""Pieces shared by the train and eval tasks: instantiation from config, run folder, metrics JSON."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from spinenet.config import to_plain_dict
from spinenet.contract import TaskKind
from spinenet.errors import ConfigError

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Every entry of a group like ``callbacks`` or ``logger`` that has a ``_target_`` (null entries are off)."""
    if not group:
        return []
    out = []
    for name, conf in group.items():
        if conf is None:
            continue
        if not isinstance(conf, DictConfig) or "_target_" not in conf:
            raise ConfigError(f"{name}: expected a config with _target_, got {OmegaConf.to_yaml(conf).strip()!r}")
        out.append(hydra.utils.instantiate(conf))
    return out


def optional_partial(conf: DictConfig | None):
    """An optimizer/scheduler partial, or None for an empty group file (``scheduler: none``)."""
    if not conf or "_target_" not in conf:
        return None
    return hydra.utils.instantiate(conf)


def build_module(cfg: DictConfig, class_names: list[str], label_names: list[str] | None = None):
    """The LightningModule described by ``cfg.model`` with the loss, optimizer and scheduler groups."""
    kwargs: dict[str, Any] = {
        "loss": hydra.utils.instantiate(cfg.loss) if cfg.get("loss") else None,
        "optimizer": optional_partial(cfg.get("optimizer")),
        "scheduler": optional_partial(cfg.get("scheduler")),
        "monitor": cfg.get("monitor", "val/loss"),
    }
    task = TaskKind.of_config(cfg)
    kwargs[task.names_key] = class_names if task is TaskKind.SEGMENTATION else label_names
    module = hydra.utils.instantiate(cfg.model, **kwargs)
    # set afterwards: passed to instantiate, its _target_ keys would be instantiated too
    module.run_config = to_plain_dict(cfg)
    return module


def jsonable(value: Any) -> Any:
    """Tensors, numpy scalars and NaN to JSON (NaN becomes null: JSON has no NaN)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def write_json(data: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(jsonable(data), indent=2, sort_keys=False))
    os.replace(tmp, path)  # never leave a half-written metrics file
    return path


def split_metrics(callback_metrics: dict, stage: str) -> dict[str, float]:
    prefix = f"{stage}/"
    return {k[len(prefix):]: float(v) for k, v in sorted(callback_metrics.items()) if k.startswith(prefix)}
