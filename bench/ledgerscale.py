"""Ledger scale: how long ``Ledger.open`` takes, and the RSS it leaves, for big ledgers.

    python -m bench.ledgerscale [--lines N ...] [--runs R] [--workdir DIR] [--json]
                                                 cold parse vs checkpoint, 100k and 1M lines, 3 runs
    python -m bench.ledgerscale build PATH LINES write a ledger of LINES lines (no checkpoint)
    python -m bench.ledgerscale load PATH        load it; print one JSON line
    python -m bench.ledgerscale checkpoint PATH  open and close it: writes its checkpoint

A ledger of N lines holds N/2 tasks, each CLAIMED then DONE, in the exact
bytes the daemon writes (``LedgerEntry.to_json()`` through the append log's
encoder). ``load`` runs in a fresh interpreter so its RSS is the daemon's
start-up cost for that ledger: the interpreter and anu_watchd's imports
(measured before the load, as ``base``), plus the index. It uses the
checkpoint if there is one (a clean restart) and says so in ``start``; after
``build`` there is none (a cold start: every line is parsed). A ledger under
``CHECKPOINT_MIN_BYTES`` (4 MiB, ~14,000 lines) gets no checkpoint.
:func:`measure` runs both, each in fresh interpreters, and returns what
``bench/run.py`` records for a ledger, plus the checkpointed runs under
``"checkpoint"`` (``bench/render.py`` shows them when present).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from anu_watchd.appendlog import encode
from anu_watchd.ledgerindex import path_for
from anu_watchd.model import FourTuple, LedgerEntry, LedgerState

TS = "2026-11-22T04:04:05.123456Z"
REPO = Path(__file__).resolve().parents[1]


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
    path_for(path).unlink(missing_ok=True)  # it would describe the ledger this replaces
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


def _quiet() -> None:
    """Log lines (ledger_checkpoint_loaded) to stderr: stdout is the one JSON line."""
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def load(path: Path) -> dict[str, Any]:
    from anu_watchd.ledger import Ledger

    _quiet()
    had = path_for(path).exists()
    base = _kib("VmRSS")
    t0 = time.perf_counter()
    ledger = Ledger.open(path)
    seconds = time.perf_counter() - t0
    rss = _kib("VmRSS")
    used = had and path_for(path).exists()  # an unusable checkpoint is removed at open
    return {
        "keys": len(ledger),
        "load_s": seconds,
        "base_rss_kib": base,
        "rss_kib": rss,
        "peak_rss_kib": _kib("VmHWM"),
        "file_bytes": os.path.getsize(path),
        "start": "checkpoint" if used else ("checkpoint ignored" if had else "cold"),
    }


def checkpoint(path: Path) -> dict[str, Any]:
    """Open and close the ledger as the daemon does at a clean stop: writes its checkpoint."""
    import asyncio

    from anu_watchd.ledger import Ledger

    _quiet()
    path_for(path).unlink(missing_ok=True)
    ledger = Ledger.open(path)
    t0 = time.perf_counter()
    asyncio.run(ledger.aclose())
    seconds = time.perf_counter() - t0
    if not path_for(path).exists():
        raise RuntimeError(f"{path}: no checkpoint written (smaller than the minimum?)")
    return {"close_s": seconds, "checkpoint_bytes": path_for(path).stat().st_size}


# -- both starts, in fresh interpreters (imports here stay out of the measured ones) -------


def _run(*argv: str, out: bool = True) -> dict[str, Any]:
    """``python -m bench.ledgerscale ARGV`` in a fresh interpreter; its JSON line if ``out``."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "bench.ledgerscale", *argv]
    done = subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=out)
    result: dict[str, Any] = json.loads(done.stdout) if out else {}
    return result


def _loads(path: Path, runs: int, start: str) -> dict[str, Any]:
    """The median of ``runs`` loads, with every run's time and the worst peak RSS."""
    got = [_run("load", str(path)) for _ in range(runs)]
    if any(r["start"] != start for r in got):
        raise RuntimeError(f"{path}: expected a {start} start, got {got}")
    got.sort(key=lambda r: r["load_s"])
    best = got[len(got) // 2]
    best.update(
        load_s_all=[r["load_s"] for r in got], max_rss_kib=max(r["peak_rss_kib"] for r in got)
    )
    return best


def measure(path: Path, lines: int, runs: int = 3) -> dict[str, Any]:
    """Build ``path``; cold loads, then a checkpoint, then loads from it (run.py's ledger entry)."""
    _run("build", str(path), str(lines), out=False)
    cold = _loads(path, runs, "cold")
    cold.update(lines=lines, checkpoint=_run("checkpoint", str(path)))
    cold["checkpoint"].update(_loads(path, runs, "checkpoint"))
    return cold


def _report(results: list[dict[str, Any]]) -> str:
    rows = ["lines       start        load s (runs)            peak RSS MiB  file MB"]
    for r in results:
        for name, d in (("cold", r), ("checkpoint", r["checkpoint"])):
            runs = " / ".join(f"{s:.2f}" for s in d["load_s_all"])
            size = r["file_bytes"] if d is r else d["checkpoint_bytes"]
            rows.append(
                f"{r['lines']:>10,}  {name:<11}  {runs:<23}  "
                f"{d['max_rss_kib'] / 1024:>12.1f}  {size / 1e6:>7.1f}"
            )
        rows.append(f"{'':>10}  {'(close)':<11}  {r['checkpoint']['close_s']:.2f} s to write it")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if argv[:1] == ["build"]:
        build(Path(argv[1]), int(argv[2]))
    elif argv[:1] in (["load"], ["checkpoint"]):
        act = load if argv[0] == "load" else checkpoint
        print(json.dumps(act(Path(argv[1]))))
    else:
        return compare(argv)
    return 0


def compare(argv: list[str]) -> int:
    import argparse
    import shutil
    import tempfile

    p = argparse.ArgumentParser(prog="python -m bench.ledgerscale", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--lines", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"), help="a disk, not tmpfs")
    p.add_argument("--json", action="store_true", help="one JSON document per size instead")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="anu-ledgerscale-", dir=args.workdir))
    try:
        results = [measure(work / f"ledger-{n}.jsonl", n, args.runs) for n in args.lines]
    finally:
        shutil.rmtree(work)
    print("\n".join(map(json.dumps, results)) if args.json else _report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
