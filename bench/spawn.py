"""The exec sink's spawn path alone: asyncio's subprocess machinery against ``sinks.spawn``.

    .venv/bin/python -m bench.spawn [--n 500] [--gap-ms 10] [--handler bench/handler.sh]

Not part of ``make bench``: it isolates the exec-sink latency target
floor (bench/PROFILE.md section 3). On an idle event loop, every ``--gap-ms``,
it registers one wake through each path in turn (which goes first alternates,
so both see the same noise):

    old   the exec sink as it was: ``asyncio.create_subprocess_exec`` with three
          pipes, ``communicate``-style gather, ``killpg`` + ``wait`` (copied below)
    new   ``ExecSink.register`` as it is now

Both run ``bench/handler.sh LOG NAME``, which appends ``NAME $EPOCHREALTIME``
as its first act, so "latency" is from the call to the handler's start. CPU
is the event loop thread's (``time.thread_time``) and the whole process's
(``getrusage``: all threads, which includes 3.11's per-child watcher thread),
per spawn, children excluded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anu_watchd.sinks.exec import CHILD_PATH, ExecSink, schedule_id_from_stdout

HANDLER = Path(__file__).resolve().parent / "handler.sh"
ENVELOPE = b'{"task_id":"task-000000","status":"ok","summary":"' + b"x" * 1500 + b'"}'
_LIMIT = 64 * 1024


# -- the old path, as anu_watchd/sinks/exec.py had it --------------------------------


class OldExecSink:
    """The essential old code: create_subprocess_exec, gather, killpg + wait."""

    def __init__(self, argv: list[str], *, timeout_s: float) -> None:
        self._argv = tuple(argv)
        self._timeout_s = timeout_s

    async def register(self, envelope: bytes, *, idempotency_key: str) -> str:
        env = {"PATH": CHILD_PATH, "LANG": "C.UTF-8", "ANU_WATCHD_IDEMPOTENCY_KEY": idempotency_key}
        proc = await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(self._timeout_s):
                assert proc.stdin and proc.stdout and proc.stderr
                _, stdout, _, returncode = await asyncio.gather(
                    _feed(proc.stdin, envelope),
                    _read_bounded(proc.stdout),
                    _read_bounded(proc.stderr),
                    proc.wait(),
                )
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        if returncode != 0:
            raise RuntimeError(f"handler exited {returncode}")
        return schedule_id_from_stdout(stdout, program=self._argv[0])


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(data)
        await stdin.drain()
    stdin.close()


async def _read_bounded(stream: asyncio.StreamReader) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(16 * 1024):
        room = _LIMIT - len(kept)
        if room > 0:
            kept += chunk[:room]
    return bytes(kept)


# -- the measurement ----------------------------------------------------------------

Register = Callable[[bytes], Awaitable[str]]


class Series:
    """Per-spawn samples of one path."""

    def __init__(self) -> None:
        self.called: dict[str, float] = {}  # name -> time.time() at the call
        self.wall_ms: list[float] = []
        self.loop_cpu_us: list[float] = []
        self.proc_cpu_us: list[float] = []


async def one(series: Series, name: str, sink: ExecSink | OldExecSink) -> None:
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, t0, wall0 = time.thread_time(), time.time(), time.perf_counter()
    series.called[name] = t0
    schedule_id = await sink.register(ENVELOPE, idempotency_key=name)
    wall1, cpu1 = time.perf_counter(), time.thread_time()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    if not schedule_id.startswith("bench-"):
        raise SystemExit(f"spawn: unexpected schedule id {schedule_id!r}")
    series.wall_ms.append((wall1 - wall0) * 1e3)
    series.loop_cpu_us.append((cpu1 - cpu0) * 1e6)
    busy = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    series.proc_cpu_us.append(busy * 1e6)


async def run(n: int, gap_s: float, handler: Path, log: Path) -> dict[str, Series]:
    argv = [str(handler), str(log)]
    sinks: dict[str, ExecSink | OldExecSink] = {
        "old": OldExecSink(argv, timeout_s=10.0),
        "new": ExecSink(argv, [], key_file=None, timeout_s=10.0),
    }
    series = {label: Series() for label in sinks}
    order = list(sinks)
    for i in range(n + 10):
        for label in order:
            await one(series[label], f"{label}-{i}", sinks[label])
            await asyncio.sleep(gap_s)
        order.reverse()
    for s in series.values():  # the first ten of each warm up caches and imports
        s.called = {k: v for k, v in s.called.items() if int(k.split("-")[1]) >= 10}
        for samples in (s.wall_ms, s.loop_cpu_us, s.proc_cpu_us):
            del samples[:10]
    return series


def latencies_ms(log: Path, series: Series) -> list[float]:
    started = dict(line.split() for line in log.read_text().splitlines())
    return sorted((float(started[name]) - t0) * 1e3 for name, t0 in series.called.items())


def pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def report(log: Path, series: dict[str, Series]) -> None:
    rows: list[tuple[str, dict[str, float]]] = []
    for label, s in series.items():
        lat = latencies_ms(log, s)
        wall = sorted(s.wall_ms)
        figures = {
            "start p50 ms": pct(lat, 0.5),
            "start p90 ms": pct(lat, 0.9),
            "start p99 ms": pct(lat, 0.99),
            "register p50 ms": pct(wall, 0.5),
            "loop CPU us/spawn": statistics.mean(s.loop_cpu_us),
            "process CPU us/spawn": statistics.mean(s.proc_cpu_us),
        }
        rows.append((label, figures))
    (_, old), (_, new) = rows
    print(f"{'':24}{'old':>10}{'new':>10}{'new/old':>10}")
    for key in old:
        print(f"{key:24}{old[key]:10.2f}{new[key]:10.2f}{new[key] / old[key]:10.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="spawns per path")
    ap.add_argument("--gap-ms", type=float, default=10.0, help="idle time between spawns")
    ap.add_argument("--handler", type=Path, default=HANDLER)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="anu-spawn-") as tmp:
        log = Path(tmp) / "starts.log"
        log.touch()
        series = asyncio.run(run(args.n, args.gap_ms / 1e3, args.handler, log))
        print(f"{args.n} spawns per path of {args.handler.name}, {args.gap_ms:g} ms apart")
        report(log, series)


if __name__ == "__main__":
    main()
