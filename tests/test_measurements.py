"""Measurements from a sagittal mask: hand-drawn masks with known protrusion and disc height, a missing
vertebra, the mirrored image, and the measurements through ``diagnose`` and ``findings-eval``."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from spinenet.pipeline.findings_eval import score_measurement
from spinenet.pipeline.measurements import (
    ANTERIOR_LEFT,
    ANTERIOR_RIGHT,
    LINE_COLOURS,
    draw_measurements,
    measure_sagittal,
)

DISC_ROWS = 6  # each disc is 6 rows tall


def spine(protrusion: int = 0, herniated_level: int = 1, bodies: int = 3, drop_body: int | None = None,
          size: int = 96) -> np.ndarray:
    """A left-facing sagittal mask: ``bodies`` rectangular vertebral bodies (x 20..49) with discs of
    ``DISC_ROWS`` rows between them (x 20..49 too, so flush with the posterior line x = 49), a canal x 52..59,
    posterior elements x 62..75; disc ``herniated_level`` (0 = top) gets a ``protrusion`` px bulge behind x 49.
    ``drop_body``: that body is left out (background)."""
    m = np.zeros((size, size), np.int64)
    body_h = 16
    y = 6
    discs = []
    for k in range(bodies):
        if k != drop_body:
            m[y : y + body_h, 20:50] = 2
            m[y + 2 : y + body_h - 2, 62:76] = 2  # posterior elements: vertebra class too, behind the canal
        y += body_h
        if k < bodies - 1:
            m[y : y + DISC_ROWS, 20:50] = 1
            discs.append(y)
            y += DISC_ROWS
    m[2 : size - 2, 52:60] = 3
    if protrusion:
        top = discs[herniated_level]
        m[top + 1 : top + DISC_ROWS - 1, 50 : 50 + protrusion] = 1  # bulges into the canal
    return m


@pytest.mark.parametrize("k", [0, 2, 5])
def test_known_protrusion_and_disc_height(k):
    res = measure_sagittal(spine(protrusion=k))
    assert res.orientation == ANTERIOR_LEFT and res.unit == "px"
    top, low = res.levels  # bottom-up naming: the lower disc is L5-S1
    assert [m.level for m in res.levels] == ["L4-L5", "L5-S1"]
    assert low.protrusion == pytest.approx(k, abs=1)
    assert top.protrusion == pytest.approx(0, abs=1)  # flush with the bodies' posterior edges
    assert low.protrusion_line == "corners" and low.reason is None
    for m in res.levels:
        assert m.disc_height_anterior == m.disc_height_middle == m.disc_height_posterior == pytest.approx(DISC_ROWS)
        assert m.vertebra_height_above == pytest.approx(16) and m.vertebra_height_below == pytest.approx(16)
        assert m.disc_height_index == pytest.approx(DISC_ROWS / 16, abs=0.01)
    # the canal (x 52..59, 8 px) shrinks where the disc (behind x 49) bulges into it
    assert low.canal_ap_disc == pytest.approx(8 - max(0, k - 2), abs=1) and low.canal_ap_mid_above == pytest.approx(8)


def test_a_detached_fragment_counts_for_the_disc_it_reaches():
    mask = spine()
    top = 6 + 16 + DISC_ROWS + 16  # the lower disc's first row
    mask[top + 2 : top + 4, 52:56] = 1  # a sequestered piece 2 px behind the disc (x <= 49), in the canal
    res = measure_sagittal(mask)
    assert len(res.levels) == 2  # the piece is a speck, not a level
    assert res.levels[1].protrusion == pytest.approx(55 - 49, abs=1) and res.levels[0].protrusion == pytest.approx(0, abs=1)


def test_spacing_gives_millimetres():
    res = measure_sagittal(spine(protrusion=4), spacing=(0.5, 0.25))  # rows 0.5 mm, columns 0.25 mm
    low = res.levels[1]
    assert res.unit == low.unit == "mm"
    assert low.protrusion == pytest.approx(4 * 0.25, abs=0.25)
    assert low.disc_height_middle == pytest.approx(DISC_ROWS * 0.5)
    assert low.disc_height_index == pytest.approx(DISC_ROWS / 16, abs=0.01)  # a ratio: no unit


def test_mirrored_image_gives_the_same_numbers():
    mask = spine(protrusion=3)
    left, right = measure_sagittal(mask), measure_sagittal(mask[:, ::-1].copy())
    assert right.orientation == ANTERIOR_RIGHT
    for a, b in zip(left.levels, right.levels, strict=True):
        assert a.values() == b.values()
    # drawn where the mirrored image has it: the protrusion's tip is mirrored too
    (xa, ya), (xb, yb) = left.levels[1].geometry["protrusion"][1], right.levels[1].geometry["protrusion"][1]
    assert xb == pytest.approx(mask.shape[1] - 1 - xa) and yb == ya


def test_missing_vertebra_gives_none_with_a_reason():
    # no body between the two discs: the lower disc has a body below only, the upper one above only
    res = measure_sagittal(spine(drop_body=1))
    for m in res.levels:
        assert m.vertebra_height_above is None or m.vertebra_height_below is None
        assert m.reason and "no vertebral body" in m.reason
        assert m.protrusion_line in ("corner above", "corner below")
        assert m.protrusion == pytest.approx(0, abs=1)  # flush with the corner of the one body left
    # a disc with no body at all: no posterior line, protrusion None, the reason says why
    lone = np.zeros((64, 64), np.int64)
    lone[30:36, 10:40] = 1
    lone[5:60, 44:50] = 3
    assert measure_sagittal(lone).levels == []  # found alone, it is no plausible spine: no level named
    assert "implausible for sagittal" in measure_sagittal(lone).reason
    only = measure_sagittal(lone, discs=[("L5-S1", (10, 30, 40, 36))]).levels  # as diagnose would pass it
    assert len(only) == 1 and only[0].protrusion is None and only[0].disc_height_index is None
    assert "no vertebral body above or below" in only[0].reason
    assert only[0].disc_height_middle == pytest.approx(6)
    # no canal: orientation unknown, every value None, never a crash
    none = measure_sagittal(np.where(lone == 3, 0, lone), discs=[("L5-S1", (10, 30, 40, 36))]).levels[0]
    assert none.protrusion is None and none.disc_height_middle is None and "posterior side is unknown" in none.reason


def test_overlay_draws_the_protrusion():
    mask = spine(protrusion=5)
    res = measure_sagittal(mask)
    rgb = np.zeros((*mask.shape, 3), np.uint8)
    draw_measurements(rgb, res.levels)
    (x0, y0), (x1, y1) = res.levels[1].geometry["protrusion"]
    assert x1 - x0 == pytest.approx(5, abs=1)  # from the posterior line to the tip, 5 px behind it
    r, g, b = rgb[round((y0 + y1) / 2), round((x0 + x1) / 2)]
    assert r > 200 and g < 80 and b > 200  # magenta half-way


def test_overlay_draws_the_canal_diameter_only_at_the_levels_asked_and_edges_the_posterior_line():
    res = measure_sagittal(spine(protrusion=5))
    cyan = np.array(LINE_COLOURS["canal_ap"])

    def cyan_at(rgb, seg):
        (x0, y0), (x1, y1) = seg
        return np.abs(rgb[round((y0 + y1) / 2), round((x0 + x1) / 2)].astype(int) - cyan).max() < 40

    lower, upper = res.levels[0], res.levels[1]
    rgb = draw_measurements(np.zeros((96, 96, 3), np.uint8), res.levels, canal_at={lower.level})
    assert cyan_at(rgb, lower.geometry["canal_ap_disc"])
    assert not cyan_at(rgb, upper.geometry["canal_ap_disc"])
    # the mid-vertebral diameters are measured but not drawn
    assert "canal_ap_mid_above" in lower.geometry and not cyan_at(rgb, lower.geometry["canal_ap_mid_above"])
    # on a canal-coloured background the posterior line keeps a black edge beside its orange
    bg = np.zeros((96, 96, 3), np.uint8)
    bg[:] = (255, 220, 60)
    draw_measurements(bg, [upper], scale=1.0, thickness=1)
    (x0, y0), (x1, y1) = upper.geometry["posterior_line"]
    row = bg[round((y0 + y1) / 2)]
    near = row[max(0, round(x0) - 4) : round(x0) + 5]
    assert (near.max(axis=1) < 60).any(), "no dark edge beside the posterior line"


def test_score_measurement_ranks_with_patient_bootstrap():
    # protrusion predicts herniation perfectly; one value missing is left out and counted
    values = [5.0, 4.0, 0.5, 0.0, None, 1.0]
    labels = [1, 1, 0, 0, 1, 0]
    patients = ["a", "b", "c", "d", "e", "f"]
    out = score_measurement(values, labels, patients, 1, bootstrap=200)
    assert out["auroc"] == 1.0 and out["n"] == 5 and out["missing"] == 1 and out["positives"] == 2
    assert out["auroc_ci95"][1] == 1.0
    assert score_measurement(values, labels, patients, -1, bootstrap=0)["auroc"] == 0.0  # smaller = finding


def test_diagnose_and_findings_eval_report_measurements(tmp_path, capsys):
    """The sagittal phantom (herniated at L5-S1) through diagnose (ground-truth masks as the segmenter) writes
    the measurement columns; findings-eval scores the protrusion against the truth and the gradings."""
    from spinenet.cli import main as cli_main
    from spinenet.contract import CropRecipe
    from spinenet.data.io import read_image, read_mask
    from spinenet.data.phantom import generate_phantom
    from spinenet.pipeline.diagnose import Item, run
    from tests.test_diagnose import oracle_classifier, stub_segmenter

    manifest = generate_phantom(tmp_path / "ph", view="sagittal", patients=6, seed=2, size=128,
                                slices_per_patient=1, class_balance={"healthy": 1, "L5-S1": 1, "L4-L5": 1})
    import pandas as pd

    df = pd.read_csv(manifest, dtype={"patient_id": str})
    pairs, items = [], []
    for r in df.itertuples():
        img = read_image(manifest.parent / r.image)
        pairs.append((img, read_mask(manifest.parent / r.mask, [0, 85, 170, 255])))
        items.append(Item(r.patient_id, r.image, "sagittal", lambda img=img: img))
    crop = CropRecipe(size=[32, 32], margin=0.1, clahe=None, levels=["L4-L5", "L5-S1"])

    class Anything(dict):  # the classifier's answer does not matter here
        def __missing__(self, key):
            return "healthy"

    run(items, {"sagittal": stub_segmenter(pairs, size=128)},
        {"sagittal": oracle_classifier(Anything(), ["healthy", "L4-L5", "L5-S1"], crop)}, tmp_path / "out",
        progress=False)
    found = pd.read_csv(tmp_path / "out" / "findings.csv")
    for col in ("unit", "protrusion", "disc_height_middle", "disc_height_index", "canal_ap_disc"):
        assert col in found.columns
    lumbar = found[found.level.isin(["L4-L5", "L5-S1"])]
    assert (lumbar.unit == "px").all() and lumbar.protrusion.notna().all()
    doc = json.loads(next((tmp_path / "out").glob("*/findings.json")).read_text())
    assert "measurements" in doc["findings"]["sagittal"][0] and doc["images"][0]["orientation"] == ANTERIOR_LEFT
    # the overlay carries the drawn protrusion (magenta) somewhere
    overlay = cv2.imread(str(next((tmp_path / "out").glob("*/overlay.jpg"))))[..., ::-1]
    assert ((overlay[..., 0] > 230) & (overlay[..., 1] < 30) & (overlay[..., 2] > 230)).any()

    # truth: the phantom's own manifest (herniation_L4L5/L5S1); gradings: the same per disc, SPIDER-style
    grades = ["Patient,IVD label,Disc herniation,Disc bulging,Disc narrowing"]
    for r in df.itertuples():
        grades += [f"{r.patient_id},1,{r.herniation_L5S1},{r.herniation_L5S1},0",
                   f"{r.patient_id},2,{r.herniation_L4L5},{r.herniation_L4L5},1"]
    truth = manifest
    (tmp_path / "grades.csv").write_text("\n".join(grades) + "\n")
    rc = cli_main(["findings-eval", "--findings", str(tmp_path / "out"), "--truth", str(truth),
                   "--gradings", str(tmp_path / "grades.csv"), "--bootstrap", "50"])
    assert rc == 0
    assert "protrusion->truth" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "eval.json").read_text())["measurements"]
    assert result["units"] == ["px"]
    herniation = result["scores"]["protrusion->truth"]["pooled"]
    assert herniation["n"] == 2 * len(df)
    assert herniation["positives"] == int(df.herniation_L4L5.sum() + df.herniation_L5S1.sum()) > 0
    assert herniation["auroc"] is not None and herniation["auroc"] > 0.5  # the phantom's bulge protrudes
    assert "protrusion->disc_bulging" in result["scores"] and "disc_height_index->disc_narrowing" in result["scores"]


def test_diagnose_takes_the_dicom_pixel_spacing():
    from spinenet.pipeline.diagnose import attach_measurements
    from spinenet.pipeline.measurements import spacing_from_dicom

    assert spacing_from_dicom({"PixelSpacing": [0.5, 0.25]}) == (0.5, 0.25)
    assert spacing_from_dicom({}) is None and spacing_from_dicom({"PixelSpacing": ["x", 1]}) is None
    mask = spine(protrusion=4)
    names = ["background", "disc", "vertebra", "canal"]
    discs = [{"level": "L4-L5", "box": [20, 22, 50, 28]}, {"level": "L5-S1", "box": [20, 44, 54, 50]}]  # as diagnose found them
    record = {"view": "sagittal", "mask": mask, "discs": discs}
    attach_measurements(record, names, spacing_from_dicom({"PixelSpacing": [0.5, 0.25]}))
    low = record["discs"][1]["measurements"]
    assert low["unit"] == "mm" and low["protrusion"] == pytest.approx(1.0, abs=0.25)
    assert low["disc_height_middle"] == pytest.approx(DISC_ROWS * 0.5) and record["orientation"] == ANTERIOR_LEFT
    # a segmenter without a canal class: nothing measured, and the reason says so
    record = {"view": "sagittal", "mask": mask, "discs": [dict(d) for d in discs]}
    attach_measurements(record, names[:3], None)
    assert record["discs"][0]["measurements"]["protrusion"] is None
    assert "lack disc, vertebra or canal" in record["discs"][0]["measurements"]["reason"]
