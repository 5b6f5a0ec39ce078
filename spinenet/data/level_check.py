"""How right the disc numbers of ``spinenet data grade-crops`` are, on slices whose true numbers are known.

SPIDER's ``disc_crops/`` t2 crops are cut pixel for pixel from the mid-sagittal slices in ``midsag_t2/`` (for all
but one of its 68 patients), each with its true number (``ivd_label``). :func:`locate_known_discs` finds each
disc crop in its patient's slice by template matching (squared difference: the cut is exact, so a match is an
r.m.s. difference of about 0); :func:`check_levels` gives a graded crop the number of the known disc whose box
holds its disc's centre. A crop in no known disc's box is no graded disc (a false detection), wrong whatever
number it got: every graded disc of these patients is in ``disc_crops/``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from spinenet.errors import DataError

EXACT_RMS = 0.01  # r.m.s. difference (images in [0, 1]) under which a disc crop was cut from the slice


def _gray(path: Path) -> np.ndarray:
    from spinenet.data.io import read_image

    image = read_image(path)
    return (image.mean(axis=-1) if image.ndim == 3 else image).astype(np.float32)


def locate_known_discs(
    slices: Iterable[tuple[str, str | Path]], disc_manifest: str | Path, series: str = "t2"
) -> pd.DataFrame:
    """Where each disc crop of ``disc_manifest`` (rows of ``series``) lies in its patient's slice.

    ``slices``: ``(patient_id, slice image path)`` pairs. Returns one row per disc crop of those patients:
    ``patient_id, source_image`` (the slice's file name), ``ivd_label, x0, y0, x1, y1, rms`` and ``exact``
    (``rms`` under :data:`EXACT_RMS`: cut from this slice; a patient whose crops are not all exact is from
    another slice and is not checked).
    """
    import cv2  # lazy: start-up

    disc_manifest = Path(disc_manifest)
    try:
        discs = pd.read_csv(disc_manifest, dtype={"patient_id": str})
    except FileNotFoundError:
        raise DataError(f"--check-levels: no disc crop manifest {disc_manifest}") from None
    need = {"patient_id", "series", "image", "ivd_label"}
    if not need <= set(discs.columns):
        raise DataError(f"{disc_manifest}: not a disc crop manifest (needs columns {sorted(need)})")
    discs = discs[discs["series"].astype(str) == series]
    rows = []
    for pid, slice_path in slices:
        mine = discs[discs["patient_id"] == pid]
        if mine.empty:
            continue
        image = _gray(Path(slice_path))
        for disc in mine.itertuples():
            crop = _gray(disc_manifest.parent / str(disc.image))
            if crop.shape[0] > image.shape[0] or crop.shape[1] > image.shape[1]:
                rms, x, y = float("inf"), 0, 0
            else:
                scores = cv2.matchTemplate(image, crop, cv2.TM_SQDIFF) / crop.size
                low, _, (x, y), _ = cv2.minMaxLoc(scores)
                rms = float(np.sqrt(max(low, 0.0)))
            rows.append({"patient_id": pid, "source_image": Path(slice_path).name, "ivd_label": int(disc.ivd_label),
                         "x0": x, "y0": y, "x1": x + crop.shape[1], "y1": y + crop.shape[0], "rms": rms})
    known = pd.DataFrame(rows, columns=["patient_id", "source_image", "ivd_label", "x0", "y0", "x1", "y1", "rms"])
    known["exact"] = known.groupby("patient_id")["rms"].transform("max") < EXACT_RMS
    return known


def check_levels(numbered: pd.DataFrame, known: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Each numbered crop of a slice with known discs, with its true number, and the counts.

    ``numbered``: crops with ``patient_id, source_image, ivd_label`` (the number given) and the disc's centre
    ``cx, cy`` (else the crop box's). ``known``: :func:`locate_known_discs` (only ``exact`` patients count).
    Returns the crops with ``true_label`` (NaN: in no known disc) and ``right``; counts ``slices`` (with a
    numbered crop), ``slices_right`` (every crop right), ``discs``, ``discs_right``.
    """
    known = known[known["exact"]]
    cx = numbered["cx"] if "cx" in numbered else (numbered["x0"] + numbered["x1"]) / 2
    cy = numbered["cy"] if "cy" in numbered else (numbered["y0"] + numbered["y1"]) / 2
    checked = numbered.assign(cx=cx, cy=cy)
    checked = checked[checked.set_index(["patient_id", "source_image"]).index.isin(
        known.set_index(["patient_id", "source_image"]).index)].copy()
    truth = []
    for row in checked.itertuples():
        k = known[(known.patient_id == row.patient_id) & (known.source_image == row.source_image)
                  & (known.x0 <= row.cx) & (row.cx < known.x1) & (known.y0 <= row.cy) & (row.cy < known.y1)]
        if len(k) > 1:  # neighbouring crops overlap: the nearest centre
            k = k.iloc[[int(np.argmin(np.hypot((k.x0 + k.x1) / 2 - row.cx, (k.y0 + k.y1) / 2 - row.cy)))]]
        truth.append(float(k.ivd_label.iloc[0]) if len(k) else np.nan)
    checked["true_label"] = truth
    checked["right"] = checked["true_label"] == checked["ivd_label"]
    per_slice = checked.groupby(["patient_id", "source_image"])["right"].all()
    counts = {"slices": int(len(per_slice)), "slices_right": int(per_slice.sum()),
              "discs": int(len(checked)), "discs_right": int(checked["right"].sum())}
    return checked, counts
