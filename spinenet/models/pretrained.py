"""Pretrained weights from a local file the user names. Nothing is ever downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from spinenet.errors import ConfigError


def load_local_weights(module: nn.Module, path: str | Path, *, what: str = "model", strict: bool = False) -> nn.Module:
    """Load a state dict saved with ``torch.save`` into ``module``.

    Loaded with ``weights_only=True`` so a file from elsewhere cannot run code. Common wrappers
    (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped. Keys whose shapes do not fit (e.g. a
    classifier head with 1000 ImageNet classes) are skipped; if *no* key fits, that is an error.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"pretrained weights for {what}: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, foreign formats
        raise ConfigError(f"pretrained weights for {what}: {path} is not a readable weights-only state dict ({exc})") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"pretrained weights for {what}: {path} holds {type(state).__name__}, not a state dict")
    own = module.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not fitting or (strict and len(fitting) != len(own)):
        missing = sorted(set(own) - set(fitting))[:5]
        raise ConfigError(
            f"pretrained weights for {what}: {path} does not fit ({len(fitting)} of {len(own)} tensors match; "
            f"first missing: {missing})"
        )
    module.load_state_dict(fitting, strict=False)
    return module
