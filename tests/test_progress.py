"""Progress bars: drawn on a terminal only, never with --no-progress."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from spinenet.cli.data_import import main_import
from spinenet.cli.roi import main as roi_main
from spinenet.data.manifest import DatasetSpec, check_dataset
from spinenet.ensemble.search import exhaustive_search
from spinenet.utils.progress import progress, progress_bar
from tests.test_importers import SALT, write_dicom_series


def _tty(monkeypatch: pytest.MonkeyPatch, value: bool) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: value)


def test_helper_gives_the_plain_iterable_unless_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [1, 2, 3]
    _tty(monkeypatch, False)
    assert progress(items) is items and progress(items, enabled=None) is items
    assert not isinstance(progress_bar(3), tqdm)
    _tty(monkeypatch, True)
    assert progress(items, enabled=False) is items  # --no-progress wins on a terminal
    bar = progress(items, desc="x")
    assert isinstance(bar, tqdm) and list(bar) == items
    _tty(monkeypatch, False)
    forced = progress(items, enabled=True)
    assert isinstance(forced, tqdm) and list(forced) == items
    with progress_bar(3, enabled=True) as b:
        assert isinstance(b, tqdm)


def _bar_shown(capsys: pytest.CaptureFixture[str], desc: str) -> bool:
    return desc in capsys.readouterr().err


def test_import_draws_a_bar_on_a_terminal_unless_no_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_dicom_series(tmp_path / "dcm")
    _tty(monkeypatch, True)
    assert main_import([str(tmp_path / "dcm"), "--out", str(tmp_path / "a"), "--salt", SALT]) == 0
    assert _bar_shown(capsys, "importing DICOM")
    args = [str(tmp_path / "dcm"), "--out", str(tmp_path / "b"), "--salt", SALT, "--no-progress"]
    assert main_import(args) == 0
    assert not _bar_shown(capsys, "importing DICOM")


def test_roi_check_and_search_bars(
    tiny_phantom: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _tty(monkeypatch, True)
    root = str(tiny_phantom["sagittal"])
    args = ["--data", "phantom_sagittal", "--root", root, "--size", "16"]
    assert roi_main([*args, "--out", str(tmp_path / "a")]) == 0
    assert _bar_shown(capsys, "cropping discs")
    assert roi_main([*args, "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert not _bar_shown(capsys, "cropping discs")

    spec = DatasetSpec(root=Path(root), mask_col="mask", mask_values=[0, 85, 170, 255])
    assert check_dataset(spec, deep=True).ok
    assert _bar_shown(capsys, "decoding images")
    assert check_dataset(spec, deep=True, progress=False).ok
    assert not _bar_shown(capsys, "decoding")

    P, y = torch.rand(3, 20, 2).softmax(-1), torch.randint(0, 2, (20,))
    exhaustive_search(P, y, "accuracy", step=0.5, device="cpu", progress=None)
    assert _bar_shown(capsys, "weight vectors")
    exhaustive_search(P, y, "accuracy", step=0.5, device="cpu")  # library default: no bar
    assert not _bar_shown(capsys, "weight vectors")
