"""``spinenet data import``: parses the arguments and calls :func:`spinenet.data.importers.run_import`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import fields

from spinenet.data import importers
from spinenet.data.importers import (
    AXES,
    BIT_DEPTHS,
    SUMMARY_NAME,
    UNMAPPED_POLICIES,
    ImportOptions,
    run_import,
)
from spinenet.errors import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, SpinenetError


def build_import_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``spinenet data import`` (pass a sub-parser to add them to it)."""
    p = parser or argparse.ArgumentParser(prog="spinenet data import", description=importers.__doc__.split("\n\n")[0])
    p.add_argument(
        "src",
        help="a DICOM folder (one or many series), a volume file (.nii/.nii.gz/.mha/.mhd/.nrrd) "
        "or a folder of volume files",
    )
    p.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    p.add_argument(
        "--labels",
        help="label volume on the image's grid; for a folder of volumes, a folder of label "
        "volumes with the same file names",
    )
    p.add_argument("--label-map", help='\'spider\', a JSON object {"value" or "a-b": class} or a JSON file')
    p.add_argument(
        "--unmapped",
        choices=UNMAPPED_POLICIES,
        default="error",
        help="label values the map does not cover: error (default) or background",
    )
    p.add_argument("--axis", choices=AXES, default="sagittal", help="volumes: plane of the 2D slices")
    p.add_argument(
        "--patient-id",
        help="patient id to use (default: DICOM PatientID hashed / the file name's part "
        "before '_' / the folder name)",
    )
    ids = p.add_mutually_exclusive_group()
    ids.add_argument(
        "--hash-ids",
        dest="id_mode",
        action="store_const",
        const="hash",
        help="write salted-hash pseudonyms (default)",
    )
    ids.add_argument(
        "--keep-ids",
        dest="id_mode",
        action="store_const",
        const="keep",
        help="write --patient-id / the folder or file-name id as is (never a DICOM PatientID)",
    )
    p.set_defaults(id_mode="hash")
    p.add_argument(
        "--salt",
        help="secret salt for hashing (prefer env SPINENET_PHI_SALT: it stays out of shell "
        "history); the same salt gives the same pseudonyms in later imports",
    )
    p.add_argument(
        "--series", help="series name used in file names (default: DICOM SeriesDescription / file name)"
    )
    p.add_argument("--bit-depth", type=int, choices=BIT_DEPTHS, default=16, help="PNG bit depth (default 16)")
    p.add_argument("--labeled-only", action="store_true", help="write only slices whose mask is not empty")
    p.add_argument(
        "--no-geometry-check",
        dest="check_geometry",
        action="store_false",
        help="accept a label volume of the right size whose origin / spacing / direction differ",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a previous import in --out")
    p.add_argument(
        "--allow-burned-in",
        action="store_true",
        help="DICOM: import slices whose BurnedInAnnotation is YES (text in the pixels may identify the "
        "patient); refused by default",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(progress=None)  # None: a bar only when stderr is a terminal
    return p


def main_import(argv: Sequence[str] | None = None) -> int:
    """``spinenet data import`` entry: 0 on success, 3 (EXIT_PARTIAL) when some input files were not
    imported (listed in import_summary.json), 2 with a one-line message on a user error."""
    args = build_import_parser().parse_args(argv)
    try:
        options = ImportOptions(**{f.name: getattr(args, f.name) for f in fields(ImportOptions)})
        out = run_import(args.src, args.out, options)
    except SpinenetError as exc:
        print(f"spinenet data import: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    manifest = out / "manifest.csv"
    n = sum(1 for _ in manifest.open(encoding="utf-8")) - 1
    summary_path = out / SUMMARY_NAME
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    problems = [f for f in summary.get("files", []) if f["status"] != "skipped"]
    for f in problems[:5]:  # file names only (redacted where they hold ids); every one is in the summary
        print(f"{f['status']}: {f['file']}: {f['reason']}", file=sys.stderr)
    if len(problems) > 5:
        print(f"... and {len(problems) - 5} more in {summary_path}", file=sys.stderr)
    left_out = ", ".join(f"{summary[k]} {k}" for k in ("failed", "refused", "skipped") if summary.get(k))
    print(
        f"imported {n} slices from {summary.get('imported', '?')} of {summary.get('inputs', '?')} input files "
        f"into {out}" + (f"; {left_out} (reasons in {SUMMARY_NAME})" if left_out else "")
    )
    return EXIT_PARTIAL if problems else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_import())
