"""Reading an offline W&B run back (tests only): the records of ``run-<id>.wandb``.

The file is W&B's LevelDB-style log: a 7-byte header (``:W&B``, a 2-byte magic, a version
byte), then 32 KiB blocks of chunks, each with a 7-byte header (CRC32C: 4 bytes, length: 2 bytes
little-endian, type: 1 byte — 1 full, 2 first, 3 middle, 4 last); a block's tail shorter than a
chunk header is zero padding. Each record is a ``wandb.proto.wandb_internal_pb2.Record``.
No wandb reader fits, hence this one (checked against wandb 0.31.0, the version installed):
the Python one (``wandb.sdk.internal.datastore``) is gone from the package, and the ``.wandb``
file is read only by the Go service ``wandb-core`` (``wandb sync``, ``wandb beta sync``, the
``wandb beta leet`` viewer), which uploads or displays it but exports nothing; ``wandb.Api``
reads runs from a server only. The records themselves are parsed with wandb's own protobuf
classes (``wandb.proto.wandb_internal_pb2``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
FILE_HEADER = 7
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a .wandb file")
    out, buf, pos = [], b"", FILE_HEADER
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:
            pos += left
            continue
        length = int.from_bytes(data[pos + 4: pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + CHUNK_HEADER: pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:  # padding
            continue
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            buf = chunk
        elif kind == MIDDLE:
            buf += chunk
        elif kind == LAST:
            out.append(buf + chunk)
            buf = b""
        else:
            raise ValueError(f"bad chunk type {kind} at {pos}")
    return out


def _put(d: dict, item) -> None:
    """``item.key``, or a ``nested_key`` path (W&B splits dict values such as tables into it)."""
    path = [item.key] if item.key else list(item.nested_key)
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = json.loads(item.value_json)


def _items(items) -> dict:
    d: dict = {}
    for item in items:
        _put(d, item)
    return d


@dataclass
class OfflineRun:
    run_id: str = ""
    name: str = ""
    group: str = ""
    project: str = ""
    tags: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)   # one dict per logged step
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None
    complete: bool = False   # the exit record was read (the run was finished and flushed)

    @property
    def history_keys(self) -> set:
        return {k for h in self.history for k in h}


def read_run(run_dir: Path, wait_s: float = 20.0) -> OfflineRun:
    """The run in ``<dir>/wandb/offline-run-*`` (``run_dir`` is that folder). ``run.finish()``
    can return before the W&B service has written the last records, so this re-reads the file
    until its exit record is there (at most ``wait_s`` seconds)."""
    deadline = time.monotonic() + wait_s
    while True:
        run = _read_run(run_dir)
        if run.complete or time.monotonic() > deadline:
            return run
        time.sleep(0.1)


def _read_run(run_dir: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    files = list(Path(run_dir).glob("run-*.wandb"))
    assert len(files) == 1, files
    run = OfflineRun()
    for raw in records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.run_id, run.name, run.group, run.project = r.run_id, r.display_name, r.run_group, r.project
            run.tags = list(r.tags)
            run.config.update(_items(r.config.update))
        elif kind == "config":
            run.config.update(_items(rec.config.update))
        elif kind == "history":
            run.history.append(_items(rec.history.item))
        elif kind == "summary":
            for item in rec.summary.update:
                _put(run.summary, item)
        elif kind == "exit":
            run.exit_code, run.complete = rec.exit.exit_code, True
    return run


def offline_runs(base: Path) -> list[Path]:
    """The offline run folders under ``base/wandb`` (oldest first)."""
    return sorted(p for p in (Path(base) / "wandb").glob("offline-run-*") if p.is_dir())
