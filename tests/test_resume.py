"""A run killed mid-training (SIGKILL) and resumed with ``ckpt_path=last`` ends as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, tiny_train_overrides

ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# plateau: Lightning steps ReduceLROnPlateau after the epoch's checkpoint and skips that step on a resume
# (spinenet.utils.callbacks.PlateauResume makes it); patience 0 makes the learning rate change within 5 epochs
SCHEDULERS = {"none": [], "plateau": ["scheduler=plateau", "scheduler.patience=0"]}


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_resume_after_a_real_kill_matches_an_uninterrupted_run(tiny_phantom, tmp_path, scheduler):
    """Kill a CLI run mid-training (SIGKILL), resume it with ckpt_path=last: same metrics as a straight run.

    Dropout masks come from the global torch RNG, reseeded per epoch by EpochSeed; the DataLoaders must not
    draw from it when Lightning creates their iterators (before the reseed on the first resumed epoch only).
    """
    overrides = [*[o for o in tiny_train_overrides(tiny_phantom["sagittal"]) if not o.startswith("logger")],
                 "logger=csv", "trainer.max_epochs=5", "data.augment.p_affine=1.0", *SCHEDULERS[scheduler]]
    cmd = [sys.executable, "-m", "spinenet.cli", "train", *overrides]

    straight_root, killed_root = tmp_path / "straight", tmp_path / "killed"
    for root in (straight_root, killed_root):
        root.mkdir()
    done = subprocess.run([*cmd, f"paths.root_dir={straight_root}"], cwd=straight_root, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    straight = json.loads(next((straight_root / "outputs").rglob("metrics.json")).read_text())

    proc = subprocess.Popen([*cmd, f"paths.root_dir={killed_root}"], cwd=killed_root, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    last = None
    while time.time() < deadline and proc.poll() is None:
        found = list((killed_root / "outputs").rglob("epoch_*.ckpt"))
        if found and list((killed_root / "outputs").rglob("last.ckpt")):
            last = found
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last, "the run wrote no checkpoint before it ended"
    run_dir = last[0].parent.parent
    assert not (run_dir / "metrics.json").exists(), "the kill came after the run finished"

    resumed = subprocess.run([*cmd, f"paths.root_dir={killed_root}", "ckpt_path=last"], cwd=killed_root, env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = json.loads((run_dir / "metrics.json").read_text())  # finished in the interrupted run's folder
    assert after["epochs"] == straight["epochs"]
    for split in ("val", "test"):
        for key in ("dice_mean_fg", "loss", "dice_disc"):
            assert after[split][key] == pytest.approx(straight[split][key], abs=1e-6), (split, key)
