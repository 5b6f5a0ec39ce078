"""``spinenet roi``: crop every disc of a data set into a classification data set (parsing and printing only;
the cropping is :mod:`spinenet.roi`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from spinenet.contract import margin_setting
from spinenet.data.manifest import DatasetSpec
from spinenet.errors import EXIT_OK, EXIT_PARTIAL, ConfigError
from spinenet.roi.box_crops import crops_from_box_csv
from spinenet.roi.geometry import size_pair
from spinenet.roi.mask_crops import VIEWS, MaskSource, crop_dataset, name_segmenter


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spinenet roi",
        description="Crop every disc of a data set into a classification data set (images + manifest.csv), "
        "from ground-truth masks, a trained segmenter's masks (--segmenter) or a bounding-box CSV (--boxes).",
        epilog="examples:\n"
        "  spinenet roi --data phantom_axial --root data/my_axial --out data/my_axial_crops\n"
        "  spinenet roi --data spider_seg --segmenter outputs/.../epoch_012.ckpt --levels L4-L5,L5-S1 --out crops\n"
        "  spinenet roi --boxes train.csv --images pngs/ --out crops",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite)")
    src = p.add_argument_group("source data set (masks or a segmenter)")
    src.add_argument(
        "--root", help="data set folder holding the manifest (default: the --data config's root)"
    )
    src.add_argument("--data", help="data config whose dataset block names the columns, e.g. phantom_axial")
    src.add_argument("--manifest", help="manifest file name inside --root (default manifest.csv)")
    src.add_argument("--image-col")
    src.add_argument("--mask-col")
    src.add_argument("--patient-col")
    src.add_argument("--label-col", help="label column (box CSV: default label, else lesion_type)")
    src.add_argument("--mask-values", help="gray value of each mask class, e.g. 0,85,170,255")
    src.add_argument(
        "--segmenter", metavar="CKPT", help="predict the masks with this segmentation checkpoint"
    )
    src.add_argument("--device", default="cpu", help="device for --segmenter (cpu, cuda, cuda:1)")
    src.add_argument(
        "--view",
        choices=VIEWS,
        help="sagittal: every disc, by level; axial: one crop per image "
        "(default: the data config's view, else sagittal)",
    )
    src.add_argument("--levels", help="sagittal levels to keep, e.g. L4-L5,L5-S1 (default: all)")
    src.add_argument(
        "--disc-class",
        type=int,
        help="class id of the disc (default: 'disc' in the segmenter's or data config's class_names, else 1)",
    )
    src.add_argument("--min-area", type=int, default=20, help="smallest disc contour in pixels (default 20)")
    box = p.add_argument_group("bounding-box CSV source (Al-Ajaj 2024)")
    box.add_argument("--boxes", metavar="CSV", help="image_id, label, xmin, ymin, xmax, ymax")
    box.add_argument("--images", help="folder of the images named by image_id (default: the CSV's folder)")
    crop = p.add_argument_group("crop")
    crop.add_argument("--size", default="64", help="crop size: 64 or HxW, e.g. 64x128 (default 64)")
    crop.add_argument("--margin", type=float, nargs="+", default=None,
                      help="box growth: one number, or width and height (default 0.10; box CSV: 0)")
    crop.add_argument("--square", action="store_true", help="make boxes square before the margin")
    crop.add_argument("--clahe-clip", type=float, default=2.0)
    crop.add_argument("--clahe-tiles", type=int, default=4)
    crop.add_argument("--no-clahe", action="store_true", help="skip the CLAHE enhancement")
    p.add_argument("--overwrite", action="store_true", help="replace earlier crops in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(progress=None)  # None: a bar only when stderr is a terminal
    return p


def _parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in str(text).lower().replace(",", "x").split("x")]
    except ValueError:
        raise ConfigError(f"--size: expected 64 or HxW such as 64x128, got {text!r}") from None
    return size_pair(parts[0] if len(parts) == 1 else parts)


def _source_spec(args: argparse.Namespace) -> tuple[DatasetSpec, str | None]:
    """The data set to crop and its view, from --data and the column flags."""
    fields: dict[str, Any] = {}
    view = None
    if args.data:
        import os

        from omegaconf import OmegaConf

        from spinenet.config import compose

        try:
            cfg = compose("train", [f"data={args.data}"], output_dir=os.getcwd())
        except Exception as exc:  # Hydra's "Could not find 'data/xyz'" lists the options
            raise ConfigError(f"--data {args.data}: {exc}") from None
        fields = OmegaConf.to_container(cfg.data.dataset, resolve=True)
        synth = cfg.data.get("synthesize") or {}
        view = synth.get("view")
    if args.root:
        fields["root"] = args.root
    if not fields.get("root"):
        raise ConfigError("spinenet roi: give --root (and --data or the column flags) or --boxes")
    for key, value in (
        ("manifest", args.manifest),
        ("image_col", args.image_col),
        ("mask_col", args.mask_col),
        ("patient_col", args.patient_col),
        ("label_col", args.label_col),
    ):
        if value is not None:
            fields[key] = value
    if args.mask_values:
        try:
            fields["mask_values"] = [int(v) for v in args.mask_values.split(",")]
        except ValueError:
            raise ConfigError(
                f"--mask-values: expected gray values like 0,85,170,255, got {args.mask_values!r}"
            ) from None
        if fields.get("class_names") and len(fields["class_names"]) != len(fields["mask_values"]):
            fields["class_names"] = None
    if not args.data and "mask_values" not in fields and not args.segmenter:
        fields["mask_values"] = [0, 85, 170, 255]  # the phantom's convention
    if args.segmenter:  # the masks come from the segmenter: the data set need not have any
        fields["mask_col"] = None
    return DatasetSpec.from_config(fields), view


def _print_summary(out: Path) -> int:
    """Print what was written, each failed input and the summary line; the exit code (3 when some failed)."""
    summary = json.loads((out / "summary.json").read_text())
    lines = [
        f"roi written: {out}",
        f"  source:  {summary['source']} ({summary['view']}, masks: {summary['mask_source']})",
        f"  crops:   {summary['n_crops']} from {summary['n_images']} images, size {summary['size']}, "
        f"margin {summary['margin']}, CLAHE {summary['clahe']}",
    ]
    if summary.get("label_counts"):
        lines.append("  labels:  " + ", ".join(f"{k}={v}" for k, v in summary["label_counts"].items()))
    missing = pd.read_csv(out / "missing.csv")
    if len(missing):
        lines.append(f"  no disc cropped in {len(missing)} image(s) (listed in {out / 'missing.csv'}):")
        lines += [f"    {r.source_image}: {r.reason}" for r in missing.head(10).itertuples()]
        if len(missing) > 10:
            lines.append(f"    ... and {len(missing) - 10} more")
    else:
        lines.append("  no disc cropped in 0 images")
    lines.append(f"  manifest: {out / 'manifest.csv'}")
    failed = summary.get("failed", [])
    lines += [f"failed: line {f['line']} ({f['file']}): {f['reason']}" for f in failed[:10]]
    if len(failed) > 10:
        lines.append(f"... and {len(failed) - 10} more")
    lines.append(
        f"roi: {summary['n_images']} images, {summary['n_ok']} ok, {summary['n_failed']} failed "
        f"(see {out / 'summary.json'})"
    )
    print("\n".join(lines), flush=True)
    return EXIT_PARTIAL if summary["n_failed"] else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``spinenet roi``: write a classification data set of disc crops; prints a summary. Exit 0, or 3
    (``EXIT_PARTIAL``) when some images could not be read (listed in ``summary.json``: ``failed``)."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    from spinenet.tasks.train import ensure_torch_threads

    ensure_torch_threads()
    size = _parse_size(args.size)
    clahe = (
        None if args.no_clahe else {"clip": args.clahe_clip, "tiles": (args.clahe_tiles, args.clahe_tiles)}
    )
    if args.boxes:
        if args.root or args.data or args.segmenter:
            raise ConfigError(
                "spinenet roi: --boxes is a source of its own; leave out --root, --data, --segmenter"
            )
        images = Path(args.images) if args.images else Path(args.boxes).parent
        out = crops_from_box_csv(
            args.boxes,
            images,
            args.out,
            size=size,
            margin=0.0 if args.margin is None else margin_setting(args.margin[0] if len(args.margin) == 1 else args.margin),
            clahe=clahe,
            label_col=args.label_col,
            patient_col=args.patient_col,
            overwrite=args.overwrite,
        )
        return _print_summary(out)
    spec, view = _source_spec(args)
    view = args.view or view or "sagittal"
    names = list(spec.class_names or [])
    mask_source: str | MaskSource = "gt"
    if args.segmenter:
        from spinenet.roi.inference import segmenter_mask_source  # lazy: start-up (torch)

        mask_source, names = segmenter_mask_source(args.segmenter, args.device)
    disc_class = args.disc_class
    if disc_class is None:
        disc_class = names.index("disc") if "disc" in names else 1
    levels = [v.strip() for v in args.levels.split(",") if v.strip()] if args.levels else None
    out = crop_dataset(
        spec,
        args.out,
        view=view,
        size=size,
        margin=0.10 if args.margin is None else margin_setting(args.margin[0] if len(args.margin) == 1 else args.margin),
        clahe=clahe,
        mask_source=mask_source,
        disc_class=disc_class,
        min_area=args.min_area,
        levels=levels,
        square=args.square,
        overwrite=args.overwrite,
        progress=args.progress,
        inputs=[(args.segmenter, "segmenter checkpoint")] if args.segmenter else (),
        mask_classes=names,
    )
    if args.segmenter:
        name_segmenter(out, args.segmenter)
    return _print_summary(out)
