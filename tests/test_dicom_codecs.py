"""Compressed DICOM (JPEG lossless / extended, JPEG-LS, JPEG 2000) through `read_image` and `data import`,
and `data import`'s fault isolation: every readable file imported, every other one listed with its reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale, get_decoder
from pydicom.uid import JPEG2000Lossless, generate_uid

from spinenet.cli.data_import import main_import
from spinenet.data.importers import SUMMARY_NAME, import_dicom_tree
from spinenet.data.io import dicom_pixels, read_image
from spinenet.errors import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, DataError
from spinenet.utils.privacy import scan_for_phi
from tests.test_importers import PHI, SALT, read_manifest, write_dicom_series

# MR_small.dcm (uncompressed) and the same image stored with lossless codecs
LOSSLESS = {
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS Lossless",
    "MR_small_jp2klossless.dcm": "JPEG 2000 (lossless only)",
    "MR_small_RLE.dcm": "RLE Lossless",
}
# lossy / other images: decoded, right size (JPEG-lossy.dcm fails in pylibjpeg: read by SimpleITK instead)
LOSSY = ["JPEG2000.dcm", "JPGExtended.dcm", "JPEG-lossy.dcm", "JPEGLSNearLossless_16.dcm"]


def _testfile(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed")
    return Path(path)


def _reference() -> np.ndarray:
    ds = pydicom.dcmread(_testfile("MR_small.dcm"))
    return np.asarray(apply_rescale(ds.pixel_array, ds), dtype=np.float64)


@pytest.fixture(scope="module")
def jpeg_lossless(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MR_small's pixels as JPEG Lossless SV1 (1.2.840.10008.1.2.4.70), gray: pydicom ships only an RGB one."""
    path = tmp_path_factory.mktemp("jpegll") / "MR_small_jpeg_lossless.dcm"
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetImageIO("GDCMImageIO")
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG")
    writer.Execute(sitk.GetImageFromArray(_reference().astype(np.int16)))
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    return path


@pytest.mark.parametrize("name", sorted(LOSSLESS))
def test_lossless_codecs_give_the_uncompressed_values(name: str) -> None:
    path = _testfile(name)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(dicom_pixels(ds, path), _reference())
    np.testing.assert_allclose(read_image(path), read_image(_testfile("MR_small.dcm")), atol=1e-6)


def test_jpeg_lossless_gray_and_rgb(jpeg_lossless: Path) -> None:
    np.testing.assert_array_equal(dicom_pixels(pydicom.dcmread(jpeg_lossless), jpeg_lossless), _reference())
    rgb = read_image(_testfile("SC_rgb_jpeg_gdcm.dcm"))  # JPEG lossless, RGB: read as gray
    assert rgb.shape == (100, 100) and rgb.dtype == np.float32 and rgb.max() > rgb.min()


@pytest.mark.parametrize("name", LOSSY)
def test_lossy_codecs_decode(name: str) -> None:
    path = _testfile(name)
    ds = pydicom.dcmread(path)
    img = read_image(path)
    assert img.shape == (ds.Rows, ds.Columns) and np.isfinite(img).all() and img.max() > img.min()


def test_simpleitk_fallback_reads_what_the_plugins_cannot() -> None:
    # the same 12-bit JPEG extended image; pylibjpeg rejects JPEG-lossy.dcm's markers, GDCM reads it
    broken, good = _testfile("JPEG-lossy.dcm"), _testfile("JPGExtended.dcm")
    with pytest.raises(Exception):  # noqa: B017 - pydicom alone: whatever its plugins raise
        _ = pydicom.dcmread(broken).pixel_array
    # lossy: GDCM and libjpeg round the inverse DCT differently (by at most 1 here)
    np.testing.assert_allclose(
        dicom_pixels(pydicom.dcmread(broken), broken), dicom_pixels(pydicom.dcmread(good), good), atol=1
    )


def test_missing_decoder_is_one_line_naming_file_syntax_and_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})  # as without pylibjpeg / Pillow
    monkeypatch.setattr("spinenet.data.io._decode_with_simpleitk", lambda path: None)  # and without GDCM
    src = _testfile("MR_small_jp2klossless.dcm")
    with pytest.raises(DataError) as err:
        read_image(src)
    msg = str(err.value)
    assert "\n" not in msg and str(src) in msg and "JPEG 2000" in msg and "spinenet-mri[dicom]" in msg
    # through data import: the only file cannot be decoded -> exit 2, one line naming it
    (tmp_path / "dcm").mkdir()
    shutil.copy(src, tmp_path / "dcm" / src.name)
    assert main_import([str(tmp_path / "dcm"), "--out", str(tmp_path / "out"), "--salt", SALT]) == EXIT_USAGE
    err_text = capsys.readouterr().err.strip()
    assert len(err_text.splitlines()) == 1 and src.name in err_text and "spinenet-mri[dicom]" in err_text


@pytest.mark.parametrize("name", [*sorted(LOSSLESS), "jpeg_lossless", *LOSSY])
def test_data_import_reads_compressed_series(
    name: str, jpeg_lossless: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = jpeg_lossless if name == "jpeg_lossless" else _testfile(name)
    (tmp_path / "dcm").mkdir()
    shutil.copy(src, tmp_path / "dcm" / src.name)
    rc = main_import([str(tmp_path / "dcm"), "--out", str(tmp_path / "out"), "--salt", SALT, "--no-progress"])
    assert rc == EXIT_OK, capsys.readouterr().err
    rows = read_manifest(tmp_path / "out")
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    png = np.array(Image.open(tmp_path / "out" / rows[0]["image"]))
    assert len(rows) == 1 and png.shape == (ds.Rows, ds.Columns) and png.dtype == np.uint16
    if name in LOSSLESS or name == "jpeg_lossless":  # the full 16-bit mapping of the exact values
        ref = _reference()
        expected = np.rint((ref - ref.min()) / (ref.max() - ref.min()) * 65535)
        np.testing.assert_array_equal(png, expected)


# ----------------------------------------------------------------------------------------- fault isolation


def _edit(path: Path, **changes: object) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def _broken_tree(root: Path) -> Path:
    """A good 8-slice series with broken / refused / foreign files, and a second series that fails whole."""
    series = root / "PID-12345" / "t2"  # a folder named after the patient: must not reach the summary
    write_dicom_series(series)  # IM0000..IM0007 + README.txt
    data = (series / "IM0001").read_bytes()
    (series / "IM0001").write_bytes(data[:-300])  # pixel data cut short
    _edit(series / "IM0002", PixelData=None)  # an image header without pixel data
    _edit(series / "IM0003", BurnedInAnnotation="YES")
    (series / "IM9999").write_bytes(b"")  # zero bytes
    (series / "junk.dcm").write_bytes(b"\0" * 200 + b"not dicom")
    other = root / "PID-12345" / "loc"
    write_dicom_series(other, series_uid=generate_uid())
    _edit(other / "IM0004", ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0])  # mixed orientations
    return root


def test_import_isolates_bad_files_and_lists_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _broken_tree(tmp_path / "src")
    out = tmp_path / "out"
    rc = main_import([str(src), "--out", str(out), "--salt", SALT, "--no-progress"])
    captured = capsys.readouterr()
    assert rc == EXIT_PARTIAL
    assert len(read_manifest(out)) == 5  # 8 slices less the truncated, pixel-less and burned-in ones
    summary = json.loads((out / SUMMARY_NAME).read_text())
    files = {f["file"].rsplit("/", 1)[-1]: f for f in summary["files"] if "/loc/" not in f["file"]}
    assert files["IM0001"]["status"] == "failed" and "pixel data" in files["IM0001"]["reason"]
    assert files["IM0002"]["status"] == "failed" and "no pixel data" in files["IM0002"]["reason"]
    assert files["IM0003"]["status"] == "refused" and "BurnedInAnnotation" in files["IM0003"]["reason"]
    assert files["IM9999"]["status"] == "failed" and "0 bytes" in files["IM9999"]["reason"]
    assert files["junk.dcm"]["status"] == "failed"
    assert files["README.txt"]["status"] == "skipped"
    loc = [f for f in summary["files"] if "/loc/" in f["file"]]
    assert len(loc) == 9 and all("orientation" in f["reason"] for f in loc if f["status"] == "failed")
    assert (summary["inputs"], summary["imported"], summary["failed"], summary["refused"], summary["skipped"]) == (
        20, 5, 12, 1, 2,
    )
    assert all(f["file"].startswith("<redacted>/") for f in summary["files"])  # the folder is the patient id
    last = captured.out.strip().splitlines()[-1]
    assert "imported 5 slices from 5 of 20" in last and "12 failed, 1 refused, 2 skipped" in last
    printed = captured.out + captured.err
    assert not [v for v in PHI.values() if v.lower() in printed.lower()]
    assert scan_for_phi(out, PHI.values()) == []
    # the refused slice comes in when allowed; the rest is still listed
    assert import_dicom_tree(src, tmp_path / "out2", salt=SALT, allow_burned_in=True, progress=False)
    assert len(read_manifest(tmp_path / "out2")) == 6
    assert json.loads((tmp_path / "out2" / SUMMARY_NAME).read_text())["refused"] == 0


def test_clean_import_exits_0_with_an_empty_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_dicom_series(tmp_path / "dcm")
    assert main_import([str(tmp_path / "dcm"), "--out", str(tmp_path / "out"), "--salt", SALT]) == EXIT_OK
    summary = json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())
    assert (summary["imported"], summary["failed"], summary["refused"]) == (8, 0, 0)
    assert [f["file"] for f in summary["files"]] == ["README.txt"]  # not an image: listed, no failure
    assert "1 skipped" in capsys.readouterr().out


def test_only_burned_in_slices_is_an_error_naming_a_file(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "dcm")
    for path in (tmp_path / "dcm").glob("IM*"):
        _edit(path, BurnedInAnnotation="YES")
    with pytest.raises(DataError, match=r"IM0000: BurnedInAnnotation is YES.*--allow-burned-in") as err:
        import_dicom_tree(tmp_path / "dcm", tmp_path / "out", salt=SALT)
    assert not [v for v in PHI.values() if v in str(err.value)]
