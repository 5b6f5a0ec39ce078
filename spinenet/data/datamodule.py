"""Lightning DataModules for segmentation and classification, sharing one base.

The base reads the manifest (``spinenet.data.manifest``), checks the data before any training starts,
splits patients (``spinenet.data.splits``) and writes the split into the run folder so a run can be
repeated exactly. Subclasses only say what one sample is.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from spinenet.contract import InputSpec
from spinenet.data.io import read_image, read_mask
from spinenet.data.manifest import DatasetSpec, check_dataset, load_manifest, raise_if_bad
from spinenet.data.phantom import generate_on_first_use
from spinenet.data.splits import (
    check_splits,
    load_folds,
    load_splits,
    patient_labels,
    save_splits,
    split_patients,
)
from spinenet.data.transforms import build_transforms, content_box
from spinenet.errors import ConfigError, DataError
from spinenet.roi.phantom import phantom_crops_on_first_use
from spinenet.utils.callbacks import seed_everything_for_epoch

log = logging.getLogger(__name__)

# model.level_prior (and an ensemble of members with one) without levels in the data
MISSING_LEVELS_MESSAGE = (
    "model.level_prior needs each sample's disc level: set data.dataset.level_col to the manifest column "
    "that names it"
)

SPLITS = ("train", "val", "test")
# per-sample entries of different sizes: collated into lists, not stacked
LIST_KEYS = ("native_mask",)
CHECK_LEVELS = ("deep", "fast", "off")
# data settings in the run config that other code reads, not the data module: crop_recipe (how spinenet diagnose
# crops for a classifier trained on these crops), flip_swap (classification only; spinenet eval nulls it for all)
READ_ELSEWHERE = ("crop_recipe", "flip_swap")


def _to_dict(obj: Any) -> Any:
    """OmegaConf containers to plain Python (Hydra passes DictConfig/ListConfig)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, DictConfig | ListConfig):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return obj


class _ImageSet(Dataset):
    """Rows of a manifest; reads one image (and its mask) per item and prepares it as the model's contract
    says (:meth:`spinenet.contract.InputSpec.prepare`, the one preprocessing)."""

    def __init__(
        self,
        rows: pd.DataFrame,
        spec: DatasetSpec,
        input_spec: InputSpec,
        transform,
        with_mask: bool,
        label_swap_on_flip: Mapping[int, int] | None = None,
        native: bool = False,
    ):
        self.rows = rows.reset_index(drop=True)
        # transform: a training pipeline with augmentation; None: the contract's evaluation transform
        self.spec, self.input_spec, self.transform = spec, input_spec, transform
        self.seed, self.epoch = 0, 0  # set by the DataModule / EpochShuffleSampler
        self.with_mask = with_mask
        self.label_swap_on_flip = label_swap_on_flip
        # evaluation: each sample then also carries its mask at the image's own size and where the image lies
        # in the model-size array, for native-resolution metrics
        self.native = native

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows.iloc[index]
        if self.transform is not None:
            # albumentations keeps its own RNG: seed it from (seed, epoch, image), so augmentation is
            # reproducible whatever ran before (a resumed run replays exactly) and differs between epochs
            self.transform.set_random_seed((self.seed * 1_000_003 + self.epoch * 100_003 + index) % 2**31)
        image = read_image(row["image_path"], channels=self.input_spec.in_channels)
        sample: dict[str, Any] = {"index": index}
        if self.with_mask:
            mask = read_mask(row["mask_path"], self.spec.mask_values)
            img, out = self.input_spec.prepare(image, mask, self.transform)
            sample["mask"] = torch.as_tensor(np.asarray(out["mask"]), dtype=torch.long)
            if self.native:
                small = np.uint8 if len(self.spec.mask_values) <= 256 else np.int64
                sample["native_mask"] = torch.from_numpy(mask.astype(small))
                sample["native_box"] = torch.tensor(
                    content_box(mask.shape, self.input_spec.image_size, self.input_spec.resize_mode),
                    dtype=torch.long)
        else:
            img, out = self.input_spec.prepare(image, None, self.transform)
        sample["image"] = torch.from_numpy(img)
        if "label_idx" in self.rows.columns:
            label = int(row["label_idx"])
            if self.label_swap_on_flip and _was_flipped(out):
                label = self.label_swap_on_flip.get(label, label)
            sample["label"] = torch.tensor(label, dtype=torch.long)
        if self.spec.level_col:  # the disc level, a covariate for model.level_prior ("" when unknown)
            level = row[self.spec.level_col]
            sample["level"] = "" if pd.isna(level) else str(level)
        return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate``, except that :data:`LIST_KEYS` (one size per image) stay lists of tensors."""
    lists = [k for k in LIST_KEYS if k in samples[0]]
    if not lists:
        return default_collate(samples)
    batch = default_collate([{k: v for k, v in s.items() if k not in lists} for s in samples])
    batch.update({k: [s[k] for s in samples] for k in lists})
    return batch


def _was_flipped(out: Mapping) -> bool:
    replay = out.get("replay")
    if not replay:
        return False
    return any(
        t["__class_fullname__"].endswith("HorizontalFlip") and t.get("applied") for t in replay["transforms"]
    )


class EpochShuffleSampler(Sampler[int]):
    """Training order from (seed, epoch) only.

    Lightning calls ``set_epoch`` before every epoch (also the first one after a resume), so this is where the
    epoch's RNGs are seeded; the ``EpochSeed`` callback seeds them again (per rank) in ``on_train_epoch_start``.
    ``generator`` is the DataLoader's own generator (see ``SpineDataModule._loader``), reseeded here too.
    Under DDP Lightning wraps this sampler in a ``DistributedSamplerWrapper``, which forwards ``set_epoch``.
    """

    def __init__(self, dataset: _ImageSet, seed: int = 0, generator: torch.Generator | None = None):
        self.dataset, self.seed, self.epoch, self.generator = dataset, int(seed), 0, generator

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self.dataset.epoch = int(epoch)
        seed_everything_for_epoch(self.seed, epoch)
        if self.generator is not None:
            self.generator.manual_seed(_epoch_seed(self.seed, epoch))

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(len(self.dataset), generator=generator).tolist())


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % 2**63


class SpineDataModule(L.LightningDataModule):
    """Shared base: manifest, checks, patient-level split, loaders. ``batch_size`` is global (all devices)."""

    with_mask = False

    def __init__(
        self,
        dataset: Mapping,
        image_size: Sequence[int] = (128, 128),
        batch_size: int = 8,
        num_workers: int = 0,
        in_channels: int = 1,
        split: Mapping | None = None,
        augment: Mapping | None = None,
        clahe: Mapping | None = None,
        resize_mode: str = "resize",
        synthesize: Mapping | None = None,
        output_dir: str | None = None,
        check: str = "deep",
        pin_memory: bool = False,
        seed: int = 0,
        extra_train: Sequence[Mapping] | None = None,
        **read_elsewhere: Any,
    ):
        super().__init__()
        self._refuse_unknown_settings(read_elsewhere)
        self.spec = DatasetSpec.from_config(_to_dict(dataset))
        self.extra_specs = self._extra_specs(_to_dict(dataset), _to_dict(extra_train))
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        # what the model trained here will expect (checked now, not in a worker process): size, channels,
        # resize mode and CLAHE are read from here only
        self.input_spec = InputSpec(tuple(_to_dict(image_size)), int(in_channels), str(resize_mode),
                                    _to_dict(clahe) or None)
        self.split_cfg = {"ratios": (0.8, 0.1, 0.1), "seed": 0, "folds": None, "fold": 0, "fold_split": None,
                          "file": None, "folds_file": None}
        self.split_cfg.update(_to_dict(split) or {})
        self.augment = _to_dict(augment) or {}
        self.synthesize = _to_dict(synthesize) or None
        self.output_dir = Path(output_dir) if output_dir else None
        if check not in CHECK_LEVELS:
            raise ConfigError(f"extras.data_check must be one of {list(CHECK_LEVELS)}, got {check!r}")
        self.check, self.pin_memory, self.seed = check, pin_memory, int(seed)
        self.frame: pd.DataFrame | None = None
        self.splits: dict[str, list[str]] | None = None
        self.datasets: dict[str, Dataset] = {}

    def _refuse_unknown_settings(self, settings: Mapping[str, Any]) -> None:
        """A misspelt ``data.<key>`` (Hydra passes every key of the data config here) is an error naming it."""
        unknown = sorted(set(settings) - set(READ_ELSEWHERE))
        if unknown:
            valid = {name for cls in type(self).__mro__ if "__init__" in vars(cls)
                     for name, p in inspect.signature(cls.__init__).parameters.items()
                     if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
            raise ConfigError(f"data: unknown setting(s) {', '.join(unknown)} for {type(self).__name__}; valid: "
                              f"{', '.join(sorted(valid | set(READ_ELSEWHERE)))}")

    @staticmethod
    def _extra_specs(dataset: Mapping, extra: Sequence[Mapping] | None) -> list[DatasetSpec]:
        """``data.extra_train``: more data sets for the training split only, each a ``dataset`` block whose
        settings default to ``data.dataset``'s (usually just ``root`` and ``manifest``)."""
        if extra is None:
            return []
        if not isinstance(extra, list | tuple):
            raise ConfigError(
                f"data.extra_train must be a list of dataset blocks (each with at least a root), got {extra!r}"
            )
        specs = []
        for i, block in enumerate(extra):
            if not isinstance(block, Mapping) or not block.get("root"):
                raise ConfigError(f"data.extra_train[{i}] must be a dataset block with a root, got {block!r}")
            specs.append(DatasetSpec.from_config({**dataset, **block}))
        return specs

    # -- data preparation (rank 0 only in Lightning) --------------------------------------------------
    def prepare_data(self) -> None:
        root = Path(self.spec.root)
        if (root / self.spec.manifest).is_file():
            return
        if self.synthesize is None:
            raise DataError(f"data set not found: {root / self.spec.manifest} (data.dataset.root={root})")
        synth = dict(self.synthesize)
        crops = synth.pop("crops", None)
        if crops is None:
            generate_on_first_use(root, synth, self.spec.manifest)
        else:  # a classification set: the phantom's discs, cropped with its masks
            phantom_crops_on_first_use(root, synth, crops, self.spec.manifest)

    # -- setup: manifest, checks, split ---------------------------------------------------------------
    def load_frame(self) -> pd.DataFrame:
        if self.frame is None:
            self.prepare_data()  # harmless when the data exist; needed when setup() is called without a Trainer
            frame = load_manifest(self.spec)
            if self.check != "off":
                raise_if_bad(
                    check_dataset(self.spec, deep=self.check == "deep"), f"data set {self.spec.root}"
                )
            self.frame = frame
        return self.frame

    def make_splits(self) -> dict[str, list[str]]:
        frame = self.load_frame()
        pcol = self.spec.patient_col
        if self.split_cfg.get("file"):
            splits = load_splits(self.split_cfg["file"])  # checked against the manifest below
        else:
            patients = list(dict.fromkeys(frame[pcol]))
            labels = None
            if "label_idx" in frame.columns:
                # a patient's label for stratification: its most frequent (ties: the more severe) label, or
                # with split.stratify=most_severe the most severe it has
                per_patient = patient_labels(frame[pcol], frame["label_idx"], range(len(self.label_names)),
                                             rule=str(self.split_cfg.get("stratify", "majority")))
                labels = [per_patient[p] for p in patients]
            assigned, fold_split = self._assigned_folds()
            splits = split_patients(
                patients,
                labels,
                ratios=tuple(self.split_cfg["ratios"]),
                seed=int(self.split_cfg["seed"]),
                folds=self.split_cfg.get("folds"),
                fold=int(self.split_cfg.get("fold", 0)),
                fold_split=fold_split,
                assigned_folds=assigned,
            )
        check_splits(splits, frame[pcol])
        return splits

    @functools.cached_property
    def fold_assignment(self) -> dict[str, int] | None:
        """The folds file's patient -> fold (``data.split.folds_file``, read once), or None without one."""
        folds_file = self.split_cfg.get("folds_file")
        if not folds_file:
            return None
        try:
            return load_folds(folds_file)
        except DataError as e:
            raise DataError(f"data.split.folds_file: {e}") from e

    def _assigned_folds(self) -> tuple[dict[str, int] | None, str]:
        """The folds file's patient -> fold (or None) and which split fold k is: with a folds file always
        the test split, so the same patients are held out in every data set that uses the file."""
        fold_split, folds_file = self.split_cfg.get("fold_split"), self.split_cfg.get("folds_file")
        if not folds_file:
            return None, str(fold_split or "val")
        if fold_split not in (None, "test"):
            raise ConfigError(f"data.split.folds_file={folds_file} makes fold k the test split; "
                              f"data.split.fold_split={fold_split!r} contradicts it (leave it null or test)")
        return self.fold_assignment, "test"

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        frame = self.load_frame()
        self.splits = self.make_splits()
        if self.output_dir is not None and (self.trainer is None or self.trainer.is_global_zero):
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_splits(self.splits, self.output_dir / "splits.json")
        extra = self.load_extra_train(frame)
        for name in SPLITS:
            rows = frame[frame[self.spec.patient_col].isin(set(self.splits[name]))]
            if name == "train" and extra is not None:
                rows = pd.concat([rows, extra], ignore_index=True)
            # validation (each epoch) stays at model resolution; the test split is also scored at each
            # image's own size
            self.datasets[name] = self.make_dataset(rows, train=name == "train", native=name == "test")
        self.datasets["all"] = self.make_dataset(frame, train=False, native=True)  # data.dataset only, as split
        log.info(
            "split by patient: %s",
            {k: f"{len(v)} patients / {len(self.datasets[k])} images" for k, v in self.splits.items()},
        )
        if extra is not None:
            log.info("data.extra_train: %d images of %d patients added to the training split",
                     len(extra), extra[self.spec.patient_col].nunique())

    def load_extra_train(self, frame: pd.DataFrame) -> pd.DataFrame | None:
        """The rows of ``data.extra_train``, checked like the main data set. A patient of the validation or
        test split may not appear in them (that would leak the patient into training)."""
        if not self.extra_specs:
            return None
        held_out = {str(p): name for name in ("val", "test") for p in self.splits[name]}
        parts = []
        for i, spec in enumerate(self.extra_specs):
            if spec.label_names is None and frame.attrs.get("label_names") is not None:
                spec.label_names = list(frame.attrs["label_names"])  # the main set's label order
            rows = load_manifest(spec)
            if self.check != "off":
                raise_if_bad(check_dataset(spec, deep=self.check == "deep"), f"data.extra_train[{i}]")
            rows = self._without_held_out_folds(rows, spec.patient_col, f"data.extra_train[{i}]")
            leaked = sorted({str(p) for p in rows[spec.patient_col]} & set(held_out))
            if leaked:
                shown = ", ".join(f"{p} ({held_out[p]})" for p in leaked[:10])
                raise DataError(
                    f"data.extra_train[{i}] ({spec.manifest_path}) has {len(leaked)} patient(s) of the "
                    f"validation or test split: {shown}. Extra training data must come from other patients "
                    f"(or from training-split patients only)"
                )
            if spec.patient_col != self.spec.patient_col:
                rows = rows.rename(columns={spec.patient_col: self.spec.patient_col})
            if spec.level_col and self.spec.level_col and spec.level_col != self.spec.level_col:
                rows = rows.rename(columns={spec.level_col: self.spec.level_col})
            parts.append(rows)
        return pd.concat(parts, ignore_index=True)

    def _without_held_out_folds(self, rows: pd.DataFrame, patient_col: str, source: str) -> pd.DataFrame:
        """With a folds file, the rows of patients in the held-out fold are dropped: the file holds out fold k's
        patients in every data set, also those only this extra data has (e.g. graded crops of slices the
        end-to-end evaluation of fold k diagnoses)."""
        fold_of = self.fold_assignment
        if fold_of is None:
            return rows
        fold = int(self.split_cfg.get("fold", 0))
        held = rows[patient_col].astype(str).isin({p for p, f in fold_of.items() if f == fold})
        if held.any():
            log.info("%s: %d row(s) of %d patient(s) in held-out fold %d of %s left out", source, int(held.sum()),
                     rows.loc[held, patient_col].nunique(), fold, self.split_cfg["folds_file"])
        return rows[~held]

    def training_transform(self):
        """The training split's pipeline: the input spec's geometry plus ``augment`` (evaluation splits use
        the spec's own transform)."""
        spec = self.input_spec
        return build_transforms(spec.image_size, True, self.augment, spec.resize_mode)

    def make_dataset(self, rows: pd.DataFrame, train: bool, native: bool = False) -> Dataset:
        """``native``: samples also carry what native-resolution metrics need (masks only, never training)."""
        return _ImageSet(rows, self.spec, self.input_spec, self.training_transform() if train else None,
                         self.with_mask,
                         native=native and not train and self.with_mask)

    # -- loaders --------------------------------------------------------------------------------------
    def per_device_batch_size(self) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is the global batch and must divide evenly "
                f"across {world} processes (devices x nodes)"
            )
        return self.batch_size // world

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if name not in self.datasets:
            self.setup()
        dataset = self.datasets[name]
        if len(dataset) == 0:
            raise DataError(f"the {name.removesuffix('_eval')} split of {self.spec.root} is empty")
        dataset.seed = self.seed
        # Every iterator draws its workers' base seed when it is created: from this generator, never from the
        # global torch RNG. Lightning creates the training iterator after EpochSeed's reseed in a straight run
        # but before it on the first epoch after a resume (FitLoop.setup_data); a draw from the global RNG
        # there shifted that epoch's dropout masks, and a resumed run no longer matched an uninterrupted one.
        epoch = self._starting_epoch() if shuffle else 0
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        sampler = None
        if shuffle:
            # the epoch is set now too: on a resume the iterator (and its worker processes, which copy the
            # data set) is made before Lightning calls set_epoch
            sampler = EpochShuffleSampler(dataset, self.seed, generator)
            sampler.epoch = dataset.epoch = epoch
        return DataLoader(
            dataset,
            batch_size=self.per_device_batch_size(),
            sampler=sampler,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate,
            # workers must be re-created each epoch to see the dataset's new epoch (augmentation seeds)
            persistent_workers=False,
            # a last training batch of one image breaks batch norm ("Expected more than 1 value per channel"),
            # which some split seeds produce (SPIDER bulging, seed 4): drop that single image per epoch
            drop_last=shuffle and len(dataset) % self.per_device_batch_size() == 1,
        )

    def _starting_epoch(self) -> int:
        """The epoch the trainer is about to run (on a resume: the first one after the checkpoint)."""
        loop = getattr(self.trainer, "fit_loop", None) if self.trainer is not None else None
        try:
            return int(loop.epoch_progress.current.processed)  # what Lightning passes to set_epoch
        except AttributeError:
            return 0

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self._split_turned_off("val"):
            return []  # split.ratios turned validation off (release=all_patients): Lightning skips it
        return self._loader("val", shuffle=False)

    def _split_turned_off(self, name: str) -> bool:
        ratios = self.split_cfg.get("ratios") or (0.8, 0.1, 0.1)
        return (not self.split_cfg.get("file") and not self.split_cfg.get("folds")
                and float(ratios[SPLITS.index(name)]) == 0.0)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def split_dataloader(self, name: str) -> DataLoader:
        """Any split by name (train, val, test, all) without augmentation, e.g. for ``spinenet eval``."""
        if name not in (*SPLITS, "all"):
            raise ConfigError(f"split must be one of {[*SPLITS, 'all']}, got {name!r}")
        self.setup()
        if name in ("train", "val"):  # without augmentation, and scored at native resolution as the test split
            self.datasets[f"{name}_eval"] = self.make_dataset(self.datasets[name].rows, train=False, native=True)
            name = f"{name}_eval"
        return self._loader(name, shuffle=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names or [])

    @property
    def label_names(self) -> list[str]:
        return list(self.spec.label_names or [])


class SegmentationDataModule(SpineDataModule):
    """Images with masks; masks are mapped from gray values to class ids by ``dataset.mask_values``."""

    with_mask = True

    def __init__(self, dataset: Mapping, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        if not self.spec.mask_col:
            raise ConfigError("data.dataset.mask_col must name the mask column for segmentation")
        if not self.spec.mask_values or not self.spec.class_names:
            raise ConfigError(
                "data.dataset.mask_values and data.dataset.class_names are required for segmentation"
            )
        if len(self.spec.mask_values) != len(self.spec.class_names):
            raise ConfigError(
                f"data.dataset.mask_values ({len(self.spec.mask_values)}) and class_names "
                f"({len(self.spec.class_names)}) must have the same length"
            )


class ClassificationDataModule(SpineDataModule):
    """Images with one label each. A horizontal flip can swap labels (axial left <-> right) via ``flip_swap``."""

    def __init__(self, dataset: Mapping, flip_swap: Mapping[str, str] | None = None, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        if not self.spec.label_col or not self.spec.label_names:
            raise ConfigError(
                "data.dataset.label_col and data.dataset.label_names are required for classification"
            )
        names = self.spec.label_names
        flip_swap = _to_dict(flip_swap) or {}
        bad = [k for pair in flip_swap.items() for k in pair if k not in names]
        if bad:
            raise ConfigError(f"data.flip_swap names unknown labels {bad}; labels are {names}")
        self.label_swap = {names.index(a): names.index(b) for a, b in flip_swap.items()}

    def make_dataset(self, rows: pd.DataFrame, train: bool, native: bool = False) -> Dataset:
        transform = self.training_transform() if train else None
        if train and self.label_swap:
            # replay tells whether the flip was applied, so the label can follow the image
            import albumentations as A

            transform = A.ReplayCompose(transform.transforms)
        return _ImageSet(
            rows,
            self.spec,
            self.input_spec,
            transform,
            with_mask=False,
            label_swap_on_flip=self.label_swap if train else None,
        )

    def train_labels(self) -> list[int]:
        self.setup()
        return [int(v) for v in self.datasets["train"].rows["label_idx"]]

    def train_levels(self) -> list[str]:
        """The training split's disc levels (data.dataset.level_col; "" where unknown), in train_labels order."""
        self.setup()
        if not self.spec.level_col:
            raise ConfigError(MISSING_LEVELS_MESSAGE)
        return ["" if pd.isna(v) else str(v) for v in self.datasets["train"].rows[self.spec.level_col]]
