"""A run folder's recorded overrides are read as text: an override with an interpolation in it (one folder per
fold: ``root=/data/pseudo_${data.split.fold}``) must not be resolved outside its run's config."""

from __future__ import annotations

import pytest

from spinenet.errors import DataError
from spinenet.sweeps import collect_trials
from spinenet.utils.run_folder import run_overrides

PER_FOLD = '+data.extra_train=[{root:"/data/pseudo_${data.split.fold}",manifest:manifest.csv}]'


def _trial(sweep, num: int, overrides_yaml: str):
    trial = sweep / str(num)
    (trial / ".hydra").mkdir(parents=True)
    (trial / ".hydra" / "overrides.yaml").write_text(overrides_yaml)
    return trial


def test_overrides_with_an_interpolation_are_read_as_typed(tmp_path):
    # what Hydra writes for `spinenet train -m ... data.split.fold=0,1 '+data.extra_train=[...${data.split.fold}...]'`
    trial = _trial(tmp_path / "sweep", 0, f"- data.split.fold=0\n- {PER_FOLD}\n")
    assert run_overrides(trial) == ["data.split.fold=0", PER_FOLD]
    # a sweep's summary (and `spinenet report`, `spinenet ensemble --sweep`) lists it as text
    trials = collect_trials(tmp_path / "sweep")
    assert trials.loc[0, "override:data.extra_train"] == PER_FOLD.split("=", 1)[1]
    assert trials.loc[0, "override:data.split.fold"] == "0"


def test_a_folder_without_overrides_and_a_bad_overrides_file(tmp_path):
    assert run_overrides(tmp_path) is None
    _trial(tmp_path, 1, "")
    assert run_overrides(tmp_path / "1") == []
    _trial(tmp_path, 2, "model: {net: unet}\n")
    with pytest.raises(DataError, match=r"2/.hydra/overrides.yaml: not a YAML list of overrides"):
        run_overrides(tmp_path / "2")
    (_trial(tmp_path, 3, "") / ".hydra" / "overrides.yaml").write_bytes(b"- a=1\n- \xff\xfe\n")
    with pytest.raises(DataError, match="not a YAML list of overrides"):
        run_overrides(tmp_path / "3")
