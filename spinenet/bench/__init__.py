"""Benchmarks that print their figures (``spinenet bench <name>``); targets are reported, not asserted."""

from __future__ import annotations

import os

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
