"""``spinenet diagnose``: a scan in, per-level findings out (segment -> find discs -> crop -> classify).

Sagittal: the segmenter's disc mask gives one box per disc; levels are named bottom-up (the lowest disc is
L5-S1, :func:`spinenet.roi.assign_levels`); each disc the classifier was trained on (its crop set's
``levels``, e.g. L4-L5 and L5-S1; all discs when not recorded) is cropped and enhanced exactly as the
classifier's training crops were (box + margin, optional square, crop size, CLAHE: from the classifier's
saved data config, see :mod:`spinenet.pipeline.models`) and classified. Axial: the largest disc contour is
cropped and classified (healthy / bulge / central / left / right). Studies holding both views are combined
per level (:mod:`spinenet.pipeline.combine`).

Inputs: an image file (PNG, JPG, TIFF, DICOM), a folder of images (one study per image, or ``--study NAME``
for one study), a DICOM folder (one study per StudyInstanceUID, slices sorted along the slice normal, the
view taken from the slice orientation when recorded), or ``--manifest CSV`` whose ``--study-col`` groups
images (e.g. a patient's axial and sagittal slices) into studies.

Outputs in ``--out``: per study ``<study>/findings.json``, ``<study>/overlay.png`` (masks, boxes, labels;
up to 8 images side by side) and ``<study>/report.txt``; ``findings.csv`` (every disc) and
``summary.json``. Privacy: nothing from a DICOM header but :func:`~spinenet.utils.privacy.safe_dicom_metadata`
is written; DICOM studies are named ``study1``, ``study2``... and their slices ``slice_000``...; file paths
of DICOM inputs are never written.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from spinenet.errors import ConfigError, DataError
from spinenet.pipeline.combine import (
    UNKNOWN_LEVEL,
    best_per_level,
    combine,
    herniation_probability,
    is_herniated,
)
from spinenet.pipeline.models import Predictor, load_predictor, prepare_inputs
from spinenet.roi import (
    Box,
    assign_levels,
    crop_roi,
    disc_boxes,
    enlarge_box,
    plausible_sagittal_discs,
    square_box,
)
from spinenet.utils.outdir import prepare_output_dir, refuse_input_overlap
from spinenet.utils.safe_csv import neutralise_frame

log = logging.getLogger(__name__)

VIEWS = ("sagittal", "axial")
ENGINES = ("torch", "onnxruntime")
FINDINGS_FORMAT = "spinenet-findings"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")
DISCLAIMER = "Research software: not a medical device; findings need a radiologist's review."


# ---------------------------------------------------------------------------------------------------------
# core: images -> masks -> discs -> classes
# ---------------------------------------------------------------------------------------------------------
def segment(images: Sequence[np.ndarray], segmenter: Predictor) -> list[np.ndarray]:
    """Class-id masks at each image's own size: logits mapped back (padding undone), bilinear, arg-max."""
    x, regions = prepare_inputs(images, segmenter.prep)
    logits = segmenter(x)
    masks = []
    for img, lg, (y0, y1, x0, x1) in zip(images, logits, regions, strict=True):
        h, w = img.shape[:2]
        lg = lg[None, :, y0:y1, x0:x1]
        if lg.shape[-2:] != (h, w):
            lg = F.interpolate(lg, size=(h, w), mode="bilinear", align_corners=False)
        masks.append(channel_argmax(lg[0]))
    return masks


def channel_argmax(logits: torch.Tensor) -> np.ndarray:
    """``logits.argmax(0)`` for (C, H, W) in NumPy: torch's strided reduction over a small C took 12 ms per
    256x256 image on CPU (a quarter of the U-Net's own time), NumPy's takes under 3 ms."""
    return np.argmax(logits.numpy(), axis=0)


def _disc_class(segmenter: Predictor, disc_class: int | None) -> int:
    if disc_class is not None:
        return disc_class
    return segmenter.prep.classes.index("disc") if "disc" in segmenter.prep.classes else 1


def classify_crops(
    crops: Sequence[np.ndarray], classifier: Predictor, batch_size: int, levels: Sequence[str] | None = None
) -> np.ndarray:
    """Probabilities (N, K) of uint8 crops, preprocessed as the classifier's data module did; ``levels``
    (each crop's disc level, "" when unknown) feed a classifier's level prior."""
    if not crops:
        return np.zeros((0, len(classifier.prep.classes)), np.float32)
    out = []
    for i in range(0, len(crops), batch_size):
        chunk = [c.astype(np.float32) / 255.0 for c in crops[i : i + batch_size]]
        x, _ = prepare_inputs(chunk, classifier.prep)
        lv = None if levels is None else list(levels[i : i + batch_size])
        out.append(torch.softmax(classifier(x, lv).float(), dim=1).numpy())
    return np.concatenate(out)


def find_discs(
    image: np.ndarray,
    mask: np.ndarray,
    view: str,
    classifier: Predictor,
    disc_class: int,
    min_area: int,
) -> tuple[list[dict[str, Any]], list[np.ndarray], list[dict[str, Any]]]:
    """Discs of one image (level, boxes, whether classified), the crops of those to classify, and the sagittal
    components that cannot be discs (left out before levels are named)."""
    crop = classifier.prep.crop
    assert crop is not None
    boxes = disc_boxes(mask, disc_class, min_area)
    if view == "axial":
        boxes = [max(boxes, key=lambda b: b.area)] if boxes else []
        levels, rejected = [""] * len(boxes), []
    else:
        boxes, rejected = plausible_sagittal_discs(boxes)
        levels = assign_levels(boxes)
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
    return discs, crops, rejected


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
    p_herniation; discs outside the classifier's levels have ``classified: False``) and ``status``.
    ``image_levels``: each image's level when known beforehand (axial slices), for a classifier's level prior."""
    if view not in VIEWS:
        raise ConfigError(f"--view: choose one of {', '.join(VIEWS)}, got {view!r}")
    if segmenter.task != "segmentation":
        raise ConfigError(f"--segmenter {segmenter.source.name}: a {segmenter.task} model, not a segmenter")
    if classifier.task != "classification":
        raise ConfigError(f"--classifier {classifier.source.name}: a {classifier.task} model, not a classifier")
    dc = _disc_class(segmenter, disc_class)
    labels = classifier.prep.classes
    results: list[dict[str, Any]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        masks = segment(chunk, segmenter)
        per_image, crops, levels = [], [], []
        given = list(image_levels[start : start + batch_size]) if image_levels else [None] * len(chunk)
        for img, mask, known in zip(chunk, masks, given, strict=True):
            discs, c, dropped = find_discs(img, mask, view, classifier, dc, min_area)
            per_image.append((discs, dropped))
            crops += c
            # sagittal discs are named bottom-up; an axial slice's level comes with the input (--level-col)
            levels += [d["level"] or known or "" for d in discs if d["classified"]]
        probs = iter(classify_crops(crops, classifier, max(batch_size, 1) * 8, levels))
        for mask, (discs, dropped) in zip(masks, per_image, strict=True):
            for d in discs:
                if not d["classified"]:
                    continue
                p = next(probs)
                k = int(p.argmax())
                d["probabilities"] = {n: round(float(v), 4) for n, v in zip(labels, p, strict=True)}
                d["class"], d["probability"] = labels[k], round(float(p[k]), 4)
                d["p_herniation"] = round(herniation_probability(view, d["probabilities"]), 4)
                d["herniated"] = is_herniated(view, d["class"])
            status = "ok" if discs else f"no disc found (no disc contour of >= {min_area} pixels)"
            results.append({"mask": mask, "discs": discs, "status": status, "view": view, "rejected": dropped})
        if progress is not None:
            progress(len(chunk))
    return results


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Item:
    """One image to diagnose: where its pixels come from and which study, view and level it belongs to."""

    study: str
    name: str  # written to the outputs: a file name, never a DICOM header value
    view: str
    load: Callable[[], np.ndarray]
    level: str | None = None
    dicom: dict[str, Any] = field(default_factory=dict)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "study"


def _loader(path: Path) -> Callable[[], np.ndarray]:
    from spinenet.data.io import read_image

    return lambda: read_image(path)


def _dicom_view(header: Any, default: str) -> str:
    """sagittal when the slice normal runs left-right (x), axial when it runs head-foot (z)."""
    try:
        o = [float(v) for v in header.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return default
    normal = np.abs(np.cross(o[:3], o[3:]))
    axis = int(normal.argmax())
    return {0: "sagittal", 2: "axial"}.get(axis, default)


def dicom_items(folder: Path, view: str, view_given: bool, study: str | None) -> list[Item]:
    """Slices of every DICOM series under ``folder``; one study per StudyInstanceUID (named study1...)."""
    from spinenet.data.importers import _find_dicom_series, _sort_dicom
    from spinenet.utils.privacy import safe_dicom_metadata

    groups, _ = _find_dicom_series(folder)
    studies: dict[str, str] = {}
    series_count: dict[str, int] = {}
    items = []
    for uid, files in groups.items():
        files, _ = _sort_dicom(files, "the input folder")
        header = files[0].ds
        key = str(header.get("StudyInstanceUID", "") or uid)
        name = study or studies.setdefault(key, f"study{len(studies) + 1}")
        series_view = view if view_given else _dicom_view(header, view)
        series_no = series_count[name] = series_count.get(name, 0) + 1
        meta = safe_dicom_metadata(header)
        for k, f in enumerate(files):
            items.append(Item(name, f"series{series_no}_slice_{k:03d}", series_view, _loader(f.path), dicom=meta))
    return items


def manifest_items(args: argparse.Namespace) -> list[Item]:
    import pandas as pd

    csv = Path(args.manifest)
    if not csv.is_file():
        raise DataError(f"--manifest {csv}: not found")
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    need = [c for c in (args.image_col, args.study_col, args.view_col, args.level_col) if c]
    absent = [c for c in need if c not in df.columns]
    if absent:
        raise DataError(f"{csv}: missing column(s) {absent}; its columns are: {', '.join(df.columns)}")
    items, problems = [], []
    for i, row in enumerate(df.to_dict("records")):
        path = csv.parent / row[args.image_col]
        if not path.is_file():
            problems.append(f"line {i + 2}: image {row[args.image_col]!r} not found under {csv.parent}")
            continue
        view = row[args.view_col] if args.view_col else args.view
        if view not in VIEWS:
            problems.append(f"line {i + 2}: view {view!r} is not one of {', '.join(VIEWS)}")
            continue
        study = args.study or (row[args.study_col] if args.study_col else Path(row[args.image_col]).stem)
        level = (row[args.level_col] or None) if args.level_col else None
        items.append(Item(_safe(study), row[args.image_col], view, _loader(path), level=level))
    if problems:
        raise DataError(f"{csv}: {len(problems)} bad row(s):\n  " + "\n  ".join(problems[:10]))
    return items


def collect_items(args: argparse.Namespace) -> list[Item]:
    from spinenet.data.io import is_dicom

    if args.manifest:
        return manifest_items(args)
    if not args.input:
        raise ConfigError("spinenet diagnose: give an INPUT (image, folder, DICOM folder) or --manifest CSV")
    src = Path(args.input)
    if not src.exists():
        raise DataError(f"input not found: {src}")
    if src.is_file():
        if is_dicom(src):
            return dicom_items_from_file(src, args)
        return [Item(_safe(args.study or src.stem), src.name, args.view, _loader(src))]
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    if any(is_dicom(p) and p.suffix.lower() not in IMAGE_SUFFIXES[:5] for p in files):
        return dicom_items(src, args.view, args.view_given, args.study)
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise DataError(f"{src}: no images ({', '.join(IMAGE_SUFFIXES)}) or DICOM files found")
    return [
        Item(_safe(args.study or p.relative_to(src).with_suffix("").as_posix()), p.relative_to(src).as_posix(),
             args.view, _loader(p))
        for p in images
    ]


def dicom_items_from_file(path: Path, args: argparse.Namespace) -> list[Item]:
    import pydicom

    from spinenet.utils.privacy import safe_dicom_metadata

    header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    view = args.view if args.view_given else _dicom_view(header, args.view)
    return [Item(args.study or "study1", "slice_000", view, _loader(path), dicom=safe_dicom_metadata(header))]


# ---------------------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------------------
def _overlay(image: np.ndarray, result: dict[str, Any], height: int = 256) -> np.ndarray:
    from spinenet.utils.overlay import overlay_mask

    h, w = image.shape[:2]
    s = max(1.0, height / h)  # enlarge small images so the labels stay readable
    size = (round(w * s), round(h * s))
    img = cv2.resize(np.asarray(image, np.float32), size, interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(result["mask"].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    rgb = overlay_mask(img, mask)
    for d in result["discs"]:
        x0, y0, x1, y1 = (round(v * s) for v in d["crop_box"])
        bad = d.get("herniated", False)
        colour = (255, 60, 60) if bad else (60, 255, 60) if d["classified"] else (160, 160, 160)
        cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), colour, 1)
        text = d["level"] or ""
        if d["classified"]:
            text = f"{text} {d['class']} {d['probability']:.2f}".strip()
        cv2.putText(rgb, text, (min(x1 + 2, size[0] - 60), max(10, y0 + 8)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35, colour, 1, cv2.LINE_AA)
    if not result["discs"]:
        cv2.putText(rgb, "no disc found", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
    return rgb


def _montage(tiles: list[np.ndarray], height: int = 256) -> np.ndarray:
    resized = [cv2.resize(t, (round(t.shape[1] * height / t.shape[0]), height)) for t in tiles]
    sep = np.full((height, 4, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for t in resized:
        parts += [t, sep]
    return np.concatenate(parts[:-1], axis=1)


def study_findings(images: list[dict[str, Any]]) -> dict[str, Any]:
    """Per view, one finding per level (rule 1 of :mod:`~spinenet.pipeline.combine`); combined when both."""
    by_view: dict[str, list[dict[str, Any]]] = {v: [] for v in VIEWS}
    for im in images:
        for d in im["discs"]:
            if d["classified"]:
                by_view[im["view"]].append(dict(d, image=im["image"], level=d["level"] or im.get("level") or ""))
    out: dict[str, Any] = {}
    keep = ("level", "class", "probability", "p_herniation", "herniated", "probabilities", "box", "image")
    for view, discs in by_view.items():
        if discs:
            out[view] = [{k: d[k] for k in keep if k in d} for d in best_per_level(discs).values()]
    if by_view["sagittal"] and by_view["axial"]:
        out["combined"] = combine(by_view["sagittal"], by_view["axial"])
    return out


def _report(study: str, doc: dict[str, Any]) -> str:
    views = [im["view"] for im in doc["images"]]
    lines = [f"spinenet diagnosis: study {study}",
             f"{len(views)} image(s): " + ", ".join(f"{views.count(v)} {v}" for v in VIEWS if v in views), ""]
    f = doc["findings"]
    if "combined" in f:
        lines.append("Combined (sagittal + axial), per level:")
        for c in f["combined"]:
            side = f", {c['side']}" if c["side"] and c["side"] != "diffuse" else ""
            lines.append(f"  {c['level']}: {c['finding']}{side} (p={c['probability']:.2f}; {c['agreement']})")
    for view in VIEWS:
        if view in f:
            lines.append(f"{view.capitalize()}, per level:")
            for d in f[view]:
                word = "herniation" if d["herniated"] else "no herniation"
                lines.append(f"  {d['level'] or UNKNOWN_LEVEL}: {d['class']} ({word}; p={d['probability']:.2f})")
    if not f:
        lines.append("No disc was classified.")
    missing = [im["image"] for im in doc["images"] if not im["discs"]]
    if missing:
        lines.append(f"No disc found in {len(missing)} image(s): " + ", ".join(missing[:20])
                     + (" ..." if len(missing) > 20 else ""))
    lines += ["", f"Segmenter: {doc['models']['segmenter']}; classifier: {doc['models']['classifier']}", DISCLAIMER]
    return "\n".join(lines) + "\n"


def _prepare_out(out: Path, studies: Iterable[str], overwrite: bool, inputs: Sequence[Any] = ()) -> None:
    # --overwrite clears only what this command writes, and only in a folder that spinenet wrote
    prepare_output_dir(out, inputs, overwrite, "diagnose", clear=[*studies, "findings.csv", "summary.json"])


def write_study(out: Path, study: str, images: list[dict[str, Any]], models: dict[str, str]) -> dict[str, Any]:
    folder = out / study
    folder.mkdir(parents=True, exist_ok=True)
    public = []
    for im in images:
        entry = {k: im[k] for k in ("image", "view", "status", "size", "level") if im.get(k) is not None}
        entry["discs"] = im["discs"]
        if im.get("rejected"):  # segmented components left out as implausible discs (see find_discs)
            entry["rejected_components"] = im["rejected"]
        if im.get("dicom"):
            entry["dicom"] = im["dicom"]
        public.append(entry)
    doc = {"format": FINDINGS_FORMAT, "version": 1, "study": study, "models": models, "images": public,
           "findings": study_findings(images), "disclaimer": DISCLAIMER}
    (folder / "findings.json").write_text(json.dumps(doc, indent=2) + "\n")
    tiles = [_overlay(im["pixels"], im) for im in images[:8]]
    from spinenet.utils.overlay import save_png

    save_png(_montage(tiles), folder / "overlay.png")
    (folder / "report.txt").write_text(_report(study, doc))
    return doc


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
) -> dict[str, Any]:
    """Diagnose ``items`` with the per-view models; write every study's outputs; return the summary."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    for view in {i.view for i in items}:
        if view not in segmenters or view not in classifiers:
            raise ConfigError(
                f"{view} images need a {view} segmenter and classifier (--segmenter {view}=CKPT "
                f"--classifier {view}=CKPT, or plain CKPTs with --view {view})"
            )
    studies = list(dict.fromkeys(i.study for i in items))
    _prepare_out(out, studies, overwrite)
    done: dict[str, list[dict[str, Any]]] = {s: [] for s in studies}
    bar = tqdm(total=len(items), unit="img", desc="diagnose", disable=None if progress else True)
    for view in VIEWS:
        group = [i for i in items if i.view == view]
        for start in range(0, len(group), batch_size * 4):  # read a few batches at a time: bounded memory
            chunk = group[start : start + batch_size * 4]
            pixels = [i.load() for i in chunk]
            results = diagnose_images(pixels, view, segmenters[view], classifiers[view], batch_size,
                                      disc_class, min_area, progress=bar.update,
                                      image_levels=[i.level for i in chunk])
            for item, img, res in zip(chunk, pixels, results, strict=True):
                res.update(image=item.name, pixels=img, size=list(img.shape[:2]), level=item.level,
                           dicom=item.dicom)
                done[item.study].append(res)
    bar.close()
    models = {"segmenter": ", ".join(f"{v}={p.source.name}" for v, p in segmenters.items()),
              "classifier": ", ".join(f"{v}={p.source.name}" for v, p in classifiers.items())}
    rows = []
    for study in studies:
        images = done[study]
        write_study(out, study, images, models)
        for im in images:
            for d in im["discs"] or [None]:
                rows.append({"study": study, "image": im["image"], "view": im["view"], "status": im["status"],
                             **({k: v for k, v in d.items() if k not in ("probabilities",)} if d else {})})
        for im in images:  # pixels and masks stay out of memory once written
            im.pop("pixels", None)
            im.pop("mask", None)
    import pandas as pd

    neutralise_frame(pd.DataFrame(rows)).to_csv(out / "findings.csv", index=False)
    summary = {"studies": len(studies), "images": len(items),
               "images_without_disc": sum(1 for s in done.values() for im in s if not im["discs"]),
               "discs": sum(len(im["discs"]) for s in done.values() for im in s), "models": models,
               "batch_size": batch_size}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------
def _models_by_view(values: Sequence[str], view: str, what: str, device: str,
                    allow_torchscript: bool = False) -> dict[str, Predictor]:
    out: dict[str, Predictor] = {}
    for value in values:
        v, sep, path = value.partition("=")
        if not sep:
            v, path = view, value
        if v not in VIEWS:
            raise ConfigError(f"--{what} {value}: the view before '=' must be one of {', '.join(VIEWS)}")
        out[v] = load_predictor(path, device, allow_torchscript)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spinenet diagnose",
        description="Per-level disc findings from an image, a folder of images or a DICOM series: "
        "segment, find discs, name levels bottom-up, crop as in training, classify.",
        epilog="examples:\n"
        "  spinenet diagnose scan.png --segmenter seg.ckpt --classifier cls.ckpt --out findings\n"
        "  spinenet diagnose dicom_dir/ --segmenter export/segmenter.onnx --classifier export/classifier.onnx "
        "--out findings\n"
        "  spinenet diagnose --manifest studies.csv --study-col patient_id --view-col view \\\n"
        "      --segmenter sagittal=s.ckpt --classifier sagittal=c.ckpt \\\n"
        "      --segmenter axial=sa.ckpt --classifier axial=ca.ckpt --out findings",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", nargs="?", help="image file, folder of images, or DICOM folder")
    p.add_argument("--segmenter", action="append", required=True, metavar="[VIEW=]FILE",
                   help=".ckpt, ensemble .json, or exported .onnx (or .pt with --allow-torchscript); VIEW= for a "
                   "second view (repeatable)")
    p.add_argument("--classifier", action="append", required=True, metavar="[VIEW=]FILE")
    p.add_argument("--view", choices=VIEWS, default=None,
                   help="view of the inputs (default sagittal; DICOM: from the slice orientation)")
    p.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    p.add_argument("--engine", choices=ENGINES, default="torch",
                   help="torch: run checkpoints in PyTorch; onnxruntime: export them to ONNX in memory (checked "
                   "against PyTorch) and run ONNX Runtime (needs spinenet-mri[onnx]; compare with spinenet bench diagnose)")
    p.add_argument("--study", help="treat every input as one study with this name")
    p.add_argument("--manifest", help="CSV listing images (paths relative to it)")
    p.add_argument("--image-col", default="image")
    p.add_argument("--study-col", help="manifest column grouping images into studies (patient or study id)")
    p.add_argument("--view-col", help="manifest column giving each image's view (sagittal/axial)")
    p.add_argument("--level-col", help="manifest column giving an axial slice's level, e.g. L5-S1")
    p.add_argument("--disc-class", type=int, help="class id of the disc (default: 'disc' in the segmenter's "
                   "class names, else 1)")
    p.add_argument("--min-area", type=int, default=20, help="smallest disc contour in pixels")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--allow-torchscript", action="store_true",
                   help="load TorchScript (.pt/.ts) models: they can run arbitrary operations, so only files you trust")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    from spinenet.tasks.train import ensure_torch_threads

    ensure_torch_threads()
    args.view_given = args.view is not None
    args.view = args.view or "sagittal"
    if args.study_col and not args.manifest:
        raise ConfigError("--study-col needs --manifest (the CSV whose column groups images into studies)")
    if args.engine == "onnxruntime" and args.device != "cpu":
        raise ConfigError("--engine onnxruntime runs on the CPU; use --engine torch with --device cuda")
    models = [(v.partition("=")[2] or v, "model file") for v in [*args.segmenter, *args.classifier]]
    refuse_input_overlap(args.out, [(args.input, "input"), (args.manifest, "manifest"), *models])
    segmenters = _models_by_view(args.segmenter, args.view, "segmenter", args.device, args.allow_torchscript)
    classifiers = _models_by_view(args.classifier, args.view, "classifier", args.device, args.allow_torchscript)
    if args.engine == "onnxruntime":
        from spinenet.pipeline.export import onnxruntime_predictor

        segmenters = {v: onnxruntime_predictor(m) for v, m in segmenters.items()}
        classifiers = {v: onnxruntime_predictor(m) for v, m in classifiers.items()}
    items = collect_items(args)
    out = Path(args.out)
    summary = run(items, segmenters, classifiers, out, args.batch_size, args.overwrite, args.min_area,
                  args.disc_class, progress=not args.no_progress)
    print(f"diagnosis written: {out} ({summary['studies']} studies, {summary['images']} images, "
          f"{summary['discs']} discs, {summary['images_without_disc']} image(s) without a disc)")
    for study in list(dict.fromkeys(i.study for i in items))[:5]:
        print(f"--- {study}\n" + (out / study / "report.txt").read_text().strip())
    return 0
