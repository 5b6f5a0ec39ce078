"""``spinenet data grade-crops``: parses the arguments and calls :func:`spinenet.data.gradings.grade_crops`."""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence

from spinenet.data.gradings import grade_crops


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="spinenet data grade-crops",
        description="Join the sagittal crops of spinenet roi with per-disc gradings (SPIDER's "
        "radiological_gradings.csv layout) into a manifest beside them.",
        epilog="example:\n  spinenet roi --segmenter SEG.ckpt --root $SPIDER_DIR/midsag_t2 --mask-col '' "
        "--size 48x112 --margin 0.2 0.6 --no-clahe --out midsag_crops\n"
        "  spinenet data grade-crops midsag_crops --gradings $SPIDER_DIR/radiological_gradings.csv "
        "--exclude $SPIDER_DIR/disc_crops/manifest.csv\n"
        "  spinenet train experiment=cls/spider_bulging "
        "'data.extra_train=[{root: midsag_crops, manifest: graded.csv}]'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("crops", help="folder written by spinenet roi (sagittal)")
    p.add_argument("--gradings", required=True, help="CSV with one row per graded disc")
    p.add_argument("--patient-col", default="Patient")
    p.add_argument("--disc-col", default="IVD label", help="disc number from the bottom (1 = L5-S1)")
    p.add_argument("--exclude", nargs="*", default=[], help="manifests whose patients are left out")
    p.add_argument("--out", default="graded.csv", help="manifest file name written inside the crop folder")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    out, kept, skipped = grade_crops(args.crops, args.gradings, args.out, args.exclude, args.overwrite,
                                     args.patient_col, args.disc_col)
    print(f"graded crops: {out} ({len(kept)} crops of {kept['patient_id'].nunique()} patients)")
    if len(skipped):
        reasons = Counter(skipped.kind)
        print(f"left out: {len(skipped)} slice(s), listed in {out.with_name(out.stem + '_skipped.csv')}: "
              + ", ".join(f"{n} {k}" for k, n in reasons.most_common()))
    return 0
