"""``spinenet diagnose``: a scan in, per-level findings out (segment -> find discs -> crop -> classify).

Sagittal: the segmenter's disc mask gives one box per disc; levels are named bottom-up (the lowest disc is
L5-S1, :func:`spinenet.roi.assign_levels`); each disc the classifier was trained on (its crop set's
``levels``, e.g. L4-L5 and L5-S1; all discs when not recorded) is cropped and enhanced exactly as the
classifier's training crops were (box + margin, optional square, crop size, CLAHE: from the classifier's
model contract, see :mod:`spinenet.contract`) and classified. Axial: the largest disc contour is
cropped and classified (healthy / bulge / central / left / right). Studies holding both views are combined
per level (:mod:`spinenet.pipeline.combine`).

Inputs: an image file (PNG, JPG, TIFF, DICOM), a folder of images (one study per image, or ``--study NAME``
for one study), a DICOM folder (one study per StudyInstanceUID, slices sorted along the slice normal, the
view taken from the slice orientation when recorded), or ``--manifest CSV`` whose ``--study-col`` groups
images (e.g. a patient's axial and sagittal slices) into studies.

Before levels are named the segmentation is checked against the view (:mod:`spinenet.pipeline.plausibility`);
an implausible image gets status ``implausible for <view>``, its reason, and no finding.

Faults stay with their input (:func:`diagnose_chunk`): an unreadable file is ``failed``, a file that is not an
image ``skipped``, each with its reason; the others are diagnosed, and the CLI exits with ``EXIT_PARTIAL``.

Outputs in ``--out``: per study ``<folder>/findings.json``, ``<folder>/overlay.jpg`` (``.png`` with
``--overlay-format png``; masks, boxes, labels at the image's resolution, at least 512 px tall; up to 8 images
side by side; sagittal: the measured posterior line, protrusion, disc heights and, at the classified levels,
the canal diameter at the disc, of :mod:`spinenet.pipeline.measurements`, whose values each sagittal disc
carries as ``measurements``, in mm when the DICOM header gives the pixel spacing, else in px; ``--overlays flagged`` or ``none`` leaves it out of
studies without a herniated disc or an image that is not ok, or of every study) and ``<folder>/report.txt``
(folder: :func:`study_folders`); ``findings.csv`` (every disc), ``summary.json`` (counts, every input's status
and reason, study id -> folder) and ``index.html``. Privacy: nothing from a DICOM header but :func:`~spinenet.utils.privacy.safe_dicom_metadata`
is written; DICOM studies are named ``study1``, ``study2``... and their slices ``slice_000``...; file paths
of DICOM inputs are never written.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from spinenet.contract import TaskKind, masks_from_logits
from spinenet.errors import ConfigError, DataError
from spinenet.loading import Predictor
from spinenet.pipeline import measurements as measure
from spinenet.pipeline.combine import (
    UNKNOWN_LEVEL,
    best_per_level,
    combine,
    herniation_probability,
    is_herniated,
)
from spinenet.pipeline.plausibility import axial_implausibility, sagittal_discs
from spinenet.roi import (
    Box,
    assign_levels,
    crop_roi,
    disc_boxes,
    enlarge_box,
    square_box,
)
from spinenet.utils.outdir import prepare_output_dir
from spinenet.utils.overlay import IMAGE_FORMATS
from spinenet.utils.progress import progress_bar

log = logging.getLogger(__name__)

VIEWS = ("sagittal", "axial")
ENGINES = ("torch", "onnxruntime")
# which studies get an overlay: every one, those with a herniated disc or an image that is not ok, none
OVERLAYS = ("all", "flagged", "none")
# the overlay's file: JPEG (default: encodes ~6x faster than PNG, whose encoding cost a third of the U-Net's CPU
# time per image; quality 90, full-resolution colour) or lossless PNG
OVERLAY_FORMATS = IMAGE_FORMATS
FINDINGS_FORMAT = "spinenet-findings"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")
NO_DISC = "no disc found"
DISCLAIMER = "Research software: not a medical device; findings need a radiologist's review."


# ---------------------------------------------------------------------------------------------------------
# core: images -> masks -> discs -> classes
# ---------------------------------------------------------------------------------------------------------
def segment(images: Sequence[np.ndarray], segmenter: Predictor) -> list[np.ndarray]:
    """Class-id masks at each image's own size: logits mapped back (padding undone), bilinear, arg-max."""
    x, regions = segmenter.contract.preprocess(images)
    return masks_from_logits(segmenter(x), images, regions)


def _disc_class(segmenter: Predictor, disc_class: int | None) -> int:
    if disc_class is not None:
        return disc_class
    return segmenter.contract.classes.index("disc") if "disc" in segmenter.contract.classes else 1


def classify_crops(
    crops: Sequence[np.ndarray], classifier: Predictor, batch_size: int, levels: Sequence[str] | None = None
) -> np.ndarray:
    """Probabilities (N, K) of uint8 crops, preprocessed as the classifier's data module did; ``levels``
    (each crop's disc level, "" when unknown) feed a classifier's level prior."""
    if not crops:
        return np.zeros((0, len(classifier.contract.classes)), np.float32)
    out = []
    for i in range(0, len(crops), batch_size):
        chunk = [c.astype(np.float32) / 255.0 for c in crops[i : i + batch_size]]
        x, _ = classifier.contract.preprocess(chunk)
        lv = None if levels is None else list(levels[i : i + batch_size])
        out.append(classifier.contract.probabilities(classifier(x, lv)).numpy())  # at its fitted temperature
    return np.concatenate(out)


MAIN_FINDING = "herniation"  # the head of a multi-task classifier that decides a level's herniation call


def _main_head(contract: Any) -> int:
    """The head named herniation (or whose column is), else the first."""
    names = [(h.name.lower(), str(h.column or "").lower()) for h in contract.heads]
    return next((i for i, (n, c) in enumerate(names) if MAIN_FINDING in n or MAIN_FINDING in c), 0)


def _head_findings(contract: Any, p: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per head of a multi-task classifier: the class it calls (its threshold, else arg-max), that class's
    probability and every class's."""
    out = {}
    for i, (head, cols) in enumerate(contract.head_slices()):
        k = contract.decide(p, i)
        q = p[cols]
        out[head.name] = {"class": head.classes[k], "probability": round(float(q[k]), 4),
                          "probabilities": {c: round(float(v), 4) for c, v in zip(head.classes, q, strict=True)},
                          "kind": head.kind, "column": head.column}
    return out


def checked_disc_boxes(
    mask: np.ndarray, view: str, disc_class: int, min_area: int, mask_classes: Sequence[str]
) -> tuple[list[Box], list[dict[str, Any]], str | None]:
    """The disc boxes levels are named on (sagittal: implausible components left out and listed, pieces of
    one disc merged, discs off the curve of the others left out and listed; axial: the largest), and why the
    mask is implausible for ``view`` (None when it is not)."""
    boxes = disc_boxes(mask, disc_class, min_area)
    if view == "axial":
        implausible = axial_implausibility(mask, boxes, mask_classes)
        return ([max(boxes, key=lambda b: b.area)] if boxes else []), [], implausible
    return sagittal_discs(boxes, mask, mask_classes)


def find_discs(
    image: np.ndarray,
    mask: np.ndarray,
    view: str,
    classifier: Predictor,
    disc_class: int,
    min_area: int,
    mask_classes: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], list[np.ndarray], list[dict[str, Any]], str | None]:
    """Discs of one image (level, boxes, whether classified), the crops of those to classify, the sagittal
    components that cannot be discs (left out before levels are named), and why the segmentation is
    implausible for ``view`` (then no disc is returned: no level is named on a slice that is not a spine in
    that view; ``mask_classes``: the segmenter's class names, see :mod:`spinenet.pipeline.plausibility`)."""
    crop = classifier.contract.crop
    assert crop is not None
    boxes, rejected, implausible = checked_disc_boxes(mask, view, disc_class, min_area, mask_classes)
    if implausible:
        return [], [], rejected, implausible
    levels = [""] * len(boxes) if view == "axial" else assign_levels(boxes)
    discs, crops = [], []
    for box, level in zip(boxes, levels, strict=True):
        roi: Box = square_box(box, image.shape) if crop.square else box
        roi = enlarge_box(roi, crop.margin, image.shape)
        classified = view == "axial" or crop.levels is None or level in crop.levels
        disc = {"level": level, "box": list(box.as_tuple()), "crop_box": list(roi.as_tuple()),
                "area": float(box.area), "classified": classified}
        if classified:
            crops.append(crop_roi(image, roi, crop.size, crop.clahe))
        discs.append(disc)
    return discs, crops, rejected, None


def check_models(view: str, segmenter: Predictor, classifier: Predictor) -> None:
    """A clear error for a view that is not known or models of the wrong task."""
    if view not in VIEWS:
        raise ConfigError(f"--view: choose one of {', '.join(VIEWS)}, got {view!r}")
    if segmenter.task is not TaskKind.SEGMENTATION:
        raise ConfigError(f"--segmenter {segmenter.source.name}: a {segmenter.task} model, not a segmenter")
    if classifier.task is not TaskKind.CLASSIFICATION:
        raise ConfigError(f"--classifier {classifier.source.name}: a {classifier.task} model, not a classifier")


def diagnose_images(
    images: Sequence[np.ndarray],
    view: str,
    segmenter: Predictor,
    classifier: Predictor,
    batch_size: int = 8,
    disc_class: int | None = None,
    min_area: int = 20,
    progress: Callable[[int], None] | None = None,
    image_levels: Sequence[str | None] | None = None,
) -> list[dict[str, Any]]:
    """Per image: ``mask`` and ``discs`` (level, box, crop_box, class, probability, probabilities,
    p_herniation; discs outside the classifier's levels have ``classified: False``), ``status`` (``ok``,
    ``no disc found`` or ``implausible for <view>``) and, unless ok, ``reason``.
    ``image_levels``: each image's level when known beforehand (axial slices), for a classifier's level prior."""
    check_models(view, segmenter, classifier)
    results: list[dict[str, Any]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x, regions = segmenter.contract.preprocess(chunk)
        given = list(image_levels[start : start + batch_size]) if image_levels else None
        results += describe_images(chunk, segmenter(x), regions, view, segmenter, classifier, batch_size,
                                   disc_class, min_area, given)
        if progress is not None:
            progress(len(chunk))
    return results


def describe_images(
    images: Sequence[np.ndarray],
    logits: torch.Tensor,
    regions: Sequence[tuple[int, int, int, int]],
    view: str,
    segmenter: Predictor,
    classifier: Predictor,
    batch_size: int = 8,
    disc_class: int | None = None,
    min_area: int = 20,
    image_levels: Sequence[str | None] | None = None,
) -> list[dict[str, Any]]:
    """What follows the segmenter, for one batch: masks, disc boxes, plausibility, levels, crops, classifier
    (the records of :func:`diagnose_images`)."""
    dc = _disc_class(segmenter, disc_class)
    multi, main = len(classifier.contract.heads) > 1, _main_head(classifier.contract)
    labels = classifier.contract.heads[main].classes if multi else classifier.contract.classes
    masks = masks_from_logits(logits, images, regions)
    per_image, crops, levels = [], [], []
    given = list(image_levels) if image_levels else [None] * len(images)
    for img, mask, known in zip(images, masks, given, strict=True):
        discs, c, dropped, implausible = find_discs(img, mask, view, classifier, dc, min_area,
                                                    segmenter.contract.classes)
        per_image.append((discs, dropped, implausible))
        crops += c
        # sagittal discs are named bottom-up; an axial slice's level comes with the input (--level-col)
        levels += [d["level"] or known or "" for d in discs if d["classified"]]
    probs = iter(classify_crops(crops, classifier, max(batch_size, 1) * 8, levels))
    results: list[dict[str, Any]] = []
    for mask, (discs, dropped, implausible) in zip(masks, per_image, strict=True):
        for d in discs:
            if not d["classified"]:
                continue
            p = next(probs)
            # a binary head's validation-chosen threshold, else the arg-max
            k = classifier.contract.decide(p, main)
            if multi:  # every finding of a multi-task model; the herniation head makes the per-level call
                d["findings"] = _head_findings(classifier.contract, p)
                p = p[classifier.contract.head_slices()[main][1]]
            d["probabilities"] = {n: round(float(v), 4) for n, v in zip(labels, p, strict=True)}
            d["class"], d["probability"] = labels[k], round(float(p[k]), 4)
            d["p_herniation"] = round(herniation_probability(view, d["probabilities"]), 4)
            d["herniated"] = is_herniated(view, d["class"])
        res = {"mask": mask, "discs": discs, "status": STATUS_OK, "view": view, "rejected": dropped}
        if implausible:
            res.update(status=f"implausible for {view}", reason=implausible)
        elif not discs:
            res.update(status=NO_DISC, reason=f"no disc contour of >= {min_area} pixels")
        results.append(res)
    return results


def attach_measurements(result: dict[str, Any], classes: Sequence[str], spacing: tuple[float, float] | None) -> None:
    """Each sagittal disc of ``result`` gets ``measurements`` (:mod:`spinenet.pipeline.measurements`, at the
    level diagnose named it; mm with ``spacing`` (row, col), else px): nothing for an image without a mask or
    disc; None values with the reason when the segmenter has no vertebra or canal class."""
    if result.get("view") != "sagittal" or result.get("mask") is None or not result["discs"]:
        return
    names = list(classes)
    if not {"disc", "vertebra", "canal"} <= set(names):
        why = f"the segmenter's classes {names} lack disc, vertebra or canal: nothing to measure"
        for d in result["discs"]:
            d["measurements"] = measure.LevelMeasurement(d["level"], "mm" if spacing else "px", reason=why).as_dict()
        return
    ids = measure.MaskClasses(names.index("disc"), names.index("vertebra"), names.index("canal"))
    found = measure.measure_sagittal(result["mask"], spacing, [(d["level"], d["box"]) for d in result["discs"]], ids)
    result["orientation"] = found.orientation
    for d, m in zip(result["discs"], found.levels, strict=True):
        d["measurements"] = m.as_dict()


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Item:
    """One input file: where its pixels come from and which study, view and level it belongs to.

    ``study`` is the raw study id (a file name, manifest value or ``study1``...); its output folder is
    :func:`study_folders`'. An input that cannot be diagnosed at all has ``status`` ``skipped`` (not an image)
    or ``failed`` and a ``reason``; it is listed in ``summary.json`` and ``index.html``, never dropped silently.
    """

    study: str
    name: str  # written to the outputs: a file name, never a DICOM header value or a DICOM file's path
    view: str
    load: Callable[[], np.ndarray]
    level: str | None = None
    dicom: dict[str, Any] = field(default_factory=dict)
    status: str = ""
    reason: str | None = None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "study"


# output names diagnose writes next to the study folders; a study may not take one of them
RESERVED_NAMES = ("findings.csv", "summary.json", "index.html", "eval.json")
MAX_FOLDER_CHARS = 80


def study_folders(studies: Iterable[str]) -> dict[str, str]:
    """Raw study id -> output folder name: file-name safe, distinct, never ``.``/``..``; a short hash of the
    raw id is appended where making it safe changed it or where it would collide (``AB 123`` and ``AB_123``,
    ``p/1`` and ``p_1``, or two ids differing only in case on a case-insensitive disk)."""
    import hashlib

    raw = list(dict.fromkeys(studies))
    base = {s: _safe(s).lstrip(".")[:MAX_FOLDER_CHARS] or "study" for s in raw}
    # an id that is a safe name already keeps it, unless another such id differs from it only in case
    plain = [s for s in raw if base[s] == s and s.lower() not in RESERVED_NAMES]
    lowered = [s.lower() for s in plain]
    keep = {s for s in plain if lowered.count(s.lower()) == 1}
    out: dict[str, str] = {s: s for s in keep}
    used = {s.lower() for s in keep}
    for s in raw:
        if s in keep:
            continue
        digest = hashlib.sha1(s.encode("utf-8")).hexdigest()
        k = 8
        name = f"{base[s]}-{digest[:k]}"
        while name.lower() in used:  # practically never: a longer hash
            k += 4
            name = f"{base[s]}-{digest[:k]}"
        used.add(name.lower())
        out[s] = name
    return {s: out[s] for s in raw}


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def read_failure(path: Path, error: Exception) -> str:
    """A short reason why ``path`` could not be read, without its folder (DICOM folders may be named after
    the patient): empty, truncated or corrupt, not an image, DICOM without pixel data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        return f"cannot read the file ({e.strerror or e})"
    if size == 0:
        return "empty file (0 bytes)"
    from spinenet.data.io import is_dicom

    if is_dicom(path):
        try:
            import pydicom

            ds = pydicom.dcmread(path, force=True)
            if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
                return "DICOM file without pixel data"
        except Exception:  # noqa: BLE001 - any pydicom failure means the same to the user
            return f"not a readable DICOM file ({size} bytes)"
        return "cannot decode the DICOM pixel data" + (f": {error}".replace(str(path), "<file>") if error else "")
    kind = next((k for magic, k in _MAGIC if head.startswith(magic)), None)
    if kind:
        return f"truncated or corrupt {kind} ({size} bytes)"
    return f"not a readable image (no PNG, JPEG, TIFF or DICOM signature; {size} bytes)"


def _loader(path: Path) -> Callable[[], np.ndarray]:
    from spinenet.data.io import read_image

    def load() -> np.ndarray:
        try:
            return read_image(path)
        except Exception as e:  # noqa: BLE001 - OpenCV, PIL and pydicom raise many types for a bad file
            raise DataError(read_failure(path, e)) from e

    return load


def _unloadable(study: str, name: str, view: str, status: str, reason: str) -> Item:
    def load() -> np.ndarray:
        raise DataError(reason)

    return Item(study, name, view, load, status=status, reason=reason)


def _dicom_view(header: Any, default: str) -> str:
    """sagittal when the slice normal runs left-right (x), axial when it runs head-foot (z)."""
    try:
        o = [float(v) for v in header.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return default
    normal = np.abs(np.cross(o[:3], o[3:]))
    axis = int(normal.argmax())
    return {0: "sagittal", 2: "axial"}.get(axis, default)


def dicom_items(
    folder: Path, view: str, view_given: bool, study: str | None, files: Sequence[Path] | None = None
) -> list[Item]:
    """Slices of every DICOM series among ``files`` (default: every file under ``folder``); one study per
    StudyInstanceUID (named study1...). A file that is not a readable DICOM image is a failed item named
    ``dicom_file_NNN`` (its place among the DICOM files sorted by path: their paths are never written)."""
    import pydicom

    from spinenet.data.importers import _DicomFile, _sort_dicom
    from spinenet.utils.privacy import safe_dicom_metadata

    if files is None:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and p.name.upper() != "DICOMDIR")
    groups: dict[str, list[Any]] = {}
    items: list[Item] = []
    for k, path in enumerate(files):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as e:  # noqa: BLE001 - pydicom raises many types for a file that is not DICOM
            items.append(_unloadable("", f"dicom_file_{k:03d}", view, "failed", read_failure(path, e)))
            continue
        if "Rows" not in ds or "Columns" not in ds:  # structured reports, presentation states ...
            items.append(_unloadable("", f"dicom_file_{k:03d}", view, "skipped",
                                     "DICOM file without an image (no Rows/Columns: a report or presentation "
                                     "state?)"))
            continue
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")) or str(path.parent), []).append(_DicomFile(path, ds))
    studies: dict[str, str] = {}
    series_count: dict[str, int] = {}
    for uid, series in groups.items():
        header = series[0].ds
        key = str(header.get("StudyInstanceUID", "") or uid)
        name = study or studies.setdefault(key, f"study{len(studies) + 1}")
        series_view = view if view_given else _dicom_view(header, view)
        series_no = series_count[name] = series_count.get(name, 0) + 1
        try:
            series, _ = _sort_dicom(series, "the input folder")
        except DataError as e:  # mixed orientations, duplicate positions: the series as a whole is not usable
            items += [_unloadable(name, f"series{series_no}_slice_{k:03d}", series_view, "failed", str(e))
                      for k in range(len(series))]
            continue
        meta = safe_dicom_metadata(header)
        for k, f in enumerate(series):
            items.append(Item(name, f"series{series_no}_slice_{k:03d}", series_view, _loader(f.path), dicom=meta))
    return items


def manifest_items(manifest: str | Path, *, image_col: str = "image", study_col: str | None = None,
                   view_col: str | None = None, level_col: str | None = None, study: str | None = None,
                   view: str = "sagittal") -> list[Item]:
    """One item per row of the CSV ``manifest`` (image paths relative to it); a row whose image is missing is
    a failed item (the others still run). ``study`` names one study for all rows, else ``study_col`` groups
    them (else one study per image); ``view`` is every image's view unless ``view_col`` gives it per row."""
    import pandas as pd

    csv = Path(manifest)
    if not csv.is_file():
        raise DataError(f"--manifest {csv}: not found")
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    need = [c for c in (image_col, study_col, view_col, level_col) if c]
    absent = [c for c in need if c not in df.columns]
    if absent:
        raise DataError(f"{csv}: missing column(s) {absent}; its columns are: {', '.join(df.columns)}")
    items, problems = [], []
    for i, row in enumerate(df.to_dict("records")):
        row_view = row[view_col] if view_col else view
        if row_view not in VIEWS:
            problems.append(f"line {i + 2}: view {row_view!r} is not one of {', '.join(VIEWS)}")
            continue
        row_study = study or (row[study_col] if study_col else Path(row[image_col]).stem)
        level = (row[level_col] or None) if level_col else None
        path = csv.parent / row[image_col]
        if not path.is_file():
            items.append(_unloadable(row_study, row[image_col], row_view, "failed",
                                     f"manifest line {i + 2}: file not found under {csv.parent}"))
            continue
        items.append(Item(row_study, row[image_col], row_view, _loader(path), level=level))
    if problems:
        raise DataError(f"{csv}: {len(problems)} bad row(s):\n  " + "\n  ".join(problems[:10]))
    return items


def collect_items(src: str | Path | None = None, *, manifest: str | Path | None = None, view: str = "sagittal",
                  view_given: bool = False, study: str | None = None, image_col: str = "image",
                  study_col: str | None = None, view_col: str | None = None,
                  level_col: str | None = None) -> list[Item]:
    """The inputs of a run, from ``manifest`` (see :func:`manifest_items`, which takes the ``*_col``
    arguments) or else ``src``, an image, DICOM file or folder: every file of a folder becomes an item
    (images; DICOM slices grouped into series; other files ``skipped`` with the reason); hidden files and
    DICOMDIR indexes are ignored. ``view_given``: ``view`` was chosen, not a default, so it overrides the
    view DICOM slice orientations give."""
    from spinenet.data.io import is_dicom

    if manifest:
        return manifest_items(manifest, image_col=image_col, study_col=study_col, view_col=view_col,
                              level_col=level_col, study=study, view=view)
    if not src:
        raise ConfigError("spinenet diagnose: give an INPUT (image, folder, DICOM folder) or --manifest CSV")
    src = Path(src)
    if not src.exists():
        raise DataError(f"input not found: {src}")
    if src.is_file():
        if is_dicom(src):
            return dicom_items_from_file(src, view, view_given, study)
        return [Item(study or src.stem, src.name, view, _loader(src))]
    return folder_items(src, view, view_given, study)


def folder_items(src: Path, view: str = "sagittal", view_given: bool = False, study: str | None = None) -> list[Item]:
    """The items of a folder (see :func:`collect_items`): one study per image file unless ``study`` names one
    for all; DICOM slices grouped into series and studies; other files ``skipped``."""
    from spinenet.data.io import is_dicom

    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.name.upper() != "DICOMDIR")
    raster = {p for p in files if p.suffix.lower() in IMAGE_SUFFIXES[:5] and not is_dicom(p)}
    dicoms = [p for p in files if p not in raster and is_dicom(p)]
    items: list[Item] = []
    if dicoms:
        items += dicom_items(src, view, view_given, study, dicoms)
    dicom_set = set(dicoms)
    for k, p in enumerate(files):
        rel = p.relative_to(src).as_posix()
        if p in raster:
            items.append(Item(study or p.relative_to(src).with_suffix("").as_posix(), rel, view,
                              _loader(p)))
        elif p not in dicom_set:
            # in a DICOM folder, named by place, not path: DICOM folders may carry the patient's name
            name = f"other_file_{k:03d}{p.suffix.lower()[:8]}" if dicoms and not raster else rel
            items.append(_unloadable("", name, view, "skipped",
                                     f"not an image ({p.suffix.lower() or 'no suffix'}; diagnose reads "
                                     f"{', '.join(IMAGE_SUFFIXES)} and DICOM)"))
    if not items:
        raise DataError(f"{src}: no files in it (hidden files and DICOMDIR are ignored)")
    return items


def dicom_items_from_file(path: Path, view: str = "sagittal", view_given: bool = False,
                          study: str | None = None) -> list[Item]:
    """The one item of a single DICOM file given as the input (study ``study`` or ``study1``); its view is
    ``view`` if ``view_given``, else the one its slice orientation gives (``view`` if none)."""
    import pydicom

    from spinenet.utils.privacy import safe_dicom_metadata

    name = study or "study1"
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types
        return [_unloadable(name, "slice_000", view, "failed", read_failure(path, e))]
    item_view = view if view_given else _dicom_view(header, view)
    return [Item(name, "slice_000", item_view, _loader(path), dicom=safe_dicom_metadata(header))]


# ---------------------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------------------
MIN_OVERLAY_HEIGHT = 512
MAX_OVERLAY_IMAGES = 8  # images drawn side by side in a study's overlay; the others' pixels are not kept
THUMBNAIL_WIDTH = 240  # per image of the overlay, up to 3 images
STATUS_OK, STATUS_FAILED, STATUS_SKIPPED = "ok", "failed", "skipped"


def _overlay(image: np.ndarray, result: dict[str, Any], min_height: int = MIN_OVERLAY_HEIGHT) -> np.ndarray:
    """Masks, disc boxes and level labels over the image at its own resolution (small images enlarged to
    ``min_height`` px tall), the labels sized for that height and never overlapping each other."""
    from spinenet.utils.overlay import draw_labels, label_style, overlay_mask, to_rgb_uint8

    h, w = image.shape[:2]
    s = max(1.0, min_height / h)
    size = (round(w * s), round(h * s))
    img = to_rgb_uint8(image)  # bytes before enlarging: a quarter of the pixels to convert
    if s != 1.0:
        img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    if result.get("mask") is None:  # the models failed on this image: shown with its status, no mask
        mask = np.zeros((size[1], size[0]), np.uint8)
    else:
        mask = cv2.resize(result["mask"].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    rgb = overlay_mask(img, mask)
    _, thick = label_style(size[1])
    # the canal's diameter only at the levels the classifier assessed: a line at every level hides the canal
    measure.draw_measurements(rgb, [d["measurements"] for d in result["discs"] if d.get("measurements")], s,
                              max(1, thick // 2), canal_at={d["level"] for d in result["discs"] if d["classified"]})
    labels = []
    for d in result["discs"]:
        x0, y0, x1, y1 = (round(v * s) for v in d["crop_box"])
        bad = d.get("herniated", False)
        colour = (255, 60, 60) if bad else (60, 255, 60) if d["classified"] else (160, 160, 160)
        cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), colour, thick)
        text = d["level"] or ""
        if d["classified"]:
            text = f"{text} {d['class']} p(hern) {d['p_herniation']:.2f}".strip()
        prot = (d.get("measurements") or {}).get("protrusion")
        if prot is not None:
            text = f"{text} prot {prot:.1f} {d['measurements']['unit']}".strip()
        labels.append(((x0, y0, x1, y1), text, colour))
    if result["status"] != STATUS_OK:
        labels.append(((0, 0, 0, 0), result["status"], (255, 255, 0)))
    draw_labels(rgb, labels)
    return rgb


def _montage(tiles: list[np.ndarray]) -> np.ndarray:
    """Tiles side by side at their own resolution, padded at the bottom to the tallest (no resampling)."""
    height = max(t.shape[0] for t in tiles)
    parts: list[np.ndarray] = []
    for t in tiles:
        if t.shape[0] < height:
            t = np.concatenate([t, np.zeros((height - t.shape[0], t.shape[1], 3), np.uint8)], axis=0)
        parts += [t, np.full((height, 4, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], axis=1)


def study_findings(images: list[dict[str, Any]]) -> dict[str, Any]:
    """Per view, one finding per level (rule 1 of :mod:`~spinenet.pipeline.combine`); combined when both."""
    by_view: dict[str, list[dict[str, Any]]] = {v: [] for v in VIEWS}
    for im in images:
        for d in im["discs"]:
            if d["classified"]:
                by_view[im["view"]].append(dict(d, image=im["image"], level=d["level"] or im.get("level") or ""))
    out: dict[str, Any] = {}
    keep = ("level", "class", "probability", "p_herniation", "herniated", "probabilities", "findings", "box",
            "image", "measurements")
    for view, discs in by_view.items():
        if discs:
            out[view] = [{k: d[k] for k in keep if k in d} for d in best_per_level(discs).values()]
    if by_view["sagittal"] and by_view["axial"]:
        out["combined"] = combine(by_view["sagittal"], by_view["axial"])
    return out


def _p_herniation_meaning(view: str, probabilities: dict[str, float]) -> str:
    from spinenet.pipeline.combine import HERNIATION_SIDES, NEGATIVE_LABELS

    if view == "axial":
        return "p(" + ") + p(".join(HERNIATION_SIDES) + ")"
    negative = next((n for n in NEGATIVE_LABELS if n in probabilities), NEGATIVE_LABELS[0])
    return f"1 - p({negative})"


def _measurement_lines(discs: Sequence[dict[str, Any]]) -> list[str]:
    """Per sagittal level: protrusion, disc heights, DHI and canal diameters (see measurements.py)."""
    rows = [d for d in discs if d.get("measurements")]
    if not rows:
        return []

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:g}"

    lines = [f"Measurements from the segmentation, per level ({rows[0]['measurements']['unit']}; protrusion "
             "beyond the vertebral bodies' posterior line, + = into the canal; disc height anterior/middle/posterior; "
             "DHI; canal AP diameter at the disc):"]
    for d in rows:
        m = d["measurements"]
        line = (f"  {d['level'] or UNKNOWN_LEVEL}: protrusion {fmt(m['protrusion'])}, height "
                f"{fmt(m['disc_height_anterior'])}/{fmt(m['disc_height_middle'])}/{fmt(m['disc_height_posterior'])}, "
                f"DHI {fmt(m['disc_height_index'])}, canal {fmt(m['canal_ap_disc'])}")
        lines.append(line + (f" ({m['reason']})" if m.get("reason") else ""))
    return lines


def _report(study: str, doc: dict[str, Any]) -> str:
    views = [im["view"] for im in doc["images"]]
    lines = [f"spinenet diagnosis: study {study}",
             f"{len(views)} image(s): " + ", ".join(f"{views.count(v)} {v}" for v in VIEWS if v in views), ""]
    f = doc["findings"]
    if f:
        lines += ["p(herniation): the classifier's probability that the disc is herniated, per level.", ""]
    if "combined" in f:
        lines.append("Combined (sagittal + axial), per level:")
        for c in f["combined"]:
            side = f", {c['side']}" if c["side"] and c["side"] != "diffuse" else ""
            views_p = "; ".join(f"{v} p(herniation) {c[v]['p_herniation']:.2f}" for v in VIEWS
                                if c.get(v) and "p_herniation" in c[v])
            lines.append(f"  {c['level']}: {c['finding']}{side} (probability of this finding "
                         f"{c['probability']:.2f}; {views_p}; {c['agreement']})")
    for view in VIEWS:
        if view in f:
            probs = f[view][0].get("probabilities") or {}
            lines.append(f"{view.capitalize()}, per level (p(herniation) = {_p_herniation_meaning(view, probs)}):")
            for d in f[view]:
                word = "herniation" if d["herniated"] else "no herniation"
                line = f"  {d['level'] or UNKNOWN_LEVEL}: {word}, p(herniation) {d['p_herniation']:.2f}"
                if len(d.get("probabilities") or {}) > 2:  # several classes: every class, named
                    line += (f" (class {d['class']}; class probabilities: "
                             + ", ".join(f"{k} {v:.2f}" for k, v in d["probabilities"].items()) + ")")
                if d.get("findings"):  # a multi-task classifier: every finding it grades
                    line += "; " + ", ".join(f"{name} {x['class']} ({x['probability']:.2f})"
                                             for name, x in d["findings"].items() if name != MAIN_FINDING)
                lines.append(line)
    lines += _measurement_lines(f.get("sagittal") or [])
    if not f:
        lines.append("No disc was classified.")
    not_ok = [im for im in doc["images"] if im["status"] != STATUS_OK]
    implausible = [im for im in not_ok if im["status"].startswith("implausible")]
    for im in implausible:
        lines.append(f"{im['image']}: {im['status']}, no level named ({im.get('reason')})")
    failed = [im for im in not_ok if im["status"] in (STATUS_FAILED, STATUS_SKIPPED)]
    for im in failed:
        lines.append(f"{im['image']}: {im['status']} ({im.get('reason')})")
    missing = [im["image"] for im in not_ok if im["status"] == NO_DISC]
    if missing:
        lines.append(f"No disc found in {len(missing)} image(s): " + ", ".join(missing[:20])
                     + (" ..." if len(missing) > 20 else ""))
    lines += ["", f"Segmenter: {doc['models']['segmenter']}; classifier: {doc['models']['classifier']}", DISCLAIMER]
    return "\n".join(lines) + "\n"


def _prepare_out(out: Path, studies: Iterable[str], overwrite: bool) -> None:
    # --overwrite clears only what this command writes, and only in a folder that spinenet wrote
    prepare_output_dir(out, (), overwrite, "diagnose", clear=[*studies, "findings.csv", "summary.json", "index.html"])


def _json_text(value: Any, levels: int = 5, pad: str = "") -> str:
    """JSON with the outer ``levels`` of containers one item per line, indented, and what lies deeper on one
    line (findings.json: a disc's measurements on one line; a list of numbers or names on one line).
    ``json.dumps(indent=2)`` runs the pure-Python encoder over every value, several milliseconds per image; the
    C encoder does the lines."""
    if levels <= 0 or not isinstance(value, (dict, list)) or not value or (
            isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value)):
        return json.dumps(value)
    inner = pad + "  "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(str(k))}: {_json_text(v, levels - 1, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    return "[\n" + ",\n".join(f"{inner}{_json_text(v, levels - 1, inner)}" for v in value) + f"\n{pad}]"


def flagged(images: Sequence[dict[str, Any]]) -> bool:
    """A study to look at: a disc called herniated, or an image whose status is not ok."""
    return any(im["status"] != STATUS_OK or any(d.get("herniated") for d in im["discs"]) for im in images)


def write_study(out: Path, study: str, images: list[dict[str, Any]], models: dict[str, str],
                folder: str | None = None, overlays: str = "all", overlay_format: str = "jpg") -> dict[str, Any]:
    """``findings.json``, ``overlay.jpg`` or ``.png`` (``overlay_format``; images that could be read;
    ``overlays``: see :data:`OVERLAYS`) and ``report.txt`` of one study in ``out/<folder>`` (default: the study
    id, which must then be a safe folder name)."""
    target = out / (folder or study)
    target.mkdir(parents=True, exist_ok=True)
    public = []
    for im in images:
        entry = {k: im[k] for k in ("image", "view", "status", "reason", "size", "level", "orientation")
                 if im.get(k) is not None}
        entry["discs"] = im["discs"]
        if im.get("rejected"):  # segmented components left out as implausible discs (see find_discs)
            entry["rejected_components"] = im["rejected"]
        if im.get("dicom"):
            entry["dicom"] = im["dicom"]
        public.append(entry)
    doc = {"format": FINDINGS_FORMAT, "version": 1, "study": study, "folder": folder or study, "models": models,
           "images": public, "findings": study_findings(images), "disclaimer": DISCLAIMER}
    draw = overlays == "all" or (overlays == "flagged" and flagged(images))
    drawn = [im for im in images if im.get("pixels") is not None][:MAX_OVERLAY_IMAGES] if draw else []
    tiles = [_overlay(im["pixels"], im) for im in drawn]
    doc["overlay"] = f"overlay.{overlay_format}" if tiles else None
    doc["overlay_images"] = len(tiles)
    (target / "findings.json").write_text(_json_text(doc) + "\n")
    if tiles:
        from spinenet.utils.overlay import save_image

        save_image(_montage(tiles), target / doc["overlay"])
    (target / "report.txt").write_text(_report(study, doc))
    return doc


def _level_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(level, finding, p(herniation), status) per level of a study, for index.html."""
    f = doc["findings"]
    rows = []
    if "combined" in f:
        for c in f["combined"]:
            p = [c[v]["p_herniation"] for v in VIEWS if c.get(v) and "p_herniation" in c[v]]
            side = f", {c['side']}" if c["side"] and c["side"] != "diffuse" else ""
            rows.append((c["level"], f"{c['finding']}{side} (combined)",
                         f"{sum(p) / len(p):.2f}" if p else "", c["agreement"]))
    else:
        for view in VIEWS:
            for d in f.get(view, []):
                word = "herniation" if d["herniated"] else "no herniation"
                rows.append((d["level"] or UNKNOWN_LEVEL, f"{word} ({view}: {d['class']})",
                             f"{d['p_herniation']:.2f}", f"ok ({d['image']})"))
    for im in doc["images"]:
        if im["status"] != STATUS_OK:
            rows.append(("-", "-", "-", f"{im['image']}: {im['status']}" + (f" ({im['reason']})" if im.get("reason")
                                                                               else "")))
    return rows


def write_index(out: Path, summary: dict[str, Any], docs: Sequence[dict[str, Any]]) -> Path:
    """``index.html`` over every study: a thumbnail linking to its overlay, its per-level table and the inputs
    that could not be diagnosed. One file, no scripts, no external assets; every name is HTML-escaped."""
    from html import escape
    from urllib.parse import quote

    counts = summary["status_counts"]
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8"><title>spinenet diagnosis</title>',
        "<style>body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;"
        "margin:.5em 0}td,th{border:1px solid #bbb;padding:.2em .6em;text-align:left;vertical-align:top}"
        "th{background:#eee}section{display:flex;align-items:flex-start;gap:1.5em;border-top:1px solid #ccc;padding:1em 0}"
        ".bad{color:#a00}.warn{color:#a60}</style></head><body>",
        "<h1>spinenet diagnosis</h1>",
        f"<p>{summary['studies']} studies, {len(summary['inputs'])} inputs: "
        + ", ".join(f"{escape(str(v))} {escape(k)}" for k, v in counts.items() if v) + "</p>",
        f"<p>Segmenter: {escape(summary['models']['segmenter'])}; classifier: "
        f"{escape(summary['models']['classifier'])}. p(herniation): the classifier's probability that the disc "
        "is herniated.</p>",
        f"<p><em>{escape(DISCLAIMER)}</em></p>",
    ]
    for doc in docs:
        href = quote(doc["folder"])
        parts.append(f"<section><div><h2>{escape(doc['study'])}</h2>")
        if doc.get("overlay"):
            width = THUMBNAIL_WIDTH * min(3, max(1, doc.get("overlay_images", 1)))
            src = f"{href}/{quote(doc['overlay'])}"
            parts.append(f'<a href="{src}"><img src="{src}" width="{width}" '
                         f'alt="overlay of study {escape(doc["study"])}"></a>')
        parts.append(f'<p><a href="{href}/report.txt">report.txt</a> &middot; '
                     f'<a href="{href}/findings.json">findings.json</a></p></div>')
        parts.append("<table><tr><th>level</th><th>finding</th><th>p(herniation)</th><th>status</th></tr>")
        for level, finding, p, status in _level_rows(doc):
            cls = ' class="bad"' if finding.startswith("herniation") else ""
            st = ' class="warn"' if level == "-" else ""
            parts.append(f"<tr><td>{escape(level)}</td><td{cls}>{escape(finding)}</td><td>{escape(p)}</td>"
                         f"<td{st}>{escape(status)}</td></tr>")
        parts.append("</table></section>")
    loose = [r for r in summary["inputs"] if not r["study"]]
    if loose:
        parts.append("<h2>Inputs in no study</h2><table><tr><th>file</th><th>status</th><th>reason</th></tr>")
        parts += [f"<tr><td>{escape(r['file'])}</td><td class=\"warn\">{escape(r['status'])}</td>"
                  f"<td>{escape(r['reason'] or '')}</td></tr>" for r in loose]
        parts.append("</table>")
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def _failed_record(item: Item, status: str, reason: str | None) -> dict[str, Any]:
    return {"mask": None, "discs": [], "status": status, "reason": reason, "view": item.view, "rejected": []}


@dataclass
class _Batch:
    """One batch of consecutive items on its way through the stages of :func:`run`."""

    items: Sequence[Item]
    records: list[dict[str, Any] | None]
    pixels: dict[int, np.ndarray] = field(default_factory=dict)  # item index -> decoded image
    groups: dict[str, list[int]] = field(default_factory=dict)  # view -> item indices
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # view -> the segmenter's input batch
    regions: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    # views whose batch failed in a stage: their images are re-run one by one (only the image at fault fails)
    one_by_one: set[str] = field(default_factory=set)


def _stage_prepare(items: Sequence[Item], segmenters: dict[str, Predictor]) -> _Batch:
    """Decode each file (a fault stays with its file) and preprocess each view's images for its segmenter."""
    batch = _Batch(items, [None] * len(items))
    for k, item in enumerate(items):
        if item.status:
            batch.records[k] = _failed_record(item, item.status, item.reason)
            continue
        try:
            batch.pixels[k] = item.load()
        except DataError as e:
            batch.records[k] = _failed_record(item, STATUS_FAILED, str(e))
            continue
        batch.groups.setdefault(item.view, []).append(k)
    for view, ks in batch.groups.items():
        try:
            batch.inputs[view], batch.regions[view] = segmenters[view].contract.preprocess(
                [batch.pixels[k] for k in ks])
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 - found and reported per image in _stage_describe
            batch.one_by_one.add(view)
    return batch


def _stage_segment(batch: _Batch, segmenters: dict[str, Predictor]) -> _Batch:
    """The segmenters alone, so that one thread keeps them busy while other threads decode and describe."""
    for view, x in batch.inputs.items():
        if view in batch.one_by_one:
            continue
        try:
            batch.logits[view] = segmenters[view](x)
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 - found and reported per image in _stage_describe
            batch.one_by_one.add(view)
    batch.inputs.clear()
    return batch


def _stage_describe(
    batch: _Batch,
    segmenters: dict[str, Predictor],
    classifiers: dict[str, Predictor],
    batch_size: int,
    disc_class: int | None,
    min_area: int,
) -> list[dict[str, Any]]:
    """Masks, discs, plausibility, crops and classes of the batch: one status record per item, in order."""
    items = batch.items
    for view, ks in batch.groups.items():
        seg, cls = segmenters[view], classifiers[view]
        results: list[dict[str, Any]] = []
        if view not in batch.one_by_one:
            try:
                images = [batch.pixels[k] for k in ks]
                results = describe_images(images, batch.logits.pop(view), batch.regions[view], view, seg, cls,
                                          batch_size, disc_class, min_area, [items[k].level for k in ks])
            except ConfigError:
                raise
            except Exception:  # noqa: BLE001 - find the image at fault; the others are still diagnosed
                results = []
        if not results:
            for k in ks:
                try:
                    results += diagnose_images([batch.pixels[k]], view, seg, cls, batch_size, disc_class, min_area,
                                               image_levels=[items[k].level])
                except ConfigError:
                    raise
                except Exception as e:  # noqa: BLE001
                    log.debug("diagnosis of %s failed", items[k].name, exc_info=True)
                    results.append(_failed_record(items[k], STATUS_FAILED,
                                                  f"could not be diagnosed: {type(e).__name__}: {e}"))
        for k, res in zip(ks, results, strict=True):
            img = batch.pixels[k]
            res["pixels"], res["size"] = img, list(img.shape[:2])
            attach_measurements(res, seg.contract.classes, measure.spacing_from_dicom(items[k].dicom))
            batch.records[k] = res
    out = []
    for item, rec in zip(items, batch.records, strict=True):
        assert rec is not None
        rec.update(image=item.name, study=item.study, level=item.level, dicom=item.dicom)
        out.append(rec)
    return out


def diagnose_chunk(
    items: Sequence[Item],
    segmenters: dict[str, Predictor],
    classifiers: dict[str, Predictor],
    batch_size: int = 8,
    disc_class: int | None = None,
    min_area: int = 20,
) -> list[dict[str, Any]]:
    """One status record per item, in order: the stages of :func:`run` one after the other (load, segment,
    check, classify).

    Faults stay with their input: a file that cannot be read is ``failed`` with the reason; when a batch
    fails in the models, its images are run one by one so that only the image at fault fails."""
    out: list[dict[str, Any]] = []
    for start in range(0, len(items), batch_size):
        batch = _stage_segment(_stage_prepare(items[start : start + batch_size], segmenters), segmenters)
        out += _stage_describe(batch, segmenters, classifiers, batch_size, disc_class, min_area)
    return out


def _status_key(status: str) -> str:
    return "implausible" if status.startswith("implausible") else status


FINDINGS_COLUMNS = ("study", "folder", "image", "view", "status", "reason", "level", "box", "crop_box", "area",
                    "classified", "class", "probability", "p_herniation", "herniated", "findings", "unit",
                    *measure.VALUE_FIELDS, "protrusion_line", "measurement_reason")


def _findings_column(disc: dict[str, Any] | None) -> dict[str, Any]:
    """A multi-task classifier's findings in one cell: ``bulging=1 (0.91); pfirrmann=3 (0.62); ...``."""
    f = (disc or {}).get("findings")
    return {"findings": "; ".join(f"{n}={x['class']} ({x['probability']:.2f})" for n, x in f.items())} if f else {}


def _measurement_columns(disc: dict[str, Any] | None) -> dict[str, Any]:
    m = (disc or {}).get("measurements") or {}
    out = {k: m.get(k) for k in ("unit", *measure.VALUE_FIELDS, "protrusion_line") if m.get(k) is not None}
    if m.get("reason"):
        out["measurement_reason"] = m["reason"]
    return out


def pipelined(
    chunks: Iterable[Any], stages: Sequence[tuple[Callable[[Any], Any], int]], window: int
) -> Iterable[Any]:
    """Each chunk through ``stages`` (function, threads) in order, yielded in input order; stage ``i`` of chunk
    ``k + 1`` runs while stage ``i + 1`` of chunk ``k`` does. At most ``window`` chunks are in flight: memory
    does not grow with the input. Threads suffice: OpenCV, ONNX Runtime and torch release the GIL."""
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    pools = [ThreadPoolExecutor(n, thread_name_prefix=f"diagnose-{i}") for i, (_, n) in enumerate(stages)]

    def after(fn: Callable[[Any], Any], previous: Future) -> Any:
        return fn(previous.result())  # the previous stage's pool is separate: waiting here cannot deadlock

    in_flight: deque[Future] = deque()
    try:
        for chunk in chunks:
            if len(in_flight) >= window:
                yield in_flight.popleft().result()
            fut = pools[0].submit(stages[0][0], chunk)
            for pool, (fn, _) in zip(pools[1:], stages[1:], strict=True):
                fut = pool.submit(after, fn, fut)
            in_flight.append(fut)
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


class _Writer:
    """Writes each study as soon as its last image is diagnosed (in a few threads: overlay drawing and PNG
    encoding release the GIL) and ``findings.csv`` row by row; keeps only small per-image records for
    ``summary.json`` and ``index.html``."""

    def __init__(self, out: Path, items: Sequence[Item], folders: dict[str, str], models: dict[str, str],
                 threads: int = 2, overlays: str = "all", overlay_format: str = "jpg"):
        import csv
        from concurrent.futures import ThreadPoolExecutor

        self.out, self.folders, self.models, self.overlays = out, folders, models, overlays
        self.overlay_format = overlay_format
        self.last = {item.study: k for k, item in enumerate(items) if item.study}
        self.open: dict[str, list[dict[str, Any]]] = {}  # studies not complete yet
        self.drawn: dict[str, int] = {}  # per study: images kept with their pixels for the overlay
        self.docs: dict[str, dict[str, Any]] = {}
        self.inputs: list[dict[str, Any]] = []
        self.discs = 0
        self.seen = 0
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="diagnose-write")
        self.pending: list[Any] = []
        self.max_pending = 2 * threads
        self.csv_file = open(out / "findings.csv", "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.csv = csv.DictWriter(self.csv_file, FINDINGS_COLUMNS, restval="", extrasaction="ignore",
                                  lineterminator="\n")
        self.csv.writeheader()

    def add(self, rec: dict[str, Any]) -> None:
        """One item's status record, in input order."""
        from spinenet.utils.safe_csv import neutralise_rows

        k, self.seen = self.seen, self.seen + 1
        study = rec["study"]
        folder = self.folders.get(study)
        self.inputs.append({"file": rec["image"], "study": study or None, "folder": folder, "view": rec["view"],
                            "status": rec["status"], "reason": rec.get("reason")})
        self.discs += len(rec["discs"])
        if not study:
            return
        self.csv.writerows(neutralise_rows(
            {"study": study, "folder": folder, "image": rec["image"], "view": rec["view"], "status": rec["status"],
             "reason": rec.get("reason") or "", **(d or {}), **_measurement_columns(d), **_findings_column(d)}
            for d in rec["discs"] or [None]))
        images = self.open.setdefault(study, [])
        if rec.get("pixels") is not None:
            if self.overlays == "none" or self.drawn.get(study, 0) >= MAX_OVERLAY_IMAGES:
                rec.pop("pixels")  # not drawn: pixels and mask need not wait for the study's end
                rec.pop("mask", None)
            else:
                self.drawn[study] = self.drawn.get(study, 0) + 1
        images.append(rec)
        if self.last[study] == k:
            self._flush_pending(self.max_pending - 1)
            self.pending.append((study, self.pool.submit(write_study, self.out, study, self.open.pop(study),
                                                         self.models, self.folders[study], self.overlays,
                                                         self.overlay_format)))

    def _flush_pending(self, keep: int) -> None:
        while len(self.pending) > keep:
            study, fut = self.pending.pop(0)
            doc = fut.result()
            # what index.html needs of a study: no pixels, masks or per-disc records
            self.docs[study] = {k: doc[k] for k in ("study", "folder", "overlay", "overlay_images", "findings")}
            self.docs[study]["images"] = [{k: im.get(k) for k in ("image", "status", "reason")} for im in doc["images"]]

    def close(self) -> None:
        try:
            self._flush_pending(0)
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.csv_file.close()


def run(
    items: Sequence[Item],
    segmenters: dict[str, Predictor],
    classifiers: dict[str, Predictor],
    out: Path,
    batch_size: int = 8,
    overwrite: bool = False,
    min_area: int = 20,
    disc_class: int | None = None,
    progress: bool = True,
    window: int = 4,
    threads: int | None = None,
    overlays: str = "all",
    overlay_format: str = "jpg",
) -> dict[str, Any]:
    """Diagnose ``items`` with the per-view models; write every study's outputs, ``findings.csv``,
    ``summary.json`` (every input with its status and reason; study id -> folder) and ``index.html``;
    return the summary.

    A pipeline (:func:`pipelined`) of batches of ``batch_size`` consecutive items: decode + preprocess
    (``threads`` threads), segment (one thread), masks + discs + crops + classify (``threads`` threads), with
    at most ``window`` batches in flight; each study is written as soon as its last image is done (in
    ``threads`` threads; default: the CPU count, 2 to 8). ``overlays``: which studies get an overlay
    (:data:`OVERLAYS`), ``overlay_format``: its file (:data:`OVERLAY_FORMATS`)."""
    from contextlib import closing
    from functools import partial


    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if overlays not in OVERLAYS:
        raise ConfigError(f"--overlays: choose one of {', '.join(OVERLAYS)}, got {overlays!r}")
    if overlay_format not in OVERLAY_FORMATS:
        raise ConfigError(f"--overlay-format: choose one of {', '.join(OVERLAY_FORMATS)}, got {overlay_format!r}")
    threads = threads or min(8, max(2, os.cpu_count() or 2))
    for view in {i.view for i in items if not i.status}:
        if view not in segmenters or view not in classifiers:
            raise ConfigError(
                f"{view} images need a {view} segmenter and classifier (--segmenter {view}=CKPT "
                f"--classifier {view}=CKPT, or plain CKPTs with --view {view})"
            )
        check_models(view, segmenters[view], classifiers[view])
    studies = list(dict.fromkeys(i.study for i in items if i.study))
    folders = study_folders(studies)
    _prepare_out(out, folders.values(), overwrite)
    models = {"segmenter": ", ".join(f"{v}={p.source.name}" for v, p in segmenters.items()),
              "classifier": ", ".join(f"{v}={p.source.name}" for v, p in classifiers.items())}
    writer = _Writer(out, items, folders, models, threads, overlays, overlay_format)
    stages = [(partial(_stage_prepare, segmenters=segmenters), threads),
              (partial(_stage_segment, segmenters=segmenters), 1),  # the models' own threads run it in parallel
              (partial(_stage_describe, segmenters=segmenters, classifiers=classifiers, batch_size=batch_size,
                       disc_class=disc_class, min_area=min_area), threads)]
    chunks = (items[start : start + batch_size] for start in range(0, len(items), batch_size))
    bar = progress_bar(len(items), "diagnose", None if progress else False)  # on a terminal only
    try:
        with closing(pipelined(chunks, stages, max(window, 1))) as batches:  # closed: its threads end on errors
            for records in batches:
                for rec in records:
                    writer.add(rec)
                bar.update(len(records))
    finally:
        bar.close()
        writer.close()
    inputs = writer.inputs
    counts = {k: 0 for k in (STATUS_OK, NO_DISC, "implausible", STATUS_FAILED, STATUS_SKIPPED)}
    for r in inputs:
        counts[_status_key(r["status"])] += 1
    summary = {"studies": len(studies), "images": len(inputs) - counts[STATUS_SKIPPED],
               "status_counts": counts, "images_without_disc": counts[NO_DISC], "discs": writer.discs,
               "models": models, "batch_size": batch_size, "study_folders": folders, "inputs": inputs}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_index(out, summary, [writer.docs[s] for s in studies])
    return summary


def summary_line(summary: dict[str, Any], out: Path) -> str:
    """``diagnose: 12 inputs, 10 ok, 2 failed (see out/summary.json)``: the counts that are not zero."""
    counts = ", ".join(f"{v} {k}" for k, v in summary["status_counts"].items() if v)
    return f"diagnose: {len(summary['inputs'])} inputs, {counts or 'none'} (see {out / 'summary.json'})"
