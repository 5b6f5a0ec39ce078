"""``spinenet report``: parses the arguments and calls :func:`spinenet.report.write_report`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from spinenet.errors import ConfigError
from spinenet.report import write_report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="spinenet report", description="Leaderboard and plots of sweeps and runs as Markdown or HTML."
    )
    p.add_argument(
        "folders", nargs="+", metavar="FOLDER", help="sweep folders, run folders or folders of runs"
    )
    p.add_argument("--format", choices=["md", "html"], default="md")
    p.add_argument("--out", default=None, help="output folder (default: <first folder>/report)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
    p.add_argument(
        "--metric",
        default=None,
        help="column to rank by, e.g. test/dice_mean_fg (default: the monitor at the best checkpoint)",
    )
    p.add_argument("--mode", choices=["max", "min"], default=None, help="default: the runs' monitor_mode")
    p.add_argument("--top", type=int, default=5, help="runs shown in the per-class plots")
    args = p.parse_args(list(argv or []))
    if args.top < 1:
        raise ConfigError(f"--top must be >= 1, got {args.top}")
    path = write_report(args.folders, args.out, args.format, args.metric, args.mode, args.top, args.overwrite)
    print(f"report: {path}")
    return 0
