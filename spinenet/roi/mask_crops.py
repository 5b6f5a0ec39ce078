"""A crop data set from a segmentation data set: its ground-truth masks or a segmenter's (step 5 of
:mod:`spinenet.roi`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinenet.contract import clahe_setting
from spinenet.data.io import read_image, read_mask
from spinenet.data.manifest import DatasetSpec, load_manifest
from spinenet.errors import ConfigError, DataError
from spinenet.pipeline.plausibility import sagittal_discs
from spinenet.roi.geometry import (
    DEFAULT_CLAHE,
    Box,
    crop_roi,
    disc_boxes,
    enlarge_box,
    size_pair,
    square_box,
)
from spinenet.roi.levels import assign_levels
from spinenet.roi.writers import CropWriter, discard_stage, nothing_read, publish_output, stage_output
from spinenet.utils.progress import progress as with_progress

VIEWS = ("sagittal", "axial")

MaskSource = Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]


def dataset_spec(spec: Any) -> Any:
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
    mask_classes: Sequence[str] = (),
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
    source_image, level, disc_index, x0, y0, x1, y1, area, cx, cy`` (the box actually cropped, after margin and
    clipping; ``cx, cy``: the disc's centroid), the source row's other columns, and ``label``: axial: the slice's ``dataset.label_col`` value;
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
    spec = dataset_spec(spec)
    size_t = size_pair(size)
    _check_settings(spec, clahe, mask_source)
    df = load_manifest(spec)
    inputs = [(spec.root, "data root"), (spec.manifest_path, "manifest"), *inputs]
    stage, made = stage_output(out_dir, overwrite, inputs)
    try:
        writer = CropWriter(stage, out_dir)
        recipe = _Recipe(
            spec=spec,
            view=view,
            size=size_t,
            margin=margin,
            clahe=clahe,
            mask_source=mask_source,
            disc_class=disc_class,
            min_area=min_area,
            keep=set(levels) if levels is not None else None,
            upper_levels=upper_levels,
            square=square,
            carried=_carried_columns(df, spec),
            mask_classes=tuple(mask_classes),
        )
        n_read = 0
        for rec in with_progress(df.to_dict("records"), total=len(df), desc="cropping discs", enabled=progress):
            try:
                image, mask = _read_row(rec, spec, mask_source)
            except DataError as exc:  # listed with its reason; the other rows are cropped
                writer.fail(int(rec["csv_line"]), str(rec[spec.image_col]), str(exc))
                continue
            n_read += 1
            _crop_row(rec, image, mask, recipe, writer)
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
            raise nothing_read(writer.failed, len(df), out_dir)
        writer.finish(summary)
        return publish_output(stage, out_dir, overwrite, inputs)
    finally:
        discard_stage(stage, made)


def _check_settings(spec: DatasetSpec, clahe: Mapping[str, Any] | None, mask_source: str | MaskSource) -> None:
    """Fail on a bad CLAHE or mask setting before any file is written."""
    if clahe is not None:
        clahe_setting(clahe, "roi.clahe")
    if isinstance(mask_source, str):
        if mask_source != "gt":
            raise ConfigError(f"roi.mask_source: 'gt' or a segmenter callable, got {mask_source!r}")
        if not spec.mask_col or not spec.mask_values:
            raise ConfigError("roi.mask_source=gt needs dataset.mask_col and dataset.mask_values")


def _carried_columns(df: pd.DataFrame, spec: DatasetSpec) -> list[str]:
    """The source manifest's columns that each crop's row keeps (not the file and patient columns)."""
    drop = {spec.image_col, spec.mask_col, spec.patient_col, "image_path", "mask_path", "label_idx", "csv_line"}
    return [c for c in df.columns if c not in drop]


@dataclass(frozen=True)
class _Recipe:
    """How :func:`crop_dataset` finds, names and cuts the discs of each row."""

    spec: DatasetSpec
    view: str
    size: tuple[int, int]
    margin: float | Sequence[float]
    clahe: Mapping[str, Any] | None
    mask_source: str | MaskSource
    disc_class: int
    min_area: int
    keep: set[str] | None  # the levels to keep; None: all
    upper_levels: str
    square: bool
    carried: list[str]
    mask_classes: tuple[str, ...] = ()  # the segmenter's class names (plausibility checks)


def _crop_row(rec: Mapping[str, Any], image: np.ndarray, mask: np.ndarray, recipe: _Recipe, writer: CropWriter) -> None:
    """Crop each disc of one row, or list the row in ``missing.csv`` when its mask has none."""
    pid, source = str(rec[recipe.spec.patient_col]), str(rec[recipe.spec.image_col])
    boxes = disc_boxes(mask, recipe.disc_class, recipe.min_area)
    if not boxes:
        from_what = "gt" if isinstance(recipe.mask_source, str) else "segmenter"
        writer.missing.append(
            {
                "patient_id": pid,
                "source_image": source,
                "reason": f"no disc contour of >= {recipe.min_area} pixels (class {recipe.disc_class}, "
                f"mask from {from_what})",
            }
        )
        return
    chosen, names = _named_discs(rec, boxes, mask, recipe, writer, pid, source)
    stem = Path(source).stem
    for idx, (box, level) in enumerate(zip(chosen, names, strict=True)):
        if recipe.keep is not None and level not in recipe.keep:
            continue
        roi = square_box(box, image.shape) if recipe.square else box
        roi = enlarge_box(roi, recipe.margin, image.shape)
        crop = crop_roi(image, roi, recipe.size, recipe.clahe)
        row = _manifest_row(rec, recipe, pid, source, level, idx, roi, box)
        writer.save(crop, f"{stem}_{level or idx}", row)


def _named_discs(
    rec: Mapping[str, Any], boxes: list[Box], mask: np.ndarray, recipe: _Recipe, writer: CropWriter, pid: str,
    source: str,
) -> tuple[list[Box], list[str]]:
    """The discs to crop and their names: axial, the largest with the row's level; sagittal, every disc (from a
    segmenter: every disc ``diagnose`` would name, none on an implausible slice) with its level counted
    bottom-up."""
    if recipe.view == "axial":
        level = str(rec["level"]) if "level" in rec and not pd.isna(rec["level"]) else ""
        return [max(boxes, key=lambda b: b.area)], [level]
    chosen = boxes
    if callable(recipe.mask_source):
        # as `spinenet diagnose`: one false component below L5-S1 renames every disc above it
        chosen, rejected, implausible = sagittal_discs(boxes, mask, recipe.mask_classes)
        writer.rejected += [{"patient_id": pid, "source_image": source, **r} for r in rejected]
        if implausible or not chosen:
            why = (f"implausible for sagittal: {implausible}" if implausible else
                   f"no plausible disc: {len(rejected)} component(s) left out (summary.json: rejected_components)")
            writer.missing.append({"patient_id": pid, "source_image": source, "reason": f"{why} (mask from segmenter)"})
            return [], []
    return chosen, assign_levels(chosen, recipe.upper_levels)


def _manifest_row(
    rec: Mapping[str, Any], recipe: _Recipe, pid: str, source: str, level: str, idx: int, roi: Box, disc: Box
) -> dict[str, Any]:
    """One crop's manifest row: the source row's carried columns, where the crop came from, and its label."""
    row: dict[str, Any] = {c: rec[c] for c in recipe.carried}
    row.update(
        patient_id=pid,
        source_image=source,
        level=level,
        disc_index=idx,
        x0=roi.x0,
        y0=roi.y0,
        x1=roi.x1,
        y1=roi.y1,
        area=disc.area,
        cx=round(disc.cx, 1),  # the disc's centroid: the box above is clipped at the image edge
        cy=round(disc.cy, 1),
    )
    if recipe.view == "sagittal":
        herniated = _disc_label(rec, level, recipe.spec.label_col)
        if herniated is not None:
            row.update(herniated=herniated, label=level if herniated else "healthy")
    elif recipe.spec.label_col:
        row["label"] = rec[recipe.spec.label_col]
    return row


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


def name_segmenter(out_dir: str | Path, checkpoint: str | Path) -> None:
    """Record the segmenter's checkpoint in ``summary.json``: ``mask_source: segmenter`` alone does not say which."""
    path = Path(out_dir) / "summary.json"
    summary = json.loads(path.read_text())
    summary["segmenter"] = str(Path(checkpoint).resolve())
    path.write_text(json.dumps(summary, indent=2, default=str))
