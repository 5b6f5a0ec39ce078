"""Detector-free ROI cropping: boxes, margin and clipping, levels, CLAHE, crop data sets, box CSV."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from spinenet.data.io import read_mask
from spinenet.data.manifest import DatasetSpec
from spinenet.errors import ConfigError, DataError
from spinenet.roi import (
    Box,
    assign_levels,
    crop_dataset,
    crop_roi,
    crops_from_box_csv,
    disc_boxes,
    enlarge_box,
)


def test_box_of_a_rectangle_with_margin_and_edge_clipping():
    mask = np.zeros((64, 64), np.int64)
    mask[20:40, 10:50] = 1  # rows 20..39, columns 10..49: 40 wide, 20 high
    (box,) = disc_boxes(mask)
    assert box.as_tuple() == (10, 20, 50, 40)
    assert box.area == 800 and (box.cx, box.cy) == (29.5, 29.5)
    # 10 %: width 40 -> 2 px per side, height 20 -> 1 px per side
    assert enlarge_box(box, 0.10, mask.shape).as_tuple() == (8, 19, 52, 41)
    assert enlarge_box(box, 0.50, mask.shape).as_tuple() == (0, 15, 60, 45)  # 10 px per side, clipped at x=0

    edge = np.zeros((64, 64), np.int64)
    edge[50:64, 40:64] = 1  # touches the right and bottom edges: 24 wide, 14 high
    (b,) = disc_boxes(edge)
    assert b.as_tuple() == (40, 50, 64, 64)
    # 1.2 px and 0.7 px per side, rounded outwards: (38.8, 49.3, 65.2, 64.7) -> (38, 49, 66, 65), clipped
    assert enlarge_box(b, 0.10, edge.shape).as_tuple() == (38, 49, 64, 64)
    assert enlarge_box(b, 0.10).as_tuple() == (38, 49, 66, 65)  # no image shape: no clipping
    crop = crop_roi(
        np.full((64, 64), 0.5, np.float32), enlarge_box(b, 0.10, edge.shape), size=(32, 48), clahe=None
    )
    assert crop.shape == (32, 48) and crop.dtype == np.uint8 and int(crop[0, 0]) == 128


def test_margin_per_axis_and_its_errors():
    box = Box(10, 20, 50, 40, 800, 29.5, 29.5)  # 40 wide, 20 high
    # width +10 % (2 px per side), height +100 % (10 px per side): crops that show the endplates around a disc
    assert enlarge_box(box, [0.10, 1.0]).as_tuple() == (8, 10, 52, 50)
    assert enlarge_box(box, (0.10, 0.10)).as_tuple() == enlarge_box(box, 0.10).as_tuple()
    with pytest.raises(ConfigError, match=r"roi.margin must be >= 0"):
        enlarge_box(box, [0.1, -0.2])
    with pytest.raises(ConfigError, match=r"number or \[width, height\]"):
        enlarge_box(box, [0.1, 0.2, 0.3])


def test_small_specks_are_dropped_and_thin_discs_kept():
    mask = np.zeros((40, 40), np.int64)
    mask[5:8, 5:8] = 1  # 9-pixel speck
    mask[20:22, 10:28] = 1  # a thin disc: 2 x 18 = 36 pixels (cv2.contourArea would say 17)
    boxes = disc_boxes(mask, min_area=20)
    assert [(b.as_tuple(), b.area) for b in boxes] == [((10, 20, 28, 22), 36.0)]
    assert len(disc_boxes(mask, min_area=5)) == 2
    assert disc_boxes(mask, disc_class=2) == []


def _spine_mask(n: int, size: int = 128, gap: int = 20) -> np.ndarray:
    """n flat discs stacked vertically, the lowest near the bottom of the image."""
    mask = np.zeros((size, size), np.uint8)
    for k in range(n):
        y = size - 12 - k * gap
        mask[y : y + 5, 40 + k : 70 + k] = 1
    return mask


def test_levels_are_assigned_bottom_up():
    boxes = disc_boxes(_spine_mask(3))
    assert [b.cy for b in boxes] == sorted(b.cy for b in boxes)  # top -> bottom
    assert assign_levels(boxes) == ["L3-L4", "L4-L5", "L5-S1"]
    five = disc_boxes(_spine_mask(5))
    assert assign_levels(five) == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    assert assign_levels(five[::-1]) == [
        "L5-S1",
        "L4-L5",
        "L3-L4",
        "L2-L3",
        "L1-L2",
    ]  # follows the input order
    seven = disc_boxes(_spine_mask(7, size=160))
    assert assign_levels(seven)[:3] == ["T11-T12", "T12-L1", "L1-L2"]
    assert assign_levels(seven, upper="index")[:3] == ["disc_7", "disc_6", "L1-L2"]


def test_clahe_is_applied_to_the_resized_crop():
    rng = np.random.default_rng(0)
    image = (0.4 + 0.1 * rng.random((80, 80))).astype(np.float32)  # low contrast: values 0.4..0.5
    box = Box(10, 10, 70, 50)
    plain = crop_roi(image, box, size=(64, 64), clahe=None)
    enhanced = crop_roi(image, box, size=(64, 64))  # clip 2.0, 4x4 tiles
    assert plain.shape == enhanced.shape == (64, 64) and enhanced.dtype == np.uint8
    assert not np.array_equal(plain, enhanced)
    assert int(plain.max()) - int(plain.min()) <= 26
    assert int(enhanced.max()) - int(enhanced.min()) > 2 * (int(plain.max()) - int(plain.min()))
    expected = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(plain)
    assert np.array_equal(enhanced, expected)
    as_float = crop_roi(image, box, as_float=True)
    assert as_float.dtype == np.float32 and 0.0 <= as_float.min() and as_float.max() <= 1.0
    with pytest.raises(ConfigError, match="unknown key.*'clip_limit'"):
        crop_roi(image, box, clahe={"clip_limit": 2})


def _write_sagittal_set(root, with_empty: bool = True):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    cases = [("P1", "L4-L5", 3), ("P2", "healthy", 3)] + ([("P3", "healthy", 0)] if with_empty else [])
    for pid, label, n in cases:
        mask = _spine_mask(n, size=96)
        image = np.full((96, 96), 60, np.uint8)
        image[mask == 1] = 200
        cv2.imwrite(str(root / "images" / f"{pid}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{pid}.png"), mask * 85)  # class i stored as gray 85*i
        rows.append(
            {
                "patient_id": pid,
                "image": f"images/{pid}.png",
                "mask": f"masks/{pid}.png",
                "sagittal_class": label,
            }
        )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return DatasetSpec(root=root, label_col="sagittal_class", mask_values=[0, 85, 170, 255])


def test_crop_dataset_writes_crops_manifest_and_missing(tmp_path):
    spec = _write_sagittal_set(tmp_path / "src")
    out = crop_dataset(spec, tmp_path / "crops", view="sagittal", size=(32, 32), margin=0.10)
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 6
    p1 = manifest[manifest.patient_id == "P1"].set_index("level")
    assert list(p1.index) == ["L3-L4", "L4-L5", "L5-S1"]
    assert p1.loc["L4-L5", "label"] == "L4-L5" and p1.loc["L4-L5", "herniated"] == 1
    assert p1.loc["L5-S1", "label"] == "healthy" and p1.loc["L3-L4", "herniated"] == 0
    assert set(manifest[manifest.patient_id == "P2"].label) == {"healthy"}
    # lowest disc of _spine_mask(3, 96): rows 84..88, columns 40..69 -> 30 x 5, margin 1.5 / 0.25 px per side
    assert tuple(p1.loc["L5-S1", ["x0", "y0", "x1", "y1"]]) == (38, 83, 72, 90)
    assert p1.loc["L5-S1", "image"] == "images/P1_L5-S1.png"
    assert p1.loc["L5-S1", "source_image"] == "images/P1.png" and p1.loc["L5-S1", "sagittal_class"] == "L4-L5"
    crop = cv2.imread(str(out / p1.loc["L5-S1", "image"]), cv2.IMREAD_UNCHANGED)
    assert crop.shape == (32, 32) and crop.dtype == np.uint8
    missing = pd.read_csv(out / "missing.csv")
    assert list(missing.source_image) == ["images/P3.png"] and "no disc contour" in missing.reason[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 3 and summary["n_crops"] == 6 and summary["n_missing"] == 1
    assert summary["label_counts"] == {"L4-L5": 1, "healthy": 5}

    with pytest.raises(ConfigError, match="not empty.*--overwrite"):
        crop_dataset(spec, out)
    # a segmenter's prediction instead of the ground truth; only the levels asked for
    calls = []

    def segmenter(image, row):
        calls.append(row["patient_id"])
        return (image > 0.5).astype(np.int64)

    crop_dataset(spec, out, mask_source=segmenter, levels=["L4-L5", "L5-S1"], overwrite=True)
    again = pd.read_csv(out / "manifest.csv")
    assert calls == ["P1", "P2", "P3"] and sorted(set(again.level)) == ["L4-L5", "L5-S1"] and len(again) == 4


def test_crop_dataset_on_the_phantom_finds_the_labelled_level(tmp_path):
    from spinenet.data.phantom import generate_phantom

    generate_phantom(tmp_path / "ph", "sagittal", patients=3, size=128, slices_per_patient=1, seed=0)
    spec = DatasetSpec(root=tmp_path / "ph", label_col="sagittal_class", mask_values=[0, 85, 170, 255])
    out = crop_dataset(spec, tmp_path / "crops")
    manifest = pd.read_csv(out / "manifest.csv")
    source = pd.read_csv(tmp_path / "ph" / "manifest.csv")
    assert pd.read_csv(out / "missing.csv").empty and len(manifest) == 5 * len(source)
    for _, row in source.iterrows():
        discs = manifest[manifest.patient_id == row.patient_id]
        assert sorted(discs.level) == sorted(["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"])
        herniated = list(discs[discs.herniated == 1].level)
        assert herniated == ([] if row.sagittal_class == "healthy" else [row.sagittal_class])


def _box_csv_setup(tmp_path, rows: str):
    root = tmp_path / "png"
    root.mkdir()
    image = np.tile(np.linspace(0, 255, 100, dtype=np.uint8), (80, 1))  # 100 wide, 80 high
    cv2.imwrite(str(root / "abc.png"), image)
    cv2.imwrite(str(root / "def.png"), image)
    csv = tmp_path / "train.csv"
    csv.write_text("image_id,rad_id,lesion_type,xmin,ymin,xmax,ymax\n" + rows)
    return csv, root


def test_crops_from_box_csv(tmp_path):
    csv, root = _box_csv_setup(
        tmp_path,
        "abc,rad1,Osteophytes,10.4,20.0,30.6,40\n"
        "abc,rad2,Osteophytes,90,70,120,95\n"
        "def,rad1,No finding,,,,\n",
    )
    out = crops_from_box_csv(csv, root, tmp_path / "crops", size=(16, 16))
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest.image) == ["images/abc_0.png", "images/abc_1.png"]
    assert list(manifest.label) == ["Osteophytes", "Osteophytes"] and list(manifest.rad_id) == [
        "rad1",
        "rad2",
    ]
    assert manifest.loc[0, ["x0", "y0", "x1", "y1"]].tolist() == [10, 20, 31, 40]  # floor / ceil
    assert manifest.loc[1, ["x0", "y0", "x1", "y1"]].tolist() == [90, 70, 100, 80]  # clipped at the edge
    assert manifest.patient_id.tolist() == ["abc", "abc"]
    missing = pd.read_csv(out / "missing.csv")
    assert missing.source_image.tolist() == ["def"] and "line 4: no box (No finding)" in missing.reason[0]
    crop = cv2.imread(str(out / "images/abc_0.png"), cv2.IMREAD_UNCHANGED)
    assert crop.shape == (16, 16)


def test_box_csv_bad_rows_name_line_and_file(tmp_path):
    csv, root = _box_csv_setup(
        tmp_path,
        "abc,rad1,Osteophytes,10,20,30,40\n"
        "abc,rad1,Osteophytes,30,20,10,40\n"
        "abc,rad1,Osteophytes,10,x,30,40\n"
        "zzz,rad1,Osteophytes,10,20,30,40\n"
        "def,rad1,Osteophytes,10,20,,40\n",
    )
    with pytest.raises(DataError) as err:
        crops_from_box_csv(csv, root, tmp_path / "crops")
    msg = str(err.value)
    assert "train.csv: 3 bad row(s)" in msg
    assert "line 3 (abc): xmin < xmax" in msg and "line 4 (abc): box" in msg and "line 6 (def)" in msg
    assert "zzz" not in msg  # a missing image fails its own rows only (below)
    assert not (tmp_path / "crops").exists()  # nothing written before every row is checked
    outside = tmp_path / "outside.csv"
    outside.write_text("image_id,label,xmin,ymin,xmax,ymax\nabc,a,150,10,160,20\n")
    with pytest.raises(DataError, match="line 2 .abc.: box .* lies outside the 100×80 image"):
        crops_from_box_csv(outside, root, tmp_path / "crops2")
    assert not (tmp_path / "crops2").exists()
    # a missing and an unreadable image fail their rows; the others are cropped
    (root / "bad.png").write_bytes(b"not an image")
    partial = tmp_path / "partial.csv"
    partial.write_text(
        "image_id,label,xmin,ymin,xmax,ymax\nabc,a,10,10,20,20\nzzz,a,1,1,5,5\nbad,a,1,1,5,5\nabc,b,30,30,60,60\n"
    )
    out = crops_from_box_csv(partial, root, tmp_path / "crops4")
    assert pd.read_csv(out / "manifest.csv").csv_line.tolist() == [2, 5]
    summary = json.loads((out / "summary.json").read_text())
    assert [(f["line"], f["file"]) for f in summary["failed"]] == [(3, "zzz"), (4, "bad")]
    assert "not found under" in summary["failed"][0]["reason"] and summary["n_failed"] == 2
    with pytest.raises(DataError, match="none of the 2 image.s. could be read"):
        only_bad = tmp_path / "only_bad.csv"
        only_bad.write_text("image_id,label,xmin,ymin,xmax,ymax\nzzz,a,1,1,5,5\nbad,a,1,1,5,5\n")
        crops_from_box_csv(only_bad, root, tmp_path / "crops5")
    assert not (tmp_path / "crops5").exists()
    with pytest.raises(DataError, match="missing column.*'xmin'"):
        bad = tmp_path / "cols.csv"
        bad.write_text("image_id,label,x,y\nabc,a,1,2\n")
        crops_from_box_csv(bad, root, tmp_path / "crops3")


def test_axial_crop_dataset_keeps_the_slice_label_and_level(tmp_path):
    from spinenet.data.phantom import generate_phantom

    generate_phantom(tmp_path / "ax", "axial", patients=3, size=128, slices_per_patient=1, seed=0)
    spec = DatasetSpec(root=tmp_path / "ax", label_col="axial_class", mask_values=[0, 85, 170, 255])
    out = crop_dataset(spec, tmp_path / "crops", view="axial", size=64)
    manifest = pd.read_csv(out / "manifest.csv")
    source = pd.read_csv(tmp_path / "ax" / "manifest.csv")
    assert len(manifest) == len(source)  # one crop per axial slice
    assert list(manifest.label) == list(source.axial_class) and list(manifest.level) == list(source.level)
    assert list(manifest.image) == [
        f"images/{p}_axial_s0_{lv}.png" for p, lv in zip(source.patient_id, source.level, strict=True)
    ]


def test_implausible_sagittal_components_are_left_out_before_levels_are_named():
    from spinenet.roi import plausible_sagittal_discs

    mask = np.zeros((200, 120), np.int64)
    for k in range(5):  # five flat discs, 40 x 8 px, top to bottom
        mask[20 + 30 * k : 28 + 30 * k, 40:80] = 1
    mask[30:170, 5:12] = 1  # a tall strip beside the spine (a false positive seen on SPIDER)
    mask[185:189, 60:64] = 1  # a 16-px speck below the lowest disc
    boxes = disc_boxes(mask, min_area=10)
    assert len(boxes) == 7 and assign_levels(boxes)[-1] == "L5-S1"  # the speck would be named L5-S1
    kept, rejected = plausible_sagittal_discs(boxes)
    assert [b.y0 for b in kept] == [20, 50, 80, 110, 140]
    assert assign_levels(kept)[-1] == "L5-S1" and assign_levels(kept)[0] == "L1-L2"
    reasons = sorted(r["reason"].split(" (")[0].split(" px")[0] for r in rejected)
    assert len(rejected) == 2 and reasons[1] == "taller than wide" and reasons[0].startswith("area 16")


def test_segmenter_masks_lose_implausible_components_before_levels_are_named(tmp_path):
    spec = _write_sagittal_set(tmp_path / "src")
    truth = pd.read_csv(crop_dataset(spec, tmp_path / "gt", view="sagittal", size=(32, 32)) / "manifest.csv")

    def segmenter(image, row):  # the discs, plus a tall strip beside the spine and a speck below L5-S1
        mask = (image > 0.5).astype(np.int64)
        if mask.any():
            mask[10:80, 2:6] = 1
            mask[90:95, 50:55] = 1
        return mask

    out = crop_dataset(spec, tmp_path / "seg", view="sagittal", size=(32, 32), mask_source=segmenter)
    predicted = pd.read_csv(out / "manifest.csv")
    cols = ["patient_id", "level", "x0", "y0", "x1", "y1"]
    pd.testing.assert_frame_equal(predicted[cols], truth[cols])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_rejected_components"] == 4  # two per image with discs (P1, P2)
    reasons = sorted(r["reason"].split(" ")[0] for r in summary["rejected_components"])
    assert reasons == ["area", "area", "taller", "taller"]
    assert {r["source_image"] for r in summary["rejected_components"]} == {"images/P1.png", "images/P2.png"}


def test_segmenter_masks_of_no_plausible_spine_are_listed_not_cropped(tmp_path):
    # as `spinenet diagnose`: a slice whose segmentation is no sagittal spine gets no level names and no crops
    spec = _write_sagittal_set(tmp_path / "src")
    truth = pd.read_csv(crop_dataset(spec, tmp_path / "gt", view="sagittal", size=(32, 32)) / "manifest.csv")

    def segmenter(image, row):
        mask = read_mask(row["mask_path"], spec.mask_values)  # P1: its ground truth
        if row["patient_id"] == "P2":  # three discs side by side
            mask[:] = 0
            for x0 in (2, 35, 68):
                mask[40:45, x0:x0 + 26] = 1
        elif row["patient_id"] == "P3":  # only a tall strip: no component can be a disc
            mask[10:80, 2:8] = 1
        return mask

    out = crop_dataset(spec, tmp_path / "seg", view="sagittal", size=(32, 32), mask_source=segmenter,
                       mask_classes=["background", "disc"])
    predicted = pd.read_csv(out / "manifest.csv")
    cols = ["patient_id", "level", "x0", "y0", "x1", "y1"]
    pd.testing.assert_frame_equal(predicted[cols], truth[truth.patient_id == "P1"][cols])
    missing = pd.read_csv(out / "missing.csv").set_index("source_image").reason
    assert sorted(missing.index) == ["images/P2.png", "images/P3.png"]
    assert missing["images/P2.png"].startswith("implausible for sagittal: discs side by side, not stacked")
    assert missing["images/P3.png"].startswith("no plausible disc: 1 component(s) left out")
