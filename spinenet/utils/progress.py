"""Progress bars for long loops: tqdm on a terminal, nothing in logs, pipes or with ``--no-progress``."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def progress_enabled(enabled: bool | None = None) -> bool:
    """``enabled`` if given, else whether stderr (where tqdm draws) is a terminal."""
    if enabled is not None:
        return bool(enabled)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress(
    iterable: Iterable[T], total: int | None = None, desc: str | None = None, enabled: bool | None = None
) -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar on stderr when :func:`progress_enabled`, else ``iterable`` itself.

    ``enabled=False`` (a command's ``--no-progress``) always gives the plain iterable; ``None`` draws only on
    a terminal, so redirected output and CI logs stay free of bar updates.
    """
    if not progress_enabled(enabled):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


class _NoBar:
    """What :func:`progress_bar` gives when no bar is drawn: ``update`` and ``close`` do nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(total: int, desc: str | None = None, enabled: bool | None = None) -> Any:
    """A bar to ``update(n)`` by hand (work done in threads or in chunks), or a no-op one; use it in ``with``."""
    if not progress_enabled(enabled):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
