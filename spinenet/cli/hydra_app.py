"""``spinenet train`` and ``spinenet eval``: Hydra apps, so sweeps (``-m``), launchers and ``--config-dir`` work.

Errors in the command line or the configs (an unknown group option, a misspelt key, a missing value) print
one line and exit 2; ``HYDRA_FULL_ERROR=1`` shows the whole traceback as Hydra does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence

from spinenet.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, SpinenetError

log = logging.getLogger(__name__)

CONFIG_NAMES = {"train": "train", "eval": "eval"}
# Set while a command runs: the folder it was started in. Sweep trials in other processes (joblib, submitit)
# inherit it, so ``paths.root_dir`` is the same in every trial (see spinenet.config.spinenet_root).
LAUNCH_DIR_ENV = "SPINENET_LAUNCH_DIR"


class _UsageError(BaseException):
    """A config or input error inside the job, already one line (BaseException: Hydra passes it through)."""


def train_main(argv: Sequence[str]) -> int:
    return run_hydra("train", argv)


def eval_main(argv: Sequence[str]) -> int:
    return run_hydra("eval", argv)


def run_ddp_worker(config_path: str) -> int:
    """A DDP worker process: train with the config rank 0 resolved (its run folder, its values)."""
    from omegaconf import OmegaConf

    from spinenet.tasks.train import train

    train(OmegaConf.load(config_path))
    return EXIT_OK


def sweep_objective(metrics: dict) -> float:
    """What an optimising sweeper (Optuna, Nevergrad...) receives from a trial: the monitored VALIDATION value.

    That is ``metrics.json``'s ``best_score``: ``monitor`` at the best checkpoint (the last epoch's value when no
    checkpoint monitors it). Test metrics never reach the sweeper: choosing settings on the test split would
    make its figures optimistic.
    """
    score = metrics.get("best_score")
    if score is None:
        monitor = str(metrics.get("monitor") or "")
        score = (metrics.get("val") or {}).get(monitor.split("/", 1)[-1])
    return float(score) if score is not None else float("nan")


@contextlib.contextmanager
def _process_state(command: str, argv: Sequence[str]) -> Iterator[None]:
    """sys.argv as Hydra and Lightning need it, the launch folder, and Hydra's error mode; restored after.

    ``sys.argv[0]`` stays the real program (the installed ``spinenet`` script or ``python -m spinenet.cli``):
    Lightning starts the other DDP processes by re-running it.
    """
    saved_argv, saved_env = sys.argv, {k: os.environ.get(k) for k in (LAUNCH_DIR_ENV, "HYDRA_FULL_ERROR")}
    sys.argv = [saved_argv[0] if saved_argv and saved_argv[0] else f"spinenet-{command}", *argv]
    os.environ.setdefault(LAUNCH_DIR_ENV, os.getcwd())
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; we print config errors in one line ourselves
    try:
        yield
    finally:
        sys.argv = saved_argv
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def config_error_line(exc: BaseException) -> str | None:
    """One line for an error in the command line or configs, or None for anything else (a bug: traceback)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, HydraException) and type(exc).__name__ == "InstantiationException":
        cause = exc.__cause__
        if isinstance(cause, SpinenetError):
            return str(cause)
        if not isinstance(cause, TypeError | OmegaConfBaseException):  # an error while building: not config
            return None
    elif not isinstance(exc, HydraException | OmegaConfBaseException):
        return None
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    head, rest = lines[0], lines[1:]
    missing = getattr(exc, "missing_cfg_file", None)  # MissingConfigException: list the group's choices
    if missing and "/" in str(missing):
        choices = _group_choices(str(missing).rsplit("/", 1)[0]) or list(getattr(exc, "options", None) or [])
        return f"{head} (available: {', '.join(choices)})"
    # OmegaConf appends "full_key: ..., object_type=..." lines: keep the key, drop the type noise
    keys = [f"({line})" for line in rest if line.startswith("full_key:")][:1]
    hints = [line for line in rest if not line.startswith(("full_key:", "object_type", "reference_type"))]
    return " ".join([head, *hints, *keys])


def _group_choices(group: str) -> list[str]:
    """Every option of a config group, nested ones as ``seg/spider`` (Hydra lists only the top level)."""
    from spinenet.config import config_dir

    root = config_dir() / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")) if root.is_dir() else []


def run_hydra(command: str, argv: Sequence[str]) -> int:
    """Run ``train`` or ``eval`` under ``hydra.main``; returns the exit code."""
    import hydra
    from omegaconf import DictConfig

    from spinenet.config import config_dir, register_resolvers
    from spinenet.sweeps import LAST_SWEEP

    register_resolvers()
    user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"  # before _process_state sets it for Hydra

    def task(cfg: DictConfig) -> float | None:
        from spinenet.sweeps import run_trial
        from spinenet.tasks.train import ensure_torch_threads

        ensure_torch_threads()
        if command == "train":
            from spinenet.tasks.train import train as run
        else:
            from spinenet.tasks.evaluate import evaluate as run
        try:
            metrics = run_trial(run, cfg)
        except Exception as exc:  # a single run: config and input errors are one line, not a traceback
            line = str(exc) if isinstance(exc, SpinenetError) else config_error_line(exc)
            if line is None or user_wants_traceback:
                raise
            raise _UsageError(line) from None
        if metrics is None:  # a failed sweep trial, already recorded
            return float("nan")
        print_summary(metrics)
        return sweep_objective(metrics) if command == "train" else None

    if command == "train" and os.environ.get("SPINENET_SMOKE") == "1" and not any(
            a.lstrip("+~").startswith("debug=") for a in argv):
        argv = [*argv, "debug=smoke"]  # CI's smoke knob (README): every run cut to a few batches
    app = hydra.main(config_path=str(config_dir()), config_name=CONFIG_NAMES[command], version_base="1.3")(task)
    LAST_SWEEP.clear()
    with _process_state(command, argv):
        try:
            app()
        except _UsageError as exc:
            print(f"spinenet {command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except Exception as exc:
            line = None if user_wants_traceback else config_error_line(exc)
            if line is None:
                raise
            print(f"spinenet {command}: error: {line}", file=sys.stderr)
            return EXIT_USAGE
    if LAST_SWEEP:
        print(f"sweep summary: {LAST_SWEEP['summary']} ({LAST_SWEEP['trials']} trials, {LAST_SWEEP['failed']} failed)")
        if LAST_SWEEP["failed"]:
            print(f"spinenet {command}: {LAST_SWEEP['failed']} trial(s) failed; see summary.md", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def print_summary(metrics: dict) -> None:
    """Where a run went and its headline test figures (what `make demo` prints)."""
    lines = [f"run folder: {metrics.get('run_dir')}"]
    if metrics.get("metrics_file"):
        lines.append(f"metrics:    {metrics['metrics_file']}")
    elif metrics.get("run_dir"):
        lines.append(f"metrics:    {os.path.join(metrics['run_dir'], 'metrics.json')}")
    if metrics.get("tested_checkpoint") or metrics.get("best_checkpoint"):
        lines.append(f"checkpoint: {metrics.get('tested_checkpoint') or metrics['best_checkpoint']}")
    if metrics.get("best_score") is not None:
        lines.append(f"validation: {metrics.get('monitor')}={metrics['best_score']:.4f} (what a sweeper optimises)")
    test = metrics.get("test") or {}
    headline = ("dice_mean_fg", "miou", "miou_fg", "accuracy", "balanced_accuracy", "f1_macro", "auroc_macro")
    shown = [f"{k}={test[k]:.4f}" for k in headline if isinstance(test.get(k), float) and math.isfinite(test[k])]
    shown += [f"{k}={v:.4f}" for k, v in test.items() if k.startswith("dice_") and k not in headline
              and "per_image" not in k and not k.endswith("_model_res") and isinstance(v, float)]
    if isinstance(test.get("dice_mean_fg_model_res"), float):  # the figure at the model's input size, beside
        shown.append(f"dice_mean_fg_model_res={test['dice_mean_fg_model_res']:.4f}")
    if shown:
        lines.append("test:       " + ", ".join(shown))
    if metrics.get("wandb_dir"):
        lines.append(f"W&B (offline): {metrics['wandb_dir']}  ->  wandb sync {metrics['wandb_dir']}")
    print("\n".join(lines), flush=True)
