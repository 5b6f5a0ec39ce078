"""Model registries: one decorated function adds a model that builds, is checked and trains by config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from spinenet.errors import ConfigError
from spinenet.models import list_models
from spinenet.models.classification import Classifier, build_classifier
from spinenet.models.registry import CLASSIFIERS, SEGMENTERS, Registry
from spinenet.models.segmentation import build_segmenter, required_multiple, valid_combinations
from spinenet.tasks.train import train
from tests.conftest import tiny_train_overrides
from tests.test_cls_train import tiny_cls_overrides


@pytest.fixture
def toy_classifier():
    """A classifier added by one decorated function, removed again afterwards."""
    before = CLASSIFIERS.names()

    @CLASSIFIERS.register("toy_cls", min_size=8, aliases=("toy-classifier",))
    def toy_cls(num_classes: int, in_channels: int = 1, image_size=(64, 64), width: int = 4) -> Classifier:
        """A toy: one convolution, global average pooling, dense."""
        backbone = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        return Classifier(backbone, nn.Linear(width, num_classes), width, "toy_cls")

    yield toy_cls
    CLASSIFIERS.unregister("toy_cls")
    assert CLASSIFIERS.names() == before and "toy-classifier" not in CLASSIFIERS


@pytest.fixture
def toy_segmenter():
    """A segmenter added by one decorated function (inputs a multiple of 2), removed again afterwards."""
    before = SEGMENTERS.names()

    @SEGMENTERS.register("toy_seg", multiple=2)
    def toy_seg(num_classes: int, in_channels: int = 1, width: int = 4) -> nn.Module:
        """A toy: conv, 2x2 pooling, conv, upsampling."""
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, num_classes, 3, padding=1), nn.Upsample(scale_factor=2),
        )

    yield toy_seg
    SEGMENTERS.unregister("toy_seg")
    assert SEGMENTERS.names() == before


def test_toy_classifier_is_built_and_checked_from_its_entry(toy_classifier):
    assert "toy_cls" in list_models("classifier") and "toy_cls" not in list_models("segmenter")
    entry = CLASSIFIERS.get("Toy-Classifier")  # alias, any case
    assert entry.builder is toy_classifier and entry.min_size == 8
    assert entry.options == ("width",) and dict(entry.defaults) == {"width": 4}
    assert entry.description == "A toy: one convolution, global average pooling, dense."
    model = build_classifier("toy_cls", 3, image_size=(8, 8), width=6)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3) and model.num_features == 6
    # what the factory adds to every model: a dense head, the size rule, the option check, the name list
    with_head = build_classifier("toy_cls", 2, head={"hidden": [5], "dropout": 0.1})
    assert [type(m).__name__ for m in with_head.head] == ["Linear", "ReLU", "Dropout", "Linear"]
    with pytest.raises(ConfigError, match=r"toy_cls needs inputs of at least 8×8"):
        build_classifier("toy_cls", 2, image_size=(7, 64))
    with pytest.raises(ConfigError, match=r"invalid option for toy_cls: unknown option\(s\) \['depth'\]; valid: width"):
        build_classifier("toy_cls", 2, depth=3)
    with pytest.raises(ConfigError, match="unknown classifier 'toy'; choose one of discnet.*xception, toy_cls"):
        build_classifier("toy", 2)


def test_toy_segmenter_is_built_and_checked_from_its_entry(toy_segmenter):
    assert ("toy_seg", None) in valid_combinations() and required_multiple("toy_seg") == 2
    model = build_segmenter("toy_seg", 3, image_size=(6, 8), width=2)
    assert model(torch.randn(1, 1, 6, 8)).shape == (1, 3, 6, 8)
    with pytest.raises(ConfigError, match="7x8 does not fit toy_seg: .*multiples of 2; nearest valid sizes: 7 -> 6 or 8"):
        build_segmenter("toy_seg", 3, image_size=(7, 8))
    with pytest.raises(ConfigError, match="toy_seg has no pretrained encoder"):
        build_segmenter("toy_seg", 3, encoder="resnet34")
    # an option of another net (the unet_sustersic config group's) is named as such
    with pytest.raises(ConfigError, match=r"\['depth'\] for toy_seg; valid: width; depth apply only to unet_sustersic"):
        build_segmenter("toy_seg", 3, depth=3)


def _trained_net(cfg, weight_suffix: str) -> tuple[str, list[tuple[int, ...]]]:
    """The net name in the run's checkpoint and the shapes of its weights ending in ``weight_suffix``."""
    ckpt = torch.load(next(Path(cfg.paths.output_dir).rglob("*.ckpt")), map_location="cpu", weights_only=True)
    shapes = [tuple(v.shape) for k, v in ckpt["state_dict"].items() if k.endswith(weight_suffix)]
    return ckpt["spinenet"]["model"]["net"]["name"], shapes


@pytest.mark.slow
def test_toy_classifier_trains_through_the_config(toy_classifier, compose_cfg, tmp_path):
    cfg = compose_cfg([
        "experiment=cls/sustersic2022_sagittal",  # model=classifier
        *[o for o in tiny_cls_overrides(tmp_path / "data") if o != "debug=fdr"],  # fdr writes no checkpoint
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "logger=none",
        "model.net.name=toy_cls",
        "+model.net.width=5",
    ])
    metrics = train(cfg)
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert _trained_net(cfg, "backbone.0.weight") == ("toy_cls", [(5, 1, 3, 3)])


@pytest.mark.slow
def test_toy_segmenter_trains_through_the_config(toy_segmenter, tiny_phantom, compose_cfg):
    cfg = compose_cfg([
        *tiny_train_overrides(tiny_phantom["sagittal"]),
        "model=smp",  # no unet_sustersic options
        "model.net.name=toy_seg",
        "model.net.encoder=null",
        "+model.net.width=3",
        "trainer.max_epochs=1",
        "logger=none",
        "model.num_overlays=0",
    ])
    metrics = train(cfg)
    assert 0.0 <= metrics["test"]["dice_mean_fg"] <= 1.0
    assert _trained_net(cfg, "net.0.weight") == ("toy_seg", [(3, 1, 3, 3)])


def test_registry_rules():
    reg = Registry("thing", setting="model.net.name", fixed=("num_classes",), extra={"encoders": None})

    @reg.register(aliases=("B",), encoders=("x",))
    def a(num_classes: int, size: int = 3, **rest):
        return num_classes

    assert reg.names() == ("a",) and reg.get("b").name == "a" and reg.get("a").options is None  # **rest: any
    assert reg.get("a").extra["encoders"] == ("x",) and dict(reg.get("a").defaults) == {"size": 3}
    with pytest.raises(ValueError, match="a, b already registered"):
        reg.register("A", aliases=("b",))(a)
    with pytest.raises(TypeError, match=r"unknown entry field\(s\) \['min_szie'\]"):
        reg.register("c", min_szie=3)
    with pytest.raises(ConfigError, match="model.net.name: unknown thing 'c'; choose one of a"):
        reg.get("c")
    reg.register("c", multiple=lambda o: 2 ** o["size"], options=("size",), defaults={"size": 2})(a)
    assert reg.get("c").required_multiple({"size": None}) == 4 and reg.get("c").required_multiple({"size": 3}) == 8
    reg.unregister("A")
    assert reg.names() == ("c",) and "b" not in reg
    # the built-in models, in the order the papers' tables list them
    assert list_models("segmenter")[:2] == ["unet_sustersic", "unet"] and list_models()[-1] == "xception"
