"""Benchmarks that print their figures (``spinenet bench <name>``); targets are reported, not asserted."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

BENCHMARKS = {
    "data": "spinenet.bench.data",
    "train": "spinenet.bench.train",
    "ensemble": "spinenet.bench.ensemble",
    "diagnose": "spinenet.bench.diagnose",
}


def main(argv: Sequence[str]) -> int:
    from spinenet.errors import ConfigError

    if not argv or argv[0] not in BENCHMARKS:
        raise ConfigError(f"spinenet bench: choose one of {sorted(BENCHMARKS)}")
    try:
        module = importlib.import_module(BENCHMARKS[argv[0]])
    except ModuleNotFoundError as exc:
        raise ConfigError(f"spinenet bench {argv[0]} is not available in this version ({exc})") from None
    return int(module.main(list(argv[1:])) or 0)
