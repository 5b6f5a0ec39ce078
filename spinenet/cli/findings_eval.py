"""``spinenet findings-eval``: parses the arguments and calls
:func:`spinenet.pipeline.findings_eval.evaluate_findings`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from spinenet.cli.options import add_wandb_arguments
from spinenet.errors import EXIT_OK, EXIT_PARTIAL, ConfigError
from spinenet.pipeline.findings_eval import (
    DEFAULT_CLASS_COL,
    DEFAULT_LEVELS,
    EVAL_VIEWS,
    TRUTH_FINDING,
    evaluate_findings,
    format_measurement_table,
    format_table,
    log_findings_eval_to_wandb,
    parse_levels,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spinenet findings-eval",
        description="Score spinenet diagnose findings against per-level herniation gradings: per-level and "
        "pooled sensitivity / specificity / AUROC and the image-level 4-way agreement, with 95%% intervals.",
        epilog="example (SPIDER mid-sagittal slices):\n"
        "  spinenet diagnose --manifest spider/midsag_t2/manifest.csv --study-col patient_id \\\n"
        "      --segmenter seg.ckpt --classifier cls.ckpt --out midsag_findings\n"
        "  spinenet findings-eval --findings midsag_findings --truth spider/midsag_t2/manifest.csv \\\n"
        "      --exclude-splits SEG_RUN/splits.json CLS_RUN/splits.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--findings", required=True, nargs="+", metavar="FOLDER",
                   help="the --out folder of spinenet diagnose; several are pooled (different patients each, "
                   "or one per fold with --folds)")
    p.add_argument("--folds", metavar="FOLDS_CSV",
                   help="a folds file (spinenet data folds): --findings gives one folder per fold, in fold "
                   "order, and folder k is scored on fold k's patients only (cross-validated end to end)")
    p.add_argument("--truth", required=True, help="CSV with a patient column and a 0/1 column per level")
    p.add_argument("--exclude-splits", nargs="+", default=[], metavar="SPLITS",
                   help="splits.json files (or run folders holding one): their train and val patients are "
                   "not evaluated")
    p.add_argument("--out", help="JSON to write (default: <findings>/eval.json)")
    p.add_argument("--patient-col", default="patient_id")
    p.add_argument("--level", action="append", metavar="LEVEL=COLUMN",
                   help=f"a level and its 0/1 truth column (repeatable; default {' '.join(DEFAULT_LEVELS)})")
    p.add_argument("--class-col", help=f"image-level class column checked against the level columns "
                   f"(healthy / LEVEL / both; default {DEFAULT_CLASS_COL} when present)")
    p.add_argument("--gradings", help="per-disc gradings (SPIDER radiological_gradings.csv: Patient, IVD label "
                   "1 = L5-S1, ...): the measurements are scored for herniation, bulging and narrowing too")
    p.add_argument("--view", choices=EVAL_VIEWS, default="sagittal",
                   help="which findings to score (default sagittal)")
    add_wandb_arguments(p)
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the AUROC interval "
                   "(0: none)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    levels = parse_levels(args.level or DEFAULT_LEVELS)
    if not args.out and len(args.findings) > 1:
        raise ConfigError("--out: name the JSON file to write when several --findings folders are pooled")
    result = evaluate_findings(args.findings, args.truth, args.exclude_splits, args.patient_col, levels,
                               args.class_col, args.view, args.bootstrap, args.gradings, args.folds)
    out = Path(args.out) if args.out else Path(args.findings[0]) / "eval.json"
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the JSON file to write")
    from spinenet.tasks.common import write_json

    write_json(result, out)
    print(format_table(result))
    if result["measurements"]["scores"]:
        print(f"\nMeasurements from the segmentation as predictors ({', '.join(result['measurements']['units'])}; "
              f"'{TRUTH_FINDING}' = the truth manifest's level columns):")
        print(format_measurement_table(result["measurements"]["scores"], list(result["levels"])))
    print(f"\nevaluation written: {out}")
    for u in result["unassessed_studies"][:10]:
        print(f"no finding for study {u['study']}: "
              + "; ".join(f"{im['image']}: {im['status']}" for im in u["images"][:3]))
    for bad in result["unreadable_findings"][:10]:
        print(f"unreadable: {bad['file']}: {bad['reason']}")
    log_findings_eval_to_wandb(result, out, args.wandb_project, args.wandb_group)
    bad = len(result["unreadable_findings"])
    read = result["patients"]["diagnosed"]
    print(f"findings-eval: {read + bad} findings files, {read} read" + (f", {bad} unreadable" if bad else "")
          + f", {len(result['unassessed_studies'])} evaluated studies without any finding (see {out})")
    return EXIT_PARTIAL if bad else EXIT_OK
