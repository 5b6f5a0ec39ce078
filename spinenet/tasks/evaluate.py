"""``evaluate(cfg)``: metrics of a checkpoint on any data set in the project's layout."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from spinenet.errors import ConfigError, DataError
from spinenet.tasks.common import build_module, jsonable, write_json

log = logging.getLogger("spinenet")


def load_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """A spinenet checkpoint, loaded without unpickling arbitrary objects (:func:`~spinenet.utils.safe_io.load_checkpoint`)."""
    from spinenet.utils.safe_io import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path: checkpoint not found: {path}")
    ckpt = load_checkpoint(path)
    if "state_dict" not in ckpt or "spinenet" not in ckpt:
        raise DataError(f"checkpoint {path}: not a spinenet checkpoint (no state_dict / spinenet config inside)")
    return ckpt


def check_resume_checkpoint(path: str | Path, task: str) -> dict[str, Any]:
    """The checkpoint ``spinenet train ckpt_path=...`` resumes from, checked before fit: readable, weights-only,
    a spinenet training checkpoint of ``task`` with its optimizer state. :class:`ConfigError` naming it otherwise."""
    try:
        ckpt = load_run_checkpoint(path)
    except DataError as exc:
        raise ConfigError(f"ckpt_path: {exc}") from None
    saved_task = str(ckpt["spinenet"].get("task", "segmentation"))
    if saved_task != task:
        raise ConfigError(f"ckpt_path: checkpoint {path} is a {saved_task} checkpoint; this run trains {task}")
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


def model_from_checkpoint(path: str | Path) -> tuple[L.LightningModule, DictConfig]:
    """Rebuild the trained module from the config stored in its checkpoint, then load the weights.

    An ensemble file written by ``spinenet ensemble`` loads as one module whose net averages its members.
    """
    from spinenet.ensemble.artifact import is_ensemble_artifact, load_ensemble

    if is_ensemble_artifact(path):
        return load_ensemble(path)
    ckpt = load_run_checkpoint(path)
    saved = OmegaConf.create(ckpt["spinenet"])
    # the checkpoint holds every weight: never reload pretrained files (they may have moved)
    for key in ("encoder_weights", "pretrained_path"):
        if key in saved.model.get("net", {}):
            saved.model.net[key] = None
    data = saved.data.dataset
    module = build_module(saved, list(data.get("class_names") or []), list(data.get("label_names") or []))
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    return module, saved


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    module, saved = model_from_checkpoint(cfg.ckpt_path)
    task = saved.get("task", "segmentation")
    # the data set is the user's; what the model expects (size, channels, classes) comes from the checkpoint
    overrides = {"image_size": saved.data.image_size, "in_channels": saved.data.in_channels,
                 "resize_mode": saved.data.get("resize_mode", "resize"), "clahe": saved.data.get("clahe")}
    trained_classes = list(saved.data.dataset.get("class_names") or saved.data.dataset.get("label_names") or [])
    current = cfg.data.dataset
    given = list(current.get("class_names") or []) if task == "segmentation" else list(current.get("label_names") or [])
    if given and given != trained_classes:
        raise ConfigError(f"data.dataset classes {given} differ from the checkpoint's {trained_classes}")
    datamodule = hydra.utils.instantiate(cfg.data, output_dir=str(output_dir),
                                         check=cfg.get("extras", {}).get("data_check", "deep"), **overrides)
    loader = datamodule.split_dataloader(cfg.get("split", "test"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[], devices=1,
                                                 strategy="auto", enable_checkpointing=False)
    trainer.test(module, dataloaders=loader, verbose=False)
    results = getattr(module, "test_results", {})
    metrics = {
        "checkpoint": str(cfg.ckpt_path),
        "data_root": str(datamodule.spec.root),
        "split": cfg.get("split", "test"),
        "images": len(loader.dataset),
        "task": task,
        "run_dir": str(output_dir),
        "test": {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")},
        "per_class": jsonable(results),
    }
    path = write_json(metrics, output_dir / "metrics.json")
    metrics["metrics_file"] = str(path)
    print(f"metrics written: {path}", flush=True)
    return metrics
