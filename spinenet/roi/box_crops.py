"""A crop data set from a bounding-box CSV (Al-Ajaj 2024, VinDr-SpineXR style)."""

from __future__ import annotations

import functools
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from spinenet.contract import clahe_setting
from spinenet.data.io import image_size, read_image
from spinenet.data.manifest import not_utf8_message
from spinenet.errors import DataError
from spinenet.roi.geometry import (
    DEFAULT_CLAHE,
    Box,
    crop_roi,
    enlarge_box,
    size_pair,
    square_box,
)
from spinenet.roi.writers import CropWriter, discard_stage, nothing_read, publish_output, stage_output

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
    df, label_col = _read_box_csv(csv_path, label_col, patient_col)
    size_t = size_pair(size)
    if clahe is not None:
        clahe_setting(clahe, "roi.clahe")
    jobs, failed = _check_rows(df, csv_path, root)

    inputs = [(csv_path, "box CSV"), (root, "image folder")]
    stage, made = stage_output(out_dir, overwrite, inputs)
    try:
        writer = CropWriter(stage, out_dir)
        for line, image_id, reason in failed:
            writer.fail(line, image_id, reason)
        carried = [c for c in df.columns if c not in ("image_id", label_col, *BOX_COLUMNS, patient_col)]
        cut = functools.partial(crop_roi, size=size_t, clahe=clahe)
        n_done = _write_crops(jobs, root, writer, carried, label_col, patient_col, square, margin, cut)
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
            raise nothing_read(writer.failed, n_images, out_dir)
        writer.finish(summary)
        return publish_output(stage, out_dir, overwrite, inputs)
    finally:
        discard_stage(stage, made)


def _read_box_csv(csv_path: Path, label_col: str | None, patient_col: str | None) -> tuple[pd.DataFrame, str]:
    """The box CSV as text and its label column; ``DataError`` when it is missing, unreadable or lacks columns."""
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
    return df, label_col


class _Job(NamedTuple):
    """A row to crop: its CSV line, its fields, its image and its box (both None: a row without a box)."""

    line: int
    rec: dict[str, Any]
    path: Path | None
    coords: tuple[float, ...] | None


class _BadRow(Exception):
    """A row the user must fix (its box, or an image path leading out of the image folder)."""


def _check_rows(df: pd.DataFrame, csv_path: Path, root: Path) -> tuple[list[_Job], list[tuple[int, str, str]]]:
    """Every row checked before anything is written: the rows to crop, and ``(line, image_id, reason)`` of
    those whose image cannot be read (they fail, the others go on); ``DataError`` listing all bad rows."""
    problems: list[str] = []
    failed: list[tuple[int, str, str]] = []
    sizes: dict[Path, tuple[int, int] | str] = {}  # a str: why the image cannot be read
    jobs: list[_Job] = []
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2  # header is line 1
        try:
            job = _check_row(line, rec, root, sizes)
        except _BadRow as exc:
            problems.append(str(exc))
            continue
        if isinstance(job, str):
            failed.append((line, str(rec["image_id"]), job))
        else:
            jobs.append(job)
    if problems:
        shown = "\n  ".join(problems[:10]) + (
            f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise DataError(f"{csv_path}: {len(problems)} bad row(s):\n  {shown}")
    return jobs, failed


def _check_row(line: int, rec: dict[str, Any], root: Path, sizes: dict[Path, tuple[int, int] | str]) -> _Job | str:
    """One row's job, or why its image cannot be read; ``_BadRow`` when the row itself is wrong.

    ``sizes`` caches each image's size (or why it cannot be read) across the rows of one image."""
    image_id = rec["image_id"]
    if pd.isna(image_id) or not str(image_id).strip():
        raise _BadRow(f"line {line}: empty image_id")
    raw = [rec[c] for c in BOX_COLUMNS]
    if all(pd.isna(v) for v in raw):
        return _Job(line, rec, None, None)
    try:
        coords = tuple(float(v) for v in raw)
        if any(math.isnan(v) for v in coords):
            raise ValueError
    except (TypeError, ValueError):
        raise _BadRow(
            f"line {line} ({image_id}): box {dict(zip(BOX_COLUMNS, raw, strict=True))} is not "
            "four numbers (leave all four empty for an image without a finding)"
        ) from None
    if coords[0] >= coords[2] or coords[1] >= coords[3]:
        raise _BadRow(f"line {line} ({image_id}): xmin < xmax and ymin < ymax needed, got {coords}")
    path = _find_image(root, str(image_id).strip())
    if path is not None and not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root)):
        raise _BadRow(f"line {line}: image {image_id!r} leads outside the image folder {root}")
    if path is None:
        return f"image not found under {root} (tried {', '.join(IMAGE_SUFFIXES)})"
    if path not in sizes:
        try:
            sizes[path] = image_size(path)
        except DataError as exc:
            sizes[path] = str(exc)
    size = sizes[path]
    if isinstance(size, str):
        return size
    h, w = size
    if coords[0] >= w or coords[1] >= h or coords[2] <= 0 or coords[3] <= 0:
        raise _BadRow(f"line {line} ({image_id}): box {coords} lies outside the {w}×{h} image {path}")
    return _Job(line, rec, path, coords)


def _write_crops(
    jobs: list[_Job],
    root: Path,
    writer: CropWriter,
    carried: list[str],
    label_col: str,
    patient_col: str | None,
    square: bool,
    margin: float | Sequence[float],
    cut: Callable[[np.ndarray, Box], np.ndarray],
) -> int:
    """Crop each job's box (a row without one goes to ``missing.csv``); return the rows cropped or listed."""
    counts: Counter[str] = Counter()
    cache: dict[Path, np.ndarray | str] = {}
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
        crop = cut(image, roi)
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
    return n_done
