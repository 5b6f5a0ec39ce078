"""spinenet data grade-crops: roi's sagittal crops joined with per-disc gradings by disc number."""

from __future__ import annotations

import pandas as pd
import pytest

from spinenet.cli import main as cli_main
from spinenet.data.gradings import grade_crops
from spinenet.errors import ConfigError, DataError


def _crops(folder, slices):
    """A crop manifest as spinenet roi writes it: ``slices`` maps patient -> level names found (bottom-up)."""
    folder.mkdir()
    rows = [
        {"patient_id": pid, "image": f"images/{pid}_{lvl}.png", "source_image": f"{pid}_t2.png", "level": lvl}
        for pid, levels in slices.items() for lvl in levels
    ]
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder


def _gradings(path, discs):
    """SPIDER's layout: Patient, IVD label (1 = L5-S1), findings; ``discs`` maps patient -> disc count."""
    rows = [
        {"Patient": pid, "IVD label": k, "Disc bulging": int(k % 2 == 0), "Pfirrman grade": 2 + k % 3}
        for pid, n in discs.items() for k in range(1, n + 1)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_crops_get_the_grading_of_their_disc_number(tmp_path):
    crops = _crops(tmp_path / "crops", {
        "1": ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1"],  # 6 found, 6 graded: kept
        "2": ["L5-S1", "L4-L5", "L3-L4"],  # 3 found, 6 graded: a missed disc renames the rest, left out
        "3": ["L5-S1", "L4-L5"],  # not graded
        "4": ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1"],  # in the excluded manifest
        "5": ["L5-S1", "L4-L5", "L3-L4"],  # 3 found, 3 graded, but disc 3 is not graded (1, 2, 4 are)
    })
    grades = _gradings(tmp_path / "grades.csv", {"1": 6, "2": 6, "4": 6})
    with_gap = pd.read_csv(grades, dtype={"Patient": str})
    gap = pd.DataFrame({"Patient": ["5"] * 3, "IVD label": [1, 2, 4], "Disc bulging": 0, "Pfirrman grade": 3})
    pd.concat([with_gap, gap]).to_csv(grades, index=False)
    test_set = tmp_path / "test_manifest.csv"
    pd.DataFrame({"patient_id": ["4"], "image": ["x.png"]}).to_csv(test_set, index=False)
    out, returned, skipped = grade_crops(crops, grades, exclude=[test_set])
    graded = pd.read_csv(out, dtype={"patient_id": str})
    assert len(returned) == len(graded) == 6
    assert out == crops / "graded.csv" and set(graded.patient_id) == {"1"}
    by_level = graded.set_index("level")
    assert by_level.loc["L5-S1", "ivd_label"] == 1 and by_level.loc["T12-L1", "ivd_label"] == 6
    assert by_level.loc["L4-L5", "disc_bulging"] == 1 and by_level.loc["L3-L4", "disc_bulging"] == 0
    assert by_level.loc["L1-L2", "pfirrmann"] == 2 + 5 % 3  # SPIDER's "Pfirrman grade" -> pfirrmann
    assert dict(zip(skipped.patient_id, skipped.kind, strict=True)) == {
        "2": "disc count differs", "3": "not graded", "4": "excluded", "5": "disc count differs"}
    assert "3 discs found, graded discs [1, 2, 3, 4, 5, 6]" in skipped.set_index("patient_id").loc["2", "reason"]
    assert "graded discs [1, 2, 4]" in skipped.set_index("patient_id").loc["5", "reason"]
    assert len(pd.read_csv(crops / "graded_skipped.csv")) == 4
    # nothing the user made is overwritten
    with pytest.raises(ConfigError, match="exists.*--overwrite"):
        grade_crops(crops, grades)
    with pytest.raises(ConfigError, match="not manifest.csv"):
        grade_crops(crops, grades, out_name="manifest.csv", overwrite=True)


def test_bad_gradings_are_named(tmp_path):
    crops = _crops(tmp_path / "crops", {"1": ["L5-S1"]})
    with pytest.raises(DataError, match="gradings file not found"):
        grade_crops(crops, tmp_path / "none.csv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"Patient": ["1"], "Disc": [1]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"bad.csv: no column \['IVD label'\].*--disc-col"):
        grade_crops(crops, bad)
    pd.DataFrame({"Patient": ["1", "1"], "IVD label": [1, 1], "Disc bulging": [0, 1]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="graded twice"):
        grade_crops(crops, bad)
    with pytest.raises(DataError, match="run spinenet roi"):
        grade_crops(tmp_path / "nothing", bad)


def test_cli_grades_and_reports_what_it_left_out(tmp_path, capsys):
    crops = _crops(tmp_path / "crops", {"1": ["L5-S1", "L4-L5"], "2": ["L5-S1"]})
    grades = _gradings(tmp_path / "grades.csv", {"1": 2, "2": 2})
    assert cli_main(["data", "grade-crops", str(crops), "--gradings", str(grades), "--out", "more.csv"]) == 0
    out = capsys.readouterr().out
    assert "2 crops of 1 patients" in out and "1 disc count differs" in out
    assert (crops / "more.csv").is_file() and (crops / "more_skipped.csv").is_file()
    assert cli_main(["data", "grade-crops", str(crops), "--gradings", str(grades), "--out", "more.csv"]) == 2
    assert "exists" in capsys.readouterr().err
