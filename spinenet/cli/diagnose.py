"""``spinenet diagnose``: parses the arguments, loads the models and calls :func:`spinenet.pipeline.diagnose.run`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from spinenet.errors import EXIT_OK, EXIT_PARTIAL, ConfigError
from spinenet.loading import PRECISIONS, Predictor, load_model
from spinenet.pipeline.diagnose import (
    ENGINES,
    OVERLAY_FORMATS,
    OVERLAYS,
    STATUS_FAILED,
    STATUS_SKIPPED,
    VIEWS,
    collect_items,
    run,
    summary_line,
)
from spinenet.utils.outdir import refuse_input_overlap


def _models_by_view(values: Sequence[str], view: str, what: str, device: str,
                    allow_torchscript: bool = False, precision: str = "32") -> dict[str, Predictor]:
    out: dict[str, Predictor] = {}
    for value in values:
        v, sep, path = value.partition("=")
        if not sep:
            v, path = view, value
        if v not in VIEWS:
            raise ConfigError(f"--{what} {value}: the view before '=' must be one of {', '.join(VIEWS)}")
        out[v] = load_model(path, device, allow_torchscript, precision)[0]
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spinenet diagnose",
        description="Per-level disc findings from an image, a folder of images or a DICOM series: "
        "segment, find discs, name levels bottom-up, crop as in training, classify.",
        epilog="examples:\n"
        "  spinenet diagnose scan.png --segmenter seg.ckpt --classifier cls.ckpt --out findings\n"
        "  spinenet diagnose dicom_dir/ --segmenter export/segmenter.onnx --classifier export/classifier.onnx "
        "--out findings\n"
        "  spinenet diagnose --manifest studies.csv --study-col patient_id --view-col view \\\n"
        "      --segmenter sagittal=s.ckpt --classifier sagittal=c.ckpt \\\n"
        "      --segmenter axial=sa.ckpt --classifier axial=ca.ckpt --out findings",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", nargs="?", help="image file, folder of images, or DICOM folder")
    p.add_argument("--segmenter", action="append", required=True, metavar="[VIEW=]FILE",
                   help=".ckpt, ensemble .json, or exported .onnx (or .pt with --allow-torchscript); VIEW= for a "
                   "second view (repeatable)")
    p.add_argument("--classifier", action="append", required=True, metavar="[VIEW=]FILE")
    p.add_argument("--view", choices=VIEWS, default=None,
                   help="view of the inputs (default sagittal; DICOM: from the slice orientation)")
    p.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    p.add_argument("--engine", choices=ENGINES, default="torch",
                   help="torch: run checkpoints in PyTorch; onnxruntime: export them to ONNX in memory (checked "
                   "against PyTorch) and run ONNX Runtime (needs spinenet-mri[onnx]; compare with spinenet bench diagnose)")
    p.add_argument("--study", help="treat every input as one study with this name")
    p.add_argument("--manifest", help="CSV listing images (paths relative to it)")
    p.add_argument("--image-col", default="image")
    p.add_argument("--study-col", help="manifest column grouping images into studies (patient or study id)")
    p.add_argument("--view-col", help="manifest column giving each image's view (sagittal/axial)")
    p.add_argument("--level-col", help="manifest column giving an axial slice's level, e.g. L5-S1")
    p.add_argument("--disc-class", type=int, help="class id of the disc (default: 'disc' in the segmenter's "
                   "class names, else 1)")
    p.add_argument("--min-area", type=int, default=20, help="smallest disc contour in pixels")
    p.add_argument("--overlays", choices=OVERLAYS, default="all",
                   help="which studies get an overlay picture: all (default), flagged (a herniated disc or an "
                   "image that is not ok), none")
    p.add_argument("--overlay-format", choices=OVERLAY_FORMATS, default="jpg",
                   help="overlay.jpg (default: JPEG quality 90, full-resolution colour; encodes about 6x faster "
                   "than PNG) or overlay.png (lossless, for figures; its encoding costs about a third of a small "
                   "U-Net's time per image)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the segmenter's arithmetic: auto (bf16 where the CPU or GPU computes it natively, else "
                        "32), 32 or bf16; the classifier always runs in float32")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--allow-torchscript", action="store_true",
                   help="load TorchScript (.pt/.ts) models: they can run arbitrary operations, so only files you trust")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    from spinenet.tasks.train import ensure_torch_threads

    ensure_torch_threads()
    view_given = args.view is not None  # a chosen view overrides the one DICOM slice orientations give
    view = args.view or "sagittal"
    if args.study_col and not args.manifest:
        raise ConfigError("--study-col needs --manifest (the CSV whose column groups images into studies)")
    if args.engine == "onnxruntime" and args.device != "cpu":
        raise ConfigError("--engine onnxruntime runs on the CPU; use --engine torch with --device cuda")
    models = [(v.partition("=")[2] or v, "model file") for v in [*args.segmenter, *args.classifier]]
    refuse_input_overlap(args.out, [(args.input, "input"), (args.manifest, "manifest"), *models])
    if args.engine != "torch" and args.precision == "bf16":
        raise ConfigError("--precision bf16 runs with --engine torch; ONNX Runtime runs the exported float32 model")
    # the segmenter's arg-max is as good in bf16 (SPIDER: the same Dice to 4 decimals) at about twice the
    # speed; the classifier stays float32, so that its calibrated probabilities and thresholds hold as fitted
    segmenters = _models_by_view(args.segmenter, view, "segmenter", args.device, args.allow_torchscript,
                                 args.precision if args.engine == "torch" else "32")
    classifiers = _models_by_view(args.classifier, view, "classifier", args.device, args.allow_torchscript)
    if args.engine == "onnxruntime":
        from spinenet.pipeline.export import onnxruntime_predictor

        segmenters = {v: onnxruntime_predictor(m) for v, m in segmenters.items()}
        classifiers = {v: onnxruntime_predictor(m) for v, m in classifiers.items()}
    items = collect_items(args.input, manifest=args.manifest, view=view, view_given=view_given,
                          study=args.study, image_col=args.image_col, study_col=args.study_col,
                          view_col=args.view_col, level_col=args.level_col)
    out = Path(args.out)
    summary = run(items, segmenters, classifiers, out, args.batch_size, args.overwrite, args.min_area,
                  args.disc_class, progress=not args.no_progress, overlays=args.overlays,
                  overlay_format=args.overlay_format)
    print(f"diagnosis written: {out} ({summary['studies']} studies, {summary['images']} images, "
          f"{summary['discs']} discs, {summary['images_without_disc']} image(s) without a disc; "
          f"{out / 'index.html'})")
    for study, folder in list(summary["study_folders"].items())[:5]:
        print(f"--- {study}\n" + (out / folder / "report.txt").read_text().strip())
    problems = [r for r in summary["inputs"] if r["status"] in (STATUS_FAILED, STATUS_SKIPPED)]
    for r in problems[:10]:
        print(f"{r['status']}: {r['file']}: {r['reason']}")
    if len(problems) > 10:
        print(f"... and {len(problems) - 10} more")
    print(summary_line(summary, out))
    return EXIT_PARTIAL if problems else EXIT_OK
