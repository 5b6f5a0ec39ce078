"""The data-set description (root folder + manifest CSV) and the checks run before training.

A data set is a root folder with a manifest CSV: one row per image, with a patient id, the image path
(relative to the root), an optional mask path and optional label columns. ``DatasetSpec`` says which column
is which. ``load_manifest`` reads the CSV with fast checks only (columns, empty manifest, missing patient ids,
unknown labels); ``check_dataset`` also checks the files and reports every problem at once.

Row numbers in messages are CSV line numbers (the header is line 1), so a user can go to them in an editor.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from spinenet.data.io import as_gray_mask, image_size, quiet_opencv, read_raw, validate_mask_values
from spinenet.errors import ConfigError, DataError
from spinenet.utils.progress import progress_bar

# Problem kinds in report order, with the heading printed above their examples.
KINDS: dict[str, str] = {
    "manifest": "the manifest cannot be used",
    "missing_patient": "empty or missing patient id",
    "unknown_label": "label not in dataset.label_names",
    "outside_root": "path leads outside the data root (dataset.allow_outside_root is false)",
    "duplicate_image": "image listed in more than one row",
    "missing_image": "image file does not exist",
    "unreadable_image": "image file cannot be read",
    "missing_mask": "mask file does not exist",
    "unreadable_mask": "mask file cannot be read",
    "mask_size": "mask size differs from its image size",
    "mask_values": "mask values outside dataset.mask_values",
}
LINE_COL = "csv_line"  # added column: the row's line number in the CSV


@dataclass
class DatasetSpec:
    """Where a data set lives and which manifest column is which (the ``dataset`` block of a data config)."""

    root: Path
    manifest: str = "manifest.csv"
    image_col: str = "image"
    mask_col: str | None = "mask"
    patient_col: str = "patient_id"
    label_col: str | None = None
    label_names: list[str] | None = None  # allowed labels, in class-index order
    mask_values: list[int] | None = None  # mask_values[i] is the gray value of class i
    class_names: list[str] | None = None  # segmentation class names, one per mask value
    level_col: str | None = None  # the disc level of each row (e.g. "L4-L5"; empty: unknown), for model.level_prior
    allow_outside_root: bool = False  # manifest paths may lead outside root (../, absolute, symlinks)

    def __post_init__(self) -> None:
        if not isinstance(self.root, str | os.PathLike):
            raise ConfigError(f"dataset.root must be a folder path, got {self.root!r}")
        self.root = Path(self.root).expanduser()
        if not isinstance(self.allow_outside_root, bool):
            raise ConfigError(f"dataset.allow_outside_root must be true or false, got {self.allow_outside_root!r}")
        for name in ("manifest", "image_col", "patient_col"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"dataset.{name} must be a non-empty string, got {value!r}")
        for name in ("mask_col", "label_col", "level_col"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"dataset.{name} must be a column name or null, got {value!r}")
        self.label_names = _names(self.label_names, "dataset.label_names", allow_int=True)
        self.class_names = _names(self.class_names, "dataset.class_names", allow_int=False)
        if self.mask_values is not None:
            self.mask_values = validate_mask_values(self.mask_values)
        if self.mask_values and self.class_names and len(self.mask_values) != len(self.class_names):
            raise ConfigError(
                f"dataset.mask_values has {len(self.mask_values)} gray values but dataset.class_names has "
                f"{len(self.class_names)} names ({self.class_names}); give one gray value per class"
            )

    @property
    def manifest_path(self) -> Path:
        return self.root / self.manifest

    @classmethod
    def from_config(cls, cfg: Any) -> DatasetSpec:
        """Build from the ``dataset`` block of a data config: an OmegaConf ``DictConfig`` or a plain mapping."""
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf comes with hydra
            pass
        except Exception as e:  # an interpolation that does not resolve
            raise ConfigError(f"dataset: cannot resolve the config: {e}") from e
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"dataset must be a mapping of settings, got {type(cfg).__name__}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(cfg) - set(valid))
        if unknown:
            raise ConfigError(
                f"dataset has unknown settings {unknown}; valid settings are: {', '.join(valid)}"
            )
        if cfg.get("root") in (None, ""):
            raise ConfigError("dataset.root is not set: give the folder that holds the manifest CSV")
        return cls(**dict(cfg))


def _names(value: Any, setting: str, allow_int: bool) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ConfigError(f"{setting} must be a list of names or null, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, str) and v.strip():
            out.append(v.strip())
        elif allow_int and isinstance(v, int) and not isinstance(v, bool):
            out.append(str(v))  # YAML [0, 1] for a 0/1 label column
        else:
            raise ConfigError(f"{setting} must hold non-empty strings, got {v!r} in {list(value)}")
    if not out:
        raise ConfigError(f"{setting} is empty: list at least one name, or set it to null")
    dupes = sorted({v for v in out if out.count(v) > 1})
    if dupes:
        raise ConfigError(f"{setting} repeats {dupes}: {out}")
    return out


class Problem(NamedTuple):
    """One problem: CSV line number (None for the whole manifest), column, kind (a key of KINDS), message."""

    row: int | None
    column: str | None
    kind: str
    message: str


@dataclass
class DataReport:
    """Every problem found in a data set, grouped by kind for printing."""

    manifest: Path
    n_rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    max_examples: int = 20
    deep: bool | None = True  # None: manifest checks only (load_manifest), no file opened
    elapsed_s: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        """Number of problems per kind (in KINDS order; kinds without problems left out)."""
        c = Counter(p.kind for p in self.problems)
        return {k: c[k] for k in [*KINDS, *sorted(set(c) - set(KINDS))] if c[k]}

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_rows(self) -> list[int]:
        """CSV line numbers with at least one problem."""
        return sorted({p.row for p in self.problems if p.row is not None})

    def format(self, max_examples: int | None = None) -> str:
        """Text grouped by kind: count, heading and up to ``max_examples`` example rows per kind."""
        limit = self.max_examples if max_examples is None else max_examples
        mode = {True: "files decoded", False: "file headers only", None: "manifest only"}[self.deep]
        head = f"{self.manifest}: {self.n_rows} rows checked ({mode})"
        if self.ok:
            return f"{head}, no problems"
        lines = [f"{head}: {len(self.problems)} problems in {len(self.bad_rows)} rows"]
        by_kind: dict[str, list[Problem]] = defaultdict(list)
        for p in self.problems:
            by_kind[p.kind].append(p)
        for kind, n in self.counts.items():
            lines.append(f"  {kind} ({n}): {KINDS.get(kind, kind)}")
            for p in by_kind[kind][:limit]:
                where = (
                    "" if p.row is None else f"line {p.row}" + (f" [{p.column}]" if p.column else "") + ": "
                )
                lines.append(f"    {where}{p.message}")
            if n > limit:
                lines.append(f"    ... and {n - limit} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def raise_if_bad(report: DataReport, what: str) -> None:
    """Raise ``DataError`` with the formatted report when it holds any problem."""
    if not report.ok:
        raise DataError(f"{what}: {report.format()}")


# ---------------------------------------------------------------------------------------------------------
# Reading the CSV and the fast row checks shared by load_manifest and check_dataset


def not_utf8_message(path: str | os.PathLike) -> str:
    """Where a CSV file stops being UTF-8: line and column of the first bad byte, for a one-line error."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        return (
            f"{path} is not UTF-8 text: byte 0x{data[start]:02x} at line {line}, column {column}; "
            "save it as UTF-8"
        )
    return f"{path} is not UTF-8 text; save it as UTF-8"


def _read_table(spec: DatasetSpec) -> tuple[pd.DataFrame | None, list[Problem]]:
    path = spec.manifest_path
    if not path.is_file():
        hint = (
            ""
            if spec.root.is_dir()
            else f" (the folder {spec.root} does not exist either; check dataset.root)"
        )
        return None, [Problem(None, None, "manifest", f"no manifest file {path}{hint}")]
    key_cols = [
        c for c in (spec.patient_col, spec.image_col, spec.mask_col, spec.label_col, spec.level_col) if c
    ]
    try:
        # Key columns as strings ("007" stays "007"); only empty cells are missing ("NA" is a valid id).
        # Blank lines are kept so that index + 2 is the CSV line number; they are dropped below.
        df = pd.read_csv(
            path,
            dtype=dict.fromkeys(key_cols, str),
            keep_default_na=False,
            na_values=[""],
            skip_blank_lines=False,
            encoding="utf-8-sig",
        )
    except UnicodeDecodeError:
        return None, [Problem(None, None, "manifest", not_utf8_message(path))]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as e:
        return None, [Problem(None, None, "manifest", f"cannot read {path} as CSV: {e}")]
    missing = [
        (s, c)
        for s, c in (
            ("patient_col", spec.patient_col),
            ("image_col", spec.image_col),
            ("mask_col", spec.mask_col),
            ("label_col", spec.label_col),
            ("level_col", spec.level_col),
        )
        if c and c not in df.columns
    ]
    if missing:
        msgs = []
        for setting, col in missing:
            extra = " or null if there are none" if setting in ("mask_col", "label_col", "level_col") else ""
            msgs.append(f"no column {col!r} (dataset.{setting}; set it to one of the columns{extra})")
        have = ", ".join(map(str, df.columns)) or "(none)"
        return None, [Problem(None, None, "manifest", f"{path}: {'; '.join(msgs)}; its columns are: {have}")]
    df[LINE_COL] = np.arange(len(df), dtype=np.int64) + 2
    blank = df.drop(columns=[LINE_COL]).isna().all(axis=1)
    df = df.loc[~blank].reset_index(drop=True)
    if len(df) == 0:
        return None, [Problem(None, None, "manifest", f"{path} has no rows (only a header)")]
    for c in key_cols:
        df[c] = df[c].str.strip()  # " 110" and "110" are the same patient
    return df, []


def _label_names(df: pd.DataFrame, spec: DatasetSpec) -> list[str] | None:
    if not spec.label_col:
        return None
    if spec.label_names is not None:
        return list(spec.label_names)
    found = sorted({v for v in df[spec.label_col].dropna() if v})
    if all(v.lstrip("-").isdigit() for v in found):
        found.sort(key=int)  # 0/1/2 gradings in numeric order
    return found


def _fast_problems(df: pd.DataFrame, spec: DatasetSpec, label_names: list[str] | None) -> list[Problem]:
    problems: list[Problem] = []
    lines = df[LINE_COL].to_numpy()
    pid = df[spec.patient_col]
    for i in np.flatnonzero((pid.isna() | (pid == "")).to_numpy()):
        problems.append(Problem(int(lines[i]), spec.patient_col, "missing_patient", "empty patient id"))
    if spec.label_col and label_names is not None:
        labels = df[spec.label_col]
        allowed = set(label_names)
        bad = ~labels.isin(allowed).to_numpy()
        values = labels.to_numpy()
        for i in np.flatnonzero(bad):
            v = values[i]
            shown = "empty label" if not isinstance(v, str) or not v else f"unknown label {v!r}"
            problems.append(
                Problem(
                    int(lines[i]),
                    spec.label_col,
                    "unknown_label",
                    f"{shown}; dataset.label_names allows {label_names}",
                )
            )
    return problems


def _outside_root(df: pd.DataFrame, spec: DatasetSpec) -> list[Problem]:
    """Image and mask cells whose file, symlinks resolved, lies outside the data root (unless allowed)."""
    if spec.allow_outside_root:
        return []
    root = os.path.realpath(spec.root)
    inside = root.rstrip(os.sep) + os.sep
    problems = []
    lines = df[LINE_COL].to_numpy()
    for col in (c for c in (spec.image_col, spec.mask_col) if c):
        for i, v in enumerate(df[col].to_numpy()):
            if not isinstance(v, str) or not v:
                continue
            real = os.path.realpath(os.path.join(root, v))
            if real != root and not real.startswith(inside):
                problems.append(
                    Problem(
                        int(lines[i]),
                        col,
                        "outside_root",
                        f"{v} leads to {real}, outside the data root {spec.root}; move the file into the "
                        "root or set data.dataset.allow_outside_root=true",
                    )
                )
    return problems


def _abs_paths(root: Path, values: pd.Series) -> list[str]:
    base = str(root.resolve())
    return [os.path.normpath(os.path.join(base, v)) if isinstance(v, str) and v else "" for v in values]


def load_manifest(spec: DatasetSpec) -> pd.DataFrame:
    """Read the manifest CSV with fast checks; adds ``image_path``, ``mask_path``, ``label_idx``, ``csv_line``.

    Patient ids and labels are strings. Raises ``DataError`` (naming CSV line numbers and values) for a
    missing file or column, an empty manifest, empty patient ids and labels outside ``label_names``. Files are
    not opened here: ``check_dataset`` does that. ``df.attrs["label_names"]`` holds the class-index order of
    labels (inferred, sorted, when ``label_names`` is not set).
    """
    df, problems = _read_table(spec)
    if df is None:
        raise DataError(problems[0].message)
    label_names = _label_names(df, spec)
    problems = _fast_problems(df, spec, label_names) + _outside_root(df, spec)
    problems.sort(key=lambda p: (p.row, list(KINDS).index(p.kind)))
    report = DataReport(spec.manifest_path, len(df), problems, 10, deep=None)
    raise_if_bad(report, "bad manifest")
    df["image_path"] = _abs_paths(spec.root, df[spec.image_col])
    if spec.mask_col:
        df["mask_path"] = _abs_paths(spec.root, df[spec.mask_col])
    if spec.label_col and label_names is not None:
        index = {name: i for i, name in enumerate(label_names)}
        df["label_idx"] = df[spec.label_col].map(index).astype(np.int64)
    df.attrs["label_names"] = label_names
    df.attrs["manifest"] = str(spec.manifest_path)
    return df


# ---------------------------------------------------------------------------------------------------------
# File checks


def existing_files(paths: Iterable[str]) -> np.ndarray:
    """Which paths are existing files, listing each folder once instead of one ``stat`` per path."""
    paths = list(paths)
    listing: dict[str, set[str]] = {}
    out = np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(paths):
        if not p:
            continue
        folder, name = os.path.split(p)
        names = listing.get(folder)
        if names is None:
            try:
                with os.scandir(folder) as it:
                    names = {e.name for e in it if e.is_file()}
            except OSError:
                names = set()
            listing[folder] = names
        out[i] = name in names
    # A name missing from the listing may still exist on a case-insensitive file system: confirm those.
    for i in np.flatnonzero(~out):
        if paths[i] and os.path.isfile(paths[i]):
            out[i] = True
    return out


def _counted(fn: Callable[[str], Any], bar: Any) -> Callable[[str], Any]:
    def step(item: str) -> Any:
        result = fn(item)
        bar.update(1)
        return result

    return step


def _pmap(
    fn: Callable[[str], Any], items: list[str], threads: bool = True, bar: Any = None
) -> dict[str, Any]:
    """``fn`` over items; with ``threads``, in a few threads that each take one contiguous chunk (decoders
    release the GIL; one task per item would cost more in scheduling than small files take to decode).
    ``bar`` (a :func:`~spinenet.utils.progress.progress_bar`) is advanced once per item."""
    if bar is not None:
        fn = _counted(fn, bar)
    workers = min(8, os.cpu_count() or 1)
    if not threads or workers < 2 or len(items) < 64:
        return {it: fn(it) for it in items}
    chunks = [items[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(lambda chunk: [fn(it) for it in chunk], chunks)
        return {
            it: r for chunk, res in zip(chunks, done, strict=True) for it, r in zip(chunk, res, strict=True)
        }


def _header(path: str) -> tuple[int, int] | str:
    try:
        return image_size(path)
    except DataError as e:
        return str(e)
    except Exception as e:  # a broken header can raise anything from a decoder
        return f"cannot read {path}: {e}"


def _decodes(path: str) -> str | None:
    try:
        read_raw(path)
        return None
    except DataError as e:
        return str(e)
    except Exception as e:
        return f"cannot decode {path}: {e}"


def _mask_info(path: str, values: list[int] | None) -> tuple[tuple[int, int] | None, str | None, str | None]:
    """(shape, unreadable message, bad-values message) of a decoded mask."""
    try:
        px = read_raw(path).pixels
    except Exception as e:
        return None, str(e), None
    shape = (int(px.shape[0]), int(px.shape[1]))
    if values is None:
        return shape, None, None
    try:
        gray = as_gray_mask(path, px)
    except DataError as e:
        return shape, None, str(e)
    if gray.dtype == np.uint8:
        present = np.flatnonzero(np.bincount(gray.ravel(), minlength=256))
    else:
        present = np.unique(gray)
    unexpected = sorted(set(present.tolist()) - set(values))
    if not unexpected:
        return shape, None, None
    shown = ", ".join(str(v) for v in unexpected[:20]) + (" ..." if len(unexpected) > 20 else "")
    return shape, None, f"values {shown} in {path}; the configured map is {values}"


def _duplicate_images(
    image_rel: np.ndarray, image_abs: list[str], lines: np.ndarray, col: str
) -> list[Problem]:
    """Each repeat is reported on its own line and names the line that listed the file first, so the user
    knows which row to remove."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, p in enumerate(image_abs):
        if not p:
            continue
        first = seen.setdefault(p, int(lines[i]))
        if first != lines[i]:
            problems.append(
                Problem(
                    int(lines[i]),
                    col,
                    "duplicate_image",
                    f"{image_rel[i]} is already listed on line {first}",
                )
            )
    return problems


def _image_problems(
    image_abs: list[str],
    image_ok: np.ndarray,
    lines: np.ndarray,
    col: str,
    deep: bool,
    progress: bool | None,
) -> tuple[list[Problem], dict[str, tuple[int, int] | str]]:
    """Each existing image is read once however many rows list it, and only images whose header reads are
    decoded; the header sizes are returned for the mask-size check rather than read again."""
    problems: list[Problem] = []
    unique_images = sorted({p for p, ok in zip(image_abs, image_ok, strict=True) if ok})
    img_size = _pmap(_header, unique_images, threads=False)  # GIL-bound
    img_err: dict[str, str | None] = {p: s for p, s in img_size.items() if isinstance(s, str)}
    if deep:
        todo = [p for p in unique_images if p not in img_err]
        with progress_bar(len(todo), "decoding images", progress) as bar:
            img_err.update(_pmap(_decodes, todo, bar=bar))
    for i in np.flatnonzero(image_ok):
        err = img_err.get(image_abs[i])
        if err:
            problems.append(Problem(int(lines[i]), col, "unreadable_image", err))
    return problems, img_size


def _read_masks(
    mask_abs: list[str], mask_ok: np.ndarray, values: list[int] | None, deep: bool, progress: bool | None
) -> tuple[dict[str, tuple[int, int] | str], dict[str, tuple]]:
    """Each existing mask is read once however many rows list it; only masks whose header reads are
    decoded, as a broken header is already reported."""
    unique_masks = sorted({p for p, ok in zip(mask_abs, mask_ok, strict=True) if ok})
    mask_size = _pmap(_header, unique_masks, threads=False)
    mask_deep: dict[str, tuple] = {}
    if deep:
        todo = [p for p in unique_masks if not isinstance(mask_size[p], str)]
        with progress_bar(len(todo), "decoding masks", progress) as bar:
            mask_deep = _pmap(lambda p: _mask_info(p, values), todo, bar=bar)
    return mask_size, mask_deep


def _mask_problems(
    df: pd.DataFrame,
    spec: DatasetSpec,
    lines: np.ndarray,
    image_abs: list[str],
    image_ok: np.ndarray,
    img_size: dict[str, tuple[int, int] | str],
    deep: bool,
    progress: bool | None,
) -> list[Problem]:
    """A row's mask is judged only once it exists and decodes: a missing or unreadable mask is one problem,
    not also a size or value mismatch."""
    problems: list[Problem] = []
    image_rel = df[spec.image_col].to_numpy()
    mask_rel = df[spec.mask_col].to_numpy()
    mask_abs = _abs_paths(spec.root, df[spec.mask_col])
    mask_ok = existing_files(mask_abs)
    mask_size, mask_deep = _read_masks(mask_abs, mask_ok, spec.mask_values, deep, progress)
    for i in range(len(df)):
        line = int(lines[i])
        if not mask_ok[i]:
            msg = f"no such file: {mask_abs[i]}" if mask_abs[i] else "empty mask cell"
            problems.append(Problem(line, spec.mask_col, "missing_mask", msg))
            continue
        m_size = mask_size[mask_abs[i]]
        shape, unreadable, bad_values = mask_deep.get(mask_abs[i], (None, None, None))
        if isinstance(m_size, str) or unreadable:
            problems.append(
                Problem(
                    line,
                    spec.mask_col,
                    "unreadable_mask",
                    m_size if isinstance(m_size, str) else unreadable,
                )
            )
            continue
        i_size = img_size.get(image_abs[i]) if image_ok[i] else None
        if isinstance(i_size, tuple) and i_size != m_size:
            problems.append(
                Problem(
                    line,
                    spec.mask_col,
                    "mask_size",
                    f"mask {mask_rel[i]} is {m_size[0]}x{m_size[1]} (HxW) but image "
                    f"{image_rel[i]} is {i_size[0]}x{i_size[1]}",
                )
            )
        if bad_values:
            problems.append(Problem(line, spec.mask_col, "mask_values", bad_values))
    return problems


def check_dataset(
    spec: DatasetSpec, deep: bool = True, max_examples: int = 20, progress: bool | None = None
) -> DataReport:
    """Check a data set and report every problem at once (see ``KINDS``), not only the first.

    Existence is checked by listing each folder once; sizes come from file headers; with ``deep`` every
    unique image and mask is decoded once (in threads) to find truncated files and mask values outside
    ``mask_values``. ``deep=False`` only checks existence and header sizes. ``progress``: a bar over the
    decodes (``None``: only when stderr is a terminal; ``False``: never).
    """
    t0 = time.perf_counter()
    report = DataReport(spec.manifest_path, max_examples=max_examples, deep=deep)
    df, report.problems = _read_table(spec)
    if df is None:
        report.elapsed_s = time.perf_counter() - t0
        return report
    report.n_rows = len(df)
    problems = report.problems
    problems += _fast_problems(df, spec, _label_names(df, spec))
    outside = _outside_root(df, spec)
    problems += outside
    # a file outside the root is not opened, not even to check it
    df = df[~df[LINE_COL].isin({p.row for p in outside})].reset_index(drop=True)
    lines = df[LINE_COL].to_numpy()

    image_abs = _abs_paths(spec.root, df[spec.image_col])
    problems += _duplicate_images(df[spec.image_col].to_numpy(), image_abs, lines, spec.image_col)
    image_ok = existing_files(image_abs)
    for i in np.flatnonzero(~image_ok):
        msg = f"no such file: {image_abs[i]}" if image_abs[i] else "empty image cell"
        problems.append(Problem(int(lines[i]), spec.image_col, "missing_image", msg))

    with quiet_opencv():
        unreadable, img_size = _image_problems(image_abs, image_ok, lines, spec.image_col, deep, progress)
        problems += unreadable
        if spec.mask_col:
            problems += _mask_problems(df, spec, lines, image_abs, image_ok, img_size, deep, progress)
    # Problems of one row together, in CSV order, manifest-level first.
    problems.sort(key=lambda p: (-1 if p.row is None else p.row, list(KINDS).index(p.kind)))
    report.elapsed_s = time.perf_counter() - t0
    return report
