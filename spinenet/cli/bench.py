"""``spinenet bench <name>``: parses a benchmark's options and runs it (``spinenet.bench.<name>.benchmark``).

A benchmark's module is imported only when it runs, so ``spinenet bench --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import spinenet.bench
from spinenet.bench import BENCHMARKS, DESCRIPTIONS, smoke
from spinenet.errors import ConfigError


def _help() -> str:
    names = ",".join(BENCHMARKS)
    lines = [f"usage: spinenet bench {{{names}}} [options]", "", spinenet.bench.__doc__.strip(), "", "benchmarks:"]
    lines += [f"  {name:<10}{DESCRIPTIONS[name]}" for name in BENCHMARKS]
    lines += ["", "`spinenet bench <name> --help` lists a benchmark's options."]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(_help())
        return 0
    if not argv or argv[0] not in BENCHMARKS:
        print(_help(), file=sys.stderr)
        raise ConfigError(f"spinenet bench: choose one of {sorted(BENCHMARKS)}")
    try:
        module = importlib.import_module(BENCHMARKS[argv[0]])
    except ModuleNotFoundError as exc:
        raise ConfigError(f"spinenet bench {argv[0]} is not available in this version ({exc})") from None
    return int(_RUNNERS[argv[0]](module, list(argv[1:])) or 0)


def _data(bench, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="spinenet bench data", description=bench.__doc__)
    parser.add_argument("--experiment", default="demo", help="experiment whose data and model to use")
    parser.add_argument("--batches", type=int, default=2 if smoke() else 30)
    parser.add_argument("--steps", type=int, default=1 if smoke() else 10)
    parser.add_argument("--data-dir", default=None, help="where the phantom is generated (default: a temp dir)")
    args = parser.parse_args(argv)
    return bench.benchmark(args.experiment, args.batches, args.steps, args.data_dir)


def _train(bench, argv: list[str]) -> int:
    def setting(name: str) -> str:
        unknown = [part for part in name.split("+") if part not in bench.SETTINGS]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown setting {'+'.join(unknown)!r}; choose from {sorted(bench.SETTINGS)}"
            )
        return name

    parser = argparse.ArgumentParser(prog="spinenet bench train", description=bench.__doc__)
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--steps", type=int, default=2 if smoke() else 20)
    parser.add_argument("--warmup", type=int, default=1 if smoke() else 3)
    parser.add_argument("--rounds", type=int, default=1 if smoke() else 2, help="interleaved repetitions of both loops")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra overrides")
    parser.add_argument("--setting", action="append", nargs="+", type=setting, default=[],
                        help="measure training images/s with these speed settings instead of the "
                             "Lightning-vs-plain comparison (combine with +, e.g. channels_last+bf16): "
                             + "; ".join(f"{k}: {v}" for k, v in bench.SETTINGS.items()))
    parser.add_argument("--epoch-time", action="store_true",
                        help="also time one full training epoch of the experiment's config")
    args = parser.parse_args(argv)
    settings = list(dict.fromkeys(name for group in args.setting for name in group))
    return bench.benchmark(args.experiment, args.steps, args.warmup, args.rounds, args.override, settings,
                           args.epoch_time)


def _ensemble(bench, argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="spinenet bench ensemble", description=bench.__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--naive-samples", type=int, default=3 if smoke() else 20,
                    help="weight vectors timed with the naive loop")
    ap.add_argument("--size", type=int, default=32 if smoke() else 256, help="segmentation slices' size in pixels")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    r = bench.run_ensemble_benchmark(device=args.device, seed=args.seed, naive_samples=args.naive_samples,
                                     size=args.size)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return bench.print_figures(r)


def _diagnose(bench, argv: list[str]) -> int:
    import torch  # lazy: start-up (only this benchmark's default device needs it)

    from spinenet.loading import PRECISIONS  # lazy: start-up
    from spinenet.pipeline.diagnose import ENGINES, OVERLAY_FORMATS, OVERLAYS  # lazy: start-up

    p = argparse.ArgumentParser(prog="spinenet bench diagnose", description=bench.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4 if smoke() else 64, help="slices per timed pass")
    p.add_argument("--distinct", type=int, default=2 if smoke() else 16, help="distinct phantom slices (repeated)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[2] if smoke() else [8, 16, 32])
    p.add_argument("--pipeline-threads", type=int, default=None, help="threads of the decode, post-processing "
                   "and writing stages (spinenet.pipeline.diagnose.run; default: the CPU count, 2 to 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as set)")
    p.add_argument("--no-channels-last", action="store_true", help="PyTorch engine: keep NCHW")
    p.add_argument("--engine", nargs="+", choices=ENGINES, default=None,
                   help="default: torch, and onnxruntime where installed (CPU); as `spinenet diagnose --engine`")
    p.add_argument("--overlays", choices=OVERLAYS, default="all",
                   help="as `spinenet diagnose --overlays` (the target is measured with all)")
    p.add_argument("--overlay-format", choices=OVERLAY_FORMATS, default="jpg",
                   help="as `spinenet diagnose --overlay-format` (the target is measured with jpg)")
    p.add_argument("--repeats", type=int, default=1 if smoke() else 3, help="timed passes; the best is reported")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the PyTorch segmenter's arithmetic, as `spinenet diagnose --precision` (the target is "
                        "measured with auto)")
    args = p.parse_args(argv)
    return bench.benchmark(images=args.images, distinct=args.distinct, batch_sizes=args.batch_size,
                           pipeline_threads=args.pipeline_threads, threads=args.threads,
                           channels_last=not args.no_channels_last, engines=args.engine, repeats=args.repeats,
                           device=args.device, overlays=args.overlays, overlay_format=args.overlay_format,
                           precision=args.precision)


def _measurements(bench, argv: list[str]) -> int:
    import os

    p = argparse.ArgumentParser(prog="spinenet bench measurements", description=bench.__doc__.split("\n\n")[0])
    p.add_argument("--spider", default=os.environ.get("SPIDER_DIR"), help="SPIDER folder (default $SPIDER_DIR)")
    p.add_argument("--slices", type=int, default=2, help="middle slices per patient (of 6)")
    p.add_argument("--aggregate", choices=sorted(bench.AGGREGATES), default="mean",
                   help="a level's value over the slices: their mean or their largest")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--levels", default=",".join(bench.DEFAULT_LEVELS), help="comma-separated levels to score")
    p.add_argument("--out", help="write the figures, per-level rows and per-slice values as JSON")
    p.add_argument("--draw", help="folder for measurement overlays of a few patients")
    p.add_argument("--draw-patients", type=int, default=3)
    p.add_argument("--draw-ids", default="", help="comma-separated patient ids to draw instead")
    args = p.parse_args(argv)
    return bench.benchmark(args.spider, args.slices, args.aggregate, args.bootstrap, args.levels.split(","),
                           args.out, args.draw, args.draw_patients,
                           [i.strip() for i in args.draw_ids.split(",") if i.strip()])


# benchmark -> its parser and call (the module is passed in, imported by ``main``)
_RUNNERS: dict[str, Callable[[object, list[str]], int]] = {
    "data": _data,
    "train": _train,
    "ensemble": _ensemble,
    "diagnose": _diagnose,
    "measurements": _measurements,
}
