"""Shared fixtures: tiny phantoms made once per session, configs composed as the CLI would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# tests never talk to W&B servers and use the 2 cores politely
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
SPIDER = Path(os.environ.get("SPIDER_DIR", REPO.parent / "shared" / "data" / "spider"))

requires_spider = pytest.mark.skipif(
    not (SPIDER / "seg_t2space" / "manifest.csv").is_file(),
    reason=f"real SPIDER data not found at {SPIDER} (set SPIDER_DIR to run these tests)",
)


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> dict[str, Path]:
    """A 64x64 sagittal and axial phantom with a few patients each (shared by the training tests)."""
    from spinenet.data.phantom import generate_phantom

    root = tmp_path_factory.mktemp("phantom")
    out = {}
    for view in ("sagittal", "axial"):
        out[view] = generate_phantom(root / view, view=view, patients=10, seed=1, size=64, slices_per_patient=2).parent
    return out


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(overrides, config_name='train') -> a config whose run folder is tmp_path/run."""
    from spinenet.config import compose

    def _compose(overrides=(), config_name="train", output_dir=None):
        return compose(config_name, list(overrides), output_dir=output_dir or tmp_path / "run")

    return _compose


def tiny_train_overrides(phantom_root: Path, view: str = "sagittal") -> list[str]:
    """Overrides that make any segmentation experiment a seconds-long CPU run on the tiny phantom."""
    data = "phantom_sagittal" if view == "sagittal" else "phantom_axial"
    return [
        f"data={data}",
        f"data.dataset.root={phantom_root}",
        "data.synthesize=null",
        "data.image_size=[64,64]",
        "data.batch_size=4",
        "logger=csv",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.deterministic=true",
        "extras.print_config=false",
        "callbacks.progress_bar=null",
    ]


def module_and_config(path):
    """The LightningModule and run config of a checkpoint or ensemble, through the one loader."""
    from spinenet.loading import load_model

    model, _ = load_model(path)
    return model.module, model.config
