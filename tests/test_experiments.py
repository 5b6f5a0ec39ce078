"""A short run (debug=fdr: one train, val and test batch) of every segmentation experiment config."""

from __future__ import annotations

import pytest

from spinenet.config import config_dir
from spinenet.tasks.train import train
from tests.conftest import SPIDER, requires_spider

SEG_EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment" / "seg").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("name", SEG_EXPERIMENTS)
def test_segmentation_experiment_fast_dev_run(name, tiny_phantom, compose_cfg):
    if name == "spider":
        pytest.skip("the real-data experiment is run by test_spider_experiment_fast_dev_run")
    view = "axial" if "axial" in name else "sagittal"
    # the experiment's own model, loss and optimizer; only the data is the tiny phantom at 64x64
    cfg = compose_cfg([f"experiment=seg/{name}", "debug=fdr", f"data.dataset.root={tiny_phantom[view]}",
                       "data.synthesize=null", "data.image_size=[64,64]", "data.batch_size=2"])
    metrics = train(cfg)
    assert 0.0 <= metrics["test"]["dice_mean_fg"] <= 1.0


@requires_spider
@pytest.mark.slow
def test_spider_experiment_fast_dev_run(compose_cfg):
    cfg = compose_cfg(["experiment=seg/spider", "debug=fdr", f"paths.spider_dir={SPIDER}"])
    metrics = train(cfg)
    assert set(metrics["classes"]) == {"background", "disc", "vertebra", "canal"}
    assert 0.0 <= metrics["test"]["dice_vertebra"] <= 1.0
