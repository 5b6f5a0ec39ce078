"""Image classifiers by name: DiscNet (Šušteršič 2022), small LeNet/AlexNet/NiN/GoogLeNet, timm backbones.

The names are registered in :data:`~spinenet.models.registry.CLASSIFIERS`, one decorated builder each (at
the end of this module), with the smallest input each accepts; :func:`build_classifier` builds by name.

Every model is a :class:`Classifier`: ``forward(x) = head(backbone(x))`` returning **logits** (softmax is
applied by the cross-entropy loss during training and by the caller at inference). ``backbone`` maps the
image to a feature vector of ``num_features`` values (NiN: to a feature map, its head is convolutional);
``head`` maps it to class logits. :class:`spinenet.lit.finetune.TwoStageFinetuning` freezes ``backbone``
for the first epochs (transfer learning as in Šušteršič 2022 and Sayed 2025).

The timm backbones are the convolutional part only, pooled by global average pooling: the same as Keras
``include_top=False`` + ``GlobalAveragePooling2D`` that both papers built on. For VGG this drops timm's
``pre_logits`` (the 4096-wide fc6/fc7 as a 7×7 conv, ~120 M parameters): VGG's features are 512 wide.
Xception is timm's ``legacy_xception``, the port of the original (Keras) Xception that both papers used
(``xception41/65/71`` are the later, deeper "aligned" variants).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from spinenet.errors import ConfigError
from spinenet.models.pretrained import load_local_weights
from spinenet.models.registry import CLASSIFIERS

_HEAD_KEYS = ("hidden", "dropout")


def min_input_size(name: str) -> int:
    """Smallest input height/width (pixels) that ``name`` accepts (its registry entry's ``min_size``)."""
    return CLASSIFIERS.get(name).min_size


def __getattr__(name: str) -> Any:
    if name == "CLASSIFIER_NAMES":  # the registered names now, models registered later included
        return CLASSIFIERS.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Classifier(nn.Module):
    """``head(backbone(x))``; the split is what transfer learning freezes and unfreezes."""

    def __init__(self, backbone: nn.Module, head: nn.Module, num_features: int, name: str = "classifier"):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_features = int(num_features)
        self.arch = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()


def _flat_features(backbone: nn.Module, in_channels: int, image_size: tuple[int, int]) -> int:
    """Length of the backbone's output for one image (a dry run, no gradients)."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.zeros(1, in_channels, *image_size))
    backbone.train(was_training)
    return int(out.reshape(1, -1).shape[1])


def mlp_head(
    num_features: int, num_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0
) -> nn.Sequential:
    """Dense layers with ReLU, then one dropout, then the output layer (Sayed 2025: two dense + dropout 0.2).

    Sayed 2025 names "2 dense layers, 1 dropout layer with a dropout rate of 20%" but not their order; the
    dropout sits right before the output layer, the usual Keras transfer-learning top.
    """
    layers: list[nn.Module] = []
    width = num_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
        width = int(h)
    if dropout > 0:
        layers.append(nn.Dropout(float(dropout)))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class DiscNet(Classifier):
    """DiscNet as Šušteršič et al. 2022 (IEEE JBHI) list it, layer by layer (section III, classification):

    conv 16@7×7 ReLU → max-pool 3×3 stride 1 'same' → conv 32@3×3 ReLU → conv 64@4×4 ReLU → average pooling
    → flatten → dropout 0.4 → batch normalization → dense (softmax: applied by the loss / at inference).

    The paper was built in Keras, whose defaults fill in what it leaves out: convolutions are 'valid' (no
    padding) and ``AveragePooling2D()`` pools 2×2 with stride 2. The paper's parameter count pins this down:
    "342,691 (trainable params: 256,163 and non-trainable params: 86,528)". Keras counts a batch norm's
    moving mean and variance as non-trainable, so the batch norm has 86,528 / 2 = 43,264 = 64·26·26 inputs,
    which is exactly what a 64×64 input gives with valid convolutions and 2×2 average pooling:
    64 −7+1 → 58 (max-pool 'same' keeps 58) −3+1 → 56 −4+1 → 53, pooled ⌊53/2⌋ = 26. The trainable rest
    then fixes input channels and classes: convs (3·49+1)·16 + (16·9+1)·32 + (32·16+1)·64 = 39,840, batch
    norm γ, β 86,528, dense 43,264·3 + 3 = 129,795, total 256,163, i.e. a 3-channel (Keras RGB) input and the
    3 sagittal classes. ``DiscNet(num_classes=3, in_channels=3)`` reproduces both numbers; PyTorch lists
    the moving statistics as buffers (``running_mean``/``running_var``), not parameters. Single-channel
    input: 341,123 in total, 254,595 trainable (the first conv loses 7·7·16 = 784 weights per channel, and
    the 3-class head is kept). Other input sizes change the flatten width.
    """

    def __init__(
        self,
        num_classes: int = 3,
        in_channels: int = 1,
        image_size: tuple[int, int] = (64, 64),
        dropout: float = 0.4,
    ):
        backbone = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=7),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),  # 'same': -inf padding, as Keras
            nn.Conv2d(16, 32, kernel_size=3),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, kernel_size=4),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(kernel_size=2),  # Keras AveragePooling2D() default: 2×2, stride 2, 'valid'
            nn.Flatten(),
        )
        n = _flat_features(backbone, in_channels, image_size)
        head = nn.Sequential(nn.Dropout(dropout), nn.BatchNorm1d(n), nn.Linear(n, num_classes))
        super().__init__(backbone, head, n, "discnet")


class LeNet(Classifier):
    """LeNet-5 layout (conv 6@5×5, pool, conv 16@5×5, pool, dense 120, 84) with ReLU and max pooling.

    The first convolution pads by 2 so a 64×64 input keeps its size (LeNet-5 padded 28×28 digits to 32×32).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, image_size: tuple[int, int] = (64, 64)):
        backbone = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        n = _flat_features(backbone, in_channels, image_size)
        head = nn.Sequential(
            nn.Linear(n, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )
        super().__init__(backbone, head, n, "lenet")


class AlexNet(Classifier):
    """AlexNet's layout (5 conv with ReLU, 3 max-pools 3×3/2, 3 dense with dropout 0.5) sized for 64×64.

    The channels are torchvision's (64, 192, 384, 256, 256); the 11×11 stride-4 stem, made for 224×224,
    becomes 5×5 stride 1 so a 64×64 crop is not reduced to 15×15 at the first layer, and the dense layers
    are 1024 wide instead of 4096 (about 15 M parameters at 64×64 instead of 57 M).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: tuple[int, int] = (64, 64),
        width: int = 1024,
        dropout: float = 0.5,
    ):
        relu = nn.ReLU
        backbone = nn.Sequential(
            nn.Conv2d(in_channels, 64, 5, padding=2),
            relu(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            relu(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            relu(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            relu(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            relu(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Flatten(),
        )
        n = _flat_features(backbone, in_channels, image_size)
        head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(n, width),
            relu(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            relu(inplace=True),
            nn.Linear(width, num_classes),
        )
        super().__init__(backbone, head, n, "alexnet")


def _nin_block(cin: int, cout: int, kernel: int, padding: int, last_relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, padding=padding),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 1),
    ]
    if last_relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class NiN(Classifier):
    """Network in Network (Lin et al. 2014; d2l's ImageNet layout) sized for 64×64.

    Three mlpconv blocks (96, 256, 384 channels; each a k×k conv and two 1×1 convs) with 3×3/2 max pooling,
    then the head: dropout 0.5, an mlpconv block with one channel per class, global average pooling. The
    first block's 11×11 stride-4 conv becomes 5×5 stride 1 for 64×64 input, and the class block ends
    without ReLU so logits can be negative. ``backbone`` returns a feature map (the head is convolutional).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, image_size: tuple[int, int] = (64, 64)):
        backbone = nn.Sequential(
            _nin_block(in_channels, 96, 5, 2),
            nn.MaxPool2d(3, 2),
            _nin_block(96, 256, 5, 2),
            nn.MaxPool2d(3, 2),
            _nin_block(256, 384, 3, 1),
            nn.MaxPool2d(3, 2),
        )
        _flat_features(backbone, in_channels, image_size)  # fails early on a too small input
        head = nn.Sequential(
            nn.Dropout(0.5),
            _nin_block(384, num_classes, 3, 1, last_relu=False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        super().__init__(backbone, head, 384, "nin")


class SmallCNN(Classifier):
    """A small plain CNN: four blocks of conv 3×3 → batch norm → ReLU → max-pool 2×2 (16, 32, 64, 128
    kernels), global average pooling, dropout, dense. About 98 k parameters, whatever the input size.

    Not from the papers: the baseline a few hundred crops can train from scratch. DiscNet's dense layer sees
    every position of its last feature map (43 k features at 48×112), which lets it memorise a small training
    set; pooling over positions leaves this head 128 features.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: tuple[int, int] = (64, 64),
        widths: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.3,
    ):
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in widths:
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            cin = cout
        backbone = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        _flat_features(backbone, in_channels, image_size)  # fails early on a too small input
        head = nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, num_classes))
        super().__init__(backbone, head, cin, "smallcnn")


class GoogLeNet(Classifier):
    """torchvision's GoogLeNet (Inception v1) without auxiliary heads, first conv for ``in_channels``.

    Backbone: everything up to the global average pooling (1024 features); head: dropout 0.2 + dense.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, image_size: tuple[int, int] = (64, 64)):
        net = torchvision.models.googlenet(
            weights=None, num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=True
        )
        if in_channels != 3:
            old = net.conv1.conv
            net.conv1.conv = nn.Conv2d(
                in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
            )
        head = nn.Sequential(net.dropout, net.fc)
        net.dropout, net.fc = nn.Identity(), nn.Identity()
        super().__init__(net, head, 1024, "googlenet")


class _TimmLoadLog(logging.Handler):
    """Collects the missing keys that timm's ``load_pretrained`` reports only as a log message."""

    _LOGGER = "timm.models._builder"

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.missing: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Missing keys ("):
            self.missing += [
                k.strip() for k in msg[len("Missing keys (") : msg.index(")")].split(",") if k.strip()
            ]

    def __enter__(self) -> _TimmLoadLog:
        logger = logging.getLogger(self._LOGGER)
        self._old_level = logger.level
        logger.addHandler(self)
        logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger(self._LOGGER)
        logger.removeHandler(self)
        logger.setLevel(self._old_level)


class TimmClassifier(Classifier):
    """A timm backbone (conv part + global average pooling, no classifier) and a new head.

    ``name``: the spinenet model name; ``arch``: timm's architecture (default: ``name``).
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        in_channels: int = 1,
        pretrained_path: str | None = None,
        head: Mapping[str, Any] | None = None,
        arch: str | None = None,
        **timm_kwargs: Any,
    ):
        arch = arch or name  # timm's architecture, when it is not named as spinenet names the model
        kwargs: dict[str, Any] = dict(num_classes=0, global_pool="avg", in_chans=in_channels, **timm_kwargs)
        if pretrained_path is not None:
            # timm loads the file weights-only, drops the 1000-class classifier and, for in_chans != 3,
            # sums the RGB filters of the first conv (its usual in_chans adaptation); nothing is downloaded
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_path)))
        hint = f"(a state dict of timm.create_model({arch!r}) is expected)"
        try:
            with _TimmLoadLog() as load_log:
                backbone = timm.create_model(arch, **kwargs)
        except (RuntimeError, KeyError, ValueError, OSError, AssertionError) as exc:
            if pretrained_path is None:
                raise
            raise ConfigError(
                f"model.pretrained_path: {pretrained_path} does not fit timm's {arch} {hint}: {exc}"
            ) from exc
        # timm loads non-strictly once the classifier is dropped and only logs missing keys: a file for
        # another architecture would silently leave the backbone random, so missing keys are an error here
        missing = [k for k in load_log.missing if not k.startswith("pre_logits.")]
        if pretrained_path is not None and missing:
            raise ConfigError(
                f"model.pretrained_path: {pretrained_path} does not fit timm's {arch} {hint}: "
                f"{len(missing)} backbone tensors missing, first: {missing[:5]}"
            )
        if hasattr(backbone, "pre_logits") and arch.startswith("vgg"):
            backbone.pre_logits = nn.Identity()  # VGG: conv features only, as Keras include_top=False
        n = int(backbone.num_features)
        head_cfg = dict(head or {})
        super().__init__(
            backbone,
            mlp_head(n, num_classes, head_cfg.get("hidden", ()), head_cfg.get("dropout", 0.0)),
            n,
            name,
        )


def _check_pretrained_path(path: str | None, name: str) -> str | None:
    if path is None:
        return None
    p = Path(str(path)).expanduser()
    if str(path).strip().lower() in ("imagenet", "true", "default") or not p.is_file():
        raise ConfigError(
            f"model.pretrained_path for {name}: {str(path)!r} is not a local file. "
            "spinenet downloads nothing: save the weights once (e.g. torch.save(timm.create_model(arch, pretrained=True).state_dict(), "
            "'resnet50_in1k.pth') on a machine with internet) and give that file's path"
        )
    return str(p)


def _check_head(head: Mapping[str, Any] | None, name: str) -> dict[str, Any] | None:
    if head is None:
        return None
    head = dict(head)
    unknown = sorted(set(head) - set(_HEAD_KEYS))
    if unknown:
        raise ConfigError(f"model.head: unknown key(s) {unknown}; valid: {', '.join(_HEAD_KEYS)}")
    no_dense_head = CLASSIFIERS.get(name).extra["no_dense_head"]
    if no_dense_head:
        raise ConfigError(f"model.head: {no_dense_head}; a dense head is not supported for {name}")
    hidden = head.get("hidden", [])
    if isinstance(hidden, int) or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ConfigError(f"model.head.hidden: expected a list of positive widths, got {hidden!r}")
    dropout = float(head.get("dropout", 0.0))
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.head.dropout: expected a value in [0, 1), got {dropout}")
    return {"hidden": list(hidden), "dropout": dropout}


def _is_classifier_state(path: str) -> bool:
    """True for a state dict saved from a spinenet :class:`Classifier` (keys ``backbone.*``/``head.*``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable here: timm's loader reports it
        return False
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return isinstance(state, dict) and any(str(k).startswith("backbone.") for k in state)


def build_classifier(
    name: str,
    num_classes: int,
    in_channels: int = 1,
    image_size: Sequence[int] | int = (64, 64),
    pretrained_path: str | None = None,
    head: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Classifier:
    """Build classifier ``name`` (a name in :data:`~spinenet.models.registry.CLASSIFIERS`) returning logits.

    ``image_size`` (H, W) is the input the data pipeline delivers; it sizes the dense layers of the small
    nets and is checked against :func:`min_input_size`. ``pretrained_path``: a local weights file
    (timm models: a timm state dict, loaded by timm with first-conv adaptation; others: any state dict,
    loaded with :func:`~spinenet.models.pretrained.load_local_weights`). ``head``: ``{"hidden": [256, 128],
    "dropout": 0.2}`` replaces the model's head by new dense layers on the backbone's pooled features
    (Sayed 2025). A state dict saved from a spinenet classifier (keys ``backbone.*``) loads into any model;
    tensors whose shapes differ (another number of classes) keep their initialisation. ``kwargs`` go to
    the model's builder (timm: ``timm.create_model``, e.g. ``drop_rate``).

    The builder registered under ``name`` gets ``num_classes``, ``in_channels``, ``image_size`` and the
    options; ``pretrained_path`` and ``head`` only if it takes them (then it applies them itself),
    otherwise they are applied here to the :class:`Classifier` it returns.
    """
    entry = CLASSIFIERS.get(name)
    key = entry.name
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"model.num_classes: expected an integer >= 2, got {num_classes!r}")
    size = (
        (int(image_size), int(image_size))
        if isinstance(image_size, int)
        else tuple(int(s) for s in image_size)
    )
    if len(size) != 2:
        raise ConfigError(f"data.image_size: expected [height, width], got {list(size)}")
    need = entry.min_size
    if min(size) < need:
        raise ConfigError(
            f"model {key} needs inputs of at least {need}×{need} pixels but data.image_size is {list(size)}: "
            f"set data.image_size: [{max(need, size[0])}, {max(need, size[1])}] (crops are resized to it)"
        )
    path = _check_pretrained_path(pretrained_path, key)
    head_cfg = _check_head(head, key)
    if entry.options is not None:
        unknown = sorted(set(kwargs) - set(entry.options))
        if unknown:
            raise ConfigError(
                f"model: invalid option for {key}: unknown option(s) {unknown}; "
                f"valid: {', '.join(entry.options) or 'none'}"
            )
    given: dict[str, Any] = {}
    if entry.accepts("pretrained_path"):
        given["pretrained_path"] = path
    if entry.accepts("head"):
        given["head"] = head_cfg
    try:
        model = entry.builder(
            num_classes=num_classes, in_channels=in_channels, image_size=size, **given, **kwargs
        )
    except TypeError as exc:
        raise ConfigError(f"model: invalid option for {key}: {exc}") from exc
    if path is not None and "pretrained_path" not in given:
        load_local_weights(model, path, what=key)
    if head_cfg is not None and "head" not in given:
        model.head = mlp_head(model.num_features, num_classes, head_cfg["hidden"], head_cfg["dropout"])
    return model


# ---- the registered classifiers: one builder each ----------------------------------------------------
# min_size: the smallest square input (pixels) each model accepts: max(measured, total stride). "Measured"
# is the smallest size at which a forward and backward pass in train mode at batch 2 runs (PyTorch 2.14 /
# timm 1.0): discnet 13, lenet 12, alexnet 15, nin 15, googlenet 15, resnet18/34/50 1, vgg16/19 32,
# densenet121 29, inception_v3 75 (valid-padded stem), legacy_xception 7. Padded convolutions let several
# nets run on inputs smaller than their total stride (ResNet50 on 1×1), where the last stage sees padding
# instead of pixels; the total stride (32 for googlenet and the timm nets) is the floor there. Keras
# documents 32 for ResNet50/VGG/DenseNet, 75 for InceptionV3 and 71 for Xception, whose stem is
# valid-padded in Keras and in timm but whose later blocks pad, so timm's Xception works from 32 as well.
_Size = tuple[int, int]


@CLASSIFIERS.register("discnet", min_size=13)
def discnet(
    num_classes: int, in_channels: int = 1, image_size: _Size = (64, 64), dropout: float = 0.4
) -> Classifier:
    """DiscNet (Šušteršič 2022): 3 valid convolutions, average pooling, dropout, batch norm, dense."""
    return DiscNet(num_classes, in_channels, image_size, dropout=dropout)


@CLASSIFIERS.register("smallcnn", min_size=16)
def smallcnn(
    num_classes: int,
    in_channels: int = 1,
    image_size: _Size = (64, 64),
    widths: Sequence[int] = (16, 32, 64, 128),
    dropout: float = 0.3,
) -> Classifier:
    """A plain CNN: 4 blocks conv-BN-ReLU-pool, global average pooling, dense (~98 k parameters)."""
    return SmallCNN(num_classes, in_channels, image_size, widths=widths, dropout=dropout)


@CLASSIFIERS.register("lenet", min_size=12)
def lenet(num_classes: int, in_channels: int = 1, image_size: _Size = (64, 64)) -> Classifier:
    """LeNet-5 layout with ReLU and max pooling."""
    return LeNet(num_classes, in_channels, image_size)


@CLASSIFIERS.register("alexnet", min_size=15)
def alexnet(
    num_classes: int,
    in_channels: int = 1,
    image_size: _Size = (64, 64),
    width: int = 1024,
    dropout: float = 0.5,
) -> Classifier:
    """AlexNet's layout sized for 64×64 (5×5 stride-1 stem, 1024-wide dense layers)."""
    return AlexNet(num_classes, in_channels, image_size, width=width, dropout=dropout)


@CLASSIFIERS.register(
    "nin", min_size=15, no_dense_head="NiN's head is convolutional (an mlpconv block + global pooling)"
)
def nin(num_classes: int, in_channels: int = 1, image_size: _Size = (64, 64)) -> Classifier:
    """Network in Network: mlpconv blocks; its head is convolutional (an mlpconv block + global pooling)."""
    return NiN(num_classes, in_channels, image_size)


@CLASSIFIERS.register("googlenet", min_size=32)
def googlenet(num_classes: int, in_channels: int = 1, image_size: _Size = (64, 64)) -> Classifier:
    """torchvision's GoogLeNet (Inception v1) without auxiliary heads."""
    return GoogLeNet(num_classes, in_channels, image_size)


def _timm_classifier(
    name: str,
    arch: str,
    num_classes: int,
    in_channels: int,
    pretrained_path: str | None,
    head: Mapping[str, Any] | None,
    timm_kwargs: Mapping[str, Any],
) -> Classifier:
    """A :class:`TimmClassifier`; a weights file saved from a spinenet Classifier is loaded as it is."""
    own_format = pretrained_path is not None and _is_classifier_state(pretrained_path)
    try:
        model = TimmClassifier(
            name,
            num_classes,
            in_channels,
            pretrained_path=None if own_format else pretrained_path,
            head=head,
            arch=arch,
            **timm_kwargs,
        )
    except TypeError as exc:
        raise ConfigError(f"model: invalid option for {name} (passed to timm.create_model): {exc}") from exc
    if own_format:  # saved from a spinenet Classifier (e.g. trained on other spine data): keys fit as-is
        load_local_weights(model, pretrained_path, what=name)
    return model


# the timm nets: conv part + global average pooling; options go to timm.create_model (e.g. drop_rate)
_Head = Mapping[str, Any] | None


@CLASSIFIERS.register("resnet18", min_size=32)
def resnet18(num_classes: int, in_channels: int = 1, image_size: _Size = (64, 64),
             pretrained_path: str | None = None, head: _Head = None, **timm_kwargs: Any) -> Classifier:
    """ResNet-18 (timm)."""
    return _timm_classifier(
        "resnet18", "resnet18", num_classes, in_channels, pretrained_path, head, timm_kwargs
    )


@CLASSIFIERS.register("resnet34", min_size=32)
def resnet34(num_classes: int, in_channels: int = 1, image_size: _Size = (64, 64),
             pretrained_path: str | None = None, head: _Head = None, **timm_kwargs: Any) -> Classifier:
    """ResNet-34 (timm)."""
    return _timm_classifier(
        "resnet34", "resnet34", num_classes, in_channels, pretrained_path, head, timm_kwargs
    )


@CLASSIFIERS.register("resnet50", min_size=32)
def resnet50(num_classes: int, in_channels: int = 1, image_size: _Size = (64, 64),
             pretrained_path: str | None = None, head: _Head = None, **timm_kwargs: Any) -> Classifier:
    """ResNet-50 (timm)."""
    return _timm_classifier(
        "resnet50", "resnet50", num_classes, in_channels, pretrained_path, head, timm_kwargs
    )


@CLASSIFIERS.register("vgg16", min_size=32)
def vgg16(num_classes: int, in_channels: int = 1, image_size: _Size = (64, 64),
          pretrained_path: str | None = None, head: _Head = None, **timm_kwargs: Any) -> Classifier:
    """VGG-16 (timm), conv features only (512 wide), as Keras include_top=False."""
    return _timm_classifier("vgg16", "vgg16", num_classes, in_channels, pretrained_path, head, timm_kwargs)


@CLASSIFIERS.register("vgg19", min_size=32)
def vgg19(num_classes: int, in_channels: int = 1, image_size: _Size = (64, 64),
          pretrained_path: str | None = None, head: _Head = None, **timm_kwargs: Any) -> Classifier:
    """VGG-19 (timm), conv features only (512 wide), as Keras include_top=False."""
    return _timm_classifier("vgg19", "vgg19", num_classes, in_channels, pretrained_path, head, timm_kwargs)


@CLASSIFIERS.register("densenet121", min_size=32)
def densenet121(num_classes: int, in_channels: int = 1, image_size: _Size = (64, 64),
                pretrained_path: str | None = None, head: _Head = None, **timm_kwargs: Any) -> Classifier:
    """DenseNet-121 (timm)."""
    return _timm_classifier(
        "densenet121", "densenet121", num_classes, in_channels, pretrained_path, head, timm_kwargs
    )


@CLASSIFIERS.register("inception_v3", min_size=75, aliases=("inceptionv3",))
def inception_v3(num_classes: int, in_channels: int = 1, image_size: _Size = (64, 64),
                 pretrained_path: str | None = None, head: _Head = None, **timm_kwargs: Any) -> Classifier:
    """Inception v3 (timm); its valid-padded stem needs inputs of at least 75×75."""
    return _timm_classifier(
        "inception_v3", "inception_v3", num_classes, in_channels, pretrained_path, head, timm_kwargs
    )


@CLASSIFIERS.register("xception", min_size=32, aliases=("legacy_xception",))
def xception(num_classes: int, in_channels: int = 1, image_size: _Size = (64, 64),
             pretrained_path: str | None = None, head: _Head = None, **timm_kwargs: Any) -> Classifier:
    """Xception (timm's legacy_xception, the port of the original Keras Xception)."""
    return _timm_classifier(
        "xception", "legacy_xception", num_classes, in_channels, pretrained_path, head, timm_kwargs
    )


def count_parameters(model: nn.Module, trainable_only: bool = False, bn_statistics: bool = False) -> int:
    """Parameter count; ``bn_statistics=True`` adds batch-norm moving mean/variance, as Keras' total does."""
    n = sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
    if bn_statistics:
        n += sum(
            m.running_mean.numel() + m.running_var.numel()
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
        )
    return n


__all__ = [
    "CLASSIFIERS",
    "Classifier",
    "DiscNet",
    "LeNet",
    "AlexNet",
    "NiN",
    "GoogLeNet",
    "TimmClassifier",
    "build_classifier",
    "count_parameters",
    "min_input_size",
    "mlp_head",
]
