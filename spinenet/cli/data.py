"""``spinenet data synth|check|folds|import|grade-crops``: make, check or import data sets (parsing only)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from spinenet.errors import SpinenetError


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="spinenet data", description="make, check or import data sets")
    sub = parser.add_subparsers(dest="action", required=True)

    synth = sub.add_parser("synth", help="write the synthetic lumbar MRI phantom")
    synth.add_argument("--view", choices=["sagittal", "axial"], default="sagittal")
    synth.add_argument("--patients", type=int, default=30)
    synth.add_argument("--out", required=True, help="target folder (must be empty or new)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=256, help="image size in pixels (multiple of 32)")
    synth.add_argument("--slices", type=int, default=3, help="slices per patient")
    synth.add_argument("--balance", default=None,
                       help="class balance as label=weight pairs, e.g. healthy=2,L4-L5=1,L5-S1=1")
    synth.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")

    check = sub.add_parser("check", help="report every bad row of a data set at once; exit 1 if any")
    check.add_argument("root", help="data set folder (holds the manifest)")
    check.add_argument("--data", default=None,
                       help="a data config name (e.g. spider_seg) whose column names and mask map to use")
    check.add_argument("--manifest", default=None)
    check.add_argument("--image-col", default=None)
    check.add_argument("--mask-col", default=None)
    check.add_argument("--patient-col", default=None)
    check.add_argument("--label-col", default=None)
    check.add_argument("--labels", default=None, help="comma-separated allowed labels")
    check.add_argument("--mask-values", default=None, help="comma-separated gray values of classes 0..n-1")
    check.add_argument("--fast", action="store_true", help="skip decoding images (existence and sizes only)")
    check.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                       help="no progress bar (one is shown on a terminal)")

    folds = sub.add_parser(
        "folds", help="deal patients into k folds that every data set of them shares (CSV patient_id,fold)",
        description="Deal the patients of one or more CSV files into k folds and write patient_id,fold. The "
        "first file's patients are dealt evenly, then the next file's new patients, and so on: list the smallest "
        "data set first. Train with data.split.folds_file=FILE data.split.fold=K (fold K is the test split), "
        "so that a segmenter, a grader and an end-to-end evaluation of fold K all hold out the same patients.")
    folds.add_argument("csvs", nargs="+", metavar="CSV[=PATIENT_COLUMN]",
                       help="manifests or gradings files; the patient column defaults to patient_id")
    folds.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    folds.add_argument("--seed", type=int, default=0)
    folds.add_argument("--out", required=True, help="CSV to write")
    folds.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    sub.add_parser("import", help="DICOM series or NIfTI/MHA volume -> slices in the project layout",
                   add_help=False)

    sub.add_parser("grade-crops", help="join spinenet roi's sagittal crops with per-disc gradings",
                   add_help=False)

    if argv and argv[0] == "grade-crops":
        from spinenet.cli.data_grade_crops import main as grade_main

        return grade_main(list(argv[1:]))
    if argv and argv[0] == "import":
        from spinenet.cli.data_import import main_import

        return main_import(list(argv[1:]))
    args = parser.parse_args(argv)
    if args.action == "synth":
        from spinenet.data.phantom import generate_phantom

        balance = None
        if args.balance:
            try:
                balance = {k: float(v) for k, v in (pair.split("=") for pair in args.balance.split(","))}
            except ValueError:
                raise SpinenetError(f"--balance must look like healthy=2,L4-L5=1; got {args.balance!r}") from None
        manifest = generate_phantom(args.out, view=args.view, patients=args.patients, seed=args.seed,
                                    size=args.size, slices_per_patient=args.slices, class_balance=balance,
                                    overwrite=args.overwrite)
        print(f"phantom written: {manifest}")
        return 0
    if args.action == "folds":
        return _data_folds(args)
    return _data_check(args)


def _data_folds(args: argparse.Namespace) -> int:
    from spinenet.data.splits import fold_counts, write_folds_file

    sources = [(path, column or "patient_id") for path, _, column in (c.partition("=") for c in args.csvs)]
    fold_of, patients = write_folds_file(sources, args.out, args.k, args.seed, args.overwrite)
    print(f"{len(fold_of)} patients in {args.k} folds written: {args.out}")
    for path, ids in patients.items():
        print(f"  {path}: {len(ids)} patients, per fold {fold_counts(fold_of, ids)}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from spinenet.data.manifest import DatasetSpec, check_dataset

    fields: dict = {}
    if args.data:
        from spinenet.config import compose

        cfg = compose("train", [f"data={args.data}"], output_dir=os.getcwd())
        from omegaconf import OmegaConf

        fields = OmegaConf.to_container(cfg.data.dataset, resolve=True)
    fields["root"] = args.root
    for key, value in (("manifest", args.manifest), ("image_col", args.image_col), ("mask_col", args.mask_col),
                       ("patient_col", args.patient_col), ("label_col", args.label_col)):
        if value is not None:
            fields[key] = value
    if args.labels:
        fields["label_names"] = args.labels.split(",")
    if args.mask_values:
        fields["mask_values"] = [int(v) for v in args.mask_values.split(",")]
    spec = DatasetSpec.from_config(fields)
    report = check_dataset(spec, deep=not args.fast, progress=args.progress)
    print(report.format())
    return 0 if report.ok else 1


