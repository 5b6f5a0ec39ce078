"""``spinenet ensemble``: weighted-average ensembles of trained members (parsing and printing only; the work
is :func:`spinenet.ensemble.run.run_ensemble`).

    spinenet ensemble RUN_OR_CKPT... [--sweep DIR --top-k K] [--method exhaustive|greedy|both] [--step 0.1]
                      [--objective dice|miou|accuracy|balanced_accuracy|macro_f1|auroc] [--out DIR]
                      [--device cpu|cuda] [--splits FILE] [--data-root DIR] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from spinenet.cli.options import add_wandb_arguments
from spinenet.ensemble import objectives as O
from spinenet.ensemble.reporting import fmt, log_ensemble_to_wandb
from spinenet.ensemble.run import DEVICES, METHODS, EnsembleRequest, run_ensemble


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spinenet ensemble",
        description="Weighted-average ensembles (WAEM, Sayed 2025) of trained members: weights chosen on the "
        "validation split, reported on validation and test.",
        epilog="Writes report.md, report.json and ensemble.json (load it with spinenet eval ckpt_path=...) into "
        "--out. Member predictions are cached, so a new search costs no inference.",
    )
    p.add_argument(
        "members",
        nargs="*",
        metavar="MEMBER",
        help="checkpoint files, run folders, or sweep folders (all successful trials, or --top-k)",
    )
    p.add_argument("--sweep", action="append", default=[], metavar="DIR", help="a sweep folder (repeatable)")
    p.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="K",
        help="take the K best trials of each sweep, ranked by its monitor at the best checkpoint",
    )
    p.add_argument("--method", choices=METHODS, default="both")
    p.add_argument("--step", type=float, default=0.1, help="weight grid step of the exhaustive search (1/n)")
    p.add_argument("--rounds", type=int, default=25, help="rounds of greedy selection (with replacement)")
    p.add_argument(
        "--objective",
        choices=list(O.OBJECTIVES),
        default=None,
        help="what the weights maximise on validation (default: dice for segmentation, "
        "balanced_accuracy for classification)",
    )
    p.add_argument("--out", default=None, help="output folder (default outputs/ensemble/<date>_<time>_<id>)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="for inference and search (auto: cuda when available)",
    )
    p.add_argument(
        "--splits",
        default=None,
        metavar="FILE",
        help="splits.json to use (default: the first member's run folder's)",
    )
    p.add_argument("--data-root", default=None, help="data set folder (default: the first member's)")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where cached predictions live (default: <member run folder>/predictions)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="inference batch size (default: the member's)"
    )
    p.add_argument(
        "--num-workers", type=int, default=None, help="data loader workers (default: the member's)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(progress=None)  # None: a bar only when stderr is a terminal
    add_wandb_arguments(p)
    return p



def _print_summary(report: dict[str, Any]) -> None:
    obj = report["objective"]
    width = max(len(e["name"]) for e in report["entries"])
    print(f"\n{'model':<{width}}  val {obj:<10} test {obj}")
    for e in report["entries"]:
        print(f"{e['name']:<{width}}  {fmt(e['val'][obj]):<14} {fmt(e['test'][obj])}")
    for w in report["warnings"]:
        print(f"warning: {w}: weights chosen on it may not generalise")
    print(
        f"\nreport:   {report['out']}/report.md\nensemble: {report['artifact']} ({report['chosen']['name']})\n"
        f"evaluate: spinenet eval ckpt_path={report['artifact']}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv or []))
    request = EnsembleRequest(
        members=args.members,
        sweeps=args.sweep,
        top_k=args.top_k,
        method=args.method,
        step=args.step,
        rounds=args.rounds,
        objective=args.objective,
        out=args.out,
        overwrite=args.overwrite,
        device=args.device,
        splits=args.splits,
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=args.progress,
    )
    report = run_ensemble(request)
    _print_summary(report)
    log_ensemble_to_wandb(report, args.wandb_project, args.wandb_group)
    return 0
