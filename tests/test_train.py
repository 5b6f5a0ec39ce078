"""Training end to end on a tiny phantom: through train(cfg), through the CLI, and on 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spinenet.errors import ConfigError
from spinenet.tasks.evaluate import evaluate
from spinenet.tasks.train import train
from tests.conftest import REPO, tiny_train_overrides

pytestmark = pytest.mark.slow


def _finite(values: dict) -> bool:
    return all(v == v for v in values.values())  # NaN != NaN


def test_train_then_eval(tiny_phantom, compose_cfg, tmp_path):
    cfg = compose_cfg(tiny_train_overrides(tiny_phantom["sagittal"]))
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["test"]["dice_mean_fg"] == pytest.approx(metrics["test"]["dice_mean_fg"])
    for split in ("val", "test"):
        assert {"loss", "dice_mean_fg", "dice_disc", "iou_disc", "dice_canal"} <= set(on_disk[split]), split
        assert _finite({k: v for k, v in on_disk[split].items() if v is not None})
    assert 0.0 <= on_disk["test"]["dice_mean_fg"] <= 1.0
    assert (run / "checkpoints" / "last.ckpt").is_file() and Path(on_disk["best_checkpoint"]).is_file()
    # each checkpoint's SHA-256, which spinenet ensemble checks a member against
    from spinenet.utils.safe_io import file_sha256

    assert on_disk["checkpoint_sha256"] == {Path(c).name: file_sha256(c)
                                            for c in (on_disk["best_checkpoint"], on_disk["last_checkpoint"])}
    splits = json.loads((run / "splits.json").read_text())
    assert not set(splits["splits"]["train"]) & set(splits["splits"]["test"])
    assert list((run / "overlays").glob("val_epoch*.png")), "validation overlays are saved as PNG"
    assert (run / "csv" / "metrics.csv").is_file()

    # the checkpoint is loadable without unpickling objects, and eval reproduces the test metrics
    ckpt = torch.load(on_disk["best_checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["spinenet"]["model"]["net"]["name"] == "unet_sustersic"
    # last.ckpt is the final epoch's, whichever epoch was best (what ckpt_path=last resumes from)
    last = torch.load(on_disk["last_checkpoint"], map_location="cpu", weights_only=True)
    assert last["epoch"] == on_disk["epochs"] - 1 and last["epoch"] >= ckpt["epoch"]
    ecfg = compose_cfg([f"ckpt_path={on_disk['best_checkpoint']}", f"data.dataset.root={tiny_phantom['sagittal']}",
                        "data.synthesize=null", "split=test", "trainer.accelerator=cpu"], config_name="eval",
                       output_dir=tmp_path / "eval")
    result = evaluate(ecfg)
    saved = json.loads(Path(result["metrics_file"]).read_text())
    assert saved["test"]["dice_disc"] == pytest.approx(on_disk["test"]["dice_disc"], abs=1e-5)
    assert set(saved["per_class"]["dice"]) if isinstance(saved["per_class"].get("dice"), dict) else saved["per_class"]

    # a finished run folder is never reused
    with pytest.raises(ConfigError, match="already holds a run"):
        train(compose_cfg(tiny_train_overrides(tiny_phantom["sagittal"])))


def test_bad_data_stops_before_training(tiny_phantom, compose_cfg, tmp_path):
    cfg = compose_cfg([*tiny_train_overrides(tiny_phantom["sagittal"]), "data.dataset.mask_values=[0,85,170,254]"])
    with pytest.raises(Exception, match="255"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def _run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "spinenet.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_train_from_another_directory(tiny_phantom, tmp_path):
    overrides = [o for o in tiny_train_overrides(tiny_phantom["axial"], "axial") if not o.startswith("logger")]
    proc = _run_cli(["train", *overrides, "logger=wandb", "trainer.max_epochs=1", f"paths.root_dir={tmp_path}"],
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    assert (runs[0] / "metrics.json").is_file()
    assert "run folder:" in proc.stdout and "wandb sync" in proc.stdout
    assert list((runs[0] / "wandb").glob("offline-run-*")), "an offline W&B run is written"


def test_cli_reports_config_errors_in_one_line(tmp_path):
    proc = _run_cli(["train", "data.resize_mode=stretch", f"paths.root_dir={tmp_path}", "data.synthesize=null",
                     f"data.dataset.root={tmp_path}/none"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "not found" in proc.stderr + proc.stdout or "resize_mode" in proc.stderr + proc.stdout


def test_ddp_sim_two_cpu_processes(tiny_phantom, compose_cfg):
    cfg = compose_cfg([*tiny_train_overrides(tiny_phantom["sagittal"]), "trainer=ddp_sim", "trainer.max_epochs=1",
                       "trainer.deterministic=true", "extras.print_config=false"])
    metrics = train(cfg)
    assert metrics["test"] and 0.0 <= metrics["test"]["dice_mean_fg"] <= 1.0
    assert (Path(cfg.paths.output_dir) / "metrics.json").is_file()


def test_batch_size_must_split_across_processes(tiny_phantom, compose_cfg):
    cfg = compose_cfg([*tiny_train_overrides(tiny_phantom["sagittal"]), "trainer=ddp_sim", "data.batch_size=3"])
    with pytest.raises(Exception, match="batch_size=3"):
        train(cfg)



def test_test_ckpt_last_tests_the_final_weights(tiny_phantom, compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"test_ckpt must be one of \['best', 'last'\], got 'final'"):
        train(compose_cfg([*tiny_train_overrides(tiny_phantom["sagittal"]), "test_ckpt=final"],
                          output_dir=tmp_path / "bad"))
    assert not (tmp_path / "bad" / "checkpoints").exists()
    cfg = compose_cfg([*tiny_train_overrides(tiny_phantom["sagittal"]), "test_ckpt=last", "trainer.max_epochs=3",
                       "callbacks.early_stopping=null"])
    metrics = train(cfg)
    assert metrics["test_ckpt"] == "last" and metrics["epochs"] == 3
    assert metrics["tested_checkpoint"] == metrics["last_checkpoint"] and metrics["last_checkpoint"].endswith("last.ckpt")
    # the test metrics are those of last.ckpt (the final epoch's weights), not of the best checkpoint
    ecfg = compose_cfg([f"ckpt_path={metrics['last_checkpoint']}", f"data.dataset.root={tiny_phantom['sagittal']}",
                        "data.synthesize=null", "split=test", "trainer.accelerator=cpu"], config_name="eval",
                       output_dir=tmp_path / "eval")
    saved = json.loads(Path(evaluate(ecfg)["metrics_file"]).read_text())
    for key in ("dice_disc", "dice_mean_fg", "loss"):
        assert saved["test"][key] == pytest.approx(metrics["test"][key], abs=1e-5), key
