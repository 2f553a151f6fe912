"""Ledger scale: how long ``Ledger.open`` takes, and the RSS it leaves, for big ledgers.

    python -m bench.ledgerscale build PATH LINES     write a ledger of LINES lines
    python -m bench.ledgerscale load PATH            load it; print one JSON line

A ledger of N lines holds N/2 tasks, each CLAIMED then DONE, in the exact
bytes the daemon writes (``LedgerEntry.to_json()`` through the append log's
encoder). ``load`` runs in a fresh interpreter so its RSS is the daemon's
start-up cost for that ledger: the interpreter and anu_watchd's imports
(measured before the load, as ``base``), plus the index.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from anu_watchd.appendlog import encode
from anu_watchd.model import FourTuple, LedgerEntry, LedgerState

TS = "2026-11-22T04:04:05.123456Z"


def _kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _lines(i: int) -> tuple[bytes, bytes]:
    """Task ``i``'s CLAIMED and DONE lines, exactly as the daemon encodes them."""
    task = f"task-ledger-{i:07d}"
    sha = hashlib.sha256(task.encode()).hexdigest()
    key = FourTuple(task, sha, "anu").idempotency_key
    claimed = LedgerEntry(key, task, sha, "anu", LedgerState.CLAIMED, 1, TS)
    done = LedgerEntry(key, task, sha, "anu", LedgerState.DONE, 1, TS, schedule_id=f"s-{i}")
    return encode(claimed.to_json()), encode(done.to_json())


def build(path: Path, lines: int) -> None:
    """Write ``lines`` lines; a template stands in for the encoder, checked against it."""
    head = (
        '{"v":1,"key":"%s","task_id":"task-ledger-%07d","sha256":"%s","collector":"anu",'
        '"kind":"result","state":"%s","attempt":1,"schedule_id":%s,"ts":"' + TS + '"}\n'
    )
    with open(path, "wb") as fh:
        chunk: list[str] = []
        for i in range(lines // 2):
            sha = hashlib.sha256(b"task-ledger-%07d" % i).hexdigest()
            canon = f'["task-ledger-{i:07d}","{sha}","anu","result"]'
            key = "ik1-" + hashlib.sha256(canon.encode()).hexdigest()[:40]
            chunk.append(head % (key, i, sha, "CLAIMED", "null"))
            chunk.append(head % (key, i, sha, "DONE", f'"s-{i}"'))
            if i in (0, 7) and "".join(chunk[-2:]).encode() != b"".join(_lines(i)):
                raise AssertionError("the template no longer matches LedgerEntry.to_json()")
            if len(chunk) >= 20000:
                fh.write("".join(chunk).encode())
                chunk.clear()
        fh.write("".join(chunk).encode())


def load(path: Path) -> dict[str, float]:
    from anu_watchd.ledger import Ledger

    base = _kib("VmRSS")
    t0 = time.perf_counter()
    ledger = Ledger.open(path)
    seconds = time.perf_counter() - t0
    rss = _kib("VmRSS")
    return {
        "keys": len(ledger),
        "load_s": seconds,
        "base_rss_kib": base,
        "rss_kib": rss,
        "peak_rss_kib": _kib("VmHWM"),
        "file_bytes": os.path.getsize(path),
    }


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        print(json.dumps(load(Path(sys.argv[2]))))
