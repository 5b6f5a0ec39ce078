"""Segmenters: every architecture × encoder builds and trains a step; invalid choices fail with what works."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spinenet.errors import ConfigError
from spinenet.models.registry import SEGMENTERS
from spinenet.models.segmentation import (
    SEGMENTER_ENCODERS,
    SustersicUNet,
    build_segmenter,
    required_multiple,
    valid_combinations,
)

# every registered net with an encoder choice (the smp nets), with each encoder it can use
SMP_COMBOS = [c for c in valid_combinations() if c[1] is not None]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny 64×64 steps run faster on one thread than on two cores shared with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _step(model: nn.Module, in_channels: int = 1, size: int = 64, num_classes: int = 4) -> torch.Tensor:
    """One forward and backward pass in train mode at batch 2 (BatchNorm needs more than one value)."""
    model.train()
    x = torch.randn(2, in_channels, size, size)
    y = model(x)
    assert y.shape == (2, num_classes, size, size)
    y.logsumexp(1).mean().backward()
    # gradients reach the first convolution and the last layer (PSPNet leaves its unused deep stages alone)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in (convs[0], convs[-1]):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    return y


def test_valid_combinations_are_the_papers_grid():
    papers = ("unet_sustersic", "unet", "linknet", "fpn", "pspnet", "deeplabv3plus")
    assert SEGMENTERS.names()[: len(papers)] == papers  # registered first; more may follow
    combos = [c for c in valid_combinations() if c[0] in papers]
    assert ("unet_sustersic", None) in combos
    assert set(SEGMENTER_ENCODERS) == {"resnet34", "resnet50", "resnext50_32x4d", "vgg16"}
    # 4 nets × 4 encoders, DeepLabv3+ without VGG, plus the Šušteršič U-Net
    assert len(combos) == 4 * 4 + 3 + 1
    assert ("deeplabv3plus", "vgg16") not in combos and ("deeplabv3plus", "resnet50") in combos


@pytest.mark.parametrize(("name", "encoder"), SMP_COMBOS, ids=[f"{n}-{e}" for n, e in SMP_COMBOS])
def test_smp_combination_builds_and_trains_a_step(name, encoder):
    torch.manual_seed(0)
    model = build_segmenter(name, num_classes=4, in_channels=1, encoder=encoder, image_size=(64, 64))
    _step(model)
    # the build-time size rule is the one smp itself enforces at run time
    smp_multiple = model.encoder.output_stride if model.requires_divisible_input_shape else 1
    assert required_multiple(name) == smp_multiple


def _conv_block(cin: int, cout: int) -> int:
    return 9 * cin * cout + 9 * cout * cout + 2 * 2 * cout  # two bias-free 3×3 convs + two BatchNorms (γ, β)


def _sustersic_params(in_ch: int, base: int, depth: int, classes: int) -> int:
    widths = [base * 2**i for i in range(depth + 1)]
    n, ch = 0, in_ch
    for w in widths:  # encoder levels and bottleneck
        n += _conv_block(ch, w)
        ch = w
    for deep, w in zip(reversed(widths[1:]), reversed(widths[:-1]), strict=True):
        n += 4 * deep * w + w + _conv_block(2 * w, w)  # 2×2 transposed conv (+bias), then the block
    return n + widths[0] * classes + classes  # 1×1 head


@pytest.mark.parametrize(("base", "depth", "top"), [(8, 5, 256), (16, 3, 128)])
def test_sustersic_variants(base, depth, top):
    model = build_segmenter("unet_sustersic", num_classes=2, base_channels=base, depth=depth, dropout=0.3,
                            image_size=[64, 64])
    assert isinstance(model, SustersicUNet)
    n = sum(p.numel() for p in model.parameters())
    print(f"\nSustersicUNet {base}->{top} kernels (depth {depth}): {n:,} parameters")
    assert n == _sustersic_params(1, base, depth, 2)
    assert model.bottleneck[0].out_channels == top
    assert model.down[0][0].out_channels == base
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in model.modules()) == depth
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 1  # one module, used at every level
    # dropout at the deepest encoder level and the bottleneck only
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.3, 0.3]
    assert isinstance(model.down[-1][-1], nn.Dropout) and isinstance(model.bottleneck[-1], nn.Dropout)
    _step(model, num_classes=2)


def test_sustersic_options():
    plain = build_segmenter("unet_sustersic", 3, base_channels=8, depth=2, dropout=0.0, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.Dropout) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))
    # null options (the smp config group sets them) mean the paper's defaults
    default = build_segmenter("unet_sustersic", 3, base_channels=None, depth=None, dropout=None, encoder=None)
    assert default.base_channels == 8 and default.depth == 5 and default.dropout == 0.2
    plain.eval()
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(plain(x), plain(x))
    with pytest.raises(RuntimeError, match="multiple of 4"):
        plain(torch.randn(1, 1, 18, 18))


def test_deep_supervision_adds_the_coarser_levels_loss_in_training_only():
    """Aux heads on the 1/4- and 1/2-size decoder levels: their logits exist in training, their loss reaches
    their weights through the module's training step; in eval the net is the plain one (same logits as
    without the heads), and off (0 or null) there is no extra checkpoint key."""
    from spinenet.lit.segmentation import SegmentationModule
    from spinenet.losses import DiceFocalLoss

    torch.manual_seed(0)
    net = build_segmenter("unet_sustersic", 4, base_channels=4, depth=3, dropout=0.0, deep_supervision=0.5)
    assert [m.in_channels for m in net.aux_heads] == [16, 8]  # decoder widths at 1/4 and 1/2 size
    plain = build_segmenter("unet_sustersic", 4, base_channels=4, depth=3, dropout=0.0)
    assert not any("aux" in k for k in plain.state_dict())
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("aux_heads")})
    x, mask = torch.randn(2, 1, 32, 32), torch.randint(0, 4, (2, 32, 32))
    net.eval(), plain.eval()
    assert torch.equal(net(x), plain(x)) and net.aux_logits == []
    net.train()
    module = SegmentationModule(net, DiceFocalLoss(4), torch.optim.SGD, class_names=["b", "d", "v", "c"])
    loss = module.training_step({"image": x, "mask": mask}, 0)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.aux_heads.parameters())
    assert net.aux_logits == []  # consumed by the step, not kept
    with pytest.raises(ConfigError, match="model.net.deep_supervision"):
        build_segmenter("unet_sustersic", 4, depth=2, deep_supervision=0.5)


def test_three_channel_input():
    _step(build_segmenter("unet_sustersic", 4, in_channels=3, base_channels=8, depth=3), in_channels=3)
    model = build_segmenter("fpn", 4, in_channels=3, encoder="resnet34", image_size=(64, 64))
    assert model.encoder.conv1.in_channels == 3
    _step(model, in_channels=3)


def test_aliases():
    model = build_segmenter("DeepLabV3+", 3, encoder="ResNeXt50", image_size=(64, 64), decoder_channels=64)
    assert type(model).__name__ == "DeepLabV3Plus"
    assert model.encoder.layer1[0].conv2.groups == 32  # ResNeXt-50 32×4d
    assert required_multiple("deeplabv3plus") == 16 and required_multiple("pspnet") == 8
    assert required_multiple("linknet") == 32 and required_multiple("unet") == 1
    assert required_multiple("unet_sustersic", depth=3) == 8
    assert required_multiple("fpn", encoder_depth=4) == 16


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(name="segnet"), ["unknown segmenter 'segnet'", ", ".join(SEGMENTERS)]),
        (dict(name="unet", encoder="efficientnet-b0"), ["resnet34", "resnet50", "resnext50_32x4d", "vgg16"]),
        (dict(name="deeplabv3plus", encoder="vgg16"), ["deeplabv3plus cannot use vgg16",
                                                        "resnet34, resnet50, resnext50_32x4d"]),
        (dict(name="unet_sustersic", encoder="resnet34"), ["no pretrained encoder", "resnet34"]),
        (dict(name="unet", in_channels=2), ["1 (gray) or 3 (RGB)"]),
        (dict(name="fpn", image_size=(100, 64)), ["100x64", "multiples of 32", "100 -> 96 or 128"]),
        (dict(name="linknet", image_size=(16, 16)), ["multiples of 32", "16 -> 32"]),
        (dict(name="pspnet", image_size=(12, 20)), ["multiples of 8", "12 -> 8 or 16", "20 -> 16 or 24"]),
        (dict(name="unet_sustersic", depth=5, image_size=(48, 48)), ["2**depth", "48 -> 32 or 64"]),
        (dict(name="unet_sustersic", depth=4, image_size=(64, 64), crop_size=(40, 48)),
         ["data.augment.crop: 40x48", "40 -> 32 or 48"]),
        (dict(name="fpn", image_size=(64, 64), crop_size=(48, 48)), ["data.augment.crop", "multiples of 32"]),
        (dict(name="unet", base_channels=8), ["base_channels apply only to unet_sustersic"]),
        (dict(name="unet_sustersic", decoder_channels=[8]), ["decoder_channels", "base_channels, depth"]),
        (dict(name="unet_sustersic", dropout=1.5), ["[0, 1)"]),
        (dict(name="fpn", decoder_chanels=[8]), ["decoder_chanels", "decoder_pyramid_channels"]),
        (dict(name="unet", activation="softmax"), ["activation", "decoder_channels"]),
        (dict(name="unet", num_classes=1), [">= 2"]),
        (dict(name="unet", encoder_weights="imagenet"), ["not a local file", "downloads nothing"]),
        (dict(name="unet_sustersic", encoder_weights="/tmp/w.pth"), ["no pretrained encoder"]),
    ],
)
def test_invalid_choices_say_what_works(kwargs, expected):
    kwargs = {"num_classes": 4, **kwargs}
    with pytest.raises(ConfigError) as info:
        build_segmenter(**kwargs)
    for text in expected:
        assert text in str(info.value)


def test_local_encoder_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    source = build_segmenter("unet", 4, in_channels=1, encoder="resnet34")
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in source.encoder.state_dict().items()}
    path = tmp_path / "encoder.pth"
    torch.save(state, path)
    model = build_segmenter("unet", 4, in_channels=1, encoder="resnet34", encoder_weights=str(path),
                            image_size=(64, 64))
    loaded = model.encoder.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    fresh = build_segmenter("unet", 4, in_channels=1, encoder="resnet34")
    assert not torch.equal(fresh.encoder.conv1.weight, loaded["conv1.weight"])
    _step(model)


def test_rgb_weights_file_into_gray_encoder(tmp_path):
    # an ImageNet-style file (RGB first conv, plus a classifier the encoder does not have)
    rgb = build_segmenter("linknet", 3, in_channels=3, encoder="resnet34").encoder.state_dict()
    rgb["fc.weight"], rgb["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    path = tmp_path / "resnet34_imagenet.pth"
    torch.save({"state_dict": rgb}, path)
    model = build_segmenter("linknet", 3, in_channels=1, encoder="resnet34", encoder_weights=str(path))
    # one channel: the RGB filters summed, as smp adapts its own pretrained weights
    assert model.encoder.conv1.weight.shape[1] == 1
    assert torch.allclose(model.encoder.conv1.weight, rgb["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.encoder.layer4[2].conv2.weight, rgb["layer4.2.conv2.weight"])
    _step(model, num_classes=3)


def test_weights_file_that_does_not_fit(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(build_segmenter("unet", 4, in_channels=3, encoder="resnet34").encoder.state_dict(), path)
    with pytest.raises(ConfigError, match=r"does not fit .*tensors match"):
        build_segmenter("unet", 4, encoder="resnet50", encoder_weights=str(path))
    with pytest.raises(ConfigError, match="file not found"):
        build_segmenter("unet", 4, encoder="resnet34", encoder_weights=str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a state dict")
    with pytest.raises(ConfigError, match="not a readable"):
        build_segmenter("unet", 4, encoder="resnet34", encoder_weights=str(junk))
