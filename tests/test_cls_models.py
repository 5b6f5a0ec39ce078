"""Classifier zoo: DiscNet's layers and parameter count, forward/backward of every model, sizes, weights."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from spinenet.errors import ConfigError
from spinenet.models.classification import (
    DiscNet,
    build_classifier,
    count_parameters,
    min_input_size,
)
from spinenet.models.registry import CLASSIFIERS


@pytest.fixture(autouse=True)
def _few_threads():
    torch.manual_seed(0)
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's cores are shared
    yield
    torch.set_num_threads(old)


def test_discnet_layer_shapes_at_64():
    model = DiscNet(num_classes=5, in_channels=1, image_size=(64, 64)).eval()
    x = torch.randn(2, 1, 64, 64)
    shapes = []
    for layer in model.backbone:
        x = layer(x)
        shapes.append((type(layer).__name__, tuple(x.shape)))
    assert shapes == [
        ("Conv2d", (2, 16, 58, 58)),
        ("ReLU", (2, 16, 58, 58)),
        ("MaxPool2d", (2, 16, 58, 58)),  # 3×3 stride 1 'same'
        ("Conv2d", (2, 32, 56, 56)),
        ("ReLU", (2, 32, 56, 56)),
        ("Conv2d", (2, 64, 53, 53)),
        ("ReLU", (2, 64, 53, 53)),
        ("AvgPool2d", (2, 64, 26, 26)),
        ("Flatten", (2, 43264)),
    ]
    assert [type(m).__name__ for m in model.head] == ["Dropout", "BatchNorm1d", "Linear"]
    assert model.head[0].p == 0.4
    assert model.head(x).shape == (2, 5)


def test_discnet_parameter_count_matches_paper():
    # Šušteršič 2022: 342,691 total = 256,163 trainable + 86,528 non-trainable (Keras, RGB input, 3 classes)
    model = DiscNet(num_classes=3, in_channels=3)
    assert count_parameters(model, trainable_only=True) == 256_163
    assert count_parameters(model, bn_statistics=True) == 342_691
    assert count_parameters(model, bn_statistics=True) - count_parameters(model) == 86_528
    # one input channel: the first conv has 2 × 7·7·16 = 1,568 weights fewer
    assert count_parameters(DiscNet(num_classes=3, in_channels=1), bn_statistics=True) == 342_691 - 1_568


def test_smallcnn_pools_over_positions_so_its_size_does_not_grow_with_the_input():
    small, large = (build_classifier("smallcnn", 2, image_size=s) for s in [(16, 16), (48, 112)])
    n = count_parameters(small)
    # convs 9·(1·16 + 16·32 + 32·64 + 64·128), batch norms 2·(16 + 32 + 64 + 128), dense 128·2 + 2
    assert n == 9 * (16 + 16 * 32 + 32 * 64 + 64 * 128) + 2 * (16 + 32 + 64 + 128) + 128 * 2 + 2
    assert count_parameters(large) == n and small.num_features == 128


def _size(name: str) -> int:
    return max(64, min_input_size(name))


@pytest.mark.parametrize("name", CLASSIFIERS.names())
def test_every_model_runs_forward_and_backward(name):
    s = _size(name)
    model = build_classifier(name, num_classes=3, in_channels=1, image_size=(s, s))
    model.train()
    out = model(torch.randn(2, 1, s, s))
    assert out.shape == (2, 3)
    nn.functional.cross_entropy(out, torch.tensor([0, 2])).backward()
    backbone, head = list(model.backbone_parameters()), list(model.head_parameters())
    assert {id(p) for p in backbone}.isdisjoint({id(p) for p in head})
    assert len(backbone) + len(head) == len(list(model.parameters()))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone)
    assert all(p.grad is not None for p in head)


def test_minimum_input_sizes_are_checked_at_build_time():
    assert min_input_size("inception_v3") == 75
    assert min_input_size("discnet") == 13
    assert min_input_size("xception") == 32
    with pytest.raises(
        ConfigError, match=r"inception_v3 needs inputs of at least 75×75.*data.image_size: \[75, 75\]"
    ):
        build_classifier("inception_v3", 2, image_size=(64, 64))
    with pytest.raises(ConfigError, match="at least 13×13"):
        build_classifier("discnet", 2, image_size=(64, 12))
    build_classifier("discnet", 2, image_size=(13, 13))


@pytest.mark.parametrize(("name", "size"), [("discnet", 13), ("smallcnn", 16), ("inception_v3", 75), ("vgg16", 32)])
def test_measured_minimum_is_the_real_limit(name, size):
    # at the minimum the forward pass runs; one pixel less and the network itself fails
    model = build_classifier(name, 2, image_size=(size, size)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, size, size)).shape == (1, 2)
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 1, size - 1, size - 1))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        build_classifier("resnet101", 2)
    assert f"unknown classifier 'resnet101'; choose one of {', '.join(CLASSIFIERS)}" in str(info.value)
    assert "discnet, smallcnn" in str(info.value)


def test_transfer_learning_head_on_timm_backbone():
    model = build_classifier("resnet50", 2, image_size=(64, 64), head={"hidden": [256, 128], "dropout": 0.2})
    layers = [
        (type(m).__name__, getattr(m, "in_features", None), getattr(m, "out_features", None))
        for m in model.head
    ]
    assert layers == [
        ("Linear", 2048, 256),
        ("ReLU", None, None),
        ("Linear", 256, 128),
        ("ReLU", None, None),
        ("Dropout", None, None),
        ("Linear", 128, 2),
    ]
    vgg = build_classifier("vgg16", 2, image_size=(32, 32))
    assert vgg.num_features == 512 and isinstance(
        vgg.backbone.pre_logits, nn.Identity
    )  # Keras include_top=False
    with pytest.raises(ConfigError, match="unknown key.*'units'.*valid: hidden, dropout"):
        build_classifier("resnet50", 2, head={"units": 4})
    with pytest.raises(ConfigError, match="NiN's head is convolutional"):
        build_classifier("nin", 2, head={"hidden": [8]})


def test_pretrained_path_must_be_a_local_file(tmp_path):
    with pytest.raises(ConfigError, match="'imagenet' is not a local file.*downloads nothing"):
        build_classifier("resnet50", 2, pretrained_path="imagenet")
    with pytest.raises(ConfigError, match="not a local file"):
        build_classifier("discnet", 2, pretrained_path=str(tmp_path / "missing.pth"))


def test_timm_weights_from_local_file_adapt_first_conv(tmp_path):
    source = timm.create_model("resnet50", pretrained=False)  # 3 channels, 1000 classes, as ImageNet weights
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    model = build_classifier("resnet50", 2, in_channels=1, pretrained_path=str(path))
    assert torch.equal(model.backbone.layer4[2].conv3.weight, source.layer4[2].conv3.weight)
    # timm's in_chans adaptation: RGB filters summed into the single channel
    assert torch.allclose(model.backbone.conv1.weight[:, 0], source.conv1.weight.sum(1))
    # weights of another architecture do not silently leave the backbone random
    torch.save(timm.create_model("densenet121", pretrained=False).state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit timm's resnet50.*backbone tensors missing"):
        build_classifier("resnet50", 2, pretrained_path=str(path))


def test_weights_saved_from_a_spinenet_classifier_load_again(tmp_path):
    trained = build_classifier("discnet", 3)
    with torch.no_grad():
        trained.backbone[0].weight.add_(1.0)
    path = tmp_path / "discnet.pth"
    torch.save(trained.state_dict(), path)
    # another task with 5 classes: backbone and batch norm load, the 3-class dense layer keeps its init
    model = build_classifier("discnet", 5, pretrained_path=str(path))
    assert torch.equal(model.backbone[0].weight, trained.backbone[0].weight)
    assert model.head[2].weight.shape == (5, 43264)


def test_invalid_model_options_are_config_errors():
    with pytest.raises(ConfigError, match="invalid option for discnet"):
        build_classifier("discnet", 2, width=3)
    with pytest.raises(ConfigError, match="num_classes: expected an integer >= 2"):
        build_classifier("lenet", 1)
