"""Reading image and mask files: PNG, JPG, TIFF (8/16 bit; gray, RGB, RGBA) and DICOM.

Images come back as float32 in [0, 1], shape ``(H, W)`` (``channels=1``) or ``(H, W, 3)`` (``channels=3``):

- RGBA drops alpha; RGB becomes gray by luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B) for one channel;
  gray is repeated for three channels.
- Scaling: 8-bit files are divided by 255. 16-bit files, float files and DICOM pixel data are scaled per
  image by robust percentiles: the 0.5th percentile maps to 0 and the 99.5th to 1, values outside are clipped.
  MRI intensities have no fixed range (they depend on scanner, coil and sequence), so a fixed divisor would
  leave most images nearly black; the percentiles also ignore a few very bright pixels (fat, flow artefacts).
- DICOM (``.dcm``/``.dicom`` or any file with the ``DICM`` preamble) goes through pydicom (:func:`dicom_pixels`;
  compressed syntaxes through the ``dicom`` extra's decoders, SimpleITK as the fallback): RescaleSlope and
  RescaleIntercept are applied before scaling, and MONOCHROME1 (low values bright) is inverted after it.

Masks come back as int64 class ids: ``mask_values[i]`` is the stored gray value of class ``i``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from spinenet.errors import ConfigError, DataError

PathLike = str | os.PathLike[str]

DICOM_SUFFIXES = (".dcm", ".dicom")
PERCENTILES = (0.5, 99.5)
# what installs the decoders of compressed DICOM (pyproject extra `dicom`)
DICOM_EXTRA = "spinenet-mri[dicom]"


@dataclass
class RawImage:
    """Decoded pixels before scaling: ``(H, W)`` or ``(H, W, 3)`` in RGB order, alpha dropped."""

    pixels: np.ndarray
    dicom: bool = False
    monochrome1: bool = False


def _has_dicom_preamble(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def is_dicom(path: PathLike) -> bool:
    """True for ``.dcm``/``.dicom`` files and any file with the DICOM ``DICM`` preamble."""
    if str(path).lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            return _has_dicom_preamble(f.read(132))
    except OSError:
        return False


def _read_bytes(path: PathLike) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no such file: {p}" if not p.exists() else f"not a file: {p}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {p}: {e}") from e
    if not data:  # OpenCV would fail an assertion on an empty buffer
        raise DataError(f"image file {p} is empty (0 bytes)")
    return data


def _decode_with_simpleitk(path: PathLike) -> np.ndarray | None:
    """Pixels through SimpleITK's GDCM reader (modality units: GDCM applies the rescale), or ``None``."""
    try:
        import SimpleITK as sitk

        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except Exception:  # any failure means "no fallback"; the caller names the first cause
        return None


def dicom_pixels(ds: Any, path: PathLike, name: str | None = None) -> np.ndarray:
    """The pixels of a read DICOM dataset in modality units (RescaleSlope / RescaleIntercept applied with
    ``pydicom.pixels.apply_rescale``): ``(H, W)``, ``(H, W, 3)`` or ``(frames, H, W[, 3])``.

    Compressed transfer syntaxes (JPEG lossless, JPEG-LS, JPEG 2000, JPEG extended ...) are decoded by
    pydicom's plugins (the ``dicom`` extra: pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg); SimpleITK's
    GDCM reader is the fallback when no plugin is installed or the plugins fail. ``DataError`` naming the file
    (``name``, default ``path``) and the transfer syntax otherwise.
    """
    from pydicom.pixels import apply_rescale, get_decoder

    name = str(path) if name is None else name
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(f"DICOM file {name}: holds no pixel data")
    try:
        return apply_rescale(ds.pixel_array, ds)
    except Exception as exc:  # pydicom raises many types (no plugin for a codec, truncated data, ...)
        error = exc
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        arr = _decode_with_simpleitk(path)
        if arr is not None:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            return arr[0] if frames == 1 and arr.shape[0] == 1 else arr
        try:
            missing = not get_decoder(syntax).is_available
        except NotImplementedError:  # a syntax pydicom has no decoder for at all
            missing = True
        if missing:
            raise DataError(
                f"DICOM file {name}: no decoder installed for its transfer syntax {syntax.name} ({syntax}); "
                f"install them with: pip install '{DICOM_EXTRA}'"
            ) from None
    where = f" ({syntax.name})" if syntax is not None else ""
    detail = " ".join(str(error).split())[:300] or type(error).__name__  # one line, whatever pydicom says
    raise DataError(f"DICOM file {name}: cannot decode its pixel data{where}: {detail}") from None


def _decode_dicom(path: PathLike, data: bytes) -> RawImage:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as e:
        raise DataError(f"cannot read DICOM file {path}: {e}") from e
    arr = dicom_pixels(ds, path)
    samples = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 or arr.ndim > (3 if samples > 1 else 2):
        raise DataError(
            f"{path} is a multi-frame DICOM ({frames} frames, shape {arr.shape}); "
            "convert volumes to slices with `spinenet data import`"
        )
    pixels = arr.astype(np.float32)
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        pixels = pixels[..., :3]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    return RawImage(pixels, dicom=True, monochrome1=photometric == "MONOCHROME1")


def _decode_raster(path: PathLike, data: bytes) -> np.ndarray:
    """PNG/JPG/TIFF/... through OpenCV (fast, 16-bit aware), PIL as a fallback; RGB order, alpha dropped."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is not None:
        if arr.ndim == 3:
            if arr.shape[-1] == 1:
                arr = arr[..., 0]
            elif arr.shape[-1] == 2:  # gray + alpha
                arr = arr[..., 0]
            else:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB if arr.shape[-1] == 4 else cv2.COLOR_BGR2RGB)
        return arr
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            arr = np.asarray(im)
    except Exception as e:
        detail = "not a known image format" if isinstance(e, UnidentifiedImageError) else str(e)
        raise DataError(
            f"{path} is not a readable image (truncated or corrupt; PNG/JPG/TIFF/DICOM expected): {detail}"
        ) from e
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):
        arr = arr[..., :-1]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def read_raw(path: PathLike) -> RawImage:
    """Decode a file without scaling (stored values; DICOM with slope/intercept applied)."""
    data = _read_bytes(path)
    if str(path).lower().endswith(DICOM_SUFFIXES) or _has_dicom_preamble(data[:132]):
        return _decode_dicom(path, data)
    pixels = _decode_raster(path, data)
    if pixels.ndim not in (2, 3) or pixels.size == 0:
        raise DataError(f"cannot read image {path}: unexpected pixel array shape {pixels.shape}")
    return RawImage(pixels)


def _robust_scale(x: np.ndarray) -> np.ndarray:
    """Map the 0.5th..99.5th percentile to [0, 1] and clip; falls back to min..max for near-constant images."""
    lo, hi = np.percentile(x, PERCENTILES)
    if not hi > lo:
        lo, hi = float(x.min()), float(x.max())
    if not hi > lo:  # a constant image carries no contrast
        return np.zeros_like(x, dtype=np.float32)
    out = (x - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def read_image(path: PathLike, channels: int = 1) -> np.ndarray:
    """Read an image as float32 in [0, 1]: ``(H, W)`` for ``channels=1``, ``(H, W, 3)`` for ``channels=3``.

    8-bit files are divided by 255; 16-bit, float and DICOM files are scaled per image by the 0.5-99.5
    percentiles (see the module docstring). Raises ``DataError`` naming the path when the file is missing or
    cannot be decoded.
    """
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels!r}")
    raw = read_raw(path)
    px = raw.pixels
    eight_bit = px.dtype == np.uint8
    if px.dtype not in (np.uint8, np.uint16, np.float32):
        px = px.astype(np.float32)  # cv2.cvtColor accepts only 8U, 16U and 32F
    if channels == 1 and px.ndim == 3:
        px = cv2.cvtColor(px, cv2.COLOR_RGB2GRAY)
    elif channels == 3 and px.ndim == 2:
        px = np.repeat(px[..., None], 3, axis=-1)
    if eight_bit:
        out = px.astype(np.float32) * np.float32(1.0 / 255.0)
    else:
        out = _robust_scale(px.astype(np.float32, copy=False))
    if raw.monochrome1:
        out = 1.0 - out
    return np.ascontiguousarray(out, dtype=np.float32)


def as_gray_mask(path: PathLike, px: np.ndarray) -> np.ndarray:
    """The gray values of a decoded mask: RGB(A) with identical color channels is read as gray."""
    if px.ndim == 2:
        return px
    if all(np.array_equal(px[..., 0], px[..., c]) for c in range(1, px.shape[-1])):
        return px[..., 0]
    raise DataError(
        f"mask {path} is a color image whose channels differ; masks must be gray images whose gray values "
        "are mapped to classes by dataset.mask_values"
    )


def validate_mask_values(mask_values: Sequence[int], setting: str = "dataset.mask_values") -> list[int]:
    """Check a gray-value map: non-empty, distinct, non-negative integers."""
    if isinstance(mask_values, str | bytes) or not isinstance(mask_values, Sequence) or not mask_values:
        raise ConfigError(f"{setting} must be a non-empty list of gray values, got {mask_values!r}")
    values = []
    for v in mask_values:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise ConfigError(f"{setting} must hold non-negative integers, got {v!r} in {list(mask_values)}")
        values.append(int(v))
    if len(set(values)) != len(values):
        raise ConfigError(f"{setting} has repeated gray values: {values}")
    return values


@lru_cache(maxsize=16)
def _lut(values: tuple[int, ...], size: int) -> np.ndarray:
    """Gray value -> class id table (-1 outside the map), built once per map (masks are read per batch)."""
    lut = np.full(size, -1, dtype=np.int64)
    for cls, v in enumerate(values):
        if v < size:
            lut[v] = cls
    lut.setflags(write=False)
    return lut


def mask_to_classes(mask: np.ndarray, mask_values: Sequence[int], path: PathLike = "<array>") -> np.ndarray:
    """Map stored gray values to class ids; ``DataError`` naming ``path`` for values outside the map."""
    values = validate_mask_values(mask_values)
    if mask.dtype in (np.uint8, np.uint16):  # lookup table: one pass, no sorting
        out = _lut(tuple(values), 256 if mask.dtype == np.uint8 else 65536)[mask]
        bad = out < 0
    else:
        uniq, inverse = np.unique(mask, return_inverse=True)
        table = {v: c for c, v in enumerate(values)}
        cls_of = np.array([table.get(u.item(), -1) for u in uniq], dtype=np.int64)
        out = cls_of[inverse.reshape(mask.shape)]
        bad = out < 0
    if bad.any():
        unexpected = np.unique(mask[bad])
        shown = ", ".join(str(v.item()) for v in unexpected[:20]) + (" ..." if unexpected.size > 20 else "")
        hint = " (JPEG is lossy: store masks as PNG)" if str(path).lower().endswith((".jpg", ".jpeg")) else ""
        raise DataError(
            f"mask {path} has values outside dataset.mask_values: {shown} "
            f"({int(bad.sum())} pixels); the configured map is {values} for classes 0..{len(values) - 1}{hint}"
        )
    return out


def read_mask(path: PathLike, mask_values: Sequence[int]) -> np.ndarray:
    """Read a mask as int64 class ids ``(H, W)``; ``mask_values[i]`` is the gray value of class ``i``.

    RGB(A) masks whose color channels are identical are read as gray. A value outside the map raises
    ``DataError`` naming the file, the unexpected values and the configured map.
    """
    values = validate_mask_values(mask_values)
    raw = read_raw(path)
    px = raw.pixels
    if raw.dicom and np.issubdtype(px.dtype, np.floating) and np.all(px == np.round(px)):
        px = px.astype(np.int64)
    return mask_to_classes(as_gray_mask(path, px), values, path)


def image_size(path: PathLike) -> tuple[int, int]:
    """``(H, W)`` of an image, from the header where possible (PIL and pydicom do not decode pixels)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no such file: {p}" if not p.exists() else f"not a file: {p}")
    if p.stat().st_size == 0:
        raise DataError(f"image file {p} is empty (0 bytes)")
    if is_dicom(p):
        import pydicom

        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
            return int(ds.Rows), int(ds.Columns)
        except Exception as e:
            raise DataError(f"cannot read the DICOM header of {p}: {e}") from e
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            w, h = im.size
            return int(h), int(w)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        pass  # a format PIL does not parse: decode it instead
    px = read_raw(p).pixels
    return int(px.shape[0]), int(px.shape[1])


@contextmanager
def quiet_opencv():
    """Silence OpenCV's decoder warnings (e.g. 'libpng error') while checking many possibly broken files."""
    try:
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # older builds without the logging module
        yield
        return
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)
