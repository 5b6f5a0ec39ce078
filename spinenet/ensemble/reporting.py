"""The ensemble's report: ``report.md`` and the W&B tables of a :func:`~spinenet.ensemble.run.run_ensemble` report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spinenet.contract import TaskKind
from spinenet.ensemble.members import MIN_CLASS_EXAMPLES, MIN_VAL_IMAGES
from spinenet.ensemble.scoring import TASK_METRICS
from spinenet.utils.markdown import md_code, md_text
from spinenet.utils.wandb_results import log_results

METRIC_NOTES = {
    "dice": "mean Dice over foreground classes, counts summed over the split",
    "miou": "mean IoU over all classes, background included",
    "accuracy": "share of correct pixels (segmentation) or images (classification)",
    "balanced_accuracy": "mean recall over classes",
    "macro_f1": "mean F1 over classes",
    "auroc": "one-vs-rest AUROC averaged over classes",
}



def fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _weight(x: float) -> str:
    return f"{x:.4f}".rstrip("0").rstrip(".") if x else "0"


def _weights_text(w: Sequence[float]) -> str:
    return " · ".join(_weight(x) for x in w)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(md_text(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(md_text(fmt(c)) for c in r) + " |" for r in rows]
    return out


def _label(entry: dict[str, Any]) -> str:
    desc = entry.get("description") or ""
    return f"{entry['name']} ({desc})" if desc and len(desc) <= 60 else entry["name"]


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md``: what was searched on which split, the scores, the saved ensemble, weights, per-class
    scores, members and notes."""
    lines = [f"# Ensemble of {len(report['members'])} {report['task']} members", ""]
    lines += _md_splits(report)
    lines += _md_scores(report)
    lines += _md_weights(report)
    lines += _md_per_class(report)
    lines += _md_members(report)
    lines += _md_notes(report)
    return "\n".join(lines)


def _md_splits(report: dict[str, Any]) -> list[str]:
    """Which split chose the weights, and the warning when it is too small to trust them."""
    task, obj = report["task"], report["objective"]
    val, test = report["splits"]["val"], report["splits"]["test"]
    lines = [
        f"Weights chosen on the **validation split only** ({val['images']} images, {val['patients']} patients) "
        f"to maximise **{obj}** ({METRIC_NOTES.get(obj, obj)}); the test split ({test['images']} images, "
        f"{test['patients']} patients) never influenced them. Split file: {md_code(report['splits_file'])}; data: "
        f"{md_code(report['data_root'])}.",
        "",
    ]
    if report["warnings"]:
        lines += [
            "> **Warning: the validation split is too small to trust the chosen weights.** "
            f'("Too small" here: fewer than {MIN_VAL_IMAGES} images, or a class with fewer than '
            f"{MIN_CLASS_EXAMPLES} {'images showing it' if task == 'segmentation' else 'examples'}.)",
            ">",
        ]
        lines += [f"> - {md_text(w)}" for w in report["warnings"]]
        lines += [
            "> ",
            "> Differences between members, AEM and WAEM on such a split are mostly noise: compare the "
            "test columns, and prefer the plain average (AEM) unless a WAEM is clearly better on both.",
            "",
        ]
    dups = [(m["name"], d) for m in report["members"] for d in m.get("duplicates", [])]
    if dups:
        lines += [f"> **Counted once:** {d} is the same file as {name} (same SHA-256)." for name, d in dups] + [""]
    return lines


def _md_scores(report: dict[str, Any]) -> list[str]:
    """Every model's validation and test scores, and the saved ensemble with the command that evaluates it."""
    obj = report["objective"]
    metrics = TASK_METRICS[report["task"]]
    lines = ["## Validation and test", ""]
    header = ["model", "weights"] + [
        f"{s} {m}" + (" (objective)" if m == obj and s == "val" else "")
        for m in metrics
        for s in ("val", "test")
    ]
    rows = [
        [_label(e), "–" if e["kind"] == "member" else _weights_text(e["weights"])]
        + [e[s].get(m) for m in metrics for s in ("val", "test")]
        for e in report["entries"]
    ]
    lines += _table(header, rows) + [""]
    chosen = report["chosen"]
    lines += [
        f"**Saved ensemble:** {md_code(report['artifact'])} = {md_text(chosen['name'])} ({chosen['why']}). Evaluate it on any "
        f"data set like a single model:",
        "",
        "```bash",
        f"spinenet eval ckpt_path={report['artifact']}",
        "```",
        "",
    ]
    return lines


def _md_weights(report: dict[str, Any]) -> list[str]:
    """Each member's weight per search method, and how each search ran."""
    lines = ["## Weights", ""]
    methods = [e for e in report["entries"] if e["kind"] == "waem"]
    header = ["#", "member", "architecture"] + [e["method"] for e in methods]
    rows = [
        [i + 1, m["name"], m["architecture"]] + [_weight(e["weights"][i]) for e in methods]
        for i, m in enumerate(report["members"])
    ]
    lines += _table(header, rows) + [""]
    for e in methods:
        s = e["search"]
        if e["method"] == "exhaustive":
            lines.append(
                f"- exhaustive: every distinct weight vector on the simplex with step {s['step']} "
                f"({s['n_vectors']:,} vectors), {s['seconds']:.2f} s; ties go to the first vector in "
                "lexicographic order."
            )
        else:
            lines.append(
                f"- greedy: forward selection with replacement (Caruana et al. 2004), {s['rounds']} rounds, "
                f"kept the first round reaching the best validation score; {s['seconds']:.2f} s."
            )
    lines.append("")
    return lines


def _md_per_class(report: dict[str, Any]) -> list[str]:
    """Per-class test scores (Dice or recall) and the class counts of both splits."""
    task = TaskKind(report["task"])
    per_key = "dice" if task.per_pixel else "recall"
    lines = [f"## Per class on test ({per_key})", ""]
    classes = report["classes"]
    shown = classes[task.first_reported_class:]
    rows = [[e["name"]] + [e["per_class"]["test"][per_key].get(c) for c in shown] for e in report["entries"]]
    lines += _table(["model", *shown], rows) + [""]
    counts = report["class_counts"]
    what = "images showing each class" if task.per_pixel else "examples per class"
    lines += [
        f"Validation {what}: "
        + ", ".join(f"{md_text(c)} {n}" for c, n in zip(classes, counts["val"], strict=True))
        + "; test: "
        + ", ".join(f"{md_text(c)} {n}" for c, n in zip(classes, counts["test"], strict=True))
        + ".",
        "",
    ]
    return lines


def _md_members(report: dict[str, Any]) -> list[str]:
    """Each member's checkpoint, SHA-256 and whether its predictions came from the cache."""
    lines = ["## Members", ""]
    for i, m in enumerate(report["members"]):
        cached = ", ".join(f"{s} {'cached' if c else 'predicted'}" for s, c in m["cached"].items())
        desc = f" ({md_text(m['description'])})" if m.get("description") else ""
        again = "".join(f"; also given as {md_text(d)}, the same file (counted once)" for d in m.get("duplicates", []))
        lines.append(f"{i + 1}. **{md_text(m['name'])}**{desc}: {md_code(m['checkpoint'])} (SHA-256 {m['sha256'][:12]}…); "
                     f"{cached}{again}")
    return lines


def _md_notes(report: dict[str, Any]) -> list[str]:
    """What each metric and WAEM / AEM mean, and why ``spinenet eval`` can differ slightly."""
    task = TaskKind(report["task"])
    lines = ["", "## Notes", ""]
    lines += [f"- `{m}`: {METRIC_NOTES[m]}." for m in TASK_METRICS[task]]
    lines += [
        "- WAEM = Σ wᵢ·Mᵢ / Σ wᵢ over the members' class probabilities; AEM gives every member the same "
        "weight. Scores here come from the cached probabilities ("
        + ("float16" if task.per_pixel else "float32")
        + "); `spinenet eval` on the saved ensemble "
        "recomputes them in float32 and can differ on pixels where two classes are practically tied.",
        "",
    ]
    return lines


def log_ensemble_to_wandb(report: dict[str, Any], project: str | None, group: str | None = None) -> str | None:
    """The weights table (one row per member, one column per method) and each entry's val/test scores."""
    methods = [e for e in report["entries"] if e["kind"] != "member"]
    columns = ["member", "architecture", *(e["name"] for e in methods)]
    rows = [[m["name"], m.get("architecture"), *(e["weights"][i] for e in methods)]
            for i, m in enumerate(report["members"])]
    scores = [[e["name"], e["kind"], e["val"].get(report["objective"]), e["test"].get(report["objective"])]
              for e in report["entries"]]
    metrics = {e["name"]: {"val": e["val"], "test": e["test"]} for e in report["entries"]}
    config = {"objective": report["objective"], "task": report["task"], "chosen": report["chosen"],
              "members": [{"name": m["name"], "checkpoint": Path(m["checkpoint"]).name, "sha256": m.get("sha256")}
                          for m in report["members"]], "splits": report["splits"]}
    return log_results(project, "ensemble", Path(report["out"]).name, report["out"], config, metrics,
                       {"weights": (columns, rows),
                        "scores": (["model", "kind", f"val/{report['objective']}", f"test/{report['objective']}"],
                                   scores)}, group=group)
