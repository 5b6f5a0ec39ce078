"""Grid sweeps (Hydra multirun): failed trials are recorded, not fatal, and every sweep gets a summary.

Each trial writes ``trial.json`` (status ok/failed, error, elapsed) in its own folder. When the sweep ends,
``SweepSummary`` (a Hydra callback) collects the trials' overrides and metrics into ``summary.csv`` and
``summary.md`` in the sweep folder, sorted by the sweep's metric, and the ``spinenet`` command exits
non-zero if any trial failed.
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from spinenet.utils.markdown import md_code, md_text
from spinenet.utils.run_folder import TRIAL_FILE, override_columns
from spinenet.utils.safe_csv import neutralise_frame

log = logging.getLogger(__name__)

# filled by the callback in the process that launched the sweep; read by the CLI for its exit code
LAST_SWEEP: dict[str, Any] = {}


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group(task_name: str, sweep_dir: str | Path | None = None) -> str:
    """W&B group: the task name, plus the sweep folder's name inside a multirun so its trials group together."""
    from hydra.core.hydra_config import HydraConfig

    if sweep_dir is None and in_multirun():
        sweep_dir = HydraConfig.get().sweep.dir
    return f"{task_name}-{Path(sweep_dir).name}" if sweep_dir is not None else task_name


def run_trial(task: Callable[[DictConfig], dict], cfg: DictConfig) -> dict | None:
    """Run one trial; in a multirun a failure (exception, NaN loss) is recorded and the sweep goes on."""
    output_dir = Path(cfg.paths.output_dir)
    start = time.time()
    if not in_multirun():
        return task(cfg)
    try:
        metrics = task(cfg)
        record = {"status": "ok", "elapsed_s": round(time.time() - start, 1)}
        return metrics
    except Exception as exc:  # noqa: BLE001 - any failure of one trial must not end the sweep
        log.error("trial failed: %s: %s", type(exc).__name__, exc)
        record = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(limit=20), "elapsed_s": round(time.time() - start, 1)}
        return None
    finally:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / TRIAL_FILE).write_text(json.dumps(record, indent=2))


SHOWN_TEST = ("dice_mean_fg", "miou", "accuracy", "balanced_accuracy", "auroc", "f1_macro")  # in summary.md


def _mean_sd(mean: float, sd: float) -> str:
    if not isinstance(mean, float) or not math.isfinite(mean):
        return ""
    return f"{mean:.4f} ± {sd:.4f}" if isinstance(sd, float) and math.isfinite(sd) else f"{mean:.4f}"


def _flatten(prefix: str, d: dict) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in d.items() if not isinstance(v, dict | list)}


def collect_trials(sweep_dir: Path) -> pd.DataFrame:
    """One row per trial folder: number, status, overrides (one column each), val/test metrics."""
    rows = []
    for trial in sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        row: dict[str, Any] = {"trial": int(trial.name), "folder": str(trial)}
        row.update(override_columns(trial))
        status = json.loads((trial / TRIAL_FILE).read_text()) if (trial / TRIAL_FILE).is_file() else {}
        row["status"] = status.get("status", "unknown")
        row["error"] = status.get("error", "")
        metrics_file = trial / "metrics.json"
        if metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text())
            row.update(_flatten("val", metrics.get("val", {})))
            row.update(_flatten("test", metrics.get("test", {})))
            row["best_score"] = metrics.get("best_score")
            row["best_checkpoint"] = metrics.get("best_checkpoint")
            # what a release model trained on every patient takes from cross-validation (conf/release/)
            row["best_epoch"] = metrics.get("best_epoch")
            fit = (metrics.get("calibration") or {}).get(Path(str(metrics.get("tested_checkpoint"))).name) or {}
            row["temperature"], row["threshold"] = fit.get("temperature"), fit.get("threshold")
        rows.append(row)
    return pd.DataFrame(rows)


# overrides that repeat a setting rather than change it: a sweep over them is summarised per setting as mean and
# spread (one small test split says little; the brief compares settings over 5 split seeds or folds)
REPLICATE_KEYS = ("data.split.seed", "data.split.fold", "seed")
RELEASE_KEYS = ("best_epoch", "temperature", "threshold")  # per setting: what release=all_patients takes


def by_setting(table: pd.DataFrame, monitor: str | None) -> tuple[pd.DataFrame, list[str]]:
    """Per setting (the overrides other than :data:`REPLICATE_KEYS`): the number of successful trials and the
    mean and sample SD of the monitor and every test metric; empty when no replicate key was swept."""
    replicate = [f"override:{k}" for k in REPLICATE_KEYS if f"override:{k}" in table.columns
                 and table[f"override:{k}"].nunique() > 1]
    if table.empty or not replicate:
        return pd.DataFrame(), []
    ok = table[table["status"] == "ok"]
    setting = [c for c in table.columns if c.startswith("override:") and c not in replicate]
    metrics = [c for c in ok.columns if (c in (monitor, *RELEASE_KEYS) or c.startswith("test/"))
               and pd.api.types.is_numeric_dtype(ok[c]) and ok[c].notna().any()]
    rows = []
    for key, part in (ok.groupby(setting, dropna=False, sort=False) if setting else [((), ok)]):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = {c.removeprefix("override:"): v for c, v in zip(setting, key, strict=True)}
        row["trials"] = len(part)
        for m in metrics:
            row[f"{m} mean"] = part[m].mean()
            row[f"{m} sd"] = part[m].std(ddof=1) if len(part) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows), [c.removeprefix("override:") for c in replicate]


def write_summary(sweep_dir: Path, monitor: str | None, mode: str = "max") -> tuple[pd.DataFrame, Path]:
    """``summary.csv`` and ``summary.md`` in the sweep folder, sorted by ``monitor`` (failed trials last)."""
    table = collect_trials(sweep_dir)
    if not table.empty and monitor in table.columns:
        table = table.sort_values(monitor, ascending=mode == "min", na_position="last", kind="stable")
    csv = Path(sweep_dir) / "summary.csv"
    neutralise_frame(table).to_csv(csv, index=False)
    shown = [c for c in table.columns if c.startswith("override:") or c in ("trial", "status", monitor)]
    shown += [c for c in table.columns if c.startswith("test/") and c.split("/", 1)[1] in SHOWN_TEST
              and c not in shown]
    lines = [f"# Sweep {md_text(Path(sweep_dir).name)}", "", f"Sorted by {md_code(monitor)} ({mode}). {len(table)} trials, "
             f"{int((table.get('status', pd.Series()) == 'failed').sum())} failed.", ""]
    if not table.empty:
        view = table[shown].copy()
        view.columns = [c.removeprefix("override:") for c in view.columns]
        lines.append("| " + " | ".join(md_text(c) for c in view.columns) + " |")
        lines.append("|" + "---|" * len(view.columns))
        for _, r in view.iterrows():
            cells = [f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else ("" if v is None or
                     (isinstance(v, float) and not math.isfinite(v)) else str(v)) for v in r]
            lines.append("| " + " | ".join(md_text(c) for c in cells) + " |")
        grouped, over = by_setting(table, monitor)
        if not grouped.empty:
            neutralise_frame(grouped).to_csv(Path(sweep_dir) / "summary_by_setting.csv", index=False)
            lines += ["", f"## Mean ± SD over {', '.join(md_code(k) for k in over)}", ""]
            # the settings that differ, and the figures summary.md shows (the CSV has every one)
            cols = [c for c in grouped.columns if not c.endswith((" mean", " sd"))
                    and (c == "trials" or grouped[c].astype(str).nunique() > 1)]
            stats = [c.removesuffix(" mean") for c in grouped.columns if c.endswith(" mean")
                     and (c.startswith(str(monitor)) or c.removesuffix(" mean") in RELEASE_KEYS
                          or c.split("/", 1)[-1].removesuffix(" mean") in SHOWN_TEST)]
            lines.append("| " + " | ".join(md_text(c) for c in cols + stats) + " |")
            lines.append("|" + "---|" * (len(cols) + len(stats)))
            for _, r in grouped.iterrows():
                cells = [str(r[c]) for c in cols] + [_mean_sd(r[f"{m} mean"], r[f"{m} sd"]) for m in stats]
                lines.append("| " + " | ".join(md_text(c) for c in cells) + " |")
        failed = table[table["status"] == "failed"]
        if len(failed):
            lines += ["", "## Failed trials", ""] + [f"- trial {r.trial}: {md_text(r.error)}" for r in failed.itertuples()]
    md = Path(sweep_dir) / "summary.md"
    md.write_text("\n".join(lines) + "\n")
    return table, csv


class SweepSummary(Callback):
    """Hydra callback: write the sweep summary when a multirun ends (in the launching process)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        monitor = config.get("monitor")
        table, csv = write_summary(sweep_dir, monitor, config.get("monitor_mode", "max"))
        failed = int((table["status"] != "ok").sum()) if not table.empty else 0
        LAST_SWEEP.update({"dir": str(sweep_dir), "trials": len(table), "failed": failed, "summary": str(csv)})
        log.info("sweep summary: %s (%d trials, %d failed)", csv, len(table), failed)
        wandb_conf = (config.get("logger") or {}).get("wandb")
        if wandb_conf is not None and table is not None and not table.empty:
            log_summary_to_wandb(table, sweep_dir, group=sweep_group(str(config.task_name), sweep_dir),
                                 project=wandb_conf.get("project"), entity=wandb_conf.get("entity"))


def log_summary_to_wandb(table: pd.DataFrame, sweep_dir: Path, group: str, project: str | None,
                         entity: str | None = None) -> str | None:
    """The sweep's summary table as one W&B run of job type ``sweep-summary`` in the trials' group (the run's
    folder, or None when W&B is disabled). A failure to log is a warning: the summary files are already written."""
    from spinenet.utils.wandb_results import log_results

    try:
        return log_results(project, "sweep-summary", f"{Path(sweep_dir).name}/summary", sweep_dir, {},
                           {"trials": len(table), "failed": int((table["status"] != "ok").sum())},
                           {"sweep_summary": (list(map(str, table.columns)), table.astype(str).values.tolist())},
                           group=group, entity=entity)
    except Exception as exc:  # noqa: BLE001 - W&B trouble must not hide the sweep's result
        log.warning("could not log the sweep summary to W&B: %s", exc)
        return None
