"""The exec sink alone, without the daemon: requests/s and event-loop CPU per request.

    .venv/bin/python -m bench.sinkcost [--requests 4000] [--concurrency 4]

Registers an envelope of ~1.6 KB again and again through the exec sink's two
modes, on one event loop in this process: a process per wake (``bench/handler.c``)
and co-process handlers (``bench/handler_coproc.c``). The CPU is this process's
(``time.process_time``: the loop's thread and the fork), not the handlers'.
The daemon's own cost per file (reading, validating, the ledger, the markers)
comes on top: ``bench/ab.py`` measures the whole.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anu_watchd.sinks.base import Sink
from anu_watchd.sinks.coprocess import CoprocessSink
from anu_watchd.sinks.coproto import Restarts
from anu_watchd.sinks.exec import ExecSink
from bench.systems import HANDLER, HANDLER_COPROC

ENVELOPE = json.dumps({"task_id": "task-1", "summary": "x" * 1500}).encode()


async def measure(sink: Sink, n: int, concurrency: int) -> tuple[float, float]:
    """Requests/s and microseconds of this process's CPU per request."""
    await sink.register(ENVELOPE, idempotency_key="ik1-warm")  # handlers started
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await sink.register(ENVELOPE, idempotency_key=f"ik1-{i}")

    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    await sink.aclose()
    return n / wall, cpu / n * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    log = Path(tempfile.mkdtemp(prefix="anu-sinkcost-")) / "handler.log"
    c = args.concurrency
    sinks: list[tuple[str, Sink]] = [
        ("process per wake", ExecSink([str(HANDLER), str(log)], [], key_file=None, timeout_s=30)),
    ]
    if HANDLER_COPROC is not None:
        argv = [str(HANDLER_COPROC), str(log)]
        coproc = CoprocessSink(
            argv, key_file=None, timeout_s=30, concurrency=c, restarts=Restarts(0.5, 8.0)
        )
        sinks.append(("co-process", coproc))
    for name, sink in sinks:
        load = "load {:.2f} {:.2f} {:.2f} before".format(*os.getloadavg())
        rate, cpu_us = await measure(sink, args.requests, c)
        print(f"{name}, concurrency {c}: {rate:,.0f} requests/s, {cpu_us:.0f} us CPU each ({load})")
    log.unlink(missing_ok=True)
    log.parent.rmdir()


if __name__ == "__main__":
    asyncio.run(main())
