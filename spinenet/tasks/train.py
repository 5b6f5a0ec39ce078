"""``train(cfg)``: fit a model, test its best checkpoint, write ``metrics.json`` in the run folder."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, read_write

from spinenet.checkpoints import check_resume_checkpoint, check_weights_fit, load_run_checkpoint
from spinenet.contract import TaskKind
from spinenet.ddp import DDP_CONFIG_ENV, is_ddp_worker
from spinenet.errors import ConfigError
from spinenet.tasks.common import build_module, instantiate_group, split_metrics, write_json
from spinenet.utils.run_folder import run_overrides
from spinenet.utils.safe_io import file_sha256

log = logging.getLogger(__name__)

TEST_CKPTS = ("best", "last")  # which weights test=true tests


def _overrides_of(run: Path) -> list[str] | None:
    overrides = run_overrides(run)
    if overrides is None:
        return None
    return sorted(o for o in overrides if not o.startswith(("ckpt_path=", "hydra.run.dir=")))


def find_interrupted_run(output_dir: Path) -> Path | None:
    """For ``ckpt_path=last`` in a new folder: the newest unfinished sibling run with the same overrides."""
    mine = _overrides_of(output_dir)
    siblings = sorted((p for p in output_dir.parent.iterdir() if p.is_dir() and p != output_dir), reverse=True)
    for run in siblings:  # names start with the time stamp: newest first
        if (run / "metrics.json").exists() or not (run / "checkpoints" / "last.ckpt").is_file():
            continue
        if mine is None or _overrides_of(run) == mine:
            return run
    return None


def _resolve_resume(cfg: DictConfig, output_dir: Path) -> tuple[Path, str | None]:
    """The run folder to write to and the checkpoint to resume from (``ckpt_path``: a file or "last")."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return output_dir, None
    if ckpt != "last":
        if not Path(ckpt).is_file():
            raise ConfigError(f"ckpt_path: checkpoint not found: {ckpt}")
        return output_dir, str(ckpt)
    last = output_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        run = find_interrupted_run(output_dir)
        if run is None:
            raise ConfigError(f"ckpt_path=last: no unfinished run with these overrides next to {output_dir}; "
                              "name it with hydra.run.dir=<run folder> ckpt_path=last")
        (output_dir / "RESUMED_IN.txt").write_text(f"this command resumed the interrupted run in {run}\n")
        log.info("resuming the interrupted run in %s", run)
        output_dir, last = run, run / "checkpoints" / "last.ckpt"
        with read_write(cfg.paths):
            cfg.paths.output_dir = str(run)
    return output_dir, str(last)


def _guard_output_dir(output_dir: Path, resuming: bool) -> None:
    """A finished run's folder is never reused (nothing a user made is overwritten)."""
    if resuming:
        return
    for marker in ("metrics.json", "checkpoints"):
        if (output_dir / marker).exists():
            raise ConfigError(f"run folder {output_dir} already holds a run ({marker}); choose a new "
                              f"hydra.run.dir or resume it with ckpt_path=last")


def _share_config_with_ddp_workers(cfg: DictConfig, output_dir: Path) -> None:
    strategy = str(cfg.trainer.get("strategy", ""))
    # rank 0 always writes its own (a multirun's next trial must not reuse the previous trial's)
    if strategy.startswith("ddp") and "spawn" not in strategy and not is_ddp_worker():
        path = output_dir / ".ddp_config.yaml"
        OmegaConf.save(cfg, path, resolve=True)
        os.environ[DDP_CONFIG_ENV] = str(path)


# What Lightning's DDP launcher writes into rank 0's own environment when it starts the other processes.
_DDP_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", DDP_CONFIG_ENV)


@contextlib.contextmanager
def _restore_ddp_launch_env():
    """Leave the environment as it was after a run that launched its own DDP processes.

    Lightning (``strategy=ddp``) sets LOCAL_RANK, MASTER_PORT... in the launching process and never removes
    them. In a Hydra multirun the next trial runs in the same process: with LOCAL_RANK set, Lightning takes the
    processes as launched by someone else, starts no worker, and rank 0 waits for it forever. Where the
    environment came with these values (torchrun, SLURM), nothing is touched.
    """
    if "LOCAL_RANK" in os.environ or is_ddp_worker():
        yield
        return
    saved = {key: os.environ.get(key) for key in _DDP_LAUNCH_ENV}
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # e.g. test=false: the next trial makes its own group
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _test_single_process(cfg: DictConfig, model, datamodule, ckpt: str | None, loggers: list) -> dict | None:
    """Test in one process: a DistributedSampler would pad the test split with repeated images."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # DDP started by the command line: rank 0 goes on alone
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return None
    if "spawn" in str(cfg.trainer.get("strategy", "")):
        # the loggers lived in the spawned processes; reopening them here would clash with their files
        loggers = []
    tester = L.Trainer(accelerator=cfg.trainer.get("accelerator", "auto"), devices=1, num_nodes=1,
                       precision=cfg.trainer.get("precision", "32-true"), logger=loggers or False,
                       callbacks=[], default_root_dir=cfg.paths.output_dir, enable_progress_bar=False,
                       limit_test_batches=cfg.trainer.get("limit_test_batches", 1.0),
                       fast_dev_run=cfg.trainer.get("fast_dev_run", False))
    tester.test(model=model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True, verbose=False)
    return split_metrics(tester.callback_metrics, "test")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test as configured; returns the metrics that are also written to ``metrics.json``."""
    with _restore_ddp_launch_env():
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, Any]:
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    output_dir, ckpt_path = _resolve_resume(cfg, output_dir)
    # a bad ckpt_path (empty, text, pickle payload, another task) fails here with its name, not inside fit()
    resume = check_resume_checkpoint(ckpt_path, TaskKind.of_config(cfg)) if ckpt_path else None
    test_ckpt = str(cfg.get("test_ckpt", "best"))
    if test_ckpt not in TEST_CKPTS:
        raise ConfigError(f"test_ckpt must be one of {list(TEST_CKPTS)}, got {test_ckpt!r}")
    if not is_ddp_worker():
        _guard_output_dir(output_dir, resuming=ckpt_path is not None)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    if cfg.get("extras", {}).get("print_config"):
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    _share_config_with_ddp_workers(cfg, output_dir)

    # Data first: bad input fails here, before a model is built or a process is spawned.
    datamodule = hydra.utils.instantiate(cfg.data, output_dir=str(output_dir),
                                         check=cfg.get("extras", {}).get("data_check", "deep"))
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_module(cfg, datamodule.class_names, datamodule.label_names)
    model.training_data = _training_data(datamodule)  # recorded in the model contract of every checkpoint
    if resume is not None:
        check_weights_fit(resume, model, ckpt_path)
        del resume

    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:  # with logger=none there is nothing to monitor the learning rate into
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    extra = {}
    if cfg.trainer.get("sync_batchnorm") and not cfg.trainer.get("plugins"):
        from spinenet.utils.syncbn import CpuSyncBatchNormPlugin, runs_on_cpu

        if runs_on_cpu(cfg.trainer.get("accelerator")):  # torch's SyncBatchNorm is for GPUs only
            extra["plugins"] = [CpuSyncBatchNormPlugin()]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra)
    for logger in loggers:  # the config as a plain dict (plus the splits' sizes): readable in every logger
        logger.log_hyperparams({**model.run_config, "splits": _splits_summary(datamodule.splits, output_dir)})

    try:
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = _test_and_collect(cfg, trainer, model, datamodule, loggers, output_dir, test_ckpt)
    except BaseException:
        _finish_loggers(loggers, failed=True)  # the W&B run is marked failed, not finished
        raise
    if not metrics:  # a DDP worker: rank 0 tests and writes the metrics
        _finish_loggers(loggers, failed=False)
        return {}
    _log_run_summary(loggers, metrics)
    _finish_loggers(loggers, failed=False)
    if trainer.is_global_zero:
        write_json(metrics, output_dir / "metrics.json")
        log.info("metrics: %s", output_dir / "metrics.json")
    return metrics


def _test_and_collect(cfg: DictConfig, trainer: L.Trainer, model, datamodule, loggers: list, output_dir: Path,
                      test_ckpt: str) -> dict[str, Any]:
    """Test the chosen weights in one process and gather what metrics.json holds ({} in a DDP worker)."""
    val = split_metrics(trainer.callback_metrics, "val")
    # the checkpoint of the monitored best (last_checkpoint, which only keeps the latest, has no monitor)
    checkpoint = next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)), None)
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    last = output_dir / "checkpoints" / "last.ckpt"
    last_ckpt = str(last) if last.is_file() else None
    test: dict[str, float] = {}
    tested = None
    if cfg.get("test", True):
        # test_ckpt=last: the final epoch's last.ckpt (also right where fit() ran in spawned processes), else
        # the module as fit() left it
        tested = best if test_ckpt == "best" else last_ckpt
        test = _test_single_process(cfg, model, datamodule, tested, loggers)
        if test is None:  # a DDP worker
            return {}
    # before the checkpoints' SHA-256 below: a calibration is written into them
    calibration = _calibrate(cfg, datamodule, [tested or best or last_ckpt, best, last_ckpt], bool(test), output_dir)
    best_score = float(checkpoint.best_model_score) if best and checkpoint.best_model_score is not None else None
    if best_score is None and cfg.get("monitor"):  # no checkpoint monitors it: the last validation value
        best_score = val.get(str(cfg.monitor).split("/", 1)[-1])
    return {
        "run_dir": str(output_dir),
        "task": TaskKind.of_config(cfg).value,
        "monitor": cfg.get("monitor"),
        # the monitored validation value at the best checkpoint: what a sweeper optimises (never a test value)
        "best_score": best_score,
        "best_checkpoint": best,
        "last_checkpoint": last_ckpt,
        # the weights behind "test" (test_ckpt): what spinenet ensemble takes from this run
        "test_ckpt": test_ckpt if test else None,
        "tested_checkpoint": tested if test else None,
        # SHA-256 by file name of the checkpoints above: spinenet ensemble checks a member against it
        "checkpoint_sha256": {Path(c).name: file_sha256(c) for c in (best, last_ckpt) if c and Path(c).is_file()},
        "epochs": trainer.current_epoch,
        # the epoch (0-based) of the best checkpoint: over cross-validation folds, the release model's schedule
        "best_epoch": _checkpoint_epoch(best),
        "classes": datamodule.class_names or datamodule.label_names,
        "empty_class_policy": getattr(model, "averaging_note", None),
        "val": val,
        "test": test,
        # the test split's full report (classification: per class, confusion matrix, bootstrap intervals)
        "per_class": getattr(model, "test_results", None) if test else None,
        # classifiers: temperature and threshold fitted on validation per checkpoint, and how they do on test
        "calibration": calibration,
        "wandb_dir": next((lg.run_dir for lg in loggers if getattr(lg, "run_dir", None)), None),
    }


def _calibrate(cfg: DictConfig, datamodule, checkpoints: list[str | None], tested: bool,
               output_dir: Path) -> dict[str, Any] | None:
    """Classifiers: ``calibrate: true`` fits a temperature and threshold on validation for each checkpoint kept;
    ``calibrate: {temperature, threshold}`` writes those values (a release model without a validation split)."""
    setting = cfg.get("calibrate", True)
    if TaskKind.of_config(cfg) is not TaskKind.CLASSIFICATION or not setting:
        return None
    from spinenet import calibration  # lazy: matplotlib

    kept = [c for c in dict.fromkeys(checkpoints) if c]
    if OmegaConf.is_dict(setting) or isinstance(setting, dict):
        if cfg.get("model", {}).get("tasks"):
            raise ConfigError("calibrate={temperature, threshold} is for single-head classifiers; a multi-task "
                              "model takes calibrate=true (fitted on validation) or false")
        given = calibration.given_calibration(OmegaConf.to_container(setting) if OmegaConf.is_dict(setting) else setting)
        for path in kept:
            calibration.write_into_checkpoint(Path(path), [given])
        return {Path(p).name: {"temperature": given.temperature, "threshold": given.threshold,
                               "threshold_rule": given.threshold_rule} for p in kept}
    return calibration.calibrate_checkpoints(kept, datamodule.val_dataloader(),
                                             datamodule.test_dataloader() if tested else None, output_dir / "plots")


def _checkpoint_epoch(path: str | None) -> int | None:
    if not path:
        return None
    epoch = load_run_checkpoint(path).get("epoch")
    return int(epoch) if epoch is not None else None


def _splits_summary(splits: dict[str, list[str]] | None, output_dir: Path) -> dict[str, Any]:
    """Per split: how many patients, and a fingerprint of its patient list (no ids leave the run folder)."""
    import hashlib

    out: dict[str, Any] = {"file": str(output_dir / "splits.json")}
    for name, ids in (splits or {}).items():
        ids = sorted(map(str, ids))
        out[name] = {"patients": len(ids), "sha1": hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]}
    return out


def _training_data(datamodule) -> dict[str, Any]:
    """The training data's fingerprint for the model contract: the manifest's SHA-256 and, per split, its
    patient count and a fingerprint of its patient list (no ids)."""
    splits = {k: v for k, v in _splits_summary(datamodule.splits, Path(".")).items() if k != "file"}
    manifest = datamodule.spec.manifest_path
    return {"manifest": manifest.name, "manifest_sha256": file_sha256(manifest) if manifest.is_file() else None,
            "splits": splits}


def _log_run_summary(loggers: list, metrics: dict[str, Any]) -> None:
    """What a dashboard compares runs by: the tested checkpoint's name and the validation objective."""
    summary = {"tested_checkpoint": Path(metrics["tested_checkpoint"]).name if metrics.get("tested_checkpoint") else None,
               "test_ckpt": metrics.get("test_ckpt"), "best_score": metrics.get("best_score"),
               "epochs": metrics.get("epochs")}
    for logger in loggers:
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "summary"):
            experiment.summary.update({k: v for k, v in summary.items() if v is not None})


def _finish_loggers(loggers: list, failed: bool) -> None:
    for logger in loggers:
        if hasattr(logger, "finalize"):
            logger.finalize("failed" if failed else "success")
        if hasattr(logger, "finish"):  # W&B: one run per run folder, marked failed or finished
            logger.finish(failed=failed)


def ensure_torch_threads() -> None:
    """Respect OMP_NUM_THREADS when set (CI and DDP on CPU); torch otherwise uses every core."""
    n = os.environ.get("OMP_NUM_THREADS")
    if n and n.isdigit():
        torch.set_num_threads(int(n))
