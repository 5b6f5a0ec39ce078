"""Every config composes, from any working directory, and a user's own config folder is found."""

from __future__ import annotations

from pathlib import Path

import pytest

from spinenet.config import compose, config_dir, to_plain_dict

EXPERIMENTS = sorted(
    str(p.relative_to(config_dir() / "experiment").with_suffix(""))
    for p in (config_dir() / "experiment").rglob("*.yaml")
)
GROUP_OPTIONS = {
    group: sorted(p.stem for p in (config_dir() / group).glob("*.yaml") if p.stem != "default" or group != "debug")
    for group in ("trainer", "logger", "debug", "optimizer", "scheduler", "loss", "data")
}


def test_experiments_are_found():
    assert "demo" in EXPERIMENTS
    assert "seg/spider" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_resolves(experiment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs work from any working directory
    cfg = compose("train", [f"experiment={experiment}"], output_dir=tmp_path / "run")
    resolved = to_plain_dict(cfg)
    assert resolved["paths"]["output_dir"] == str(tmp_path / "run")
    tasks = resolved["model"].get("tasks")
    if tasks:  # multi-task: one output per class, K - 1 per ordinal (CORN) task
        expected = sum(len(t["classes"]) - (t["kind"] == "ordinal") for t in tasks)
    else:
        expected = len(resolved["data"]["dataset"]["class_names"])
    assert resolved["model"]["net"]["num_classes"] == expected


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_every_group_option_composes(group, option, tmp_path):
    cfg = compose("train", [f"{group}={option}"], output_dir=tmp_path / "run")
    to_plain_dict(cfg)


def test_eval_config_composes(tmp_path):
    cfg = compose("eval", ["ckpt_path=/nowhere.ckpt"], output_dir=tmp_path)
    assert cfg.ckpt_path == "/nowhere.ckpt"


def test_wandb_offline_unless_told(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose("train", ["logger=wandb"], output_dir=tmp_path)
    assert cfg.logger.wandb.mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    cfg = compose("train", ["logger=wandb", "experiment=seg/sustersic2022_axial"], output_dir=tmp_path)
    assert cfg.logger.wandb.mode == "online"
    assert cfg.logger.wandb.group == cfg.task_name == "sustersic2022_seg_axial"
    assert cfg.logger.wandb.job_type == "segmentation"


def test_user_config_dir_adds_options(tmp_path):
    own = tmp_path / "my_conf" / "experiment"
    own.mkdir(parents=True)
    (own / "mine.yaml").write_text("# @package _global_\ntask_name: mine\ndata:\n  batch_size: 3\n")
    cfg = compose("train", ["experiment=mine"], output_dir=tmp_path / "run", extra_config_dirs=[tmp_path / "my_conf"])
    assert cfg.task_name == "mine" and cfg.data.batch_size == 3


def test_config_dir_ships_with_package():
    root = config_dir()
    assert (root / "train.yaml").is_file() and (root / "experiment" / "demo.yaml").is_file()
    assert Path(root).is_absolute()
