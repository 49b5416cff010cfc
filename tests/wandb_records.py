"""Read the records of an offline W&B run file (``run-<id>.wandb``) in tests.

wandb 0.31 no longer ships a Python reader for its transaction log, which is LevelDB's log
format (32 KiB blocks; each chunk has a 7-byte header: crc32, length, type) after a 7-byte
``:W&B`` file header; each assembled record is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        chunk = data[pos : pos + length]
        pos += length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk if kind == _LAST else chunk)
            pending = b""
            yield record
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk


def logged_values(path: Path) -> dict[str, object]:
    """Every key written to the run's summary or history (last value wins), and the run name."""
    values: dict[str, object] = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            values["_run_name"] = record.run.display_name
            values["_project"] = record.run.project
        items = (
            record.summary.update if kind == "summary" else record.history.item
            if kind == "history" else []
        )  # fmt: skip
        for item in items:
            key = item.key or "/".join(item.nested_key)
            values[key] = json.loads(item.value_json)
    return values
