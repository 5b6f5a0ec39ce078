"""The ``spinenet`` command: parses the command name and hands the rest to that command's module.

Nothing heavy is imported here (no torch, Lightning or models), so ``spinenet --help`` is instant; each
command imports what it needs when it runs.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from spinenet import __version__
from spinenet.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, SpinenetError

# command -> (module with ``main(argv) -> int``, one line of help). One place lists every command.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("spinenet.cli.hydra_app:train_main", "fit a model and test it (Hydra overrides; -m for sweeps)"),
    "eval": ("spinenet.cli.hydra_app:eval_main", "metrics of a checkpoint or saved ensemble on a data set"),
    "data": ("spinenet.cli.data:main", "make, check or import data sets (synth | check | import | grade-crops)"),
    "roi": ("spinenet.cli.roi:main", "crop discs (from masks, a segmenter or a box CSV) into a crop data set"),
    "diagnose": ("spinenet.cli.diagnose:main", "per-level findings of scans: segment, crop, classify, report"),
    "findings-eval": ("spinenet.cli.findings_eval:main", "score diagnose findings against per-level gradings"),
    "ensemble": ("spinenet.cli.ensemble:main", "weighted-average ensembles: weights on validation, scores on test"),
    "report": ("spinenet.cli.report:main", "leaderboard and plots of a sweep or of run folders"),
    "export": ("spinenet.cli.export:main", "export a checkpoint to ONNX (or legacy TorchScript), verified"),
    "bench": ("spinenet.cli.bench:main", "benchmarks that print their figures (data | train | ensemble | diagnose)"),
}

HELP = f"""usage: spinenet <command> [options]

spinenet {__version__}: lumbar-spine MRI disc-herniation experiments (segmentation, ROI cropping,
classification, sweeps and weighted-average ensembles).

commands:
{{commands}}

`spinenet <command> --help` describes a command. `train` and `eval` take Hydra overrides
(`spinenet train experiment=demo trainer.max_epochs=5`, `-m` for sweeps, `--cfg job` to print the config).
Exit codes: {EXIT_OK} done; {EXIT_FAILED} ran, result negative (bad rows, a failed sweep trial);
{EXIT_USAGE} bad arguments, config or input; {EXIT_PARTIAL} some inputs of a batch failed (listed in its outputs)."""


def _help() -> str:
    width = max(map(len, COMMANDS)) + 2
    return HELP.format(commands="\n".join(f"  {name:<{width}}{text}" for name, (_, text) in COMMANDS.items()))


def _entry(command: str) -> Callable[[Sequence[str]], int]:
    module, _, attr = COMMANDS[command][0].partition(":")
    return getattr(importlib.import_module(module), attr)


def _ddp_worker_entry() -> int | None:
    """In a DDP worker started by Lightning: run rank 0's resolved config (same run folder), not a new one.

    Lightning starts the workers by re-running this command line; what they must do is in the environment.
    """
    from spinenet.ddp import DDP_CONFIG_ENV, is_ddp_worker

    if not os.environ.get(DDP_CONFIG_ENV) or not is_ddp_worker():
        return None
    from spinenet.cli.hydra_app import run_ddp_worker

    return run_ddp_worker(os.environ[DDP_CONFIG_ENV])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    worker = _ddp_worker_entry()
    if worker is not None:
        return worker
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_help())
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] in ("-V", "--version", "version"):
        print(f"spinenet {__version__}")
        return EXIT_OK
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"spinenet: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        return int(_entry(command)(rest) or 0)
    except SpinenetError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the user asked for whole tracebacks
            raise
        print(f"spinenet {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        # a config that Hydra composes outside `spinenet train` (bench train --override, eval): one line too
        from spinenet.cli.hydra_app import config_error_line  # lazy: hydra

        line = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else config_error_line(exc)
        if line is None:
            raise  # a bug: its traceback
        print(f"spinenet {command}: error: {line}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
