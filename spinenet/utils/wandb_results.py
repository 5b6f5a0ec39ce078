"""Results of commands that are not training runs (``spinenet ensemble``, ``spinenet findings-eval``) as a W&B
run of their own, when the user names a W&B project (``--wandb-project``).

Offline unless ``WANDB_MODE`` says otherwise, like training runs; the run lives in the command's output folder.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _scalars(prefix: str, value: Any, out: dict[str, float]) -> None:
    """Flatten nested dicts to ``a/b/c`` keys, keeping finite numbers only."""
    if isinstance(value, dict):
        for key, item in value.items():
            _scalars(f"{prefix}/{key}" if prefix else str(key), item, out)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int | float) and math.isfinite(float(value)):
        out[prefix] = float(value)


def log_results(project: str | None, job_type: str, name: str, folder: str | Path, config: dict[str, Any],
                metrics: dict[str, Any], tables: dict[str, tuple[list[str], list[list[Any]]]],
                group: str | None = None, entity: str | None = None) -> str | None:
    """Log one W&B run: ``config``, the numbers of ``metrics`` (flattened) in its summary, and ``tables``
    (name -> (columns, rows)). Returns the run's folder, or None when no project is given or W&B is disabled."""
    mode = os.environ.get("WANDB_MODE", "offline")
    if not project or mode == "disabled":
        return None
    import wandb

    summary: dict[str, float] = {}
    _scalars("", metrics, summary)
    run = wandb.init(project=project, entity=entity, group=group, job_type=job_type, name=name, dir=str(folder), mode=mode,
                     config=config, reinit="create_new")
    try:
        for key, (columns, rows) in tables.items():
            run.log({key: wandb.Table(columns=columns, data=[[_cell(v) for v in row] for row in rows])})
        run.summary.update(summary)
        run_dir = str(Path(run.dir).parent)
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    log.info("W&B (%s): %s", mode, run_dir)
    return run_dir


def _cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple | dict):
        return str(value)
    return value
