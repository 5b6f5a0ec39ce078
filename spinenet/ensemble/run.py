"""Weighted-average ensembles (WAEM, Sayed 2025) of trained members, weights chosen on validation.

Every member predicts the validation and test split once (cached, see ``spinenet.ensemble.members``); the
weights are searched on validation only (exhaustive simplex grid and/or greedy forward selection,
``spinenet.ensemble.search``); members alone, the plain average (AEM) and the WAEMs are then scored on both
splits (``spinenet.ensemble.scoring``). The out folder gets ``report.md``, ``report.json`` and
``ensemble.json`` (the chosen ensemble, which ``spinenet eval ckpt_path=<out>/ensemble.json`` loads like one
model), plus one ``ensemble_<method>.json`` per search method. The command line is :mod:`spinenet.cli.ensemble`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spinenet.contract import TaskKind
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
from spinenet.ensemble.reporting import render_markdown
from spinenet.ensemble.scoring import counts_of, score_entry
from spinenet.ensemble.search import (
    MAX_GRID_POINTS,
    SearchResult,
    exhaustive_search,
    greedy_selection,
    n_simplex_points,
    step_to_divisions,
)
from spinenet.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_OBJECTIVE = {TaskKind.SEGMENTATION: "dice", TaskKind.CLASSIFICATION: "balanced_accuracy"}
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
    if len(members[0].contract.heads) > 1:
        raise ConfigError(f"{members[0].name} is a multi-task model ({len(members[0].contract.heads)} heads): "
                          "spinenet ensemble searches weights for one label only; a saved ensemble of multi-task "
                          "members (spinenet.ensemble.artifact.save_artifact) averages each task's probabilities")
    task = TaskKind(signature["task"])
    objective = request.objective or DEFAULT_OBJECTIVE[task]
    if task.per_pixel and not O.OBJECTIVES[objective].segmentation:
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
        score_entry(
            m.name, "member", [int(i == j) for j in range(k)], preds, task, classes, description=m.description
        )
        for i, m in enumerate(members)
    ]
    entries.append(score_entry("AEM (plain average)", "aem", [1] * k, preds, task, classes))
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
        e = score_entry(label, "waem", counts_of(r), preds, task, classes, method=method, search=search)
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
    out = _out_dir(request.out, request.overwrite, _inputs(request, members, split_file))
    print(f"ensemble: {len(members)} member(s), {task}, objective {objective}, device {device}", flush=True)
    preds, dm = _predict(members, split_file, request, device)
    _check_objective_defined(objective, preds["val"], classes)

    results = _search(preds["val"], objective, request, device)
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
        **_report_body(members, preds, task, classes),
        "entries": entries,
        "chosen": {"method": best, "name": waem[best]["name"], "why": why},
        "artifact": str(chosen_path),
        "artifacts": {m: str(p) for m, p in artifacts.items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    _write_report(report, out)
    report["out"] = str(out)
    return report


def _inputs(request: EnsembleRequest, members: Sequence[Member], split_file: Path) -> list[tuple[Any, str]]:
    """What ``--out`` may not overlap: the sweeps, the split file, the data root and each member's run."""
    inputs = [(sweep, "sweep") for sweep in request.sweeps]
    inputs += [(split_file, "split file"), (request.data_root, "data root")]
    inputs += [(m.run_dir or m.checkpoint, f"member {m.name}") for m in members]
    return inputs


def _report_body(
    members: Sequence[Member], preds: dict[str, SplitPredictions], task: str, classes: Sequence[str]
) -> dict[str, Any]:
    """The report's members (with their cache use), split sizes, class counts and small-split warnings."""
    return {
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
        "warnings": split_size_warnings(preds["val"], classes, task),
        "too_small_rule": {"min_images": MIN_VAL_IMAGES, "min_class_examples": MIN_CLASS_EXAMPLES},
    }


def _write_report(report: dict[str, Any], out: Path) -> None:
    from spinenet.tasks.common import write_json

    write_json(report, out / "report.json")
    (out / "report.md").write_text(render_markdown(report))


def _device(name: str) -> torch.device:
    """``--device``: auto is cuda when available; cuda without one is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
    return torch.device(name)


def _out_dir(arg: str | None, overwrite: bool, inputs: Sequence[Any] = ()) -> Path:
    """``--out`` (default outputs/ensemble/<date>_<time>_<id>), checked against the inputs and made."""
    if arg is None:
        from spinenet.config import run_uid

        stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        out = Path("outputs") / "ensemble" / f"{stamp}_{run_uid()}"
    else:
        out = Path(arg).expanduser()
    from spinenet.utils.outdir import prepare_output_dir

    return prepare_output_dir(out, inputs, overwrite, command="ensemble", clear=())
