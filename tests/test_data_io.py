"""Reading images and masks in every supported format, including the real SPIDER files."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from spinenet.data.io import image_size, is_dicom, read_image, read_mask, read_raw
from spinenet.errors import ConfigError, DataError

SPIDER = Path(os.environ.get("SPIDER_DIR", Path(__file__).resolve().parents[1].parent / "shared/data/spider"))
SPIDER_VALUES = [0, 29, 76, 150]


def needs_spider(test):
    """Mark ``spider`` and skip, with the reason, where the real data are absent."""
    skip = pytest.mark.skipif(
        not (SPIDER / "seg_t2space/manifest.csv").is_file(),
        reason=f"real SPIDER data not found at {SPIDER} (../shared/data/spider next to the repo, or SPIDER_DIR)",
    )
    return pytest.mark.spider(skip(test))


H, W = 12, 20  # not square, so that (H, W) order mistakes show


def gray8() -> np.ndarray:
    return (np.arange(H * W).reshape(H, W) % 256).astype(np.uint8)


def rgb8() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    return (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0


def robust(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x.astype(np.float64), [0.5, 99.5])
    return np.clip((x - lo) / (hi - lo), 0, 1)


def write_dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2", slope=None, intercept=None):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    frames = arr.shape[0] if arr.ndim == 3 else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
    ds.PixelData = arr.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------------------------- images


def test_png_8bit_gray_divides_by_255(tmp_path):
    p = tmp_path / "g.png"
    cv2.imwrite(str(p), gray8())
    img = read_image(p)
    assert img.dtype == np.float32 and img.shape == (H, W)
    np.testing.assert_allclose(img, gray8() / 255.0, atol=1e-6)
    img3 = read_image(p, channels=3)  # gray repeated
    assert img3.shape == (H, W, 3) and img3.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(img3[..., c], img)


def test_png_16bit_gray_uses_robust_percentiles(tmp_path):
    arr = (np.arange(H * W).reshape(H, W) * 200).astype(np.uint16)
    arr[0, 0] = 65535  # one hot pixel must not squash the rest
    p = tmp_path / "g16.png"
    cv2.imwrite(str(p), arr)
    assert read_raw(p).pixels.dtype == np.uint16
    img = read_image(p)
    assert img.dtype == np.float32 and img.shape == (H, W)
    assert img.min() == 0.0 and img.max() == 1.0
    np.testing.assert_allclose(img, robust(arr), atol=1e-5)
    assert 0.4 < np.median(img) < 0.6


def test_png_rgb_luminance_and_channel_order(tmp_path):
    rgb = rgb8()
    p = tmp_path / "c.png"
    Image.fromarray(rgb, "RGB").save(p)
    img3 = read_image(p, channels=3)
    assert img3.shape == (H, W, 3)
    np.testing.assert_allclose(img3, rgb / 255.0, atol=1e-6)  # RGB order, not OpenCV's BGR
    img1 = read_image(p)
    assert img1.shape == (H, W)
    np.testing.assert_allclose(img1, luminance(rgb), atol=1.0 / 255 + 1e-6)


def test_png_rgba_drops_alpha(tmp_path):
    rgb = rgb8()
    rgba = np.concatenate([rgb, np.zeros((H, W, 1), np.uint8)], axis=-1)  # fully transparent
    p = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(p)
    np.testing.assert_allclose(read_image(p, channels=3), rgb / 255.0, atol=1e-6)
    assert read_image(p).shape == (H, W)
    gray_rgba = np.repeat(gray8()[..., None], 4, axis=-1)
    gray_rgba[..., 3] = 255
    q = tmp_path / "ga.png"
    Image.fromarray(gray_rgba, "RGBA").save(q)
    np.testing.assert_allclose(read_image(q), gray8() / 255.0, atol=1e-6)  # identical channels stay exact


def test_jpg_gray_and_color(tmp_path):
    smooth = np.tile(np.linspace(30, 220, W), (H, 1)).astype(np.uint8)
    p = tmp_path / "g.jpg"
    Image.fromarray(smooth).save(p, quality=95)
    img = read_image(p)
    assert img.shape == (H, W) and img.dtype == np.float32
    np.testing.assert_allclose(img, smooth / 255.0, atol=0.05)  # lossy
    q = tmp_path / "c.jpeg"
    Image.fromarray(np.stack([smooth, smooth // 2, 255 - smooth], -1)).save(q, quality=95)
    img3 = read_image(q, channels=3)
    assert img3.shape == (H, W, 3) and 0.0 <= img3.min() and img3.max() <= 1.0
    assert img3[..., 0].mean() > img3[..., 1].mean()  # red stays red


def test_tiff_8_and_16_bit(tmp_path):
    p8 = tmp_path / "g8.tif"
    Image.fromarray(gray8()).save(p8)
    np.testing.assert_allclose(read_image(p8), gray8() / 255.0, atol=1e-6)

    arr16 = (np.arange(H * W).reshape(H, W) * 97).astype(np.uint16)
    p16 = tmp_path / "g16.tiff"
    cv2.imwrite(str(p16), arr16)
    img = read_image(p16)
    assert img.shape == (H, W) and img.min() == 0.0 and img.max() == 1.0
    np.testing.assert_allclose(img, robust(arr16), atol=1e-5)

    rgb16 = (rgb8().astype(np.uint16) * 257).astype(np.uint16)
    prgb = tmp_path / "c16.tif"
    cv2.imwrite(str(prgb), rgb16[..., ::-1])  # OpenCV writes BGR
    img3 = read_image(prgb, channels=3)
    assert img3.shape == (H, W, 3)
    np.testing.assert_allclose(img3, robust(rgb16.astype(np.float64)), atol=1e-5)
    assert read_image(prgb).shape == (H, W)


def test_dicom_monochrome2_and_1_with_rescale(tmp_path):
    arr = (np.arange(H * W).reshape(H, W) * 10).astype(np.uint16)
    p2 = write_dicom(tmp_path / "m2.dcm", arr, "MONOCHROME2", slope=2, intercept=-100)
    np.testing.assert_allclose(read_raw(p2).pixels, arr * 2.0 - 100)  # slope and intercept applied
    img2 = read_image(p2)
    assert img2.dtype == np.float32 and img2.shape == (H, W)
    np.testing.assert_allclose(img2, robust(arr), atol=1e-5)

    p1 = write_dicom(tmp_path / "m1.dcm", arr, "MONOCHROME1")
    np.testing.assert_allclose(read_image(p1), 1.0 - img2, atol=1e-5)  # low values are bright

    neg = write_dicom(tmp_path / "neg.dcm", arr, "MONOCHROME2", slope=-1, intercept=0)
    np.testing.assert_allclose(read_image(neg), 1.0 - img2, atol=1e-5)

    assert read_image(p2, channels=3).shape == (H, W, 3)
    assert image_size(p2) == (H, W)


def test_dicom_detected_by_preamble_without_suffix(tmp_path):
    arr = (np.arange(H * W).reshape(H, W) * 3).astype(np.uint16)
    p = write_dicom(tmp_path / "IM0001", arr)
    assert is_dicom(p)
    assert read_image(p).shape == (H, W)
    assert image_size(p) == (H, W)


def test_multiframe_dicom_is_refused(tmp_path):
    vol = np.zeros((3, H, W), np.uint16)
    p = write_dicom(tmp_path / "vol.dcm", vol)
    with pytest.raises(DataError, match="multi-frame.*data import"):
        read_image(p)


def test_missing_and_unreadable_files_name_the_path(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(DataError, match="nope.png"):
        read_image(missing)
    with pytest.raises(DataError, match="nope.png"):
        image_size(missing)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image" * 10)
    with pytest.raises(DataError, match="junk.png"):
        read_image(junk)
    with pytest.raises(DataError, match="junk.png"):
        image_size(junk)
    good = tmp_path / "ok.png"
    cv2.imwrite(str(good), gray8())
    data = good.read_bytes()
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="trunc.png"):
        read_image(truncated)
    with pytest.raises(ConfigError, match="channels"):
        read_image(good, channels=2)


def test_image_size_is_h_w(tmp_path):
    p = tmp_path / "g.png"
    cv2.imwrite(str(p), gray8())
    t = tmp_path / "g.tif"
    cv2.imwrite(str(t), gray8().astype(np.uint16))
    assert image_size(p) == (H, W)
    assert image_size(t) == (H, W)


# ----------------------------------------------------------------------------------------------------- masks


def class_mask() -> np.ndarray:
    cls = np.zeros((H, W), np.int64)
    cls[2:5, :] = 1
    cls[6:9, 3:10] = 2
    cls[10:, 15:] = 3
    return cls


def test_read_mask_maps_gray_values(tmp_path):
    cls = class_mask()
    p = tmp_path / "m.png"
    cv2.imwrite(str(p), np.array(SPIDER_VALUES, np.uint8)[cls])
    m = read_mask(p, SPIDER_VALUES)
    assert m.dtype == np.int64 and m.shape == (H, W)
    np.testing.assert_array_equal(m, cls)
    # the same mask as RGBA with identical channels
    rgba = np.repeat(np.array(SPIDER_VALUES, np.uint8)[cls][..., None], 4, axis=-1)
    rgba[..., 3] = 255
    q = tmp_path / "m_rgba.png"
    Image.fromarray(rgba, "RGBA").save(q)
    np.testing.assert_array_equal(read_mask(q, SPIDER_VALUES), cls)
    # 16-bit masks with values above 255
    r = tmp_path / "m16.png"
    cv2.imwrite(str(r), np.array([0, 201, 300, 1000], np.uint16)[cls])
    np.testing.assert_array_equal(read_mask(r, [0, 201, 300, 1000]), cls)


def test_read_mask_values_outside_the_map(tmp_path):
    gray = np.array(SPIDER_VALUES, np.uint8)[class_mask()]
    gray[0, 0] = 200
    gray[0, 1] = 13
    p = tmp_path / "bad_mask.png"
    cv2.imwrite(str(p), gray)
    with pytest.raises(DataError) as e:
        read_mask(p, SPIDER_VALUES)
    msg = str(e.value)
    assert "bad_mask.png" in msg and "13, 200" in msg and "[0, 29, 76, 150]" in msg


def test_read_mask_color_and_config_errors(tmp_path):
    p = tmp_path / "color.png"
    Image.fromarray(rgb8(), "RGB").save(p)
    with pytest.raises(DataError, match="color.png.*channels differ"):
        read_mask(p, SPIDER_VALUES)
    q = tmp_path / "m.png"
    cv2.imwrite(str(q), np.zeros((H, W), np.uint8))
    with pytest.raises(ConfigError, match="repeated"):
        read_mask(q, [0, 0, 1])
    with pytest.raises(ConfigError, match="non-negative"):
        read_mask(q, [0, -1])


# ----------------------------------------------------------------------------------------------- real SPIDER


@needs_spider
def test_spider_gray_and_rgba_slices_and_masks():
    images = sorted((SPIDER / "seg_t2space/images").glob("*.png"))
    by_mode: dict[str, Path] = {}
    for p in images:
        with Image.open(p) as im:
            by_mode.setdefault(im.mode, p)
        if {"L", "RGBA"} <= set(by_mode):
            break
    assert {"L", "RGBA"} <= set(by_mode), f"expected gray and RGBA slices, found {sorted(by_mode)}"
    for mode, p in by_mode.items():
        h, w = image_size(p)
        img = read_image(p)
        assert img.shape == (h, w) and w == 512 and h in (620, 640), (mode, img.shape)
        assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.01
        assert read_image(p, channels=3).shape == (h, w, 3)
        mask = read_mask(SPIDER / "seg_t2space/masks" / p.name, SPIDER_VALUES)
        assert mask.shape == (h, w)
        assert set(np.unique(mask).tolist()) == {0, 1, 2, 3}


@needs_spider
def test_spider_midsag_rgb():
    p = sorted((SPIDER / "midsag_t2").glob("*.png"))[0]
    h, w = image_size(p)
    img1, img3 = read_image(p), read_image(p, channels=3)
    assert img1.shape == (h, w) and img3.shape == (h, w, 3)
    assert 0.0 <= img1.min() and img1.max() <= 1.0 and img1.std() > 0.01


def test_augment_crop_trains_on_patches_and_evaluates_whole_images():
    from spinenet.data.transforms import build_transforms

    image = np.random.default_rng(0).random((100, 80)).astype(np.float32)
    mask = (image > 0.5).astype(np.uint8)
    train = build_transforms((64, 48), train=True, augment={"crop": [32, 16]})
    seen = set()
    for seed in range(6):
        train.set_random_seed(seed)
        out = train(image=image, mask=mask)
        assert out["image"].shape == (32, 16) and out["mask"].shape == (32, 16)
        seen.add(out["image"].tobytes())
    assert len(seen) > 1  # a random window, not a fixed one
    # validation and test (no augmentation) see the whole resized image
    assert build_transforms((64, 48), train=False, augment=None)(image=image)["image"].shape == (64, 48)
    with pytest.raises(ConfigError, match=r"data.augment.crop \[80, 16\] must fit inside data.image_size"):
        build_transforms((64, 48), train=True, augment={"crop": [80, 16]})
