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


def test_summary_gives_mean_and_spread_per_setting_over_split_seeds(tmp_path):
    """A sweep over settings x split seeds: summary_by_setting.csv and summary.md give, per setting, the
    mean and SD over the seeds (what settings are compared by), not one split's luck."""
    import json

    import pandas as pd

    from spinenet.sweeps import write_summary

    scores = {("unet", 0): 0.80, ("unet", 1): 0.90, ("unet", 2): 0.85, ("fpn", 0): 0.70, ("fpn", 1): 0.74,
              ("fpn", 2): None}  # fpn on seed 2 failed
    for i, ((net, seed), dice) in enumerate(scores.items()):
        trial = tmp_path / str(i)
        (trial / ".hydra").mkdir(parents=True)
        (trial / ".hydra" / "overrides.yaml").write_text(f"- model.net.name={net}\n- data.split.seed={seed}\n")
        (trial / "trial.json").write_text(json.dumps({"status": "ok" if dice is not None else "failed",
                                                      "error": "" if dice is not None else "RuntimeError: x"}))
        if dice is not None:
            (trial / "metrics.json").write_text(json.dumps({"val": {"dice_mean_fg": dice},
                                                            "test": {"dice_mean_fg": dice - 0.05}}))
    write_summary(tmp_path, "val/dice_mean_fg", "max")
    grouped = pd.read_csv(tmp_path / "summary_by_setting.csv").set_index("model.net.name")
    assert grouped.loc["unet", "trials"] == 3 and grouped.loc["fpn", "trials"] == 2
    assert grouped.loc["unet", "test/dice_mean_fg mean"] == pytest.approx(0.80)
    assert grouped.loc["unet", "test/dice_mean_fg sd"] == pytest.approx(0.05)
    assert grouped.loc["fpn", "val/dice_mean_fg mean"] == pytest.approx(0.72)
    md = (tmp_path / "summary.md").read_text()
    assert "Mean ± SD over `data.split.seed`" in md and "0.8000 ± 0.0500" in md


def test_no_per_setting_summary_without_replicates(tmp_path):
    import json

    from spinenet.sweeps import write_summary

    for i, net in enumerate(("unet", "fpn")):
        trial = tmp_path / str(i)
        (trial / ".hydra").mkdir(parents=True)
        (trial / ".hydra" / "overrides.yaml").write_text(f"- model.net.name={net}\n")
        (trial / "trial.json").write_text(json.dumps({"status": "ok"}))
        (trial / "metrics.json").write_text(json.dumps({"val": {"dice_mean_fg": 0.5}, "test": {}}))
    write_summary(tmp_path, "val/dice_mean_fg", "max")
    assert not (tmp_path / "summary_by_setting.csv").exists()
    assert "Mean ± SD" not in (tmp_path / "summary.md").read_text()
