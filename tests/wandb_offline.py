"""Read the records of an offline W&B run (``run-<id>.wandb``) back, for tests.

The file is a LevelDB-style log (32 KiB blocks of ``crc32c | length | type`` chunks) after a
7-byte ``:W&B`` header; each record is a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7  # crc32c (4) + length (2) + type (1)


def records(path: str | Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = 7, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        pos += _HEADER
        chunk, pos = data[pos:pos + length], pos + length
        if kind == 1:  # FULL
            payload = chunk
        elif kind == 2:  # FIRST
            pending = chunk
            continue
        elif kind == 3:  # MIDDLE
            pending += chunk
            continue
        elif kind == 4:  # LAST
            payload, pending = pending + chunk, b""
        else:  # zero padding
            continue
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(payload)
        yield rec


def wait_until_written(path: str | Path, timeout: float = 120.0) -> Path:
    """``path`` once it holds the run's ``exit`` record. ``finish()`` in the training process can
    return before W&B's service process has written the file out (seen on a loaded machine: the
    file then held no record), so a test of a run made in its own process reads it after this."""
    import time

    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            if any(rec.WhichOneof("record_type") == "exit" for rec in records(path)):
                return Path(path)
        except (DecodeError, ValueError, struct.error):  # a record half written
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: no exit record {timeout:.0f} s after the run finished")
        time.sleep(0.2)


def history(path: str | Path) -> list[dict[str, Any]]:
    """Every ``run.log`` row of the run, as ``{key: value}``."""
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({
                (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                for item in rec.history.item
            })
    return rows


def config(path: str | Path) -> dict[str, Any]:
    """The run's config (last value of every key)."""
    out: dict[str, Any] = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "config":
            for item in rec.config.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def run_info(path: str | Path) -> dict[str, Any]:
    """Project, group, job type, tags and name of the run."""
    for rec in records(path):
        if rec.WhichOneof("record_type") == "run":
            r = rec.run
            return {"project": r.project, "group": r.run_group, "job_type": r.job_type,
                    "tags": list(r.tags), "name": r.display_name, "id": r.run_id}
    return {}
