"""Models: segmenters and classifiers, each registered by name in :mod:`spinenet.models.registry`."""

from __future__ import annotations

from spinenet.errors import ConfigError
from spinenet.models.registry import CLASSIFIERS, SEGMENTERS

__all__ = ["list_models"]

_KINDS = {"segmenter": SEGMENTERS, "classifier": CLASSIFIERS}


def list_models(kind: str | None = None, pattern: str = "") -> list[str]:
    """Registered model names of ``kind`` (``"segmenter"``, ``"classifier"``; None: both), registration order.

    The built-in models register when :mod:`spinenet.models.segmentation` and
    :mod:`spinenet.models.classification` are imported (done here, not in the registry: it stays below them).
    """
    import spinenet.models.classification  # noqa: F401  (registers the classifiers; lazy: start-up, torch/timm)
    import spinenet.models.segmentation  # noqa: F401  (registers the segmenters; lazy: start-up, torch/smp)

    if kind is not None and kind not in _KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {', '.join(_KINDS)}")
    kinds = [kind] if kind else list(_KINDS)
    return list(dict.fromkeys(n for k in kinds for n in _KINDS[k].names(pattern)))
