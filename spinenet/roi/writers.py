"""Writing a crop data set: staged in a hidden sibling of ``out_dir``, moved in when complete (step 5 of
:mod:`spinenet.roi`).

A run that cannot read a single input leaves no half-written ``out_dir``, and ``--overwrite`` replaces earlier
crops only once the new ones are complete. :class:`CropWriter` names the crops and collects the manifest,
missing and failed rows and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from spinenet.errors import DataError
from spinenet.utils.outdir import check_output_dir, prepare_output_dir
from spinenet.utils.safe_csv import neutralise_frame

log = logging.getLogger(__name__)

OUTPUTS = ("images", "manifest.csv", "missing.csv", "summary.json")  # what a crop data set consists of


def stage_output(out_dir: str | Path, overwrite: bool, inputs: Sequence[Any]) -> tuple[Path, list[Path]]:
    """Check ``out_dir`` (refused before any work) and make the hidden sibling that the crops are written
    into; return it and the parent folders this made (innermost first), removed again if nothing is kept.

    A run that cannot read a single input then leaves no half-written ``out_dir``, and ``--overwrite`` replaces
    earlier crops only once the new ones are complete (:func:`publish_output`)."""
    target = check_output_dir(out_dir, inputs, overwrite).absolute()
    made, parent = [], target.parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    stage = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)  # a leftover of this process id, killed earlier
    (stage / "images").mkdir(parents=True)
    return stage, made


def publish_output(stage: Path, out_dir: str | Path, overwrite: bool, inputs: Sequence[Any]) -> Path:
    # --overwrite replaces only what this module writes, never the user's other files
    out = prepare_output_dir(out_dir, inputs, overwrite, command="roi", clear=OUTPUTS)
    for name in OUTPUTS:
        os.replace(stage / name, out / name)  # same file system: renames, no copies
    return out


def discard_stage(stage: Path, made: Sequence[Path]) -> None:
    shutil.rmtree(stage, ignore_errors=True)
    for folder in made:
        try:
            folder.rmdir()  # only while empty: once --out is in place they hold it
        except OSError:
            break


def nothing_read(failed: Sequence[Mapping[str, Any]], n_images: int, out_dir: str | Path) -> DataError:
    shown = "\n  ".join(f"line {f['line']} ({f['file']}): {f['reason']}" for f in failed[:10])
    more = f"\n  ... and {len(failed) - 10} more" if len(failed) > 10 else ""
    return DataError(
        f"none of the {n_images} image(s) could be read; nothing written to {out_dir}:\n  {shown}{more}"
    )


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


class CropWriter:
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
            f"{summary['n_missing']} without a disc to crop (listed in missing.csv with the reason), "
            f"{summary['n_failed']} failed (listed in summary.json)"
        )
        log.warning(msg) if self.missing or self.failed else log.info(msg)
