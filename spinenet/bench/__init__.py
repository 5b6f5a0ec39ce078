"""Benchmarks that print their figures (``spinenet bench <name>``); targets are reported, not asserted."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

BENCHMARKS = {
    "data": "spinenet.bench.data",
    "train": "spinenet.bench.train",
    "ensemble": "spinenet.bench.ensemble",
    "diagnose": "spinenet.bench.diagnose",
    "measurements": "spinenet.bench.measurements",
}


DESCRIPTIONS = {
    "data": "images/s the training loader delivers (0 and 2 workers) vs what a training step consumes",
    "train": "Lightning vs a plain PyTorch loop per step; --setting: images/s per speed setting; --epoch-time",
    "ensemble": "exhaustive weight search (classification and segmentation) vs a naive loop",
    "diagnose": "end-to-end images/s of the diagnosis pipeline (PyTorch and ONNX Runtime), FLOPs per image",
    "measurements": "AUROC of the mask measurements for SPIDER's gradings, on ground-truth masks",
}


def smoke() -> bool:
    """SPINENET_SMOKE=1 (CI's README test): every benchmark at its smallest size; the figures mean nothing."""
    return os.environ.get("SPINENET_SMOKE") == "1"


def _help() -> str:
    names = ",".join(BENCHMARKS)
    lines = [f"usage: spinenet bench {{{names}}} [options]", "", __doc__.strip(), "", "benchmarks:"]
    lines += [f"  {name:<10}{DESCRIPTIONS[name]}" for name in BENCHMARKS]
    lines += ["", "`spinenet bench <name> --help` lists a benchmark's options."]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    from spinenet.errors import ConfigError

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
    return int(module.main(list(argv[1:])) or 0)
