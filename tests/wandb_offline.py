"""Read a W&B offline run file (``offline-run-*/run-<id>.wandb``) without W&B's servers: what it would upload.

The file is a LevelDB-style log (a 7-byte W&B header, then 32 KiB blocks of records, each a ``Record``
protobuf, possibly split across blocks). wandb no longer ships a Python reader, so the tests carry this one.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: str | Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_run(path: str | Path) -> dict[str, Any]:
    """id, name, group, job_type, config, summary and exit_code (None while the run has not finished)."""
    out: dict[str, Any] = {"config": {}, "summary": {}, "exit_code": None, "artifacts": []}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.update(id=run.run_id, name=run.display_name, group=run.run_group, job_type=run.job_type)
            out["config"].update({i.key: json.loads(i.value_json) for i in run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in record.summary.update})
        elif kind == "artifact":
            out["artifacts"].append(record.artifact.name)
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def offline_runs(folder: str | Path) -> list[dict[str, Any]]:
    """Every offline run below ``folder``, read, with its folder under ``dir``."""
    runs = []
    for file in sorted(Path(folder).rglob("offline-run-*/run-*.wandb")):
        runs.append({**read_run(file), "dir": file.parent})
    return runs
