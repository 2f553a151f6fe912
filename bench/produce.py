"""The workers' side: result files landing in the events directory by tmp + rename.

Every system's latency is measured from the wall-clock time taken just
before each rename (taken after it, a producer descheduled between the two
would make a fast watcher's latency negative; the rename itself takes ~20 us).

    paced   each file is written to ``.tmp-<name>`` in the events directory and
            renamed into place on a fixed schedule, as a worker publishes a result
    burst   the files are written beforehand into a staging directory on the same
            filesystem and renamed into the events directory back to back: a pure
            burst of publications, as fast as renames go (writing them during the
            burst would make the producer, not the watcher, the bottleneck). The
            same staged files serve every system in turn: they are moved back after
            each run.

Writes are not fsynced: a producer fsync would compete with the daemon's.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def task_ids(prefix: str, n: int) -> list[str]:
    return [f"task-{prefix}-{i:06d}" for i in range(n)]


def result_bytes(task_id: str) -> bytes:
    """A valid ``anu.result/v1`` document, as a worker writes it."""
    doc = {
        "schema": "anu.result/v1",
        "task_id": task_id,
        "status": "DONE",
        "executor": "dev1",
        "collector": "anu",
        "finished_at": "2026-11-22T04:04:05Z",
        "summary": f"finished {task_id}: bench payload",
    }
    return json.dumps(doc).encode()


def _publish(events: Path, task_id: str, data: bytes) -> int:
    final = f"{events}/{task_id}.result.json"
    tmp = f"{events}/.tmp-{task_id}.result.json"
    fd = os.open(tmp, _FLAGS, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    t = time.time_ns()
    os.rename(tmp, final)
    return t


def stage(staging: Path, ids: list[str]) -> None:
    """Write the burst's results, ahead of time, into a directory beside the events directory."""
    staging.mkdir(parents=True, exist_ok=True)
    for t in ids:
        fd = os.open(f"{staging}/{t}.result.json", _FLAGS, 0o644)
        try:
            os.write(fd, result_bytes(t))
        finally:
            os.close(fd)


def burst(staging: Path, events: Path, ids: list[str]) -> list[int]:
    """Rename every staged result into ``events`` as fast as possible; each rename's time in ns."""
    out = []
    for t in ids:
        name = f"{t}.result.json"
        out.append(time.time_ns())
        os.rename(f"{staging}/{name}", f"{events}/{name}")
    return out


def unstage(events: Path, staging: Path, ids: list[str]) -> None:
    """Move the results back for the next system (none of them changes a result file)."""
    for t in ids:
        name = f"{t}.result.json"
        os.rename(f"{events}/{name}", f"{staging}/{name}")


def paced(events: Path, ids: list[str], rate: float) -> list[int]:
    """Publish at ``rate`` files/s on a fixed schedule (a late file does not shift the rest)."""
    payloads = [result_bytes(t) for t in ids]
    start = time.monotonic() + 0.05
    out = []
    for i, (t, d) in enumerate(zip(ids, payloads, strict=True)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        out.append(_publish(events, t, d))
    return out
