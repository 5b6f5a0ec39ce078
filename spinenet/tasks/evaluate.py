"""``evaluate(cfg)``: metrics of a checkpoint on any data set in the project's layout.

Which data settings are used (``eval_data_config``), highest first:

1. settings named on the command line (``data.dataset.label_col=...``, ``data.split.seed=...``); a data group
   or experiment named there (``data=spider_seg``, ``experiment=cls/spider_bulging``) supplies the whole
   ``data.dataset`` block (root and columns, label names, mask values);
2. the checkpoint's own data settings: ``data.dataset`` (root, manifest columns, label names, mask values,
   class names), the image preparation (image size, channels, resize mode, CLAHE), the datamodule class and
   the patient split (so ``ckpt_path=X`` alone scores the run's own test split again);
3. eval.yaml's defaults: only the loader settings (batch size, workers).

Label and class names must equal the checkpoint's (they are the model's outputs), and ``data.in_channels``
its input channels; an image size, resize mode or CLAHE named on the command line is used with a warning (the
model then sees images prepared otherwise than in its training). Training-only settings (augmentation, ``extra_train``, ``flip_swap``) are dropped, and no
phantom is generated unless ``data.synthesize`` is named on the command line.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from spinenet.data.manifest import KINDS, DataReport, DatasetSpec, check_dataset
from spinenet.errors import ConfigError, DataError
from spinenet.loading import load_model
from spinenet.tasks.common import jsonable, write_json

log = logging.getLogger(__name__)


# what the model expects of its input: the checkpoint's unless named on the command line
PREPARATION = ("image_size", "in_channels", "resize_mode", "clahe")
# what only training reads
TRAINING_ONLY = ("augment", "extra_train", "flip_swap", "synthesize")
# loader settings taken from the eval config
LOADER = ("batch_size", "num_workers", "pin_memory")


def command_line_overrides() -> list[str]:
    """The overrides of the running Hydra job (``spinenet eval ...``, or :func:`spinenet.config.compose`)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def _named_data(overrides: Sequence[str]) -> tuple[list[str], bool]:
    """Keys under ``data.`` named by ``overrides`` (``dataset.root``, ``split.seed``) and whether a data
    group or an experiment was chosen."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys, group = [], False
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key in ("data", "experiment"):
            group = True
        elif key.startswith("data."):
            keys.append(key[len("data."):])
    return keys, group


def _resolved(node: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(node, key, throw_on_resolution_failure=True)
    except Exception as exc:
        raise ConfigError(f"data.{key}: cannot resolve it ({exc}); name it on the command line") from None
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def eval_data_config(current: DictConfig, saved: DictConfig, overrides: Sequence[str]) -> dict[str, Any]:
    """The ``data`` block that ``spinenet eval`` instantiates (precedence in the module docstring).

    ``current`` is the composed eval config's ``data``, ``saved`` the checkpoint's, ``overrides`` the command
    line (``data.dataset.root=...``).
    """
    data = OmegaConf.to_container(saved, resolve=True)
    named, group = _named_data(overrides)
    for key in TRAINING_ONLY:
        data[key] = None
    for key in LOADER:
        if key in current:
            data[key] = _resolved(current, key)
    if group:  # data=... or experiment=...: its dataset block as a whole
        block = current.get("dataset")
        data["dataset"] = {k: _resolved(block, k) for k in block} if block is not None else data.get("dataset")
    tree = OmegaConf.create(data)
    # a generation setting named: the whole synthesize block of the eval config (not the checkpoint's)
    named = sorted({k.split(".", 1)[0] if k.startswith("synthesize") else k for k in named})
    for key in named:
        head = key.split(".", 1)[0]
        value = _resolved(current, key) if OmegaConf.select(current, key, default=None) is not None else None
        if head in PREPARATION and value != OmegaConf.select(tree, key, default=None):
            log.warning("data.%s=%s differs from the checkpoint's preparation (%s): the model sees images "
                        "prepared otherwise than in its training", key, value,
                        OmegaConf.select(tree, key, default=None))
        OmegaConf.update(tree, key, value, merge=False, force_add=True)
    data = OmegaConf.to_container(tree, resolve=True)
    if data.get("in_channels") != saved.get("in_channels"):
        raise ConfigError(f"data.in_channels={data.get('in_channels')}: the checkpoint's model takes "
                          f"{saved.get('in_channels')} channel(s)")
    split = data.get("split") or {}
    if split.get("file") and not Path(split["file"]).is_file():
        raise ConfigError(
            f"data.split.file={split['file']} (the checkpoint's split) is not found: name the run's "
            "splits.json with data.split.file=..., or data.split.file=null to split by data.split.seed"
        )
    return data


def _check_input_size(net: torch.nn.Module, size: Sequence[int], in_channels: int, trained: Sequence[int]) -> None:
    """An image size named on the command line: one forward pass shows whether the net takes it."""
    try:
        with torch.no_grad():
            net(torch.zeros(1, int(in_channels), *(int(v) for v in size)))
    except Exception as exc:
        raise ConfigError(f"data.image_size={list(size)}: the checkpoint's model does not take it ({exc}); it was "
                          f"trained at {list(trained)}") from None


def _mismatch(report: DataReport, checkpoint: str) -> str:
    """A data check's problems in one line: each kind with its column, row count and first example."""
    parts = []
    for kind, count in Counter(p.kind for p in report.problems).items():
        first = next(p for p in report.problems if p.kind == kind)
        where = f"line {first.row}: " if first.row is not None else ""
        column = f" in column {first.column!r}" if first.column else ""
        plural = "row" if count == 1 else "rows"
        rows = f" ({count} {plural}, e.g. {where}{first.message})" if first.row is not None else f": {first.message}"
        parts.append(f"{KINDS.get(kind, kind)}{column}{rows}")
    return (f"{report.manifest} does not fit the checkpoint {checkpoint}: " + "; ".join(parts)
            + " (its columns, labels and mask values come from the checkpoint; name others with "
            "data.dataset.<setting>=...)")


def evaluate(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics of ``cfg.ckpt_path`` on a data set; ``overrides``: the command line (default: Hydra's)."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model, contract = load_model(cfg.ckpt_path)
    module, saved, task = model.module, model.config, contract.task
    overrides = command_line_overrides() if overrides is None else list(overrides)
    # the input preparation is the contract's (the rest of the data settings: the run's, for its split)
    prepared = contract.input
    trained = OmegaConf.merge(saved.data, {"image_size": list(prepared.image_size), "in_channels": prepared.in_channels,
                                           "resize_mode": prepared.resize_mode, "clahe": prepared.clahe})
    data = eval_data_config(cfg.data, trained, overrides)
    if list(data["image_size"]) != list(prepared.image_size):
        _check_input_size(module.net, data["image_size"], data["in_channels"], prepared.image_size)
    trained_classes = list(contract.classes)
    dataset = data["dataset"]
    given = list(dataset.get(task.names_key) or [])
    if given and len(contract.heads) <= 1 and given != trained_classes:  # a multi-task model's: per head
        raise ConfigError(f"data.dataset.{task.names_key} {given} differ from the checkpoint's {trained_classes}")
    spec = DatasetSpec.from_config(dataset)
    if not spec.manifest_path.is_file():
        named, group = _named_data(overrides)
        source = ("command line" if {"dataset", "dataset.root"} & set(named) else
                  "data group or experiment named" if group else "checkpoint")
        raise DataError(f"data set not found: no {spec.manifest_path} (data.dataset.root from the {source}); "
                        "name the folder with data.dataset.root=...")
    check = cfg.get("extras", {}).get("data_check", "deep")
    if check != "off":
        report = check_dataset(spec, deep=check == "deep")
        if not report.ok:
            raise DataError(_mismatch(report, str(cfg.ckpt_path)))
    # checked above: the datamodule does not check again
    datamodule = hydra.utils.instantiate(data, output_dir=str(output_dir), check="off")
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
        "task": task.value,
        "run_dir": str(output_dir),
        "test": {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")},
        "per_class": jsonable(results),
        # the data settings used, and which of them the command line named (the rest: the checkpoint's)
        "data": data,
        "data_from_command_line": sorted(set(_named_data(overrides)[0])),
    }
    path = write_json(metrics, output_dir / "metrics.json")
    metrics["metrics_file"] = str(path)
    print(f"metrics written: {path}", flush=True)
    return metrics
