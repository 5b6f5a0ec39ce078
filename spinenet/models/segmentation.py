"""Segmenters by name: the U-Net of Šušteršič 2022 and the segmentation-models-pytorch nets of Sayed 2025.

Every model maps an image batch ``(B, in_channels, H, W)`` to **logits** ``(B, num_classes, H, W)``;
softmax is applied by the loss during training and by the caller at inference.

Names (registered in :data:`~spinenet.models.registry.SEGMENTERS`, one decorated builder each, at the end of
this module) and encoders (:data:`SEGMENTER_ENCODERS`, Sayed 2025 Table 4):

- ``unet_sustersic``: :class:`SustersicUNet`, no encoder choice (``base_channels``, ``depth``, ``dropout``,
  ``batch_norm``, ``deep_supervision``).
- ``unet``, ``linknet``, ``fpn``, ``pspnet``, ``deeplabv3plus``: ``smp.create_model`` with one of
  ``resnet34``, ``resnet50``, ``resnext50_32x4d`` (alias ``resnext50``) and ``vgg16`` (smp's ``vgg16``,
  without batch norm, the same as the Keras VGG16 that Sayed's ``segmentation_models`` used). DeepLabv3+
  needs a dilated encoder, which VGG (max-pool downsampling) cannot be; Sayed 2025 ran it with ResNet50 only.

Input sizes (:func:`required_multiple`, the registry entry's ``multiple``): smp checks at run time that H and W are multiples of the encoder's
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from spinenet.errors import ConfigError
from spinenet.models.pretrained import load_local_weights
from spinenet.models.registry import SEGMENTERS, normalize_name

__all__ = [
    "SEGMENTERS",
    "SEGMENTER_ENCODERS",
    "SustersicUNet",
    "build_segmenter",
    "required_multiple",
    "valid_combinations",
]

# spinenet encoder name -> smp encoder name
_SMP_ENCODERS: dict[str, str] = {
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnext50_32x4d": "resnext50_32x4d",
    "vgg16": "vgg16",  # smp also has vgg16_bn; Keras' VGG16 (Sayed 2025) has no batch norm
}
SEGMENTER_ENCODERS: tuple[str, ...] = tuple(_SMP_ENCODERS)

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


def __getattr__(name: str) -> Any:
    if name == "SEGMENTER_NAMES":  # the registered names now, models registered later included
        return SEGMENTERS.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
                 dropout: float = 0.2, batch_norm: bool = True, deep_supervision: float = 0.0):
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
        # deep supervision: class logits from the two decoder levels before the last (1/4 and 1/2 size), whose
        # loss the training step adds with this weight; absent (and no checkpoint key) when 0
        self.deep_supervision = float(deep_supervision)
        self.aux_logits: list[torch.Tensor] = []
        if self.deep_supervision > 0:
            aux_widths = list(reversed(widths[:-1]))[-3:-1]
            self.aux_heads = nn.ModuleList(nn.Conv2d(w, self.num_classes, kernel_size=1) for w in aux_widths)

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
        decoded = []
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
            decoded.append(x)
        if self.deep_supervision > 0 and self.training:
            self.aux_logits = [head(f) for head, f in zip(self.aux_heads, decoded[-3:-1], strict=True)]
        return self.head(x)


def _canonical_encoder(encoder: str, name: str, encoders: Sequence[str], note: str) -> str:
    key = normalize_name(encoder)
    key = _ENCODER_ALIASES.get(key, key)
    known = {e for entry in SEGMENTERS.entries() for e in (entry.extra["encoders"] or ())}
    if key not in known:
        raise ConfigError(f"model.net.encoder: unknown encoder {encoder!r} for {name}; choose one of "
                          f"{', '.join(encoders)} (aliases: {', '.join(sorted(_ENCODER_ALIASES))})")
    if key not in encoders:
        raise ConfigError(f"model.net.encoder: {name} cannot use {key}{f' ({note})' if note else ''}; "
                          f"encoders that work with {name}: {', '.join(encoders)}")
    return key


def valid_combinations() -> list[tuple[str, str | None]]:
    """Every registered (name, encoder) pair that :func:`build_segmenter` builds (encoder None: no choice)."""
    return [(e.name, enc) for e in SEGMENTERS.entries() for enc in (e.extra["encoders"] or [None])]


def required_multiple(name: str, **kwargs: Any) -> int:
    """The number that input height and width must be a multiple of for segmenter ``name``.

    ``kwargs`` are the model options that change it: ``depth`` (``unet_sustersic``, default 5),
    ``encoder_depth`` (smp, default 5; PSPNet 3) and ``encoder_output_stride`` (DeepLabv3+, default 16).
    Unset (None) values mean the default. The rule is the registry entry's ``multiple``.
    """
    return SEGMENTERS.get(name).required_multiple(kwargs)


def _smp_signature(arch: str) -> dict[str, Any]:
    """Options of smp's model class that spinenet passes through (logits only: no activation, no aux head)
    and their defaults: the ``options`` and ``defaults`` of the net's registry entry."""
    params = inspect.signature(smp.MODEL_ARCHITECTURES_MAPPING[arch]).parameters
    fixed = {"encoder_name", "encoder_weights", "in_channels", "classes", "activation", "aux_params",
             "kwargs"}
    passed = [p for p in params.values() if p.name not in fixed]
    return {"options": tuple(p.name for p in passed),
            "defaults": {p.name: p.default for p in passed if p.default is not inspect.Parameter.empty}}


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

    ``name``: a name in :data:`~spinenet.models.registry.SEGMENTERS`. ``encoder``: one of the net's
    encoders (:data:`SEGMENTER_ENCODERS` for the smp nets, default ``resnet34``); must be unset for nets
    without an encoder choice (``unet_sustersic``). ``encoder_weights``: None (random) or a local weights
    file for the encoder. ``image_size`` (H, W): the input the data pipeline delivers, checked against
    :func:`required_multiple`; ``crop_size`` (H, W): the training patch when ``data.augment.crop`` is set,
    checked the same way. ``kwargs`` (None means the default): the net's options, e.g. ``base_channels``,
    ``depth``, ``dropout``, ``batch_norm`` for ``unet_sustersic``; for the smp nets, options of smp's model
    class (e.g. ``decoder_channels``, ``encoder_depth``), except ``activation`` and ``aux_params`` (the nets
    return logits only). Every invalid choice raises :class:`ConfigError` naming what works.

    The builder registered under ``name`` gets ``num_classes``, ``in_channels``, the set options and, for
    nets with an encoder choice, ``encoder`` and ``encoder_weights``.
    """
    entry = SEGMENTERS.get(name)
    key = entry.name
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError("model.net.num_classes: expected an integer >= 2 (background included), "
                          f"got {num_classes!r}")
    if in_channels not in (1, 3):
        raise ConfigError(f"model.net.in_channels: expected 1 (gray) or 3 (RGB), got {in_channels!r}")
    size = _image_size(image_size)
    crop = _image_size(crop_size)
    weights = _check_weights_arg(encoder_weights)
    encoders = entry.extra["encoders"]
    if encoders is None and (encoder is not None or weights is not None):
        with_encoder = [e.name for e in SEGMENTERS.entries() if e.extra["encoders"]]
        raise ConfigError(
            f"model.net: {key} has no pretrained encoder; set encoder and encoder_weights to null, or use a "
            f"net with an encoder ({', '.join(with_encoder)}) with one of {', '.join(SEGMENTER_ENCODERS)}"
        )

    # None means the default; Hydra hands over ListConfig/DictConfig where builders expect lists and dicts
    options = {k: OmegaConf.to_container(v) if isinstance(v, DictConfig | ListConfig) else v
               for k, v in kwargs.items() if v is not None}
    # smp swallows unknown keyword arguments; a misspelt option must not silently do nothing
    unknown = sorted(set(options) - set(entry.options)) if entry.options is not None else []
    if unknown:
        message = f"model.net: unknown option(s) {unknown} for {key}; valid: {', '.join(entry.options)}"
        # an option of another net: most likely the config group of that net (model=unet_sustersic)
        owners = [e.name for e in SEGMENTERS.entries() if e.options and set(unknown) <= set(e.options)]
        if owners:
            message += (f"; {', '.join(unknown)} apply only to {', '.join(owners)}: set them to null "
                        f"for {key}")
        raise ConfigError(message)

    given: dict[str, Any] = {}
    what = key
    if encoders is not None:
        enc = _canonical_encoder(encoder if encoder is not None else encoders[0], key, encoders,
                                 entry.extra["encoder_note"])
        given = {"encoder": enc, "encoder_weights": weights}
        what = f"{key} with {enc}"
    note = entry.extra["size_note"]
    if note:
        what = f"{what} {note.format_map(entry.with_defaults(options))}"
    _check_sizes(size, crop, entry.required_multiple(options), what)
    try:
        return entry.builder(num_classes=num_classes, in_channels=in_channels, **given, **options)
    except TypeError as exc:
        raise ConfigError(f"model.net: invalid option for {what}: {exc}") from exc


# ---- the registered segmenters: one builder each -----------------------------------------------------
@SEGMENTERS.register(
    "unet_sustersic",
    aliases=("sustersic", "sustersic_unet", "unet_sustersic2022"),
    multiple=lambda options: 2 ** int(options["depth"]),  # every pooling halves the map
    size_note="with depth {depth} (2**depth)",
)
def unet_sustersic(num_classes: int, in_channels: int = 1, base_channels: int = 8, depth: int = 5,
                   dropout: float = 0.2, batch_norm: bool = True, deep_supervision: float = 0.0) -> nn.Module:
    """The U-Net of Šušteršič 2022: base_channels·2**level kernels, transposed convolutions (no encoder)."""
    base, depth, dropout = int(base_channels), int(depth), float(dropout)
    if base < 1 or depth < 1:
        raise ConfigError(f"model.net: base_channels and depth must be >= 1, got {base} and {depth}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError("model.net.dropout: expected a value in [0, 1) (the paper's grid: 0.1-0.5), "
                          f"got {dropout}")
    weight = float(deep_supervision)
    if weight < 0 or (weight > 0 and depth < 3):
        raise ConfigError("model.net.deep_supervision: the weight of the two coarser decoder levels' loss, >= 0 "
                          f"(0: off), with depth >= 3; got {deep_supervision} at depth {depth}")
    return SustersicUNet(num_classes, in_channels, base_channels=base, depth=depth, dropout=dropout,
                         batch_norm=bool(batch_norm), deep_supervision=weight)


def _smp_model(arch: str, num_classes: int, in_channels: int, encoder: str, encoder_weights: str | None,
               options: dict[str, Any]) -> nn.Module:
    """``smp.create_model(arch)`` with a spinenet encoder, weights from a local file only."""
    try:
        # built RGB, so an ImageNet file's first convolution fits before it is adapted to in_channels
        model = smp.create_model(arch, encoder_name=_SMP_ENCODERS[encoder], encoder_weights=None,
                                 in_channels=3 if encoder_weights is not None else in_channels,
                                 classes=num_classes, **options)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"model.net: invalid option for {arch} with {encoder}: {exc}") from exc
    if encoder_weights is not None:
        _load_encoder_weights(model, encoder_weights, in_channels,
                              what=f"model.net.encoder_weights ({arch}, {encoder})")
    return model


def _smp_stride(options: Mapping[str, Any]) -> int:
    """smp's size rule: 2**encoder_depth (the encoder's output stride; smp's default depth: the entry's)."""
    return 2 ** int(options["encoder_depth"])


@SEGMENTERS.register("unet", aliases=("u_net",), encoders=SEGMENTER_ENCODERS, **_smp_signature("unet"))
def unet(num_classes: int, in_channels: int, encoder: str, encoder_weights: str | None = None,
         **options: Any) -> nn.Module:
    """U-Net (smp); its decoder resizes each upsampled map to its skip's size, so any input size works."""
    return _smp_model("unet", num_classes, in_channels, encoder, encoder_weights, options)


@SEGMENTERS.register("linknet", aliases=("link_net",), encoders=SEGMENTER_ENCODERS, multiple=_smp_stride,
                     **_smp_signature("linknet"))
def linknet(num_classes: int, in_channels: int, encoder: str, encoder_weights: str | None = None,
            **options: Any) -> nn.Module:
    """LinkNet (smp): decoder blocks added to the encoder maps; inputs a multiple of 2**encoder_depth."""
    return _smp_model("linknet", num_classes, in_channels, encoder, encoder_weights, options)


@SEGMENTERS.register("fpn", encoders=SEGMENTER_ENCODERS, multiple=_smp_stride, **_smp_signature("fpn"))
def fpn(num_classes: int, in_channels: int, encoder: str, encoder_weights: str | None = None,
        **options: Any) -> nn.Module:
    """Feature Pyramid Network (smp); inputs a multiple of 2**encoder_depth."""
    return _smp_model("fpn", num_classes, in_channels, encoder, encoder_weights, options)


# smp's PSPNet uses 3 encoder stages by default, then pyramid pooling with adaptive bins: multiple 8
@SEGMENTERS.register("pspnet", aliases=("psp_net", "psp"), encoders=SEGMENTER_ENCODERS,
                     multiple=_smp_stride, **_smp_signature("pspnet"))
def pspnet(num_classes: int, in_channels: int, encoder: str, encoder_weights: str | None = None,
           **options: Any) -> nn.Module:
    """PSPNet (smp): pyramid pooling on the third encoder stage; inputs a multiple of 2**encoder_depth."""
    return _smp_model("pspnet", num_classes, in_channels, encoder, encoder_weights, options)


@SEGMENTERS.register(
    "deeplabv3plus",
    aliases=("deeplabv3+", "deeplab_v3plus", "deeplabv3_plus", "deeplab_v3_plus", "deeplab"),
    encoders=tuple(e for e in SEGMENTER_ENCODERS if e not in _NOT_DILATABLE),
    encoder_note="DeepLabv3+ needs a dilated encoder and VGG downsamples by max pooling",
    multiple=lambda options: min(_smp_stride(options), int(options["encoder_output_stride"])),
    **_smp_signature("deeplabv3plus"),
)
def deeplabv3plus(num_classes: int, in_channels: int, encoder: str, encoder_weights: str | None = None,
                  **options: Any) -> nn.Module:
    """DeepLabv3+ (smp): a dilated encoder (output stride 16) and atrous spatial pyramid pooling."""
    return _smp_model("deeplabv3plus", num_classes, in_channels, encoder, encoder_weights, options)
