"""`spinenet diagnose`: level naming, combination rules, a phantom study's finding, no-disc images, no PHI.

The phantom study test checks the pipeline's wiring deterministically, without trained models: a stub
segmenter returns the phantom's ground-truth masks, and a stub classifier answers only for the exact crop
(box + margin, size, CLAHE) that the classifier's recipe prescribes for each level, so a wrong level, box,
crop recipe or batch order gives a wrong finding.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from spinenet.cli import main as cli_main
from spinenet.contract import CropRecipe, InputSpec, ModelContract
from spinenet.data.io import read_image, read_mask
from spinenet.errors import ConfigError
from spinenet.loading import Predictor
from spinenet.pipeline.combine import combine
from spinenet.pipeline.diagnose import Item, diagnose_images, run
from spinenet.roi import assign_levels, crop_roi, disc_boxes, enlarge_box
from tests.conftest import SPIDER, requires_spider

SAG_LABELS = ["healthy", "L4-L5", "L5-S1"]
AX_LABELS = ["healthy", "bulge", "central", "left", "right"]
CLAHE = {"clip": 2.0, "tiles": [4, 4]}


def _key(x: torch.Tensor) -> bytes:
    return np.round(x.numpy().astype(np.float32), 5).tobytes()


def stub_segmenter(pairs: list[tuple[np.ndarray, np.ndarray]], classes: int = 4, size: int = 64) -> Predictor:
    """Returns one-hot logits of the mask stored for each input image (images must be ``size`` already)."""
    table = {_key(torch.from_numpy(img.astype(np.float32))[None]): mask for img, mask in pairs}

    def net(x: torch.Tensor) -> torch.Tensor:
        masks = [torch.from_numpy(table[_key(xi)]).long() for xi in x]
        return torch.nn.functional.one_hot(torch.stack(masks), classes).permute(0, 3, 1, 2).float() * 10

    names = ["background", "disc", "vertebra", "canal"][:classes]
    return Predictor(net, ModelContract("segmentation", names, InputSpec((size, size))), Path("stub_seg"))


def oracle_classifier(answers: dict[bytes, str], labels: list[str], crop: CropRecipe) -> Predictor:
    """Answers ``answers[crop]``; any crop it was not told about is an error (wrong box or recipe)."""

    def net(x: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(x), len(labels)), -5.0)
        for i, xi in enumerate(x):
            out[i, labels.index(answers[_key(xi)])] = 5.0
        return out

    prep = ModelContract("classification", labels, InputSpec(crop.size), crop=crop)
    return Predictor(net, prep, Path("stub_cls"))


def _expected_crop(image, box, crop: CropRecipe) -> bytes:
    roi = enlarge_box(box, crop.margin, image.shape)
    return _key(torch.from_numpy(crop_roi(image, roi, crop.size, crop.clahe).astype(np.float32) / 255.0)[None])


def _slice_with_discs(n: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A sagittal spine mask: ``n`` discs stacked between vertebral bodies, a canal behind them."""
    mask = np.zeros((size, size), np.uint8)
    mask[2 : size - 2, size // 2 - 12 : size // 2 + 12] = 2  # vertebral column
    mask[2 : size - 2, size // 2 + 16 : size // 2 + 22] = 3  # canal
    for k in range(n):
        cy = int(size * (k + 1) / (n + 1))
        cv2.ellipse(mask, (size // 2, cy), (14, 3), 0, 0, 360, 1, -1)
    mask = mask.astype(np.int64)
    image = (0.2 + 0.6 * (mask == 1)).astype(np.float32)
    return image, mask


@pytest.mark.parametrize("n", [4, 7])
def test_levels_named_bottom_up_and_only_trained_levels_classified(n):
    image, mask = _slice_with_discs(n)
    crop = CropRecipe(size=[32, 32], margin=0.1, clahe=CLAHE, levels=["L4-L5", "L5-S1"])
    boxes = disc_boxes(mask)
    names = assign_levels(boxes)
    answers = {_expected_crop(image, b, crop): "healthy" for b, lv in zip(boxes, names, strict=True)
               if lv in crop.levels}
    seg = stub_segmenter([(image, mask)], size=128)
    (res,) = diagnose_images([image], "sagittal", seg, oracle_classifier(answers, SAG_LABELS, crop))
    levels = [d["level"] for d in res["discs"]]  # top -> bottom
    expected = {4: ["L2-L3", "L3-L4", "L4-L5", "L5-S1"],
                7: ["T11-T12", "T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]}[n]
    assert levels == expected
    assert [d["level"] for d in res["discs"] if d["classified"]] == ["L4-L5", "L5-S1"]
    assert all("class" not in d for d in res["discs"] if not d["classified"])


def test_combination_rules():
    def sag(level, cls, p):
        return {"level": level, "class": cls, "p_herniation": p, "probability": max(p, 1 - p)}

    def ax(level, cls, p, pb=0.0):
        return {"level": level, "class": cls, "p_herniation": p, "probability": 0.9,
                "probabilities": {"bulge": pb}}

    out = {c["level"]: c for c in combine(
        [sag("L4-L5", "healthy", 0.1), sag("L5-S1", "L5-S1", 0.9)],
        [ax(None, "left", 0.8)],
    )}
    # sagittal names the level, axial the side; the unlevelled axial slice joins the one herniated level
    assert out["L5-S1"]["finding"] == "herniation" and out["L5-S1"]["side"] == "left"
    assert out["L5-S1"]["agreement"] == "agree" and out["L5-S1"]["probability"] == pytest.approx(0.85)
    assert out["L5-S1"]["axial"]["level_from"] == "sagittal"
    assert out["L4-L5"] == {**out["L4-L5"], "finding": "healthy", "side": None, "agreement": "sagittal only"}
    assert out["L4-L5"]["probability"] == pytest.approx(0.9)

    # disagreement is kept and flagged; a bulge is not a herniation; several axial slices: the worst speaks
    out = {c["level"]: c for c in combine(
        [sag("L4-L5", "L4-L5", 0.7), sag("L5-S1", "healthy", 0.2), sag("L3-L4", "healthy", 0.1)],
        [ax("L4-L5", "healthy", 0.1), ax("L5-S1", "central", 0.6), ax("L5-S1", "right", 0.9),
         ax("L3-L4", "bulge", 0.05, pb=0.8)],
    )}
    assert (out["L4-L5"]["finding"], out["L4-L5"]["side"], out["L4-L5"]["agreement"]) == (
        "herniation", "unspecified", "disagree")
    assert (out["L5-S1"]["finding"], out["L5-S1"]["side"], out["L5-S1"]["agreement"]) == (
        "herniation", "right", "disagree")
    assert (out["L3-L4"]["finding"], out["L3-L4"]["side"]) == ("bulge", "diffuse")
    assert list(out) == ["L3-L4", "L4-L5", "L5-S1"]  # top to bottom

    # two herniated sagittal levels: an unlevelled axial slice cannot be placed
    out = combine([sag("L4-L5", "L4-L5", 0.8), sag("L5-S1", "L5-S1", 0.8)], [ax(None, "left", 0.9)])
    assert [c["level"] for c in out] == ["L4-L5", "L5-S1", "unknown"]
    assert out[-1]["agreement"] == "axial only" and out[-1]["side"] == "left"


@pytest.fixture(scope="module")
def phantom_study(tmp_path_factory):
    """One patient: a sagittal slice herniated at L5-S1 and an axial slice herniated on the left."""
    from spinenet.data.phantom import generate_phantom

    root = tmp_path_factory.mktemp("study")
    out = {}
    for view, label in (("sagittal", "L5-S1"), ("axial", "left")):
        manifest = generate_phantom(root / view, view=view, patients=1, seed=3, size=128, slices_per_patient=1,
                                    class_balance={label: 1})
        row = manifest.read_text().splitlines()[1].split(",")
        image = read_image(manifest.parent / row[3])
        out[view] = (image, read_mask(manifest.parent / row[4], [0, 85, 170, 255]))
    return out


def test_phantom_study_gives_its_finding(phantom_study, tmp_path):
    crop_sag = CropRecipe(size=[64, 64], margin=0.1, clahe=CLAHE, levels=["L4-L5", "L5-S1"])
    crop_ax = CropRecipe(size=[64, 64], margin=0.1, clahe=CLAHE)
    s_img, s_mask = phantom_study["sagittal"]
    a_img, a_mask = phantom_study["axial"]
    boxes = disc_boxes(s_mask)
    assert len(boxes) >= 5
    answers = {}
    for box, level in zip(boxes, assign_levels(boxes), strict=True):
        if level in crop_sag.levels:
            answers[_expected_crop(s_img, box, crop_sag)] = "L5-S1" if level == "L5-S1" else "healthy"
    ax_answers = {_expected_crop(a_img, max(disc_boxes(a_mask), key=lambda b: b.area), crop_ax): "left"}
    blank = (np.zeros((128, 128), np.float32), np.zeros((128, 128), np.int64))
    items = [Item("P1", "sag.png", "sagittal", lambda: s_img), Item("P1", "ax.png", "axial", lambda: a_img),
             Item("P2", "blank.png", "sagittal", lambda: blank[0])]
    segs = {"sagittal": stub_segmenter([(s_img, s_mask), blank], size=128),
            "axial": stub_segmenter([(a_img, a_mask)], size=128)}
    clss = {"sagittal": oracle_classifier(answers, SAG_LABELS, crop_sag),
            "axial": oracle_classifier(ax_answers, AX_LABELS, crop_ax)}
    summary = run(items, segs, clss, tmp_path / "out", batch_size=2, progress=False)
    assert summary["studies"] == 2 and summary["images_without_disc"] == 1

    doc = json.loads((tmp_path / "out" / "P1" / "findings.json").read_text())
    combined = {c["level"]: c for c in doc["findings"]["combined"]}
    assert combined["L5-S1"]["finding"] == "herniation" and combined["L5-S1"]["side"] == "left"
    assert combined["L5-S1"]["agreement"] == "agree"
    assert combined["L4-L5"]["finding"] == "healthy"
    sag = {d["level"]: d for d in doc["findings"]["sagittal"]}
    assert sag["L5-S1"]["class"] == "L5-S1" and sag["L5-S1"]["probability"] > 0.99
    assert sag["L5-S1"]["box"] == list(boxes[-1].as_tuple())  # the lowest disc
    report = (tmp_path / "out" / "P1" / "report.txt").read_text()
    assert "L5-S1: herniation, left" in report
    overlay = cv2.imread(str(tmp_path / "out" / "P1" / "overlay.jpg"))
    # drawn at the source's resolution, small sources (128 px) enlarged to 512 px tall, both images side by side
    assert overlay is not None and overlay.shape[0] == 512 and overlay.shape[1] == 2 * 512 + 4
    # the herniation probability of each level, not the probability of the predicted class
    assert "L4-L5: no herniation, p(herniation) 0.00" in report and "L5-S1: herniation, p(herniation) 1.00" in report
    assert "class probabilities: healthy 0.00, L4-L5 0.00, L5-S1 1.00" in report  # 3 classes: each named
    assert "p(herniation) = 1 - p(healthy)" in report

    blank_doc = json.loads((tmp_path / "out" / "P2" / "findings.json").read_text())
    assert blank_doc["images"][0]["status"].startswith("no disc found") and blank_doc["findings"] == {}
    assert "No disc found in 1 image(s): blank.png" in (tmp_path / "out" / "P2" / "report.txt").read_text()
    # a second run refuses the non-empty folder unless told to overwrite
    with pytest.raises(ConfigError, match="not empty"):
        run(items, segs, clss, tmp_path / "out", progress=False)
    run(items[:1], segs, clss, tmp_path / "out", overwrite=True, progress=False)


# ---------------------------------------------------------------------------------------------------------
# CLI on checkpoints and DICOM
# ---------------------------------------------------------------------------------------------------------
def make_checkpoint(path: Path, overrides: list[str]) -> Path:
    """A spinenet checkpoint with random weights built from a composed config (no training needed)."""
    from spinenet.config import compose, to_plain_dict
    from spinenet.tasks.common import build_module

    cfg = compose("train", overrides, output_dir=path.parent / "run")
    ds = cfg.data.dataset
    torch.manual_seed(0)
    module = build_module(cfg, list(ds.get("class_names") or []), list(ds.get("label_names") or []))
    path.parent.mkdir(parents=True, exist_ok=True)
    module.run_config = to_plain_dict(cfg)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)  # the run config and the model contract, as training writes them
    torch.save(ckpt, path)
    return path


SEG_OVERRIDES = ["experiment=seg/sustersic2022_sagittal", "data.image_size=[64,64]"]
CLS_OVERRIDES = ["experiment=cls/sustersic2022_sagittal"]

PHI = {"PatientName": "DOE^JANE", "PatientID": "PID-12345", "PatientBirthDate": "19700101"}


def _write_dicom(folder: Path, images: list[np.ndarray], no_pixels: tuple[int, ...] = ()) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    series = generate_uid()
    for k, img in enumerate(images):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{k}"), {}, file_meta=meta, preamble=b"\0" * 128)
        for key, value in PHI.items():
            setattr(ds, key, value)
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, series
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesDescription, ds.InstanceNumber = "MR", "T2 SAG DOE^JANE", k + 1
        ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # sagittal
        ds.ImagePositionPatient = [float(k) * 4.0, 0.0, 0.0]
        ds.Rows, ds.Columns = img.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if k not in no_pixels:
            ds.PixelData = (img * 4000).astype(np.uint16).tobytes()
        ds.save_as(folder / f"IM{k}", enforce_file_format=True)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {"seg": make_checkpoint(root / "seg" / "seg.ckpt", SEG_OVERRIDES),
            "cls": make_checkpoint(root / "cls" / "cls.ckpt", CLS_OVERRIDES)}


def test_dicom_series_outputs_carry_no_phi(phantom_study, checkpoints, tmp_path, capsys):
    from spinenet.utils.privacy import scan_for_phi

    s_img = phantom_study["sagittal"][0]
    _write_dicom(tmp_path / "DOE_JANE_dicom", [s_img, s_img[:, ::-1].copy()])
    out = tmp_path / "out"
    rc = cli_main(["diagnose", str(tmp_path / "DOE_JANE_dicom"), "--segmenter", str(checkpoints["seg"]),
                   "--classifier", str(checkpoints["cls"]), "--out", str(out), "--no-progress"])
    assert rc == 0
    doc = json.loads((out / "study1" / "findings.json").read_text())
    assert [im["image"] for im in doc["images"]] == ["series1_slice_000", "series1_slice_001"]
    assert doc["images"][0]["view"] == "sagittal"  # from the slice orientation
    assert doc["images"][0]["dicom"]["Modality"] == "MR"
    assert "SeriesDescription" not in doc["images"][0]["dicom"]  # it held the patient's name
    values = [*PHI.values(), "DOE", "JANE", "1970-01-01"]
    assert scan_for_phi(out, values) == []
    assert scan_for_phi([out / "study1" / "findings.json"], ["series1_slice_000"])  # the scan does find text
    printed = capsys.readouterr().out
    assert "diagnosis written" in printed and not any(v.lower() in printed.lower() for v in values)


def test_cli_rejects_a_classifier_as_segmenter(checkpoints, phantom_study, tmp_path):
    cv2.imwrite(str(tmp_path / "s.png"), (phantom_study["sagittal"][0] * 255).astype(np.uint8))
    rc = cli_main(["diagnose", str(tmp_path / "s.png"), "--segmenter", str(checkpoints["cls"]),
                   "--classifier", str(checkpoints["cls"]), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2


def test_crop_recipe_of_third_party_crops_reaches_diagnosis():
    """Crops made elsewhere (SPIDER's) have no summary.json: the data config's crop_recipe says how to crop."""
    from omegaconf import OmegaConf

    from spinenet.contract import ModelContract

    saved = OmegaConf.create(
        {
            "task": "classification",
            "data": {
                "image_size": [48, 112],
                "dataset": {"root": "/nonexistent/disc_crops", "label_names": ["0", "1"]},
                "clahe": None,
                "crop_recipe": {"margin": [0.05, 0.8], "clahe": None, "levels": ["L4-L5", "L5-S1"]},
            },
        }
    )
    crop = ModelContract.from_run_config(saved).crop
    # crops are cut at their own size and resized by the classifier's preprocessing, as in training
    assert crop.margin == (0.05, 0.8) and crop.clahe is None and crop.size is None
    assert crop.levels == ("L4-L5", "L5-S1") and crop.source == "data.crop_recipe"
    saved.data.crop_recipe = {"margin": 0.1, "pad": 3}
    with pytest.raises(ConfigError, match=r"data.crop_recipe: unknown key\(s\) \['pad'\]"):
        ModelContract.from_run_config(saved)
    # without a recipe or summary.json: the Šušteršič defaults (10 %, CLAHE 2.0 / 4x4)
    del saved.data["crop_recipe"]
    crop = ModelContract.from_run_config(saved).crop
    assert crop.margin == 0.1 and crop.clahe == {"clip": 2.0, "tiles": [4, 4]} and crop.source == "default"


def test_implausible_components_are_left_out_and_listed_in_findings(tmp_path):
    """A tall strip below the discs (as a T2-SPACE U-Net marked on SPIDER slices) would become L5-S1 and
    rename every disc above it; it is left out before naming and listed in findings.json."""
    from spinenet.pipeline.diagnose import write_study

    image, mask = _slice_with_discs(4)
    mask[112:126, 60:64] = 1  # 4 px wide, 14 px tall, below the lowest disc
    image = (0.2 + 0.6 * (mask == 1)).astype(np.float32)
    crop = CropRecipe(size=[32, 32], margin=0.1, clahe=CLAHE, levels=None)
    answers = {_expected_crop(image, b, crop): "healthy" for b in disc_boxes(mask)}
    seg = stub_segmenter([(image, mask)], size=128)
    (res,) = diagnose_images([image], "sagittal", seg, oracle_classifier(answers, SAG_LABELS, crop))
    assert [d["level"] for d in res["discs"]] == ["L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    doc = write_study(tmp_path, "s1", [dict(res, image="slice.png", pixels=image)],
                      {"segmenter": "stub", "classifier": "stub"})
    (rejected,) = json.loads((tmp_path / "s1" / "findings.json").read_text())["images"][0]["rejected_components"]
    assert rejected["box"] == [60, 112, 64, 126] and "taller than wide" in rejected["reason"]
    assert doc["study"] == "s1"


def test_each_disc_reaches_the_classifier_with_its_level():
    """A classifier with a level prior gets every crop's named level, in batch order: an offset that makes
    one level's discs herniated must flag exactly that level."""
    image, mask = _slice_with_discs(5)
    crop = CropRecipe(size=[32, 32], margin=0.1, clahe=CLAHE, levels=None)
    answers = {_expected_crop(image, b, crop): "healthy" for b in disc_boxes(mask)}
    cls = oracle_classifier(answers, SAG_LABELS, crop)
    cls.contract = cls.contract.with_level_offsets({"L4-L5": [0.0, 20.0, 0.0], "*": [0.0, 0.0, 0.0]})
    seg = stub_segmenter([(image, mask)], size=128)
    (res,) = diagnose_images([image], "sagittal", seg, cls, batch_size=1)
    assert {d["level"]: d["class"] for d in res["discs"]} == {
        "L1-L2": "healthy", "L2-L3": "healthy", "L3-L4": "healthy", "L4-L5": "L4-L5", "L5-S1": "healthy"}


def test_an_axial_slice_reaches_the_classifier_with_its_given_level():
    image, mask = _slice_with_discs(1)
    crop = CropRecipe(size=[32, 32], margin=0.1, clahe=CLAHE, levels=None)
    (box,) = disc_boxes(mask)
    cls = oracle_classifier({_expected_crop(image, box, crop): "healthy"}, AX_LABELS, crop)
    cls.contract = cls.contract.with_level_offsets({"L4-L5": [0.0, 0.0, 0.0, 20.0, 0.0], "*": [0.0] * 5})
    seg = stub_segmenter([(image, mask)], size=128)
    got = [diagnose_images([image], "axial", seg, cls, image_levels=[lv])[0]["discs"][0]["class"]
           for lv in ("L4-L5", "L5-S1", None)]
    assert got == ["left", "healthy", "healthy"]


# ---------------------------------------------------------------------------------------------------------
# fault isolation, "I don't know", study folders, what people read
# ---------------------------------------------------------------------------------------------------------
def _png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), (np.clip(image, 0, 1) * 255).astype(np.uint8))
    return path


def test_a_folder_with_bad_files_is_diagnosed_file_by_file(phantom_study, checkpoints, tmp_path, capsys):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    from spinenet.errors import EXIT_PARTIAL

    src = tmp_path / "scans"
    good = _png(src / "good.png", phantom_study["sagittal"][0])
    (src / "zero.png").write_bytes(b"")
    data = good.read_bytes()
    (src / "truncated.png").write_bytes(data[: len(data) // 2])
    (src / "notes.txt").write_text("not an image")
    ds = Dataset()  # a DICOM file without pixel data (and without an image: no Rows/Columns)
    ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = "MR", MRImageStorage, generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = MRImageStorage, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(src / "nopixels.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    rc = cli_main(["diagnose", str(src), "--segmenter", str(checkpoints["seg"]), "--classifier",
                   str(checkpoints["cls"]), "--out", str(out), "--no-progress"])
    assert rc == EXIT_PARTIAL
    summary = json.loads((out / "summary.json").read_text())
    by_file = {r["file"]: r for r in summary["inputs"]}
    assert set(by_file) == {"good.png", "zero.png", "truncated.png", "notes.txt", "dicom_file_000"}
    assert by_file["zero.png"]["status"] == "failed" and by_file["zero.png"]["reason"] == "empty file (0 bytes)"
    assert by_file["truncated.png"]["reason"].startswith("truncated or corrupt PNG")
    assert by_file["notes.txt"]["status"] == "skipped" and "not an image (.txt" in by_file["notes.txt"]["reason"]
    assert by_file["dicom_file_000"]["status"] == "skipped"  # a header without an image: nothing to read
    assert "DICOM file without" in by_file["dicom_file_000"]["reason"]
    assert by_file["good.png"]["status"] not in ("failed", "skipped")  # the good image was diagnosed
    assert (out / "good" / "findings.json").is_file() and (out / "good" / "overlay.jpg").is_file()
    assert json.loads((out / "zero" / "findings.json").read_text())["images"][0]["reason"] == "empty file (0 bytes)"
    assert "empty file (0 bytes)" in (out / "zero" / "report.txt").read_text()
    page = (out / "index.html").read_text()
    assert "empty file (0 bytes)" in page and "truncated or corrupt PNG" in page and "notes.txt" in page
    printed = capsys.readouterr().out
    assert f"diagnose: 5 inputs, 1 {by_file['good.png']['status'].split(' for')[0]}" in printed
    assert ", 2 failed, 2 skipped (see" in printed
    assert f"(see {out / 'summary.json'})" in printed.strip().splitlines()[-1]


def test_a_dicom_slice_without_pixel_data_is_listed(phantom_study, checkpoints, tmp_path):
    from spinenet.utils.privacy import scan_for_phi

    s_img = phantom_study["sagittal"][0]
    _write_dicom(tmp_path / "DOE_JANE_dicom", [s_img, s_img, s_img], no_pixels=(1,))
    out = tmp_path / "out"
    rc = cli_main(["diagnose", str(tmp_path / "DOE_JANE_dicom"), "--segmenter", str(checkpoints["seg"]),
                   "--classifier", str(checkpoints["cls"]), "--out", str(out), "--no-progress"])
    assert rc == 3
    images = json.loads((out / "study1" / "findings.json").read_text())["images"]
    assert [im["image"] for im in images] == ["series1_slice_000", "series1_slice_001", "series1_slice_002"]
    assert images[1]["status"] == "failed" and images[1]["reason"] == "DICOM file without pixel data"
    assert images[0]["status"] != "failed" and images[2]["status"] != "failed"
    assert scan_for_phi(out, [*PHI.values(), "DOE", "JANE"]) == []


def _stub_run(tmp_path, items, pairs, classes=4):
    crop = CropRecipe(size=[32, 32], margin=0.1, clahe=CLAHE, levels=None)

    def net(x):
        return torch.zeros((len(x), len(SAG_LABELS)))

    cls = Predictor(net, ModelContract("classification", SAG_LABELS, InputSpec((32, 32)), crop=crop), Path("c"))
    seg = stub_segmenter(pairs, classes=classes, size=128)
    return run(items, {"sagittal": seg}, {"sagittal": cls}, tmp_path / "out", batch_size=2, progress=False)


def test_axial_slice_and_noise_given_as_sagittal_name_no_level(phantom_study, tmp_path):
    """An axial slice through the sagittal pipeline once gave 12 "discs" T6-T7..L5-S1, status ok."""
    s_img, s_mask = phantom_study["sagittal"]
    a_img, a_mask = phantom_study["axial"]
    rng = np.random.default_rng(0)
    noise = rng.random((128, 128)).astype(np.float32)
    # what a segmenter makes of noise: blobs of every class wherever the smoothed noise is bright or dark
    smooth = cv2.GaussianBlur(noise, (0, 0), 3)
    noise_mask = np.digitize(smooth, np.quantile(smooth, [0.55, 0.7, 0.85])).astype(np.int64)
    twelve, twelve_mask = _slice_with_discs(12)
    items = [Item("sag", "sag.png", "sagittal", lambda: s_img), Item("ax", "ax.png", "sagittal", lambda: a_img),
             Item("noise", "noise.png", "sagittal", lambda: noise),
             Item("twelve", "twelve.png", "sagittal", lambda: twelve)]
    pairs = [(s_img, s_mask), (a_img, a_mask), (noise, noise_mask), (twelve, twelve_mask)]
    summary = _stub_run(tmp_path, items, pairs)
    status = {r["file"]: r for r in summary["inputs"]}
    assert status["sag.png"]["status"] == "ok"
    for name in ("ax.png", "noise.png", "twelve.png"):
        assert status[name]["status"] == "implausible for sagittal", (name, status[name])
    assert "vertebra above and below" in status["ax.png"]["reason"]
    assert "12 disc regions" in status["twelve.png"]["reason"]
    assert summary["status_counts"]["implausible"] == 3
    for study in ("ax", "noise", "twelve"):
        doc = json.loads((tmp_path / "out" / study / "findings.json").read_text())
        assert doc["findings"] == {} and doc["images"][0]["discs"] == []
        report = (tmp_path / "out" / study / "report.txt").read_text()
        assert f"{study}.png: implausible for sagittal, no level named (" in report
    page = (tmp_path / "out" / "index.html").read_text()
    assert page.count("implausible for sagittal") >= 3
    # and the other way round: a sagittal slice is not one axial disc
    from spinenet.pipeline.diagnose import checked_disc_boxes

    assert "separate disc regions" in checked_disc_boxes(s_mask, "axial", 1, 20, ["background", "disc",
                                                                                   "canal", "posterior"])[2]
    assert checked_disc_boxes(a_mask, "axial", 1, 20, ["background", "disc", "canal", "posterior"])[2] is None


@requires_spider
def test_spider_ground_truth_slices_are_plausible_sagittal_spines():
    """Ground-truth masks of real SPIDER slices through the same check: every slice of 12 patients passes
    (patient 50's slices, with a disc-labelled piece below L5-S1 that would rename every level, do not)."""
    import pandas as pd

    from spinenet.pipeline.diagnose import checked_disc_boxes

    root = SPIDER / "seg_t2space"
    rows = pd.read_csv(root / "manifest.csv", dtype=str)
    names = ["background", "disc", "vertebra", "canal"]
    kept = rows[rows.patient_id.isin(sorted(set(rows.patient_id) - {"50"})[:12])]
    for row in kept.itertuples():
        mask = read_mask(root / row.mask, [0, 29, 76, 150])
        boxes, _, why = checked_disc_boxes(mask, "sagittal", 1, 20, names)
        assert why is None and 5 <= len(boxes) <= 10, (row.mask, why)
    mask = read_mask(root / "masks" / "50_t2_SPACE_slice86.png", [0, 29, 76, 150])
    assert "no vertebra between" in checked_disc_boxes(mask, "sagittal", 1, 20, names)[2]


@pytest.mark.parametrize("alternate, plausible", [(False, True), (True, False)])
def test_the_canal_must_run_on_one_side_of_the_discs(alternate, plausible):
    """Three discs stacked with vertebrae between them: a spine when the canal runs behind all of them, not
    when it jumps from side to side (as a sagittal U-Net made it of an axial slice)."""
    from spinenet.pipeline.diagnose import checked_disc_boxes

    mask = np.zeros((128, 128), np.uint8)
    mask[10:118, 40:80] = 2  # vertebrae
    for k, row in enumerate((30, 60, 90)):
        mask[row - 3:row + 3, 38:82] = 1  # discs
        left = alternate and k == 1
        mask[row - 10:row + 10, (20 if left else 90):(26 if left else 96)] = 3  # canal beside each disc
    _, _, why = checked_disc_boxes(mask, "sagittal", 1, 20, ["background", "disc", "vertebra", "canal"])
    assert (why is None) == plausible, why
    if not plausible:
        assert "canal is not on one side" in why


def test_canal_marked_far_in_front_of_the_spine_does_not_turn_it_round():
    """The canal right behind five discs, and a wide canal-labelled strip far in front of two of them (the
    bright edge of the body, as a T2-SPACE U-Net marked on T2 TSE slices): still a spine, facing left, and
    measured as such; the strip alone near the discs would make it implausible."""
    from spinenet.pipeline.diagnose import checked_disc_boxes
    from spinenet.pipeline.measurements import ANTERIOR_LEFT, orientation

    names = ["background", "disc", "vertebra", "canal"]
    mask = np.zeros((200, 220), np.uint8)
    mask[5:195, 100:140] = 2
    mask[5:195, 144:152] = 3  # the canal, behind (right of) the discs
    for row in (30, 65, 100, 135, 170):
        mask[row - 4:row + 4, 98:142] = 1
    mask[20:80, 2:40] = 3  # far in front of two discs: 38 px wide, more canal than the real one there
    boxes, _, why = checked_disc_boxes(mask, "sagittal", 1, 20, names)
    assert why is None and len(boxes) == 5
    assert orientation(mask, discs=[b.as_tuple() for b in boxes]) == ANTERIOR_LEFT
    near = mask.copy()
    near[20:80, 60:98] = 3  # the same strip beside the discs: the canal on both sides
    assert "canal is not on one side" in checked_disc_boxes(near, "sagittal", 1, 20, names)[2]


def test_a_false_disc_beside_the_column_is_left_out_not_the_whole_slice():
    """Five discs stacked with vertebrae and the canal behind them, and a disc-labelled blob far in front (bright
    fat on another MRI contrast): the blob is listed as off the spine and the five discs keep their levels;
    with the blob counted, the stack would be implausible ("not stacked along the spine")."""
    from spinenet.pipeline.diagnose import checked_disc_boxes
    from spinenet.pipeline.plausibility import sagittal_implausibility

    names = ["background", "disc", "vertebra", "canal"]
    mask = np.zeros((200, 160), np.uint8)
    mask[5:195, 60:100] = 2  # vertebrae
    mask[5:195, 104:112] = 3  # canal behind the discs
    rows = (30, 65, 100, 135, 170)
    for row in rows:
        mask[row - 4:row + 4, 58:102] = 1
    mask[150:158, 4:30] = 1  # in front of the spine, between two discs' rows
    components = disc_boxes(mask, 1, 20)
    assert "not stacked along the spine" in sagittal_implausibility(mask, components, names)
    boxes, rejected, why = checked_disc_boxes(mask, "sagittal", 1, 20, names)
    assert why is None
    assert sorted(b.cy for b in boxes) == pytest.approx(rows, abs=1)
    (off,) = rejected
    assert off["box"] == [4, 150, 30, 158] and "not on the spine" in off["reason"]
    assert assign_levels(boxes)[boxes.index(max(boxes, key=lambda b: b.cy))] == "L5-S1"


def test_study_ids_keep_distinct_folders_inside_out(phantom_study, tmp_path):
    from spinenet.pipeline.diagnose import study_folders

    folders = study_folders(["AB 123", "AB_123", "p/1", "p_1", "../x", "..", "summary.json", "ab_123"])
    assert len(set(f.lower() for f in folders.values())) == len(folders)
    assert folders["p_1"] == "p_1" and folders["p/1"].startswith("p_1-")
    assert all("/" not in f and not f.startswith(".") for f in folders.values())

    s_img, s_mask = phantom_study["sagittal"]
    ids = ["AB 123", "AB_123", "p/1", "p_1", "../x", "<b>&x"]
    items = [Item(i, f"{k}.png", "sagittal", lambda: s_img) for k, i in enumerate(ids)]
    items.append(_stub_item_missing())
    summary = _stub_run(tmp_path, items, [(s_img, s_mask)])
    out = tmp_path / "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written beside --out
    mapping = summary["study_folders"]
    assert set(mapping) == {*ids, "P9"} and len(set(mapping.values())) == len(mapping)
    for raw, folder in mapping.items():
        doc = json.loads((out / folder / "findings.json").read_text())
        assert doc["study"] == raw and doc["folder"] == folder
    assert {r["file"]: r["status"] for r in summary["inputs"]}["missing.png"] == "failed"
    page = (out / "index.html").read_text()
    assert "&lt;b&gt;&amp;x" in page and "<b>&x" not in page
    assert f'<img src="{mapping["AB_123"]}/overlay.jpg" width="240"' in page
    assert "<script" not in page and "http" not in page


def _stub_item_missing() -> Item:
    from spinenet.pipeline.diagnose import _unloadable

    return _unloadable("P9", "missing.png", "sagittal", "failed", "manifest line 3: file not found under x")


def test_labels_never_overlap_and_grow_with_the_image():
    from spinenet.utils.overlay import draw_labels, label_style

    rgb = np.zeros((512, 300, 3), np.uint8)
    boxes = draw_labels(rgb, [((100, 200 + k, 180, 210 + k), f"L{k} healthy p(hern) 0.10", (0, 255, 0))
                              for k in range(6)])
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    assert label_style(2048)[0] > label_style(512)[0] and label_style(2048)[1] > label_style(512)[1]


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_overlay_blends_and_outlines_every_class_pixel(dtype):
    """The blend and outlines are worked out in the classes' bounding box only: the picture must be the one
    the whole image gives, classes on the image's border and single pixels included."""
    from spinenet.utils.overlay import PALETTE, overlay_mask

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (60, 80), dtype=np.uint8)
    mask = np.zeros((60, 80), dtype)
    mask[0:6, 5:14] = 1  # on the top border (and the classes' box starts at x 5)
    mask[20:31, 30:44] = 2
    mask[59, 79] = 3  # one pixel in the far corner
    mask[25, 70] = 1
    rgb = np.repeat(image[..., None], 3, axis=2)
    want = rgb.copy()
    fg = mask > 0
    blend = np.rint(0.6 * rgb.astype(np.float64) + 0.4 * PALETTE[mask].astype(np.float64))
    want[fg] = blend[fg].astype(np.uint8)
    for c in (1, 2, 3):
        contours, _ = cv2.findContours((mask == c).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(want, contours, -1, tuple(int(v) for v in PALETTE[c]), 1)
    got = overlay_mask(image, mask)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # addWeighted's rounding
    assert (got[~fg] == rgb[~fg]).all()  # nothing drawn outside the classes
    assert (got[59, 79] == PALETTE[3]).all() and (got[0, 5] == PALETTE[1]).all()  # outlines at the borders
    assert (overlay_mask(image, np.zeros_like(mask)) == rgb).all()


def test_phantom_ground_truth_is_plausible_in_its_own_view_only(tiny_phantom):
    import pandas as pd

    from spinenet.pipeline.diagnose import checked_disc_boxes

    names = {"sagittal": ["background", "disc", "vertebra", "canal"],
             "axial": ["background", "disc", "canal", "posterior"]}
    for view, root in tiny_phantom.items():
        for row in pd.read_csv(root / "manifest.csv", dtype=str).itertuples():
            mask = read_mask(root / row.mask, [0, 85, 170, 255])
            # 64 px images: discs of a few dozen pixels, so a smaller min_area than diagnose's default
            assert checked_disc_boxes(mask, view, 1, 5, names[view])[2] is None, (view, row.mask)
            other = "axial" if view == "sagittal" else "sagittal"
            assert checked_disc_boxes(mask, other, 1, 5, names[other])[2], (view, "as", other, row.mask)


def _jittered(predictor: Predictor, seed: int) -> Predictor:
    """``predictor`` taking a random few milliseconds per call, so that pipeline stages finish out of order."""
    import random
    import time

    rng, inner = random.Random(seed), predictor.net

    def net(x):
        time.sleep(rng.uniform(0, 0.02))
        return inner(x)

    predictor.net = net
    return predictor


def test_pipeline_keeps_input_order_and_study_grouping(phantom_study, tmp_path):
    import pandas as pd

    s_img, s_mask = phantom_study["sagittal"]
    images = [np.float32(0.5 + 0.04 * k) * s_img for k in range(11)]
    study = [f"s{(7 * k) % 11:02d}" for k in range(11)]
    study[9] = study[2]  # one study of two images that are not consecutive
    items = [Item(study[k], f"{k:02d}.png", "sagittal", lambda im=im: im) for k, im in enumerate(images)]
    items.insert(5, _stub_item_missing())
    crop = CropRecipe(size=[32, 32], margin=0.1, clahe=CLAHE, levels=None)
    cls = Predictor(lambda x: torch.zeros((len(x), len(SAG_LABELS))),
                    ModelContract("classification", SAG_LABELS, InputSpec((32, 32)), crop=crop), Path("c"))
    seg = _jittered(stub_segmenter([(im, s_mask) for im in images], size=128), seed=0)
    out = tmp_path / "out"
    summary = run(items, {"sagittal": seg}, {"sagittal": _jittered(cls, seed=1)}, out, batch_size=2,
                  progress=False, window=3, threads=2)
    names = [i.name for i in items]
    assert [r["file"] for r in summary["inputs"]] == names
    assert [r["status"] for r in summary["inputs"]].count("ok") == 11
    rows = pd.read_csv(out / "findings.csv", dtype=str)
    assert list(dict.fromkeys(rows.image)) == names  # one row per disc, in input order
    assert rows[rows.status == "ok"].level.notna().all() and (rows.status == "ok").sum() > 11  # several discs each
    shared = json.loads((out / summary["study_folders"][study[2]] / "findings.json").read_text())
    assert [im["image"] for im in shared["images"]] == ["02.png", "09.png"]
    assert (out / summary["study_folders"][study[2]] / "overlay.jpg").is_file()
    page = (out / "index.html").read_text()
    positions = [page.index(f"<h2>{s}</h2>") for s in dict.fromkeys(i.study for i in items)]
    assert positions == sorted(positions)  # index.html lists studies in input order


def test_pipeline_writes_studies_before_reading_the_rest(phantom_study, tmp_path):
    """Memory does not grow with the input: a study is written while later files are still unread, and the
    images read but not yet written never exceed the batches in flight."""
    s_img, s_mask = phantom_study["sagittal"]
    out = tmp_path / "out"
    images = [np.float32(0.5 + 0.02 * k) * s_img for k in range(24)]
    ahead = []  # per file read: files read so far minus studies written so far

    def load(k):
        ahead.append(k + 1 - len(list(out.glob("*/findings.json"))))
        return images[k]

    items = [Item(f"p{k:02d}", f"p{k:02d}.png", "sagittal", lambda k=k: load(k)) for k in range(24)]
    crop = CropRecipe(size=[32, 32], margin=0.1, clahe=CLAHE, levels=None)
    cls = Predictor(lambda x: torch.zeros((len(x), len(SAG_LABELS))),
                    ModelContract("classification", SAG_LABELS, InputSpec((32, 32)), crop=crop), Path("c"))
    seg = stub_segmenter([(im, s_mask) for im in images], size=128)
    batch, window, threads = 2, 2, 1
    summary = run(items, {"sagittal": seg}, {"sagittal": cls}, out, batch_size=batch, progress=False,
                  window=window, threads=threads)
    assert summary["status_counts"]["ok"] == 24 and len(ahead) == 24
    # batches in flight, the batch being read, and the study writes still queued (two per writer thread)
    assert max(ahead) <= (window + 1) * batch + 2 * threads, ahead
    assert ahead[-1] < 24 - batch  # most studies were on disk before the last file was read


def test_a_long_study_keeps_only_the_pixels_its_overlay_draws(phantom_study, tmp_path, monkeypatch):
    import spinenet.pipeline.diagnose as diagnose

    s_img, s_mask = phantom_study["sagittal"]
    images = [np.float32(0.5 + 0.04 * k) * s_img for k in range(11)]
    items = [Item("long", f"{k:02d}.png", "sagittal", lambda im=im: im) for k, im in enumerate(images)]
    written = []

    def spy(out, study, recs, models, *args):
        written.append([r.get("pixels") is not None for r in recs])
        return write_study(out, study, recs, models, *args)

    write_study = diagnose.write_study
    monkeypatch.setattr(diagnose, "write_study", spy)
    summary = _stub_run(tmp_path, items, [(im, s_mask) for im in images])
    assert summary["status_counts"]["ok"] == 11
    assert written == [[True] * diagnose.MAX_OVERLAY_IMAGES + [False] * 3]
    doc = json.loads((tmp_path / "out" / "long" / "findings.json").read_text())
    assert len(doc["images"]) == 11 and doc["overlay_images"] == diagnose.MAX_OVERLAY_IMAGES


@pytest.mark.parametrize("overlays", ["flagged", "none"])
def test_overlays_only_for_flagged_studies_or_none(phantom_study, tmp_path, overlays):
    from spinenet.pipeline.diagnose import _unloadable

    s_img, s_mask = phantom_study["sagittal"]
    images = [np.float32(0.6 + 0.1 * k) * s_img for k in range(2)]
    # study "fine": one image, every disc healthy; study "P9": a good image and a file that failed
    items = [Item("fine", "a.png", "sagittal", lambda: images[0]), Item("P9", "b.png", "sagittal", lambda: images[1]),
             _unloadable("P9", "missing.png", "sagittal", "failed", "file not found")]
    crop = CropRecipe(size=[32, 32], margin=0.1, clahe=CLAHE, levels=None)
    cls = Predictor(lambda x: torch.zeros((len(x), len(SAG_LABELS))),  # arg-max: healthy
                    ModelContract("classification", SAG_LABELS, InputSpec((32, 32)), crop=crop), Path("c"))
    seg = stub_segmenter([(im, s_mask) for im in images], size=128)
    out = tmp_path / "out"
    summary = run(items, {"sagittal": seg}, {"sagittal": cls}, out, batch_size=2, progress=False, overlays=overlays)
    assert summary["status_counts"]["ok"] == 2 and summary["discs"] > 2
    fine, p9 = (json.loads((out / s / "findings.json").read_text()) for s in ("fine", "P9"))
    assert not (out / "fine" / "overlay.jpg").exists() and fine["overlay"] is None
    assert (out / "P9" / "overlay.jpg").is_file() == (overlays == "flagged")
    assert p9["overlay"] == ("overlay.jpg" if overlays == "flagged" else None)
    assert ("P9/overlay.jpg" in (out / "index.html").read_text()) == (overlays == "flagged")
    with pytest.raises(ConfigError, match="--overlays"):
        run(items, {"sagittal": seg}, {"sagittal": cls}, tmp_path / "o2", overlays="some")


def _jpeg_sampling_factors(data: bytes) -> list[int]:
    """Each colour component's sampling factors in a baseline JPEG's frame header (0x11: full resolution)."""
    sof = data.index(b"\xff\xc0")
    n = data[sof + 9]
    return [data[sof + 10 + 3 * i + 1] for i in range(n)]


def test_overlay_is_a_full_colour_jpeg_by_default_or_a_lossless_png(phantom_study, tmp_path):
    s_img, s_mask = phantom_study["sagittal"]
    items = [Item("P1", "a.png", "sagittal", lambda: s_img)]
    crop = CropRecipe(size=[32, 32], margin=0.1, clahe=CLAHE, levels=None)
    cls = Predictor(lambda x: torch.zeros((len(x), len(SAG_LABELS))),
                    ModelContract("classification", SAG_LABELS, InputSpec((32, 32)), crop=crop), Path("c"))
    seg = stub_segmenter([(s_img, s_mask)], size=128)
    pictures = {}
    for fmt in ("jpg", "png"):
        out = tmp_path / fmt
        kwargs = {} if fmt == "jpg" else {"overlay_format": "png"}  # jpg: the default
        run(items, {"sagittal": seg}, {"sagittal": cls}, out, batch_size=2, progress=False, **kwargs)
        doc = json.loads((out / "P1" / "findings.json").read_text())
        assert doc["overlay"] == f"overlay.{fmt}" and sorted(p.name for p in (out / "P1").glob("overlay.*")) == [
            f"overlay.{fmt}"]
        assert f'<img src="P1/overlay.{fmt}"' in (out / "index.html").read_text()
        data = (out / "P1" / doc["overlay"]).read_bytes()
        assert data.startswith(b"\xff\xd8" if fmt == "jpg" else b"\x89PNG")
        pictures[fmt] = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)
    # colour at full resolution (4:2:0 would smear the 1-px outlines and box edges) and close to the PNG
    assert _jpeg_sampling_factors((tmp_path / "jpg" / "P1" / "overlay.jpg").read_bytes()) == [0x11] * 3
    assert pictures["jpg"].shape == pictures["png"].shape
    error = np.abs(pictures["jpg"] - pictures["png"])
    assert error.mean() < 2.5 and np.percentile(error, 99) < 24
    with pytest.raises(ConfigError, match="--overlay-format"):
        run(items, {"sagittal": seg}, {"sagittal": cls}, tmp_path / "o2", overlay_format="gif")


def test_inputs_are_collected_from_typed_arguments(tmp_path):
    from spinenet.pipeline.diagnose import collect_items, manifest_items

    cv2.imwrite(str(tmp_path / "a.png"), np.full((16, 16), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.full((16, 16), 30, np.uint8))
    csv = tmp_path / "studies.csv"
    csv.write_text("image,pid,plane,lvl\na.png,P1,sagittal,\nb.png,P1,axial,L4-L5\ngone.png,P2,axial,\n")
    items = manifest_items(csv, study_col="pid", view_col="plane", level_col="lvl")
    assert [(i.study, i.name, i.view, i.level, i.status) for i in items] == [
        ("P1", "a.png", "sagittal", None, ""), ("P1", "b.png", "axial", "L4-L5", ""),
        ("P2", "gone.png", "axial", None, "failed")]
    assert items[1].load().mean() == pytest.approx(30 / 255, abs=0.01)  # b.png, read in [0, 1]
    # the manifest wins over an input; --study names one study for every row, --view every row's view
    via_collect = collect_items(tmp_path / "a.png", manifest=csv, view="axial", study="all")
    assert {(i.study, i.view) for i in via_collect} == {("all", "axial")}
    one = collect_items(tmp_path / "b.png", view="axial", study="S")
    assert [(i.study, i.name, i.view) for i in one] == [("S", "b.png", "axial")]
    with pytest.raises(ConfigError, match="give an INPUT"):
        collect_items()
