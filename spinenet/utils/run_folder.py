"""What a Hydra run folder records about how it was started (light: no Hydra, no torch, so that
``spinenet report`` and the sweep summary share it)."""

from __future__ import annotations

from pathlib import Path

import yaml

from spinenet.errors import DataError

TRIAL_FILE = "trial.json"  # a trial's status (ok/failed, error, elapsed), written by spinenet.sweeps


def run_overrides(run_dir: str | Path) -> list[str] | None:
    """The command-line overrides of a run or sweep trial (``.hydra/overrides.yaml``) as the user typed them,
    or None when the folder has none. Read as plain YAML, not as an OmegaConf list: an override such as
    ``root=/data/fold_${data.split.fold}`` is text here, and resolving it outside its run's config fails."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        items = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a YAML list of overrides ({type(exc).__name__})") from None
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(o, str) for o in items):
        raise DataError(f"{path}: not a YAML list of overrides")
    return items


def override_columns(run_dir: str | Path) -> dict[str, str]:
    """The run's overrides as table columns: ``override:<key>`` (``+``/``~`` dropped) -> the value typed."""
    columns = {}
    for item in run_overrides(run_dir) or []:
        key, _, value = item.partition("=")
        columns[f"override:{key.lstrip('+~')}"] = value
    return columns
