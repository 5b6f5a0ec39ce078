"""The saved ensemble: a JSON file naming member checkpoints and weights, loaded like a single model.

``ensemble.json`` (format ``spinenet-ensemble``, version 1) holds, per member, the checkpoint path (relative to
the JSON file, tried first so a folder moved as a whole uses its own files, and absolute), its SHA-256, and its
weight, plus how the weights were chosen. Every member file is checked against its SHA-256 before it is loaded;
a member without one is refused. No pickle: the members are ordinary weights-only spinenet checkpoints.

:func:`load_ensemble` returns a LightningModule of the members' own class (``SegmentationModule`` or
``ClassificationModule``) whose ``net`` is an :class:`EnsembleNet`, so ``spinenet eval``, the test step and the
metrics work unchanged. ``EnsembleNet.forward`` returns ``log(sum_i w_i softmax(M_i(x)) / sum_i w_i)``: a
softmax of it is exactly the weighted average of the members' probabilities, and its argmax is the ensemble's
decision, so every consumer written for logits (losses, metrics, ``softmax``) sees the ensemble's
probabilities. ``EnsembleNet.probabilities(x)`` returns the average itself.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

from spinenet.checkpoints import ENSEMBLE_FORMAT, is_ensemble_artifact, load_run_model
from spinenet.contract import CONTRACT_KEY, ModelContract
from spinenet.ensemble.members import Member, check_compatible, member_probabilities
from spinenet.errors import ConfigError, DataError
from spinenet.tasks.common import build_module
from spinenet.utils.safe_io import file_sha256

log = logging.getLogger(__name__)

VERSION = 1
# log(0) would be -inf, and -inf * 0 inside a focal or Dice loss is NaN; the floor is far below any float32
# probability a softmax of finite logits gives for a kept class, so softmax(log p) == p to float32 precision
_LOG_FLOOR = 1e-30


class EnsembleNet(nn.Module):
    """Weighted average of member probabilities: ``sum_i w_i softmax(M_i(x)) / sum_i w_i`` over the class axis 1.

    ``members`` are modules returning logits (N, C) or (N, C, H, W); members with weight 0 should be left out
    by the caller (they would cost inference for nothing).
    """

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float]):
        super().__init__()
        w = torch.as_tensor([float(x) for x in weights], dtype=torch.float32)
        if len(members) == 0 or w.numel() != len(members):
            raise ConfigError(
                f"an ensemble needs one weight per member: {len(members)} members, {w.numel()} weights"
            )
        if not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0:
            raise ConfigError(f"ensemble weights must be non-negative with a positive sum, got {w.tolist()}")
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", w / w.sum())
        # classifiers with a level prior need each image's disc level (ClassificationModule passes it on)
        self.takes_levels = any(getattr(m, "level_offsets", None) is not None for m in members)

    def probabilities(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> torch.Tensor:
        total = None
        for w, member in zip(self.weights, self.members, strict=True):
            p = w * member_probabilities(member, x, levels)
            total = p if total is None else total + p
        return total

    def forward(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> torch.Tensor:
        return torch.log(self.probabilities(x, levels).clamp_min(_LOG_FLOOR))


def is_ensemble(module: nn.Module) -> bool:
    return isinstance(getattr(module, "net", None), EnsembleNet)


# ----------------------------------------------------------------------------------------------- the file
def save_artifact(path: str | Path, members: Sequence[Any], weights: Sequence[float], **info: Any) -> Path:
    """Write ``ensemble.json``: members (objects with ``name``, ``checkpoint``, ``sha256``), weights, info."""
    path = Path(path).resolve()
    if len(members) != len(weights):
        raise ConfigError(f"{len(members)} members but {len(weights)} weights")
    entries = []
    for m, w in zip(members, weights, strict=True):
        ckpt = Path(m.checkpoint).resolve()
        entries.append(
            {
                "name": m.name,
                "checkpoint": str(ckpt),
                "checkpoint_relative": os.path.relpath(ckpt, path.parent),
                "sha256": m.sha256,
                "weight": float(w),
            }
        )
    doc = {"format": ENSEMBLE_FORMAT, "version": VERSION, "members": entries, **info}
    contract = getattr(members[0], "contract", None) if members else None
    if contract is not None:  # what the ensemble expects and outputs: its members' common contract
        doc[CONTRACT_KEY] = contract.with_level_offsets(None).without_calibration().to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_artifact(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"ensemble file {path}: not readable JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != ENSEMBLE_FORMAT:
        raise DataError(f'ensemble file {path}: not a spinenet ensemble (no "format": "{ENSEMBLE_FORMAT}")')
    if not isinstance(doc.get("version"), int) or doc["version"] > VERSION:
        raise DataError(
            f"ensemble file {path}: version {doc.get('version')!r}; this spinenet reads up to {VERSION}"
        )
    members = doc.get("members")
    if not isinstance(members, list) or not members:
        raise DataError(f"ensemble file {path}: no members")
    for i, m in enumerate(members):
        if not isinstance(m, dict) or "checkpoint" not in m or "weight" not in m:
            raise DataError(f"ensemble file {path}: member {i} lacks a checkpoint or weight")
        if not isinstance(m.get("sha256"), str) or len(m["sha256"]) != 64:
            raise DataError(f"ensemble file {path}: member {m.get('name', i)} records no SHA-256 of its checkpoint "
                            "(spinenet ensemble always writes one); rebuild the ensemble with spinenet ensemble")
    return doc


def _member_path(entry: dict[str, Any], artifact: Path) -> Path:
    # relative first: a folder moved or copied as a whole uses its own files (either is checked by its SHA-256)
    tried = [(artifact.parent / entry["checkpoint_relative"]).resolve()] if entry.get("checkpoint_relative") else []
    tried.append(Path(entry["checkpoint"]))
    for p in tried:
        if p.is_file():
            return p
    raise DataError(
        f"ensemble file {artifact}: member {entry.get('name')} not found at {[str(p) for p in tried]}"
    )


def load_ensemble(path: str | Path, verify: bool = True):
    """``(module, saved_config, contract)`` like :func:`~spinenet.checkpoints.load_run_model`, for an ensemble.

    ``verify`` checks every member file against the SHA-256 recorded when the weights were chosen.
    ``saved_config`` is the first member's run config with an ``ensemble`` entry describing the artifact.
    """
    path = Path(path).resolve()
    doc = read_artifact(path)
    used = [e for e in doc["members"] if float(e["weight"]) > 0]
    if not used:
        raise DataError(f"ensemble file {path}: every member has weight 0")
    members, modules = [], []
    for entry in used:
        ckpt = _member_path(entry, path)
        if verify and file_sha256(ckpt) != entry["sha256"]:
            raise DataError(
                f"ensemble file {path}: member {entry.get('name')} ({ckpt}) has changed since the "
                "weights were chosen (SHA-256 differs); rebuild the ensemble with spinenet ensemble"
            )
        # a member is a run checkpoint (an ensemble file named as a member loads as before, recursively)
        module, cfg, contract = load_ensemble(ckpt) if is_ensemble_artifact(ckpt) else load_run_model(ckpt)
        members.append(
            Member(
                name=str(entry.get("name") or ckpt.stem),
                checkpoint=ckpt,
                config=OmegaConf.to_container(cfg, resolve=True),
                sha256=entry.get("sha256", ""),
                contract=contract,
            )
        )
        modules.append(module)
    signature = check_compatible(members)
    if CONTRACT_KEY in doc and ModelContract.from_dict(doc[CONTRACT_KEY], path).signature() != signature:
        raise DataError(f"ensemble file {path}: its members no longer match the contract it records "
                        "(input or classes differ); rebuild the ensemble with spinenet ensemble")
    saved = OmegaConf.create(members[0].config)
    for key in (
        "encoder_weights",
        "pretrained_path",
    ):  # the wrapper's own net is replaced; load nothing for it
        if key in saved.model.get("net", {}):
            saved.model.net[key] = None
    ds = saved.data.dataset
    wrapper = build_module(saved, list(ds.get("class_names") or []), list(ds.get("label_names") or []))
    if not hasattr(wrapper, "net"):
        raise ConfigError(f"{type(wrapper).__name__} has no `net` to replace by the ensemble")
    wrapper.net = EnsembleNet(modules, [float(e["weight"]) for e in used])
    if isinstance(getattr(modules[0], "loss", None), nn.Module):
        # the first member's loss with its trained state (e.g. class weights computed at fit start)
        wrapper.loss = copy.deepcopy(modules[0].loss)
    with open_dict(saved):
        saved.ensemble = {
            "artifact": str(path),
            "members": [e.get("name") for e in used],
            "weights": [float(e["weight"]) for e in used],
            "method": doc.get("method"),
        }
    wrapper.run_config = OmegaConf.to_container(saved, resolve=True)
    wrapper.eval()
    table = getattr(wrapper, "level_offset_table", None)
    contract = members[0].contract.without_calibration().with_level_offsets(table() if callable(table) else None)
    log.info(
        "ensemble %s: %d member(s) with weights %s",
        path,
        len(used),
        [round(float(e["weight"]), 4) for e in used],
    )
    return wrapper, saved, contract
