"""Disc crops of the synthetic phantom: the classification experiments' embedded data (``data.synthesize.crops``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spinenet.data.manifest import DatasetSpec
from spinenet.data.phantom import MASK_GRAY_STEP, classes_for, generate_on_first_use
from spinenet.errors import ConfigError, DataError
from spinenet.roi.mask_crops import crop_dataset
from spinenet.roi.writers import OUTPUTS
from spinenet.utils.outdir import build_atomically

log = logging.getLogger(__name__)

PHANTOM_CROP_OPTIONS = ("source", "size", "margin", "clahe", "levels", "square", "min_area", "upper_levels")
_PHANTOM_META_KEYS = ("view", "patients", "seed", "size", "slices_per_patient")


def phantom_crops(out_dir: str | Path, phantom: Mapping[str, Any], crops: Mapping[str, Any] | None) -> Path:
    """Disc crops of a synthetic phantom, cropped with its ground-truth masks (``data.synthesize.crops``).

    ``phantom``: :func:`~spinenet.data.phantom.generate_phantom` arguments (view, patients, seed, size,
    slices_per_patient, class_balance). ``crops``: :func:`crop_dataset` options (size, margin, clahe, levels,
    square, min_area, upper_levels) and ``source``, the phantom's folder (default ``<out_dir>_source``): it is
    generated there unless it exists, so a segmentation experiment's phantom is reused. Returns ``out_dir``.
    """
    crops = dict(crops or {})
    phantom = {k: v for k, v in phantom.items() if k != "tag"}  # tag only names the folders
    unknown = sorted(set(crops) - set(PHANTOM_CROP_OPTIONS))
    if unknown:
        raise ConfigError(
            f"data.synthesize.crops: unknown setting(s) {unknown}; valid: {', '.join(PHANTOM_CROP_OPTIONS)}"
        )
    view = str(phantom.get("view", "sagittal"))
    out = Path(out_dir)
    source = Path(crops.pop("source", None) or out.with_name(out.name + "_source"))
    meta_path = source / "phantom.json"
    if (source / "manifest.csv").is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        differ = {
            k: (meta.get(k), phantom[k])
            for k in _PHANTOM_META_KEYS
            if k in phantom and meta.get(k) != phantom[k]
        }
        if differ:
            raise DataError(
                f"data.synthesize.crops.source {source} holds another phantom ({differ}: found, asked); "
                "choose another source folder"
            )
    elif not (source / "manifest.csv").is_file():
        generate_on_first_use(source, phantom)  # complete or absent, even when runs are killed or start together
    spec = DatasetSpec(
        root=source,
        label_col=f"{view}_class",
        mask_values=[MASK_GRAY_STEP * i for i in range(len(classes_for(view)))],
        class_names=list(classes_for(view)),
    )
    if crops.get("size") is not None and not isinstance(crops["size"], int):
        crops["size"] = list(crops["size"])
    if crops.get("levels") is not None:
        crops["levels"] = [str(v) for v in crops["levels"]]
    # overwrite: only this module's own outputs of an interrupted earlier attempt are replaced
    return crop_dataset(spec, out, view=view, mask_source="gt", overwrite=True, **crops)


def phantom_crops_on_first_use(root: Path, synth: Mapping, crops: Mapping, manifest: str = "manifest.csv") -> Path:
    """:func:`phantom_crops` into ``root`` on first use, like :func:`spinenet.data.phantom.generate_on_first_use`
    (temporary sibling, rename, lock); return ``root``."""
    root = Path(root)
    crops = dict(crops)
    # the source phantom is named after the final folder, not after the temporary one
    crops["source"] = str(crops.get("source") or root.with_name(root.name + "_source"))
    log.info("generating phantom disc crops in %s", root)
    return build_atomically(
        root,
        lambda tmp: phantom_crops(tmp, dict(synth), crops),
        lambda path: (path / manifest).is_file(),
        OUTPUTS,
        "phantom disc crops",
    )
