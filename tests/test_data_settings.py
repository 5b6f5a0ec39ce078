"""Every key of the ``data`` config reaches the data module: a misspelt one is an error naming it, the keys
that other code reads from the run config (``crop_recipe``, ``flip_swap``) are accepted."""

from __future__ import annotations

import hydra
import pytest
from hydra.errors import InstantiationException

from spinenet.cli.hydra_app import config_error_line
from spinenet.config import compose, config_dir
from spinenet.errors import ConfigError
from spinenet.tasks.train import train
from tests.conftest import tiny_train_overrides

DATA_CONFIGS = [f"data={p.stem}" for p in sorted((config_dir() / "data").glob("*.yaml"))] + [
    f"experiment={p.relative_to(config_dir() / 'experiment').with_suffix('')}"
    for p in sorted((config_dir() / "experiment").rglob("*.yaml"))
]


def test_a_misspelt_data_key_is_one_line_naming_it(tiny_phantom, compose_cfg, tmp_path):
    cfg = compose_cfg([*tiny_train_overrides(tiny_phantom["sagittal"]), "+data.batchsize=4"])
    with pytest.raises(InstantiationException) as caught:  # Hydra wraps what the constructor raises
        train(cfg)
    assert isinstance(caught.value.__cause__, ConfigError)
    line = config_error_line(caught.value)  # what `spinenet train` prints after "error:"
    assert line is not None and "\n" not in line
    assert "batchsize" in line and "batch_size" in line  # the wrong key, and the valid ones


# data configs whose labels come from the model's task list (model=multitask; the experiment that pairs them,
# cls/spider_grading, is in DATA_CONFIGS and must be accepted)
NEEDS_MODEL_TASKS = ("data=spider_grading",)


@pytest.mark.parametrize("choice", DATA_CONFIGS)
def test_every_data_config_is_accepted(choice, tmp_path):
    cfg = compose("train", [choice], output_dir=tmp_path / "run")
    if choice in NEEDS_MODEL_TASKS:  # alone, it says in one line what it lacks
        with pytest.raises(InstantiationException) as caught:
            hydra.utils.instantiate(cfg.data, output_dir=str(tmp_path / "run"), check="off")
        assert "model.tasks is not set" in (config_error_line(caught.value) or "")
        return
    datamodule = hydra.utils.instantiate(cfg.data, output_dir=str(tmp_path / "run"), check="off")
    assert datamodule.spec.root


def test_settings_read_elsewhere_are_accepted_by_both_kinds(tmp_path):
    """spinenet eval nulls flip_swap for every task; crop_recipe is read by spinenet diagnose."""
    for choice in ("data=phantom_sagittal", "data=phantom_axial_crops"):
        overrides = [choice, "+data.crop_recipe={margin: 0.1}", "++data.flip_swap=null"]
        cfg = compose("train", overrides, output_dir=tmp_path / "run")
        hydra.utils.instantiate(cfg.data, output_dir=str(tmp_path / "run"), check="off")
