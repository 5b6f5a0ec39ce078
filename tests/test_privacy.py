"""Privacy helpers: PHI keyword list, pseudonyms, safe DICOM metadata and the PHI search."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from spinenet.errors import ConfigError
from spinenet.utils.privacy import (
    PHI_TAGS,
    SAFE_DICOM_FIELDS,
    apply_patient_id_policy,
    expand_phi_variants,
    phi_values,
    pseudonymize,
    resolve_salt,
    safe_dicom_metadata,
    scan_for_phi,
)


def _dataset(description: str = "T2 SAG") -> Dataset:
    ds = Dataset()
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "PID-12345"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.InstitutionName = "General Hospital"
    ds.StudyDate = "20240315"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.Modality = "MR"
    ds.SeriesDescription = description
    ds.PixelSpacing = [0.5, 0.625]
    ds.SliceThickness = "4.0"
    ds.MagneticFieldStrength = "1.5"
    ds.Manufacturer = "ACME"
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.Rows = 32
    ds.Columns = 32
    ds.SeriesNumber = "3"
    return ds


def test_phi_tags_are_real_dicom_keywords_and_cover_the_basics() -> None:
    unknown = [k for k in PHI_TAGS if tag_for_keyword(k) is None]
    assert unknown == []
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientAddress", "OtherPatientIDs",
                    "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "StudyDate", "SeriesDate",
                    "AcquisitionDate", "ContentDate", "StudyTime", "AccessionNumber", "StudyID",
                    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "DeviceSerialNumber"):
        assert keyword in PHI_TAGS
    assert not PHI_TAGS & set(SAFE_DICOM_FIELDS)
    assert all(tag_for_keyword(k) is not None for k in SAFE_DICOM_FIELDS)


def test_pseudonymize_is_stable_salted_and_filename_safe() -> None:
    a = pseudonymize("PID-12345", "s3cret")
    assert a == pseudonymize("PID-12345", "s3cret")
    assert a != pseudonymize("PID-12345", "other")
    assert a != pseudonymize("PID-12346", "s3cret")
    assert a.startswith("p") and len(a) == 17 and all(c in "0123456789abcdef" for c in a[1:])
    assert "12345" not in a
    with pytest.raises(ConfigError):
        pseudonymize("x", "")


def test_patient_id_policy_modes_and_salt_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    assert apply_patient_id_policy("case-7", "keep", None) == "case-7"
    assert apply_patient_id_policy("case-7", "hash", "k") == pseudonymize("case-7", "k")
    with pytest.raises(ConfigError, match=r"\['keep', 'hash'\]"):
        apply_patient_id_policy("case-7", "plain", "k")
    monkeypatch.delenv("SPINENET_PHI_SALT", raising=False)
    with pytest.raises(ConfigError, match="SPINENET_PHI_SALT"):
        resolve_salt(None)
    monkeypatch.setenv("SPINENET_PHI_SALT", "from-env")
    assert resolve_salt(None) == ("from-env", "env SPINENET_PHI_SALT")
    assert resolve_salt("arg")[0] == "arg"  # the argument wins over the environment


def test_safe_dicom_metadata_keeps_acquisition_fields_only() -> None:
    meta = safe_dicom_metadata(_dataset())
    assert meta["Modality"] == "MR"
    assert meta["PixelSpacing"] == [0.5, 0.625]
    assert meta["SliceThickness"] == 4.0 and meta["MagneticFieldStrength"] == 1.5
    assert meta["Rows"] == 32 and meta["SeriesNumber"] == 3
    assert meta["ImageOrientationPatient"] == [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    assert set(meta) <= set(SAFE_DICOM_FIELDS)
    text = json.dumps(meta)  # JSON-serialisable and free of identifying values
    for value in ("DOE", "JANE", "PID-12345", "19700101", "General Hospital", "20240315", "1.2.826.0.1"):
        assert value not in text


def test_free_text_descriptor_with_a_name_is_dropped() -> None:
    meta = safe_dicom_metadata(_dataset("T2 SAG for jane doe"))
    assert "SeriesDescription" not in meta
    assert safe_dicom_metadata(_dataset("T2 SAG"))["SeriesDescription"] == "T2 SAG"


def test_phi_values_splits_names_and_skips_short_codes() -> None:
    values = phi_values(_dataset())
    assert {"DOE^JANE", "DOE", "JANE", "PID-12345", "19700101", "General Hospital", "20240315"} <= set(values)
    assert "F" not in values and "MR" not in values


def test_expand_variants_for_names_and_dates() -> None:
    assert {"DOE JANE", "DOE, JANE", "JANE DOE"} <= set(expand_phi_variants("DOE^JANE"))
    assert {"1970-01-01", "01.01.1970", "1970/01/01"} <= set(expand_phi_variants("19700101"))


def test_scan_for_phi_finds_values_in_every_kind_of_file(tmp_path: Path) -> None:
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "manifest.csv").write_text("patient_id,image\np0a1b2c3,images/x.png\n")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "clean" / "img.png")
    d = tmp_path / "dirty"
    d.mkdir()
    (d / "m.csv").write_text("patient_id\nPID-12345\n")
    (d / "run.log").write_text("loading patient doe^jane\n")  # case-insensitive
    (d / "cfg.yaml").write_text("note: born 1970-01-01\n")  # date re-spelled
    (d / "r.json").write_text(json.dumps({"who": "Doe Jane"}))  # name re-spelled
    (d / "u16.txt").write_bytes("General Hospital".encode("utf-16-le"))
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "PID-12345", zip=True)  # compressed zTXt chunk
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(d / "z.png", pnginfo=info)
    (d / "a.gz").write_bytes(gzip.compress(b"x General Hospital y"))
    with zipfile.ZipFile(d / "a.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("inner.txt", "DOE^JANE " * 50)
    (d / "PID-12345_t2_s000.png").write_bytes(b"")  # in the file name only
    values = ["DOE^JANE", "PID-12345", "19700101", "General Hospital"]
    assert scan_for_phi(tmp_path / "clean", values) == []
    hits = {(p.name, v) for p, v in scan_for_phi(d, values)}
    assert hits == {
        ("m.csv", "PID-12345"), ("run.log", "DOE^JANE"), ("cfg.yaml", "19700101"), ("r.json", "DOE^JANE"),
        ("u16.txt", "General Hospital"), ("z.png", "PID-12345"), ("a.gz", "General Hospital"),
        ("a.zip", "DOE^JANE"), ("PID-12345_t2_s000.png", "PID-12345"),
    }
    # a list of files works too, and the scanned folder's own path is not reported
    assert scan_for_phi([d / "m.csv"], ["PID-12345"]) == [(d / "m.csv", "PID-12345")]
    assert scan_for_phi(tmp_path / "clean", [tmp_path.name]) == []
    with pytest.raises(ValueError, match="shorter than 3"):
        scan_for_phi(d, ["F"])
