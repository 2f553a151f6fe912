"""The disk's floor: what one durable marker per file costs here, with nothing else going on.

A marker is what docs/durability.md asks of every file the daemon creates:
tmp (O_EXCL) -> write -> fsync(file) -> rename -> fsync(dir). Measured

    sequential     one marker after another, one thread
    group commit   16 writers at once: the kernel folds their fsyncs into
                   shared journal commits, as the daemon's own group commit does

anu-watchd does more than one marker per wake (a done marker, an envelope
file and three ledger/evidence lines), so its throughput is reported as a
ratio of these floors; the target in bench/RESULTS.md is half the group-commit floor.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

GROUP_WRITERS = 16
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_DOC = b'{"task_id":"task-000000","sha256":"' + b"a" * 64 + b'","verdict":"WAKE_BUILT"}\n'


@attrs.frozen
class Floor:
    sequential_per_s: float
    group_per_s: float
    sequential_ms: float  # one marker's cost, one at a time


def marker(directory: Path, i: int) -> None:
    tmp = f"{directory}/.tmp-m{i}"
    fd = os.open(tmp, _FLAGS, 0o644)
    try:
        os.write(fd, _DOC)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, f"{directory}/task-m{i}.pickup.done")
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _rate(directory: Path, ids: range, writers: int) -> float:
    t0 = time.perf_counter()
    if writers == 1:
        for i in ids:
            marker(directory, i)
    else:
        with ThreadPoolExecutor(writers) as pool:
            list(pool.map(lambda i: marker(directory, i), ids))
    return len(ids) / (time.perf_counter() - t0)


def measure(directory: Path, n: int, rounds: int = 3) -> Floor:
    """Alternate the two modes ``rounds`` times and keep each one's median (the disk drifts)."""
    directory.mkdir(parents=True, exist_ok=True)
    seq, grp = [], []
    for r in range(rounds):
        seq.append(_rate(directory, range(2 * r * n, (2 * r + 1) * n), 1))
        grp.append(_rate(directory, range((2 * r + 1) * n, (2 * r + 2) * n), GROUP_WRITERS))
    s, g = sorted(seq)[len(seq) // 2], sorted(grp)[len(grp) // 2]
    return Floor(sequential_per_s=s, group_per_s=g, sequential_ms=1000.0 / s)


def create_probe(directory: Path, n: int = 1000) -> float:
    """Microseconds to create an empty file: ~20 us normally, far more after mass deletions."""
    directory.mkdir(parents=True)
    t0 = time.perf_counter()
    for i in range(n):
        os.close(os.open(f"{directory}/probe-{i}", _FLAGS, 0o644))
    return (time.perf_counter() - t0) / n * 1e6
