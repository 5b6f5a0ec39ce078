"""CSV cells that a spreadsheet will not run as formulas (CSV injection).

Every CSV that spinenet writes with strings from files, folders or manifests goes through
:func:`neutralise_frame` or :func:`neutralise_rows`: a text cell starting with ``= + - @`` (or a tab or
carriage return) gets a leading ``'``, which spreadsheets show as text. Numbers stay as they are, also as
strings (``"-1"``), so numeric columns and negative values read back unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def neutralise_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is a string a spreadsheet would read as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _is_number(value):
        return "'" + value
    return value


def neutralise_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with formula-like text cells and column names neutralised (numbers untouched)."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(neutralise_cell)
    out.columns = [neutralise_cell(c) for c in out.columns]
    return out


def neutralise_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows (for ``csv.DictWriter``) with formula-like text values neutralised; keys are kept."""
    return [{k: neutralise_cell(v) for k, v in row.items()} for row in rows]
