"""``spinenet findings-eval``: ``spinenet diagnose`` findings against per-level herniation gradings.

Reads every ``<study>/findings.json`` under a ``spinenet diagnose --out`` folder and a truth manifest with
one row per patient and a 0/1 column per level (SPIDER ``midsag_t2/manifest.csv``: ``herniation_L4L5``,
``herniation_L5S1``), matches each study to its patient (``diagnose --study-col patient_id`` names studies
after the patient), drops every patient in the train or val split of any ``--exclude-splits`` file (the
splits.json of the runs that trained the segmenter and the classifier), and scores:

- **per level and pooled** (both levels of every patient together): TP/FN/TN/FP, sensitivity and specificity
  with Wilson 95% intervals, and AUROC of the herniation probability (where both classes occur) with a
  patient-level bootstrap 95% interval;
- **image level, 4-way** (with exactly two levels: healthy / first level / second level / both): agreement
  with its Wilson 95% interval and the 4x4 confusion matrix (rows truth, columns prediction).

Calls per level: the view's finding at that level (``findings.<view>``, one per level, see
:mod:`spinenet.pipeline.combine`); herniated per :func:`~spinenet.pipeline.combine.is_herniated` of its
class; the probability per :func:`~spinenet.pipeline.combine.herniation_probability` of its stored class
probabilities (recomputed, so findings written before 0/1 classifiers were understood score correctly).
A level without a finding (the segmenter found no disc there) is **not found**: counted per level by truth,
and treated as negative (no herniation, probability 0) in the headline numbers; ``found_only`` gives the
metrics without those levels.

The pooled intervals treat the two levels of a patient as independent (Wilson); the AUROC bootstrap
resamples patients, so it keeps them together.

**Measurements** (``measurements`` in eval.json): the sagittal measurements diagnose took from the mask
(:mod:`spinenet.pipeline.measurements`; a level's value is the mean over the study's sagittal images) scored
as predictors, AUROC per level and pooled with a patient-level bootstrap interval (:func:`score_measurements`):
the protrusion and the canal diameter at the disc against the truth's level columns (``truth``), and with
``--gradings`` (per-disc, SPIDER's ``radiological_gradings.csv``) :data:`MEASUREMENT_PREDICTORS`: protrusion
for herniation and bulging, DHI and middle disc height for narrowing. A level without the measurement is left
out of that score and counted as ``missing``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spinenet.errors import ConfigError, DataError
from spinenet.metrics.classification import bootstrap_ci, macro_auroc
from spinenet.pipeline.combine import best_per_level, herniation_probability, is_herniated
from spinenet.utils.wandb_results import log_results

FORMAT = "spinenet-findings-eval"
VERSION = 1
EVAL_VIEWS = ("sagittal", "axial", "combined")  # findings.<view> of a findings.json
DEFAULT_LEVELS = ("L4-L5=herniation_L4L5", "L5-S1=herniation_L5S1")
DEFAULT_CLASS_COL = "sagittal_class"
HEALTHY, BOTH = "healthy", "both"
Z95 = 1.959963984540054
NOT_FOUND_POLICY = (
    "a level the pipeline did not find (no classified disc at that level) is reported under 'not_found' and "
    "treated as negative (no herniation, herniation probability 0) in the headline numbers; 'found_only' "
    "scores the found levels alone"
)
CI_METHOD = (
    "sensitivity, specificity, agreement: Wilson score 95% (pooled: the levels of a patient counted as "
    "independent); AUROC: patient-level bootstrap, percentile 95%"
)


# ---------------------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------------------
def wilson(k: int, n: int, z: float = Z95) -> list[float] | None:
    """Wilson score interval of ``k`` successes in ``n`` trials (None when ``n == 0``)."""
    if n <= 0:
        return None
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def auroc(y: Sequence[int], p: Sequence[float]) -> float | None:
    """AUROC of scores ``p`` for 0/1 labels ``y`` (ties count half); None unless both classes occur."""
    y_arr = np.asarray(y, np.int64).ravel()
    if y_arr.size == 0 or y_arr.min() == y_arr.max():
        return None
    return round(macro_auroc(y_arr, np.asarray(p, np.float64).ravel()), 4)


def bootstrap_auroc(y: np.ndarray, p: np.ndarray, n_boot: int = 2000, seed: int = 0) -> list[float] | None:
    """Percentile 95% interval of the AUROC, resampling rows (patients) of ``y``/``p`` (patients x levels)
    together, with the project's patient-level bootstrap."""
    if y.size == 0 or y.min() == y.max():
        return None
    patients = np.repeat(np.arange(y.shape[0]), y.shape[1])
    ci = bootstrap_ci(macro_auroc, y.ravel().astype(np.int64), p.ravel(), n=n_boot, seed=seed, groups=patients)
    if ci["n_valid"] < n_boot // 2:  # most resamples lack a class: no interval worth showing
        return None
    return [round(ci["low"], 4), round(ci["high"], 4)]


def binary_metrics(y: np.ndarray, call: np.ndarray, p: np.ndarray, bootstrap: int = 2000) -> dict[str, Any]:
    """TP/FN/TN/FP, sensitivity, specificity (Wilson 95%) and AUROC (bootstrap 95%) of 0/1 ``y`` and
    ``call`` and probabilities ``p``, all shaped (patients, levels)."""
    y, call = y.astype(bool), call.astype(bool)
    tp, fn = int((y & call).sum()), int((y & ~call).sum())
    tn, fp = int((~y & ~call).sum()), int((~y & call).sum())
    pos, neg = tp + fn, tn + fp
    return {
        "n": pos + neg, "positives": pos, "negatives": neg, "tp": tp, "fn": fn, "tn": tn, "fp": fp,
        "sensitivity": round(tp / pos, 4) if pos else None, "sensitivity_ci95": wilson(tp, pos),
        "specificity": round(tn / neg, 4) if neg else None, "specificity_ci95": wilson(tn, neg),
        "auroc": auroc(y, p),
        "auroc_ci95": bootstrap_auroc(y.astype(np.float64), p, bootstrap) if bootstrap else None,
    }


# measurement -> graded finding it predicts, and the direction (+1: larger means the finding; -1: smaller)
MEASUREMENT_PREDICTORS: tuple[tuple[str, str, int], ...] = (
    ("protrusion", "disc_herniation", 1),
    ("protrusion", "disc_bulging", 1),
    ("canal_ap_disc", "disc_herniation", -1),
    ("disc_height_index", "disc_narrowing", -1),
    ("disc_height_middle", "disc_narrowing", -1),
)
MEASUREMENT_POLICY = (
    "each measurement is the score of its finding (negated where smaller means the finding: heights, DHI, canal "
    "diameter); levels where the measurement is missing (None) are left out of that score and counted under "
    "'missing'; the AUROC interval is a patient-level bootstrap (both levels of a patient drawn together)"
)


TRUTH_FINDING = "truth"  # the truth manifest's 0/1 level columns (herniation), as a finding of measurement_rows


def head_columns(docs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """A multi-task classifier's binary heads in these findings: head name -> the graded column it learnt."""
    out: dict[str, str] = {}
    for doc in docs.values():
        for im in doc.get("images") or []:
            for d in im.get("discs") or []:
                for name, f in (d.get("findings") or {}).items():
                    if f.get("kind") == "binary" and f.get("column"):
                        out[name] = str(f["column"])
    return out


def measurement_rows(docs: Mapping[str, Mapping[str, Any]], levels: Sequence[str],
                     truth: Mapping[str, Mapping[str, int]], gradings: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per (patient, level): the mean of each measurement over the study's sagittal images that
    measured it (``docs``: patient -> findings.json), the truth's 0/1 at that level (``truth``) and, with
    ``gradings``, that disc's graded findings (matched by patient and disc number, 1 = L5-S1)."""
    from spinenet.pipeline.measurements import VALUE_FIELDS

    graded: dict[tuple[str, int], dict[str, Any]] = {}
    findings = sorted({f for _, f, _ in MEASUREMENT_PREDICTORS})
    heads = head_columns(docs)
    if gradings is not None:
        from spinenet.data.gradings import read_gradings

        table = read_gradings(gradings)
        absent = [f for f in findings if f not in table.columns]
        if absent:
            raise DataError(f"--gradings {gradings}: no column(s) {absent} (columns: {list(table.columns)})")
        # the graded findings a multi-task classifier's binary heads were trained on, scored like measurements
        findings = sorted(set(findings) | {c for c in heads.values() if c in table.columns})
        for r in table.to_dict("records"):
            graded[(str(r["patient_id"]), int(r["ivd_label"]))] = {
                f: (None if r[f] is None or (isinstance(r[f], float) and math.isnan(r[f])) else int(r[f] > 0))
                for f in findings}
    from spinenet.data.gradings import DISC_NUMBER

    rows = []
    for pid, doc in docs.items():
        per_level: dict[str, list[dict[str, Any]]] = {}
        for im in doc.get("images") or []:
            if im.get("view") != "sagittal":
                continue
            for d in im.get("discs") or []:
                values = dict(d.get("measurements") or {})
                for name, f in (d.get("findings") or {}).items():  # a multi-task classifier's binary heads
                    if f.get("kind") == "binary" and len(f.get("probabilities") or {}) == 2:
                        values[f"p_{name}"] = list(f["probabilities"].values())[1]
                if values:
                    per_level.setdefault(d.get("level") or "", []).append(values)
        for lv in levels:
            ms = per_level.get(lv, [])
            unit = next((m["unit"] for m in ms if m.get("unit")), None)
            row: dict[str, Any] = {"patient": pid, "level": lv, TRUTH_FINDING: truth[pid][lv], "unit": unit}
            for k in (*VALUE_FIELDS, *(f"p_{name}" for name in heads)):
                vals = [float(m[k]) for m in ms if m.get(k) is not None]
                row[k] = round(float(np.mean(vals)), 4) if vals else None
            if gradings is not None:
                row.update(graded.get((pid, DISC_NUMBER.get(lv, -1)), dict.fromkeys(findings)))
            rows.append(row)
    return rows


def score_measurement(values: Sequence[float | None], labels: Sequence[int], patients: Sequence[str],
                      direction: int = 1, bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
    """AUROC of measurement ``values`` (times ``direction``) for 0/1 ``labels``, one entry per (patient,
    level); None values are left out and counted. The interval resamples ``patients`` (bootstrap_ci's
    groups), so a patient's levels stay together."""
    keep = [i for i, v in enumerate(values) if v is not None and not math.isnan(float(v))]
    y = np.asarray([int(labels[i]) for i in keep], np.int64)
    x = np.asarray([direction * float(values[i]) for i in keep], np.float64)  # type: ignore[arg-type]
    groups = np.asarray([str(patients[i]) for i in keep])
    out: dict[str, Any] = {"n": len(keep), "patients": len(set(groups.tolist())), "positives": int(y.sum()),
                           "missing": len(values) - len(keep), "auroc": auroc(y, x), "auroc_ci95": None}
    if bootstrap and out["auroc"] is not None:
        ci = bootstrap_ci(macro_auroc, y, x, n=bootstrap, seed=seed, groups=groups)
        if ci["n_valid"] >= bootstrap // 2:
            out["auroc_ci95"] = [round(ci["low"], 4), round(ci["high"], 4)]
    return out


def score_measurements(rows: Sequence[Mapping[str, Any]], levels: Sequence[str],
                       predictors: Sequence[tuple[str, str, int]] = MEASUREMENT_PREDICTORS,
                       bootstrap: int = 2000) -> dict[str, Any]:
    """Per predictor (``measurement -> finding``): :func:`score_measurement` per level and pooled over
    ``levels``. ``rows``: one per (patient, level) with ``patient``, ``level``, the measurements and the 0/1
    findings (a finding that is absent or None on a row leaves that row out of its scores)."""
    out: dict[str, Any] = {}
    for measure, finding, direction in predictors:
        usable = [r for r in rows if r.get("level") in levels and r.get(finding) is not None]
        if not usable:
            continue
        entry: dict[str, Any] = {"measurement": measure, "finding": finding,
                                 "direction": "larger = finding" if direction > 0 else "smaller = finding"}
        for name in [*levels, "pooled"]:
            sel = [r for r in usable if name == "pooled" or r["level"] == name]
            entry[name] = score_measurement([r.get(measure) for r in sel], [int(r[finding]) for r in sel],
                                            [r["patient"] for r in sel], direction, bootstrap)
        out[f"{measure}->{finding}"] = entry
    return out


def format_measurement_table(scores: Mapping[str, Any], levels: Sequence[str]) -> str:
    """One line per predictor and level: n (positives), AUROC (95% CI)."""
    lines = [f"{'measurement -> finding':<38} {'level':<8} {'n':>4} {'pos':>4} {'miss':>4}  AUROC (95% CI)"]
    for key, entry in scores.items():
        for name in [*levels, "pooled"]:
            m = entry[name]
            lines.append(f"{key:<38} {name:<8} {m['n']:>4} {m['positives']:>4} {m['missing']:>4}  "
                         f"{_rate(m['auroc'], m['auroc_ci95'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------
def parse_levels(values: Sequence[str]) -> dict[str, str]:
    """``["L4-L5=herniation_L4L5", ...]`` -> ``{"L4-L5": "herniation_L4L5", ...}`` (order kept)."""
    out: dict[str, str] = {}
    for value in values:
        level, sep, col = value.partition("=")
        if not sep or not level.strip() or not col.strip():
            raise ConfigError(f"--level {value!r}: expected LEVEL=COLUMN, e.g. L4-L5=herniation_L4L5")
        if level.strip() in out:
            raise ConfigError(f"--level {level.strip()} given twice")
        out[level.strip()] = col.strip()
    if not out:
        raise ConfigError("--level: name at least one LEVEL=COLUMN")
    return out


def expected_class(flags: Mapping[str, int]) -> str:
    """The image-level class of per-level 0/1 flags: healthy, the one herniated level, or both."""
    positive = [lv for lv, v in flags.items() if v]
    return HEALTHY if not positive else positive[0] if len(positive) == 1 else BOTH


def load_truth(
    path: str | Path, patient_col: str, levels: Mapping[str, str], class_col: str | None = DEFAULT_CLASS_COL,
    class_col_required: bool = False,
) -> dict[str, dict[str, int]]:
    """Per patient id: ``{level: 0/1}``. ``DataError`` naming the file and column for a missing column, a
    value other than 0/1, a patient whose rows disagree, or a ``class_col`` value the levels contradict."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"--truth {path}: not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"--truth {path}: cannot read it as CSV: {e}") from e
    need = [patient_col, *levels.values()] + ([class_col] if class_col and class_col_required else [])
    absent = [c for c in need if c not in df.columns]
    if absent:
        raise DataError(
            f"truth manifest {path}: missing column(s) {', '.join(repr(c) for c in absent)}; its columns are: "
            f"{', '.join(df.columns)} (choose them with --patient-col, --level LEVEL=COLUMN, --class-col)"
        )
    check_class = class_col if class_col and class_col in df.columns else None
    truth: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    for i, row in enumerate(df.to_dict("records")):
        line = i + 2
        pid = str(row[patient_col]).strip()
        if not pid:
            problems.append(f"line {line}: empty {patient_col!r}")
            continue
        flags: dict[str, int] = {}
        for level, col in levels.items():
            value = str(row[col]).strip()
            if value not in ("0", "1"):
                problems.append(f"line {line}: {col} = {value!r} (expected 0 or 1)")
                continue
            flags[level] = int(value)
        if len(flags) != len(levels):
            continue
        if check_class and len(levels) == 2 and row[check_class].strip() != expected_class(flags):
            problems.append(f"line {line}: {check_class} = {row[check_class]!r} but "
                            + ", ".join(f"{levels[lv]} = {v}" for lv, v in flags.items())
                            + f" (expected {expected_class(flags)!r})")
            continue
        if pid in truth and truth[pid] != flags:
            problems.append(f"line {line}: patient {pid!r} has other gradings than on an earlier line")
            continue
        truth[pid] = flags
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError(f"truth manifest {path}: {len(problems)} bad row(s):\n  " + "\n  ".join(problems[:10])
                        + more)
    if not truth:
        raise DataError(f"truth manifest {path}: no rows")
    return truth


def load_exclusions(files: Sequence[str | Path]) -> tuple[dict[str, list[str]], list[str]]:
    """Patients in the train or val split of any splits file (a run folder means its ``splits.json``):
    ``{patient: [file, ...]}`` and the files read."""
    from spinenet.data.splits import load_splits

    where: dict[str, list[str]] = {}
    read = []
    for f in files:
        path = Path(f)
        if path.is_dir():
            path = path / "splits.json"
        splits = load_splits(path)  # DataError naming the file when it is absent or not a splits file
        read.append(str(path))
        for name in ("train", "val"):
            for pid in splits[name]:
                where.setdefault(str(pid), [])
                if str(path) not in where[str(pid)]:
                    where[str(pid)].append(str(path))
    return where, read


def load_findings(folder: str | Path, problems: list[dict[str, str]] | None = None) -> dict[str, dict[str, Any]]:
    """Every ``<study>/findings.json`` under a ``spinenet diagnose`` output folder, by study id.

    A file that cannot be read or is not a findings file raises ``DataError``, or, with a ``problems`` list,
    is appended to it as ``{"file", "reason"}`` and the other files are still read."""
    from spinenet.pipeline.diagnose import FINDINGS_FORMAT

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--findings {folder}: not a folder (give the --out folder of spinenet diagnose)")
    docs: dict[str, dict[str, Any]] = {}
    files = sorted(folder.glob("*/findings.json"))
    for f in files:
        try:
            if f.stat().st_size == 0:
                raise DataError("empty file (0 bytes)")
            doc = json.loads(f.read_text())
            if not isinstance(doc, dict) or doc.get("format") != FINDINGS_FORMAT:
                raise DataError(f'not a spinenet diagnose findings file (no "format": "{FINDINGS_FORMAT}")')
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, DataError) as e:
            reason = str(e) if isinstance(e, DataError) else f"cannot read it: {e}"
            if problems is None:
                raise DataError(f"{f}: {reason}") from e
            problems.append({"file": str(f), "reason": reason})
            continue
        docs[str(doc.get("study") or f.parent.name)] = doc
    if not docs:
        raise DataError(f"--findings {folder}: no readable <study>/findings.json in it ({len(files)} found); run "
                        f"spinenet diagnose --out {folder} first")
    return docs


def unassessed_images(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The images of a study that gave no finding, with why (failed, implausible, no disc found)."""
    return [{"image": im.get("image"), "status": im.get("status"), "reason": im.get("reason")}
            for im in doc.get("images") or [] if im.get("status") not in (None, "ok")]


def level_calls(doc: Mapping[str, Any], view: str, levels: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """Per level: ``{"herniated", "p_herniation", "class"}`` of the study's finding at that level in
    ``view`` (sagittal, axial or combined), or None when the level was not found."""
    entries = (doc.get("findings") or {}).get(view) or []
    found: dict[str, dict[str, Any]] = {}
    if view == "combined":
        for e in entries:
            briefs = [e[v] for v in ("sagittal", "axial") if e.get(v)]
            p = [float(b["p_herniation"]) for b in briefs if "p_herniation" in b]
            found[e["level"]] = {"herniated": e["finding"] == "herniation", "class": e["finding"],
                                 "p_herniation": round(sum(p) / len(p), 4) if p else
                                 float(e["finding"] == "herniation")}
    else:
        rows = []
        for e in entries:
            probs = e.get("probabilities")
            p = herniation_probability(view, probs) if probs else float(e.get("p_herniation", 0.0))
            rows.append({"level": e.get("level"), "class": e["class"], "p_herniation": round(p, 4),
                         "herniated": is_herniated(view, e["class"])})
        found = best_per_level(rows)
    return {lv: ({k: found[lv][k] for k in ("herniated", "p_herniation", "class")} if lv in found else None)
            for lv in levels}


# ---------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------
def match_studies(studies: Sequence[str], patients: Sequence[str], findings: Path, truth: Path,
                  patient_col: str) -> dict[str, str]:
    """Study name -> patient id: equal, or equal once the id is made file-name safe (as diagnose does)."""
    from spinenet.pipeline.diagnose import _safe

    exact = set(patients)
    safe: dict[str, str] = {}
    for pid in patients:
        safe.setdefault(_safe(pid), pid)
    out, unmatched = {}, []
    for s in studies:
        pid = s if s in exact else safe.get(s)
        if pid is None:
            unmatched.append(s)
        else:
            out[s] = pid
    if unmatched:
        shown = ", ".join(repr(s) for s in unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")
        raise DataError(
            f"{findings}: {len(unmatched)} of {len(studies)} stud(y/ies) match no {patient_col!r} of truth "
            f"manifest {truth}: {shown}; studies are named after diagnose's --study-col (run spinenet diagnose "
            f"--manifest ... --study-col {patient_col}), otherwise after the image file"
        )
    twice: dict[str, list[str]] = {}
    for s, pid in out.items():
        twice.setdefault(pid, []).append(s)
    clash = {p: s for p, s in twice.items() if len(s) > 1}
    if clash:
        raise DataError(f"{findings}: several studies match one patient: "
                        + "; ".join(f"{p!r}: {s}" for p, s in list(clash.items())[:10]))
    return out


def score_levels(y: np.ndarray, pred: np.ndarray, prob: np.ndarray, found: np.ndarray, levels: Mapping[str, str],
                 bootstrap: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per level and pooled metrics of the calls (patients x levels arrays), each with its not-found counts
    and the metrics of the found levels alone."""
    per_level = {}
    for j, lv in enumerate(levels):
        m = binary_metrics(y[:, j : j + 1], pred[:, j : j + 1], prob[:, j : j + 1], bootstrap)
        nf = ~found[:, j]
        m["not_found"] = {"total": int(nf.sum()), "positive": int((nf & (y[:, j] == 1)).sum()),
                          "negative": int((nf & (y[:, j] == 0)).sum())}
        keep = found[:, j]
        m["found_only"] = binary_metrics(y[keep, j : j + 1], pred[keep, j : j + 1], prob[keep, j : j + 1], 0)
        per_level[lv] = {"truth_column": levels[lv], **m}
    pooled = binary_metrics(y, pred, prob, bootstrap)
    pooled["not_found"] = {"total": int((~found).sum()), "positive": int((~found & (y == 1)).sum()),
                           "negative": int((~found & (y == 0)).sum())}
    pooled["found_only"] = binary_metrics(y[found][:, None], pred[found][:, None], prob[found][:, None], 0)
    return per_level, pooled


def four_way_agreement(names: Sequence[str], y: np.ndarray, pred: np.ndarray) -> dict[str, Any] | None:
    """With exactly two levels: image-level agreement over healthy / first level / second level / both."""
    if len(names) != 2:
        return None
    classes = [HEALTHY, names[0], names[1], BOTH]
    t = [expected_class(dict(zip(names, row, strict=True))) for row in y]
    q = [expected_class(dict(zip(names, row, strict=True))) for row in pred]
    matrix = np.zeros((4, 4), np.int64)
    for a, b in zip(t, q, strict=True):
        matrix[classes.index(a), classes.index(b)] += 1
    correct = int(np.trace(matrix))
    return {"classes": classes, "n": len(t), "correct": correct,
            "agreement": round(correct / len(t), 4), "agreement_ci95": wilson(correct, len(t)),
            "confusion": matrix.tolist(), "confusion_axes": "rows: truth, columns: prediction"}


def score_sagittal_measurements(docs: Mapping[str, Mapping[str, Any]], names: Sequence[str],
                                truth: Mapping[str, Mapping[str, int]], disc_gradings: str | Path | None,
                                bootstrap: int) -> dict[str, Any]:
    """eval.json's ``measurements``: each measurement (and, with gradings, each multi-task head's
    probability) scored as a predictor of the truth's levels and of the graded findings."""
    rows = measurement_rows(docs, names, truth, disc_gradings)
    predictors = [(m, TRUTH_FINDING, d) for m, f, d in MEASUREMENT_PREDICTORS if f == "disc_herniation"]
    if disc_gradings is not None:
        predictors += list(MEASUREMENT_PREDICTORS)
        # a multi-task classifier's probability of each graded finding, per level (one head per finding)
        graded_columns = {c for r in rows for c in r if c not in ("patient", "level", "unit")}
        predictors += [(f"p_{name}", col, 1) for name, col in head_columns(docs).items() if col in graded_columns]
    units = sorted({r["unit"] for r in rows if r.get("unit")})
    return {"policy": MEASUREMENT_POLICY, "units": units,
            "gradings": str(disc_gradings) if disc_gradings else None,
            "truth_finding": f"{TRUTH_FINDING}: the truth manifest's level columns",
            "scores": score_measurements(rows, names, predictors, bootstrap) if units else {}}


def patient_findings(
    findings: Sequence[Path],
    patients: Sequence[str],
    truth: Path,
    patient_col: str,
    unreadable: list[dict[str, str]],
    fold_of: Mapping[str, int] | None = None,
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Patient -> (study, findings.json) over one or more diagnose output folders.

    Several folders are pooled; a patient diagnosed in two of them is refused. With ``fold_of`` (a folds file,
    one folder per fold in fold order) folder k contributes only the patients of fold k: those its models held
    out, so that every patient is scored once, by models that never saw it."""
    if fold_of is not None:
        from spinenet.data.splits import fold_count

        k = fold_count(fold_of)
        if len(findings) != k:
            raise ConfigError(f"--folds has {k} folds but {len(findings)} --findings folder(s) were given: pass "
                              "one per fold, in fold order (the diagnose output of fold 0's models first)")
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    where: dict[str, Path] = {}
    for i, folder in enumerate(findings):
        docs = load_findings(folder, unreadable)
        for study, pid in match_studies(list(docs), list(patients), folder, truth, patient_col).items():
            if fold_of is not None and fold_of.get(pid) != i:
                continue
            if pid in out:
                raise DataError(f"patient {pid!r} is diagnosed in both {where[pid]} and {folder}: pooled folders "
                                "must hold different patients (or pass --folds to take fold k from folder k)")
            out[pid], where[pid] = (study, docs[study]), folder
    return out


def evaluate_findings(
    findings: str | Path | Sequence[str | Path],
    truth: str | Path,
    exclude_splits: Sequence[str | Path] = (),
    patient_col: str = "patient_id",
    levels: Mapping[str, str] | None = None,
    class_col: str | None = None,
    view: str = "sagittal",
    bootstrap: int = 2000,
    disc_gradings: str | Path | None = None,
    folds_file: str | Path | None = None,
) -> dict[str, Any]:
    """Score the findings under ``findings`` (one diagnose output folder, or several pooled, see
    :func:`patient_findings`) against ``truth``; returns the eval.json document. Its ``measurements`` score
    the sagittal measurements (:func:`measurement_rows`) against the truth's level columns and, with per-disc
    ``disc_gradings`` (SPIDER's ``radiological_gradings.csv``), against herniation, bulging and narrowing
    (:data:`MEASUREMENT_PREDICTORS`)."""
    if view not in EVAL_VIEWS:
        raise ConfigError(f"--view: choose one of {', '.join(EVAL_VIEWS)}, got {view!r}")
    levels = dict(levels) if levels is not None else parse_levels(DEFAULT_LEVELS)
    folders = [Path(findings)] if isinstance(findings, str | Path) else [Path(f) for f in findings]
    truth = Path(truth)
    gradings = load_truth(truth, patient_col, levels, class_col or DEFAULT_CLASS_COL,
                          class_col_required=class_col is not None)
    fold_of = None
    if folds_file is not None:
        from spinenet.data.splits import load_folds

        fold_of = load_folds(folds_file)
    unreadable: list[dict[str, str]] = []
    found_docs = patient_findings(folders, list(gradings), truth, patient_col, unreadable, fold_of)
    study_of = {pid: study for pid, (study, _) in found_docs.items()}
    doc_of = {pid: doc for pid, (_, doc) in found_docs.items()}
    excluded_where, split_files = load_exclusions(exclude_splits)

    diagnosed = sorted(study_of)
    excluded = [p for p in diagnosed if p in excluded_where]
    evaluated = [p for p in diagnosed if p not in excluded_where]
    if not evaluated:
        raise DataError(f"no patient left to evaluate: {len(diagnosed)} diagnosed, {len(excluded)} of them in "
                        f"a train/val split of {', '.join(split_files) or '(no splits file)'}")
    names = list(levels)
    y = np.array([[gradings[p][lv] for lv in names] for p in evaluated], np.int64)
    calls = [level_calls(doc_of[p], view, names) for p in evaluated]
    found = np.array([[c[lv] is not None for lv in names] for c in calls], bool)
    pred = np.array([[bool(c[lv] and c[lv]["herniated"]) for lv in names] for c in calls], np.int64)
    prob = np.array([[c[lv]["p_herniation"] if c[lv] else 0.0 for lv in names] for c in calls], np.float64)

    per_level, pooled = score_levels(y, pred, prob, found, levels, bootstrap)
    four_way = four_way_agreement(names, y, pred)

    per_patient = []
    for p, c, row in zip(evaluated, calls, y, strict=True):
        per_patient.append({
            "patient": p, "study": study_of[p],
            "truth": dict(zip(names, (int(v) for v in row), strict=True)),
            "call": {lv: (None if c[lv] is None else int(c[lv]["herniated"])) for lv in names},
            "p_herniation": {lv: (None if c[lv] is None else c[lv]["p_herniation"]) for lv in names},
        })
    # studies none of whose images gave a finding: their levels count as not found (see NOT_FOUND_POLICY)
    unassessed = []
    for p in evaluated:
        doc = doc_of[p]
        not_ok = unassessed_images(doc)
        if not_ok and len(not_ok) == len(doc.get("images") or []):
            unassessed.append({"patient": p, "study": study_of[p], "images": not_ok})
    truth_rows = {p: {lv: int(v) for lv, v in zip(names, row, strict=True)} for p, row in zip(evaluated, y, strict=True)}
    measured = score_sagittal_measurements({p: doc_of[p] for p in evaluated}, names, truth_rows, disc_gradings,
                                           bootstrap)
    # the distinct model sets: one per fold when folders are pooled
    models = [json.loads(m) for m in dict.fromkeys(json.dumps(d["models"], sort_keys=True)
                                                   for d in doc_of.values() if d.get("models"))]
    not_diagnosed = sorted(p for p in gradings if p not in study_of and p not in excluded_where)
    return {
        "format": FORMAT, "version": VERSION,
        "findings": str(folders[0]) if len(folders) == 1 else [str(f) for f in folders],
        "folds": str(folds_file) if folds_file is not None else None,
        "truth": str(truth), "view": view, "levels": levels,
        "models": models[0] if len(models) == 1 else (models or None),
        "patients": {
            "truth": len(gradings), "diagnosed": len(diagnosed), "excluded": len(excluded),
            "evaluated": len(evaluated),
            "excluded_by_file": {f: sum(1 for p in excluded if f in excluded_where[p]) for f in split_files},
            "excluded_patients": excluded,
            "not_diagnosed": len(not_diagnosed), "not_diagnosed_patients": not_diagnosed,
        },
        "exclusion": "patients in the train or val split of any --exclude-splits file are not evaluated",
        "not_found_policy": NOT_FOUND_POLICY, "ci_method": CI_METHOD,
        "per_level": per_level, "pooled": pooled, "four_way": four_way, "per_patient": per_patient,
        "unreadable_findings": unreadable, "unassessed_studies": unassessed, "measurements": measured,
    }


# ---------------------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------------------
def _rate(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{value:.3f}"


def format_table(result: Mapping[str, Any]) -> str:
    pt = result["patients"]
    lines = [
        f"findings-eval ({result['view']}): {pt['evaluated']} patients evaluated; {pt['excluded']} excluded "
        f"(train/val of {len(pt['excluded_by_file'])} splits file(s)); {pt['not_diagnosed']} other patient(s) of "
        f"the truth not diagnosed",
        "",
        f"{'level':<8} {'n':>4} {'TP':>4} {'FN':>4} {'TN':>4} {'FP':>4}  {'sensitivity (95% CI)':<22} "
        f"{'specificity (95% CI)':<22} {'AUROC (95% CI)':<22} {'not found':>9}",
    ]
    rows = [*result["per_level"].items(), ("pooled", result["pooled"])]
    for name, m in rows:
        lines.append(
            f"{name:<8} {m['n']:>4} {m['tp']:>4} {m['fn']:>4} {m['tn']:>4} {m['fp']:>4}  "
            f"{_rate(m['sensitivity'], m['sensitivity_ci95']):<22} "
            f"{_rate(m['specificity'], m['specificity_ci95']):<22} "
            f"{_rate(m['auroc'], m['auroc_ci95']):<22} {m['not_found']['total']:>9}"
        )
    fw = result.get("four_way")
    if fw:
        lines += ["", f"4-way agreement: {_rate(fw['agreement'], fw['agreement_ci95'])}, "
                      f"{fw['correct']}/{fw['n']} (rows truth, columns prediction)"]
        width = max(len(c) for c in fw["classes"]) + 2
        lines.append(" " * width + "".join(f"{c:>{width}}" for c in fw["classes"]))
        for c, row in zip(fw["classes"], fw["confusion"], strict=True):
            lines.append(f"{c:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    lines += ["", "Levels not found count as negative (no herniation, p=0); see 'found_only' in the JSON."]
    return "\n".join(lines)


def log_findings_eval_to_wandb(result: dict[str, Any], out: Path, project: str | None,
                               group: str | None = None) -> str | None:
    """Per level (and pooled): counts, sensitivity, specificity and AUROC as a table; every number in the summary."""
    keys = ("tp", "fn", "tn", "fp", "sensitivity", "specificity", "auroc")
    scored = {**(result.get("per_level") or {}), "pooled": result.get("pooled") or {}}
    rows = [[level, *(scores.get(k) for k in keys)] for level, scores in scored.items()]
    metrics = {"per_level": result.get("per_level"), "pooled": result.get("pooled"),
               "four_way": {"agreement": (result.get("four_way") or {}).get("agreement")},
               "patients": {k: v for k, v in result["patients"].items() if isinstance(v, int)}}
    config = {"view": result.get("view"), "levels": result.get("levels"), "models": result.get("models"),
              "not_found_policy": result.get("not_found_policy")}
    return log_results(project, "findings-eval", f"{out.parent.name}/{out.stem}", out.parent, config, metrics,
                       {"levels": (["level", *keys], rows)}, group=group)
