"""``spinenet report``: a leaderboard and plots of sweeps and runs, as Markdown or HTML, readable without W&B.

    spinenet report SWEEP_OR_RUN... [--format md|html] [--out DIR] [--metric NAME] [--mode max|min] [--top N]

A folder may be a sweep (trial folders ``0/``, ``1/``, ...), a run (``metrics.json``), or a folder of runs
(e.g. ``outputs/train/runs``). Runs are ranked by the monitor at their best checkpoint (``best_score`` in
``metrics.json``) unless ``--metric`` names another column (``val/...``, ``test/...``); failed trials are
listed with their error. Plots (PNG): the ranking metric against every swept hyperparameter (overrides that
differ between runs), and per-class test metrics of the top runs. Markdown links the PNGs in ``plots/``;
HTML embeds them, so the one file can be mailed or opened anywhere.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinenet.errors import ConfigError
from spinenet.utils.markdown import md_code, md_text
from spinenet.utils.run_folder import TRIAL_FILE, override_columns

# overrides that say where things go, not what was trained
_NOT_HYPERPARAMETERS = (
    "paths.",
    "hydra.",
    "data.dataset.root",
    "logger",
    "callbacks.progress_bar",
    "extras.",
    "trainer.accelerator",
    "trainer.devices",
)
# summary columns shown when present, by preference
_SUMMARY_METRICS = (
    "test/dice_mean_fg",
    "test/miou",
    "test/accuracy",
    "test/balanced_accuracy",
    "test/f1_macro",
    "test/auroc",
)
_PER_CLASS_BASES = ("dice", "iou", "f1", "recall", "precision", "auroc")


# --------------------------------------------------------------------------------------------- collecting
def _slug(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", str(name)).strip("_").lower() or "class"


def _flatten(prefix: str, d: dict) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):  # {"f1": {"healthy": 0.9}} -> f1/healthy
            out.update(_flatten(f"{prefix}/{k}", v))
        elif not isinstance(v, list):
            out[f"{prefix}/{k}"] = v
    return out


def _run_row(folder: Path, sweep: str = "") -> dict[str, Any]:
    # a trial folder is just a number: name its sweep too
    name = f"{folder.parent.name}/{folder.name}" if sweep or folder.name.isdigit() else folder.name
    row: dict[str, Any] = {"run": name, "sweep": sweep, "folder": str(folder)}
    row.update(override_columns(folder))
    status = json.loads((folder / TRIAL_FILE).read_text()) if (folder / TRIAL_FILE).is_file() else {}
    metrics_file = folder / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    row["status"] = status.get("status") or ("ok" if metrics else "unknown")
    row["error"] = status.get("error", "")
    row.update(_flatten("val", metrics.get("val") or {}))
    row.update(_flatten("test", metrics.get("test") or {}))
    per_class = (metrics.get("per_class") or {}).get("per_class")
    if isinstance(per_class, dict):  # classification: {class: {metric: value}} -> test/<metric>/<class>
        for name, values in per_class.items():
            if isinstance(values, dict):
                row.update({f"test/{k}/{name}": v for k, v in values.items() if isinstance(v, int | float)})
    for key in ("best_score", "epochs", "monitor", "task", "best_checkpoint"):
        row[key] = metrics.get(key)
    row["classes"] = metrics.get("classes") or []
    cfg = folder / ".hydra" / "config.yaml"
    row["monitor_mode"] = "max"
    if cfg.is_file():
        from omegaconf import OmegaConf

        conf = OmegaConf.load(cfg)
        row["monitor_mode"] = str(conf.get("monitor_mode", "max"))
        row["monitor"] = row["monitor"] or conf.get("monitor")
        row["task"] = row["task"] or conf.get("task_kind") or conf.get("task")  # task: runs before the rename
    return row


def _is_trial_dir(p: Path) -> bool:
    return p.is_dir() and p.name.isdigit()


def collect(folders: Sequence[str | Path]) -> pd.DataFrame:
    """One row per run or trial of the given sweep / run folders."""
    rows = []
    for spec in folders:
        folder = Path(spec).expanduser().resolve()
        if not folder.is_dir():
            raise ConfigError(f"spinenet report: {spec} is not a folder")
        if (folder / "metrics.json").is_file() or (folder / TRIAL_FILE).is_file():
            rows.append(_run_row(folder))
            continue
        trials = sorted((p for p in folder.iterdir() if _is_trial_dir(p)), key=lambda p: int(p.name))
        if trials:
            rows += [_run_row(t, sweep=folder.name) for t in trials]
            continue
        runs = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "metrics.json").is_file())
        if not runs:
            raise ConfigError(
                f"spinenet report: {folder} holds no run (metrics.json), sweep trial folders (0/, 1/, "
                "...) or run folders"
            )
        rows += [_run_row(r) for r in runs]
    return pd.DataFrame(rows)


def swept_columns(table: pd.DataFrame) -> list[str]:
    """Override columns whose value differs between runs (the hyperparameters that were varied)."""
    cols = []
    for c in table.columns:
        if not c.startswith("override:"):
            continue
        key = c.removeprefix("override:")
        if key.startswith(_NOT_HYPERPARAMETERS) or key in _NOT_HYPERPARAMETERS:
            continue
        if table[c].astype(str).nunique(dropna=False) > 1:
            cols.append(c)
    return cols


def ranking(table: pd.DataFrame, metric: str | None, mode: str | None) -> tuple[str, str, str]:
    """(column, label, mode) the leaderboard is sorted by."""
    monitor = next(
        (m for m in table.get("monitor", pd.Series(dtype=object)) if isinstance(m, str) and m), None
    )
    mode = mode or next(
        (m for m in table.get("monitor_mode", pd.Series(dtype=object)) if isinstance(m, str)), "max"
    )
    if metric:
        if metric not in table.columns:
            known = sorted(c for c in table.columns if c.startswith(("val/", "test/")) or c == "best_score")
            raise ConfigError(
                f"--metric {metric} is not a column of these runs; choose one of: {', '.join(known)}"
            )
        return metric, metric, mode
    if "best_score" in table.columns and pd.to_numeric(table["best_score"], errors="coerce").notna().any():
        return "best_score", f"best {monitor}" if monitor else "best_score", mode
    if monitor and monitor in table.columns:
        return monitor, monitor, mode
    raise ConfigError("spinenet report: no run has a best_score or monitor value; name one with --metric")


def per_class_columns(table: pd.DataFrame, split: str = "test") -> dict[str, dict[str, str]]:
    """{base metric: {class: column}} for per-class metrics present for every class (at most two bases)."""
    classes = next((c for c in table.get("classes", []) if isinstance(c, list) and c), [])
    out: dict[str, dict[str, str]] = {}
    for base in _PER_CLASS_BASES:
        cols = {}
        for name in classes:
            for col in (f"{split}/{base}_{_slug(name)}", f"{split}/{base}/{name}"):
                if col in table.columns and pd.to_numeric(table[col], errors="coerce").notna().any():
                    cols[str(name)] = col
                    break
        if classes and len(cols) == len(classes):
            out[base] = cols
        if len(out) == 2:
            break
    return out


# --------------------------------------------------------------------------------------------- plots
def _figure(width: float = 5.5, height: float = 3.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    return fig, fig.add_subplot(1, 1, 1)


def plot_hyperparameter(table: pd.DataFrame, column: str, metric: str, label: str, path: Path) -> Path:
    """The ranking metric against one swept hyperparameter (numeric axis when every value is a number)."""
    key = column.removeprefix("override:")
    values = table[column].astype(str)
    y = pd.to_numeric(table[metric], errors="coerce")
    ok = y.notna()
    fig, ax = _figure()
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric[ok].notna().all() and ok.any():
        x = numeric[ok].to_numpy(float)
        ax.scatter(x, y[ok], s=28, alpha=0.8, color="tab:blue")
        means = pd.Series(y[ok].to_numpy(), index=x).groupby(level=0).mean().sort_index()
        ax.plot(means.index, means.to_numpy(), color="tab:orange", lw=1.2, label="mean")
        if (x > 0).all() and x.max() / x.min() >= 50:
            ax.set_xscale("log")
    else:
        cats = sorted(values[ok].unique(), key=str)
        pos = {c: i for i, c in enumerate(cats)}
        rng = np.random.default_rng(0)
        xs = np.array([pos[v] for v in values[ok]], float) + rng.uniform(-0.12, 0.12, int(ok.sum()))
        ax.scatter(xs, y[ok], s=28, alpha=0.8, color="tab:blue")
        for c, i in pos.items():
            m = y[ok][values[ok] == c].mean()
            ax.hlines(m, i - 0.3, i + 0.3, color="tab:orange", lw=2)
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(cats, rotation=30 if max((len(c) for c in cats), default=0) > 8 else 0, ha="right")
    failed = int((~ok).sum())
    ax.set_xlabel(key)
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs {key}" + (f" ({failed} run(s) without a value)" if failed else ""), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_per_class(top: pd.DataFrame, columns: dict[str, str], base: str, path: Path) -> Path:
    """Grouped bars: one group per class, one bar per top run."""
    classes = list(columns)
    n = len(top)
    fig, ax = _figure(max(5.5, 1.2 * len(classes) + 2), 3.8)
    width = 0.8 / max(n, 1)
    for i, (_, row) in enumerate(top.iterrows()):
        vals = [pd.to_numeric(row[columns[c]], errors="coerce") for c in classes]
        ax.bar(np.arange(len(classes)) + (i - (n - 1) / 2) * width, vals, width, label=str(row["run"])[-28:])
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"test {base}")
    ax.set_title(f"per-class test {base} of the top {n} run(s)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------------------------- rendering
def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float | np.floating):
        return "" if not math.isfinite(v) else (f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}")
    return str(v)


def _md_cell(v: Any) -> str:
    return md_text(_fmt(v))


def build_blocks(
    table: pd.DataFrame,
    folders: Sequence[str | Path],
    out: Path,
    metric: str | None = None,
    mode: str | None = None,
    top: int = 5,
) -> list[tuple]:
    """The report as blocks ("h1"/"h2"/"p"/"table"/"img"/"ul", ...), rendered to Markdown or HTML."""
    col, label, mode = ranking(table, metric, mode)
    table = table.copy()
    if table["sweep"].nunique() == 1 and table["sweep"].iloc[0]:  # one sweep: its trials by number
        table["run"] = "trial " + table["folder"].map(lambda f: Path(f).name)
    table["_key"] = pd.to_numeric(table[col], errors="coerce")
    ordered = table.sort_values("_key", ascending=mode == "min", na_position="last", kind="stable")
    ok = ordered[(ordered["status"] == "ok") & ordered["_key"].notna()]
    failed = ordered[ordered["status"] == "failed"]
    swept = swept_columns(table)
    task = next((t for t in table.get("task", []) if isinstance(t, str)), "")
    blocks: list[tuple] = [("h1", "Report: " + ", ".join(Path(f).name for f in folders))]
    blocks.append(
        (
            "p",
            f"{len(table)} run(s): {len(ok)} with a result, {len(failed)} failed"
            + (f"; task {task}" if task else "")
            + f". Ranked by **{label}** ({mode}). "
            "Sources: " + ", ".join(f"`{str(Path(f).resolve()).replace('`', chr(39))}`" for f in folders) + ".",
        )
    )
    shown_metrics = [c for c in _SUMMARY_METRICS if c in table.columns and c != col]
    header = (
        ["rank", "run", "status"] + [c.removeprefix("override:") for c in swept] + [label] + shown_metrics
    )
    rows = []
    for rank, (_, r) in enumerate(ordered.iterrows(), 1):
        rows.append(
            [rank if r["status"] == "ok" else "", r["run"], r["status"]]
            + [r.get(c) for c in swept]
            + [r["_key"]]
            + [r.get(c) for c in shown_metrics]
        )
    blocks += [("h2", "Leaderboard"), ("table", header, rows)]
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    if swept:
        blocks.append(("h2", "Hyperparameters"))
        blocks.append(
            (
                "p",
                f"{label} of every run against each hyperparameter that differs between runs "
                "(orange: mean per value).",
            )
        )
        for c in swept:
            key = c.removeprefix("override:")
            path = plot_hyperparameter(table, c, "_key", label, plots / f"hp_{_slug(key)}.png")
            blocks.append(("img", path, f"{label} vs {key}"))
    else:
        blocks += [("h2", "Hyperparameters"), ("p", "No hyperparameter differs between these runs.")]
    per = per_class_columns(table)
    if per and len(ok):
        best = ok.head(top)
        blocks.append(("h2", f"Per class: top {len(best)}"))
        for base, cols in per.items():
            path = plot_per_class(best, cols, base, plots / f"per_class_{base}.png")
            blocks.append(("img", path, f"per-class test {base}"))
            blocks.append(
                (
                    "table",
                    ["run", *cols],
                    [[r["run"], *[r.get(cols[c]) for c in cols]] for _, r in best.iterrows()],
                )
            )
    if len(failed):
        blocks += [
            ("h2", "Failed runs"),
            ("ul", [f"{r['run']}: {r['error'] or 'no error recorded'}" for _, r in failed.iterrows()]),
        ]
    blocks.append(
        (
            "p",
            "Leaderboard values: the ranking metric at each run's best checkpoint; test columns are the "
            "best checkpoint's test scores (never used for ranking).",
        )
    )
    return blocks


def render_markdown(blocks: list[tuple], out: Path) -> str:
    lines: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            lines += [f"# {md_text(b[1])}", ""]
        elif kind == "h2":
            lines += [f"## {md_text(b[1])}", ""]
        elif kind == "p":
            lines += [_md_paragraph(b[1]), ""]
        elif kind == "table":
            lines.append("| " + " | ".join(_md_cell(h) for h in b[1]) + " |")
            lines.append("|" + "---|" * len(b[1]))
            lines += ["| " + " | ".join(_md_cell(v) for v in r) + " |" for r in b[2]]
            lines.append("")
        elif kind == "img":
            lines += [f"![{md_text(b[2])}]({Path(b[1]).relative_to(out).as_posix()})", ""]
        elif kind == "ul":
            lines += [f"- {md_text(item)}" for item in b[1]] + [""]
    return "\n".join(lines)


def _md_paragraph(text: str) -> str:
    """Our own paragraph with `code` and **bold**: names inside code spans stay literal, HTML elsewhere is
    escaped (a folder or metric name must not become markup)."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(
        md_code(p[1:-1]) if p.startswith("`") and p.endswith("`") and len(p) > 1 else html.escape(p, quote=False)
        for p in parts
    )


def _inline_md(text: str) -> str:
    """`code` and **bold** of our own paragraphs, after escaping."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def render_html(blocks: list[tuple]) -> str:
    body: list[str] = []
    title = "spinenet report"
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            title = b[1]
            body.append(f"<h1>{html.escape(b[1])}</h1>")
        elif kind == "h2":
            body.append(f"<h2>{html.escape(b[1])}</h2>")
        elif kind == "p":
            body.append(f"<p>{_inline_md(b[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(_fmt(h))}</th>" for h in b[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in b[2]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            body.append(
                f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}"></figure>'
            )
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in b[1]) + "</ul>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}"
        "td:nth-child(2){text-align:left}img{max-width:100%}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(
    folders: Sequence[str | Path],
    out: str | Path | None = None,
    fmt: str = "md",
    metric: str | None = None,
    mode: str | None = None,
    top: int = 5,
    overwrite: bool = False,
) -> Path:
    """Write ``report.md`` (or ``report.html``) and ``plots/`` into ``out``; returns the report file."""
    if not folders:
        raise ConfigError("spinenet report: name at least one sweep or run folder")
    if fmt not in ("md", "html"):
        raise ConfigError(f"--format must be md or html, got {fmt!r}")
    out = Path(out).expanduser() if out else Path(folders[0]).expanduser() / "report"
    from spinenet.utils.outdir import prepare_output_dir, refuse_input_overlap

    # the default <first folder>/report lies inside an input: allowed, but never a folder that is or holds one
    refuse_input_overlap(out, [(f, "input folder") for f in folders], inside_ok=folders)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} is not empty; choose another --out or add --overwrite")
    table = collect(folders)
    out = prepare_output_dir(out, [(f, "input folder") for f in folders], overwrite, "report", clear=(),
                             inside_ok=folders)
    blocks = build_blocks(table, folders, out, metric, mode, top)
    text = render_markdown(blocks, out) if fmt == "md" else render_html(blocks)
    target = out / f"report.{fmt}"
    target.write_text(text)
    return target
