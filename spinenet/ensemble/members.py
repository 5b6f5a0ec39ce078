"""Ensemble members: resolving them, checking they fit together, and their cached predictions.

A member is a trained checkpoint. It can be named as
- a checkpoint file (``.../checkpoints/epoch_012.ckpt``);
- a run folder (its ``metrics.json`` names the checkpoint its test used, found inside that folder: a copied
  run folder never uses the original's files);
- a sweep folder: every successful trial, or the top k of them (:func:`top_k_of_sweep`), ranked by the
  sweep's monitor at each trial's best checkpoint (``best_score`` in ``metrics.json``; the monitor's last
  validation value where that is missing), ``monitor_mode`` deciding the direction.

A member is what the user gave: a run's checkpoint is checked against the SHA-256 its training recorded in
``metrics.json`` (``checkpoint_sha256``), and a file given twice (same SHA-256, e.g. a run and its copy) is
counted once, with a warning and a note in the report.

Members of one ensemble must see the same input and predict the same classes: same task, class names
(segmentation) or label names (classification), image size, input channels, resize mode, CLAHE and mask
values. Anything else (architecture, encoder, optimizer) may differ.

Every member predicts the validation and test split of ONE data set with ONE split (the first member's
``splits.json`` unless ``--splits`` names another), each split once: the class probabilities are cached
with :func:`~spinenet.utils.safe_io.save_tensors` (float16 for segmentation, float32 for classification),
keyed by a hash of the checkpoint file, the data set (preprocessing, manifest rows of the split and their
files' sizes and modification times) and the split. A new search over the same members costs no inference.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import OmegaConf

from spinenet.checkpoints import is_ensemble_artifact, load_run_checkpoint, load_run_model
from spinenet.contract import ModelContract, TaskKind
from spinenet.errors import ConfigError, DataError
from spinenet.sweeps import collect_trials
from spinenet.utils.run_folder import run_overrides
from spinenet.utils.safe_io import file_sha256, load_tensors, save_tensors

log = logging.getLogger(__name__)

CACHE_FORMAT = "spinenet-member-predictions"
CACHE_VERSION = 1
SPLITS = ("val", "test")


@dataclass
class Member:
    """One trained model of an ensemble. ``config`` is the run config stored in its checkpoint."""

    name: str
    checkpoint: Path
    config: dict[str, Any]
    sha256: str
    contract: ModelContract
    run_dir: Path | None = None
    source: str = "checkpoint"  # checkpoint | run | sweep
    description: str = ""  # its run's overrides that the other members do not share
    overrides: list[str] = field(default_factory=list)  # its run's Hydra overrides
    rank_score: float | None = None  # the monitor at the best checkpoint, for sweep members
    duplicates: list[str] = field(default_factory=list)  # members given again with the same file: counted once

    @property
    def task(self) -> TaskKind:
        return self.contract.task

    @property
    def classes(self) -> list[str]:
        return list(self.contract.classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "checkpoint": str(self.checkpoint),
            "sha256": self.sha256,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "source": self.source,
            "description": self.description,
            "rank_score": self.rank_score,
            "architecture": architecture(self.config),
            "duplicates": list(self.duplicates),
        }


def architecture(config: dict[str, Any]) -> str:
    """A short model description from a run config, e.g. ``unet/resnet34`` or ``discnet``."""
    net = config.get("model", {}).get("net", {}) or {}
    parts = [str(net.get("name", "?"))]
    if net.get("encoder"):
        parts.append(str(net["encoder"]))
    return "/".join(parts)


# --------------------------------------------------------------------------------------------- hashing


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------------------------- resolving
def member_from_checkpoint(
    path: str | Path,
    name: str | None = None,
    run_dir: Path | None = None,
    source: str = "checkpoint",
    rank_score: float | None = None,
) -> Member:
    path = Path(path).expanduser().resolve()
    if is_ensemble_artifact(path):
        raise ConfigError(
            f"{path} is an ensemble artifact; name its members instead (ensembles of ensembles "
            "are not supported)"
        )
    if run_dir is None and path.parent.name == "checkpoints":
        run_dir = path.parent.parent
    sha256 = file_sha256(path)
    if run_dir is not None:
        check_recorded_sha256(run_dir, path, sha256)
    ckpt = load_run_checkpoint(path)
    return Member(
        name=name or _default_name(path, run_dir),
        checkpoint=path,
        config=dict(ckpt["spinenet"]),
        sha256=sha256,
        contract=ModelContract.of_checkpoint(ckpt, path),
        run_dir=run_dir,
        source=source,
        rank_score=rank_score,
        overrides=(run_overrides(run_dir) or []) if run_dir is not None else [],
    )


def _run_name(run_dir: Path) -> str:
    # a sweep trial's folder is just its number: name the sweep too
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.isdigit() else run_dir.name


def _default_name(path: Path, run_dir: Path | None) -> str:
    if run_dir is not None:
        return f"{_run_name(run_dir)}/{path.stem}"
    return path.stem


def _metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"run folder {run_dir}: metrics.json is not readable JSON ({exc})") from None
    if not isinstance(metrics, dict):
        raise ConfigError(f"run folder {run_dir}: metrics.json does not hold a JSON object")
    return metrics


def _run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a finished run was tested with (``tested_checkpoint``; runs from before ``test_ckpt``:
    their best, else their last), found INSIDE ``run_dir``: by its path relative to the run folder that
    metrics.json recorded, else by its file name under ``checkpoints/``. A path outside the folder given is
    never used (a copied run folder must not silently load the original's checkpoint); a folder without
    metrics.json gives ``checkpoints/last.ckpt``."""
    run_dir = run_dir.resolve()
    metrics = _metrics(run_dir)
    key = next((k for k in ("tested_checkpoint", "best_checkpoint", "last_checkpoint")
                if metrics and metrics.get(k)), None)
    if key is None:
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            return last
        raise ConfigError(f"run folder {run_dir} has no checkpoint (no metrics.json naming one, no "
                          "checkpoints/last.ckpt)")
    saved = Path(str(metrics[key]))
    candidates = []
    if not saved.is_absolute():
        candidates.append(run_dir / saved)
    elif metrics.get("run_dir") and saved.is_relative_to(str(metrics["run_dir"])):
        candidates.append(run_dir / saved.relative_to(str(metrics["run_dir"])))
    candidates.append(run_dir / "checkpoints" / saved.name)
    for c in candidates:
        if c.is_file() and c.resolve().is_relative_to(run_dir):  # a symlink out of the folder does not count
            return c
    raise ConfigError(f"run folder {run_dir}: the {key} its metrics.json names ({saved.name}) is not inside "
                      "the folder; a checkpoint outside the folder given is never used")


def check_recorded_sha256(run_dir: Path, checkpoint: Path, sha256: str) -> None:
    """:class:`DataError` when ``checkpoint`` differs from the SHA-256 its training recorded in ``run_dir``'s
    metrics.json; a warning when the run recorded none (trained before spinenet recorded them)."""
    metrics = _metrics(run_dir)
    if metrics is None:
        return
    recorded = metrics.get("checkpoint_sha256")
    if not isinstance(recorded, dict):
        log.warning("run folder %s: its metrics.json records no checkpoint SHA-256 (an older run); %s is used "
                    "unverified", run_dir, checkpoint.name)
        return
    expected = recorded.get(checkpoint.name)
    if expected is None:
        log.info("run folder %s: no SHA-256 recorded for %s (not a best, last or tested checkpoint); unverified",
                 run_dir, checkpoint.name)
    elif expected != sha256:
        raise DataError(f"checkpoint {checkpoint} does not match the SHA-256 its training recorded in "
                        f"{run_dir / 'metrics.json'} (modified or replaced)")


def is_sweep_dir(path: Path) -> bool:
    return (
        path.is_dir()
        and not (path / "metrics.json").is_file()
        and ((path / "summary.csv").is_file() or any(p.is_dir() and p.name.isdigit() for p in path.iterdir()))
    )


def _monitor_mode(run_dir: Path) -> tuple[str | None, str]:
    """The monitor and its direction of a trial (from its metrics.json and .hydra/config.yaml)."""
    monitor, mode = None, "max"
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        monitor = json.loads(metrics_file.read_text()).get("monitor")
    cfg_file = run_dir / ".hydra" / "config.yaml"
    if cfg_file.is_file():
        cfg = OmegaConf.load(cfg_file)
        monitor = monitor or cfg.get("monitor")
        mode = str(cfg.get("monitor_mode", "max"))
    return monitor, mode


def rank_sweep(sweep_dir: Path) -> tuple[pd.DataFrame, str | None, str]:
    """Successful trials of a sweep with a checkpoint, best first: ``(table, monitor, mode)``.

    Ranked by ``best_score`` (the monitor at the checkpoint that will be used) where recorded, else by the
    monitor's column; ``monitor_mode`` (max/min) from the trials' config.
    """
    sweep_dir = Path(sweep_dir)
    table = collect_trials(sweep_dir)
    if table.empty:
        raise ConfigError(f"sweep folder {sweep_dir} holds no trial folders (0/, 1/, ...)")
    ok = table[table["status"] == "ok"].copy()
    if ok.empty:
        raise ConfigError(
            f"sweep folder {sweep_dir}: no trial finished successfully "
            f"({len(table)} trials, statuses {sorted(set(table['status']))})"
        )
    monitor, mode = _monitor_mode(Path(ok.iloc[0]["folder"]))
    key = pd.to_numeric(ok.get("best_score", pd.Series(index=ok.index, dtype=float)), errors="coerce")
    if monitor and monitor in ok.columns:
        key = key.fillna(pd.to_numeric(ok[monitor], errors="coerce"))
    ok["rank_score"] = key
    ok = ok.sort_values("rank_score", ascending=mode == "min", na_position="last", kind="stable")
    return ok, monitor, mode


def top_k_of_sweep(sweep_dir: str | Path, k: int | None = None) -> list[Member]:
    """The k best successful trials of a sweep (all of them when k is None) as members."""
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    if k is not None and k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {k}")
    ranked, monitor, mode = rank_sweep(sweep_dir)
    chosen = ranked if k is None else ranked.head(k)
    if k is not None and len(chosen) < k:
        log.warning(
            "sweep %s has only %d successful trials; using all of them (asked for the top %d)",
            sweep_dir,
            len(chosen),
            k,
        )
    members = []
    for row in chosen.itertuples():
        run_dir = Path(row.folder)
        score = float(row.rank_score) if row.rank_score == row.rank_score else None
        members.append(
            member_from_checkpoint(
                _run_checkpoint(run_dir),
                name=_run_name(run_dir),
                run_dir=run_dir,
                source="sweep",
                rank_score=score,
            )
        )
    log.info(
        "sweep %s: %d member(s) by %s (%s): %s",
        sweep_dir,
        len(members),
        monitor,
        mode,
        ", ".join(m.name for m in members),
    )
    return members


def resolve_members(
    specs: Sequence[str | Path], sweeps: Sequence[str | Path] = (), top_k: int | None = None
) -> list[Member]:
    """Members from checkpoint files, run folders, sweep folders (all trials or ``top_k``) and ``sweeps``."""
    if top_k is not None and not sweeps and not any(is_sweep_dir(Path(s).expanduser()) for s in specs):
        raise ConfigError("--top-k needs a sweep folder (--sweep DIR or a sweep folder as MEMBER)")
    members: list[Member] = []
    for spec in [*specs, *sweeps]:
        path = Path(spec).expanduser()
        if not path.exists():
            raise ConfigError(f"ensemble member {spec}: no such file or folder")
        path = path.resolve()
        if path.is_file():
            members.append(member_from_checkpoint(path))
        elif (path / "metrics.json").is_file() or (path / "checkpoints").is_dir():
            members.append(
                member_from_checkpoint(
                    _run_checkpoint(path), run_dir=path, source="run", name=_run_name(path)
                )
            )
        elif is_sweep_dir(path):
            members.extend(top_k_of_sweep(path, top_k))
        else:
            raise ConfigError(
                f"ensemble member {spec}: not a checkpoint, a run folder (metrics.json) or a sweep "
                "folder (trial folders 0/, 1/, ...)"
            )
    # the same file twice (a run and its copy, a checkpoint named again) would double its weight: counted once
    first: dict[str, Member] = {}
    for m in members:
        if m.sha256 in first:
            kept = first[m.sha256]
            kept.duplicates.append(f"{m.name} ({m.checkpoint})")
            log.warning("ensemble member %s (%s) is the same file as %s (same SHA-256); counted once",
                        m.name, m.checkpoint, kept.name)
        else:
            first[m.sha256] = m
    members = list(first.values())
    if not members:
        raise ConfigError("no ensemble members: name checkpoints, run folders or a sweep folder (--sweep)")
    # overrides every member shares (data root, epochs) say nothing about a member
    shared = set.intersection(*(set(m.overrides) for m in members)) if len(members) > 1 else set()
    for m in members:
        m.description = ", ".join(o for o in m.overrides if o not in shared)
    return members


# --------------------------------------------------------------------------------------------- compatibility
def check_compatible(members: Sequence[Member]) -> dict[str, Any]:
    """The members' common contract signature (:meth:`~spinenet.contract.ModelContract.signature`: task,
    classes, input, mask values); ConfigError listing every difference otherwise."""
    first = members[0].contract.signature()
    problems = []
    for m in members[1:]:
        sig = m.contract.signature()
        for key, value in first.items():
            if sig.get(key) != value:
                problems.append(f"{key}: {members[0].name} has {value!r}, {m.name} has {sig.get(key)!r}")
    if problems:
        raise ConfigError(
            "ensemble members must see the same input and predict the same classes; they differ in "
            + "; ".join(problems)
        )
    if len(first["classes"]) < 2:
        raise ConfigError(f"member {members[0].name}: its checkpoint names {len(first['classes'])} classes")
    return first


# --------------------------------------------------------------------------------------------- data
def find_split_file(members: Sequence[Member], splits_file: str | Path | None) -> Path:
    if splits_file is not None:
        path = Path(splits_file).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"--splits: no such file: {path}")
        return path
    first = members[0]
    for folder in (first.run_dir, first.checkpoint.parent, first.checkpoint.parent.parent):
        if folder is not None and (folder / "splits.json").is_file():
            return (folder / "splits.json").resolve()
    raise ConfigError(
        f"no splits.json found for the first member {first.name} ({first.checkpoint}); name the "
        "split with --splits <run folder>/splits.json so every member is scored on the same images"
    )


def build_datamodule(
    config: dict[str, Any],
    split_file: Path,
    data_root: str | Path | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
):
    """The first member's data module with the ensemble's split, no augmentation, nothing written."""
    data = copy.deepcopy(config["data"])
    data.setdefault("split", {})
    data["split"] = {**(data["split"] or {}), "file": str(split_file)}
    if data_root is not None:
        data["dataset"]["root"] = str(Path(data_root).expanduser().resolve())
        data["synthesize"] = None  # a named data set must exist; never generate into it
    if batch_size is not None:
        data["batch_size"] = int(batch_size)
    if num_workers is not None:
        data["num_workers"] = int(num_workers)
    dm = hydra.utils.instantiate(OmegaConf.create(data), output_dir=None, check="fast")
    dm.setup()
    return dm


def split_fingerprint(dm, split: str, signature: dict[str, Any]) -> dict[str, Any]:
    """What the cached predictions of one split depend on besides the checkpoint (hashed into the key)."""
    rows = dm.datasets[split].rows
    root = Path(dm.spec.root).resolve()
    files = []
    for row in rows.itertuples():
        entry = [str(row.image_path)]
        for p in (row.image_path, getattr(row, "mask_path", None)):
            if isinstance(p, str) and p:
                st = Path(p).stat()
                entry += [st.st_size, st.st_mtime_ns]
        if "label_idx" in rows.columns:
            entry.append(int(row.label_idx))
        files.append(entry)
    return {
        "root": str(root),
        "split": split,
        "signature": signature,
        "columns": [dm.spec.image_col, dm.spec.mask_col, dm.spec.label_col],
        "files_sha256": _digest(files),
        "images": len(rows),
    }


def _image_ids(dm, split: str) -> list[str]:
    root = Path(dm.spec.root).resolve()
    out = []
    for p in dm.datasets[split].rows["image_path"]:
        try:
            out.append(str(Path(p).resolve().relative_to(root)))
        except ValueError:
            out.append(str(p))
    return out


# --------------------------------------------------------------------------------------------- predictions
@dataclass
class SplitPredictions:
    """Stacked member probabilities of one split: (k, N, C) or (k, N, C, H, W), and targets (N[, H, W])."""

    split: str
    probs: torch.Tensor
    targets: torch.Tensor
    images: list[str]
    patients: list[str]
    cached: list[bool] = field(default_factory=list)  # per member: loaded from the cache (no inference)
    cache_files: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.targets.shape[0])


def member_probabilities(
    module: torch.nn.Module, x: torch.Tensor, levels: Sequence[str] | None = None
) -> torch.Tensor:
    """A member's class probabilities: softmax over the class axis of its output (logits), per task for a
    multi-task member (its heads' blocks side by side, so that an ensemble averages each task); a classifier
    with a level prior also gets the samples' disc levels."""
    if getattr(module, "level_offsets", None) is not None:
        if levels is None:  # the net alone would silently drop what the member learned per level
            raise ConfigError("an ensemble member has a level prior (model.level_prior) but the data gives no "
                              "disc levels: set data.dataset.level_col in the data config the ensemble uses")
        logits = module(x, levels).float()
    else:
        logits = module(x).float()
    slices = module.task_slices() if hasattr(module, "task_slices") else [slice(None)]
    return torch.cat([torch.softmax(logits[:, s], dim=1) for s in slices], dim=1)


def _cache_path(member: Member, cache_dir: Path | None, split: str, key: str) -> Path:
    if cache_dir is None:
        base = member.run_dir if member.run_dir is not None else member.checkpoint.parent
        cache_dir = base / "predictions"
    return cache_dir / f"{member.checkpoint.stem}-{split}-{key[:20]}.safetensors"


def _run_inference(
    modules: Sequence[torch.nn.Module], loader, device: torch.device, seg: bool, names: Sequence[str]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One pass over the loader; every (uncached) member predicts each batch. Probabilities on the CPU."""
    dtype = torch.float16 if seg else torch.float32
    outs: list[list[torch.Tensor]] = [[] for _ in modules]
    targets = []
    with torch.inference_mode():
        for batch in loader:
            x = batch["image"].to(device)
            targets.append(batch["mask" if seg else "label"].cpu())
            for i, module in enumerate(modules):
                outs[i].append(member_probabilities(module, x, batch.get("level")).to(dtype).cpu())
    probs = [torch.cat(o) for o in outs]
    for p, name in zip(probs, names, strict=True):
        if not torch.isfinite(p).all():
            raise DataError(f"member {name} predicts NaN or infinite values on this data")
    return probs, torch.cat(targets)


def collect_predictions(
    members: Sequence[Member],
    split_file: Path,
    *,
    splits: Sequence[str] = SPLITS,
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, SplitPredictions], Any]:
    """Probabilities of every member on each split, from the cache or by inference (then cached).

    Per split: read what the cache holds (:func:`_read_cached`), predict the rest (:func:`_predict_missing`,
    which writes them to the cache), check that all members saw the same images. Returns
    ``({split: SplitPredictions}, datamodule)``.
    """
    say = progress or log.info
    signature = check_compatible(members)
    dm = build_datamodule(members[0].config, split_file, data_root, batch_size, num_workers)
    cache_root = Path(cache_dir).expanduser().resolve() if cache_dir is not None else None
    modules: dict[int, torch.nn.Module] = {}  # loaded once, for all splits
    out: dict[str, SplitPredictions] = {}
    for split in splits:
        if len(dm.datasets[split]) == 0:
            raise DataError(f"the {split} split of {dm.spec.root} (from {split_file}) has no images")
        fp = split_fingerprint(dm, split, signature)
        images = _image_ids(dm, split)
        files = [_cache_path(m, cache_root, split, _digest([m.sha256, _digest(fp)])) for m in members]
        probs, targets = _read_cached(members, files, split, images)
        cached = [p is not None for p in probs]
        if all(cached):
            say(f"{split} split: all {len(members)} member(s) from the prediction cache")
        else:
            targets = _predict_missing(members, probs, targets, files, dm, split, signature, fp, images,
                                       torch.device(device), modules, say)
        shapes = {tuple(p.shape) for p in probs}
        if len(shapes) != 1:
            raise DataError(f"members' {split} predictions have different shapes {sorted(shapes)}")
        patients = [str(p) for p in dm.datasets[split].rows[dm.spec.patient_col]]
        out[split] = SplitPredictions(split, torch.stack(probs), targets.long(), images, patients, cached,
                                      [str(f) for f in files])
    return out, dm


def _read_cached(
    members: Sequence[Member], files: Sequence[Path], split: str, images: list[str]
) -> tuple[list[torch.Tensor | None], torch.Tensor | None]:
    """Each member's cached probabilities for ``split`` (None where missing, unreadable or stale) and the
    targets they were stored with (the same for every member, or a DataError)."""
    probs: list[torch.Tensor | None] = [None] * len(members)
    targets: torch.Tensor | None = None
    for i, (m, path) in enumerate(zip(members, files, strict=True)):
        if not path.is_file():
            continue
        try:
            tensors, meta = load_tensors(path, expected_format=CACHE_FORMAT, max_version=CACHE_VERSION)
        except DataError as exc:
            log.warning("ignoring unreadable prediction cache (%s); predicting again", exc)
            continue
        if meta.get("checkpoint_sha256") != m.sha256 or meta.get("images") != images:
            log.warning("prediction cache %s does not match %s; predicting again", path, m.name)
            continue
        if targets is not None and not torch.equal(targets, tensors["targets"].long()):
            raise DataError(f"cached {split} targets differ between members ({path}); delete {path.parent}")
        probs[i], targets = tensors["probs"], tensors["targets"].long()
    return probs, targets


def _predict_missing(
    members: Sequence[Member],
    probs: list[torch.Tensor | None],
    targets: torch.Tensor | None,
    files: Sequence[Path],
    dm: Any,
    split: str,
    signature: dict[str, Any],
    fp: dict[str, Any],
    images: list[str],
    device: torch.device,
    modules: dict[int, torch.nn.Module],
    say: Callable[[str], None],
) -> torch.Tensor:
    """Predict ``split`` with the members that have no cached probabilities (filling ``probs`` in place),
    cache them, and return the targets."""
    todo = [i for i, p in enumerate(probs) if p is None]
    for i in todo:
        if i not in modules:  # members are run checkpoints (never ensemble files: refused when named)
            modules[i] = load_run_model(members[i].checkpoint)[0].to(device).eval()
    say(f"predicting the {split} split ({len(images)} images) with {len(todo)} member(s): "
        + ", ".join(members[i].name for i in todo))
    new, y = _run_inference([modules[i] for i in todo], dm.split_dataloader(split), device,
                            TaskKind(signature["task"]).per_pixel, [members[i].name for i in todo])
    if targets is not None and not torch.equal(targets, y):
        raise DataError(f"the {split} targets differ between cached and new predictions; delete the cache "
                        f"files {[str(f) for f in files]}")
    for i, p in zip(todo, new, strict=True):
        probs[i] = p
        _write_cache(files[i], members[i], p, y, split, signature, fp, images)
    return y


def _write_cache(path: Path, member: Member, probs: torch.Tensor, targets: torch.Tensor, split: str,
                 signature: dict[str, Any], fp: dict[str, Any], images: list[str]) -> None:
    meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "checkpoint": str(member.checkpoint),
            "checkpoint_sha256": member.sha256, "split": split, "task": signature["task"],
            "classes": signature["classes"], "data": fp, "images": images}
    small = torch.uint8 if len(signature["classes"]) < 256 else torch.int64
    try:
        save_tensors(path, {"probs": probs, "targets": targets.to(small)}, meta)
    except OSError as exc:
        raise ConfigError(f"cannot write the prediction cache {path} ({exc.strerror}); name a writable folder "
                          "with --cache-dir") from None


# --------------------------------------------------------------------------------------------- sanity of the val split
MIN_VAL_IMAGES = 30
MIN_CLASS_EXAMPLES = 5


def split_size_warnings(pred: SplitPredictions, classes: Sequence[str], task: str) -> list[str]:
    """Why weights chosen on this split may not be trustworthy (empty list when it looks large enough).

    "Too small": fewer than MIN_VAL_IMAGES images, or a class with fewer than MIN_CLASS_EXAMPLES examples
    (classification: images of that label; segmentation: images in which that foreground class occurs).
    """
    notes = []
    n_pat = len(set(pred.patients))
    if pred.n < MIN_VAL_IMAGES:
        notes.append(
            f"the {pred.split} split has {pred.n} images from {n_pat} patient(s), fewer than {MIN_VAL_IMAGES}"
        )
    present = class_counts(pred, len(classes), task)
    kind = TaskKind(task)
    what, first = ("images showing" if kind.per_pixel else "examples of"), kind.first_reported_class
    few = [
        f"{classes[c]} ({present[c]})" for c in range(first, len(classes)) if present[c] < MIN_CLASS_EXAMPLES
    ]
    if few:
        notes.append(
            f"fewer than {MIN_CLASS_EXAMPLES} {what} a class in the {pred.split} split: " + ", ".join(few)
        )
    return notes


def class_counts(pred: SplitPredictions, n_classes: int, task: str) -> list[int]:
    """Examples per class (classification) or images where each class occurs (segmentation)."""
    y = pred.targets
    if TaskKind(task).per_pixel:
        return [int((y == c).flatten(1).any(1).sum()) for c in range(n_classes)]
    return [int((y == c).sum()) for c in range(n_classes)]

