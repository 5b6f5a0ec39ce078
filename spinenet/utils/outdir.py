"""Output folders that never destroy input, and generated data that never leaves a half-written folder.

- :func:`prepare_output_dir`: the one guard of every command that writes a folder (``--out``). An ``--out``
  that equals, contains or lies inside one of the command's inputs is refused before anything is touched,
  with or without ``--overwrite``. ``--overwrite`` only clears a folder that spinenet wrote itself: every such
  folder gets a marker file (:data:`MARKER`, holding the command and the time).
- :func:`refuse_input_overlap`: the same input check for a single output file.
- :func:`build_atomically`: data generated on first use (the phantom, its disc crops) is written into a
  temporary sibling folder and renamed into place when complete, under a lock, so a killed run leaves no
  folder that later runs trip over and concurrent first runs wait for one generation.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from spinenet.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MARKER = ".spinenet-output"

# An input: a path, or (path, what it is) for the message ("data root", "checkpoint", ...).
InputLike = str | os.PathLike | tuple[str | os.PathLike, str]


def _real(path: str | os.PathLike) -> Path:
    """Absolute path with symlinks resolved (also of a path that does not exist yet)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _inputs(inputs: Iterable[InputLike | None]) -> list[tuple[Path, str, str]]:
    out = []
    for item in inputs:
        path, what = item if isinstance(item, tuple) else (item, "input")
        if path is None or path == "":
            continue
        out.append((_real(path), what, str(path)))
    return out


def refuse_input_overlap(
    out: str | os.PathLike,
    inputs: Iterable[InputLike | None],
    setting: str = "--out",
    inside_ok: Iterable[str | os.PathLike] = (),
) -> None:
    """``ConfigError`` when ``out`` equals, contains or lies inside one of ``inputs`` (symlinks resolved).

    ``inside_ok``: inputs that ``out`` may lie inside (e.g. ``report``'s default ``<sweep>/report``), though
    never equal or contain.
    """
    target = _real(out)
    allowed = {_real(p) for p in inside_ok}
    for real, what, shown in _inputs(inputs):
        if target == real:
            relation = "is"
        elif real.is_relative_to(target):
            relation = "contains"
        elif target.is_relative_to(real) and real not in allowed:
            relation = "lies inside"
        else:
            continue
        raise ConfigError(
            f"{setting} {out} {relation} the {what} {shown}; writing there could destroy input: "
            f"choose another {setting}"
        )


def _marker_text(command: str) -> str:
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return json.dumps({"command": command, "written": now}) + "\n"


def write_marker(folder: str | os.PathLike, command: str) -> None:
    """Mark ``folder`` as written by spinenet (so ``--overwrite`` may clear it later)."""
    (Path(folder) / MARKER).write_text(_marker_text(command))


def is_spinenet_output(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MARKER).is_file()


def check_output_dir(
    out: str | os.PathLike,
    inputs: Iterable[InputLike | None] = (),
    overwrite: bool = False,
    inside_ok: Iterable[str | os.PathLike] = (),
    setting: str = "--out",
) -> Path:
    """The refusals of :func:`prepare_output_dir`, touching nothing (for a command that builds its output
    elsewhere first and must fail on a bad ``--out`` before the work); returns ``out`` (user-expanded)."""
    refuse_input_overlap(out, inputs, setting, inside_ok)
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{setting} {out} exists and is not a folder")
    # a folder holding only the marker (a run that failed before writing) counts as empty
    if path.is_dir() and any(p.name != MARKER for p in path.iterdir()):
        if not overwrite:
            raise ConfigError(f"{setting} {out} is not empty; choose another {setting} or pass --overwrite")
        if not is_spinenet_output(path):
            raise ConfigError(
                f"{out} was not written by spinenet (no {MARKER}); remove it yourself or choose another {setting}"
            )
    return path


def prepare_output_dir(
    out: str | os.PathLike,
    inputs: Iterable[InputLike | None] = (),
    overwrite: bool = False,
    command: str = "spinenet",
    clear: Sequence[str] | None = None,
    inside_ok: Iterable[str | os.PathLike] = (),
    setting: str = "--out",
) -> Path:
    """Check and create the output folder ``out`` of ``command``; return it (absolute, symlinks resolved).

    Refused with ``ConfigError`` before anything is touched: ``out`` overlapping an input (see
    :func:`refuse_input_overlap`), ``out`` being a file, a non-empty ``out`` without ``overwrite``, and with
    ``overwrite`` a non-empty folder without the :data:`MARKER` of a spinenet output. ``clear``: the names
    inside ``out`` that ``overwrite`` removes (``None``: everything; ``()``: nothing, the caller replaces its
    own files). The marker is (re)written.
    """
    path = check_output_dir(out, inputs, overwrite, inside_ok, setting)
    if path.is_dir() and any(p.name != MARKER for p in path.iterdir()):
        names = [p.name for p in path.iterdir() if p.name != MARKER] if clear is None else clear
        for name in names:
            p = path / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    path.mkdir(parents=True, exist_ok=True)
    write_marker(path, command)
    return _real(path)


# ---------------------------------------------------------------------------------------------------------
# generated data: complete or absent, never half-written

_PARTIAL = ".partial-"


def _lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def build_atomically(
    target: str | os.PathLike,
    build: Callable[[Path], object],
    is_complete: Callable[[Path], bool],
    own_names: Iterable[str],
    what: str = "generated data",
    timeout_s: float = 3600.0,
) -> Path:
    """Make ``target`` with ``build(tmp)`` in a temporary sibling folder, renamed into place when complete.

    A lock file beside ``target`` (``.<name>.lock``) makes concurrent callers wait for one build; those that
    waited find ``is_complete(target)`` true and return. A leftover of an interrupted build (a temporary
    sibling, or ``target`` itself when it is incomplete and holds only ``own_names``) is removed with a log
    line and the data are built again. An incomplete ``target`` holding anything else is refused
    (``DataError``): it is not ours to delete.
    """
    from filelock import FileLock, Timeout

    target = Path(target).expanduser().absolute()
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(_lock_path(target)))
    try:
        with lock.acquire(timeout=timeout_s):
            if is_complete(target):  # another process built it while this one waited
                return target
            for stale in target.parent.glob(f".{target.name}{_PARTIAL}*"):
                log.warning("removing %s, left by an interrupted generation of %s", stale, what)
                shutil.rmtree(stale, ignore_errors=True)
            if target.exists():
                own = set(own_names) | {MARKER}
                foreign = sorted(p.name for p in target.iterdir() if p.name not in own) if target.is_dir() else [
                    target.name
                ]
                if foreign:
                    raise DataError(
                        f"{target} is not a complete {what} and holds files spinenet did not write "
                        f"({', '.join(foreign[:5])}); remove them or choose another folder"
                    )
                log.warning("%s in %s is incomplete (an earlier run was stopped while writing it); "
                            "generating it again", what, target)
                shutil.rmtree(target)
            tmp = target.with_name(f".{target.name}{_PARTIAL}{os.getpid()}")
            tmp.mkdir()
            try:
                build(tmp)
                write_marker(tmp, f"generate {what}")
                os.rename(tmp, target)  # atomic on one file system: the folder appears complete or not at all
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except Timeout:
        raise DataError(
            f"waited {timeout_s:.0f} s for another process generating {target} (lock {lock.lock_file})"
        ) from None
    return target
