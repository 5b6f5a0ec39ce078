"""Model files: loading and checking run checkpoints, and telling an ensemble file from a checkpoint.

Below :mod:`spinenet.tasks.train`, :mod:`spinenet.tasks.evaluate` and :mod:`spinenet.ensemble` (it needs only
:mod:`spinenet.tasks.common` to rebuild a module): they read run checkpoints through here, and
:func:`spinenet.loading.load_model` (which also opens ensemble and exported files) sits above all of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from spinenet.contract import ModelContract, TaskKind
from spinenet.errors import ConfigError, DataError
from spinenet.tasks.common import build_module
from spinenet.utils.safe_io import load_checkpoint

ENSEMBLE_FORMAT = "spinenet-ensemble"  # the "format" of an ensemble.json (spinenet.ensemble.artifact)


def is_ensemble_artifact(path: str | Path) -> bool:
    """True for a JSON file of format ``spinenet-ensemble`` (checked by content, not by name)."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as f:
        head = f.read(64).lstrip()
    if not head.startswith(b"{"):
        return False
    try:
        return json.loads(path.read_text()).get("format") == ENSEMBLE_FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def load_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """A spinenet checkpoint, loaded without unpickling arbitrary objects (:func:`~spinenet.utils.safe_io.load_checkpoint`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path: checkpoint not found: {path}")
    ckpt = load_checkpoint(path)
    if "state_dict" not in ckpt or "spinenet" not in ckpt:
        raise DataError(f"checkpoint {path}: not a spinenet checkpoint (no state_dict / spinenet config inside)")
    return ckpt


def check_resume_checkpoint(path: str | Path, task: TaskKind) -> dict[str, Any]:
    """The checkpoint ``spinenet train ckpt_path=...`` resumes from, checked before fit: readable, weights-only,
    a spinenet training checkpoint of ``task`` with its optimizer state. :class:`ConfigError` naming it otherwise."""
    try:
        ckpt = load_run_checkpoint(path)
    except DataError as exc:
        raise ConfigError(f"ckpt_path: {exc}") from None
    try:
        saved_task = ModelContract.of_checkpoint(ckpt, path).task
    except DataError as exc:
        raise ConfigError(f"ckpt_path: {exc}") from None
    if saved_task is not task:
        raise ConfigError(f"ckpt_path: checkpoint {path} is a {saved_task.value} checkpoint; this run trains {task}")
    if "optimizer_states" not in ckpt or "loops" not in ckpt:
        raise ConfigError(f"ckpt_path: checkpoint {path} holds weights only (no optimizer or loop state); "
                          "training can resume only from a checkpoint that spinenet train wrote")
    return ckpt


def check_weights_fit(ckpt: dict[str, Any], module: torch.nn.Module, path: str | Path) -> None:
    """:class:`ConfigError` when ``ckpt``'s weights do not load into ``module`` (another architecture, class
    count or input), naming the file and the first differences."""
    own = module.state_dict()
    theirs = ckpt["state_dict"]
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    shapes = [f"{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in theirs and hasattr(theirs[k], "shape") and tuple(theirs[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(shapes)} of another shape (e.g. {shapes[0]}; checkpoint vs this model)" if shapes else ""]
        raise ConfigError(f"ckpt_path: checkpoint {path} does not fit this model (another architecture, classes "
                          f"or input?): weights {', '.join(p for p in parts if p)}")


def load_run_model(path: str | Path) -> tuple[L.LightningModule, DictConfig, ModelContract]:
    """Rebuild a run checkpoint's module from the config stored in it, then load the weights (eval mode);
    with the run config and the model contract the checkpoint holds (its level offsets read from the weights)."""
    ckpt = load_run_checkpoint(path)
    contract = ModelContract.of_checkpoint(ckpt, path)
    saved = OmegaConf.create(ckpt["spinenet"])
    # the checkpoint holds every weight: never reload pretrained files (they may have moved)
    for key in ("encoder_weights", "pretrained_path"):
        if key in saved.model.get("net", {}):
            saved.model.net[key] = None
    data = saved.data.dataset
    module = build_module(saved, list(data.get("class_names") or []), list(data.get("label_names") or []))
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    table = getattr(module, "level_offset_table", None)
    return module, saved, contract.with_level_offsets(table() if callable(table) else None)
