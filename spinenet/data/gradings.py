"""Per-disc gradings for disc crops: ``spinenet data grade-crops``.

``spinenet roi`` cuts every disc of a sagittal slice and names its level bottom-up; a grading table names discs
the same way (SPIDER's ``radiological_gradings.csv``: ``Patient``, ``IVD label`` with 1 = L5-S1, 2 = L4-L5, …,
then one column per finding). Joining the two by (patient, disc number) turns slices without crops into a
classification set, e.g. more training crops for ``cls/spider_*`` through ``data.extra_train``.

A level is only as good as the disc count: one missed or extra disc below L5-S1 renames every disc above it.
So a slice is kept only when its discs, numbered from the bottom, are exactly its patient's graded discs
(as many, and no gaps in the gradings); the others are
listed with the reason, never silently dropped. On the 68 SPIDER mid-sagittal slices whose discs are also in
``disc_crops/`` (so their true levels are known), this rule kept 51 slices, 49 of them with every level right.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from spinenet.errors import ConfigError, DataError
from spinenet.roi.levels import LUMBAR_LEVELS, THORACIC_LEVELS

# disc number counted from the bottom (SPIDER's "IVD label"), by the level names spinenet roi gives
DISC_NUMBER = {name: i + 1 for i, name in enumerate(LUMBAR_LEVELS + THORACIC_LEVELS)}
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


def grade_crops(
    crops_dir: str | Path,
    gradings: str | Path,
    out_name: str = "graded.csv",
    exclude: Sequence[str | Path] = (),
    overwrite: bool = False,
    patient_col: str = "Patient",
    disc_col: str = "IVD label",
) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Join ``spinenet roi``'s sagittal crops in ``crops_dir`` with per-disc ``gradings``.

    Writes ``crops_dir/out_name`` (the crop manifest with ``ivd_label`` and the finding columns) and
    ``crops_dir/<stem>_skipped.csv`` (each left-out slice with its reason); returns the manifest's path, the
    graded crops and the skipped slices. ``exclude``: manifests whose patients are left out (e.g. the set a model is tested on).
    """
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
    crops = pd.read_csv(manifest, dtype={"patient_id": str})
    need = {"patient_id", "image", "source_image", "level"}
    if not need <= set(crops.columns):
        raise DataError(f"{manifest}: not a sagittal crop manifest of spinenet roi (needs columns {sorted(need)})")
    table = read_gradings(gradings, patient_col, disc_col)
    graded = table.groupby("patient_id")["ivd_label"].agg(set)  # each patient's graded disc numbers
    excluded: dict[str, str] = {}
    for path in exclude:
        other = pd.read_csv(path, dtype={"patient_id": str}) if Path(path).is_file() else None
        if other is None or "patient_id" not in other.columns:
            raise DataError(f"--exclude {path}: not a manifest with a patient_id column")
        excluded.update({p: str(path) for p in other["patient_id"] if p not in excluded})

    kept, skipped = [], []
    for (pid, source), rows in crops.groupby(["patient_id", "source_image"], sort=False):
        kind = reason = None
        numbers = rows["level"].map(DISC_NUMBER)
        if pid in excluded:
            kind, reason = "excluded", f"patient in {excluded[pid]}"
        elif pid not in graded.index:
            kind, reason = "not graded", "patient not graded"
        elif numbers.isna().any():
            kind = "unnamed level"
            reason = f"discs without a level name: {sorted(set(rows['level'][numbers.isna()].astype(str)))}"
        elif set(numbers) != graded[pid]:
            kind = "disc count differs"
            reason = f"{len(rows)} discs found, graded discs {sorted(graded[pid])}: levels uncertain"
        if kind:
            skipped.append({"patient_id": pid, "source_image": source, "crops": len(rows), "kind": kind,
                            "reason": reason})
            continue
        kept.append(rows.assign(ivd_label=numbers.astype(int)))
    result = pd.concat(kept, ignore_index=True) if kept else crops.head(0).assign(ivd_label=pd.Series(dtype=int))
    result = result.merge(table, on=["patient_id", "ivd_label"], how="left", validate="many_to_one")
    from spinenet.utils.safe_csv import neutralise_frame

    neutralise_frame(result).to_csv(out, index=False)
    skipped_table = pd.DataFrame(skipped, columns=["patient_id", "source_image", "crops", "kind", "reason"])
    neutralise_frame(skipped_table).to_csv(skipped_path, index=False)
    return out, result, skipped_table
