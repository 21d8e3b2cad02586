"""Read W&B's offline run files (``run-<id>.wandb``) without a W&B server.

Used by tests and by reports on runs that only exist as offline W&B directories.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any


def read_wandb_history(run_file: Path) -> dict[int, dict[str, Any]]:
    """History rows of an offline ``.wandb`` file, keyed by step.

    The file is W&B's LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version),
    then 32 KiB blocks of records, each with a 7-byte header (crc32, length, type: full,
    first, middle, last) holding a serialised ``Record`` protobuf. wandb 0.31 no longer
    ships a Python reader (``wandb.sdk.internal.datastore`` is gone), so it is parsed here.
    """
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb  # the record schema ships with wandb

    data = run_file.read_bytes()
    if len(data) < 7:  # created, then killed before the header was written
        return {}
    if data[:4] != b":W&B":
        raise ValueError(f"{run_file}: not a W&B run file (header {data[:7]!r})")
    block, pos, pending, payloads = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # cut short by a killed process: ignore the tail
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
        elif kind == 0 and length == 0:  # zero padding up to the block end
            pos += -pos % block
    rows: dict[int, dict[str, Any]] = {}
    for payload in payloads:
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except DecodeError:  # a torn record
            continue
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            path = [item.key] if item.key else list(item.nested_key)
            target = row
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = json.loads(item.value_json)
        rows[record.history.step.num] = row
    return rows


def find_run_file(run_dir: Path) -> Path:
    """The ``.wandb`` file of the (single) W&B run stored under a grpo run directory."""
    files = sorted((Path(run_dir) / "wandb").glob("*run-*/run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no W&B run files under {run_dir}/wandb")
    return files[-1]


def last_logged_step(wandb_dir: Path, run_id: str) -> int | None:
    """The newest step any earlier process logged to W&B run ``run_id`` under ``wandb_dir``
    (online and offline runs both keep their records in ``*run-*/run-<id>.wandb``)."""
    steps = [max(rows) for f in sorted(Path(wandb_dir).glob(f"*run-*/run-{run_id}.wandb"))
             if (rows := read_wandb_history(f))]
    return max(steps) if steps else None
