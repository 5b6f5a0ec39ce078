"""``spinenet data grade-crops``: parses the arguments and calls :func:`spinenet.data.gradings.grade_crops`."""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence

from spinenet.data.gradings import RULES, grade_crops, read_gradings
from spinenet.data.level_check import prepare_level_check, write_level_check


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
    p.add_argument("--rule", choices=RULES, default="position",
                   help="count: keep a slice only when its discs are exactly the graded ones; position (default): "
                   "also number the others by their spacing, leaving out the discs it is unsure of")
    p.add_argument("--check-levels", metavar="DISC_MANIFEST",
                   help="also check both rules' disc numbers against crops of the same slices with known numbers "
                   "(SPIDER's disc_crops/manifest.csv), on all their patients, --exclude or not; "
                   "writes <out stem>_levels.csv")
    p.add_argument("--check-series", default="t2", help="series of --check-levels' crops cut from these slices")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    levels = None
    if args.check_levels:  # before anything is written
        levels = prepare_level_check(args.crops, args.check_levels, args.check_series, args.out, args.overwrite)
    out, kept, skipped = grade_crops(args.crops, args.gradings, args.out, args.exclude, args.overwrite,
                                     args.patient_col, args.disc_col, args.rule)
    print(f"graded crops: {out} ({len(kept)} crops of {kept['patient_id'].nunique()} patients)")
    if len(skipped):
        reasons = Counter(skipped.kind)
        whole = skipped["image"].fillna("").eq("")
        print(f"left out: {int(whole.sum())} slice(s) and {int((~whole).sum())} single crop(s), listed in "
              f"{out.with_name(out.stem + '_skipped.csv')}: " + ", ".join(f"{n} {k}" for k, n in reasons.most_common()))
    if levels is not None:
        table = read_gradings(args.gradings, args.patient_col, args.disc_col)
        counts = write_level_check(levels, args.crops, table, args.check_levels, args.check_series)
        print(f"levels checked on the {counts[args.rule]['known_slices']} slices whose discs are in "
              f"{args.check_levels} ({args.check_series}), every patient counted; table: {levels}")
        for rule, c in counts.items():
            print(f"  rule {rule}: {c['crops']} crops of {c['patients']} patients without --exclude; known slices: "
                  f"{c['slices_right']}/{c['slices']} kept with every level right, "
                  f"{c['discs_right']}/{c['discs']} discs right")
    return 0
