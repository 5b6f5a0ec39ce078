"""How right the disc numbers of ``spinenet data grade-crops`` are, on slices whose true numbers are known.

SPIDER's ``disc_crops/`` t2 crops are cut pixel for pixel from the mid-sagittal slices in ``midsag_t2/`` (for all
but one of its 68 patients), each with its true number (``ivd_label``). :func:`locate_known_discs` finds each
disc crop in its patient's slice by template matching (squared difference: the cut is exact, so a match is an
r.m.s. difference of about 0); :func:`check_levels` gives a graded crop the number of the known disc whose box
holds its disc's centre. A crop in no known disc's box is no graded disc (a false detection), wrong whatever
number it got: every graded disc of these patients is in ``disc_crops/``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from spinenet.data.gradings import RULES, disc_centres, graded_discs, number_slice, read_crop_manifest
from spinenet.errors import DataError

EXACT_RMS = 0.01  # r.m.s. difference (images in [0, 1]) under which a disc crop was cut from the slice


def _gray(path: Path) -> np.ndarray:
    from spinenet.data.io import read_image

    image = read_image(path)
    return (image.mean(axis=-1) if image.ndim == 3 else image).astype(np.float32)


def read_disc_manifest(path: str | Path, series: str = "t2") -> pd.DataFrame:
    """The rows of ``series`` of a disc crop manifest (SPIDER's ``disc_crops/manifest.csv`` layout)."""
    try:
        discs = pd.read_csv(path, dtype={"patient_id": str})
    except (FileNotFoundError, IsADirectoryError):
        raise DataError(f"--check-levels: no disc crop manifest {path}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"--check-levels: cannot read {path}: {exc}") from None
    need = {"patient_id", "series", "image", "ivd_label"}
    if not need <= set(discs.columns):
        raise DataError(f"{path}: not a disc crop manifest (needs columns {sorted(need)})")
    return discs[discs["series"].astype(str) == series]


def source_root(crops_dir: str | Path) -> Path:
    """The folder of the slices ``spinenet roi`` cut ``crops_dir`` from (its ``summary.json`` names their manifest)."""
    summary = Path(crops_dir) / "summary.json"
    try:
        return Path(json.loads(summary.read_text())["source"]).parent
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{summary}: no 'source' manifest recorded; the level check needs the slices spinenet roi "
                        "cut the crops from") from None


def locate_known_discs(
    slices: Iterable[tuple[str, str, str | Path]], disc_manifest: str | Path, series: str = "t2"
) -> pd.DataFrame:
    """Where each disc crop of ``disc_manifest`` (rows of ``series``) lies in its patient's slice.

    ``slices``: ``(patient_id, source_image, path of that image)``. Returns one row per disc crop of those
    patients: ``patient_id, source_image, ivd_label, x0, y0, x1, y1, rms`` and ``exact``
    (``rms`` under :data:`EXACT_RMS`: cut from this slice; a patient whose crops are not all exact is from
    another slice and is not checked).
    """
    import cv2  # lazy: start-up

    disc_manifest = Path(disc_manifest)
    discs = read_disc_manifest(disc_manifest, series)
    rows = []
    for pid, source, slice_path in slices:
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
            rows.append({"patient_id": pid, "source_image": source, "ivd_label": int(disc.ivd_label),
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
    cx, cy = disc_centres(numbered)
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


def check_rules(
    crops_dir: str | Path, gradings: pd.DataFrame, disc_manifest: str | Path, series: str = "t2"
) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
    """Both numbering rules of :func:`spinenet.data.gradings.number_slice` on the slices of ``crops_dir``
    whose patients have disc crops in ``disc_manifest`` (whether or not grade-crops excludes them).

    ``gradings``: :func:`spinenet.data.gradings.read_gradings`'s table. Returns the checked crops of both
    rules (column ``rule``) and, per rule, :func:`check_levels`'s counts with ``known_slices`` (slices whose
    discs were all found in them) and ``crops`` / ``patients`` (numbered crops over all slices, as grade-crops
    without ``--exclude`` would keep).
    """
    crops = read_crop_manifest(crops_dir)
    root = source_root(crops_dir)
    pairs = crops[["patient_id", "source_image"]].drop_duplicates()
    known = locate_known_discs(((p, s, root / s) for p, s in pairs.itertuples(index=False)),
                               disc_manifest, series)
    graded = graded_discs(gradings)
    checked, counts = [], {}
    for rule in RULES:
        numbered = [number_slice(rows, graded.get(pid), rule)[0]
                    for (pid, _), rows in crops.groupby(["patient_id", "source_image"], sort=False)]
        numbered = pd.concat(numbered, ignore_index=True)
        rows, counts[rule] = check_levels(numbered, known)
        counts[rule].update(known_slices=int(known[known["exact"]].groupby(["patient_id", "source_image"]).ngroups),
                            crops=len(numbered), patients=int(numbered["patient_id"].nunique()))
        checked.append(rows.assign(rule=rule))
    return pd.concat(checked, ignore_index=True), counts


def prepare_level_check(
    crops_dir: str | Path, disc_manifest: str | Path, series: str = "t2", out_name: str = "graded.csv",
    overwrite: bool = False,
) -> Path:
    """Where ``grade-crops --check-levels`` writes its table (``<stem>_levels.csv`` beside ``out_name``), after
    checking, before anything is written, that it may and that its inputs can be read."""
    from spinenet.errors import ConfigError

    path = Path(crops_dir) / f"{Path(out_name).stem}_levels.csv"
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; choose another --out or pass --overwrite")
    read_disc_manifest(disc_manifest, series)
    source_root(crops_dir)
    return path


def write_level_check(
    path: str | Path, crops_dir: str | Path, gradings: pd.DataFrame, disc_manifest: str | Path, series: str = "t2"
) -> dict[str, dict[str, int]]:
    """:func:`check_rules` with its checked crops written to ``path``; returns the counts per rule."""
    from spinenet.utils.outdir import refuse_input_overlap
    from spinenet.utils.safe_csv import neutralise_frame

    refuse_input_overlap(Path(path), [(disc_manifest, "--check-levels manifest")])
    checked, counts = check_rules(crops_dir, gradings, disc_manifest, series)
    columns = ["rule", "patient_id", "source_image", "image", "roi_level", "level", "ivd_label", "true_label", "right"]
    neutralise_frame(checked[[c for c in columns if c in checked]]).to_csv(path, index=False)
    return counts
