"""Loading files from elsewhere without running their code.

- Checkpoints: :func:`load_checkpoint` uses ``torch.load(weights_only=True)``. A file that needs to unpickle
  arbitrary objects (e.g. a tampered checkpoint whose pickle calls ``os.system``) is refused before anything
  in it runs.
- Cached predictions and ensemble artifacts: :func:`save_tensors` / :func:`load_tensors` use safetensors
  (plain tensors + a JSON header, no pickle at all) with a ``format`` and ``version`` in the metadata.

Lightning checkpoints stay weights-only-loadable as long as what goes into them is plain: state dicts,
optimizer / scheduler states, callback states (ModelCheckpoint, EarlyStopping) and ``hyper_parameters``
made of dicts, lists, str, numbers, bools and None (checked with torch 2.14 / Lightning 2.6). An OmegaConf
``DictConfig`` in ``save_hyperparameters`` is NOT (it pickles omegaconf classes), so we store
hyper-parameters as ``OmegaConf.to_container(cfg, resolve=True)``. If a known-safe type must be added
later, register it with ``torch.serialization.add_safe_globals`` rather than ever loading with
``weights_only=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from spinenet.errors import DataError

META_KEY = "spinenet"


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex): what sidecars, metrics.json and ensembles record. Memoised per path, size
    and modification time in this process (an ensemble search hashes the same members again and again)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; :class:`DataError` naming the file otherwise.

    Refuses, without executing it, a file whose pickle references anything beyond tensors and plain
    containers; reports missing, empty, truncated and non-torch files.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint {path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"checkpoint {path}: file is empty")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing; our error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")  # refused below
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Weights only load failed" in msg:
            found = re.search(r"GLOBAL ([\w.]+)", msg)
            what = f" (it references {found.group(1)})" if found else ""
            with path.open("rb") as f:
                head = f.read(2)
            if not found and not head.startswith((b"PK", b"\x80")):  # neither a zip nor a pickle: text, garbage
                detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", msg)
                raise DataError(
                    f"checkpoint {path}: not a readable PyTorch checkpoint (another format: "
                    f"{detail.group(1) if detail else _first_line(msg)}); nothing in it was executed"
                ) from None
            raise DataError(
                f"checkpoint {path}: not a weights-only checkpoint{what}; it was NOT executed. Only tensors and "
                "plain containers are loaded. If you made this file yourself, re-save it with plain dicts "
                "(e.g. hyper-parameters via OmegaConf.to_container)"
            ) from None
        raise DataError(f"checkpoint {path}: not a readable PyTorch checkpoint ({_first_line(msg)})") from None
    except RuntimeError as exc:
        if "TorchScript" in str(exc):  # torch refuses TorchScript archives under weights_only before running them
            raise DataError(f"checkpoint {path}: a TorchScript file (a program, not weights); it was NOT "
                            "executed. Give the .ckpt checkpoint it was exported from") from None
        raise DataError(
            f"checkpoint {path}: not a readable PyTorch checkpoint (truncated, corrupt or another format: "
            f"{type(exc).__name__}: {_first_line(str(exc))})"
        ) from None
    except (EOFError, KeyError, ValueError, OSError, AttributeError, IndexError, TypeError, OverflowError) as exc:
        # truncated zip ("failed finding central directory"), legacy-format garbage, text files (their bytes
        # read as pickle opcodes fail in the unpickler's stack: IndexError, TypeError) ...
        raise DataError(
            f"checkpoint {path}: not a readable PyTorch checkpoint (truncated, corrupt or another format: "
            f"{type(exc).__name__}: {_first_line(str(exc))})"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"checkpoint {path}: holds a {type(obj).__name__}, expected a dict")
    return obj


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no detail"
    return line[:limit]


def _check_meta(meta: dict[str, Any], where: str) -> None:
    if not isinstance(meta, dict):
        raise DataError(f"{where}: metadata must be a dict, got {type(meta).__name__}")
    missing = [k for k in ("format", "version") if k not in meta]
    if missing:
        raise DataError(f"{where}: metadata lacks {missing} (every tensor file names its format and version)")
    if not isinstance(meta["format"], str) or not meta["format"]:
        raise DataError(f"{where}: metadata 'format' must be a non-empty string, got {meta['format']!r}")
    if not isinstance(meta["version"], int) or isinstance(meta["version"], bool):
        raise DataError(f"{where}: metadata 'version' must be an integer, got {meta['version']!r}")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write plain tensors + JSON metadata (needs ``format`` and ``version``) as a safetensors file.

    Written to a temporary file and renamed, so an interrupted save never leaves a truncated artifact.
    """
    from safetensors.torch import save_file

    path = Path(path)
    _check_meta(meta, f"save_tensors {path}")
    try:
        meta_json = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise DataError(f"save_tensors {path}: metadata is not JSON-serialisable ({exc})") from None
    plain: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise DataError(f"save_tensors {path}: entry {key!r} is not a str -> Tensor pair ({type(value).__name__})")
        t = value.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        # safetensors refuses tensors that share memory (views of one another): copy those
        if ptr in seen and t.numel() > 0:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        plain[key] = t
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(plain, tmp, metadata={META_KEY: meta_json})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_tensors(
    path: str | Path, *, expected_format: str | None = None, max_version: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_tensors`: ``(tensors, meta)``.

    :class:`DataError` when the file is missing, is not a safetensors file, lacks our metadata, has another
    ``format`` than ``expected_format`` or a ``version`` newer than ``max_version``.
    """
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"tensor file {path}: file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError on foreign bytes
        raise DataError(
            f"tensor file {path}: not a safetensors file (truncated, corrupt or another format: "
            f"{_first_line(str(exc))})"
        ) from None
    if META_KEY not in header:
        raise DataError(f"tensor file {path}: has no '{META_KEY}' metadata; it was not written by save_tensors")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as exc:
        raise DataError(f"tensor file {path}: metadata is not valid JSON ({exc})") from None
    _check_meta(meta, f"tensor file {path}")
    if expected_format is not None and meta["format"] != expected_format:
        raise DataError(f"tensor file {path}: holds format {meta['format']!r}, expected {expected_format!r}")
    if max_version is not None and meta["version"] > max_version:
        raise DataError(
            f"tensor file {path}: {meta['format']} version {meta['version']} is newer than this spinenet "
            f"reads (up to {max_version}); upgrade spinenet"
        )
    return tensors, meta
