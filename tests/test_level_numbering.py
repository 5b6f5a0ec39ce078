"""Disc numbers by position (spinenet.roi.levels.number_discs), grade-crops' position rule, and the level check."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from PIL import Image

from spinenet.cli import main as cli_main
from spinenet.data.gradings import grade_crops
from spinenet.data.level_check import check_levels, locate_known_discs
from spinenet.roi.geometry import Box
from spinenet.roi.levels import number_discs

SPACING = 50


def _disc(cy: float, cx: float = 100.0, area: float = 300.0) -> Box:
    return Box(int(cx - 20), int(cy - 6), int(cx + 20), int(cy + 6), area, cx, cy)


def _spine(rows: list[float]) -> list[Box]:
    """Discs at these centre rows, on a gently curved column (lordosis), given top to bottom."""
    return [_disc(y, 100 + 0.0004 * (y - 150) ** 2) for y in rows]


def test_every_disc_found_is_numbered_from_the_bottom():
    rows = [20 + SPACING * k for k in range(6)]  # the top disc 0.4 spacings below the edge: it is the top graded
    numbers, reasons = number_discs(_spine(rows), 6)
    assert numbers == [6, 5, 4, 3, 2, 1] and reasons == [""] * 6


def test_a_missed_disc_is_placed_by_the_gap_or_the_top_edge():
    rows = [20 + SPACING * k for k in range(7)]
    # L3-L4 (disc 3, row 220) missed: the gap of two spacings holds it
    numbers, _ = number_discs(_spine(rows[:4] + rows[5:]), 7)
    assert numbers == [7, 6, 5, 4, 2, 1]
    # L5-S1 missed: the top disc is still the top graded one, so the discs found are 2..7
    numbers, _ = number_discs(_spine(rows[:-1]), 7)
    assert numbers == [7, 6, 5, 4, 3, 2]
    # the top one missed: 1.4 spacings of room above the top disc found, so one graded disc lies there
    numbers, _ = number_discs(_spine(rows[1:]), 7)
    assert numbers == [6, 5, 4, 3, 2, 1]
    # the top disc found lies about a spacing below the edge: a disc above it may or may not have been graded
    numbers, reasons = number_discs(_spine([y + 30 for y in rows[1:]]), 7)
    assert numbers == [None] * 6 and "top edge" in reasons[0] and "uncertain" in reasons[0]


def test_false_and_split_detections_are_left_out_but_hold_their_place():
    rows = [20 + SPACING * k for k in range(6)]
    boxes = _spine(rows)
    blob = _disc(145, cx=30)  # beside the spine (bowel), between discs 4 and 3
    numbers, reasons = number_discs(boxes + [blob], 6)
    assert numbers[:6] == [6, 5, 4, 3, 2, 1] and numbers[6] is None and "not on the spine" in reasons[6]
    # L4-L5 (row 220) cut in two side by side pieces: neither is cropped, the discs above keep their numbers
    left, right = _disc(222, cx=90, area=120), _disc(218, cx=114, area=120)
    numbers, reasons = number_discs(boxes[:4] + [left, right] + boxes[5:], 6)
    assert numbers == [6, 5, 4, 3, None, None, 1] and "in pieces" in reasons[4] and reasons[4] == reasons[5]
    # a disc under L5-S1 (S1-S2) when the top disc found is the top graded one
    numbers, reasons = number_discs(_spine(rows + [20 + SPACING * 6]), 6)
    assert numbers == [6, 5, 4, 3, 2, 1, None] and "below L5-S1" in reasons[6]
    # a gap of 1.5 spacings: whether a disc was missed there cannot be told
    numbers, reasons = number_discs(_spine(rows[:3] + [rows[3] + 25, rows[4] + 25]), 6)
    assert set(numbers) == {None} and "whether a disc was missed there is uncertain" in reasons[0]


def _roi_folder(folder, slices, source_manifest):
    """A crop folder as spinenet roi writes it: ``slices`` maps patient -> disc centre rows (top to bottom)."""
    folder.mkdir()
    rows = []
    names = ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1", "T11-T12"]
    for pid, centres in slices.items():
        for k, y in enumerate(sorted(centres, reverse=True)):
            b = _disc(y)
            rows.append({"patient_id": pid, "image": f"images/{pid}_{names[k]}.png", "source_image": f"{pid}.png",
                         "level": names[k], "disc_index": k, "x0": b.x0, "y0": b.y0 - 4, "x1": b.x1, "y1": b.y1 + 4,
                         "area": b.area, "cx": b.cx, "cy": b.cy})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    (folder / "summary.json").write_text(json.dumps({"source": str(source_manifest)}))
    return folder


def _gradings(path, discs):
    rows = [{"Patient": pid, "IVD label": k, "Disc bulging": k % 2} for pid, n in discs.items() for k in range(1, n + 1)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_position_rule_keeps_a_slice_with_a_missed_disc(tmp_path):
    rows = [20 + SPACING * k for k in range(7)]
    # 3: every disc found, but the top one about a spacing below the edge: the count's numbers stand
    crops = _roi_folder(tmp_path / "crops", {"1": rows[:-1], "2": rows[:6], "3": [y + 30 for y in rows[:6]]},
                        tmp_path / "src.csv")
    grades = _gradings(tmp_path / "g.csv", {"1": 7, "2": 6, "3": 6})
    _, kept, skipped = grade_crops(crops, grades, rule="count")
    assert set(kept.patient_id) == {"2", "3"} and list(skipped.kind) == ["disc count differs"]
    _, kept, skipped = grade_crops(crops, grades, out_name="pos.csv")
    one = kept[kept.patient_id == "1"].set_index("roi_level")
    # roi named the lowest disc found L5-S1; it is disc 2 (L5-S1 was missed)
    assert one.loc["L5-S1", "ivd_label"] == 2 and one.loc["L5-S1", "level"] == "L4-L5"
    assert one.loc["L5-S1", "disc_bulging"] == 0 and sorted(one.ivd_label) == [2, 3, 4, 5, 6, 7]
    assert len(skipped) == 0 and len(kept) == 18
    three = kept[kept.patient_id == "3"]
    assert (three.level == three.roi_level).all() and sorted(three.ivd_label) == [1, 2, 3, 4, 5, 6]


def test_level_check_finds_known_discs_in_the_slice_and_counts_right_and_wrong(tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "slices"
    src.mkdir()
    discs = tmp_path / "discs"
    discs.mkdir()
    rows = [20 + SPACING * k for k in range(6)]
    truth = []
    for pid in ("1", "2", "3"):
        image = (rng.random((340, 200)) * 255).astype(np.uint8)
        Image.fromarray(image).save(src / f"{pid}.png")
        for k, y in enumerate(rows):  # the known crops, numbered from the bottom
            b = _disc(y)
            crop = image[b.y0 - 3 : b.y1 + 3, b.x0 - 5 : b.x1 + 5]
            if pid == "3":  # cut from another slice: not checked
                crop = (rng.random(crop.shape) * 255).astype(np.uint8)
            Image.fromarray(crop).save(discs / f"{pid}_t2_disc_{k + 1}.png")
            truth.append({"patient_id": pid, "series": "t2", "image": f"{pid}_t2_disc_{k + 1}.png",
                          "ivd_label": 6 - k})
    pd.DataFrame(truth).to_csv(discs / "manifest.csv", index=False)
    pd.DataFrame({"patient_id": ["1", "2", "3"], "image": ["1.png", "2.png", "3.png"]}).to_csv(
        src / "manifest.csv", index=False)
    # patient 1: every disc found; patient 2: L5-S1 missed
    crops = _roi_folder(tmp_path / "crops", {"1": rows, "2": rows[:-1], "3": rows}, src / "manifest.csv")

    known = locate_known_discs([(p, f"{p}.png", src / f"{p}.png") for p in ("1", "2", "3")], discs / "manifest.csv")
    assert known.groupby("patient_id")["exact"].all().to_dict() == {"1": True, "2": True, "3": False}
    first = known[known.patient_id == "1"].sort_values("ivd_label")
    assert list(first.y0) == [y - 9 for y in reversed(rows)]  # found where they were cut
    crop_rows = pd.read_csv(crops / "manifest.csv", dtype={"patient_id": str})
    numbered = crop_rows.assign(ivd_label=crop_rows.level.map({"L5-S1": 1, "L4-L5": 2, "L3-L4": 3, "L2-L3": 4,
                                                                 "L1-L2": 5, "T12-L1": 6}))
    checked, counts = check_levels(numbered, known)
    # patient 2 numbered from the bottom: every disc one too low
    assert counts == {"slices": 2, "slices_right": 1, "discs": 11, "discs_right": 6}
    two = checked[checked.patient_id == "2"]
    assert list(two.true_label - two.ivd_label) == [1] * 5
    false_disc = numbered[numbered.patient_id == "1"].head(1).assign(cx=10.0)  # where no known disc is
    assert check_levels(false_disc, known)[0].true_label.isna().all()

    grades = _gradings(tmp_path / "g.csv", {"1": 6, "2": 6, "3": 6})
    # a manifest that is not one of disc crops: one line, and nothing written
    assert cli_main(["data", "grade-crops", str(crops), "--gradings", str(grades),
                     "--check-levels", str(src / "manifest.csv")]) == 2
    assert "not a disc crop manifest" in capsys.readouterr().err and not (crops / "graded.csv").exists()
    assert cli_main(["data", "grade-crops", str(crops), "--gradings", str(grades),
                     "--check-levels", str(discs / "manifest.csv")]) == 0
    out = capsys.readouterr().out
    assert "levels checked on the 2 slices" in out
    assert "rule count: 12 crops of 2 patients" in out and "1/1 kept with every level right, 6/6 discs" in out
    # the position rule numbers patient 2's discs from the top one (the top graded: 0.4 spacings below the edge)
    assert "rule position: 17 crops of 3 patients" in out and "2/2 kept with every level right, 11/11" in out
    levels = pd.read_csv(crops / "graded_levels.csv")
    assert set(levels.rule) == {"count", "position"} and levels.right.all()
