"""The model contract: what a trained model expects and what it outputs, written down once.

A :class:`ModelContract` is a typed, validated, versioned record of one trained model's interface:

- its task kind (:class:`TaskKind`) and output classes (mask classes or labels), and for classifiers its heads;
- its input (:class:`InputSpec`): image size, channels, resize mode, CLAHE; :meth:`InputSpec.prepare` and
  :meth:`ModelContract.preprocess` are *the* preprocessing, used by training's evaluation transforms, eval,
  roi, diagnose, ensemble and export alike;
- for classifiers, how its training crops were cut (:class:`CropRecipe`) and its per-level logit offsets;
- the data schema it was trained on (:class:`DataSchema`: manifest columns, mask gray values) and a
  fingerprint of the training data (manifest SHA-256, split sizes; no patient ids).

Every checkpoint (key :data:`CONTRACT_KEY`), ensemble file and export sidecar holds ``contract.to_dict()``;
:func:`spinenet.loading.load_model` returns it beside the model. A checkpoint written before contracts existed
(no :data:`CONTRACT_KEY`) gets its contract derived from the run config it holds (:meth:`from_run_config`),
which is what every reader did before; a contract of a newer version is refused with a message saying so.

This module sits at the bottom of the import graph: it imports nothing of spinenet but :mod:`spinenet.errors`
(and, inside :class:`InputSpec`, :mod:`spinenet.data.transforms`, which imports only that).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from spinenet.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CONTRACT_VERSION = 1
CONTRACT_KEY = "contract"  # where a checkpoint, an ensemble file and an export sidecar hold the contract
RESIZE_MODES = ("resize", "pad")
HEAD_KINDS = ("binary", "multiclass", "ordinal")
DEFAULT_MARGIN = 0.10
DEFAULT_CROP_CLAHE: dict[str, Any] = {"clip": 2.0, "tiles": [4, 4]}


class TaskKind(StrEnum):
    """What a model predicts; behaviour that differs by kind is asked of the kind, not of a string."""

    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"

    @classmethod
    def parse(cls, value: Any, where: str = "task") -> TaskKind:
        try:
            return cls(str(value))
        except ValueError:
            raise ConfigError(f"{where}: unknown task {value!r}; valid: {[k.value for k in cls]}") from None

    @classmethod
    def of_config(cls, cfg: Any) -> TaskKind:
        """The task kind a run config trains: its ``task_kind`` (``task`` in run configs saved before the
        rename; segmentation when neither is there, as in the oldest runs)."""
        if cfg is None:
            return cls.SEGMENTATION
        kind, old = cfg.get("task_kind"), cfg.get("task")
        if kind is not None and old is not None and str(old) != str(kind):
            raise ConfigError(f"task={old} and task_kind={kind}: the setting is task_kind now (task_name names the "
                              "run); rename task in your config")
        return cls.parse(kind if kind is not None else old if old is not None else "segmentation", "task_kind")

    @property
    def names_key(self) -> str:
        """The data set setting that names the outputs: ``class_names`` (mask classes) or ``label_names``."""
        return "class_names" if self is TaskKind.SEGMENTATION else "label_names"

    @property
    def per_pixel(self) -> bool:
        """Outputs per pixel (N, C, H, W) rather than per image (N, C)."""
        return self is TaskKind.SEGMENTATION

    @property
    def first_reported_class(self) -> int:
        """Index of the first class reports show: segmentation leaves out the background."""
        return 1 if self is TaskKind.SEGMENTATION else 0


# ------------------------------------------------------------------------------------------------ settings
def margin_pair(margin: float | Sequence[float]) -> tuple[float, float]:
    """``margin`` as (width, height) growth: one number for both, or ``[width, height]``; checked >= 0."""
    if isinstance(margin, int | float):
        pair = (float(margin), float(margin))
    else:
        values = [float(v) for v in margin]
        if len(values) != 2:
            raise ConfigError(f"roi.margin must be a number or [width, height], got {list(margin)!r}")
        pair = (values[0], values[1])
    if min(pair) < 0:
        raise ConfigError(f"roi.margin must be >= 0, got {margin}")
    return pair


def margin_setting(margin: float | Sequence[float]) -> float | list[float]:
    """A checked margin as it is stored (configs, summary.json): one number, or ``[width, height]`` when the
    two differ."""
    mx, my = margin_pair(margin)
    return mx if mx == my else [mx, my]


def clahe_setting(clahe: Mapping[str, Any] | None, where: str) -> dict[str, Any] | None:
    """A checked CLAHE setting ``{clip, tiles: [columns, rows]}`` (None: no enhancement)."""
    if not clahe:
        return None
    if not isinstance(clahe, Mapping):
        raise ConfigError(f"{where}: expected {{clip, tiles}} or null, got {clahe!r}")
    unknown = sorted(set(clahe) - {"clip", "tiles"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid: clip, tiles")
    tiles = clahe.get("tiles", (4, 4))
    tiles = [int(tiles), int(tiles)] if isinstance(tiles, int | float) else [int(v) for v in tiles]
    if len(tiles) != 2 or min(tiles) < 1:
        raise ConfigError(f"{where}.tiles: expected [columns, rows] >= 1, got {clahe.get('tiles')!r}")
    clip = float(clahe.get("clip", 2.0))
    if not clip > 0:
        raise ConfigError(f"{where}.clip: expected a positive number, got {clahe.get('clip')!r}")
    return {"clip": clip, "tiles": tiles}


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain Python (run configs arrive as either)."""
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf  # lazy: only run configs are OmegaConf containers

        return OmegaConf.to_container(value, resolve=True)
    return value


def _size(value: Any, where: str) -> tuple[int, int]:
    try:
        size = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected [height, width], got {value!r}") from None
    if len(size) != 2 or min(size) < 8:
        raise ConfigError(f"{where}: expected [height, width] with both >= 8, got {list(size)}")
    return size  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------- input
@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the tensor a model takes: channels, CLAHE on the whole image, then resizing."""

    image_size: tuple[int, int]
    in_channels: int = 1
    resize_mode: str = "resize"
    clahe: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", _size(self.image_size, "data.image_size"))
        if self.in_channels not in (1, 3):
            raise ConfigError(f"data.in_channels must be 1 or 3, got {self.in_channels!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"data.resize_mode must be one of {list(RESIZE_MODES)}, got {self.resize_mode!r}")
        object.__setattr__(self, "clahe", clahe_setting(self.clahe, "data.clahe"))

    def __hash__(self) -> int:  # the dict field is not hashable; its JSON is
        return hash(json.dumps(asdict(self), sort_keys=True))

    @classmethod
    def from_data_config(cls, data: Mapping[str, Any]) -> InputSpec:
        data = _plain(data)
        return cls(image_size=tuple(data["image_size"]), in_channels=int(data.get("in_channels", 1)),
                   resize_mode=str(data.get("resize_mode", "resize")), clahe=data.get("clahe") or None)

    @cached_property
    def eval_transform(self) -> Any:
        from spinenet.data.transforms import build_transforms  # lazy: albumentations is slow to import

        return build_transforms(list(self.image_size), train=False, resize_mode=self.resize_mode)

    def prepare(
        self, image: np.ndarray, mask: np.ndarray | None = None, transform: Any = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """One image (float in [0, 1], gray or 3-channel) as the model takes it: ``(C, H, W)`` float32 and the
        transform's output (its ``mask`` when one was given). ``transform``: a training pipeline with
        augmentation (its geometry must be this spec's); default the evaluation transform."""
        from spinenet.data.transforms import apply_clahe, to_channels  # lazy: albumentations

        img = to_channels(np.asarray(image, np.float32), self.in_channels)
        if self.clahe:
            img = apply_clahe(img, **self.clahe)
        transform = transform if transform is not None else self.eval_transform
        out = transform(image=img) if mask is None else transform(image=img, mask=mask)
        x = np.asarray(out["image"], np.float32)
        return np.ascontiguousarray(x[None] if x.ndim == 2 else x.transpose(2, 0, 1)), out

    def region(self, size_hw: Sequence[int]) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``: where an image of ``size_hw`` lies in the model input (``pad`` pads)."""
        from spinenet.data.transforms import content_box  # lazy: albumentations

        top, left, h, w = content_box(size_hw, self.image_size, self.resize_mode)
        return top, top + h, left, left + w

    def batch(self, images: Sequence[np.ndarray]) -> tuple[Any, list[tuple[int, int, int, int]]]:
        """Images -> a float32 batch ``(B, C, H, W)`` and, per image, its :meth:`region` in the batch."""
        import torch  # lazy: this module is read without torch (configs, sidecars)

        arrays = [self.prepare(image)[0] for image in images]
        regions = [self.region(np.asarray(image).shape[:2]) for image in images]
        return torch.from_numpy(np.stack(arrays)), regions


def masks_from_logits(
    logits: Any, images: Sequence[np.ndarray], regions: Sequence[tuple[int, int, int, int]]
) -> list[np.ndarray]:
    """A segmenter's output back on its inputs: the arg-max class mask of each image at its own size, from
    the logits ``(B, C, H, W)`` of its ``region`` of the model input (:meth:`InputSpec.batch`; padding cut
    off), upsampled bilinearly."""
    import torch.nn.functional as F  # lazy: this module is read without torch (configs, sidecars)

    masks = []
    for img, lg, (y0, y1, x0, x1) in zip(images, logits, regions, strict=True):
        h, w = np.asarray(img).shape[:2]
        lg = lg[None, :, y0:y1, x0:x1]
        if lg.shape[-2:] != (h, w):
            lg = F.interpolate(lg, size=(h, w), mode="bilinear", align_corners=False)
        masks.append(_class_argmax(lg[0].float().cpu().numpy()))
    return masks


def _class_argmax(scores: np.ndarray) -> np.ndarray:
    """``np.argmax(scores, axis=0)`` (int64; ties and NaN alike) of ``(C, H, W)`` float32 scores, as a running
    maximum in OpenCV: 0.05 ms per 4x256x256 where NumPy's strided arg-max takes 1 ms (and torch's 12)."""
    import cv2  # lazy: start-up (this module is read without OpenCV: configs, sidecars)

    if scores.ndim != 3 or scores.shape[0] > 255 or scores.dtype != np.float32 or np.isnan(scores).any():
        return np.argmax(scores, axis=0)
    best = np.ascontiguousarray(scores[0])
    ids = np.zeros(best.shape, np.uint8)
    for c in range(1, scores.shape[0]):
        s = np.ascontiguousarray(scores[c])
        greater = cv2.compare(s, best, cv2.CMP_GT)  # 255 where class c beats every class before it
        # class ids grow with c, so the latest class to beat the running maximum is the largest id that did
        ids = cv2.max(ids, cv2.bitwise_and(greater, c))
        best = cv2.max(best, s)
    return ids.astype(np.int64)


# ------------------------------------------------------------------------------------------------- crops
@dataclass(frozen=True)
class CropRecipe:
    """How a classifier's training crops were cut (``spinenet roi`` / ``data.synthesize.crops``)."""

    size: tuple[int, int] | None  # None: the crop as cut, resized later by the classifier's InputSpec
    margin: float | tuple[float, float] = DEFAULT_MARGIN
    clahe: dict[str, Any] | None = field(default_factory=lambda: dict(DEFAULT_CROP_CLAHE))
    square: bool = False
    levels: tuple[str, ...] | None = None
    source: str = "default"  # where the recipe was found: data.synthesize.crops, data.crop_recipe, summary.json

    def __post_init__(self) -> None:
        if self.size is not None:
            object.__setattr__(self, "size", _size(self.size, "crop.size"))
        margin = margin_setting(self.margin)
        object.__setattr__(self, "margin", tuple(margin) if isinstance(margin, list) else margin)
        object.__setattr__(self, "clahe", clahe_setting(self.clahe, "crop.clahe"))
        if self.levels is not None:
            object.__setattr__(self, "levels", tuple(str(v) for v in self.levels))

    def __hash__(self) -> int:
        return hash(json.dumps(asdict(self), sort_keys=True, default=list))


def _crop_recipe(data: Mapping[str, Any], image_size: Sequence[int]) -> CropRecipe:
    """A classifier's crop recipe from its run's data config: the phantom's crop config, else
    ``data.crop_recipe`` (crops made by others), else the crop set's ``summary.json`` (written by ``spinenet
    roi``), else the Šušteršič defaults at the model's input size."""
    synth = data.get("synthesize") or {}
    crops = synth.get("crops") if isinstance(synth, Mapping) else None
    if crops:
        size = crops.get("size", list(image_size))
        return CropRecipe(size=(size, size) if isinstance(size, int) else tuple(size),
                          margin=crops.get("margin", DEFAULT_MARGIN), clahe=crops.get("clahe"),
                          square=bool(crops.get("square", False)), levels=crops.get("levels") or None,
                          source="data.synthesize.crops")
    recipe = data.get("crop_recipe")
    if recipe:
        unknown = sorted(set(recipe) - {"margin", "clahe", "square", "levels", "note"})
        if unknown:
            raise ConfigError(f"data.crop_recipe: unknown key(s) {unknown}; valid: margin, clahe, square, levels")
        return CropRecipe(size=None, margin=recipe.get("margin", DEFAULT_MARGIN), clahe=recipe.get("clahe"),
                          square=bool(recipe.get("square", False)), levels=recipe.get("levels") or None,
                          source="data.crop_recipe")
    root = (data.get("dataset") or {}).get("root")
    summary = Path(str(root)) / "summary.json" if root else None
    if summary is not None and summary.is_file():
        try:
            s = json.loads(summary.read_text())
        except (OSError, ValueError):
            s = {}
        if isinstance(s, dict) and "size" in s and "margin" in s:
            return CropRecipe(size=tuple(s["size"]), margin=s["margin"], clahe=s.get("clahe"),
                              square=bool(s.get("square", False)), levels=s.get("levels") or None,
                              source=str(summary))
    log.warning("classifier crop settings not recorded; using margin 0.1, CLAHE 2.0/4x4 at %s", list(image_size))
    return CropRecipe(size=tuple(image_size))


# ------------------------------------------------------------------------------------------ heads, schema
@dataclass(frozen=True)
class Head:
    """One output of a classifier: a finding, its kind and class names (index order)."""

    name: str
    kind: str
    classes: tuple[str, ...]
    column: str | None = None  # the manifest column it was trained on
    # fitted on the validation split after training (spinenet.calibration): probabilities are
    # softmax(logits / temperature); a binary head calls the positive class at p >= threshold (None: arg-max)
    temperature: float = 1.0
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ConfigError(f"head {self.name!r}: unknown kind {self.kind!r}; valid: {list(HEAD_KINDS)}")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if len(self.classes) < 2:
            raise ConfigError(f"head {self.name!r}: needs at least 2 classes, got {list(self.classes)}")
        if self.kind == "binary" and len(self.classes) != 2:
            raise ConfigError(f"head {self.name!r}: a binary head has 2 classes, got {list(self.classes)}")
        if not float(self.temperature) > 0:
            raise ConfigError(f"head {self.name!r}: temperature must be > 0, got {self.temperature!r}")
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"head {self.name!r}: threshold must be in [0, 1], got {self.threshold!r}")


@dataclass(frozen=True)
class DataSchema:
    """The training data's layout: manifest columns and the mask gray value of each class."""

    image_col: str = "image"
    mask_col: str | None = None
    label_col: str | None = None
    level_col: str | None = None
    patient_col: str = "patient_id"
    mask_values: tuple[int, ...] | None = None

    @classmethod
    def from_dataset_config(cls, ds: Mapping[str, Any]) -> DataSchema:
        values = ds.get("mask_values")
        return cls(image_col=str(ds.get("image_col", "image")), mask_col=ds.get("mask_col"),
                   label_col=ds.get("label_col"), level_col=ds.get("level_col"),
                   patient_col=str(ds.get("patient_col", "patient_id")),
                   mask_values=tuple(int(v) for v in values) if values else None)


# -------------------------------------------------------------------------------------------- the contract
@dataclass(frozen=True)
class ModelContract:
    """What one trained model expects and outputs (module docstring). Build it with :meth:`from_run_config`
    or :meth:`from_dict`; both validate."""

    task: TaskKind
    classes: tuple[str, ...]
    input: InputSpec
    schema: DataSchema = field(default_factory=DataSchema)
    heads: tuple[Head, ...] = ()
    crop: CropRecipe | None = None
    view: str | None = None  # sagittal | axial, where the run's data said
    # classifiers with model.level_prior: logit offsets per disc level ("*": any other), added to the net's
    # logits (an exported file holds the net alone)
    level_offsets: dict[str, list[float]] | None = None
    training_data: dict[str, Any] | None = None  # manifest SHA-256 and split sizes/fingerprints; no ids
    calibration: dict[str, Any] | None = None  # how heads' temperatures and thresholds were fitted
    version: int = CONTRACT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", TaskKind.parse(self.task))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.task is TaskKind.CLASSIFICATION and self.crop is None:
            raise ConfigError("a classifier's contract needs its crop recipe")
        if self.task is TaskKind.CLASSIFICATION and not self.heads and len(self.classes) >= 2:
            # a single-task classifier: one head over its labels, named by the manifest column it learnt
            column = self.schema.label_col
            kind = "binary" if len(self.classes) == 2 else "multiclass"
            object.__setattr__(self, "heads", (Head(str(column or "label"), kind, self.classes, column),))

    # -- preprocessing: the one way an image becomes the model's input
    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[Any, list[tuple[int, int, int, int]]]:
        """Images (float in [0, 1], as ``read_image`` returns them) -> the batch the model takes, and per image
        the region ``(y0, y1, x0, x1)`` it occupies in it (:meth:`InputSpec.batch`)."""
        return self.input.batch(images)

    # -- outputs: calibrated probabilities and decisions
    def head_slices(self) -> list[tuple[Head, slice]]:
        """Each head with the columns of its classes in the model's output (one head: all of them)."""
        out, start = [], 0
        for h in self.heads:
            out.append((h, slice(start, start + len(h.classes))))
            start += len(h.classes)
        return out

    def probabilities(self, logits: Any) -> Any:
        """Class probabilities of logits (or an ensemble's log-probabilities): per head, the softmax of its
        columns at its fitted temperature; ``(N, sum of the heads' classes)``."""
        import torch  # lazy: this module is read without torch (configs, sidecars)

        logits = logits.float()
        if not self.heads:
            return torch.softmax(logits, dim=1)
        return torch.cat([torch.softmax(logits[:, cols] / h.temperature, dim=1) for h, cols in self.head_slices()],
                         dim=1)

    def decide(self, probabilities: Sequence[float], head: int = 0) -> int:
        """The class index a head calls for one row of :meth:`probabilities`: a binary head's threshold, else
        the arg-max."""
        p = np.asarray(probabilities, float)
        if not self.heads:
            return int(p.argmax())
        h, cols = self.head_slices()[head]
        p = p[cols]
        if h.threshold is not None and len(p) == 2:
            return int(p[1] >= h.threshold)
        return int(p.argmax())

    # -- what must agree between models used together (ensemble members, a segmenter and its mask reader)
    def signature(self) -> dict[str, Any]:
        """Task, classes, input and mask values: members of one ensemble must share these."""
        return {"task": self.task.value, "classes": list(self.classes), **asdict(self.input),
                "image_size": list(self.input.image_size),
                "mask_values": list(self.schema.mask_values) if self.schema.mask_values else None}

    # -- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["task"] = self.task.value
        return json.loads(json.dumps(d, default=list))  # tuples as lists: what JSON and torch.load give back

    @classmethod
    def from_dict(cls, doc: Any, source: str | Path) -> ModelContract:
        """A contract as written by :meth:`to_dict`; :class:`DataError` naming ``source`` when it is not one,
        or when it was written by a newer spinenet."""
        if not isinstance(doc, Mapping):
            raise DataError(f"{source}: its model contract is not a mapping ({type(doc).__name__})")
        version = doc.get("version")
        if not isinstance(version, int) or version < 1:
            raise DataError(f"{source}: its model contract has no valid version ({version!r})")
        if version > CONTRACT_VERSION:
            raise DataError(f"{source}: model contract version {version} was written by a newer spinenet (this "
                            f"one reads up to {CONTRACT_VERSION}); upgrade spinenet to use this model")
        try:
            crop, schema = doc.get("crop"), doc.get("schema") or {}
            return cls(
                task=doc["task"], classes=doc["classes"], input=InputSpec(**doc["input"]),
                schema=DataSchema(**{**schema, "mask_values": tuple(schema["mask_values"])
                                     if schema.get("mask_values") else None}),
                heads=tuple(Head(**h) for h in doc.get("heads") or ()),
                crop=CropRecipe(**crop) if crop else None, view=doc.get("view"),
                level_offsets=doc.get("level_offsets"), training_data=doc.get("training_data"),
                calibration=doc.get("calibration"), version=version)
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise DataError(f"{source}: its model contract is not valid ({exc})") from None

    @classmethod
    def from_run_config(
        cls,
        cfg: Any,
        level_offsets: dict[str, list[float]] | None = None,
        training_data: dict[str, Any] | None = None,
    ) -> ModelContract:
        """The contract of a model trained with run config ``cfg`` (a checkpoint's ``spinenet`` entry)."""
        cfg = _plain(cfg)
        task = TaskKind.of_config(cfg)
        data = cfg["data"]
        ds = data.get("dataset") or {}
        classes = tuple(str(c) for c in (ds.get(task.names_key) or []))
        spec = InputSpec.from_data_config(data)
        synth = data.get("synthesize") or {}
        heads: tuple[Head, ...] = ()
        model = cfg.get("model") or {}
        if task is TaskKind.CLASSIFICATION and model.get("tasks"):
            # multi-task: one head per finding; the outputs are the heads' class blocks side by side
            heads = tuple(Head(str(t["name"]), str(t["kind"]), tuple(t["classes"]), t.get("column"))
                          for t in model["tasks"])
            classes = tuple(f"{h.name}:{c}" for h in heads for c in h.classes)
        elif task is TaskKind.CLASSIFICATION and model.get("head") == "ordinal" and classes:
            heads = (Head(str(ds.get("label_col") or "label"), "ordinal", classes, ds.get("label_col")),)
        return cls(task=task, classes=classes, input=spec, schema=DataSchema.from_dataset_config(ds), heads=heads,
                   crop=_crop_recipe(data, spec.image_size) if task is TaskKind.CLASSIFICATION else None,
                   view=synth.get("view") if isinstance(synth, Mapping) else None,
                   level_offsets=level_offsets, training_data=training_data)

    @classmethod
    def of_checkpoint(cls, ckpt: Mapping[str, Any], source: str | Path) -> ModelContract:
        """The contract a checkpoint holds; for a checkpoint from before contracts, derived from its run config
        (what every reader did then)."""
        if CONTRACT_KEY in ckpt:
            return cls.from_dict(ckpt[CONTRACT_KEY], source)
        log.info("%s: written before model contracts; its contract is derived from its run config", source)
        return cls.from_run_config(ckpt["spinenet"])

    def with_level_offsets(self, table: dict[str, list[float]] | None) -> ModelContract:
        return replace(self, level_offsets=table)

    def without_calibration(self) -> ModelContract:
        """The contract before calibration (e.g. of an ensemble: its members' temperatures do not carry over)."""
        heads = tuple(replace(h, temperature=1.0, threshold=None) for h in self.heads)
        return replace(self, heads=heads, calibration=None)


__all__ = [
    "CONTRACT_KEY",
    "CONTRACT_VERSION",
    "CropRecipe",
    "DataSchema",
    "Head",
    "InputSpec",
    "ModelContract",
    "TaskKind",
    "clahe_setting",
    "margin_pair",
    "margin_setting",
    "masks_from_logits",
]
