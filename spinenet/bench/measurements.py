"""``spinenet bench measurements``: the mask measurements as predictors of SPIDER's gradings, on ground truth.

For each patient of ``seg_t2space`` (30 patients, 6 consecutive sagittal T2-SPACE slices each), the middle
``--slices`` slices' **ground-truth** masks are measured (:func:`spinenet.pipeline.measurements.measure_sagittal`,
levels named bottom-up as ``spinenet diagnose`` names them); each level's value is the mean (``--aggregate max``:
the largest) over those slices where it could be measured. Joined to ``radiological_gradings.csv`` by patient and disc number
(``IVD label``: 1 = L5-S1, 2 = L4-L5 ...), each measurement is scored as a predictor of its finding
(:data:`spinenet.pipeline.findings_eval.MEASUREMENT_PREDICTORS`: protrusion for herniation and bulging, DHI
and middle height for narrowing): AUROC per level and pooled, with a patient-level bootstrap 95% interval.
No model is involved: this is what the measurements can do with a perfect segmenter. The slices were
resampled (pixel spacing lost), so lengths are in pixels; the DHI is a ratio.

``--draw DIR`` writes the measurement overlay of the first ``--draw-patients`` patients' middle slice
(``--draw-ids``: of these patients).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spinenet.errors import ConfigError, DataError

SPIDER_MASK_VALUES = (0, 29, 76, 150)  # background, disc, vertebra, canal
DEFAULT_LEVELS = ("L4-L5", "L5-S1")


def _class_mask(path: Path) -> np.ndarray:
    from spinenet.data.io import read_mask

    return read_mask(path, list(SPIDER_MASK_VALUES))


def middle_slices(slices: Sequence[Any], k: int) -> list[Any]:
    """The ``k`` middle items of ``slices`` (sorted)."""
    ordered = sorted(slices)
    start = max(0, (len(ordered) - k) // 2)
    return ordered[start : start + k]


AGGREGATES = {"mean": np.mean, "max": np.max}


def measure_patients(root: Path, slices: int = 2, bootstrap: int = 2000,
                     levels: Sequence[str] = DEFAULT_LEVELS, aggregate: str = "mean") -> dict[str, Any]:
    """Measure the middle ``slices`` ground-truth masks per patient, join the gradings, score (see module)."""
    import pandas as pd

    from spinenet.data.gradings import DISC_NUMBER, read_gradings
    from spinenet.pipeline.findings_eval import MEASUREMENT_PREDICTORS, score_measurements
    from spinenet.pipeline.measurements import VALUE_FIELDS, measure_sagittal

    manifest = root / "seg_t2space" / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest}: not found (give the SPIDER folder with --spider)")
    df = pd.read_csv(manifest, dtype={"patient_id": str})
    grades = read_gradings(root / "radiological_gradings.csv")
    findings = sorted({f for _, f, _ in MEASUREMENT_PREDICTORS})
    graded = {(r.patient_id, int(r.ivd_label)): {f: (None if pd.isna(getattr(r, f)) else int(getattr(r, f)))
                                                  for f in findings} for r in grades.itertuples()}
    rows, per_slice, checks = [], [], []
    for pid, group in df.groupby("patient_id", sort=True):
        chosen = middle_slices(list(zip(group["slice"], group["mask"], strict=True)), slices)
        values: dict[str, dict[str, list[float]]] = {}
        for sl, rel in chosen:
            res = measure_sagittal(_class_mask(root / "seg_t2space" / rel))
            n_graded = max((d for p, d in graded if p == pid), default=0)
            checks.append({"patient": pid, "slice": int(sl), "discs": len(res.levels), "graded_discs": n_graded,
                           "orientation": res.orientation, "reason": res.reason})
            for m in res.levels:
                per_slice.append({"patient": pid, "slice": int(sl), **m.as_dict(geometry=False)})
                for k, v in m.values().items():
                    if v is not None:
                        values.setdefault(m.level, {}).setdefault(k, []).append(v)
        for level in levels:
            row: dict[str, Any] = {"patient": pid, "level": level}
            row.update({k: float(AGGREGATES[aggregate](values.get(level, {}).get(k) or [np.nan])) for k in VALUE_FIELDS})
            row.update({k: (None if np.isnan(v) else round(v, 4)) for k, v in row.items() if k in VALUE_FIELDS})
            row.update(graded.get((pid, DISC_NUMBER[level]), dict.fromkeys(findings)))
            rows.append(row)
    scores = score_measurements(rows, levels, MEASUREMENT_PREDICTORS, bootstrap)
    orient = sorted({c["orientation"] or "unknown" for c in checks})
    return {"masks": "ground truth (seg_t2space)", "slices_per_patient": slices, "aggregate": aggregate, "patients": df.patient_id.nunique(),
            "unit": "px (resampled slices: spacing lost)", "orientations": orient, "levels": list(levels),
            "scores": scores, "rows": rows, "slice_checks": checks, "per_slice": per_slice}


def draw(root: Path, out: Path, patients: int, ids: Sequence[str] = ()) -> list[Path]:
    """The measurement overlay (image, mask, measured segments, level, protrusion and DHI) of the middle
    slice of the first ``patients`` patients (or of the patients ``ids``), 2x enlarged."""
    import cv2
    import pandas as pd

    from spinenet.data.io import read_image
    from spinenet.pipeline.measurements import draw_measurements, measure_sagittal
    from spinenet.utils.overlay import overlay_mask, save_image

    df = pd.read_csv(root / "seg_t2space" / "manifest.csv", dtype={"patient_id": str})
    out.mkdir(parents=True, exist_ok=True)
    written = []
    groups = list(df.groupby("patient_id", sort=True))
    for pid, group in [g for g in groups if g[0] in ids] if ids else groups[:patients]:
        row = group.sort_values("slice").iloc[len(group) // 2]
        mask = _class_mask(root / "seg_t2space" / row["mask"])
        image = read_image(root / "seg_t2space" / row["image"])
        image = image.mean(-1) if image.ndim == 3 else image
        res = measure_sagittal(mask)
        s = 2.0
        big = cv2.resize(mask.astype(np.uint8), None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST)
        rgb = overlay_mask(cv2.resize(image.astype(np.float32), None, fx=s, fy=s), big)
        draw_measurements(rgb, res.levels, s)
        for m in res.levels:
            if "height_middle" in m.geometry or "height_anterior" in m.geometry:
                x, y = (m.geometry.get("height_anterior") or m.geometry["height_middle"])[0]
                text = f"{m.level} prot {m.protrusion} DHI {m.disc_height_index}"
                cv2.putText(rgb, text, (max(0, int(x * s) - 420), int(y * s)), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                            (255, 255, 0), 2, cv2.LINE_AA)
        path = out / f"{pid}_slice{int(row['slice'])}_measurements.png"
        save_image(rgb, path)
        written.append(path)
    return written


def benchmark(spider: str | Path | None, slices: int = 2, aggregate: str = "mean", bootstrap: int = 2000,
              levels: Sequence[str] = DEFAULT_LEVELS, out: str | Path | None = None, draw_dir: str | Path | None = None,
              draw_patients: int = 3, draw_ids: Sequence[str] = ()) -> int:
    """Print the AUROC of each measurement for SPIDER's gradings on the ground-truth masks of ``spider``'s
    ``seg_t2space`` (``slices`` middle slices per patient); ``out``: the figures as JSON; ``draw_dir``:
    measurement overlays of a few patients."""
    if not spider:
        raise ConfigError("spinenet bench measurements: give --spider DIR or set SPIDER_DIR")
    if slices < 1:
        raise ConfigError(f"--slices must be >= 1, got {slices}")
    from spinenet.bench import smoke
    from spinenet.pipeline.findings_eval import format_measurement_table

    if smoke():  # CI's README run: the figures mean nothing
        bootstrap = min(bootstrap, 20)
    root = Path(spider)
    levels = [lv.strip() for lv in levels if lv.strip()]
    result = measure_patients(root, slices, bootstrap, levels, aggregate)
    agree = sum(c["discs"] == c["graded_discs"] for c in result["slice_checks"])
    implausible = [c for c in result["slice_checks"] if c["reason"]]
    print(f"measurements on ground-truth masks: {result['patients']} patients, {slices} middle slice(s) each, "
          f"orientation(s) {', '.join(result['orientations'])}; disc count = graded disc count on {agree} of "
          f"{len(result['slice_checks'])} slices; lengths in {result['unit']}")
    for c in implausible:
        print(f"  not measured: patient {c['patient']} slice {c['slice']}: {c['reason']}")
    print(format_measurement_table(result["scores"], levels))
    if out:
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"written: {out}")
    if draw_dir:
        for path in draw(root, Path(draw_dir), draw_patients, list(draw_ids)):
            print(f"overlay: {path}")
    return 0
