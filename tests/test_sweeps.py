"""Grid sweeps from the CLI: a failing trial is recorded and the sweep goes on; the summary is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, tiny_train_overrides

pytestmark = pytest.mark.slow


def _sweep(args: list[str], root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # the installed command, from the sweep's own folder, with no paths.root_dir: as users type it
    return subprocess.run([str(Path(sys.executable).parent / "spinenet"), "train", "-m", *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)


def _overrides(phantom: Path) -> list[str]:
    return [*[o for o in tiny_train_overrides(phantom) if not o.startswith("logger")], "logger=none",
            "trainer.max_epochs=1", "test=false"]


def _sweep_dir(root: Path) -> Path:
    dirs = list((root / "outputs" / "train" / "multiruns").iterdir())
    assert len(dirs) == 1
    return dirs[0]


def test_failed_trial_is_recorded_and_sweep_goes_on(tiny_phantom, tmp_path):
    # "stretch" is not a resize mode: that trial fails at config time, the other trains
    proc = _sweep([*_overrides(tiny_phantom["sagittal"]), "data.resize_mode=resize,stretch"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 trial(s) failed" in proc.stderr
    sweep = _sweep_dir(tmp_path)
    table = pd.read_csv(sweep / "summary.csv")
    assert len(table) == 2
    by_mode = dict(zip(table["override:data.resize_mode"], table["status"], strict=True))
    assert by_mode == {"resize": "ok", "stretch": "failed"}
    assert table.iloc[0]["status"] == "ok", "sorted by the metric, failed trials last"
    assert (sweep / "0" / "metrics.json").is_file()
    md = (sweep / "summary.md").read_text()
    assert "resize_mode must be one of" in md and "| stretch |" not in md.split("## Failed")[0] or "failed" in md


def test_two_trials_through_local_submitit(tiny_phantom, tmp_path):
    proc = _sweep([*_overrides(tiny_phantom["sagittal"]), "hydra/launcher=local_submitit",
                   "optimizer.lr=0.01,0.001"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    table = pd.read_csv(sweep / "summary.csv")
    assert sorted(table["override:optimizer.lr"]) == [0.001, 0.01]
    assert (table["status"] == "ok").all()
    assert table["val/dice_mean_fg"].notna().all()
    assert list((sweep / ".submitit").iterdir()), "jobs went through the submitit executor"
