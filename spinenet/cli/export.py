"""``spinenet export``: parses the arguments and calls :func:`spinenet.pipeline.export.export_model`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from spinenet.pipeline import export
from spinenet.pipeline.export import ATOL, DEFAULT_FORMATS, FORMATS, RTOL, export_model


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spinenet export", description=export.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a .ckpt checkpoint or a saved ensemble .json")
    p.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite)")
    p.add_argument("--format", nargs="+", default=list(DEFAULT_FORMATS), choices=FORMATS,
                   help="onnx (default); torchscript is the legacy, deprecated format, only when asked for")
    p.add_argument("--name", help="file stem (default: segmenter or classifier)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(list(argv) if argv is not None else None)
    from spinenet.tasks.train import ensure_torch_threads

    ensure_torch_threads()
    sidecar = export_model(args.checkpoint, args.out, args.format, args.name, args.overwrite)
    doc = json.loads(sidecar.read_text())
    print(f"exported {doc['source']} -> {sidecar.parent}: " + ", ".join(doc["files"].values()) + f", {sidecar.name}")
    v = doc["verification"]
    for f in doc["files"]:
        diff = v.get(f"{f}_max_abs_diff")
        print(f"  {f}: " + (f"max |diff| {diff:.2e} (tolerance atol {ATOL} + rtol {RTOL})" if diff is not None
                            else v.get("onnx_skipped", "not checked")))
    return 0
