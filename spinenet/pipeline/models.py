"""Models for the diagnosis pipeline: one interface over checkpoints, ensembles and exported files.

:func:`load_predictor` opens, by suffix:

- ``.ckpt``: a spinenet checkpoint (weights only); ``.json``: a saved ensemble (``spinenet ensemble``) or the
  sidecar of an export (``spinenet export``, then its ONNX file is used, else its TorchScript file);
- ``.onnx``: ONNX from ``spinenet export``, run with onnxruntime (sidecar beside it);
- ``.pt`` / ``.ts``: TorchScript from ``spinenet export`` (the sidecar ``<stem>.json`` beside it), only with
  ``allow_torchscript=True``: a TorchScript file is a program (its ``__setstate__`` runs while it loads, its
  ``forward`` can call any TorchScript op), so a file from elsewhere must be trusted before it is opened.

Trust: checkpoints and ensembles are loaded weights-only; ONNX files run only ONNX operators. The sidecar of an
export records the SHA-256 of each exported file and the file is checked against it before it is opened (a
modified or replaced file is refused). A hash detects tampering after export, not a malicious original.

Every predictor carries :class:`Preprocessing`: what the model was trained on (size, channels, resize mode,
CLAHE, class names) and, for classifiers, how its crops were made (size, margin, CLAHE, square, levels), so
that ``diagnose`` crops and enhances each disc exactly as the classifier saw its training crops.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinenet.errors import ConfigError, DataError
from spinenet.roi import margin_setting
from spinenet.utils.safe_io import file_sha256

log = logging.getLogger(__name__)

EXPORT_FORMAT = "spinenet-export"
EXPORT_VERSION = 1
TORCHSCRIPT_SUFFIXES = (".pt", ".ts")
TORCHSCRIPT_WARNING = "TorchScript files can run arbitrary operations; load only files you trust"
DEFAULT_MARGIN = 0.10


@dataclass
class CropSettings:
    """How a classifier's training crops were made (``spinenet roi`` / ``data.synthesize.crops``)."""

    size: list[int] | None  # None: the crop as cut, resized later by the model's preprocessing
    margin: float | list[float] = DEFAULT_MARGIN  # one number, or [width, height]
    clahe: dict[str, Any] | None = field(default_factory=lambda: {"clip": 2.0, "tiles": [4, 4]})
    square: bool = False
    levels: list[str] | None = None
    source: str = "default"  # where the settings were found: synthesize.crops, summary.json or default


@dataclass
class Preprocessing:
    """What a model expects; written as the export sidecar."""

    task: str  # segmentation | classification
    image_size: list[int]
    in_channels: int = 1
    resize_mode: str = "resize"
    clahe: dict[str, Any] | None = None  # data.clahe: applied to the whole input before resizing
    classes: list[str] = field(default_factory=list)  # mask classes or labels
    view: str | None = None
    crop: CropSettings | None = None
    # classifiers with model.level_prior: logit offset per disc level ("*": any other), added to the net's
    # logits (an exported file holds the net alone)
    level_offsets: dict[str, list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        d = dict(d)
        crop = d.pop("crop", None)
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known, crop=CropSettings(**crop) if crop else None)


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _crop_settings(data: Any, image_size: list[int]) -> CropSettings:
    """The crop recipe of a classifier's training data: the phantom's crop config, else ``data.crop_recipe``
    (crops made by others), else the crop set's ``summary.json`` (written by ``spinenet roi``), else the
    Šušteršič defaults at the model's input size."""
    synth = _plain(data.get("synthesize")) or {}
    crops = synth.get("crops") if isinstance(synth, dict) else None
    if crops:
        size = crops.get("size", image_size)
        return CropSettings(
            size=[int(size), int(size)] if isinstance(size, int) else [int(v) for v in size],
            margin=margin_setting(crops.get("margin", DEFAULT_MARGIN)),
            clahe=crops.get("clahe"),
            square=bool(crops.get("square", False)),
            levels=[str(v) for v in crops["levels"]] if crops.get("levels") else None,
            source="data.synthesize.crops",
        )
    recipe = _plain(data.get("crop_recipe"))
    if recipe:  # crops made elsewhere (e.g. SPIDER's disc crops), measured against segmented discs
        unknown = sorted(set(recipe) - {"margin", "clahe", "square", "levels", "note"})
        if unknown:
            raise ConfigError(f"data.crop_recipe: unknown key(s) {unknown}; valid: margin, clahe, square, levels")
        return CropSettings(
            size=None,  # kept as cropped: the classifier's preprocessing resizes it, as its data module did
            margin=margin_setting(recipe.get("margin", DEFAULT_MARGIN)),
            clahe=recipe.get("clahe"),
            square=bool(recipe.get("square", False)),
            levels=[str(v) for v in recipe["levels"]] if recipe.get("levels") else None,
            source="data.crop_recipe",
        )
    root = data.get("dataset", {}).get("root")
    summary = Path(str(root)) / "summary.json" if root else None
    if summary is not None and summary.is_file():
        try:
            s = json.loads(summary.read_text())
        except (OSError, ValueError):
            s = {}
        if "size" in s and "margin" in s:
            return CropSettings(
                size=[int(v) for v in s["size"]],
                margin=margin_setting(s["margin"]),
                clahe=s.get("clahe"),
                square=bool(s.get("square", False)),
                levels=list(s["levels"]) if s.get("levels") else None,
                source=str(summary),
            )
    log.warning("classifier crop settings not recorded; using margin 0.1, CLAHE 2.0/4x4 at %s", image_size)
    return CropSettings(size=list(image_size))


def preprocessing_from_config(saved: Any) -> Preprocessing:
    """:class:`Preprocessing` from a checkpoint's saved run config."""
    data = saved.data
    task = str(saved.get("task", "segmentation"))
    size = [int(v) for v in data.image_size]
    ds = data.dataset
    classes = ds.get("class_names") if task == "segmentation" else ds.get("label_names")
    synth = _plain(data.get("synthesize")) or {}
    return Preprocessing(
        task=task,
        image_size=size,
        in_channels=int(data.get("in_channels", 1)),
        resize_mode=str(data.get("resize_mode", "resize")),
        clahe=_plain(data.get("clahe")) or None,
        classes=[str(c) for c in (classes or [])],
        view=synth.get("view") if isinstance(synth, dict) else None,
        crop=_crop_settings(data, size) if task == "classification" else None,
    )


class Predictor:
    """``predictor(x)`` -> logits (or log-probabilities for ensembles) for a float32 batch (B, C, H, W)."""

    kind = "module"

    def __init__(self, net: Any, prep: Preprocessing, source: Path, device: str = "cpu", channels_last: bool = False):
        self.net, self.prep, self.source, self.device = net, prep, Path(source), device
        # NHWC inputs and weights: the U-Net ran 1.6-2x faster on CPU (spinenet bench diagnose --no-channels-last)
        self.channels_last = channels_last
        if channels_last:
            self.net = net.to(memory_format=torch.channels_last)

    @property
    def task(self) -> str:
        return self.prep.task

    def __call__(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> torch.Tensor:
        """Logits of ``x``; ``levels`` (one disc level per image) for classifiers with a level prior."""
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if levels is not None and hasattr(self.net, "level_offset_table"):
                return self.net(x, list(levels)).float().cpu()  # a ClassificationModule adds its offsets
            return self.with_level_offsets(self.net(x).float().cpu(), levels)

    def with_level_offsets(self, logits: torch.Tensor, levels: Sequence[str] | None) -> torch.Tensor:
        table = self.prep.level_offsets
        if not table or levels is None:
            return logits
        offsets = torch.tensor([table.get(str(v), table["*"]) for v in levels], dtype=logits.dtype)
        return logits + offsets


class OnnxPredictor(Predictor):
    kind = "onnx"

    def __call__(self, x: torch.Tensor, levels: Sequence[str] | None = None) -> torch.Tensor:
        (out,) = self.net.run(None, {"input": np.ascontiguousarray(x.cpu().numpy(), np.float32)})
        return self.with_level_offsets(torch.from_numpy(out), levels)


def _sidecar(path: Path) -> Preprocessing:
    """The preprocessing in ``path``'s sidecar, after checking ``path`` against the SHA-256 recorded there."""
    side = path.with_suffix(".json")
    if not side.is_file():
        raise DataError(f"{path}: its preprocessing sidecar {side.name} is missing (written by spinenet export)")
    try:
        doc = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{side}: not a readable JSON sidecar ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise DataError(f"{side}: not a spinenet export sidecar (format "
                        f"{doc.get('format') if isinstance(doc, dict) else None!r})")
    expected = (doc.get("sha256") or {}).get(path.name)
    if expected is None:  # exports written before sidecars recorded hashes
        log.warning("%s: its sidecar %s records no SHA-256 (an older export); loaded without checking it",
                    path, side.name)
    elif file_sha256(path) != expected:
        raise DataError(f"model file {path} does not match the SHA-256 in its sidecar {side} (modified or replaced)")
    return Preprocessing.from_dict(doc["preprocessing"])


def onnx_session(model: str | bytes, device: str, what: str, alternative: str = "") -> Any:
    """An ONNX Runtime session for a model file or its bytes, with torch's thread count."""
    try:
        import onnxruntime as ort
    except ImportError:
        hint = f"; {alternative}" if alternative else ""
        raise ConfigError(f"{what} needs onnxruntime (pip install 'spinenet-mri[onnx]'){hint}") from None
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    # idle workers sleep instead of spinning: diagnose's decode, post-processing and writing threads need those
    # cores while the segmenter runs (spinning halved its end-to-end images/s on 2 cores)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, opts, providers=providers or ["CPUExecutionProvider"])


def open_torchscript(path: Path, device: str = "cpu") -> Predictor:
    """An exported TorchScript file, checked against its sidecar's SHA-256 before ``torch.jit.load`` runs
    anything in it. No trust check: :func:`load_predictor` asks for ``allow_torchscript``; ``spinenet export``
    calls this for the file it has just written."""
    import warnings

    prep = _sidecar(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        net = torch.jit.load(str(path), map_location=device).eval()
    p = Predictor(net, prep, path, device)
    p.kind = "torchscript"
    return p


def load_predictor(path: str | Path, device: str = "cpu", allow_torchscript: bool = False) -> Predictor:
    """A checkpoint, ensemble JSON, export sidecar JSON, ONNX or TorchScript (``.pt``/``.ts``) file.

    TorchScript runs code from the file: it is refused (:class:`ConfigError`, before the file is read) unless
    ``allow_torchscript``, and then loaded with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            doc = json.loads(path.read_text())
        except ValueError as exc:
            raise DataError(f"{path}: not a JSON file ({exc})") from None
        if isinstance(doc, dict) and doc.get("format") == EXPORT_FORMAT:
            files = doc.get("files") or {}
            # ONNX when it was exported (it runs only ONNX operators); TorchScript when it is the only file, or
            # when it is allowed and onnxruntime is not installed
            import importlib.util

            chosen = files.get("onnx") or files.get("torchscript")
            if allow_torchscript and files.get("torchscript") and importlib.util.find_spec("onnxruntime") is None:
                chosen = files["torchscript"]
            if not chosen:
                raise DataError(f"{path}: the export sidecar names no exported file")
            return load_predictor(path.with_name(Path(chosen).name), device, allow_torchscript)
    if suffix in TORCHSCRIPT_SUFFIXES:
        if not allow_torchscript:
            raise ConfigError(f"{path} is a TorchScript file, which can run arbitrary code; it was not opened. "
                              "Pass --allow-torchscript (allow_torchscript=True) only for a file you trust, "
                              "or use the .onnx file exported beside it")
        log.warning("%s: %s", path, TORCHSCRIPT_WARNING)
        return open_torchscript(path, device)
    if suffix == ".onnx":
        prep = _sidecar(path)
        session = onnx_session(str(path), device, f"{path}: running ONNX",
                               "or pass the TorchScript file (.pt) exported beside it with --allow-torchscript")
        return OnnxPredictor(session, prep, path, device)
    if suffix not in (".ckpt", ".json"):
        raise ConfigError(
            f"{path}: unknown model file type {suffix!r}; give a .ckpt checkpoint, an ensemble .json, "
            "or an exported .pt (TorchScript) / .onnx file"
        )
    from spinenet.tasks.evaluate import model_from_checkpoint

    module, saved = model_from_checkpoint(path)
    module = module.to(device).eval()
    prep = preprocessing_from_config(saved)
    table = getattr(module, "level_offset_table", None)
    prep.level_offsets = table() if callable(table) else None
    return Predictor(module, prep, path, device, channels_last=True)


def prepare_inputs(
    images: Sequence[np.ndarray], prep: Preprocessing
) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """Images (float [0, 1], as ``read_image`` returns them) -> a batch as the model was trained on, and for
    each image the region ``(y0, y1, x0, x1)`` it occupies in the model input (``resize_mode=pad`` pads)."""
    import cv2

    from spinenet.data.transforms import apply_clahe, build_transforms

    transform = build_transforms(prep.image_size, train=False, resize_mode=prep.resize_mode)
    batch, regions = [], []
    for image in images:
        img = np.asarray(image, np.float32)
        if prep.in_channels == 3 and img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        elif prep.in_channels == 1 and img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        if prep.clahe:
            img = apply_clahe(img, **prep.clahe)
        if prep.resize_mode == "pad":  # a mask of ones marks where the image lands after padding
            out = transform(image=img, mask=np.ones(img.shape[:2], np.uint8))
            ys, xs = np.nonzero(np.asarray(out["mask"]))
            regions.append((int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1))
        else:
            out = transform(image=img)
            regions.append((0, prep.image_size[0], 0, prep.image_size[1]))
        x = np.asarray(out["image"], np.float32)
        batch.append(x[None] if x.ndim == 2 else x.transpose(2, 0, 1))
    return torch.from_numpy(np.ascontiguousarray(np.stack(batch))), regions
