"""Per-study findings: slices -> one finding per level, and sagittal + axial -> one combined finding per level.

Rules (after Šušteršič 2022's "combined axial + sagittal diagnosis": the sagittal classifier says *which*
level is herniated, the axial classifier says *what kind* and *which side*):

1. **Slices -> level.** Several slices of one view may show the same level (a sagittal series, several axial
   cuts). Per view and level the slice with the highest herniation probability speaks for the level
   (herniation is visible on few slices; averaging would dilute it). Herniation probability: sagittal
   ``1 - p(negative)``, the negative label being ``healthy`` (phantom, Šušteršič) or ``0`` (0/1 gradings
   such as SPIDER's ``disc_herniation``); axial ``p(central) + p(left) + p(right)`` (a bulge is not a
   herniation).
2. **Axial level.** An axial slice's level comes from the input (``--level-col``). An axial finding without a
   level is given the sagittal level when exactly one sagittal level is herniated (the paper's use: sagittal
   finds the level, axial types it); otherwise it is reported at level ``unknown``.
3. **Combination, per level.** ``herniation`` when either view says so; its side is the axial class
   (``central``/``left``/``right``) when the axial view says herniation, else ``unspecified``. Otherwise
   ``bulge`` (side ``diffuse``) when the axial view says bulge, else ``healthy``. ``agreement``: ``agree``
   or ``disagree`` (herniated by one view only: flagged for review, never silently dropped) when both views
   saw the level, else ``sagittal only`` / ``axial only``. ``probability``: the mean over the views that saw
   the level of the probability of the combined finding (herniation probability for ``herniation``, one
   minus it for ``healthy``, the axial ``p(bulge)`` for ``bulge``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from spinenet.roi.levels import LUMBAR_LEVELS, THORACIC_LEVELS

HERNIATION_SIDES = ("central", "left", "right")
UNKNOWN_LEVEL = "unknown"
# sagittal labels meaning "no herniation": named classes (healthy / L4-L5 / L5-S1) or a 0/1 grading
NEGATIVE_LABELS = ("healthy", "0")


def herniation_probability(view: str, probabilities: Mapping[str, float]) -> float:
    """Sagittal: 1 - p(healthy), or 1 - p("0") for a 0/1 classifier; axial: p(central) + p(left) + p(right)."""
    if view == "axial":
        return float(sum(probabilities.get(s, 0.0) for s in HERNIATION_SIDES))
    negative = next((n for n in NEGATIVE_LABELS if n in probabilities), NEGATIVE_LABELS[0])
    return float(1.0 - probabilities.get(negative, 0.0))


def is_herniated(view: str, label: str) -> bool:
    return label in HERNIATION_SIDES if view == "axial" else str(label) not in NEGATIVE_LABELS


def _level_order(level: str) -> tuple[int, str]:
    top_down = tuple(reversed(THORACIC_LEVELS)) + tuple(reversed(LUMBAR_LEVELS))
    return (top_down.index(level), level) if level in top_down else (len(top_down), level)


def best_per_level(discs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rule 1: per level, the disc finding with the highest ``p_herniation`` (first one on ties)."""
    best: dict[str, dict[str, Any]] = {}
    for d in discs:
        level = d.get("level") or UNKNOWN_LEVEL
        if level not in best or d["p_herniation"] > best[level]["p_herniation"]:
            best[level] = dict(d, level=level)
    return dict(sorted(best.items(), key=lambda kv: _level_order(kv[0])))


def combine(sagittal: Sequence[Mapping[str, Any]], axial: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rules 1-3. ``sagittal``/``axial``: classified discs with ``level``, ``class``, ``p_herniation`` (and
    ``probabilities``); returns one finding per level, top to bottom."""
    sag = best_per_level(sagittal)
    herniated_levels = [lv for lv, d in sag.items() if is_herniated("sagittal", d["class"])]
    axial_rows = []
    for d in axial:
        d = dict(d)
        if not d.get("level") or d["level"] == UNKNOWN_LEVEL:
            if len(herniated_levels) == 1:  # rule 2
                d["level"], d["level_from"] = herniated_levels[0], "sagittal"
            else:
                d["level"] = UNKNOWN_LEVEL
        axial_rows.append(d)
    ax = best_per_level(axial_rows)
    out = []
    for level in sorted(set(sag) | set(ax), key=_level_order):
        s, a = sag.get(level), ax.get(level)
        s_h = s is not None and is_herniated("sagittal", s["class"])
        a_h = a is not None and is_herniated("axial", a["class"])
        if s_h or a_h:
            finding, side = "herniation", a["class"] if a_h else "unspecified"
            probs = [v["p_herniation"] for v in (s, a) if v is not None]
        elif a is not None and a["class"] == "bulge":
            finding, side = "bulge", "diffuse"
            probs = [float(a.get("probabilities", {}).get("bulge", a.get("probability", 0.0)))]
            probs += [1.0 - s["p_herniation"]] if s is not None else []
        else:
            finding, side = "healthy", None
            probs = [1.0 - v["p_herniation"] for v in (s, a) if v is not None]
        if s is not None and a is not None:
            agreement = "agree" if s_h == a_h else "disagree"
        else:
            agreement = "sagittal only" if s is not None else "axial only"
        out.append(
            {
                "level": level,
                "finding": finding,
                "side": side,
                "probability": round(float(sum(probs) / len(probs)), 4),
                "agreement": agreement,
                "sagittal": _brief(s),
                "axial": _brief(a),
            }
        )
    return out


def _brief(d: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if d is None:
        return None
    keep = ("image", "class", "probability", "p_herniation", "box", "level_from")
    return {k: d[k] for k in keep if k in d}
