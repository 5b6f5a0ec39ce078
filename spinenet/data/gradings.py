"""Per-disc gradings for disc crops: ``spinenet data grade-crops``.

``spinenet roi`` cuts every disc of a sagittal slice and names its level bottom-up; a grading table names discs
the same way (SPIDER's ``radiological_gradings.csv``: ``Patient``, ``IVD label`` with 1 = L5-S1, 2 = L4-L5, …,
then one column per finding). Joining the two by (patient, disc number) turns slices without crops into a
classification set, e.g. more training crops for ``cls/spider_*`` through ``data.extra_train``.

A level is only as good as the disc count: one missed or extra disc below L5-S1 renames every disc above it.
So a slice keeps the bottom-up numbers only when its discs are exactly its patient's graded discs (as many, and
no gaps in the gradings); the others are numbered by position (:func:`number_slice`,
:func:`spinenet.roi.levels.number_discs`) or left out, and every left-out slice or crop is listed with the reason,
never silently dropped. :mod:`spinenet.data.level_check` measures how right the numbers are where the true ones
are known (SPIDER's ``disc_crops/``; ``grade-crops --check-levels``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from spinenet.errors import ConfigError, DataError
from spinenet.roi.geometry import Box
from spinenet.roi.levels import LUMBAR_LEVELS, THORACIC_LEVELS, number_discs

# disc number counted from the bottom (SPIDER's "IVD label"), by the level names spinenet roi gives
DISC_NUMBER = {name: i + 1 for i, name in enumerate(LUMBAR_LEVELS + THORACIC_LEVELS)}
LEVEL_NAME = {number: name for name, number in DISC_NUMBER.items()}
# how a slice's discs get their numbers: "count": only when the discs found are exactly the graded ones,
# numbered from the bottom; "position": also the others, placed by their spacing (spinenet.roi.levels.number_discs)
RULES = ("count", "position")
BOX_COLUMNS = ("x0", "y0", "x1", "y1", "area")  # the crop box spinenet roi writes: positions for the position rule
SKIPPED_COLUMNS = ["patient_id", "source_image", "crops", "kind", "reason", "image"]
# SPIDER's spelling -> the name in its disc_crops manifest (and the cls/spider_pfirrmann label column)
SPIDER_COLUMNS = {"pfirrman_grade": "pfirrmann"}


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")


def read_gradings(path: str | Path, patient_col: str = "Patient", disc_col: str = "IVD label") -> pd.DataFrame:
    """A per-disc grading table with ``patient_id``, ``ivd_label`` and snake_case finding columns."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={patient_col: str})
    except FileNotFoundError:
        raise DataError(f"gradings file not found: {path}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the gradings file {path}: {exc}") from None
    missing = [c for c in (patient_col, disc_col) if c not in table.columns]
    if missing:
        raise DataError(f"{path}: no column {missing} (columns: {list(table.columns)}); "
                        "name them with --patient-col / --disc-col")
    table = table.rename(columns={patient_col: "patient_id", disc_col: "ivd_label"})
    table.columns = [SPIDER_COLUMNS.get(_snake(c), _snake(c)) for c in table.columns]
    bad = pd.to_numeric(table["ivd_label"], errors="coerce").isna()
    if bad.any():
        raise DataError(f"{path}: disc numbers must be integers (1 = L5-S1); line(s) "
                        f"{[int(i) + 2 for i in table.index[bad][:10]]} are not")
    table["ivd_label"] = table["ivd_label"].astype(int)
    table["patient_id"] = table["patient_id"].astype(str)
    twice = table.duplicated(["patient_id", "ivd_label"])
    if twice.any():
        rows = table[twice].head(5)[["patient_id", "ivd_label"]].values.tolist()
        raise DataError(f"{path}: the same disc is graded twice (patient, disc): {rows}")
    return table


def read_crop_manifest(crops_dir: str | Path) -> pd.DataFrame:
    """The crop manifest ``spinenet roi`` wrote into ``crops_dir`` (sagittal: one row per disc crop)."""
    manifest = Path(crops_dir) / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"no crop manifest {manifest}: run spinenet roi --out {crops_dir} first")
    crops = pd.read_csv(manifest, dtype={"patient_id": str})
    need = {"patient_id", "image", "source_image", "level"}
    if not need <= set(crops.columns):
        raise DataError(f"{manifest}: not a sagittal crop manifest of spinenet roi (needs columns {sorted(need)})")
    return crops


def graded_discs(table: pd.DataFrame) -> pd.Series:
    """Each patient's set of graded disc numbers, from :func:`read_gradings`'s table."""
    return table.groupby("patient_id")["ivd_label"].agg(set)


def _left_out(pid: str, source: str, n: int, kind: str, reason: str, image: str = "") -> dict[str, object]:
    return {"patient_id": pid, "source_image": source, "crops": n, "kind": kind, "reason": reason, "image": image}


def number_slice(
    rows: pd.DataFrame, graded: set[int] | None, rule: str = "position"
) -> tuple[pd.DataFrame, list[dict[str, object]]]:
    """The crops of one slice (``spinenet roi``'s manifest rows) that get a graded disc number, with it in
    ``ivd_label`` (``level``: its name; ``roi_level``: roi's bottom-up name), and the left-out ones with the reason.

    ``graded``: the patient's graded disc numbers. ``rule="count"``: a slice whose discs, numbered from the
    bottom, are exactly the graded ones keeps them; the others are left out. ``rule="position"`` (when the
    gradings are ``1..n`` and the manifest has the crop boxes): :func:`spinenet.roi.levels.number_discs`
    places every slice's discs by their spacing and the image's top edge, and leaves out a detection off the
    spine, pieces of one disc, and discs whose number it cannot tell. On a slice the count rule keeps, it only
    leaves discs out: where it numbers a disc otherwise, the slice is left out; where it is unsure of the top
    alone and finds no false detection, the count's numbers stand.
    """
    pid, source = str(rows["patient_id"].iloc[0]), str(rows["source_image"].iloc[0])
    none = rows.head(0).assign(ivd_label=pd.Series(dtype=int))
    numbers = rows["level"].map(DISC_NUMBER)
    if graded is None:
        return none, [_left_out(pid, source, len(rows), "not graded", "patient not graded")]
    if numbers.isna().any():
        names = sorted(set(rows["level"][numbers.isna()].astype(str)))
        return none, [_left_out(pid, source, len(rows), "unnamed level", f"discs without a level name: {names}")]
    counted = set(numbers) == graded
    if counted and rule == "count":
        return _numbered(rows, numbers.astype(int)), []
    count_differs = _left_out(pid, source, len(rows), "disc count differs",
                              f"{len(rows)} discs found, graded discs {sorted(graded)}: levels uncertain")
    if rule == "count" or graded != set(range(1, len(graded) + 1)) or not set(BOX_COLUMNS) <= set(rows.columns):
        return (_numbered(rows, numbers.astype(int)), []) if counted else (none, [count_differs])
    cx, cy = disc_centres(rows)
    boxes = [Box(int(r.x0), int(r.y0), int(r.x1), int(r.y1), float(r.area), float(x), float(y))
             for r, x, y in zip(rows.itertuples(), cx, cy, strict=True)]
    placed, reasons = number_discs(boxes, len(graded))
    if counted and all(p is None for p in placed) and len(set(reasons)) == 1:
        return _numbered(rows, numbers.astype(int)), []  # no false detection; unsure of the top, the count is sure
    if counted and any(p is not None and p != k for p, k in zip(placed, numbers, strict=True)):
        return none, [_left_out(pid, source, len(rows), "level uncertain", "the discs found are as many as the "
                                "graded ones, but by their spacing some are not discs or are numbered otherwise")]
    if all(p is None for p in placed):
        why = "; ".join(dict.fromkeys(reasons))
        count_differs.update(kind="level uncertain", reason=f"{count_differs['reason']}; by position: {why}")
        return none, [count_differs]
    left_out = [_left_out(pid, source, 1, "disc left out", why, image)
                for p, why, image in zip(placed, reasons, rows["image"], strict=True) if p is None]
    keep = pd.Series([p is not None for p in placed], index=rows.index)
    return _numbered(rows[keep], pd.Series([p for p in placed if p is not None], index=rows.index[keep])), left_out


def disc_centres(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Each crop's disc centre: the centroid ``spinenet roi`` wrote (``cx, cy``), or in older manifests the crop
    box's centre (off where the box is clipped at the image edge)."""
    cx = rows["cx"] if "cx" in rows else (rows["x0"] + rows["x1"]) / 2
    cy = rows["cy"] if "cy" in rows else (rows["y0"] + rows["y1"]) / 2
    return cx, cy


def _numbered(rows: pd.DataFrame, numbers: pd.Series) -> pd.DataFrame:
    return rows.assign(roi_level=rows["level"], level=numbers.map(LEVEL_NAME), ivd_label=numbers)


def grade_crops(
    crops_dir: str | Path,
    gradings: str | Path,
    out_name: str = "graded.csv",
    exclude: Sequence[str | Path] = (),
    overwrite: bool = False,
    patient_col: str = "Patient",
    disc_col: str = "IVD label",
    rule: str = "position",
) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Join ``spinenet roi``'s sagittal crops in ``crops_dir`` with per-disc ``gradings``.

    Writes ``crops_dir/out_name`` (the crop manifest with ``ivd_label`` and the finding columns) and
    ``crops_dir/<stem>_skipped.csv`` (each left-out slice, or crop with its ``image``, with the reason); returns
    the manifest's path, the graded crops and the skipped table. ``exclude``: manifests whose patients are left
    out (e.g. the set a model is tested on). ``rule``: how discs get their numbers (:data:`RULES`,
    :func:`number_slice`); in the manifest ``level`` is the name of the number given, ``roi_level`` roi's own.
    """
    if rule not in RULES:
        raise ConfigError(f"--rule: choose one of {', '.join(RULES)}, got {rule!r}")
    crops_dir = Path(crops_dir)
    manifest = crops_dir / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"no crop manifest {manifest}: run spinenet roi --out {crops_dir} first")
    out = crops_dir / out_name
    skipped_path = out.with_name(f"{out.stem}_skipped.csv")
    if Path(out_name).name != out_name or out.suffix != ".csv" or out == manifest:
        raise ConfigError(f"--out must be a new .csv file name inside {crops_dir} (not manifest.csv), got {out_name!r}")
    from spinenet.utils.outdir import refuse_input_overlap

    inputs = [(gradings, "gradings"), *((e, "--exclude manifest") for e in exclude)]
    for written in (out, skipped_path):
        refuse_input_overlap(written, inputs)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; choose another --out or pass --overwrite")
    crops = read_crop_manifest(crops_dir)
    table = read_gradings(gradings, patient_col, disc_col)
    graded = graded_discs(table)
    excluded: dict[str, str] = {}
    for path in exclude:
        other = pd.read_csv(path, dtype={"patient_id": str}) if Path(path).is_file() else None
        if other is None or "patient_id" not in other.columns:
            raise DataError(f"--exclude {path}: not a manifest with a patient_id column")
        excluded.update({p: str(path) for p in other["patient_id"] if p not in excluded})

    kept, skipped = [], []
    for (pid, source), rows in crops.groupby(["patient_id", "source_image"], sort=False):
        if pid in excluded:
            skipped.append(_left_out(pid, source, len(rows), "excluded", f"patient in {excluded[pid]}"))
            continue
        numbered, left_out = number_slice(rows, graded.get(pid), rule)
        kept.append(numbered)
        skipped += left_out
    kept = [k for k in kept if len(k)]
    result = pd.concat(kept, ignore_index=True) if kept else crops.head(0).assign(ivd_label=pd.Series(dtype=int))
    result = result.merge(table, on=["patient_id", "ivd_label"], how="left", validate="many_to_one")
    from spinenet.utils.safe_csv import neutralise_frame

    neutralise_frame(result).to_csv(out, index=False)
    skipped_table = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)
    neutralise_frame(skipped_table).to_csv(skipped_path, index=False)
    return out, result, skipped_table
