"""`spinenet data import`: DICOM series and NIfTI / MHA volumes into the project layout, without PHI."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from spinenet.cli.data_import import build_import_parser, main_import
from spinenet.data.importers import (
    ImportOptions,
    apply_label_map,
    import_dicom_series,
    import_dicom_tree,
    import_volume,
    import_volume_folder,
    parse_label_map,
    run_import,
    spider_label_map,
)
from spinenet.errors import ConfigError, DataError
from spinenet.utils.privacy import pseudonymize, scan_for_phi

SALT = "test-salt-8d1f"
N, H, W = 8, 32, 32
SPACING = (0.5, 0.625, 4.0)  # x (along a row), y (down a column), between slices
ORIGIN = (-10.0, -20.0, 30.0)
ROW_DIR, COL_DIR = (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)  # a sagittal acquisition: normal along +x
STUDY_UID, SERIES_UID = generate_uid(), generate_uid()
PHI = {
    "PatientName": "DOE^JANE",
    "PatientID": "PID-12345",
    "PatientBirthDate": "19700101",
    "PatientAddress": "12 Elm Street Springfield",
    "OtherPatientIDs": "MRN-556677",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "InstitutionName": "General Hospital",
    "InstitutionAddress": "1 Hospital Road Shelbyville",
    "StudyDate": "20240315",
    "SeriesDate": "20240316",
    "AcquisitionDate": "20240317",
    "ContentDate": "20240318",
    "StudyTime": "101512",
    "AccessionNumber": "ACC-998877",
    "StudyID": "STUDY-4242",
    "DeviceSerialNumber": "SN-77123",
    "StationName": "MRI-ROOM-3",
    "StudyInstanceUID": STUDY_UID,
    "SeriesInstanceUID": SERIES_UID,
}


def _slice_pixels(k: int) -> np.ndarray:
    """Slice k: a gradient plus 100*k, so sorting errors show in the output."""
    return (np.add.outer(np.arange(H), np.arange(W)) * 3 + 100 * k + 50).astype(np.uint16)


def write_dicom_series(folder: Path, *, description: str = "T2 SAG", series_uid: str = SERIES_UID,
                       pixels=_slice_pixels) -> list[str]:
    """An 8-slice MR series with PHI in its headers; files named in shuffled order. Returns SOP UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    normal = np.cross(ROW_DIR, COL_DIR)
    sop_uids = []
    for rank, k in enumerate([5, 2, 7, 0, 3, 6, 1, 4]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{rank:04d}"), {}, file_meta=meta, preamble=b"\0" * 128)
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.SeriesInstanceUID = series_uid
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        sop_uids.append(str(ds.SOPInstanceUID))
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber = "MR", description, 3
        ds.Manufacturer, ds.MagneticFieldStrength = "ACME", 1.5
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [*ROW_DIR, *COL_DIR]
        ds.ImagePositionPatient = [float(v) for v in np.array(ORIGIN) + k * SPACING[2] * normal]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]  # DICOM order: row spacing, column spacing
        ds.SliceThickness = SPACING[2]
        ds.Rows, ds.Columns = H, W
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels(k).tobytes()
        ds.save_as(folder / f"IM{rank:04d}", enforce_file_format=True)
    (folder / "README.txt").write_text("not a DICOM file\n")
    return sop_uids


def read_manifest(root: Path) -> list[dict[str, str]]:
    with (root / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def png(root: Path, rel: str) -> np.ndarray:
    return np.array(Image.open(root / rel))


# ---------------------------------------------------------------------------------------------------- DICOM


def test_dicom_import_layout_order_and_intensity(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "dcm")
    out = import_dicom_series(tmp_path / "dcm", tmp_path / "out", salt=SALT)
    rows = read_manifest(out)
    pid = pseudonymize("PID-12345", SALT)
    assert [r["slice"] for r in rows] == [str(k) for k in range(N)]
    assert rows[0]["patient_id"] == pid and rows[0]["series"] == "T2-SAG"
    assert rows[0]["image"] == f"images/{pid}_T2-SAG_s000.png" and rows[0]["mask"] == ""
    assert rows[0]["modality"] == "MR" and float(rows[0]["spacing_row_mm"]) == SPACING[1]
    assert float(rows[0]["spacing_col_mm"]) == SPACING[0] and float(rows[0]["slice_thickness_mm"]) == SPACING[2]
    info = json.loads((out / "import.json").read_text())
    assert info["format"] == "spinenet-import" and info["patient_id_mode"] == "hash"
    assert info["salt_source"] == "argument" and info["skipped_files"] == 1  # README.txt
    intensity = info["series"][0]["intensity"]
    assert intensity["bit_depth"] == 16
    lo, hi = intensity["source_min"], intensity["source_max"]
    volume = np.stack([_slice_pixels(k) for k in range(N)]).astype(float)
    assert (lo, hi) == (volume.min(), volume.max())
    stack = np.stack([png(out, r["image"]) for r in rows])
    assert stack.dtype == np.uint16 and stack.min() == 0 and stack.max() == 65535
    # sorted by position (not by file name), and the original values are recoverable from the record
    np.testing.assert_allclose(lo + stack / 65535 * (hi - lo), volume, atol=0.01)


def test_dicom_import_writes_no_phi_anywhere(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    sop_uids = write_dicom_series(tmp_path / "dcm", description="T2 SAG jane doe")  # a name in the free text
    caplog.set_level(logging.DEBUG)
    rc = main_import([str(tmp_path / "dcm"), "--out", str(tmp_path / "out"), "--salt", SALT])
    assert rc == 0
    (tmp_path / "out" / "captured.log").write_text(caplog.text + capsys.readouterr().out)
    values = [*PHI.values(), *sop_uids, "DOE", "JANE", "GREGORY", SALT]
    written = list((tmp_path / "out").rglob("*"))
    assert len(written) > N  # images, manifest, import.json, the captured log
    assert scan_for_phi(tmp_path / "out", values) == []
    info = json.loads((tmp_path / "out" / "import.json").read_text())
    assert "SeriesDescription" not in info["series"][0]["dicom"]  # dropped: it named the patient
    assert read_manifest(tmp_path / "out")[0]["series"] == "series3"
    # the scan is not blind: the source folder holds every value
    found = {v for _, v in scan_for_phi(tmp_path / "dcm", values)}
    assert found == set(values) - {SALT}


def test_hash_mode_gives_stable_pseudonyms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dicom_series(tmp_path / "dcm")
    monkeypatch.setenv("SPINENET_PHI_SALT", SALT)
    a = read_manifest(import_dicom_series(tmp_path / "dcm", tmp_path / "a"))[0]["patient_id"]
    b = read_manifest(import_dicom_series(tmp_path / "dcm", tmp_path / "b"))[0]["patient_id"]
    c = read_manifest(import_dicom_series(tmp_path / "dcm", tmp_path / "c", salt="another"))[0]["patient_id"]
    assert a == b == pseudonymize("PID-12345", SALT) and c != a
    assert json.loads((tmp_path / "a" / "import.json").read_text())["salt_source"] == "env SPINENET_PHI_SALT"
    monkeypatch.delenv("SPINENET_PHI_SALT")
    with pytest.raises(ConfigError, match="SPINENET_PHI_SALT"):
        import_dicom_series(tmp_path / "dcm", tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_keep_mode_never_writes_the_dicom_patient_id(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "case7")
    out = import_dicom_series(tmp_path / "case7", tmp_path / "o1", patient_id_mode="keep")
    assert read_manifest(out)[0]["patient_id"] == "case7"  # the folder name
    out = import_dicom_series(tmp_path / "case7", tmp_path / "o2", patient_id_mode="keep", patient_id="study-01")
    assert {r["patient_id"] for r in read_manifest(out)} == {"study-01"}
    write_dicom_series(tmp_path / "PID-12345")  # folder named after the DICOM PatientID
    with pytest.raises(DataError, match="unhashed") as info:
        import_dicom_series(tmp_path / "PID-12345", tmp_path / "o3", patient_id_mode="keep")
    assert "PID-12345" not in str(info.value).replace(str(tmp_path / "PID-12345"), "")
    with pytest.raises(DataError, match="patient id"):
        import_dicom_series(tmp_path / "case7", tmp_path / "o4", patient_id_mode="keep", patient_id="a/b c")


def test_dicom_tree_imports_each_series_and_series_dir_wants_one(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "tree" / "p1" / "t2", description="T2 SAG")
    write_dicom_series(tmp_path / "tree" / "p1" / "t1", description="T1 SAG", series_uid=generate_uid())
    out = import_dicom_tree(tmp_path / "tree", tmp_path / "out", salt=SALT)
    rows = read_manifest(out)
    assert len(rows) == 2 * N and {r["series"] for r in rows} == {"T1-SAG", "T2-SAG"}
    assert {r["patient_id"] for r in rows} == {pseudonymize("PID-12345", SALT)}
    with pytest.raises(DataError, match="holds 2 series, expected one"):
        import_dicom_series(tmp_path / "tree", tmp_path / "out2", salt=SALT)


def _dicom_grid_label(values_per_slice: dict[int, int]) -> sitk.Image:
    """A label volume on the DICOM series' grid; slice k filled (a 4x4 block) with values_per_slice[k]."""
    arr = np.zeros((N, H, W), np.int16)
    for k, v in values_per_slice.items():
        arr[k, 10:14, 10:14] = v
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(np.stack([ROW_DIR, COL_DIR, np.cross(ROW_DIR, COL_DIR)], axis=1).ravel().tolist())
    return img


def test_dicom_with_label_volume(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "dcm")
    label = _dicom_grid_label({1: 3, 2: 100, 3: 203})
    sitk.WriteImage(label, str(tmp_path / "label.nii.gz"))
    out = import_dicom_series(tmp_path / "dcm", tmp_path / "out", salt=SALT, masks=tmp_path / "label.nii.gz",
                              label_map="spider")
    rows = read_manifest(out)
    classes = [set(np.unique(png(out, r["mask"])).tolist()) for r in rows]
    assert classes[:5] == [{0}, {0, 170}, {0, 255}, {0, 85}, {0}]
    assert png(out, rows[1]["mask"])[10:14, 10:14].min() == 170
    moved = _dicom_grid_label({1: 3})
    moved.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(moved, str(tmp_path / "moved.nii.gz"))
    with pytest.raises(DataError, match="moved.nii.gz: not on the image's grid"):
        import_dicom_series(tmp_path / "dcm", tmp_path / "o2", salt=SALT, masks=tmp_path / "moved.nii.gz",
                            label_map="spider")
    import_dicom_series(tmp_path / "dcm", tmp_path / "o3", salt=SALT, masks=tmp_path / "moved.nii.gz",
                        label_map="spider", check_geometry=False)


# -------------------------------------------------------------------------------------------------- volumes

# Label volume indexed [z, y, x] in LPS (x -> patient left, y -> posterior, z -> superior); 8 sagittal
# slices along x. Slice x holds the values of LABELS[x] in horizontal bands, the first value highest up.
LABELS = {1: [1, 2, 3, 4, 5], 2: [100], 3: [201, 202, 203, 204, 205], 4: [5, 100, 205], 6: [25, 225]}
EXPECTED_CLASSES = {0: {0}, 1: {0, 2}, 2: {0, 3}, 3: {0, 1}, 4: {0, 1, 2, 3}, 5: {0}, 6: {0, 1, 2}, 7: {0}}


def _lps_arrays() -> tuple[np.ndarray, np.ndarray]:
    z, y, x = H, W, N
    image = np.zeros((z, y, x), np.float32)
    image += np.arange(y)[None, :, None] * 10.0  # brighter towards posterior
    image += np.arange(z)[:, None, None] * 1.0 + np.arange(x)[None, None, :] * 1000.0
    label = np.zeros((z, y, x), np.int16)
    for xi, values in LABELS.items():
        for band, v in enumerate(values):
            top = z - 1 - 3 * band  # superior end of the band
            label[top - 1 : top + 1, 4 : 8 + band, xi] = v
    return image, label


def _write_volume(path: Path, arr: np.ndarray, *, ras: bool = False) -> None:
    """Write the LPS-indexed array with an LPS header, or the same anatomy stored in RAS index order."""
    spacing = (1.0, 0.8, 3.5)
    if ras:  # flip x and y storage; the header says so, the anatomy is unchanged
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr[:, ::-1, ::-1]))
        img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        img.SetOrigin(((arr.shape[2] - 1) * spacing[0], (arr.shape[1] - 1) * spacing[1], 0.0))
    else:
        img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_volume_import_with_spider_labels(tmp_path: Path, suffix: str) -> None:
    image, label = _lps_arrays()
    _write_volume(tmp_path / f"7_t2{suffix}", image)
    _write_volume(tmp_path / f"7_t2_label{suffix}", label)
    out = import_volume(tmp_path / f"7_t2{suffix}", tmp_path / "out", patient_id="7", salt=SALT,
                        label_path=tmp_path / f"7_t2_label{suffix}", label_map="spider")
    rows = read_manifest(out)
    assert len(rows) == N and {r["axis"] for r in rows} == {"sagittal"}
    assert rows[0]["patient_id"] == pseudonymize("7", SALT) and rows[0]["series"] == "t2"
    for r in rows:
        mask = png(out, r["mask"])
        assert mask.shape == (H, W)  # rows head -> feet (z), columns anterior -> posterior (y)
        assert set(np.unique(mask).tolist()) == {85 * c for c in EXPECTED_CLASSES[int(r["slice"])]}
    # orientation: head up (first band in the top rows), anterior left (bands start at column 4)
    m1 = png(out, rows[1]["mask"])
    assert set(np.unique(m1[0:2]).tolist()) == {0, 170} and m1[0:2, 4].min() == 170 and m1[0:2, :4].max() == 0
    img4 = png(out, rows[4]["image"]).astype(float)
    assert img4[0, 0] > img4[-1, 0] and img4[0, -1] > img4[0, 0]  # brighter superior and posterior
    assert float(rows[0]["spacing_row_mm"]) == 3.5 and float(rows[0]["spacing_col_mm"]) == 0.8
    assert float(rows[0]["slice_thickness_mm"]) == 1.0
    info = json.loads((out / "import.json").read_text())
    assert info["label_map"] == "spider" and info["series"][0]["label_values"]["100"] > 0


def test_volume_orientation_follows_the_header(tmp_path: Path) -> None:
    image, label = _lps_arrays()
    for name, ras in (("lps", False), ("ras", True)):
        _write_volume(tmp_path / f"{name}.mha", image, ras=ras)
        _write_volume(tmp_path / f"{name}_lab.mha", label, ras=ras)
    outs = {}
    for name in ("lps", "ras"):
        for axis in ("sagittal", "axial", "coronal"):
            out = import_volume(tmp_path / f"{name}.mha", tmp_path / f"o-{name}-{axis}", patient_id="p1",
                                patient_id_mode="keep", label_path=tmp_path / f"{name}_lab.mha", label_map="spider",
                                axis=axis)
            outs[name, axis] = [(png(out, r["image"]), png(out, r["mask"])) for r in read_manifest(out)]
    for axis, n in (("sagittal", N), ("axial", H), ("coronal", W)):
        assert len(outs["lps", axis]) == n
        for (a_img, a_mask), (b_img, b_mask) in zip(outs["lps", axis], outs["ras", axis], strict=True):
            assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)


def test_unmapped_label_values(tmp_path: Path) -> None:
    image, label = _lps_arrays()
    label[0, 0, 0] = 42
    label[1, 0, 0] = 300
    _write_volume(tmp_path / "img.nii", image)
    _write_volume(tmp_path / "lab.nii", label)
    with pytest.raises(DataError, match=r"lab.nii: values 42, 300 have no class") as info:
        import_volume(tmp_path / "img.nii", tmp_path / "out", patient_id="1", salt=SALT,
                      label_path=tmp_path / "lab.nii", label_map="spider")
    assert "--unmapped background" in str(info.value)
    out = tmp_path / "out"  # nothing half-written: at most the folder and its spinenet marker
    assert not out.exists() or [p.name for p in out.iterdir()] == [".spinenet-output"]
    out = import_volume(tmp_path / "img.nii", tmp_path / "out", patient_id="1", salt=SALT,
                        label_path=tmp_path / "lab.nii", label_map="spider", unmapped="background")
    first = png(out, read_manifest(out)[0]["mask"])
    assert first.max() == 0  # slice x=0 held only the unmapped values


def test_refuses_non_empty_output_unless_overwrite(tmp_path: Path) -> None:
    image, _ = _lps_arrays()
    _write_volume(tmp_path / "a_t1.mha", image)
    out = tmp_path / "out"
    import_volume(tmp_path / "a_t1.mha", out, patient_id="a", patient_id_mode="keep")
    with pytest.raises(ConfigError, match=f"--out {out} is not empty"):
        import_volume(tmp_path / "a_t1.mha", out, patient_id="b", patient_id_mode="keep")
    (out / "notes.txt").write_text("mine\n")
    import_volume(tmp_path / "a_t1.mha", out, patient_id="b", patient_id_mode="keep", overwrite=True)
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"b_a-t1_s{k:03d}.png" for k in range(N)]  # the previous import's slices are gone
    assert (out / "notes.txt").read_text() == "mine\n"  # what the import did not write stays
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    write_dicom_series(tmp_path / "dcm")
    with pytest.raises(ConfigError, match="not empty"):
        import_dicom_series(tmp_path / "dcm", tmp_path / "other", salt=SALT)
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["x.txt"]


def test_volume_folder_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, label = _lps_arrays()
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("1_t2.mha", "2_t1.mha"):
        _write_volume(tmp_path / "images" / name, image)
        _write_volume(tmp_path / "masks" / name, label)
    rc = main_import([str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--labels", str(tmp_path / "masks"),
                      "--label-map", "spider", "--salt", SALT, "--labeled-only"])
    assert rc == 0 and "imported" in capsys.readouterr().out
    rows = read_manifest(tmp_path / "out")
    assert {(r["patient_id"], r["series"]) for r in rows} == {(pseudonymize("1", SALT), "t2"),
                                                             (pseudonymize("2", SALT), "t1")}
    assert sorted({int(r["slice"]) for r in rows}) == [1, 2, 3, 4, 6]  # only slices with labels
    rc = main_import([str(tmp_path / "images" / "1_t2.mha"), "--out", str(tmp_path / "out"), "--salt", SALT])
    assert rc == 2 and "not empty" in capsys.readouterr().err
    rc = main_import([str(tmp_path / "images" / "1_t2.mha"), "--out", str(tmp_path / "o8"), "--keep-ids",
                      "--bit-depth", "8", "--axis", "axial"])
    assert rc == 0
    rows = read_manifest(tmp_path / "o8")
    assert rows[0]["patient_id"] == "1" and len(rows) == H
    assert png(tmp_path / "o8", rows[0]["image"]).dtype == np.uint8
    (tmp_path / "masks" / "2_t1.mha").unlink()
    with pytest.raises(DataError, match="no label volume for 1 image"):
        import_volume_folder(tmp_path / "images", tmp_path / "o9", label_dir=tmp_path / "masks", salt=SALT)



def test_import_options_default_to_the_cli_defaults() -> None:
    parsed = vars(build_import_parser().parse_args(["src", "--out", "out"]))
    assert {f: parsed[f] for f in vars(ImportOptions())} == vars(ImportOptions())


def test_run_import_takes_typed_options(tmp_path: Path) -> None:
    image, label = _lps_arrays()
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _write_volume(tmp_path / "images" / "3_t2.mha", image)
    _write_volume(tmp_path / "masks" / "3_t2.mha", label)
    options = ImportOptions(labels=tmp_path / "masks", label_map="spider", id_mode="keep", bit_depth=8,
                            labeled_only=True, progress=False)
    out = run_import(tmp_path / "images", tmp_path / "out", options)
    rows = read_manifest(out)
    assert {(r["patient_id"], r["series"]) for r in rows} == {("3", "t2")}
    assert sorted({int(r["slice"]) for r in rows}) == [1, 2, 3, 4, 6]  # only slices with labels
    assert png(out, rows[0]["image"]).dtype == np.uint8
    with pytest.raises(ConfigError, match="--patient-id / --series apply to one file"):
        run_import(tmp_path / "images", tmp_path / "o2", ImportOptions(patient_id="x", salt=SALT))

# ----------------------------------------------------------------------------------------------- label maps


def test_label_maps() -> None:
    spider = spider_label_map()
    assert spider[1] == spider[25] == 2 and spider[100] == 3 and spider[201] == spider[225] == 1 and spider[0] == 0
    assert 26 not in spider and 200 not in spider and 226 not in spider
    custom = parse_label_map('{"1-3": "vertebra", "7": 1}')
    assert custom == {0: 0, 1: 2, 2: 2, 3: 2, 7: 1}
    with pytest.raises(ConfigError, match="background"):
        parse_label_map({"1": 9})
    with pytest.raises(ConfigError, match="range"):
        parse_label_map({"1-x": 1})
    classes, counts = apply_label_map(np.array([[0, 1], [100, 201]], np.int32), spider, source="x")
    assert classes.tolist() == [[0, 2], [3, 1]] and counts == {0: 1, 1: 1, 100: 1, 201: 1}
    with pytest.raises(DataError, match="non-integer"):
        apply_label_map(np.array([0.5]), spider, source="x")
