"""Patient-level train/val/test splits: stratified by label where possible, k-fold, saved as JSON.

Images of one patient are never in two splits. ``split_patients`` is deterministic for a seed and does not
depend on the order in which patients are given (they are sorted first). A split is written into the run
folder (``save_splits``) so that a run can be repeated exactly (``load_splits``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spinenet.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
FORMAT = "spinenet-splits"
VERSION = 1


class StratificationWarning(UserWarning):
    """Labels could not be balanced across splits (too few patients of some class)."""


STRATIFY = ("majority", "most_severe")


def patient_labels(
    row_patients: Sequence[str],
    row_labels: Sequence[Hashable],
    order: Sequence[Hashable] | None = None,
    rule: str = "majority",
) -> dict[str, Hashable]:
    """One label per patient from its rows, for stratification.

    ``majority``: the most frequent; ties go to the most severe. ``most_severe``: the most severe label the
    patient has at all, for rare per-disc findings (SPIDER herniation: 5 % of discs, but 22 of 73 patients;
    by majority every patient is negative and a split can get no positive patient). ``order`` lists labels
    from least to most severe (e.g. ``label_names``); without it the label that sorts last is most severe.
    """
    if rule not in STRATIFY:
        raise ConfigError(f"split.stratify must be one of {', '.join(STRATIFY)}, got {rule!r}")
    if len(row_patients) != len(row_labels):
        raise DataError(f"{len(row_patients)} patient ids but {len(row_labels)} labels")
    rank = {lab: i for i, lab in enumerate(order)} if order is not None else None
    per: dict[str, Counter] = defaultdict(Counter)
    for p, lab in zip(row_patients, row_labels, strict=True):
        per[str(p)][lab] += 1

    def key(item: tuple[Hashable, int]) -> tuple[Any, ...]:
        lab, n = item
        severity = rank.get(lab, -1) if rank is not None else str(lab)
        return (severity,) if rule == "most_severe" else (n, severity)

    return {p: max(c.items(), key=key)[0] for p, c in per.items()}


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    try:
        r = tuple(float(x) for x in ratios)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"split.ratios must be three numbers (train, val, test), got {ratios!r}") from e
    if len(r) != 3:
        raise ConfigError(f"split.ratios must be three numbers (train, val, test), got {list(r)}")
    if any(x < 0 or not math.isfinite(x) for x in r):
        raise ConfigError(f"split.ratios must not be negative, got {list(r)}")
    if abs(sum(r) - 1.0) > 1e-6:
        raise ConfigError(f"split.ratios must sum to 1, got {list(r)} (sum {sum(r):g}); e.g. [0.8, 0.1, 0.1]")
    if r[0] == 0:
        raise ConfigError(f"split.ratios gives the train split no patients: {list(r)}")
    return r  # type: ignore[return-value]


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half up: 4.5 -> 5 (Python's round would give 4)


def _empty_split(
    name: str, n: int, ratios: Sequence[float], sizes: Mapping[str, int], extra: str = ""
) -> DataError:
    shown = ", ".join(f"{k} {v}" for k, v in sizes.items())
    return DataError(
        f"split {name!r} would be empty: {n} patients with ratios {list(ratios)} give {shown}{extra}; "
        f"use more patients, a larger {name} ratio, or fewer splits (a ratio of 0 turns a split off)"
    )


def _allocate(
    counts: Sequence[int], sizes: Sequence[int], rng: np.random.Generator, every_class: bool = True
) -> np.ndarray | None:
    """Patients per (class, split): row sums = class counts, column sums = split sizes, close to proportional.

    With ``every_class`` each class gets at least one patient in every non-empty split (None where that is
    impossible); without, the allocation is only proportional (always possible)."""
    n_cls, n_spl = len(counts), len(sizes)
    active = [s for s in range(n_spl) if sizes[s] > 0] if every_class else []
    if any(c < len(active) for c in counts) or any(sizes[s] < n_cls for s in active):
        return None
    total = sum(counts)
    # a tiny seeded jitter breaks ties between equal quotas at random instead of by class name
    quota = np.array([[c * sizes[s] / total for s in range(n_spl)] for c in counts])
    quota += rng.uniform(0.0, 1e-9, size=quota.shape)
    alloc = np.floor(quota).astype(np.int64)
    if active:
        alloc[:, active] = np.maximum(alloc[:, active], 1)
    for c in range(n_cls):  # the minimum of one per split can overfill a class: take back the most over quota
        while alloc[c].sum() > counts[c]:
            s = max((s for s in active if alloc[c, s] > 1), key=lambda s: alloc[c, s] - quota[c, s])
            alloc[c, s] -= 1
    for s in active:  # ... or overfill a split
        while alloc[:, s].sum() > sizes[s]:
            c = max((c for c in range(n_cls) if alloc[c, s] > 1), key=lambda c: alloc[c, s] - quota[c, s])
            alloc[c, s] -= 1
    left_c = np.asarray(counts) - alloc.sum(1)
    left_s = np.asarray(sizes) - alloc.sum(0)
    while left_c.sum() > 0:  # hand out the rest where the quota is missed most
        deficit = np.where((left_c[:, None] > 0) & (left_s[None, :] > 0), quota - alloc, -np.inf)
        c, s = np.unravel_index(int(np.argmax(deficit)), deficit.shape)
        alloc[c, s] += 1
        left_c[c] -= 1
        left_s[s] -= 1
    return alloc


def _split_groups(groups: list[list[str]], sizes: list[int], rng: np.random.Generator) -> list[list[str]]:
    """Cut shuffled class groups into splits of ``sizes``: every class in every split where the class and
    split sizes allow it, else (with a ``StratificationWarning``) classes spread as evenly as sizes allow."""
    counts = [len(g) for g in groups]
    alloc = _allocate(counts, sizes, rng) if len(groups) > 1 else None
    if alloc is None:
        if len(groups) > 1:
            warnings.warn(
                f"cannot put every label class in every split: class sizes {sorted(counts)}, split sizes "
                f"{sizes}; classes are spread over the splits as evenly as the sizes allow",
                StratificationWarning,
                stacklevel=3,
            )
        alloc = _allocate(counts, sizes, rng, every_class=False)
        assert alloc is not None
    out: list[list[str]] = [[] for _ in sizes]
    for g, row in zip(groups, alloc, strict=True):
        members = list(rng.permutation(g))
        start = 0
        for s, k in enumerate(row):
            out[s].extend(members[start : start + int(k)])
            start += int(k)
    return out


def _deal_folds(groups: list[list[str]], k: int, rng: np.random.Generator) -> list[list[str]]:
    """Deal each class's shuffled patients round the folds in turn: folds differ by at most one patient
    and every class is spread as evenly as its size allows (as StratifiedKFold does)."""
    folds: list[list[str]] = [[] for _ in range(k)]
    i = 0
    for g in groups:
        for p in rng.permutation(g):
            folds[i % k].append(str(p))
            i += 1
    return folds


def _groups(patients: list[str], labels: list[Hashable] | None) -> list[list[str]]:
    if labels is None:
        return [patients]
    by: dict[str, list[str]] = defaultdict(list)
    for p, lab in zip(patients, labels, strict=True):
        by[str(lab)].append(p)
    return [by[k] for k in sorted(by)]


FOLD_SPLITS = ("val", "test")  # which split fold k of split.folds is


def split_patients(
    patients: Sequence[str],
    labels: Sequence[Hashable] | None = None,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    folds: int | None = None,
    fold: int = 0,
    fold_split: str = "val",
    assigned_folds: Mapping[str, int] | None = None,
) -> dict[str, list[str]]:
    """Split patient ids into ``{"train", "val", "test"}`` (each sorted).

    ``labels`` holds one label per patient (see ``patient_labels``); the split is stratified by it: every
    class is in every split when class and split sizes allow it, otherwise a ``StratificationWarning`` says
    so and each class is still spread in proportion to the split sizes (better than a purely random split
    on small data sets such as SPIDER's 30 patients). Without labels the split is random. Sizes: test and val
    get ``round(n * ratio)`` patients (half up), train the rest; a ratio of 0 turns a split off.

    With ``folds=k``: the test split (``ratios[2]``) is held out first, the remaining patients are dealt into
    k folds (stratified by label), and fold ``fold`` is the validation split, the other folds train
    (``ratios[1]`` is not used). Over ``fold = 0..k-1`` every non-test patient is validated exactly once.

    With ``folds=k`` and ``fold_split="test"`` (cross-validated test scores): all patients are dealt into k
    folds, fold ``fold`` is the test split, and the validation split (``ratios[1]`` of all patients) is drawn
    from the other folds (``ratios[2]`` is not used). Over ``fold = 0..k-1`` every patient is tested exactly
    once, by a model that never saw it.

    With ``assigned_folds`` (patient -> fold, from a folds file, see :func:`deal_folds`): as ``fold_split="test"``,
    but the folds are the file's, so that runs on different data sets of the same patients (segmentation, disc
    crops, whole slices) hold out the same patients in fold k. ``folds`` is then the file's fold count.
    """
    r = _check_ratios(ratios)
    ids = [str(p) for p in patients]
    labels = list(labels) if labels is not None else None  # positional, also for a pandas Series
    dupes = sorted(p for p, c in Counter(ids).items() if c > 1)
    if dupes:
        raise DataError(
            f"patient ids are repeated in the list to split: {dupes[:10]}; pass each patient once"
        )
    if labels is not None and len(labels) != len(ids):
        raise DataError(f"{len(ids)} patients but {len(labels)} labels: pass one label per patient")
    if assigned_folds is not None:
        folds = _assigned_fold_count(assigned_folds, folds)
    if folds is not None:
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ConfigError(f"split.folds must be an integer >= 2 or null, got {folds!r}")
        if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
            raise ConfigError(f"split.fold must be in 0..{folds - 1} for split.folds={folds}, got {fold!r}")
    if fold_split not in FOLD_SPLITS:
        raise ConfigError(f"split.fold_split must be one of {list(FOLD_SPLITS)}, got {fold_split!r}")
    order = sorted(range(len(ids)), key=lambda i: ids[i])  # input order must not change the split
    ids = [ids[i] for i in order]
    labs = [labels[i] for i in order] if labels is not None else None
    n = len(ids)
    rng = np.random.default_rng(seed)
    groups = _groups(ids, labs)

    n_test = _round(n * r[2])
    if folds is None:
        n_val = _round(n * r[1])
        sizes = {"train": n - n_val - n_test, "val": n_val, "test": n_test}
        for name, ratio in zip(SPLITS, r, strict=True):
            if ratio > 0 and sizes[name] <= 0:
                raise _empty_split(name, n, r, sizes)
        parts = _split_groups(groups, [sizes[s] for s in SPLITS], rng)
        return {name: sorted(part) for name, part in zip(SPLITS, parts, strict=True)}

    if assigned_folds is not None:
        missing = [p for p in ids if p not in assigned_folds]
        if missing:
            raise DataError(f"{len(missing)} patient(s) of the data set have no fold in the folds file: "
                            f"{missing[:10]}; deal them with spinenet data folds (list this data set's manifest)")
        dealt = [[p for p in ids if assigned_folds[p] == k] for k in range(folds)]
        return _test_folds(groups, n, r, folds, fold, rng, dealt)
    if fold_split == "test":
        return _test_folds(groups, n, r, folds, fold, rng)
    rest_n = n - n_test
    sizes = {"train+val": rest_n, "test": n_test}
    if r[2] > 0 and n_test <= 0:
        raise _empty_split("test", n, r, sizes)
    if rest_n < folds:
        raise _empty_split("val", n, r, sizes, f" and only {rest_n} patients for {folds} folds")
    rest, test = _split_groups(groups, [rest_n, n_test], rng)
    rest_set = set(rest)
    rest_groups = [[p for p in g if p in rest_set] for g in groups]
    small = [len(g) for g in rest_groups if len(g) < folds]
    if len(groups) > 1 and small:
        warnings.warn(
            f"{len(small)} label class(es) have fewer patients than folds ({sorted(small)} < {folds}) "
            "after the test split: some validation folds lack them",
            StratificationWarning,
            stacklevel=2,
        )
    dealt = _deal_folds([g for g in rest_groups if g], folds, rng)
    val = dealt[fold]
    train = [p for i, f in enumerate(dealt) if i != fold for p in f]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def _test_folds(groups: list[list[str]], n: int, r: tuple[float, float, float], folds: int, fold: int,
                rng: np.random.Generator, dealt: list[list[str]] | None = None) -> dict[str, list[str]]:
    """``fold_split="test"``: fold ``fold`` of all patients (dealt here, or given) is the test split;
    validation comes from the rest."""
    if dealt is None:
        if n < folds:
            raise _empty_split("test", n, r, {"patients": n}, f" and only {n} patients for {folds} folds")
        dealt = _deal_folds([g for g in groups if g], folds, rng)
    test = dealt[fold]
    if not test:
        raise DataError(f"fold {fold} of the folds file holds none of this data set's {n} patients: "
                        "nothing to test")
    rest = {p for i, f in enumerate(dealt) if i != fold for p in f}
    rest_groups = [[p for p in g if p in rest] for g in groups]
    n_val = _round(n * r[1])
    if r[1] > 0 and (n_val <= 0 or n_val >= len(rest)):
        raise _empty_split("val", n, r, {"test": len(test), "train+val": len(rest)})
    train, val = _split_groups([g for g in rest_groups if g], [len(rest) - n_val, n_val], rng)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def check_splits(splits: Mapping[str, Iterable[str]], patients: Iterable[str] | None = None) -> None:
    """``DataError`` when a patient is in two splits (or twice in one); with ``patients`` (those of the
    manifest) also when a split names an unknown patient or a patient is in no split."""
    where: dict[str, list[str]] = defaultdict(list)
    for name, members in splits.items():
        for p in members:
            where[str(p)].append(name)
    crossing = {p: names for p, names in where.items() if len(names) > 1}
    if crossing:
        shown = "; ".join(
            f"patient {p!r} in {' and '.join(names)}" for p, names in sorted(crossing.items())[:10]
        )
        more = f" (and {len(crossing) - 10} more)" if len(crossing) > 10 else ""
        raise DataError(f"patients cross splits: {shown}{more}; each patient must be in exactly one split")
    if patients is not None:
        known = {str(p) for p in patients}
        unknown = sorted(set(where) - known)
        if unknown:
            raise DataError(f"the splits name {len(unknown)} patient(s) not in the manifest: {unknown[:10]}")
        absent = sorted(known - set(where))
        if absent:
            raise DataError(f"{len(absent)} patient(s) of the manifest are in no split: {absent[:10]}")


def save_splits(
    splits: Mapping[str, Sequence[str]], path: str | Path, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write the splits as JSON (with a format version and optional ``meta``, e.g. ratios, seed, fold)."""
    check_splits(splits)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "splits": {k: [str(p) for p in v] for k, v in splits.items()},
        "counts": {k: len(v) for k, v in splits.items()},
        "meta": dict(meta or {}),
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def load_splits(path: str | Path) -> dict[str, list[str]]:
    """Read splits written by ``save_splits``; ``DataError`` naming the file when it is not a valid one."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(f"no splits file {path}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read splits file {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f'{path} is not a spinenet splits file (no "format": "{FORMAT}")')
    if doc.get("version") != VERSION:
        raise DataError(
            f"{path} has splits format version {doc.get('version')!r}; this spinenet reads {VERSION}"
        )
    splits = doc.get("splits")
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        got = sorted(splits) if isinstance(splits, dict) else splits
        raise DataError(f'{path}: "splits" must have exactly the keys {list(SPLITS)}, got {got!r}')
    for name, members in splits.items():
        if not isinstance(members, list) or not all(isinstance(p, str) for p in members):
            raise DataError(f"{path}: split {name!r} must be a list of patient-id strings")
    try:
        check_splits(splits)
    except DataError as e:
        raise DataError(f"{path}: {e}") from e
    return {name: list(splits[name]) for name in SPLITS}


# ---------------------------------------------------------------------------------------------------------
# folds files: one patient -> fold assignment shared by every data set of the same patients
# ---------------------------------------------------------------------------------------------------------
FOLDS_COLUMNS = ("patient_id", "fold")


def fold_count(fold_of: Mapping[str, int]) -> int:
    """How many folds a patient -> fold assignment has (folds are numbered from 0)."""
    return max(fold_of.values(), default=-1) + 1


def _assigned_fold_count(assigned: Mapping[str, int], folds: int | None) -> int:
    k = fold_count(assigned)
    if folds is not None and folds != k:
        raise ConfigError(f"split.folds={folds} but the folds file has {k} folds (0..{k - 1}); set split.folds=null")
    return k


def deal_folds(patient_lists: Sequence[Sequence[str]], k: int, seed: int = 0) -> dict[str, int]:
    """Patient -> fold for ``k`` folds, balanced within each list in turn.

    The patients of the first list are shuffled and dealt round the folds; then those of the next list not yet
    dealt, continuing the deal; and so on. List the smallest data set first (e.g. the 30 segmentation
    patients, then the disc-crop patients, then every graded patient): each then has its patients spread
    over the folds as evenly as the earlier lists allow, and the same patient is in the same fold everywhere.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"folds must be an integer >= 2, got {k!r}")
    seen: set[str] = set()
    groups = []  # each list's patients not dealt before, sorted: input order must not matter
    for patients in patient_lists:
        new = sorted({str(p) for p in patients} - seen)
        seen.update(new)
        if new:
            groups.append(new)
    dealt = _deal_folds(groups, k, np.random.default_rng(seed))  # the deal goes on from list to list
    fold_of = {p: i for i, members in enumerate(dealt) for p in members}
    if len(fold_of) < k:
        raise DataError(f"{len(fold_of)} patient(s) for {k} folds: every fold needs at least one")
    return fold_of


def save_folds(fold_of: Mapping[str, int], path: str | Path) -> Path:
    """Write a folds file: CSV with ``patient_id,fold``, sorted by fold then patient."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(((int(f), str(p)) for p, f in fold_of.items()))
    pd.DataFrame([(p, f) for f, p in rows], columns=list(FOLDS_COLUMNS)).to_csv(path, index=False)
    return path


def _read_text_csv(path: Path, missing: str, unreadable: str):
    """A CSV with every cell as text (empty cells as ""); ``DataError`` with ``missing`` / ``unreadable``."""
    import pandas as pd  # lazy: start-up

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError as e:
        raise DataError(missing) from e
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{unreadable}: {e}") from e


def load_folds(path: str | Path) -> dict[str, int]:
    """Read a folds file (``patient_id,fold``; folds 0..k-1, each used); ``DataError`` naming the file and
    the row when it is not one."""
    path = Path(path)
    frame = _read_text_csv(path, f"no folds file {path} (write one with spinenet data folds)",
                           f"cannot read folds file {path}")
    absent = [c for c in FOLDS_COLUMNS if c not in frame.columns]
    if absent:
        raise DataError(f"folds file {path} lacks column(s) {absent}; it needs {list(FOLDS_COLUMNS)}")
    fold_of: dict[str, int] = {}
    for i, (pid, fold) in enumerate(zip(frame["patient_id"], frame["fold"], strict=True)):
        row = i + 2  # 1-based, after the header
        if not str(fold).strip().isdigit():
            raise DataError(f"folds file {path}, row {row}: fold {fold!r} is not a whole number >= 0")
        if not pid or pid in fold_of:
            raise DataError(f"folds file {path}, row {row}: patient {pid!r} is empty or listed twice")
        fold_of[pid] = int(fold)
    k = fold_count(fold_of)
    unused = sorted(set(range(k)) - set(fold_of.values()))
    if k < 2 or unused:
        raise DataError(f"folds file {path}: folds must be 0..k-1 with k >= 2, each used; got {k} fold(s)"
                        + (f", {unused} unused" if unused else ""))
    return fold_of


def read_patient_column(path: str | Path, column: str = "patient_id") -> list[str]:
    """The distinct patient ids of one column of a CSV (a data set's manifest, a gradings file), in order."""
    path = Path(path)
    frame = _read_text_csv(path, f"no such file {path}", f"cannot read {path}")
    if column not in frame.columns:
        raise DataError(f"{path} has no column {column!r} (its columns: {list(frame.columns)}); "
                        f"name the patient column as {path}={'{COLUMN}'}")
    return list(dict.fromkeys(p for p in frame[column] if p))


def fold_counts(fold_of: Mapping[str, int], patients: Iterable[str]) -> list[int]:
    """How many of ``patients`` each fold holds."""
    counts = [0] * fold_count(fold_of)
    for p in patients:
        if p in fold_of:
            counts[fold_of[p]] += 1
    return counts


def write_folds_file(
    sources: Sequence[tuple[str | Path, str]], out: str | Path, k: int = 5, seed: int = 0, overwrite: bool = False
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """``spinenet data folds``: the patients of each ``(csv, patient column)`` in turn, dealt into ``k`` folds
    (:func:`deal_folds`) and written to ``out`` (never over an existing file unless ``overwrite``). Returns the
    assignment and each source's patients."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out} exists; pass --overwrite to replace it")
    patients = {str(path): read_patient_column(path, column) for path, column in sources}
    fold_of = deal_folds(list(patients.values()), k, seed)
    save_folds(fold_of, out)
    return fold_of, patients
