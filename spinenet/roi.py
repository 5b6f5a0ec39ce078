"""Detector-free ROI cropping (Šušteršič 2022): disc contours → boxes + margin → crop → 64×64 → CLAHE.

Steps, as the paper describes them and where it leaves a choice, what spinenet does:

1. **Boxes from a mask** (:func:`disc_boxes`): ``cv2.findContours`` on the disc class of a ground-truth or
   predicted mask; one box per outer contour, boxes half-open (``image[y0:y1, x0:x1]``), sorted top → bottom.
2. **Margin** (:func:`enlarge_box`): the paper enlarges the box by "10 %" without saying of what. Here the
   box's width and height each grow by ``margin`` (each side moves out by ``margin/2`` of the width or
   height; the area grows by about 21 % for 10 %), rounded outwards to whole pixels and clipped at the image
   edge (never padded, so a crop at the edge is smaller than the enlarged box).
3. **Crop, resize, enhance** (:func:`crop_roi`): the crop is resized to ``size`` (``cv2.INTER_AREA`` when
   shrinking, ``cv2.INTER_LINEAR`` when enlarging) and then enhanced with CLAHE (clip 2.0, 4×4 tiles). CLAHE
   runs after the resize so that its tiles cover the same share of every disc (16×16 pixels at 64×64).
4. **Levels on sagittal slices** (:func:`assign_levels`): counted bottom-up, "its order above the sacrum":
   the lowest disc is L5-S1, then L4-L5, L3-L4, L2-L3, L1-L2, then T12-L1, T11-T12, … T1-T2; further ones
   are ``disc_k`` (k counted from the bottom, 1 = lowest). This assumes the lowest disc in the mask is L5-S1
   (the sacrum in view, L5-S1 segmented, no transitional vertebra); a missed L5-S1 shifts every level.
5. **Data sets**: :func:`crop_dataset` (from a manifest with masks or a segmenter) and
   :func:`crops_from_box_csv` (Al-Ajaj 2024's bounding-box CSV) write ``images/*.png``, ``manifest.csv``,
   ``missing.csv`` (images without any disc or box: reported, never silently dropped) and ``summary.json``.
   An image or mask that cannot be used (missing, empty, truncated, not an image, a mask of another size or
   with unmapped values) fails its row only: listed in ``summary.json`` (``failed``: line, file, status,
   reason), the other rows are cropped. The crops are written into a hidden sibling of ``out_dir`` and moved
   in when complete, so a run that cannot read any input leaves no ``out_dir`` (and ``--overwrite`` keeps the
   earlier crops).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from spinenet.contract import margin_pair, margin_setting
from spinenet.data.io import image_size, read_image, read_mask
from spinenet.data.manifest import DatasetSpec, load_manifest, not_utf8_message
from spinenet.data.phantom import MASK_GRAY_STEP, classes_for, generate_on_first_use
from spinenet.errors import EXIT_OK, EXIT_PARTIAL, ConfigError, DataError
from spinenet.utils.outdir import build_atomically, check_output_dir, prepare_output_dir
from spinenet.utils.progress import progress as with_progress
from spinenet.utils.safe_csv import neutralise_frame

log = logging.getLogger(__name__)

DEFAULT_CLAHE: dict[str, Any] = {"clip": 2.0, "tiles": (4, 4)}
LUMBAR_LEVELS: tuple[str, ...] = ("L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2")  # bottom-up
THORACIC_LEVELS: tuple[str, ...] = ("T12-L1",) + tuple(f"T{i}-T{i + 1}" for i in range(11, 0, -1))
VIEWS = ("sagittal", "axial")
_OUTPUTS = ("images", "manifest.csv", "missing.csv", "summary.json")

MaskSource = Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]


@dataclass(frozen=True)
class Box:
    """Pixel box, half-open: ``image[y0:y1, x0:x1]``; ``area`` = disc pixels, ``(cx, cy)`` their centroid."""

    x0: int
    y0: int
    x1: int
    y1: int
    area: float = 0.0
    cx: float = field(default=math.nan)
    cy: float = field(default=math.nan)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


# ---------------------------------------------------------------------------------------------------------
# boxes
# ---------------------------------------------------------------------------------------------------------
def disc_boxes(mask: np.ndarray, disc_class: int = 1, min_area: int = 20) -> list[Box]:
    """One box per outer contour of ``mask == disc_class``, top → bottom (by centroid row).

    ``area`` counts the component's disc pixels (holes excluded); contours with fewer than ``min_area``
    pixels (segmentation specks) are dropped. ``cv2.contourArea`` is not used for this: it measures the
    polygon through the boundary pixel centres, which for a 4-pixel-thin sagittal disc is half its pixels.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise DataError(f"disc_boxes: expected a 2-D class-id mask, got shape {m.shape}")
    binary = (m == disc_class).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for c in contours:
        x, y, w, h = cv2.boundingRect(c)
        filled = np.zeros((h, w), np.uint8)
        cv2.drawContours(filled, [c], -1, 1, thickness=cv2.FILLED, offset=(-x, -y))
        component = filled & binary[y : y + h, x : x + w]
        moments = cv2.moments(component, binaryImage=True)
        area = moments["m00"]
        if area < min_area:
            continue
        boxes.append(
            Box(x, y, x + w, y + h, float(area), x + moments["m10"] / area, y + moments["m01"] / area)
        )
    return sorted(boxes, key=lambda b: (b.cy, b.cx))


def _edge(value: float, up: bool) -> int:
    value = round(value, 6)  # 0.1 * 40 / 2 must be 2, not 2.0000000000000004 rounded up to 3
    return math.ceil(value) if up else math.floor(value)


def enlarge_box(box: Box, margin: float | Sequence[float] = 0.10, image_shape: Sequence[int] | None = None) -> Box:
    """Grow width and height by ``margin`` each (``margin/2`` per side), outwards to whole pixels, clipped.

    ``margin`` is one number or ``[width, height]`` (e.g. third-party crops that show more above and below
    the disc than beside it). ``image_shape`` is ``(H, W, ...)``; without it the box is not clipped.
    """
    mx, my = margin_pair(margin)
    dx, dy = mx * box.width / 2, my * box.height / 2
    x0, y0 = _edge(box.x0 - dx, up=False), _edge(box.y0 - dy, up=False)
    x1, y1 = _edge(box.x1 + dx, up=True), _edge(box.y1 + dy, up=True)
    if image_shape is not None:
        h, w = int(image_shape[0]), int(image_shape[1])
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    return Box(x0, y0, x1, y1, box.area, box.cx, box.cy)


def square_box(box: Box, image_shape: Sequence[int] | None = None) -> Box:
    """Extend the shorter side symmetrically to a square (keeps the disc's aspect at resize), clipped."""
    side = max(box.width, box.height)
    x0 = box.x0 - (side - box.width) // 2
    y0 = box.y0 - (side - box.height) // 2
    x1, y1 = x0 + side, y0 + side
    if image_shape is not None:
        h, w = int(image_shape[0]), int(image_shape[1])
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    return Box(x0, y0, x1, y1, box.area, box.cx, box.cy)


# ---------------------------------------------------------------------------------------------------------
# crops
# ---------------------------------------------------------------------------------------------------------
def _as_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.floating):
        return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise DataError(f"crop_roi: expected a float image in [0, 1] or uint8, got {img.dtype}")


def _clahe(clahe: Mapping[str, Any]) -> cv2.CLAHE:
    unknown = sorted(set(clahe) - {"clip", "tiles"})
    if unknown:
        raise ConfigError(f"roi.clahe: unknown key(s) {unknown}; valid: clip, tiles")
    tiles = clahe.get("tiles", (4, 4))
    tiles = (int(tiles), int(tiles)) if isinstance(tiles, int) else tuple(int(t) for t in tiles)
    if len(tiles) != 2 or min(tiles) < 1:
        raise ConfigError(f"roi.clahe.tiles: expected [columns, rows] >= 1, got {clahe.get('tiles')!r}")
    return cv2.createCLAHE(clipLimit=float(clahe.get("clip", 2.0)), tileGridSize=tiles)


def crop_roi(
    image: np.ndarray,
    box: Box | Sequence[int],
    size: Sequence[int] | None = (64, 64),
    clahe: Mapping[str, Any] | None = DEFAULT_CLAHE,
    as_float: bool = False,
) -> np.ndarray:
    """Crop ``image[y0:y1, x0:x1]``, resize to ``size`` = (height, width) and apply CLAHE.

    ``image``: float in [0, 1] (as ``read_image`` returns it) or uint8, gray ``(H, W)`` or ``(H, W, 3)``
    (CLAHE then works on the L channel of Lab). Returns uint8, or float32 in [0, 1] with ``as_float``.
    ``size=None`` keeps the crop's size; ``clahe=None`` skips the enhancement.
    """
    x0, y0, x1, y1 = box.as_tuple() if isinstance(box, Box) else tuple(int(v) for v in box)
    img = _as_uint8(image)
    crop = img[max(0, y0) : y1, max(0, x0) : x1]
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise DataError(f"crop_roi: box {(x0, y0, x1, y1)} is empty inside an image of shape {img.shape[:2]}")
    if size is not None:
        h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        shrink = crop.shape[0] * crop.shape[1] >= h * w
        crop = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if clahe is not None:
        op = _clahe(clahe)
        if crop.ndim == 2:
            crop = op.apply(np.ascontiguousarray(crop))
        else:
            lab = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB)
            lab[..., 0] = op.apply(np.ascontiguousarray(lab[..., 0]))
            crop = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return crop.astype(np.float32) / 255.0 if as_float else crop


# ---------------------------------------------------------------------------------------------------------
# levels
# ---------------------------------------------------------------------------------------------------------
def level_names(n: int, upper: str = "thoracic") -> list[str]:
    """Names of ``n`` discs counted from the bottom (index 0 = lowest = L5-S1)."""
    if upper not in ("thoracic", "index"):
        raise ConfigError(f"roi.upper_levels: choose thoracic or index, got {upper!r}")
    named = LUMBAR_LEVELS + (THORACIC_LEVELS if upper == "thoracic" else ())
    return [named[k] if k < len(named) else f"disc_{k + 1}" for k in range(n)]


def plausible_sagittal_discs(
    boxes: Sequence[Box], min_aspect: float = 1.0, min_area_fraction: float = 0.2
) -> tuple[list[Box], list[dict[str, Any]]]:
    """Segmented components that can be discs on a sagittal slice, and the others with the reason.

    Levels are counted from the bottom, so one false component below L5-S1 renames every disc. A disc seen
    from the side is wider than tall: components with ``width / height < min_aspect`` go (on SPIDER's
    mid-sagittal slices a U-Net trained on T2-SPACE marked tall strips behind the canal as disc), and so do
    specks under ``min_area_fraction`` of the median area of the wide ones.
    """
    wide = [b for b in boxes if b.width >= min_aspect * b.height]
    typical = float(np.median([b.area for b in wide])) if wide else 0.0
    kept, rejected = [], []
    for b in boxes:
        if b.width < min_aspect * b.height:
            why = f"taller than wide ({b.width}x{b.height} px)"
        elif b.area < min_area_fraction * typical:
            why = f"area {b.area:.0f} px < {min_area_fraction:g} x the median disc ({typical:.0f} px)"
        else:
            kept.append(b)
            continue
        rejected.append({"box": list(b.as_tuple()), "area": float(b.area), "reason": why})
    return kept, rejected


def assign_levels(boxes: Sequence[Box], upper: str = "thoracic") -> list[str]:
    """Level of each box (same order as ``boxes``), bottom-up: the lowest centroid is L5-S1."""
    order = sorted(range(len(boxes)), key=lambda i: -boxes[i].cy)  # bottom first
    names = level_names(len(boxes), upper)
    out = [""] * len(boxes)
    for rank, i in enumerate(order):
        out[i] = names[rank]
    return out


# ---------------------------------------------------------------------------------------------------------
# writing data sets
# ---------------------------------------------------------------------------------------------------------
def _stage(out_dir: str | Path, overwrite: bool, inputs: Sequence[Any]) -> tuple[Path, list[Path]]:
    """Check ``out_dir`` (refused before any work) and make the hidden sibling that the crops are written
    into; return it and the parent folders this made (innermost first), removed again if nothing is kept.

    A run that cannot read a single input then leaves no half-written ``out_dir``, and ``--overwrite`` replaces
    earlier crops only once the new ones are complete (:func:`_publish`)."""
    target = check_output_dir(out_dir, inputs, overwrite).absolute()
    made, parent = [], target.parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    stage = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)  # a leftover of this process id, killed earlier
    (stage / "images").mkdir(parents=True)
    return stage, made


def _publish(stage: Path, out_dir: str | Path, overwrite: bool, inputs: Sequence[Any]) -> Path:
    # --overwrite replaces only what this module writes, never the user's other files
    out = prepare_output_dir(out_dir, inputs, overwrite, command="roi", clear=_OUTPUTS)
    for name in _OUTPUTS:
        os.replace(stage / name, out / name)  # same file system: renames, no copies
    return out


def _discard(stage: Path, made: Sequence[Path]) -> None:
    shutil.rmtree(stage, ignore_errors=True)
    for folder in made:
        try:
            folder.rmdir()  # only while empty: once --out is in place they hold it
        except OSError:
            break


def _nothing_read(failed: Sequence[Mapping[str, Any]], n_images: int, out_dir: str | Path) -> DataError:
    shown = "\n  ".join(f"line {f['line']} ({f['file']}): {f['reason']}" for f in failed[:10])
    more = f"\n  ... and {len(failed) - 10} more" if len(failed) > 10 else ""
    return DataError(
        f"none of the {n_images} image(s) could be read; nothing written to {out_dir}:\n  {shown}{more}"
    )


def _size_tuple(size: Sequence[int] | int) -> tuple[int, int]:
    s = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)
    if len(s) != 2 or min(s) < 1:
        raise ConfigError(f"roi.size: expected [height, width] >= 1, got {size!r}")
    return s  # type: ignore[return-value]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


class _Writer:
    """Writes crops with unique names and collects manifest, missing and failed rows."""

    def __init__(self, out: Path, shown: str | Path):
        self.out, self.rows, self.missing, self._names = out, [], [], set()
        self.shown = shown  # the --out folder (``out`` is where the crops are staged)
        self.rejected: list[dict[str, Any]] = []  # segmented components that cannot be discs
        self.failed: list[dict[str, Any]] = []  # inputs that could not be read, with the reason

    def fail(self, line: int, file: str, reason: str) -> None:
        self.failed.append({"line": line, "file": file, "status": "failed", "reason": reason})

    def save(self, crop: np.ndarray, stem: str, row: dict[str, Any]) -> None:
        name, k = _safe(stem), 2
        while name in self._names:  # the same stem in two source folders
            name, k = f"{_safe(stem)}_{k}", k + 1
        self._names.add(name)
        rel = f"images/{name}.png"
        if not cv2.imwrite(
            str(self.out / rel), crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
        ):
            raise DataError(f"cannot write {self.out / rel}")
        self.rows.append({"patient_id": row.pop("patient_id"), "image": rel, **row})

    def finish(self, summary: dict[str, Any]) -> None:
        head = ["patient_id", "image", "source_image", "level", "disc_index", "x0", "y0", "x1", "y1", "area"]
        df = pd.DataFrame(self.rows)
        cols = [c for c in head if c in df.columns] + [c for c in df.columns if c not in head]
        table = df[cols] if len(df) else pd.DataFrame(columns=head)
        neutralise_frame(table).to_csv(self.out / "manifest.csv", index=False)
        missing = pd.DataFrame(self.missing, columns=["patient_id", "source_image", "reason"])
        neutralise_frame(missing).to_csv(self.out / "missing.csv", index=False)
        labels = Counter(str(r["label"]) for r in self.rows if "label" in r)
        summary.update(
            n_crops=len(self.rows),
            n_missing=len(self.missing),
            label_counts=dict(sorted(labels.items())),
            missing=[m["source_image"] for m in self.missing[:50]],
            n_rejected_components=len(self.rejected),
            rejected_components=self.rejected[:50],
            failed=self.failed,
        )
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        msg = (
            f"roi: {summary['n_crops']} crops from {summary['n_images']} images in {self.shown}; "
            f"{summary['n_missing']} without a disc (listed in missing.csv), "
            f"{summary['n_failed']} failed (listed in summary.json)"
        )
        log.warning(msg) if self.missing or self.failed else log.info(msg)


def _spec(spec: Any) -> Any:
    return spec if isinstance(spec, DatasetSpec) else DatasetSpec.from_config(spec)


def _disc_label(row: Mapping[str, Any], level: str, label_col: str | None) -> int | None:
    """1 when the slice's grading names this disc's level as herniated; None when there is no grading.

    A per-level column ``herniation_<L4L5>`` (phantom, SPIDER) is used when present; otherwise the slice
    label is compared with the level (``both`` stands for L4-L5 and L5-S1, as in SPIDER's manifest).
    """
    col = f"herniation_{level.replace('-', '')}"
    if col in row and not pd.isna(row[col]):
        return int(float(row[col]))
    if label_col is None or pd.isna(row.get(label_col)):
        return None
    value = str(row[label_col])
    return int(value == level or (value == "both" and level in ("L4-L5", "L5-S1")))


def crop_dataset(
    spec: Any,
    out_dir: str | Path,
    view: str = "sagittal",
    size: Sequence[int] | int = (64, 64),
    margin: float | Sequence[float] = 0.10,
    clahe: Mapping[str, Any] | None = DEFAULT_CLAHE,
    mask_source: str | MaskSource = "gt",
    disc_class: int = 1,
    min_area: int = 20,
    levels: Sequence[str] | None = None,
    upper_levels: str = "thoracic",
    square: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    inputs: Sequence[Any] = (),
) -> Path:
    """Crop every disc of a segmentation data set into a classification data set; return ``out_dir``.

    ``out_dir`` may not overlap the data root, its manifest or ``inputs`` (e.g. the segmenter's checkpoint;
    paths or ``(path, what)``); ``overwrite`` clears only a folder that spinenet wrote.

    ``spec``: a :class:`~spinenet.data.manifest.DatasetSpec` (or its config mapping) of the source data.
    ``mask_source``: ``"gt"`` reads each row's mask (``dataset.mask_col``, ``dataset.mask_values``); a
    callable ``(image, row) -> class-id mask`` supplies a segmenter's prediction instead (``image`` as ``read_image``
    returns it). ``view="sagittal"``: every disc is a crop, named by its level (:func:`assign_levels`);
    ``levels`` keeps only those (Šušteršič 2022 classified L4-L5 and L5-S1). ``view="axial"``: one crop per
    image from the largest disc contour. ``square`` makes boxes square before the margin.

    Written to ``out_dir``: ``images/<source stem>_<level>.png``; ``manifest.csv`` with ``patient_id, image,
    source_image, level, disc_index, x0, y0, x1, y1, area`` (the box actually cropped, after margin and
    clipping), the source row's other columns, and ``label``: axial: the slice's ``dataset.label_col`` value;
    sagittal: ``herniated`` (0/1, see :func:`_disc_label`) and ``label`` = the level if herniated, else
    ``healthy`` (so labels are Šušteršič's sagittal classes healthy / L4-L5 / L5-S1); ``missing.csv``
    (``patient_id, source_image, reason``) for images without a disc; ``summary.json`` (with ``n_ok``,
    ``n_failed`` and ``failed``: the rows whose image or mask could not be used, or that the segmenter failed
    on, each with ``line, file, status, reason``; the other rows are cropped). When no row can be read:
    ``DataError`` and nothing written. ``progress``: a bar over the images (``None``: on a terminal only;
    ``False``: never).
    """
    if view not in VIEWS:
        raise ConfigError(f"roi.view: choose one of {', '.join(VIEWS)}, got {view!r}")
    spec = _spec(spec)
    size_t = _size_tuple(size)
    if clahe is not None:
        _clahe(clahe)  # fail on a bad setting before any file is written
    if isinstance(mask_source, str):
        if mask_source != "gt":
            raise ConfigError(f"roi.mask_source: 'gt' or a segmenter callable, got {mask_source!r}")
        if not spec.mask_col or not spec.mask_values:
            raise ConfigError("roi.mask_source=gt needs dataset.mask_col and dataset.mask_values")
    df = load_manifest(spec)
    inputs = [(spec.root, "data root"), (spec.manifest_path, "manifest"), *inputs]
    stage, made = _stage(out_dir, overwrite, inputs)
    try:
        writer = _Writer(stage, out_dir)
        drop = {
            spec.image_col,
            spec.mask_col,
            spec.patient_col,
            "image_path",
            "mask_path",
            "label_idx",
            "csv_line",
        }
        carried = [c for c in df.columns if c not in drop]
        keep = set(levels) if levels is not None else None
        n_read = 0
        for rec in with_progress(df.to_dict("records"), total=len(df), desc="cropping discs", enabled=progress):
            try:
                image, mask = _read_row(rec, spec, mask_source)
            except DataError as exc:  # listed with its reason; the other rows are cropped
                writer.fail(int(rec["csv_line"]), str(rec[spec.image_col]), str(exc))
                continue
            n_read += 1
            boxes = disc_boxes(mask, disc_class, min_area)
            pid, source = str(rec[spec.patient_col]), str(rec[spec.image_col])
            if not boxes:
                writer.missing.append(
                    {
                        "patient_id": pid,
                        "source_image": source,
                        "reason": f"no disc contour of >= {min_area} pixels (class {disc_class}, "
                        f"mask from {'gt' if isinstance(mask_source, str) else 'segmenter'})",
                    }
                )
                continue
            if view == "axial":
                chosen = [max(boxes, key=lambda b: b.area)]
                names = [str(rec["level"]) if "level" in rec and not pd.isna(rec["level"]) else ""]
            else:
                chosen = boxes
                if callable(mask_source):
                    # as `spinenet diagnose`: one false component below L5-S1 renames every disc above it
                    chosen, rejected = plausible_sagittal_discs(boxes)
                    writer.rejected += [{"patient_id": pid, "source_image": source, **r} for r in rejected]
                names = assign_levels(chosen, upper_levels)
            stem = Path(source).stem
            for idx, (box, level) in enumerate(zip(chosen, names, strict=True)):
                if keep is not None and level not in keep:
                    continue
                roi = square_box(box, image.shape) if square else box
                roi = enlarge_box(roi, margin, image.shape)
                crop = crop_roi(image, roi, size_t, clahe)
                row: dict[str, Any] = {c: rec[c] for c in carried}
                row.update(
                    patient_id=pid,
                    source_image=source,
                    level=level,
                    disc_index=idx,
                    x0=roi.x0,
                    y0=roi.y0,
                    x1=roi.x1,
                    y1=roi.y1,
                    area=box.area,
                )
                if view == "sagittal":
                    herniated = _disc_label(rec, level, spec.label_col)
                    if herniated is not None:
                        row.update(herniated=herniated, label=level if herniated else "healthy")
                elif spec.label_col:
                    row["label"] = rec[spec.label_col]
                writer.save(crop, f"{stem}_{level or idx}", row)
        summary = {
            "source": str(spec.manifest_path),
            "view": view,
            "n_images": len(df),
            "mask_source": mask_source if isinstance(mask_source, str) else "segmenter",
            "size": list(size_t),
            "margin": margin,
            "clahe": dict(clahe) if clahe is not None else None,
            "square": square,
            "levels": list(levels) if levels is not None else None,
            "n_ok": n_read,
            "n_failed": len(writer.failed),
        }
        if not n_read:
            raise _nothing_read(writer.failed, len(df), out_dir)
        writer.finish(summary)
        return _publish(stage, out_dir, overwrite, inputs)
    finally:
        _discard(stage, made)


def _read_row(rec: Mapping[str, Any], spec: DatasetSpec, mask_source: str | MaskSource) -> tuple[np.ndarray, np.ndarray]:
    """The row's image and class-id mask; ``DataError`` naming the file when either cannot be used."""
    image = read_image(rec["image_path"])
    if callable(mask_source):
        try:
            mask = np.asarray(mask_source(image, rec))
        except Exception as exc:  # one image a model fails on must not stop the batch (as in diagnose)
            raise DataError(f"the segmenter failed on it: {type(exc).__name__}: {exc}") from exc
        if mask.shape[:2] != image.shape[:2]:
            raise DataError(f"the segmenter returned a {mask.shape} mask for an image of shape {image.shape}")
        return image, mask
    mask = read_mask(rec["mask_path"], spec.mask_values)
    if mask.shape[:2] != image.shape[:2]:  # its boxes would be cut from the wrong place
        raise DataError(
            f"mask {rec[spec.mask_col]} is {mask.shape[0]}x{mask.shape[1]} (HxW) but image "
            f"{rec[spec.image_col]} is {image.shape[0]}x{image.shape[1]}"
        )
    return image, mask


# ---------------------------------------------------------------------------------------------------------
# bounding-box CSV (Al-Ajaj 2024, VinDr-SpineXR style)
# ---------------------------------------------------------------------------------------------------------
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")


def _find_image(root: Path, image_id: str) -> Path | None:
    direct = root / image_id
    if direct.suffix.lower() in IMAGE_SUFFIXES and direct.is_file():
        return direct
    for suffix in IMAGE_SUFFIXES:
        p = root / f"{image_id}{suffix}"
        if p.is_file():
            return p
    return None


def crops_from_box_csv(
    csv_path: str | Path,
    image_root: str | Path,
    out_dir: str | Path,
    size: Sequence[int] | int = (64, 64),
    margin: float | Sequence[float] = 0.0,
    clahe: Mapping[str, Any] | None = DEFAULT_CLAHE,
    label_col: str | None = None,
    patient_col: str | None = None,
    square: bool = False,
    overwrite: bool = False,
) -> Path:
    """Crops from a box CSV: ``image_id, label, xmin, ymin, xmax, ymax`` (``lesion_type`` for ``label``).

    ``image_id`` is a file under ``image_root``, with or without suffix (.png, .jpg, .tif, .dcm tried).
    Coordinates are pixels of that file; boxes reaching past the image edge are clipped. Every row is
    checked before anything is written: a non-numeric or partly empty box, ``xmin >= xmax``, an image path
    leading outside ``image_root`` or a box wholly outside the image raises ``DataError`` naming the CSV
    line(s). An image that is missing or cannot be read fails its rows only: they are listed in
    ``summary.json`` (``failed``) and the other rows are cropped; when no row can be, ``DataError`` and no
    ``out_dir`` is written. Rows whose four
    coordinates are all empty (VinDr's "No finding") are listed in ``missing.csv``. Several rows for one
    image give several crops, ``images/<image_id>_<k>.png``. ``margin`` defaults to 0 (Al-Ajaj cropped the
    box as annotated). ``patient_col``: the patient id column (default: ``image_id``).
    """
    csv_path, root = Path(csv_path), Path(image_root)
    if not csv_path.is_file():
        raise DataError(f"box CSV not found: {csv_path}")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(not_utf8_message(csv_path)) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"cannot read {csv_path} as CSV: {e}") from e
    label_col = label_col or ("label" if "label" in df.columns else "lesion_type")
    need = ["image_id", label_col, *BOX_COLUMNS] + ([patient_col] if patient_col else [])
    absent = [c for c in need if c not in df.columns]
    if absent:
        raise DataError(
            f"{csv_path}: missing column(s) {absent}; expected image_id, label (or lesion_type), "
            f"xmin, ymin, xmax, ymax; its columns are: {', '.join(df.columns)}"
        )
    if len(df) == 0:
        raise DataError(f"{csv_path} has no rows")
    size_t = _size_tuple(size)
    if clahe is not None:
        _clahe(clahe)

    problems: list[str] = []
    failed: list[tuple[int, str, str]] = []  # (line, image_id, reason): these rows only, the others go on
    sizes: dict[Path, tuple[int, int] | str] = {}  # a str: why the image cannot be read
    jobs: list[tuple[int, dict[str, Any], Path | None, tuple[float, ...] | None]] = []
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2  # header is line 1
        image_id = rec["image_id"]
        if pd.isna(image_id) or not str(image_id).strip():
            problems.append(f"line {line}: empty image_id")
            continue
        raw = [rec[c] for c in BOX_COLUMNS]
        if all(pd.isna(v) for v in raw):
            jobs.append((line, rec, None, None))
            continue
        try:
            coords = tuple(float(v) for v in raw)
            if any(math.isnan(v) for v in coords):
                raise ValueError
        except (TypeError, ValueError):
            problems.append(
                f"line {line} ({image_id}): box {dict(zip(BOX_COLUMNS, raw, strict=True))} is not "
                "four numbers (leave all four empty for an image without a finding)"
            )
            continue
        if coords[0] >= coords[2] or coords[1] >= coords[3]:
            problems.append(f"line {line} ({image_id}): xmin < xmax and ymin < ymax needed, got {coords}")
            continue
        path = _find_image(root, str(image_id).strip())
        if path is not None and not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root)):
            problems.append(f"line {line}: image {image_id!r} leads outside the image folder {root}")
            continue
        if path is None:
            failed.append(
                (line, str(image_id), f"image not found under {root} (tried {', '.join(IMAGE_SUFFIXES)})")
            )
            continue
        if path not in sizes:
            try:
                sizes[path] = image_size(path)
            except DataError as exc:
                sizes[path] = str(exc)
        if isinstance(sizes[path], str):
            failed.append((line, str(image_id), sizes[path]))
            continue
        h, w = sizes[path]
        if coords[0] >= w or coords[1] >= h or coords[2] <= 0 or coords[3] <= 0:
            problems.append(f"line {line} ({image_id}): box {coords} lies outside the {w}×{h} image {path}")
            continue
        jobs.append((line, rec, path, coords))
    if problems:
        shown = "\n  ".join(problems[:10]) + (
            f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise DataError(f"{csv_path}: {len(problems)} bad row(s):\n  {shown}")

    inputs = [(csv_path, "box CSV"), (root, "image folder")]
    stage, made = _stage(out_dir, overwrite, inputs)
    try:
        writer = _Writer(stage, out_dir)
        for line, image_id, reason in failed:
            writer.fail(line, image_id, reason)
        counts: Counter[str] = Counter()
        cache: dict[Path, np.ndarray | str] = {}
        carried = [c for c in df.columns if c not in ("image_id", label_col, *BOX_COLUMNS, patient_col)]
        n_done = 0  # rows cropped or listed in missing.csv
        for line, rec, path, coords in jobs:
            image_id = str(rec["image_id"]).strip()
            pid = str(rec[patient_col]) if patient_col else image_id
            if coords is None:
                label = rec[label_col] if not pd.isna(rec[label_col]) else ""
                writer.missing.append(
                    {
                        "patient_id": pid,
                        "source_image": image_id,
                        "reason": f"line {line}: no box ({label or 'no label'})",
                    }
                )
                n_done += 1
                continue
            assert path is not None
            if path not in cache:
                try:
                    cache = {path: read_image(path)}  # rows of one image are usually adjacent
                except DataError as exc:  # e.g. truncated after a readable header
                    cache = {path: str(exc)}
            image = cache[path]
            if isinstance(image, str):
                writer.fail(line, image_id, image)
                continue
            box = Box(math.floor(coords[0]), math.floor(coords[1]), math.ceil(coords[2]), math.ceil(coords[3]))
            roi = enlarge_box(square_box(box, image.shape) if square else box, margin, image.shape)
            crop = crop_roi(image, roi, size_t, clahe)
            k = counts[image_id]
            counts[image_id] += 1
            row = {c: rec[c] for c in carried}
            row.update(
                patient_id=pid,
                source_image=str(path.relative_to(root)),
                level="",
                disc_index=k,
                x0=roi.x0,
                y0=roi.y0,
                x1=roi.x1,
                y1=roi.y1,
                label=rec[label_col],
                csv_line=line,
            )
            writer.save(crop, f"{Path(image_id).stem}_{k}", row)
            n_done += 1
        n_images = int(df["image_id"].nunique())
        n_failed = len({f["file"] for f in writer.failed})
        summary = {
            "source": str(csv_path),
            "view": "box_csv",
            "n_images": n_images,
            "mask_source": "box_csv",
            "size": list(size_t),
            "margin": margin,
            "clahe": dict(clahe) if clahe is not None else None,
            "square": square,
            "n_ok": n_images - n_failed,
            "n_failed": n_failed,
        }
        writer.failed.sort(key=lambda f: f["line"])
        if not n_done:
            raise _nothing_read(writer.failed, n_images, out_dir)
        writer.finish(summary)
        return _publish(stage, out_dir, overwrite, inputs)
    finally:
        _discard(stage, made)


# ---------------------------------------------------------------------------------------------------------
# phantom crops (the classification experiments' embedded data) and masks from a trained segmenter
# ---------------------------------------------------------------------------------------------------------
PHANTOM_CROP_OPTIONS = ("source", "size", "margin", "clahe", "levels", "square", "min_area", "upper_levels")
_PHANTOM_META_KEYS = ("view", "patients", "seed", "size", "slices_per_patient")


def phantom_crops(out_dir: str | Path, phantom: Mapping[str, Any], crops: Mapping[str, Any] | None) -> Path:
    """Disc crops of a synthetic phantom, cropped with its ground-truth masks (``data.synthesize.crops``).

    ``phantom``: :func:`~spinenet.data.phantom.generate_phantom` arguments (view, patients, seed, size,
    slices_per_patient, class_balance). ``crops``: :func:`crop_dataset` options (size, margin, clahe, levels,
    square, min_area, upper_levels) and ``source``, the phantom's folder (default ``<out_dir>_source``): it is
    generated there unless it exists, so a segmentation experiment's phantom is reused. Returns ``out_dir``.
    """
    crops = dict(crops or {})
    phantom = {k: v for k, v in phantom.items() if k != "tag"}  # tag only names the folders
    unknown = sorted(set(crops) - set(PHANTOM_CROP_OPTIONS))
    if unknown:
        raise ConfigError(
            f"data.synthesize.crops: unknown setting(s) {unknown}; valid: {', '.join(PHANTOM_CROP_OPTIONS)}"
        )
    view = str(phantom.get("view", "sagittal"))
    out = Path(out_dir)
    source = Path(crops.pop("source", None) or out.with_name(out.name + "_source"))
    meta_path = source / "phantom.json"
    if (source / "manifest.csv").is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        differ = {
            k: (meta.get(k), phantom[k])
            for k in _PHANTOM_META_KEYS
            if k in phantom and meta.get(k) != phantom[k]
        }
        if differ:
            raise DataError(
                f"data.synthesize.crops.source {source} holds another phantom ({differ}: found, asked); "
                "choose another source folder"
            )
    elif not (source / "manifest.csv").is_file():
        generate_on_first_use(source, phantom)  # complete or absent, even when runs are killed or start together
    spec = DatasetSpec(
        root=source,
        label_col=f"{view}_class",
        mask_values=[MASK_GRAY_STEP * i for i in range(len(classes_for(view)))],
        class_names=list(classes_for(view)),
    )
    if crops.get("size") is not None and not isinstance(crops["size"], int):
        crops["size"] = list(crops["size"])
    if crops.get("levels") is not None:
        crops["levels"] = [str(v) for v in crops["levels"]]
    # overwrite: only this module's own outputs of an interrupted earlier attempt are replaced
    return crop_dataset(spec, out, view=view, mask_source="gt", overwrite=True, **crops)


def phantom_crops_on_first_use(root: Path, synth: Mapping, crops: Mapping, manifest: str = "manifest.csv") -> Path:
    """:func:`phantom_crops` into ``root`` on first use, like :func:`spinenet.data.phantom.generate_on_first_use`
    (temporary sibling, rename, lock); return ``root``."""
    root = Path(root)
    crops = dict(crops)
    # the source phantom is named after the final folder, not after the temporary one
    crops["source"] = str(crops.get("source") or root.with_name(root.name + "_source"))
    log.info("generating phantom disc crops in %s", root)
    return build_atomically(
        root,
        lambda tmp: phantom_crops(tmp, dict(synth), crops),
        lambda path: (path / manifest).is_file(),
        _OUTPUTS,
        "phantom disc crops",
    )


def segmenter_mask_source(checkpoint: str | Path, device: str = "cpu") -> tuple[MaskSource, list[str]]:
    """A ``mask_source`` for :func:`crop_dataset` that predicts masks with a trained segmenter.

    Any model file :func:`spinenet.loading.load_model` opens (checkpoint, ensemble, export). Its contract's
    preprocessing is applied (channels, CLAHE, image size, resize mode); the logits are mapped back onto the
    source image (undoing the padding of ``resize_mode=pad``) and upsampled bilinearly before the arg-max
    (:func:`spinenet.contract.masks_from_logits`). Returns the source and the segmenter's class names.
    """
    import torch  # lazy: start-up (spinenet roi without --segmenter needs no torch)

    from spinenet.contract import TaskKind, masks_from_logits
    from spinenet.loading import load_model  # lazy: start-up (lightning, hydra)

    model, contract = load_model(checkpoint, device)
    if contract.task is not TaskKind.SEGMENTATION:
        raise ConfigError(f"--segmenter {checkpoint}: a {contract.task} model, not a segmenter")
    class_names = list(contract.classes)

    def predict(image: np.ndarray, row: Mapping[str, Any]) -> np.ndarray:
        x, regions = contract.preprocess([image])
        with torch.no_grad():
            return masks_from_logits(model(x), [image], regions)[0]

    return predict, class_names


# ---------------------------------------------------------------------------------------------------------
# `spinenet roi`
# ---------------------------------------------------------------------------------------------------------
def _parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="spinenet roi",
        description="Crop every disc of a data set into a classification data set (images + manifest.csv), "
        "from ground-truth masks, a trained segmenter's masks (--segmenter) or a bounding-box CSV (--boxes).",
        epilog="examples:\n"
        "  spinenet roi --data phantom_axial --root data/my_axial --out data/my_axial_crops\n"
        "  spinenet roi --data spider_seg --segmenter outputs/.../epoch_012.ckpt --levels L4-L5,L5-S1 --out crops\n"
        "  spinenet roi --boxes train.csv --images pngs/ --out crops",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite)")
    src = p.add_argument_group("source data set (masks or a segmenter)")
    src.add_argument(
        "--root", help="data set folder holding the manifest (default: the --data config's root)"
    )
    src.add_argument("--data", help="data config whose dataset block names the columns, e.g. phantom_axial")
    src.add_argument("--manifest", help="manifest file name inside --root (default manifest.csv)")
    src.add_argument("--image-col")
    src.add_argument("--mask-col")
    src.add_argument("--patient-col")
    src.add_argument("--label-col", help="label column (box CSV: default label, else lesion_type)")
    src.add_argument("--mask-values", help="gray value of each mask class, e.g. 0,85,170,255")
    src.add_argument(
        "--segmenter", metavar="CKPT", help="predict the masks with this segmentation checkpoint"
    )
    src.add_argument("--device", default="cpu", help="device for --segmenter (cpu, cuda, cuda:1)")
    src.add_argument(
        "--view",
        choices=VIEWS,
        help="sagittal: every disc, by level; axial: one crop per image "
        "(default: the data config's view, else sagittal)",
    )
    src.add_argument("--levels", help="sagittal levels to keep, e.g. L4-L5,L5-S1 (default: all)")
    src.add_argument(
        "--disc-class",
        type=int,
        help="class id of the disc (default: 'disc' in the segmenter's or data config's class_names, else 1)",
    )
    src.add_argument("--min-area", type=int, default=20, help="smallest disc contour in pixels (default 20)")
    box = p.add_argument_group("bounding-box CSV source (Al-Ajaj 2024)")
    box.add_argument("--boxes", metavar="CSV", help="image_id, label, xmin, ymin, xmax, ymax")
    box.add_argument("--images", help="folder of the images named by image_id (default: the CSV's folder)")
    crop = p.add_argument_group("crop")
    crop.add_argument("--size", default="64", help="crop size: 64 or HxW, e.g. 64x128 (default 64)")
    crop.add_argument("--margin", type=float, nargs="+", default=None,
                      help="box growth: one number, or width and height (default 0.10; box CSV: 0)")
    crop.add_argument("--square", action="store_true", help="make boxes square before the margin")
    crop.add_argument("--clahe-clip", type=float, default=2.0)
    crop.add_argument("--clahe-tiles", type=int, default=4)
    crop.add_argument("--no-clahe", action="store_true", help="skip the CLAHE enhancement")
    p.add_argument("--overwrite", action="store_true", help="replace earlier crops in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(progress=None)  # None: a bar only when stderr is a terminal
    return p


def _parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in str(text).lower().replace(",", "x").split("x")]
    except ValueError:
        raise ConfigError(f"--size: expected 64 or HxW such as 64x128, got {text!r}") from None
    return _size_tuple(parts[0] if len(parts) == 1 else parts)


def _source_spec(args) -> tuple[Any, str | None]:
    """The data set to crop and its view, from --data and the column flags."""
    fields: dict[str, Any] = {}
    view = None
    if args.data:
        import os

        from omegaconf import OmegaConf

        from spinenet.config import compose

        try:
            cfg = compose("train", [f"data={args.data}"], output_dir=os.getcwd())
        except Exception as exc:  # Hydra's "Could not find 'data/xyz'" lists the options
            raise ConfigError(f"--data {args.data}: {exc}") from None
        fields = OmegaConf.to_container(cfg.data.dataset, resolve=True)
        synth = cfg.data.get("synthesize") or {}
        view = synth.get("view")
    if args.root:
        fields["root"] = args.root
    if not fields.get("root"):
        raise ConfigError("spinenet roi: give --root (and --data or the column flags) or --boxes")
    for key, value in (
        ("manifest", args.manifest),
        ("image_col", args.image_col),
        ("mask_col", args.mask_col),
        ("patient_col", args.patient_col),
        ("label_col", args.label_col),
    ):
        if value is not None:
            fields[key] = value
    if args.mask_values:
        try:
            fields["mask_values"] = [int(v) for v in args.mask_values.split(",")]
        except ValueError:
            raise ConfigError(
                f"--mask-values: expected gray values like 0,85,170,255, got {args.mask_values!r}"
            ) from None
        if fields.get("class_names") and len(fields["class_names"]) != len(fields["mask_values"]):
            fields["class_names"] = None
    if not args.data and "mask_values" not in fields and not args.segmenter:
        fields["mask_values"] = [0, 85, 170, 255]  # the phantom's convention
    if args.segmenter:  # the masks come from the segmenter: the data set need not have any
        fields["mask_col"] = None
    return _spec(fields), view


def _print_summary(out: Path) -> int:
    """Print what was written, each failed input and the summary line; the exit code (3 when some failed)."""
    summary = json.loads((out / "summary.json").read_text())
    lines = [
        f"roi written: {out}",
        f"  source:  {summary['source']} ({summary['view']}, masks: {summary['mask_source']})",
        f"  crops:   {summary['n_crops']} from {summary['n_images']} images, size {summary['size']}, "
        f"margin {summary['margin']}, CLAHE {summary['clahe']}",
    ]
    if summary.get("label_counts"):
        lines.append("  labels:  " + ", ".join(f"{k}={v}" for k, v in summary["label_counts"].items()))
    missing = pd.read_csv(out / "missing.csv")
    if len(missing):
        lines.append(f"  no disc found in {len(missing)} image(s) (listed in {out / 'missing.csv'}):")
        lines += [f"    {r.source_image}: {r.reason}" for r in missing.head(10).itertuples()]
        if len(missing) > 10:
            lines.append(f"    ... and {len(missing) - 10} more")
    else:
        lines.append("  no disc found in 0 images")
    lines.append(f"  manifest: {out / 'manifest.csv'}")
    failed = summary.get("failed", [])
    lines += [f"failed: line {f['line']} ({f['file']}): {f['reason']}" for f in failed[:10]]
    if len(failed) > 10:
        lines.append(f"... and {len(failed) - 10} more")
    lines.append(
        f"roi: {summary['n_images']} images, {summary['n_ok']} ok, {summary['n_failed']} failed "
        f"(see {out / 'summary.json'})"
    )
    print("\n".join(lines), flush=True)
    return EXIT_PARTIAL if summary["n_failed"] else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``spinenet roi``: write a classification data set of disc crops; prints a summary. Exit 0, or 3
    (``EXIT_PARTIAL``) when some images could not be read (listed in ``summary.json``: ``failed``)."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    from spinenet.tasks.train import ensure_torch_threads

    ensure_torch_threads()
    size = _parse_size(args.size)
    clahe = (
        None if args.no_clahe else {"clip": args.clahe_clip, "tiles": (args.clahe_tiles, args.clahe_tiles)}
    )
    if args.boxes:
        if args.root or args.data or args.segmenter:
            raise ConfigError(
                "spinenet roi: --boxes is a source of its own; leave out --root, --data, --segmenter"
            )
        images = Path(args.images) if args.images else Path(args.boxes).parent
        out = crops_from_box_csv(
            args.boxes,
            images,
            args.out,
            size=size,
            margin=0.0 if args.margin is None else margin_setting(args.margin[0] if len(args.margin) == 1 else args.margin),
            clahe=clahe,
            label_col=args.label_col,
            patient_col=args.patient_col,
            overwrite=args.overwrite,
        )
        return _print_summary(out)
    spec, view = _source_spec(args)
    view = args.view or view or "sagittal"
    names = list(spec.class_names or [])
    mask_source: str | MaskSource = "gt"
    if args.segmenter:
        mask_source, names = segmenter_mask_source(args.segmenter, args.device)
    disc_class = args.disc_class
    if disc_class is None:
        disc_class = names.index("disc") if "disc" in names else 1
    levels = [v.strip() for v in args.levels.split(",") if v.strip()] if args.levels else None
    out = crop_dataset(
        spec,
        args.out,
        view=view,
        size=size,
        margin=0.10 if args.margin is None else margin_setting(args.margin[0] if len(args.margin) == 1 else args.margin),
        clahe=clahe,
        mask_source=mask_source,
        disc_class=disc_class,
        min_area=args.min_area,
        levels=levels,
        square=args.square,
        overwrite=args.overwrite,
        progress=args.progress,
        inputs=[(args.segmenter, "segmenter checkpoint")] if args.segmenter else (),
    )
    summary = json.loads((out / "summary.json").read_text())
    if args.segmenter:  # name the checkpoint: "segmenter" alone does not say which
        summary["segmenter"] = str(Path(args.segmenter).resolve())
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return _print_summary(out)


__all__ = [
    "BOX_COLUMNS",
    "Box",
    "DEFAULT_CLAHE",
    "LUMBAR_LEVELS",
    "assign_levels",
    "crop_dataset",
    "crop_roi",
    "crops_from_box_csv",
    "disc_boxes",
    "enlarge_box",
    "level_names",
    "main",
    "phantom_crops",
    "phantom_crops_on_first_use",
    "segmenter_mask_source",
    "square_box",
]
