"""``spinenet data import``: DICOM series and NIfTI / MHA volumes -> 2D slices in the project's data layout.

Output layout (the same as the phantom's and SPIDER's)::

    out_dir/images/<pid>_<series>_s<k>.png   16-bit gray PNG (default) or 8-bit
    out_dir/masks/<pid>_<series>_s<k>.png    8-bit gray, class i written as gray 85*i
    out_dir/manifest.csv                     patient_id, series, slice, image, mask, + acquisition columns
    out_dir/import.json                      what was done (format "spinenet-import", version 1); no PHI
    out_dir/import_summary.json              every input file left out, with its status and reason

Intensities: 16-bit PNGs hold the volume's values mapped linearly from the volume's [min, max] to
[0, 65535] (one mapping per series, recorded in import.json as ``source_min`` / ``source_max``), so the
full dynamic range is kept and ``value = source_min + png / 65535 * (source_max - source_min)``. With
``bit_depth=8`` the volume's 0.5-99.5 percentiles are mapped to [0, 255] (robust to a few bright voxels).
(``spinenet.data.io.read_image`` rescales 16-bit images per image for training either way.)

Orientation of volumes: a volume is first reoriented to DICOM LPS axes with SimpleITK, then cut along
``axis``; slices are written the way radiologists look at them: sagittal and coronal with the head up
(sagittal: anterior on the left), axial with anterior up and the patient's right on the image's left.
A volume with a wrong or missing affine (identity) is cut along its stored array axes as if they were LPS.
DICOM series are written slice by slice as acquired (sorted along the slice normal by
ImagePositionPatient, else by InstanceNumber).

Labels: a label volume on the same voxel grid is mapped to classes background=0, disc=1, vertebra=2,
canal=3 (the project's sagittal convention). ``label_map="spider"`` is SPIDER's original release
(vertebrae 1-25, canal 100, discs 201-225, 0 = background). Values the map does not cover are an error
naming the file and the values (``unmapped="error"``) or become background (``unmapped="background"``).

Privacy: see :mod:`spinenet.utils.privacy`. Patient ids are hashed by default with a secret salt (argument
or env ``SPINENET_PHI_SALT``; the same salt gives the same pseudonyms in later imports, so a patient's
series imported on different days stay one patient for splitting). ``patient_id_mode="keep"`` writes the
id given (or the folder name) but never a DICOM PatientID or name. Only allow-listed acquisition fields
are copied from DICOM headers; the salt and absolute source paths are never written (import_summary.json
names left-out files relative to the source folder, with parts that hold a raw id or PHI value redacted).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from spinenet.errors import ConfigError, DataError
from spinenet.utils.privacy import (
    check_patient_id_mode,
    phi_values,
    pseudonymize,
    resolve_salt,
    safe_dicom_metadata,
)
from spinenet.utils.progress import progress as with_progress
from spinenet.utils.progress import progress_bar

log = logging.getLogger(__name__)

IMPORT_FORMAT = "spinenet-import"
IMPORT_VERSION = 1
SUMMARY_NAME = "import_summary.json"  # every input file that was not imported, with its reason
SUMMARY_FORMAT = "spinenet-import-summary"
VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
AXES: tuple[str, ...] = ("sagittal", "axial", "coronal")
CLASS_NAMES: tuple[str, ...] = ("background", "disc", "vertebra", "canal")
MASK_STEP = 85  # class i -> gray 85*i, as the phantom writes masks
UNMAPPED_POLICIES: tuple[str, ...] = ("error", "background")
BIT_DEPTHS: tuple[int, ...] = (8, 16)

LabelMap = dict[int, int]


# ---------------------------------------------------------------------------------------------- label maps


def spider_label_map() -> LabelMap:
    """SPIDER original release: vertebrae 1-25 -> vertebra, canal 100 -> canal, discs 201-225 -> disc."""
    lm: LabelMap = {0: 0, 100: CLASS_NAMES.index("canal")}
    lm.update({v: CLASS_NAMES.index("vertebra") for v in range(1, 26)})
    lm.update({v: CLASS_NAMES.index("disc") for v in range(201, 226)})
    return lm


def parse_label_map(spec: str | dict[Any, Any] | None) -> LabelMap | None:
    """``None`` (identity on class ids 0..3), ``"spider"``, a dict, a JSON object string or a JSON file path.

    Keys are label values or inclusive ranges ``"a-b"``; values are class ids or names
    (background / disc / vertebra / canal). Label 0 is background unless the map says otherwise.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() == "spider":
            return spider_label_map()
        if not text.startswith("{"):
            path = Path(text).expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"label map {spec!r}: give 'spider', a JSON object or a JSON file; file not found"
                )
            text = path.read_text(encoding="utf-8")
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"label map {spec!r}: not valid JSON ({exc})") from None
        if not isinstance(spec, dict):
            raise ConfigError("label map: the JSON must be an object {label value or 'a-b': class}")
    out: LabelMap = {}
    for key, cls in spec.items():
        if isinstance(cls, str) and cls in CLASS_NAMES:
            cls = CLASS_NAMES.index(cls)
        if not isinstance(cls, int) or isinstance(cls, bool) or not 0 <= cls < len(CLASS_NAMES):
            raise ConfigError(
                f"label map entry {key!r}: class {cls!r} is not valid; use 0..{len(CLASS_NAMES) - 1} or one of "
                f"{list(CLASS_NAMES)}"
            )
        match = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", str(key))
        if not match:
            raise ConfigError(f"label map key {key!r}: use an integer label value or a range 'a-b'")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo:
            raise ConfigError(f"label map key {key!r}: range end is below its start")
        out.update({v: cls for v in range(lo, hi + 1)})
    out.setdefault(0, 0)
    return out


def apply_label_map(
    labels: np.ndarray, label_map: LabelMap | None, *, source: str, unmapped: str = "error"
) -> tuple[np.ndarray, dict[int, int]]:
    """Label values -> class ids (uint8). Returns ``(classes, {value: voxel count})``.

    :class:`DataError` naming ``source`` and the values when a value is not in the map and
    ``unmapped == "error"``; with ``"background"`` such values become class 0.
    """
    if unmapped not in UNMAPPED_POLICIES:
        raise ConfigError(f"unmapped: {unmapped!r} is not valid; choose one of {list(UNMAPPED_POLICIES)}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)):
            raise DataError(
                f"label volume {source}: holds non-integer values; a label volume must hold integers"
            )
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "iub":
        raise DataError(f"label volume {source}: has pixel type {labels.dtype}, expected integers")
    lm = label_map if label_map is not None else {c: c for c in range(len(CLASS_NAMES))}
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    missing = [int(v) for v in values if int(v) not in lm]
    if missing and unmapped == "error":
        shown = ", ".join(map(str, missing[:20])) + (
            f" ... ({len(missing)} values)" if len(missing) > 20 else ""
        )
        raise DataError(
            f"label volume {source}: values {shown} have no class in the label map; extend --label-map or "
            "pass --unmapped background to treat them as background"
        )
    lut = np.array([lm.get(int(v), 0) for v in values], dtype=np.uint8)
    classes = lut[inverse.reshape(labels.shape)]
    return classes, {int(v): int(c) for v, c in zip(values, counts, strict=True)}


# ----------------------------------------------------------------------------------------------- intensity


def scale_intensity(volume: np.ndarray, bit_depth: int = 16) -> tuple[np.ndarray, dict[str, Any]]:
    """Map a whole volume to PNG gray levels (one mapping per volume, so slices stay comparable)."""
    if bit_depth not in BIT_DEPTHS:
        raise ConfigError(f"bit_depth: {bit_depth!r} is not valid; choose one of {list(BIT_DEPTHS)}")
    vol = volume.astype(np.float64)
    finite = np.isfinite(vol)
    if not finite.any():
        raise DataError("image volume holds no finite values")
    if bit_depth == 16:
        lo, hi, top, method = float(vol[finite].min()), float(vol[finite].max()), 65535, "volume_min_max"
    else:
        lo, hi = (float(x) for x in np.percentile(vol[finite], [0.5, 99.5]))
        top, method = 255, "volume_percentile_0.5_99.5"
    vol = np.where(finite, vol, lo)
    scaled = np.zeros_like(vol) if hi <= lo else (np.clip(vol, lo, hi) - lo) / (hi - lo) * top
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    info = {"bit_depth": bit_depth, "method": method, "source_min": lo, "source_max": hi}
    return np.rint(scaled).astype(dtype), info


# ------------------------------------------------------------------------------------------------ output


def _slug(text: str, default: str) -> str:
    """File-name-safe piece without '_' (it separates pid, series and slice in file names)."""
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", str(text)).strip("-.")[:48]
    return slug or default


def _check_pid(pid: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}", pid):
        raise DataError(
            f"patient id {pid!r}: use 1-64 letters, digits, '.' or '-' (it becomes part of file names); "
            "or hash it (--hash-ids)"
        )
    return pid


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


@dataclass
class _Series:
    """One imported series, ready to be written."""

    pid: str
    series: str
    images: np.ndarray  # (N, H, W) uint8 / uint16
    masks: np.ndarray | None  # (N, H, W) class ids
    columns: dict[str, Any]  # extra manifest columns, the same for every slice
    record: dict[str, Any] = field(default_factory=dict)  # the series' entry in import.json


class _Output:
    """The output folder: refuses a non-empty one unless overwriting, writes slices, manifest and import.json."""

    def __init__(self, out_dir: str | Path, overwrite: bool, inputs: Sequence[Any] = ()) -> None:
        from spinenet.utils.outdir import prepare_output_dir

        self.root = Path(out_dir).expanduser()
        # never into the source, and --overwrite only over an earlier spinenet output
        prepare_output_dir(self.root, inputs, overwrite, command="data import", clear=())
        if overwrite:
            self._remove_previous_import()
        self.rows: list[dict[str, Any]] = []
        self.records: list[dict[str, Any]] = []
        self.names: set[str] = set()

    def _remove_previous_import(self) -> None:
        """Delete only what a previous import wrote (files listed in its manifest), never anything else:
        stale slices would otherwise stay next to the new manifest, possibly named with old ids."""
        manifest = self.root / "manifest.csv"
        if not (self.root / "import.json").is_file() or not manifest.is_file():
            return
        with manifest.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for key in ("image", "mask"):
                    rel = (row.get(key) or "").strip()
                    target = (self.root / rel).resolve()
                    if rel and target.is_file() and self.root.resolve() in target.parents:
                        target.unlink()
        manifest.unlink()
        (self.root / "import.json").unlink()

    def add(self, s: _Series, *, labeled_only: bool = False) -> int:
        base = f"{s.pid}_{s.series}"
        n = 2
        while base in self.names:  # a second series with the same name for the same patient
            base = f"{s.pid}_{s.series}-{n}"
            n += 1
        self.names.add(base)
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        if s.masks is not None:
            (self.root / "masks").mkdir(parents=True, exist_ok=True)
        written = 0
        for k in range(s.images.shape[0]):
            if labeled_only and s.masks is not None and not s.masks[k].any():
                continue
            name = f"{base}_s{k:03d}.png"
            _write_png(self.root / "images" / name, s.images[k])
            mask_rel = ""
            if s.masks is not None:
                _write_png(self.root / "masks" / name, (s.masks[k] * MASK_STEP).astype(np.uint8))
                mask_rel = f"masks/{name}"
            self.rows.append(
                {
                    "patient_id": s.pid,
                    "series": base.split("_", 1)[1],
                    "slice": k,
                    "image": f"images/{name}",
                    "mask": mask_rel,
                    **s.columns,
                }
            )
            written += 1
        self.records.append(
            {"patient_id": s.pid, "series": base.split("_", 1)[1], "slices_written": written, **s.record}
        )
        log.info("imported %s: %d slices", base, written)
        return written

    def finish(self, info: dict[str, Any]) -> Path:
        if not self.rows:
            raise DataError(f"import into {self.root}: no slice was written (all slices without labels?)")
        header: list[str] = []
        for row in self.rows:
            header += [k for k in row if k not in header]
        from spinenet.utils.safe_csv import neutralise_rows

        with (self.root / "manifest.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=header, restval="")
            writer.writeheader()
            writer.writerows(neutralise_rows(self.rows))
        from spinenet import __version__ as spinenet_version

        record = {
            "format": IMPORT_FORMAT,
            "version": IMPORT_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "spinenet_version": spinenet_version,
            "images": len(self.rows),
            "classes": list(CLASS_NAMES),
            "mask_values": [MASK_STEP * i for i in range(len(CLASS_NAMES))],
            **info,
            "series": self.records,
        }
        (self.root / "import.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return self.root


def _id_policy(mode: str, salt: str | None) -> tuple[Callable[[str], str], dict[str, Any]]:
    """Function raw id -> written id, and what import.json says about it (never the salt)."""
    mode = check_patient_id_mode(mode)
    if mode == "keep":
        return (lambda raw: _check_pid(str(raw))), {"patient_id_mode": "keep"}
    secret, source = resolve_salt(salt)
    return (lambda raw: pseudonymize(str(raw), secret)), {"patient_id_mode": "hash", "salt_source": source}


# -------------------------------------------------------------------------------------------------- DICOM


@dataclass
class _DicomFile:
    path: Path
    ds: Any  # header only (no pixels)


@dataclass
class _FileStatus:
    """What became of one input file that was not imported: ``skipped`` (not an image), ``failed``
    (unreadable, truncated, no pixel data, undecodable) or ``refused`` (burned-in annotation)."""

    path: Path
    status: str
    reason: str


def _is_burned_in(ds: Any) -> bool:
    return str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"


def _find_dicom_series(
    src: Path, *, allow_burned_in: bool = True, statuses: list[_FileStatus] | None = None
) -> tuple[dict[str, list[_DicomFile]], int]:
    """Image DICOM files under ``src`` grouped by SeriesInstanceUID; also the number of other files.

    Every file left out is appended to ``statuses`` with its reason. ``allow_burned_in=False`` leaves out
    (refuses) slices whose BurnedInAnnotation is YES: identifying text may be in their pixels.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not src.is_dir():
        raise DataError(f"DICOM folder {src}: not found or not a folder")
    statuses = [] if statuses is None else statuses
    first_status = len(statuses)
    groups: dict[str, list[_DicomFile]] = defaultdict(list)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
            statuses.append(_FileStatus(path, "skipped", "hidden file or DICOMDIR index, not an image"))
            continue
        if path.stat().st_size == 0:
            statuses.append(_FileStatus(path, "failed", "empty file (0 bytes)"))
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            if path.name.lower().endswith((".dcm", ".dicom")):
                statuses.append(_FileStatus(path, "failed", "not a readable DICOM file"))
            else:
                statuses.append(_FileStatus(path, "skipped", "not a DICOM file"))
            continue
        except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            statuses.append(
                _FileStatus(path, "failed", f"truncated or corrupt DICOM header ({type(exc).__name__})")
            )
            continue
        if "Rows" not in ds or "Columns" not in ds:  # structured reports, presentation states ...
            statuses.append(_FileStatus(path, "skipped", "DICOM object without an image"))
            continue
        if not allow_burned_in and _is_burned_in(ds):
            statuses.append(
                _FileStatus(
                    path,
                    "refused",
                    "BurnedInAnnotation is YES (identifying text may be in the pixels); "
                    "pass --allow-burned-in to import it",
                )
            )
            continue
        groups[str(ds.get("SeriesInstanceUID", "")) or str(path.parent)].append(_DicomFile(path, ds))
    skipped = len(statuses) - first_status
    if not groups:
        refused = [st for st in statuses[first_status:] if st.status != "skipped"]
        detail = f"; e.g. {_shown(refused[0].path, src)}: {refused[0].reason}" if refused else ""
        raise DataError(f"DICOM folder {src}: no DICOM image files found ({skipped} other files{detail})")
    return dict(groups), skipped


def _shown(path: Path, src: Path) -> str:
    """A source file as the user knows it: relative to the imported folder."""
    return str(path.relative_to(src)) if src in path.parents else path.name


def _float_list(value: Any) -> list[float] | None:
    try:
        return [float(v) for v in value] if value is not None else None
    except (TypeError, ValueError):
        return None


def _sort_dicom(files: list[_DicomFile], where: str) -> tuple[list[_DicomFile], dict[str, Any] | None]:
    """Sort along the slice normal (ImagePositionPatient), else by InstanceNumber, else by file name.

    Returns the geometry (origin, spacing, direction) when every slice has position and orientation.
    """
    orients = [_float_list(f.ds.get("ImageOrientationPatient")) for f in files]
    positions = [_float_list(f.ds.get("ImagePositionPatient")) for f in files]
    if all(o is not None and len(o) == 6 for o in orients) and all(
        p is not None and len(p) == 3 for p in positions
    ):
        first = np.array(orients[0])
        if any(not np.allclose(o, first, atol=1e-3) for o in orients):
            raise DataError(
                f"DICOM series in {where}: slices have different orientations (a localizer?); "
                "import a series with one orientation"
            )
        row, col = first[:3], first[3:]
        normal = np.cross(row, col)
        dist = [float(np.dot(p, normal)) for p in positions]
        order = np.argsort(dist, kind="stable")
        files = [files[i] for i in order]
        dist = sorted(dist)
        spacing_rc = _float_list(files[0].ds.get("PixelSpacing")) or [1.0, 1.0]
        gaps = np.diff(dist)
        if len(gaps) and np.any(gaps < 1e-4):
            raise DataError(
                f"DICOM series in {where}: several slices share one position (duplicates or a "
                "multi-echo / multi-phase series); split it before importing"
            )
        dz = float(np.median(gaps)) if len(gaps) else float(files[0].ds.get("SliceThickness", 1.0) or 1.0)
        geometry = {
            "origin": [float(v) for v in positions[order[0]]],
            "spacing": [spacing_rc[1], spacing_rc[0], dz],  # x (along a row), y (down a column), z
            "direction": np.stack([row, col, normal], axis=1).ravel().tolist(),  # columns = axis directions
        }
        return files, geometry
    if all("InstanceNumber" in f.ds and f.ds.InstanceNumber is not None for f in files):
        return sorted(files, key=lambda f: int(f.ds.InstanceNumber)), None
    return files, None


def _read_pixels(
    files: list[_DicomFile],
    src: Path,
    where: str,
    statuses: list[_FileStatus] | None = None,
    bar: Any = None,
) -> tuple[np.ndarray, Any, list[_DicomFile]]:
    """(N, H, W) float volume in modality units (rescale slope / intercept applied), the first dataset and
    the files it holds. A file that cannot be read (no pixel data, truncated, no decoder, colour, another
    size) is left out and appended to ``statuses``; :class:`DataError` when no file of the series is left."""
    import pydicom

    from spinenet.data.io import dicom_pixels

    statuses = [] if statuses is None else statuses
    slices: list[np.ndarray] = []
    read: list[_DicomFile] = []
    first = None
    failures: list[_FileStatus] = []
    for f in files:
        rel = _shown(f.path, src)
        try:
            try:
                ds = pydicom.dcmread(f.path)
            except Exception as exc:  # the header was read: the pixel data must be cut short
                raise DataError(f"DICOM file {rel}: cannot read its pixel data ({type(exc).__name__})") from None
            if int(ds.get("SamplesPerPixel", 1)) != 1:
                raise DataError(
                    f"DICOM file {rel}: colour images are not supported (SamplesPerPixel "
                    f"{ds.SamplesPerPixel}); MR series are gray"
                )
            arr = np.asarray(dicom_pixels(ds, f.path, rel), dtype=np.float64)
            frames = arr if arr.ndim == 3 else arr[None]
            if slices and frames.shape[1:] != slices[0].shape:
                raise DataError(
                    f"DICOM file {rel}: size {frames.shape[1:]} differs from the series' {slices[0].shape}"
                )
        except DataError as exc:
            failures.append(_FileStatus(f.path, "failed", str(exc)))
            continue
        finally:
            if bar is not None:
                bar.update(1)
        slices.extend(frames)
        read.append(f)
        first = ds if first is None else first
    statuses.extend(failures)
    if not slices:
        raise DataError(
            f"DICOM series in {where}: none of its {len(files)} files could be read; first: {failures[0].reason}"
        )
    volume = np.stack(slices)
    if str(first.get("PhotometricInterpretation", "")) == "MONOCHROME1":  # 0 = white: invert the whole volume
        volume = volume.max() + volume.min() - volume
    return volume, first, read


def _check_same_grid(
    label: Any, ref_size: tuple[int, ...], geometry: dict[str, Any] | None, where: str
) -> None:
    size = tuple(label.GetSize())
    if size != tuple(ref_size):
        raise DataError(
            f"label volume {where}: size {size} (x, y, z) does not match the image's {tuple(ref_size)}; "
            "it must be on the same voxel grid"
        )
    if geometry is None:
        return
    spacing = np.array(geometry["spacing"])
    problems = []
    if not np.allclose(label.GetSpacing(), spacing, rtol=1e-3, atol=1e-4):
        problems.append(
            f"spacing {tuple(round(v, 4) for v in label.GetSpacing())} vs {tuple(spacing.round(4))}"
        )
    if not np.allclose(label.GetOrigin(), geometry["origin"], atol=max(1e-3, 0.01 * spacing.min())):
        problems.append("origin differs")
    if not np.allclose(label.GetDirection(), geometry["direction"], atol=1e-3):
        problems.append("direction differs")
    if problems:
        raise DataError(
            f"label volume {where}: not on the image's grid ({'; '.join(problems)}); resample it first "
            "or pass --no-geometry-check if only its header is wrong"
        )


def _dicom_series(
    files: list[_DicomFile],
    src: Path,
    where: str,
    *,
    pid_for: Callable[[str], str],
    mode: str,
    patient_id: str | None,
    fallback_id: str,
    series: str | None,
    masks: str | Path | None,
    label_map: LabelMap | None,
    unmapped: str,
    bit_depth: int,
    check_geometry: bool,
    statuses: list[_FileStatus] | None = None,
    bar: Any = None,
) -> _Series:
    files, geometry = _sort_dicom(files, where)
    header = files[0].ds
    dicom_phi = {v.lower() for v in phi_values(header)}
    if mode == "keep":
        raw = patient_id or fallback_id
        if raw.lower() in dicom_phi:
            raise DataError(
                f"DICOM series in {where}: keep mode would write the DICOM patient id or name "
                "unhashed; pass --patient-id with a research id or use --hash-ids"
            )
    else:
        raw = patient_id or str(header.get("PatientID", "") or "").strip() or fallback_id
    pid = pid_for(raw)
    meta = safe_dicom_metadata(header)
    name = (
        series
        or meta.get("SeriesDescription")
        or (f"series{meta['SeriesNumber']}" if "SeriesNumber" in meta else "series")
    )
    name = _slug(name, "series")
    if any(tok.lower() in dicom_phi or tok == raw for tok in re.split(r"[-.]", name)):
        name = "series"  # never let an identifying token into file names
    volume, _, _ = _read_pixels(files, src, where, statuses, bar)
    images, intensity = scale_intensity(volume, bit_depth)
    mask_classes = None
    label_record: dict[str, Any] = {}
    if masks is not None:
        label = _read_sitk(Path(masks), "label volume")
        n, h, w = volume.shape
        _check_same_grid(label, (w, h, n), geometry if check_geometry else None, Path(masks).name)
        import SimpleITK as sitk

        mask_classes, counts = apply_label_map(
            sitk.GetArrayFromImage(label), label_map, source=Path(masks).name, unmapped=unmapped
        )
        label_record = {"label_values": {str(k): v for k, v in counts.items()}}
    spacing = meta.get("PixelSpacing") or [None, None]
    columns = {
        "modality": meta.get("Modality", ""),
        "series_description": meta.get("SeriesDescription", ""),
        "manufacturer": meta.get("Manufacturer", ""),
        "magnetic_field_strength": meta.get("MagneticFieldStrength", ""),
        "spacing_row_mm": spacing[0] if spacing[0] is not None else "",
        "spacing_col_mm": spacing[1] if len(spacing) > 1 and spacing[1] is not None else "",
        "slice_thickness_mm": meta.get("SliceThickness", ""),
    }
    record = {
        "source": "dicom",
        "slices": int(volume.shape[0]),
        "sorted_by": "position" if geometry else "instance_number_or_name",
        "intensity": intensity,
        "dicom": meta,
        **label_record,
    }
    return _Series(pid, name, images, mask_classes, columns, record)


def _import_dicom_groups(
    src: Path,
    groups: dict[str, list[_DicomFile]],
    statuses: list[_FileStatus],
    out_dir: str | Path,
    *,
    patient_id: str | None,
    patient_id_mode: str,
    salt: str | None,
    masks: str | Path | None,
    label_map: str | dict[Any, Any] | None,
    unmapped: str,
    series: str | None,
    bit_depth: int,
    labeled_only: bool,
    check_geometry: bool,
    overwrite: bool,
    progress: bool | None = None,
) -> Path:
    lm = parse_label_map(label_map)
    pid_for, id_info = _id_policy(patient_id_mode, salt)
    if masks is not None and len(groups) > 1:
        raise DataError(
            f"DICOM folder {src}: holds {len(groups)} series; a label volume can only go with a "
            "folder of one series"
        )
    out = _Output(out_dir, overwrite, [(src, "DICOM folder"), (masks, "label volume")])
    skipped = len(statuses)
    redact: set[str] = set()  # identifying values and raw ids, kept out of the summary's file names
    series_errors: list[DataError] = []
    n_files = sum(len(fs) for fs in groups.values())
    with progress_bar(n_files, "importing DICOM", progress) as bar:
        for files in sorted(groups.values(), key=lambda fs: str(fs[0].path)):
            parent = files[0].path.parent
            where = str(parent.relative_to(src)) if parent != src else str(src)
            redact.update(v.lower() for f in files for v in phi_values(f.ds))
            fallback_id = _slug(parent.name, "patient")
            if patient_id_mode == "hash":  # the raw id hashed for this series: not to be shown beside it
                has_id = patient_id or str(files[0].ds.get("PatientID", "") or "").strip()
                redact.add((patient_id or ("" if has_id else fallback_id)).lower())
                redact.discard("")
            failed_before = len(statuses)
            try:
                s = _dicom_series(
                    files,
                    src,
                    where,
                    pid_for=pid_for,
                    mode=patient_id_mode,
                    patient_id=patient_id,
                    fallback_id=fallback_id,
                    series=series,
                    masks=masks,
                    label_map=lm,
                    unmapped=unmapped,
                    bit_depth=bit_depth,
                    check_geometry=check_geometry,
                    statuses=statuses,
                    bar=bar,
                )
            except DataError as exc:  # one bad series must not stop the others: it is listed instead
                series_errors.append(exc)
                listed = {st.path for st in statuses[failed_before:]}
                statuses.extend(
                    _FileStatus(f.path, "failed", f"its series was not imported: {exc}")
                    for f in files
                    if f.path not in listed
                )
                continue
            out.add(s, labeled_only=labeled_only)
    if not out.rows and len(series_errors) == 1 and len(groups) == 1:
        raise series_errors[0]  # a single series: its own error, as before
    if not out.rows and series_errors:
        raise DataError(
            f"DICOM folder {src}: none of its {len(groups)} series could be imported; first: {series_errors[0]}"
        )
    root = out.finish(
        {
            "source": "dicom",
            **id_info,
            "label_map": _label_map_name(label_map),
            "unmapped": unmapped,
            "bit_depth": bit_depth,
            "skipped_files": skipped,
        }
    )
    _write_summary(root, src, n_files + skipped, statuses, redact)
    return root


def _redacted(text: str, redact: set[str]) -> str:
    """``text`` with identifying values (as substrings) and short raw ids (as whole tokens) replaced by
    ``<redacted>``: folder and file names are often patient names or ids."""
    for value in sorted(redact, key=len, reverse=True):
        pattern = re.escape(value) if len(value) >= 3 else rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])"
        text = re.sub(pattern, "<redacted>", text, flags=re.IGNORECASE)
    return text


def _write_summary(
    root: Path, src: Path, n_inputs: int, statuses: list[_FileStatus], redact: set[str]
) -> dict[str, Any]:
    """``import_summary.json``: counts, and every input file that was not imported with its reason."""
    counts = {k: sum(st.status == k for st in statuses) for k in ("failed", "refused", "skipped")}
    summary = {
        "format": SUMMARY_FORMAT,
        "version": 1,
        "inputs": n_inputs,
        "imported": n_inputs - sum(counts.values()),
        **counts,
        "files": [
            {
                "file": _redacted(_shown(st.path, src), redact),
                "status": st.status,
                "reason": _redacted(st.reason, redact),
            }
            for st in sorted(statuses, key=lambda st: str(st.path))
        ],
    }
    (root / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def import_dicom_tree(
    src: str | Path,
    out_dir: str | Path,
    *,
    patient_id: str | None = None,
    patient_id_mode: str = "hash",
    salt: str | None = None,
    masks: str | Path | None = None,
    label_map: str | dict[Any, Any] | None = None,
    unmapped: str = "error",
    series: str | None = None,
    bit_depth: int = 16,
    labeled_only: bool = False,
    check_geometry: bool = True,
    overwrite: bool = False,
    allow_burned_in: bool = False,
    progress: bool | None = None,
) -> Path:
    """Import every DICOM image series found under ``src`` (grouped by SeriesInstanceUID) into ``out_dir``.

    The patient id of each series is ``patient_id`` if given, else (hash mode) its DICOM PatientID hashed,
    else the name of the folder holding it. ``masks`` (a label volume on the series' grid) is only allowed
    when ``src`` holds one series. Returns ``out_dir``.

    Fault isolation: a file that cannot be imported (empty, not DICOM, truncated, no pixel data, no decoder,
    a slice with BurnedInAnnotation YES unless ``allow_burned_in``) or a series that fails as a whole is left
    out, and the others are imported; ``out_dir/import_summary.json`` lists each left-out file with its
    reason. :class:`DataError` only when nothing could be imported. ``progress``: a bar over the files
    (``None``: on a terminal only).
    """
    src = Path(src).expanduser()
    statuses: list[_FileStatus] = []
    groups, _ = _find_dicom_series(src, allow_burned_in=allow_burned_in, statuses=statuses)
    return _import_dicom_groups(
        src,
        groups,
        statuses,
        out_dir,
        patient_id=patient_id,
        patient_id_mode=patient_id_mode,
        salt=salt,
        masks=masks,
        label_map=label_map,
        unmapped=unmapped,
        series=series,
        bit_depth=bit_depth,
        labeled_only=labeled_only,
        check_geometry=check_geometry,
        overwrite=overwrite,
        progress=progress,
    )


def import_dicom_series(
    series_dir: str | Path,
    out_dir: str | Path,
    *,
    patient_id: str | None = None,
    patient_id_mode: str = "hash",
    salt: str | None = None,
    masks: str | Path | None = None,
    label_map: str | dict[Any, Any] | None = None,
    unmapped: str = "error",
    series: str | None = None,
    bit_depth: int = 16,
    labeled_only: bool = False,
    check_geometry: bool = True,
    overwrite: bool = False,
    allow_burned_in: bool = False,
    progress: bool | None = None,
) -> Path:
    """Import one DICOM series (a folder holding exactly one series) into ``out_dir``; see
    :func:`import_dicom_tree` for the arguments. Returns ``out_dir``."""
    src = Path(series_dir).expanduser()
    statuses: list[_FileStatus] = []
    groups, _ = _find_dicom_series(src, allow_burned_in=allow_burned_in, statuses=statuses)
    if len(groups) != 1:
        raise DataError(
            f"DICOM folder {src}: holds {len(groups)} series, expected one; import the parent "
            "folder with `spinenet data import` (import_dicom_tree) to import them all"
        )
    return _import_dicom_groups(
        src,
        groups,
        statuses,
        out_dir,
        patient_id=patient_id,
        patient_id_mode=patient_id_mode,
        salt=salt,
        masks=masks,
        label_map=label_map,
        unmapped=unmapped,
        series=series,
        bit_depth=bit_depth,
        labeled_only=labeled_only,
        check_geometry=check_geometry,
        overwrite=overwrite,
        progress=progress,
    )


def _label_map_name(spec: str | dict[Any, Any] | None) -> str | None:
    if spec is None:
        return None
    return "spider" if isinstance(spec, str) and spec.strip().lower() == "spider" else "custom"


# ------------------------------------------------------------------------------------------------ volumes


def _volume_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def _read_sitk(path: Path, what: str) -> Any:
    import SimpleITK as sitk

    if not path.is_file():
        raise DataError(f"{what} {path}: file not found")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(
            f"{what} {path}: cannot be read as NIfTI / MHA ({str(exc).strip().splitlines()[-1][:200]})"
        ) from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            f"{what} {path}: expected a 3-D single-channel volume, got {img.GetDimension()}-D with "
            f"{img.GetNumberOfComponentsPerPixel()} channel(s)"
        )
    return img


def _cut(arr_spl: np.ndarray, axis: str) -> np.ndarray:
    """(S, P, L)-indexed array (LPS-oriented image) -> (N, H, W) slices in display orientation."""
    if axis == "sagittal":  # slices right -> left; rows head -> feet, columns anterior -> posterior
        return np.ascontiguousarray(np.moveaxis(arr_spl, 2, 0)[:, ::-1, :])
    if axis == "coronal":  # slices anterior -> posterior; rows head -> feet, columns patient right -> left
        return np.ascontiguousarray(np.moveaxis(arr_spl, 1, 0)[:, ::-1, :])
    return np.ascontiguousarray(arr_spl)  # axial: slices feet -> head; rows anterior -> posterior


def _spacings(spacing_xyz: Sequence[float], axis: str) -> tuple[float, float, float]:
    """(row, column, between slices) spacing in mm of the cut slices; spacing_xyz of the LPS image."""
    sx, sy, sz = spacing_xyz
    return {"sagittal": (sz, sy, sx), "coronal": (sz, sx, sy), "axial": (sy, sx, sz)}[axis]


def _volume_series(
    image_path: Path,
    *,
    label_path: Path | None,
    label_map: LabelMap | None,
    axis: str,
    pid: str,
    raw_id: str,
    series: str | None,
    unmapped: str,
    bit_depth: int,
    check_geometry: bool,
) -> _Series:
    import SimpleITK as sitk

    if axis not in AXES:
        raise ConfigError(f"axis: {axis!r} is not valid; choose one of {list(AXES)}")
    img = _read_sitk(image_path, "image volume")
    geometry = {"origin": img.GetOrigin(), "spacing": img.GetSpacing(), "direction": img.GetDirection()}
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection())
    img_lps = sitk.DICOMOrient(img, "LPS")
    volume = _cut(sitk.GetArrayFromImage(img_lps), axis)
    images, intensity = scale_intensity(volume, bit_depth)
    masks = None
    label_record: dict[str, Any] = {}
    if label_path is not None:
        label = _read_sitk(label_path, "label volume")
        _check_same_grid(label, img.GetSize(), geometry if check_geometry else None, label_path.name)
        label.CopyInformation(img)  # identical grids: drop float noise in the header before reorienting
        arr = _cut(sitk.GetArrayFromImage(sitk.DICOMOrient(label, "LPS")), axis)
        masks, counts = apply_label_map(arr, label_map, source=label_path.name, unmapped=unmapped)
        label_record = {"label_values": {str(k): v for k, v in counts.items()}}
    if series is None:
        stem = image_path.name[: -len(_volume_suffix(image_path) or "")]
        parts = stem.split("_")
        series = "_".join(parts[1:]) if len(parts) > 1 and parts[0] == raw_id else stem
    name = _slug(series, "volume")
    if raw_id in re.split(r"[-.]", name) and pid != raw_id:
        name = "volume"  # the hashed id must not reappear in the file name
    row_mm, col_mm, between_mm = _spacings(img_lps.GetSpacing(), axis)
    columns = {
        "axis": axis,
        "spacing_row_mm": round(row_mm, 6),
        "spacing_col_mm": round(col_mm, 6),
        "slice_thickness_mm": round(between_mm, 6),
    }
    record = {
        "source": "volume",
        "format": (_volume_suffix(image_path) or "").lstrip("."),
        "axis": axis,
        "source_orientation": orientation,
        "size_xyz": list(img.GetSize()),
        "slices": int(volume.shape[0]),
        "intensity": intensity,
        **label_record,
    }
    return _Series(pid, name, images, masks, columns, record)


def import_volume(
    image_path: str | Path,
    out_dir: str | Path,
    *,
    patient_id: str,
    label_path: str | Path | None = None,
    label_map: str | dict[Any, Any] | None = None,
    axis: str = "sagittal",
    patient_id_mode: str = "hash",
    salt: str | None = None,
    series: str | None = None,
    unmapped: str = "error",
    bit_depth: int = 16,
    labeled_only: bool = False,
    check_geometry: bool = True,
    overwrite: bool = False,
) -> Path:
    """Import one NIfTI / MHA / NRRD volume (and its label volume) as 2D slices cut along ``axis``.

    ``series`` defaults to the file name without its suffix and without a leading ``<patient_id>_``
    (SPIDER ``1_t2.mha`` with patient id ``1`` -> series ``t2``). Returns ``out_dir``.
    """
    lm = parse_label_map(label_map)
    pid_for, id_info = _id_policy(patient_id_mode, salt)
    out = _Output(out_dir, overwrite, [(image_path, "volume"), (label_path, "label volume")])
    image_path = Path(image_path).expanduser()
    s = _volume_series(
        image_path,
        label_path=Path(label_path).expanduser() if label_path else None,
        label_map=lm,
        axis=axis,
        pid=pid_for(str(patient_id)),
        raw_id=str(patient_id),
        series=series,
        unmapped=unmapped,
        bit_depth=bit_depth,
        check_geometry=check_geometry,
    )
    out.add(s, labeled_only=labeled_only)
    root = out.finish(
        {
            "source": "volume",
            **id_info,
            "label_map": _label_map_name(label_map),
            "unmapped": unmapped,
            "bit_depth": bit_depth,
            "axis": axis,
        }
    )
    _write_summary(root, image_path.parent, 1, [], set())
    return root


def volume_patient_id(path: Path) -> str:
    """Patient id from a volume file name: the part before the first '_' (SPIDER: ``12_t1.mha`` -> ``12``)."""
    stem = path.name[: -len(_volume_suffix(path) or "")]
    return stem.split("_", 1)[0]


def import_volume_folder(
    image_dir: str | Path,
    out_dir: str | Path,
    *,
    label_dir: str | Path | None = None,
    label_map: str | dict[Any, Any] | None = None,
    axis: str = "sagittal",
    patient_id_mode: str = "hash",
    salt: str | None = None,
    unmapped: str = "error",
    bit_depth: int = 16,
    labeled_only: bool = False,
    check_geometry: bool = True,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Path:
    """Import every volume file in ``image_dir`` (SPIDER's ``images/``), each with the label volume of the
    same file name in ``label_dir`` (SPIDER's ``masks/``). Patient ids come from the file names
    (:func:`volume_patient_id`). A volume that cannot be imported is left out and listed with its reason in
    ``import_summary.json``, the others are imported. Returns ``out_dir``."""
    image_dir = Path(image_dir).expanduser()
    files = (
        sorted(p for p in image_dir.iterdir() if p.is_file() and _volume_suffix(p))
        if image_dir.is_dir()
        else []
    )
    if not files:
        raise DataError(f"volume folder {image_dir}: no {'/'.join(VOLUME_SUFFIXES)} files found")
    label_dir = Path(label_dir).expanduser() if label_dir else None
    if label_dir is not None:
        missing = [p.name for p in files if not (label_dir / p.name).is_file()]
        if missing:
            raise DataError(
                f"label folder {label_dir}: no label volume for {len(missing)} image(s), e.g. "
                f"{missing[:3]}; labels must have the images' file names"
            )
    lm = parse_label_map(label_map)
    pid_for, id_info = _id_policy(patient_id_mode, salt)
    out = _Output(out_dir, overwrite, [(image_dir, "volume folder"), (label_dir, "label folder")])
    statuses: list[_FileStatus] = []
    redact: set[str] = set()
    for path in with_progress(files, desc="importing volumes", enabled=progress):
        raw = volume_patient_id(path)
        if id_info["patient_id_mode"] == "hash":
            redact.add(raw.lower())  # the pseudonym must not be linked to the file's raw id
        try:
            s = _volume_series(
                path,
                label_path=label_dir / path.name if label_dir else None,
                label_map=lm,
                axis=axis,
                pid=pid_for(raw),
                raw_id=raw,
                series=None,
                unmapped=unmapped,
                bit_depth=bit_depth,
                check_geometry=check_geometry,
            )
        except DataError as exc:  # one bad volume must not stop the others: it is listed instead
            statuses.append(_FileStatus(path, "failed", str(exc)))
            continue
        out.add(s, labeled_only=labeled_only)
    if not out.rows and statuses:
        raise DataError(
            f"volume folder {image_dir}: none of its {len(files)} volumes could be imported; first: "
            f"{statuses[0].reason}"
        )
    root = out.finish(
        {
            "source": "volume",
            **id_info,
            "label_map": _label_map_name(label_map),
            "unmapped": unmapped,
            "bit_depth": bit_depth,
            "axis": axis,
        }
    )
    _write_summary(root, image_dir, len(files), statuses, redact)
    return root


@dataclass(frozen=True)
class ImportOptions:
    """What ``spinenet data import`` takes besides the source and the output folder (the defaults are the
    CLI's; see :func:`spinenet.cli.data_import.build_import_parser` for what each one means)."""

    labels: str | Path | None = None
    label_map: str | dict[Any, Any] | None = None
    unmapped: str = "error"
    axis: str = "sagittal"
    patient_id: str | None = None
    id_mode: str = "hash"
    salt: str | None = None
    series: str | None = None
    bit_depth: int = 16
    labeled_only: bool = False
    check_geometry: bool = True
    overwrite: bool = False
    allow_burned_in: bool = False
    progress: bool | None = None  # None: a bar only when stderr is a terminal


def run_import(src: str | Path, out: str | Path, options: ImportOptions = ImportOptions()) -> Path:
    """Import ``src`` (a volume file, a folder of volumes or a DICOM folder) into ``out`` with the right
    importer; raises SpinenetError subclasses."""
    src = Path(src).expanduser()
    common = {
        "patient_id_mode": options.id_mode,
        "salt": options.salt,
        "label_map": options.label_map,
        "unmapped": options.unmapped,
        "bit_depth": options.bit_depth,
        "labeled_only": options.labeled_only,
        "check_geometry": options.check_geometry,
        "overwrite": options.overwrite,
    }
    if src.is_file():
        if not _volume_suffix(src):
            raise DataError(
                f"{src}: not a volume file ({'/'.join(VOLUME_SUFFIXES)}); for DICOM give the series' folder"
            )
        return import_volume(
            src,
            out,
            patient_id=options.patient_id or volume_patient_id(src),
            label_path=options.labels,
            axis=options.axis,
            series=options.series,
            **common,
        )
    if not src.is_dir():
        raise DataError(f"{src}: not found")
    if any(p.is_file() and _volume_suffix(p) for p in src.iterdir()):
        if options.patient_id or options.series:
            raise ConfigError(
                "--patient-id / --series apply to one file or series; a folder of volumes takes ids "
                "from the file names"
            )
        return import_volume_folder(
            src, out, label_dir=options.labels, axis=options.axis, progress=options.progress, **common
        )
    return import_dicom_tree(
        src,
        out,
        patient_id=options.patient_id,
        masks=options.labels,
        series=options.series,
        allow_burned_in=options.allow_burned_in,
        progress=options.progress,
        **common,
    )
