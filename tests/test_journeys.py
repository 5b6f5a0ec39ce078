"""The user's first journeys, through the installed ``spinenet`` command in an empty folder (no test-only
overrides): help and version, one-line config errors, a sweep with one W&B run per trial, W&B runs that
resume, fail and upload checkpoints as users expect, and the value an optimising sweeper receives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from spinenet.cli import COMMANDS
from tests.conftest import REPO, tiny_train_overrides
from tests.wandb_offline import offline_runs

SPINENET = str(Path(sys.executable).parent / "spinenet")  # the console script users type


def user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPINENET_", "HYDRA_"))}
    return {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO), **extra}


def spinenet(args: list[str], cwd: Path, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([SPINENET, *args], cwd=cwd, env=user_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def test_top_level_help_lists_every_command_without_importing_torch():
    probe = ("import sys, io, contextlib; from spinenet.cli import main; out = io.StringIO()\n"
             "with contextlib.redirect_stdout(out): rc = main(['--help'])\n"
             "heavy = sorted(m for m in ('torch', 'lightning', 'hydra', 'timm', 'cv2') if m in sys.modules)\n"
             "print(rc, heavy); print(out.getvalue())")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=user_env(), timeout=60)
    first, _, text = proc.stdout.partition("\n")
    assert first == "0 []", f"--help imported heavy modules: {first}"
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("  ") and line.split()]
    assert listed == list(COMMANDS)
    version = spinenet(["--version"], cwd=REPO)
    assert version.returncode == 0 and version.stdout.strip().startswith("spinenet 0.")


HELP_ARGS = [[name, "--help"] for name in COMMANDS] + [
    ["data", sub, "--help"] for sub in ("synth", "check", "import", "grade-crops")] + [
    ["bench", sub, "--help"] for sub in ("data", "train", "ensemble", "diagnose")]


@pytest.mark.parametrize("args", HELP_ARGS, ids=[" ".join(a[:-1]) for a in HELP_ARGS])
def test_every_command_and_subcommand_has_help(args, tmp_path):
    proc = spinenet(args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower() or "== Config ==" in proc.stdout, proc.stdout[:500]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, names", [
    (["train", "experiment=nope"], ["experiment/nope", "seg/spider", "demo"]),  # nested choices listed
    (["train", "data.nokey=3"], ["data.nokey", "+data.nokey=3"]),
    (["train", "model=smp", "model.net.name=deeplabv3plus", "model.net.encoder=vgg16", "data.synthesize=null",
      "data.dataset.root=/nonexistent"], ["/nonexistent"]),
    (["eval"], ["ckpt_path"]),
])
def test_config_errors_are_one_line_and_exit_2(args, names, tmp_path):
    proc = spinenet(args, cwd=tmp_path, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and all(n in errors[0] for n in names), proc.stderr[-2000:]
    full = spinenet(args, cwd=tmp_path, timeout=120, HYDRA_FULL_ERROR="1")
    assert full.returncode != 0 and "Traceback" in full.stderr, "HYDRA_FULL_ERROR=1 shows the traceback"


@pytest.mark.slow
def test_sweep_from_an_empty_folder_gives_one_wandb_run_per_trial(tmp_path):
    """The acceptance command of the sweep journey, exactly as a user types it."""
    proc = spinenet(["train", "-m", "experiment=demo", "debug=limit", "trainer.max_epochs=1", "logger=wandb",
                     "seed=1,2"], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (sweep,) = (tmp_path / "outputs" / "demo" / "multiruns").iterdir()
    table = pd.read_csv(sweep / "summary.csv")
    assert sorted(table["override:seed"]) == [1, 2] and (table["status"] == "ok").all()

    runs = offline_runs(sweep)
    trials = sorted((r for r in runs if r["job_type"] == "segmentation"), key=lambda r: r["name"])
    summaries = [r for r in runs if r["job_type"] == "sweep-summary"]
    assert [r["name"] for r in trials] == [f"{sweep.name}/0", f"{sweep.name}/1"], "one run per trial, named so"
    assert len({r["id"] for r in trials}) == 2
    for number, run in enumerate(trials):
        trial = sweep / str(number)
        assert run["dir"].parent.parent == trial, "each trial's run lives in its own folder"
        assert (trial / "wandb_id.txt").read_text().strip() == run["id"]
        assert run["config"]["seed"] == number + 1, "each run holds its trial's config"
        assert run["config"]["splits"]["test"]["patients"] > 0
        assert run["summary"]["tested_checkpoint"].endswith(".ckpt") and run["exit_code"] == 0
        metrics = json.loads((trial / "metrics.json").read_text())
        assert run["summary"]["best_score"] == pytest.approx(metrics["best_score"])
    assert len({r["group"] for r in runs}) == 1, "trials and the summary share the sweep's group"
    (summary,) = summaries
    assert summary["summary"]["trials"] == 2 and "sweep_summary" in json.dumps(summary["summary"])
    assert f"wandb sync {trials[1]['dir']}" in proc.stdout, "the printed sync path is the trial's own run"


def _tiny_wandb_cfg(compose_cfg, phantom: Path, run_dir: Path, *extra: str):
    overrides = [o for o in tiny_train_overrides(phantom) if not o.startswith("logger")]
    return compose_cfg([*overrides, "logger=wandb", "trainer.max_epochs=1", *extra], output_dir=run_dir)


@pytest.mark.slow
def test_resumed_run_continues_its_wandb_run(tiny_phantom, compose_cfg, tmp_path):
    from spinenet.tasks.train import train

    run_dir = tmp_path / "run"
    train(_tiny_wandb_cfg(compose_cfg, tiny_phantom["sagittal"], run_dir, "test=false"))
    first_id = (run_dir / "wandb_id.txt").read_text().strip()
    train(_tiny_wandb_cfg(compose_cfg, tiny_phantom["sagittal"], run_dir, "ckpt_path=last", "trainer.max_epochs=2",
                          "test=false"))
    runs = offline_runs(run_dir)
    assert len(runs) == 2 and {r["id"] for r in runs} == {first_id}, "the same W&B run, resumed"
    assert {r["name"] for r in runs} == {"run"}


@pytest.mark.slow
def test_failed_fit_marks_the_wandb_run_failed(tiny_phantom, compose_cfg, tmp_path, monkeypatch):
    from spinenet.lit.segmentation import SegmentationModule
    from spinenet.tasks.train import train

    def broken_step(self, batch, batch_idx):
        raise RuntimeError("boom in training_step")

    monkeypatch.setattr(SegmentationModule, "training_step", broken_step)
    with pytest.raises(RuntimeError, match="boom"):
        train(_tiny_wandb_cfg(compose_cfg, tiny_phantom["sagittal"], tmp_path / "run"))
    (run,) = offline_runs(tmp_path / "run")
    assert run["exit_code"] == 1, "failed, not finished"


@pytest.mark.slow
def test_log_model_uploads_checkpoints_and_sweeper_sees_validation(tiny_phantom, compose_cfg, tmp_path):
    from spinenet.cli.hydra_app import sweep_objective
    from spinenet.tasks.train import train

    metrics = train(_tiny_wandb_cfg(compose_cfg, tiny_phantom["sagittal"], tmp_path / "run",
                                    "logger.wandb.log_model=true"))
    (run,) = offline_runs(tmp_path / "run")
    assert run["artifacts"], "log_model=true logs the checkpoints as artifacts"
    # the objective is the monitored validation value at the best checkpoint, never a test figure
    assert metrics["monitor"] == "val/dice_mean_fg"
    assert sweep_objective(metrics) == metrics["best_score"] == pytest.approx(metrics["val"]["dice_mean_fg"])
    assert sweep_objective({"monitor": "val/loss", "best_score": None, "val": {"loss": 0.5},
                            "test": {"loss": 0.1}}) == 0.5
