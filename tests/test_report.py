"""`spinenet report`: leaderboard and plots from sweep and run folders, Markdown and HTML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from spinenet.cli.report import main
from spinenet.errors import ConfigError
from spinenet.report import write_report
from tests.conftest import REPO, tiny_train_overrides

CLASSES = ["background", "disc", "vertebra", "canal"]


def _trial(sweep: Path, num: int, lr: float, arch: str, best: float | None, error: str = "") -> None:
    """A trial folder as a sweep leaves it: overrides, status, metrics (none when it failed)."""
    trial = sweep / str(num)
    (trial / ".hydra").mkdir(parents=True)
    (trial / ".hydra" / "overrides.yaml").write_text(
        f"- optimizer.lr={lr}\n- model.net.name={arch}\n- paths.root_dir=/somewhere\n- trainer.max_epochs=3\n"
    )
    (trial / ".hydra" / "config.yaml").write_text(
        "monitor: val/dice_mean_fg\nmonitor_mode: max\ntask: segmentation\n"
    )
    (trial / "trial.json").write_text(json.dumps({"status": "failed" if error else "ok", "error": error}))
    if error:
        return
    test = {"dice_mean_fg": best - 0.05, "miou": best - 0.1, "accuracy": 0.9}
    test |= {f"dice_{c}": best - 0.01 * i for i, c in enumerate(CLASSES)}
    test |= {f"iou_{c}": best - 0.1 - 0.01 * i for i, c in enumerate(CLASSES)}
    (trial / "metrics.json").write_text(
        json.dumps(
            {
                "task": "segmentation",
                "monitor": "val/dice_mean_fg",
                "best_score": best,
                "epochs": 3,
                "classes": CLASSES,
                "val": {"dice_mean_fg": best - 0.02},
                "test": test,
            }
        )
    )


@pytest.fixture
def fake_sweep(tmp_path) -> Path:
    sweep = tmp_path / "multiruns" / "sweep_a"
    for num, (lr, arch, best) in enumerate(
        [(0.01, "unet", 0.70), (0.001, "unet", 0.80), (0.1, "fpn", 0.60), (0.001, "fpn", 0.85)]
    ):
        _trial(sweep, num, lr, arch, best)
    _trial(sweep, 4, 0.9, "fpn", None, error="FloatingPointError: train loss is nan at epoch 0")
    return sweep


def _png_ok(path: Path) -> bool:
    image = imread(path)
    return image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0


def test_markdown_report_from_a_sweep(fake_sweep, tmp_path):
    out = tmp_path / "rep"
    assert main([str(fake_sweep), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    # swept hyperparameters become columns; overrides every trial shares do not
    assert "optimizer.lr" in header and "model.net.name" in header
    assert "paths.root_dir" not in header and "trainer.max_epochs" not in header
    assert "best val/dice_mean_fg" in header and "test/dice_mean_fg" in header
    ranked = [c.split("|")[2].strip() for c in table[1:6]]
    assert ranked == ["trial 3", "trial 1", "trial 0", "trial 2", "trial 4"], (
        "best first, the failed trial last"
    )
    assert "## Failed runs" in md and "trial 4: FloatingPointError: train loss is nan" in md
    for name in ("hp_optimizer_lr.png", "hp_model_net_name.png", "per_class_dice.png", "per_class_iou.png"):
        assert f"(plots/{name})" in md
        assert _png_ok(out / "plots" / name), name
    # per-class table of the top runs
    assert "| trial 3 | 0.8500 | 0.8400 | 0.8300 | 0.8200 |" in md

    # existing output is refused without --overwrite; another ranking metric reorders the board
    with pytest.raises(ConfigError, match="not empty"):
        main([str(fake_sweep), "--out", str(out)])
    assert (
        main(
            [
                str(fake_sweep),
                "--out",
                str(out),
                "--overwrite",
                "--metric",
                "test/dice_mean_fg",
                "--mode",
                "min",
            ]
        )
        == 0
    )
    md = (out / "report.md").read_text()
    assert md.index("| 1 | trial 2 |") < md.index("| 2 | trial 0 |")
    with pytest.raises(ConfigError, match="choose one of"):
        main([str(fake_sweep), "--out", str(tmp_path / "x"), "--metric", "val/nope"])


def test_html_report_is_one_self_contained_file(fake_sweep, tmp_path):
    path = write_report([fake_sweep], tmp_path / "html", fmt="html")
    text = path.read_text()
    assert path.name == "report.html" and text.startswith("<!DOCTYPE html>")
    assert text.count('src="data:image/png;base64,') == 4 and 'src="plots/' not in text
    assert "<td>trial 3</td>" in text and "FloatingPointError" in text


def test_report_of_run_folders(fake_sweep, tmp_path):
    # single run folders and a folder of runs (outputs/train/runs) work too
    path = write_report([fake_sweep / "1", fake_sweep / "2"], tmp_path / "runs")
    md = path.read_text()
    assert md.index("| 1 | sweep_a/1 |") < md.index("| 2 | sweep_a/2 |")
    with pytest.raises(ConfigError, match="holds no run"):
        write_report([tmp_path / "runs" / "plots"], tmp_path / "none")


@pytest.mark.slow
def test_report_renders_from_a_finished_sweep(tiny_phantom, tmp_path):
    overrides = [
        *[o for o in tiny_train_overrides(tiny_phantom["sagittal"]) if not o.startswith("logger")],
        "logger=none",
        "trainer.max_epochs=1",
        "optimizer.lr=0.01,0.001",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "spinenet.cli", "train", "-m", *overrides, f"paths.root_dir={tmp_path}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    from spinenet.cli import main as spinenet_main

    assert spinenet_main(["report", str(sweep)]) == 0
    md = (sweep / "report" / "report.md").read_text()
    assert "| rank | run | status | optimizer.lr |" in md and "| trial 0 |" in md and "| trial 1 |" in md
    assert _png_ok(sweep / "report" / "plots" / "hp_optimizer_lr.png")
    assert _png_ok(sweep / "report" / "plots" / "per_class_dice.png")
