"""Segmenters by name: the U-Net of Šušteršič 2022 and the segmentation-models-pytorch nets of Sayed 2025.

Every model maps an image batch ``(B, in_channels, H, W)`` to **logits** ``(B, num_classes, H, W)``;
softmax is applied by the loss during training and by the caller at inference.

Names (:data:`SEGMENTER_NAMES`) and encoders (:data:`SEGMENTER_ENCODERS`, Sayed 2025 Table 4):

- ``unet_sustersic``: :class:`SustersicUNet`, no encoder choice (``base_channels``, ``depth``, ``dropout``,
  ``batch_norm``).
- ``unet``, ``linknet``, ``fpn``, ``pspnet``, ``deeplabv3plus``: ``smp.create_model`` with one of
  ``resnet34``, ``resnet50``, ``resnext50_32x4d`` (alias ``resnext50``) and ``vgg16`` (smp's ``vgg16``,
  without batch norm, the same as the Keras VGG16 that Sayed's ``segmentation_models`` used). DeepLabv3+
  needs a dilated encoder, which VGG (max-pool downsampling) cannot be; Sayed 2025 ran it with ResNet50 only.

Input sizes (:func:`required_multiple`): smp checks at run time that H and W are multiples of the encoder's
output stride; :func:`build_segmenter` checks ``image_size`` at build time instead. LinkNet and FPN: 32
(``2**encoder_depth``); PSPNet: 8 (smp's PSPNet uses 3 encoder stages by default, then pyramid pooling with
adaptive bins, so 8×8 is also its smallest input); DeepLabv3+: 16 (its encoder output stride). smp's U-Net
resizes each upsampled map to its skip connection's size, so it runs at any size (multiple 1).
``unet_sustersic``: ``2**depth`` (every pooling halves the map and the transposed convolution doubles it).

Pretrained encoders come only from a local file (``encoder_weights``): a state dict of the matching
torchvision / timm ImageNet model (e.g. ``torch.save(torchvision.models.resnet34(weights="DEFAULT")
.state_dict(), "resnet34.pth")`` on a machine with internet), or the ``encoder`` state dict of a spinenet
segmenter. smp's encoders use torchvision's tensor names, so such a file fits as it is (the classifier
tensors are skipped). For one input channel the RGB filters of the first convolution are summed, the same
adaptation that smp applies to its own pretrained weights. Nothing is ever downloaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from spinenet.errors import ConfigError
from spinenet.models.pretrained import load_local_weights

__all__ = [
    "SEGMENTER_ENCODERS",
    "SEGMENTER_NAMES",
    "SustersicUNet",
    "build_segmenter",
    "required_multiple",
    "valid_combinations",
]

# spinenet name -> smp architecture name (smp.create_model's ``arch``)
_SMP_ARCHS: dict[str, str] = {
    "unet": "unet",
    "linknet": "linknet",
    "fpn": "fpn",
    "pspnet": "pspnet",
    "deeplabv3plus": "deeplabv3plus",
}
SEGMENTER_NAMES: tuple[str, ...] = ("unet_sustersic", *_SMP_ARCHS)

# spinenet encoder name -> smp encoder name
_SMP_ENCODERS: dict[str, str] = {
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnext50_32x4d": "resnext50_32x4d",
    "vgg16": "vgg16",  # smp also has vgg16_bn; Keras' VGG16 (Sayed 2025) has no batch norm
}
SEGMENTER_ENCODERS: tuple[str, ...] = tuple(_SMP_ENCODERS)

_NAME_ALIASES = {
    "u_net": "unet", "link_net": "linknet", "psp_net": "pspnet", "psp": "pspnet",
    "deeplabv3+": "deeplabv3plus", "deeplab_v3plus": "deeplabv3plus", "deeplabv3_plus": "deeplabv3plus",
    "deeplab_v3_plus": "deeplabv3plus", "deeplab": "deeplabv3plus",
    "sustersic": "unet_sustersic", "sustersic_unet": "unet_sustersic", "unet_sustersic2022": "unet_sustersic",
}
_ENCODER_ALIASES = {
    "resnext50": "resnext50_32x4d", "resnext_50": "resnext50_32x4d", "resnet_34": "resnet34",
    "resnet_50": "resnet50", "vgg_16": "vgg16",
}
# encoders DeepLabv3+ cannot use: smp's VGG encoder refuses dilated mode (it downsamples by max pooling)
_NOT_DILATABLE = frozenset({"vgg16"})
# the weight names smp/timm would download; spinenet takes a file instead
_DOWNLOAD_NAMES = frozenset(
    {"imagenet", "ssl", "swsl", "instagram", "advprop", "noisy-student", "true", "default"}
)
# options of the Šušteršič U-Net; the smp config group sets them to null for smp nets
_SUSTERSIC_KEYS = ("base_channels", "depth", "dropout", "batch_norm")


class SustersicUNet(nn.Module):
    """The U-Net of Šušteršič et al. 2022 (IEEE JBHI, Fig. 2), with its kernel grid as options.

    Encoder: per level two 3×3 convolutions ('same' padding) with ReLU, then 2×2 max pooling. The widths
    double per level from ``base_channels``: base 8 with ``depth`` 5 poolings gives 8→256 kernels (the
    paper's best setting), base 16 with depth 3 gives 16→128. Decoder: per level a 2×2 transposed
    convolution (stride 2) that halves the width, concatenation with the encoder map of the same size, two
    3×3 convolutions. A final 1×1 convolution gives ``num_classes`` logits (the paper's single 1×1 filter
    with a sigmoid is the two-class case of this; spinenet trains every segmenter with softmax).

    Dropout: the paper tunes one rate in 0.1–0.5 but does not say where it sits. It is placed as in the
    original U-Net (Ronneberger 2015, "drop-out layers at the end of the contracting path") and the common
    Keras U-Net: after the two convolutions of the deepest encoder level (before its pooling) and of the
    bottleneck. ``dropout=0`` turns it off.

    Batch normalization (after each 3×3 convolution, before ReLU) is not in the paper; it is on by default
    because it makes training with SGD at LR 0.01 robust to the depth. ``batch_norm=False`` gives the plain
    network of the paper (convolutions then carry a bias).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, base_channels: int = 8, depth: int = 5,
                 dropout: float = 0.2, batch_norm: bool = True):
        super().__init__()
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)
        self.base_channels, self.depth = int(base_channels), int(depth)
        self.dropout, self.batch_norm = float(dropout), bool(batch_norm)
        widths = [self.base_channels * 2**i for i in range(self.depth + 1)]  # last one: bottleneck

        self.down = nn.ModuleList()
        ch = self.in_channels
        for level, w in enumerate(widths[:-1]):
            deepest = level == self.depth - 1
            self.down.append(self._block(ch, w, self.dropout if deepest else 0.0))
            ch = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = self._block(ch, widths[-1], self.dropout)

        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        ch = widths[-1]
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(ch, w, kernel_size=2, stride=2))
            self.dec.append(self._block(2 * w, w, 0.0))  # input: upsampled (w) + skip (w)
            ch = w
        self.head = nn.Conv2d(ch, self.num_classes, kernel_size=1)

    def _block(self, cin: int, cout: int, dropout: float) -> nn.Sequential:
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers.append(nn.Conv2d(c, cout, kernel_size=3, padding=1, bias=not self.batch_norm))
            if self.batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))  # element-wise, as Keras' Dropout
        return nn.Sequential(*layers)

    @property
    def required_multiple(self) -> int:
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.required_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise RuntimeError(f"SustersicUNet(depth={self.depth}): input {tuple(x.shape[-2:])} must be a "
                               f"multiple of {m} in height and width")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def _key(value: Any) -> str:
    return str(value).strip().lower().replace("-", "_").replace(" ", "_")


def _canonical_name(name: str) -> str:
    key = _key(name)
    key = _NAME_ALIASES.get(key, key)
    if key not in SEGMENTER_NAMES:
        raise ConfigError(f"model.net.name: unknown segmenter {name!r}; "
                          f"choose one of {', '.join(SEGMENTER_NAMES)}")
    return key


def _canonical_encoder(encoder: str, name: str) -> str:
    key = _key(encoder)
    key = _ENCODER_ALIASES.get(key, key)
    if key not in _SMP_ENCODERS:
        raise ConfigError(f"model.net.encoder: unknown encoder {encoder!r} for {name}; choose one of "
                          f"{', '.join(SEGMENTER_ENCODERS)} (aliases: {', '.join(sorted(_ENCODER_ALIASES))})")
    return key


def _encoders_for(name: str) -> list[str]:
    return [e for e in SEGMENTER_ENCODERS if not (name == "deeplabv3plus" and e in _NOT_DILATABLE)]


def valid_combinations() -> list[tuple[str, str | None]]:
    """Every (name, encoder) pair that :func:`build_segmenter` builds; ``unet_sustersic`` has no encoder."""
    out: list[tuple[str, str | None]] = [("unet_sustersic", None)]
    for name in _SMP_ARCHS:
        out += [(name, e) for e in _encoders_for(name)]
    return out


def required_multiple(name: str, **kwargs: Any) -> int:
    """The number that input height and width must be a multiple of for segmenter ``name``.

    ``kwargs`` are the model options that change it: ``depth`` (``unet_sustersic``, default 5),
    ``encoder_depth`` (smp, default 5; PSPNet 3) and ``encoder_output_stride`` (DeepLabv3+, default 16).
    Unset (None) values mean the default.
    """
    key = _canonical_name(name)
    if key == "unet_sustersic":
        depth = kwargs.get("depth")
        return 2 ** int(5 if depth is None else depth)
    if key == "unet":
        return 1  # smp's U-Net decoder resizes to each skip's size
    depth = kwargs.get("encoder_depth")
    depth = int(depth) if depth is not None else (3 if key == "pspnet" else 5)
    stride = 2**depth
    if key == "deeplabv3plus":
        out_stride = kwargs.get("encoder_output_stride")
        stride = min(stride, int(16 if out_stride is None else out_stride))
    return stride


def _smp_options(key: str) -> list[str]:
    """Options of smp's model class that spinenet passes through (logits only: no activation, no aux head)."""
    params = inspect.signature(smp.MODEL_ARCHITECTURES_MAPPING[_SMP_ARCHS[key]]).parameters
    fixed = {"encoder_name", "encoder_weights", "in_channels", "classes", "activation", "aux_params",
             "kwargs"}
    return [p for p in params if p not in fixed]


def _image_size(image_size: Sequence[int] | int | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    try:
        size = tuple(int(s) for s in image_size)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"data.image_size: expected [height, width], got {image_size!r}") from exc
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"data.image_size: expected [height, width] of positive integers, got {list(size)}")
    return size  # type: ignore[return-value]


def _check_size(size: tuple[int, int], multiple: int, what: str, setting: str = "data.image_size") -> None:
    bad = [s for s in size if s % multiple]
    if not bad:
        return
    hints = []
    for s in dict.fromkeys(bad):
        lower, upper = s // multiple * multiple, (s // multiple + 1) * multiple
        near = f"{lower} or {upper}" if lower > 0 else f"{upper}"
        hints.append(f"{s} -> {near}")
    raise ConfigError(f"{setting}: {size[0]}x{size[1]} does not fit {what}: height and width must be "
                      f"multiples of {multiple}; nearest valid sizes: {', '.join(hints)}")


def _check_sizes(size: tuple[int, int] | None, crop: tuple[int, int] | None, multiple: int, what: str) -> None:
    """The whole input (``data.image_size``) and the training patch (``data.augment.crop``), where set."""
    for given, setting in ((size, "data.image_size"), (crop, "data.augment.crop")):
        if given is not None:
            _check_size(given, multiple, what, setting)


def _check_weights_arg(encoder_weights: Any) -> str | None:
    if encoder_weights is None:
        return None
    text = str(encoder_weights).strip()
    if text.lower() in _DOWNLOAD_NAMES or (not Path(text).expanduser().exists() and "/" not in text
                                           and "." not in text):
        raise ConfigError(
            f"model.net.encoder_weights: {text!r} is not a local file. spinenet downloads nothing: save the "
            "ImageNet weights once on a machine with internet (e.g. torch.save(torchvision.models.resnet34("
            "weights='DEFAULT').state_dict(), 'resnet34.pth')) and give that file's path, or null for random "
            "initialisation"
        )
    return text


def _load_encoder_weights(model: nn.Module, path: str, in_channels: int, what: str) -> None:
    """Load ``path`` into ``model.encoder`` (built with 3 input channels), then adapt the first conv.

    An ImageNet file has an RGB first convolution: it is loaded into the 3-channel encoder and, for one
    channel, smp's ``set_in_channels`` sums its filters. A file saved from a one-channel spinenet encoder
    does not fit the RGB encoder; it is loaded after the adaptation instead.
    """
    encoder = model.encoder
    try:
        load_local_weights(encoder, path, what=what, strict=True)
    except ConfigError as rgb_error:
        if in_channels == 3:
            raise
        encoder.set_in_channels(in_channels, pretrained=True)
        try:
            load_local_weights(encoder, path, what=what, strict=True)
        except ConfigError:
            raise rgb_error from None
        return
    encoder.set_in_channels(in_channels, pretrained=True)


def build_segmenter(name: str, num_classes: int, in_channels: int = 1, encoder: str | None = None,
                    encoder_weights: str | None = None, image_size: Sequence[int] | int | None = None,
                    crop_size: Sequence[int] | int | None = None, **kwargs: Any) -> nn.Module:
    """Build segmenter ``name`` returning logits for ``num_classes`` classes (background included).

    ``encoder``: one of :data:`SEGMENTER_ENCODERS` for the smp nets (default ``resnet34``); must be unset
    for ``unet_sustersic``. ``encoder_weights``: None (random) or a local weights file for the encoder.
    ``image_size`` (H, W): the input the data pipeline delivers, checked against :func:`required_multiple`;
    ``crop_size`` (H, W): the training patch when ``data.augment.crop`` is set, checked the same way.
    ``kwargs`` (None means the default): ``base_channels``, ``depth``, ``dropout``, ``batch_norm`` for
    ``unet_sustersic``; for the smp nets, options of smp's model class (e.g. ``decoder_channels``,
    ``encoder_depth``), except ``activation`` and ``aux_params`` (the nets return logits only).
    Every invalid choice raises :class:`ConfigError` naming what works.
    """
    key = _canonical_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError("model.net.num_classes: expected an integer >= 2 (background included), "
                          f"got {num_classes!r}")
    if in_channels not in (1, 3):
        raise ConfigError(f"model.net.in_channels: expected 1 (gray) or 3 (RGB), got {in_channels!r}")
    size = _image_size(image_size)
    crop = _image_size(crop_size)
    weights = _check_weights_arg(encoder_weights)

    if key == "unet_sustersic":
        if encoder is not None or weights is not None:
            raise ConfigError(
                "model.net: unet_sustersic has no pretrained encoder; set encoder and encoder_weights to "
                f"null, or use an smp net ({', '.join(_SMP_ARCHS)}) with one of "
                f"{', '.join(SEGMENTER_ENCODERS)}"
            )
        options = {k: v for k, v in kwargs.items() if v is not None}
        unknown = sorted(set(options) - set(_SUSTERSIC_KEYS))
        if unknown:
            raise ConfigError(f"model.net: unknown option(s) {unknown} for unet_sustersic; valid: "
                              f"{', '.join(_SUSTERSIC_KEYS)}")
        base, depth = int(options.get("base_channels", 8)), int(options.get("depth", 5))
        dropout = float(options.get("dropout", 0.2))
        if base < 1 or depth < 1:
            raise ConfigError(f"model.net: base_channels and depth must be >= 1, got {base} and {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError("model.net.dropout: expected a value in [0, 1) (the paper's grid: 0.1-0.5), "
                              f"got {dropout}")
        _check_sizes(size, crop, 2**depth, f"unet_sustersic with depth {depth} (2**depth)")
        return SustersicUNet(num_classes, in_channels, base_channels=base, depth=depth, dropout=dropout,
                             batch_norm=bool(options.get("batch_norm", True)))

    set_sustersic = sorted(k for k in _SUSTERSIC_KEYS if kwargs.get(k) is not None)
    if set_sustersic:
        raise ConfigError(f"model.net: {', '.join(set_sustersic)} apply only to unet_sustersic; set them to "
                          f"null for {key} (use model=smp)")
    # None means smp's default; Hydra hands over ListConfig/DictConfig where smp expects lists and dicts
    smp_kwargs = {k: OmegaConf.to_container(v) if isinstance(v, DictConfig | ListConfig) else v
                  for k, v in kwargs.items() if k not in _SUSTERSIC_KEYS and v is not None}
    # smp swallows unknown keyword arguments; a misspelt option must not silently do nothing
    unknown = sorted(set(smp_kwargs) - set(_smp_options(key)))
    if unknown:
        raise ConfigError(f"model.net: unknown option(s) {unknown} for {key}; "
                          f"valid: {', '.join(_smp_options(key))}")
    enc = _canonical_encoder(encoder if encoder is not None else "resnet34", key)
    if enc not in _encoders_for(key):
        raise ConfigError(
            f"model.net.encoder: {key} cannot use {enc} (DeepLabv3+ needs a dilated encoder and VGG "
            f"downsamples by max pooling); encoders that work with {key}: {', '.join(_encoders_for(key))}"
        )
    _check_sizes(size, crop, required_multiple(key, **smp_kwargs), f"{key} with {enc}")
    try:
        # built RGB, so an ImageNet file's first convolution fits before it is adapted to in_channels
        model = smp.create_model(_SMP_ARCHS[key], encoder_name=_SMP_ENCODERS[enc], encoder_weights=None,
                                 in_channels=3 if weights is not None else in_channels, classes=num_classes,
                                 **smp_kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"model.net: invalid option for {key} with {enc}: {exc}") from exc
    if weights is not None:
        _load_encoder_weights(model, weights, in_channels, what=f"model.net.encoder_weights ({key}, {enc})")
    return model
