"""``spinenet ensemble``: weighted-average ensembles (WAEM, Sayed 2025) of trained members, weights chosen on validation.

    spinenet ensemble RUN_OR_CKPT... [--sweep DIR --top-k K] [--method exhaustive|greedy|both] [--step 0.1]
                      [--objective dice|miou|accuracy|balanced_accuracy|macro_f1|auroc] [--out DIR]
                      [--device cpu|cuda] [--splits FILE] [--data-root DIR] [--cache-dir DIR]

Every member predicts the validation and test split once (cached, see ``spinenet.ensemble.members``); the
weights are searched on validation only (exhaustive simplex grid and/or greedy forward selection,
``spinenet.ensemble.search``); members alone, the plain average (AEM) and the WAEMs are then scored on both
splits. The out folder gets ``report.md``, ``report.json`` and ``ensemble.json`` (the chosen ensemble, which
``spinenet eval ckpt_path=<out>/ensemble.json`` loads like one model), plus one ``ensemble_<method>.json``
per search method.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spinenet.ensemble import objectives as O
from spinenet.ensemble.artifact import save_artifact
from spinenet.ensemble.members import (
    MIN_CLASS_EXAMPLES,
    MIN_VAL_IMAGES,
    Member,
    SplitPredictions,
    check_compatible,
    class_counts,
    collect_predictions,
    find_split_file,
    resolve_members,
    split_size_warnings,
)
from spinenet.ensemble.search import (
    MAX_GRID_POINTS,
    SearchResult,
    exhaustive_search,
    greedy_selection,
    n_simplex_points,
    step_to_divisions,
)
from spinenet.errors import ConfigError
from spinenet.utils.markdown import md_code, md_text
from spinenet.utils.wandb_results import add_wandb_arguments, log_results

log = logging.getLogger("spinenet")

# metrics shown for every model, by task (the objective is always among them)
TASK_METRICS = {
    "segmentation": ("dice", "miou", "accuracy"),
    "classification": ("accuracy", "balanced_accuracy", "macro_f1", "auroc"),
}
DEFAULT_OBJECTIVE = {"segmentation": "dice", "classification": "balanced_accuracy"}
METRIC_NOTES = {
    "dice": "mean Dice over foreground classes, counts summed over the split",
    "miou": "mean IoU over all classes, background included",
    "accuracy": "share of correct pixels (segmentation) or images (classification)",
    "balanced_accuracy": "mean recall over classes",
    "macro_f1": "mean F1 over classes",
    "auroc": "one-vs-rest AUROC averaged over classes",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spinenet ensemble",
        description="Weighted-average ensembles (WAEM, Sayed 2025) of trained members: weights chosen on the "
        "validation split, reported on validation and test.",
        epilog="Writes report.md, report.json and ensemble.json (load it with spinenet eval ckpt_path=...) into "
        "--out. Member predictions are cached, so a new search costs no inference.",
    )
    p.add_argument(
        "members",
        nargs="*",
        metavar="MEMBER",
        help="checkpoint files, run folders, or sweep folders (all successful trials, or --top-k)",
    )
    p.add_argument("--sweep", action="append", default=[], metavar="DIR", help="a sweep folder (repeatable)")
    p.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="K",
        help="take the K best trials of each sweep, ranked by its monitor at the best checkpoint",
    )
    p.add_argument("--method", choices=METHODS, default="both")
    p.add_argument("--step", type=float, default=0.1, help="weight grid step of the exhaustive search (1/n)")
    p.add_argument("--rounds", type=int, default=25, help="rounds of greedy selection (with replacement)")
    p.add_argument(
        "--objective",
        choices=list(O.OBJECTIVES),
        default=None,
        help="what the weights maximise on validation (default: dice for segmentation, "
        "balanced_accuracy for classification)",
    )
    p.add_argument("--out", default=None, help="output folder (default outputs/ensemble/<date>_<time>_<id>)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="for inference and search (auto: cuda when available)",
    )
    p.add_argument(
        "--splits",
        default=None,
        metavar="FILE",
        help="splits.json to use (default: the first member's run folder's)",
    )
    p.add_argument("--data-root", default=None, help="data set folder (default: the first member's)")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where cached predictions live (default: <member run folder>/predictions)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="inference batch size (default: the member's)"
    )
    p.add_argument(
        "--num-workers", type=int, default=None, help="data loader workers (default: the member's)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(progress=None)  # None: a bar only when stderr is a terminal
    add_wandb_arguments(p)
    return p


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
    return torch.device(name)


def _out_dir(arg: str | None, overwrite: bool, inputs: Sequence[Any] = ()) -> Path:
    if arg is None:
        from spinenet.config import run_uid

        stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        out = Path("outputs") / "ensemble" / f"{stamp}_{run_uid()}"
    else:
        out = Path(arg).expanduser()
    from spinenet.utils.outdir import prepare_output_dir

    return prepare_output_dir(out, inputs, overwrite, command="ensemble", clear=())


# --------------------------------------------------------------------------------------------- scoring
def _confusion(
    P: torch.Tensor, y: torch.Tensor, counts: Sequence[int], chunk: int = 16
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Confusion counts (C, C) of the WAEM with integer weights ``counts`` (and its scores for classification).

    S = sum_i c_i P_i in float64 without dividing by sum c (the argmax is the same): exact for float16 caches,
    so decisions and ties match the exhaustive search. Segmentation runs over chunks of images to bound memory.
    """
    c = P.shape[2]
    cm = torch.zeros(c * c, dtype=torch.int64)
    total = float(sum(counts))
    seg = P.dim() == 5
    kept = []
    for s in range(0, P.shape[1], chunk if seg else P.shape[1]):
        S = None
        for ci, Pi in zip(counts, P[:, s : s + chunk if seg else None], strict=True):
            if ci:
                t = float(ci) * Pi.to(torch.float64)
                S = t if S is None else S + t
        assert S is not None
        pred = S.argmax(1)
        cm += torch.bincount((y[s : s + chunk if seg else None] * c + pred).reshape(-1), minlength=c * c)
        if not seg:
            kept.append(S / total)
    return cm.view(c, c), (torch.cat(kept) if kept else None)


def _metrics(
    P: torch.Tensor, y: torch.Tensor, counts: Sequence[int], task: str, classes: Sequence[str]
) -> tuple[dict, dict]:
    """(scalar metrics, per-class metrics) of one weighting on one split."""
    cm, scores = _confusion(P, y, counts)
    out: dict[str, float | None] = {}
    for name in TASK_METRICS[task]:
        if name == "auroc":
            try:
                out[name] = float(O.auroc(scores.unsqueeze(0), y)[0])
            except Exception:  # noqa: BLE001 - undefined (a class lacks positives or negatives): not a failure
                out[name] = None
        else:
            out[name] = float(O.OBJECTIVES[name].from_confusion(cm.unsqueeze(0))[0])
    cmf = cm.to(torch.float64)
    tp = cmf.diagonal()
    fp, fn = cmf.sum(0) - tp, cmf.sum(1) - tp

    def ratio(a: torch.Tensor, b: torch.Tensor) -> list[float | None]:
        return [float(x / z) if z > 0 else None for x, z in zip(a, b, strict=True)]

    if task == "segmentation":
        per = {"dice": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn)}
    else:
        per = {
            "recall": ratio(tp, tp + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "support": (tp + fn).long().tolist(),
        }
    return out, {k: dict(zip(classes, v, strict=True)) for k, v in per.items()}


def _counts_of(result: SearchResult) -> list[int]:
    return [int(c) for c in result.counts.tolist()]


def _entry(
    name: str,
    kind: str,
    counts: Sequence[int],
    preds: dict[str, SplitPredictions],
    task: str,
    classes: Sequence[str],
    **extra: Any,
) -> dict[str, Any]:
    total = sum(counts)
    entry: dict[str, Any] = {"name": name, "kind": kind, "weights": [c / total for c in counts], **extra}
    for split, pred in preds.items():
        entry[split], per = _metrics(pred.probs, pred.targets, counts, task, classes)
        entry.setdefault("per_class", {})[split] = per
    return entry


# --------------------------------------------------------------------------------------------- report
def _fmt(v: Any, digits: int = 4) -> str:
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
    out += ["| " + " | ".join(md_text(_fmt(c)) for c in r) + " |" for r in rows]
    return out


def _label(entry: dict[str, Any]) -> str:
    desc = entry.get("description") or ""
    return f"{entry['name']} ({desc})" if desc and len(desc) <= 60 else entry["name"]


def render_markdown(report: dict[str, Any]) -> str:
    task, obj = report["task"], report["objective"]
    metrics = TASK_METRICS[task]
    val, test = report["splits"]["val"], report["splits"]["test"]
    lines = [f"# Ensemble of {len(report['members'])} {task} members", ""]
    lines += [
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
    lines += ["## Validation and test", ""]
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
    lines += ["## Weights", ""]
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
    per_key = "dice" if task == "segmentation" else "recall"
    lines += [f"## Per class on test ({per_key})", ""]
    classes = report["classes"]
    shown = classes[1:] if task == "segmentation" else classes
    rows = [[e["name"]] + [e["per_class"]["test"][per_key].get(c) for c in shown] for e in report["entries"]]
    lines += _table(["model", *shown], rows) + [""]
    counts = report["class_counts"]
    what = "images showing each class" if task == "segmentation" else "examples per class"
    lines += [
        f"Validation {what}: "
        + ", ".join(f"{md_text(c)} {n}" for c, n in zip(classes, counts["val"], strict=True))
        + "; test: "
        + ", ".join(f"{md_text(c)} {n}" for c, n in zip(classes, counts["test"], strict=True))
        + ".",
        "",
    ]
    lines += ["## Members", ""]
    for i, m in enumerate(report["members"]):
        cached = ", ".join(f"{s} {'cached' if c else 'predicted'}" for s, c in m["cached"].items())
        desc = f" ({md_text(m['description'])})" if m.get("description") else ""
        again = "".join(f"; also given as {md_text(d)}, the same file (counted once)" for d in m.get("duplicates", []))
        lines.append(f"{i + 1}. **{md_text(m['name'])}**{desc}: {md_code(m['checkpoint'])} (SHA-256 {m['sha256'][:12]}…); "
                     f"{cached}{again}")
    lines += ["", "## Notes", ""]
    lines += [f"- `{m}`: {METRIC_NOTES[m]}." for m in metrics]
    lines += [
        "- WAEM = Σ wᵢ·Mᵢ / Σ wᵢ over the members' class probabilities; AEM gives every member the same "
        "weight. Scores here come from the cached probabilities ("
        + ("float16" if task == "segmentation" else "float32")
        + "); `spinenet eval` on the saved ensemble "
        "recomputes them in float32 and can differ on pixels where two classes are practically tied.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main
METHODS = ("exhaustive", "greedy", "both")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class EnsembleRequest:
    """What to ensemble and how: one field per ``spinenet ensemble`` option (W&B logging aside, ``main`` does it).

    Checked on construction with the CLI's messages, so a script that builds one gets the same one-line errors.
    """

    members: tuple[str | Path, ...] = ()  # checkpoint files, run folders or sweep folders
    sweeps: tuple[str | Path, ...] = ()  # --sweep
    top_k: int | None = None
    method: str = "both"  # exhaustive | greedy | both
    step: float = 0.1
    rounds: int = 25
    objective: str | None = None  # None: the task's default (DEFAULT_OBJECTIVE)
    out: str | Path | None = None  # None: outputs/ensemble/<date>_<time>_<id>
    overwrite: bool = False
    device: str = "auto"  # auto | cpu | cuda
    splits: str | Path | None = None  # None: the first member's run folder's splits.json
    data_root: str | Path | None = None
    cache_dir: str | Path | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    progress: bool | None = None  # None: a bar only when stderr is a terminal

    def __post_init__(self) -> None:
        # lists are welcome (argparse gives them); stored as tuples so the request stays frozen
        object.__setattr__(self, "members", tuple(self.members))
        object.__setattr__(self, "sweeps", tuple(self.sweeps))
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1, got {self.top_k}")
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be >= 1, got {self.rounds}")
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.objective is not None and self.objective not in O.OBJECTIVES:
            raise ConfigError(f"--objective must be one of {', '.join(O.OBJECTIVES)}, got {self.objective!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")

    @property
    def methods(self) -> tuple[str, ...]:
        """The search methods to run, in report order."""
        return ("exhaustive", "greedy") if self.method == "both" else (self.method,)


def _check_members(members: Sequence[Member], request: EnsembleRequest) -> tuple[dict[str, Any], str]:
    """(shared signature, objective): members fit together and the search is feasible, before any inference."""
    signature = check_compatible(members)
    task = signature["task"]
    objective = request.objective or DEFAULT_OBJECTIVE[task]
    if task == "segmentation" and not O.OBJECTIVES[objective].segmentation:
        raise ConfigError(
            f"--objective {objective} is for classification; for segmentation use dice, miou, "
            "accuracy, balanced_accuracy or macro_f1"
        )
    n = step_to_divisions(request.step)
    if "exhaustive" in request.methods and n_simplex_points(len(members), n) > MAX_GRID_POINTS:
        raise ConfigError(
            f"the exhaustive grid of {len(members)} members with step {request.step:g} has "
            f"{n_simplex_points(len(members), n):,} weight vectors (limit {MAX_GRID_POINTS:,}); use a "
            "coarser --step, fewer members (--top-k) or --method greedy"
        )
    return signature, objective


def _predict(
    members: Sequence[Member], split_file: Path, request: EnsembleRequest, device: torch.device
) -> tuple[dict[str, SplitPredictions], Any]:
    """Every member's validation and test probabilities (from the cache when it has them), and the data module."""
    return collect_predictions(
        members,
        split_file,
        data_root=request.data_root,
        cache_dir=request.cache_dir,
        device=device,
        batch_size=request.batch_size,
        num_workers=request.num_workers,
        progress=lambda s: print(s, flush=True),
    )


def _check_objective_defined(objective: str, pv: SplitPredictions, classes: Sequence[str]) -> None:
    if objective == "auroc":
        present = set(pv.targets.tolist())
        if len(present) < 2:
            raise ConfigError(
                f"--objective auroc is undefined on this validation split: all {pv.n} images are "
                f"{classes[present.pop()]!r}; choose another --objective or a larger split (--splits)"
            )


def _search(
    pv: SplitPredictions, objective: str, request: EnsembleRequest, device: torch.device
) -> dict[str, SearchResult]:
    """The weights of each requested method, chosen on the validation split only."""
    results: dict[str, SearchResult] = {}
    if "exhaustive" in request.methods:
        results["exhaustive"] = exhaustive_search(
            pv.probs,
            pv.targets,
            objective,
            step=request.step,
            device=device,
            keep_scores=False,
            progress=request.progress,
        )
    if "greedy" in request.methods:
        results["greedy"] = greedy_selection(
            pv.probs, pv.targets, objective, rounds=request.rounds, device=device
        )
    return results


def _score(
    members: Sequence[Member],
    preds: dict[str, SplitPredictions],
    results: dict[str, SearchResult],
    request: EnsembleRequest,
    task: str,
    classes: Sequence[str],
    objective: str,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(report entries: each member, the AEM, each WAEM; the WAEM entries by method), scored on every split."""
    k = len(members)
    entries = [
        _entry(
            m.name, "member", [int(i == j) for j in range(k)], preds, task, classes, description=m.description
        )
        for i, m in enumerate(members)
    ]
    entries.append(_entry("AEM (plain average)", "aem", [1] * k, preds, task, classes))
    waem = {}
    for method, r in results.items():
        search = {
            **r.to_dict(),
            **({"step": request.step} if method == "exhaustive" else {"rounds": request.rounds}),
        }
        search.pop("weights")
        if method == "exhaustive":
            search.pop("trajectory"), search.pop("best_so_far")
        label = f"WAEM {method}" + (
            f" (step {request.step:g})" if method == "exhaustive" else f" ({request.rounds} rounds)"
        )
        e = _entry(label, "waem", _counts_of(r), preds, task, classes, method=method, search=search)
        if e["val"][objective] is not None and abs(e["val"][objective] - r.score) > 1e-9:
            log.warning(
                "validation %s of the %s weights: search %.6f, rescored %.6f (near-tied float32 values)",
                objective,
                method,
                r.score,
                e["val"][objective],
            )
        entries.append(e)
        waem[method] = e
    return entries, waem


def _choose(waem: dict[str, dict[str, Any]], objective: str) -> tuple[str, str]:
    """(method, why) of the saved ensemble: the better WAEM on validation (exhaustive on ties: the exact optimum)."""
    order = [m for m in ("exhaustive", "greedy") if m in waem]
    best = max(order, key=lambda m: (waem[m]["val"][objective] or -math.inf, -order.index(m)))
    why = (
        f"best validation {objective}"
        if len(order) == 1
        else f"higher validation {objective} than the other search"
        if len({waem[m]["val"][objective] for m in order}) > 1
        else f"same validation {objective} as greedy; the exhaustive grid is the exact optimum"
    )
    return best, why


def _write_artifacts(
    out: Path, members: Sequence[Member], waem: dict[str, dict[str, Any]], best: str, common: dict[str, Any]
) -> tuple[Path, dict[str, Path]]:
    """(ensemble.json: the chosen WAEM, {method: ensemble_<method>.json})."""
    artifacts = {}
    for method in (m for m in ("exhaustive", "greedy") if m in waem):
        e = waem[method]
        info = {**common, "method": method, "search": e["search"], "val": e["val"], "test": e["test"]}
        artifacts[method] = save_artifact(out / f"ensemble_{method}.json", members, e["weights"], **info)
    chosen = waem[best]
    chosen_path = save_artifact(
        out / "ensemble.json",
        members,
        chosen["weights"],
        **{**common, "method": best, "search": chosen["search"], "val": chosen["val"], "test": chosen["test"]},
    )
    return chosen_path, artifacts


def run_ensemble(request: EnsembleRequest) -> dict[str, Any]:
    """Collect members, check they fit, predict (or reuse the cache), search weights on validation, write the
    artifacts and report.md/report.json into the out folder; returns the report (plus ``out``)."""
    t0 = time.perf_counter()
    members: list[Member] = resolve_members(request.members, request.sweeps, request.top_k)
    signature, objective = _check_members(members, request)
    task, classes = signature["task"], signature["classes"]
    device = _device(request.device)
    split_file = find_split_file(members, request.splits)
    inputs = [(sweep, "sweep") for sweep in request.sweeps]
    inputs += [(split_file, "split file"), (request.data_root, "data root")]
    inputs += [(m.run_dir or m.checkpoint, f"member {m.name}") for m in members]
    out = _out_dir(request.out, request.overwrite, inputs)
    print(f"ensemble: {len(members)} member(s), {task}, objective {objective}, device {device}", flush=True)
    preds, dm = _predict(members, split_file, request, device)
    pv = preds["val"]
    _check_objective_defined(objective, pv, classes)

    results = _search(pv, objective, request, device)
    entries, waem = _score(members, preds, results, request, task, classes, objective)
    best, why = _choose(waem, objective)

    common = {
        "task": task,
        "classes": classes,
        "objective": objective,
        "signature": signature,
        "splits_file": str(split_file),
        "data_root": str(dm.spec.root),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    chosen_path, artifacts = _write_artifacts(out, members, waem, best, common)
    report = {
        **common,
        "members": [
            {
                **m.to_dict(),
                "cached": {s: preds[s].cached[i] for s in preds},
                "cache_files": {s: preds[s].cache_files[i] for s in preds},
            }
            for i, m in enumerate(members)
        ],
        "splits": {s: {"images": p.n, "patients": len(set(p.patients))} for s, p in preds.items()},
        "class_counts": {s: class_counts(p, len(classes), task) for s, p in preds.items()},
        "warnings": split_size_warnings(pv, classes, task),
        "too_small_rule": {"min_images": MIN_VAL_IMAGES, "min_class_examples": MIN_CLASS_EXAMPLES},
        "entries": entries,
        "chosen": {"method": best, "name": waem[best]["name"], "why": why},
        "artifact": str(chosen_path),
        "artifacts": {m: str(p) for m, p in artifacts.items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    from spinenet.tasks.common import write_json

    write_json(report, out / "report.json")
    (out / "report.md").write_text(render_markdown(report))
    report["out"] = str(out)
    return report


def _print_summary(report: dict[str, Any]) -> None:
    obj = report["objective"]
    width = max(len(e["name"]) for e in report["entries"])
    print(f"\n{'model':<{width}}  val {obj:<10} test {obj}")
    for e in report["entries"]:
        print(f"{e['name']:<{width}}  {_fmt(e['val'][obj]):<14} {_fmt(e['test'][obj])}")
    for w in report["warnings"]:
        print(f"warning: {w}: weights chosen on it may not generalise")
    print(
        f"\nreport:   {report['out']}/report.md\nensemble: {report['artifact']} ({report['chosen']['name']})\n"
        f"evaluate: spinenet eval ckpt_path={report['artifact']}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv or []))
    request = EnsembleRequest(
        members=args.members,
        sweeps=args.sweep,
        top_k=args.top_k,
        method=args.method,
        step=args.step,
        rounds=args.rounds,
        objective=args.objective,
        out=args.out,
        overwrite=args.overwrite,
        device=args.device,
        splits=args.splits,
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=args.progress,
    )
    report = run_ensemble(request)
    _print_summary(report)
    log_ensemble_to_wandb(report, args.wandb_project, args.wandb_group)
    return 0


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


__all__ = ["EnsembleRequest", "main", "render_markdown", "run_ensemble"]
