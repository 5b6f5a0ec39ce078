"""The ``spinenet`` command.

    spinenet train [hydra overrides]       fit + test; e.g. spinenet train experiment=demo
    spinenet eval ckpt_path=... [overrides]  per-class metrics of a checkpoint on any data set
    spinenet data synth|check|import ...   make, check or import data sets
    spinenet bench data|train|ensemble|...  benchmarks that print their figures
    spinenet diagnose ... / findings-eval ...  per-level findings of scans; their scores against gradings

``train`` and ``eval`` take Hydra overrides, ``-m`` for sweeps, ``--config-dir DIR`` to add a config
folder of your own, ``--cfg job`` to print the config; the others take ordinary flags (``--help``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from spinenet.errors import SpinenetError

log = logging.getLogger("spinenet")

HYDRA_COMMANDS = {"train": "train", "eval": "eval"}


def _run_hydra(command: str, argv: Sequence[str]) -> int:
    """Run a task under Hydra (``hydra.main``), so sweeps, launchers and --config-dir all work."""
    import hydra
    from omegaconf import DictConfig

    from spinenet.config import config_dir, register_resolvers

    register_resolvers()
    config_name = HYDRA_COMMANDS[command]

    def task(cfg: DictConfig):
        from spinenet.tasks.train import ensure_torch_threads

        ensure_torch_threads()
        from spinenet.sweeps import run_trial

        if command == "train":
            from spinenet.tasks.train import train as run
        else:
            from spinenet.tasks.evaluate import evaluate as run
        try:
            metrics = run_trial(run, cfg)
        except SpinenetError as exc:
            log.error("%s", exc)
            raise SystemExit(2) from None
        if metrics is None:  # a failed sweep trial, already recorded
            return float("nan")
        _print_summary(metrics)
        return metrics.get("test", {}).get(str(cfg.get("monitor", "")).split("/", 1)[-1])

    from spinenet.sweeps import LAST_SWEEP

    main = hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(task)
    saved = sys.argv
    sys.argv = [f"spinenet-{command}", *argv]
    LAST_SWEEP.clear()
    try:
        main()
    finally:
        sys.argv = saved
    if LAST_SWEEP:
        print(f"sweep summary: {LAST_SWEEP['summary']} ({LAST_SWEEP['trials']} trials, {LAST_SWEEP['failed']} failed)")
        if LAST_SWEEP["failed"]:
            print(f"spinenet {command}: {LAST_SWEEP['failed']} trial(s) failed; see summary.md", file=sys.stderr)
            return 1
    return 0


def _print_summary(metrics: dict) -> None:
    lines = [f"run folder: {metrics.get('run_dir')}"]
    if metrics.get("metrics_file"):
        lines.append(f"metrics:    {metrics['metrics_file']}")
    elif metrics.get("run_dir"):
        lines.append(f"metrics:    {os.path.join(metrics['run_dir'], 'metrics.json')}")
    if metrics.get("tested_checkpoint") or metrics.get("best_checkpoint"):
        lines.append(f"checkpoint: {metrics.get('tested_checkpoint') or metrics['best_checkpoint']}")
    test = metrics.get("test") or {}
    headline = ("dice_mean_fg", "miou", "miou_fg", "accuracy", "balanced_accuracy", "f1_macro", "auroc_macro")
    shown = [f"{k}={test[k]:.4f}" for k in headline if isinstance(test.get(k), float)]
    shown += [f"{k}={v:.4f}" for k, v in test.items() if k.startswith("dice_") and k not in headline
              and "per_image" not in k and isinstance(v, float)]
    if shown:
        lines.append("test:       " + ", ".join(shown))
    if metrics.get("wandb_dir"):
        lines.append(f"W&B (offline): {metrics['wandb_dir']}  ->  wandb sync {metrics['wandb_dir']}/offline-run-*")
    print("\n".join(lines), flush=True)


def _ddp_worker_entry() -> int | None:
    """In a DDP worker started by Lightning: run rank 0's resolved config (same run folder), not a new one."""
    from spinenet.tasks.train import DDP_CONFIG_ENV, is_ddp_worker

    path = os.environ.get(DDP_CONFIG_ENV)
    if not path or not is_ddp_worker():
        return None
    from omegaconf import OmegaConf

    from spinenet.tasks.train import train

    train(OmegaConf.load(path))
    return 0


# --- subcommands with ordinary flags -------------------------------------------------------------------
def _data_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="spinenet data", description="make, check or import data sets")
    sub = parser.add_subparsers(dest="action", required=True)

    synth = sub.add_parser("synth", help="write the synthetic lumbar MRI phantom")
    synth.add_argument("--view", choices=["sagittal", "axial"], default="sagittal")
    synth.add_argument("--patients", type=int, default=30)
    synth.add_argument("--out", required=True, help="target folder (must be empty or new)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=256, help="image size in pixels (multiple of 32)")
    synth.add_argument("--slices", type=int, default=3, help="slices per patient")
    synth.add_argument("--balance", default=None,
                       help="class balance as label=weight pairs, e.g. healthy=2,L4-L5=1,L5-S1=1")
    synth.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")

    check = sub.add_parser("check", help="report every bad row of a data set at once; exit 1 if any")
    check.add_argument("root", help="data set folder (holds the manifest)")
    check.add_argument("--data", default=None,
                       help="a data config name (e.g. spider_seg) whose column names and mask map to use")
    check.add_argument("--manifest", default=None)
    check.add_argument("--image-col", default=None)
    check.add_argument("--mask-col", default=None)
    check.add_argument("--patient-col", default=None)
    check.add_argument("--label-col", default=None)
    check.add_argument("--labels", default=None, help="comma-separated allowed labels")
    check.add_argument("--mask-values", default=None, help="comma-separated gray values of classes 0..n-1")
    check.add_argument("--fast", action="store_true", help="skip decoding images (existence and sizes only)")

    sub.add_parser("import", help="DICOM series or NIfTI/MHA volume -> slices in the project layout",
                   add_help=False)

    sub.add_parser("grade-crops", help="join spinenet roi's sagittal crops with per-disc gradings",
                   add_help=False)

    if argv and argv[0] == "grade-crops":
        from spinenet.data.gradings import main as grade_main

        return grade_main(list(argv[1:]))
    if argv and argv[0] == "import":
        from spinenet.data.importers import main_import

        return main_import(list(argv[1:]))
    args = parser.parse_args(argv)
    if args.action == "synth":
        from spinenet.data.phantom import generate_phantom

        balance = None
        if args.balance:
            try:
                balance = {k: float(v) for k, v in (pair.split("=") for pair in args.balance.split(","))}
            except ValueError:
                raise SpinenetError(f"--balance must look like healthy=2,L4-L5=1; got {args.balance!r}") from None
        manifest = generate_phantom(args.out, view=args.view, patients=args.patients, seed=args.seed,
                                    size=args.size, slices_per_patient=args.slices, class_balance=balance,
                                    overwrite=args.overwrite)
        print(f"phantom written: {manifest}")
        return 0
    return _data_check(args)


def _data_check(args: argparse.Namespace) -> int:
    from spinenet.data.manifest import DatasetSpec, check_dataset

    fields: dict = {}
    if args.data:
        from spinenet.config import compose

        cfg = compose("train", [f"data={args.data}"], output_dir=os.getcwd())
        from omegaconf import OmegaConf

        fields = OmegaConf.to_container(cfg.data.dataset, resolve=True)
    fields["root"] = args.root
    for key, value in (("manifest", args.manifest), ("image_col", args.image_col), ("mask_col", args.mask_col),
                       ("patient_col", args.patient_col), ("label_col", args.label_col)):
        if value is not None:
            fields[key] = value
    if args.labels:
        fields["label_names"] = args.labels.split(",")
    if args.mask_values:
        fields["mask_values"] = [int(v) for v in args.mask_values.split(",")]
    spec = DatasetSpec.from_config(fields)
    report = check_dataset(spec, deep=not args.fast)
    print(report.format())
    return 0 if report.ok else 1


def _module_main(module: str, attr: str = "main") -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), attr)(list(argv)) or 0)

    return run


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "data": _data_command,
    "bench": _module_main("spinenet.bench", "main"),
    "roi": _module_main("spinenet.roi", "main"),
    "ensemble": _module_main("spinenet.ensemble.cli", "main"),
    "report": _module_main("spinenet.report", "main"),
    "diagnose": _module_main("spinenet.pipeline.diagnose", "main"),
    "findings-eval": _module_main("spinenet.pipeline.evaluate", "main"),
    "export": _module_main("spinenet.pipeline.export", "main"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    worker = _ddp_worker_entry()
    if worker is not None:
        return worker
    commands = [*HYDRA_COMMANDS, *COMMANDS]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        print(f"\ncommands: {', '.join(commands)}")
        return 0
    command, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        if command in HYDRA_COMMANDS:
            return _run_hydra(command, rest)
        if command in COMMANDS:
            return COMMANDS[command](rest)
    except SpinenetError as exc:
        print(f"spinenet {command}: error: {exc}", file=sys.stderr)
        return 2
    print(f"spinenet: unknown command {command!r}; commands: {', '.join(commands)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
