"""Where the Hydra configs live, and how to compose them outside the CLI (tests, notebooks).

The configs are the repo's top-level ``conf/`` (groups) and ``experiments/`` (the ``experiment`` group).
A wheel ships them inside the package as ``spinenet/_conf``; an editable install or a source checkout
uses the repo folders. Either way they work from any working directory.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, read_write

from spinenet.errors import ConfigError

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The primary config folder (holds ``train.yaml``)."""
    for candidate in (_PACKAGE_DIR / "_conf", _PACKAGE_DIR.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise ConfigError(f"spinenet's configs were not found next to {_PACKAGE_DIR}; reinstall the package")


def run_uid() -> str:
    """A short id that makes run folders unique, fixed for this process and inherited by its children.

    Kept in the environment so DDP workers and multirun jobs started from this process agree on it.
    """
    return os.environ.setdefault("SPINENET_RUN_UID", secrets.token_hex(3))


def spinenet_root() -> str:
    """``paths.root_dir``: ``SPINENET_ROOT``, else the folder the command was started in.

    A resolver of our own rather than ``${hydra:runtime.cwd}``: Hydra resolves the sweep folder before its
    runtime exists, and sweep trials in other processes must agree on the folder (the CLI puts the launch
    folder in the environment, where they inherit it).
    """
    return os.environ.get("SPINENET_ROOT") or os.environ.get("SPINENET_LAUNCH_DIR") or os.getcwd()


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("spinenet_root"):
        OmegaConf.register_new_resolver("spinenet_root", spinenet_root)
    if not OmegaConf.has_resolver("spinenet_uid"):
        OmegaConf.register_new_resolver("spinenet_uid", run_uid)
    if not OmegaConf.has_resolver("sweep_group"):
        from spinenet.sweeps import sweep_group

        OmegaConf.register_new_resolver("sweep_group", sweep_group)
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda x: len(x))
    if not OmegaConf.has_resolver("task_outputs"):
        # model.tasks -> the net's outputs: one per class, K - 1 for an ordinal task (CORN)
        OmegaConf.register_new_resolver(
            "task_outputs",
            lambda tasks: sum(len(t["classes"]) - (t.get("kind") == "ordinal") for t in tasks),
        )


register_resolvers()


def compose(config_name: str = "train", overrides: Sequence[str] = (), output_dir: str | Path | None = None,
            extra_config_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """Compose a config as the CLI would, without running a Hydra app (tests call ``train(cfg)`` on it).

    ``output_dir`` sets ``paths.output_dir`` (otherwise it needs Hydra's runtime).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    overrides = list(overrides)
    if extra_config_dirs:
        paths = ",".join(f"file://{Path(p).resolve()}" for p in extra_config_dirs)
        overrides.append(f"hydra.searchpath=[{paths}]")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with read_write(cfg.hydra):  # what hydra.main would set at run time
        cfg.hydra.runtime.cwd = os.getcwd()
        cfg.hydra.runtime.output_dir = str(Path(output_dir).resolve()) if output_dir else os.getcwd()
    HydraConfig.instance().set_config(cfg)  # lets ${hydra:...} interpolations resolve
    if output_dir is not None:
        with read_write(cfg.paths):
            cfg.paths.output_dir = str(Path(output_dir).resolve())
    return cfg


def to_plain_dict(cfg: DictConfig, drop_hydra: bool = True) -> dict:
    """Resolved config as a plain dict (for W&B, checkpoints and JSON: no OmegaConf objects)."""
    if drop_hydra and "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
